//! REWA attention: each query attends only to the keys a cheap code says are closest.
//!
//! Full attention scores every key for every query (`len x len x head_dim` multiply-adds per
//! head, then as many again for the values). In REWA mode, per layer and head:
//!
//! 1. the text's keys are centred on their mean (a shift every query sees equally:
//!    `q.(k - mu) = q.k - q.mu`, the same ranking) and projected to `bits` values by a
//!    projection `P` made of blocks of rotation rows: seeded random Hadamard rotations
//!    (`H D`, random signs `D`) of the head's space or, with `keys=FILE`, of the span of the
//!    top principal directions of the model's own keys (as Loki), fitted on other texts by
//!    [`Embedder::fit_key_projections`](crate::Embedder::fit_key_projections);
//! 2. a key's code is the signs of its projection (`bits` bits), plus for `score=asym` one
//!    factor per block, `|y|^2 / |y|_1` (RaBitQ's estimator of `q.k` from the signs);
//! 3. every query scores every key by the code: `score=hamming` compares the query's own
//!    signs (XOR + popcount, 64 key bits per instruction), `score=asym` its float projection
//!    against the key's signs times the factor (as `asign` scores); `score=exact` uses `q.k`
//!    itself, the reference any code is measured against;
//! 4. it keeps the `top` best keys besides the always-kept ones (the first `sink` and last
//!    `last` tokens, and keys within `window` positions), and computes exact softmax attention
//!    over those alone.
//!
//! With `top` at least the text's length every key is kept and the result is full attention
//! (tested to 1e-5); a text no longer than `top` runs the full kernel.

use crate::error::{Error, Result};
use crate::fgemm::{Packed, Rows};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Most code bits per key.
pub const MAX_BITS: usize = 1024;

/// How the transformer's self-attention runs.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Attention {
    /// Softmax over every key (the model as trained).
    #[default]
    Full,
    /// Top-k attention over compressed keys.
    Rewa(RewaAttention),
}

/// How a query scores the keys' codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Score {
    /// The query's own sign bits against the key's: XOR and popcount.
    Hamming,
    /// The query's float projection against the key's signs, times the key's factor.
    Asym,
    /// The exact scores `q.k` (no code): the best any code can select, for reference.
    Exact,
}

/// The settings of [`Attention::Rewa`]; written `rewa:bits=64,top=32` (see [`FromStr`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RewaAttention {
    /// Code bits per key (1..=1024).
    pub bits: usize,
    /// Keys each query keeps by their code, besides the always-kept ones.
    pub top: usize,
    /// The first `sink` tokens ([CLS] / `<s>`) are always kept. Default 1.
    pub sink: usize,
    /// The last `last` tokens ([SEP] / `</s>`, where BERT heads park attention) are always
    /// kept. Default 0.
    pub last: usize,
    /// Keys within this many positions of the query are always kept. Default 0.
    pub window: usize,
    /// Default [`Score::Hamming`].
    pub score: Score,
    /// Key projections fitted by [`Embedder::fit_key_projections`](crate::Embedder); none:
    /// random Hadamard rotations of all the head's dimensions.
    pub keys: Option<PathBuf>,
    /// With `keys`: the rotations act on the top `rank` fitted directions (default: the
    /// fewest holding 90% of each head's key variance).
    pub rank: Option<usize>,
}

impl RewaAttention {
    /// `bits` and `top` with the defaults for the rest.
    pub fn new(bits: usize, top: usize) -> RewaAttention {
        RewaAttention {
            bits,
            top,
            sink: 1,
            last: 0,
            window: 0,
            score: Score::Hamming,
            keys: None,
            rank: None,
        }
    }
}

const SYNTAX: &str = "full, or rewa:bits=<1..=1024>,top=<n>[,sink=<n>][,last=<n>][,window=<n>][,score=hamming|asym|exact][,rank=<n>,keys=<file>]";

impl FromStr for Attention {
    type Err = Error;
    fn from_str(s: &str) -> Result<Attention> {
        let bad =
            |why: String| Error::InvalidInput(format!("attention {s:?}: {why}; expected {SYNTAX}"));
        if s == "full" {
            return Ok(Attention::Full);
        }
        let Some(rest) = s.strip_prefix("rewa:") else {
            return Err(bad("unknown mode".into()));
        };
        let (mut bits, mut top) = (None, None);
        let mut a = RewaAttention::new(0, 0);
        // keys= takes the rest of the spec (a path may hold commas)
        let (opts, keys) = match rest.find("keys=") {
            Some(0) => ("", Some(&rest[5..])),
            Some(i) if rest[..i].ends_with(',') => (&rest[..i - 1], Some(&rest[i + 5..])),
            _ => (rest, None),
        };
        let mut seen: Vec<&str> = Vec::new();
        for kv in opts.split(',').filter(|_| !opts.is_empty()) {
            if kv.is_empty() {
                return Err(bad(
                    "an empty setting (two commas in a row, or one at an end)".into(),
                ));
            }
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| bad(format!("{kv:?} is not key=value")))?;
            if seen.contains(&k) {
                return Err(bad(format!("{k}= given twice")));
            }
            seen.push(k);
            let num = || {
                v.parse::<usize>()
                    .map_err(|_| bad(format!("{k}={v:?} is not a whole number")))
            };
            match k {
                "bits" => bits = Some(num()?),
                "top" => top = Some(num()?),
                "sink" => a.sink = num()?,
                "last" => a.last = num()?,
                "window" => a.window = num()?,
                "rank" => match num()? {
                    0 => return Err(bad("rank=0 keeps no direction".into())),
                    r => a.rank = Some(r),
                },
                "score" => {
                    a.score = match v {
                        "hamming" => Score::Hamming,
                        "asym" => Score::Asym,
                        "exact" => Score::Exact,
                        _ => return Err(bad(format!("score={v:?}"))),
                    }
                }
                _ => return Err(bad(format!("unknown setting {k:?}"))),
            }
        }
        if let Some(k) = keys {
            if k.is_empty() {
                return Err(bad("keys= names no file".into()));
            }
            a.keys = Some(PathBuf::from(k));
        }
        a.bits = bits.ok_or_else(|| bad("bits= is required".into()))?;
        a.top = top.ok_or_else(|| bad("top= is required".into()))?;
        if a.bits == 0 || a.bits > MAX_BITS {
            return Err(bad(format!("bits={} outside 1..={MAX_BITS}", a.bits)));
        }
        if a.top == 0 {
            return Err(bad("top=0 keeps no key".into()));
        }
        if a.rank.is_some() && a.keys.is_none() {
            return Err(bad("rank= picks fitted directions: it needs keys=".into()));
        }
        Ok(Attention::Rewa(a))
    }
}

impl fmt::Display for Attention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attention::Full => f.write_str("full"),
            Attention::Rewa(a) => {
                write!(f, "rewa:bits={},top={}", a.bits, a.top)?;
                if a.sink != 1 {
                    write!(f, ",sink={}", a.sink)?;
                }
                if a.last != 0 {
                    write!(f, ",last={}", a.last)?;
                }
                if a.window != 0 {
                    write!(f, ",window={}", a.window)?;
                }
                match a.score {
                    Score::Hamming => {}
                    Score::Asym => f.write_str(",score=asym")?,
                    Score::Exact => f.write_str(",score=exact")?,
                }
                if let Some(r) = a.rank {
                    write!(f, ",rank={r}")?;
                }
                if let Some(k) = &a.keys {
                    write!(f, ",keys={}", k.display())?;
                }
                Ok(())
            }
        }
    }
}

/// The shape of a model's attention: layers, heads, head dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Transformer layers.
    pub layers: usize,
    /// Heads per layer.
    pub heads: usize,
    /// Dimension of each head's queries and keys.
    pub head_dim: usize,
}

/// Per layer and head, the principal directions of the model's keys (each text's keys centred
/// on their own mean), by decreasing variance: what `keys=FILE` loads.
#[derive(Clone, Debug)]
pub struct KeyProjections {
    /// The model's attention shape.
    pub shape: AttentionShape,
    /// `layers x heads x head_dim x head_dim`: row `r` of a head's block is its `r`-th
    /// direction (unit length).
    pub components: Vec<f32>,
    /// `layers x heads x head_dim`: the variance along each direction.
    pub variances: Vec<f32>,
    /// SHA-256 of the weights the keys came from.
    pub weights_sha256: String,
    /// Texts the fit saw.
    pub texts: usize,
    /// Keys per head the fit saw.
    pub keys: usize,
}

const FORMAT: &str = "rewa-attention-keys";

impl KeyProjections {
    /// Principal directions from per-head key covariances (`layers x heads x dh x dh`, f64,
    /// sums of centred outer products over `keys` keys).
    pub(crate) fn from_covariances(
        shape: AttentionShape,
        cov: &[f64],
        texts: usize,
        keys: usize,
        weights_sha256: String,
    ) -> Result<KeyProjections> {
        let d = shape.head_dim;
        if keys < 2 {
            return Err(Error::InvalidInput(format!(
                "fitting key projections needs at least 2 keys per head, the texts gave {keys}"
            )));
        }
        let mut components = Vec::with_capacity(cov.len());
        let mut variances = Vec::new();
        for c in cov.chunks_exact(d * d) {
            let m = faer::Mat::<f64>::from_fn(d, d, |i, j| c[i * d + j] / (keys - 1) as f64);
            let evd = m
                .self_adjoint_eigen(faer::Side::Lower)
                .map_err(|e| Error::InvalidInput(format!("eigendecomposition failed: {e:?}")))?;
            let (u, s) = (evd.U(), evd.S().column_vector());
            let mut order: Vec<usize> = (0..d).collect();
            order.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
            for &j in &order {
                let col: Vec<f64> = (0..d).map(|i| u[(i, j)]).collect();
                // sign fixed (largest entry positive) so fits are reproducible
                let big = col
                    .iter()
                    .fold(0f64, |a, &b| if b.abs() > a.abs() { b } else { a });
                let sg = if big < 0.0 { -1.0 } else { 1.0 };
                components.extend(col.iter().map(|v| (v * sg) as f32));
                variances.push(s[j].max(0.0) as f32);
            }
        }
        Ok(KeyProjections {
            shape,
            components,
            variances,
            weights_sha256,
            texts,
            keys,
        })
    }

    /// Writes the projections as safetensors (`components`, `variances`, and the shape, the
    /// weights' SHA-256 and the counts in the metadata), atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let s = self.shape;
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (c, v) = (bytes(&self.components), bytes(&self.variances));
        let views = [
            (
                "components",
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    vec![s.layers, s.heads, s.head_dim, s.head_dim],
                    &c,
                )
                .map_err(st_err)?,
            ),
            (
                "variances",
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    vec![s.layers, s.heads, s.head_dim],
                    &v,
                )
                .map_err(st_err)?,
            ),
        ];
        let meta: HashMap<String, String> = [
            ("format", FORMAT.to_string()),
            ("weights_sha256", self.weights_sha256.clone()),
            ("texts", self.texts.to_string()),
            ("keys", self.keys.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let data = safetensors::serialize(views, Some(meta)).map_err(st_err)?;
        rewa::io::write_atomic(path, &[&data])
            .map_err(|e| Error::InvalidInput(format!("writing {}: {e}", path.display())))
    }

    /// Reads what [`KeyProjections::save`] wrote.
    pub fn load(path: &Path) -> Result<KeyProjections> {
        let model_err = |reason: String| Error::Model {
            path: path.to_path_buf(),
            reason,
        };
        let data = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&data)
            .map_err(|e| model_err(format!("not a safetensors file: {e}")))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(model_err(format!(
                "not a key-projection file (its metadata has no format {FORMAT:?}); make one with `rewa attention fit`"
            )));
        }
        let st = safetensors::SafeTensors::deserialize(&data)
            .map_err(|e| model_err(format!("corrupt: {e}")))?;
        let read = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
            let t = st
                .tensor(name)
                .map_err(|_| model_err(format!("no tensor {name:?}")))?;
            if t.dtype() != safetensors::Dtype::F32 {
                return Err(model_err(format!("{name} is not f32")));
            }
            let v = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok((t.shape().to_vec(), v))
        };
        let (cs, components) = read("components")?;
        let (vs, variances) = read("variances")?;
        if cs.len() != 4 || cs[2] != cs[3] || vs != cs[..3] || cs.contains(&0) {
            return Err(model_err(format!(
                "shapes {cs:?} and {vs:?} are not layers x heads x d x d and layers x heads x d"
            )));
        }
        if components.iter().chain(&variances).any(|x| !x.is_finite()) {
            return Err(model_err("holds a NaN or infinite value".into()));
        }
        let count = |k: &str| meta.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(KeyProjections {
            shape: AttentionShape {
                layers: cs[0],
                heads: cs[1],
                head_dim: cs[2],
            },
            components,
            variances,
            weights_sha256: meta.get("weights_sha256").cloned().unwrap_or_default(),
            texts: count("texts"),
            keys: count("keys"),
        })
    }
}

fn st_err(e: safetensors::SafeTensorError) -> Error {
    Error::InvalidInput(format!("safetensors: {e}"))
}

/// One head's code: the projection (`bits x head_dim`, row-major) and its blocks.
pub(crate) struct HeadCode {
    proj: Vec<f32>,
    /// Row ranges of `proj` that form one rotation each (the asymmetric factor is per block).
    blocks: Vec<(usize, usize)>,
}

/// Everything the REWA kernels need: the settings and each (layer, head)'s code.
pub(crate) struct Plan {
    pub(crate) cfg: RewaAttention,
    pub(crate) shape: AttentionShape,
    codes: Vec<HeadCode>,
}

/// Fitted directions kept by default: the fewest holding 90% of a head's key variance.
fn default_rank(var: &[f32]) -> usize {
    let total: f32 = var.iter().sum();
    let mut acc = 0.0;
    for (i, v) in var.iter().enumerate() {
        acc += v;
        if acc >= 0.9 * total {
            return i + 1;
        }
    }
    var.len()
}

/// splitmix64: the seeded signs of the random rotations.
fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Plan {
    /// Codes for every head of a model of `shape`: random Hadamard blocks seeded by (layer,
    /// head), after the fitted directions when `keys` is given.
    pub(crate) fn new(
        cfg: RewaAttention,
        shape: AttentionShape,
        keys: Option<&KeyProjections>,
    ) -> Result<Plan> {
        if let Some(k) = keys {
            if k.shape != shape {
                return Err(Error::InvalidInput(format!(
                    "the key projections are for {} layers x {} heads x {} dims, this model has {} x {} x {}",
                    k.shape.layers, k.shape.heads, k.shape.head_dim, shape.layers, shape.heads, shape.head_dim
                )));
            }
        }
        let d = shape.head_dim;
        let mut codes = Vec::with_capacity(shape.layers * shape.heads);
        for lh in 0..shape.layers * shape.heads {
            // the space the random rotations act in: all of the head's dimensions, or the
            // top `r` fitted directions (`basis`, r x d)
            let basis: Option<(usize, &[f32])> = keys.map(|k| {
                let var = &k.variances[lh * d..(lh + 1) * d];
                let r = cfg.rank.unwrap_or_else(|| default_rank(var)).clamp(1, d);
                (r, &k.components[lh * d * d..][..r * d])
            });
            let r = basis.map_or(d, |b| b.0);
            let p = r.next_power_of_two();
            let mut proj = Vec::with_capacity(cfg.bits * d);
            let mut blocks = Vec::new();
            let mut seed = 0x5EED_0000_0000 ^ lh as u64;
            let mut row = vec![0f32; r];
            while blocks.last().map_or(0, |b: &(usize, usize)| b.1) < cfg.bits {
                let start = blocks.last().map_or(0, |b| b.1);
                let rows = (cfg.bits - start).min(p);
                // rows of H D / sqrt(p) restricted to the first r columns
                let signs: Vec<f32> = (0..p)
                    .map(|_| {
                        if splitmix(&mut seed) & 1 == 0 {
                            1.0
                        } else {
                            -1.0
                        }
                    })
                    .collect();
                let scale = 1.0 / (p as f32).sqrt();
                for i in 0..rows {
                    for (c, (o, s)) in row.iter_mut().zip(&signs).enumerate() {
                        let h = if (i & c).count_ones() % 2 == 0 {
                            1.0
                        } else {
                            -1.0
                        };
                        *o = h * s * scale;
                    }
                    match basis {
                        None => proj.extend_from_slice(&row),
                        Some((_, b)) => proj.extend((0..d).map(|c| {
                            row.iter()
                                .enumerate()
                                .map(|(t, w)| w * b[t * d + c])
                                .sum::<f32>()
                        })),
                    }
                }
                blocks.push((start, start + rows));
            }
            codes.push(HeadCode { proj, blocks });
        }
        Ok(Plan { cfg, shape, codes })
    }

    pub(crate) fn head(&self, layer: usize, head: usize) -> &HeadCode {
        &self.codes[layer * self.shape.heads + head]
    }
}

/// A head's queries, keys and values inside a row-major buffer (rows `stride` apart).
#[derive(Clone, Copy)]
pub(crate) struct HeadRows<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub stride: usize,
    pub len: usize,
    pub dh: usize,
}

/// Full softmax attention of one head into `out` (rows `out_stride` apart). `bias`: the
/// additive bias of (query i, key j) at `bias[i * bias_stride + j]` (MPNet's relative
/// positions). `scores`: at least `len * len` scratch.
pub(crate) fn full_head(
    h: HeadRows<'_>,
    bias: Option<(&[f32], usize)>,
    scores: &mut [f32],
    out: &mut [f32],
    out_stride: usize,
) {
    let (len, dh) = (h.len, h.dh);
    let scale = 1.0 / (dh as f32).sqrt();
    let s = &mut scores[..len * len];
    // SAFETY: rows i < len of q/k/v are at i * stride (+ < dh) inside their slices (the
    // caller's contract); s holds len x len; out rows i < len at i * out_stride (+ < dh).
    unsafe {
        matrixmultiply::sgemm(
            len,
            dh,
            len,
            scale,
            h.q.as_ptr(),
            h.stride as isize,
            1,
            h.k.as_ptr(),
            1,
            h.stride as isize,
            0.0,
            s.as_mut_ptr(),
            len as isize,
            1,
        );
    }
    for i in 0..len {
        let row = &mut s[i * len..(i + 1) * len];
        if let Some((b, bs)) = bias {
            for (x, y) in row.iter_mut().zip(&b[i * bs..][..len]) {
                *x += y;
            }
        }
        crate::kernels::softmax(row);
    }
    // The scores times the values: the values packed once per head (len x dh), the scores
    // read in place (a general GEMM would copy all len x len of them for dh outputs each).
    VALUES.with(|v| {
        let mut v = v.borrow_mut();
        v.pack_columns(h.v, h.stride, len, dh);
        crate::fgemm::gemm(
            Rows { x: s, stride: len },
            len,
            &v,
            None,
            Rows {
                x: out,
                stride: out_stride,
            },
        );
    });
}

thread_local! {
    /// One head's values, packed for the kernel that multiplies the scores by them.
    static VALUES: std::cell::RefCell<Packed> =
        std::cell::RefCell::new(Packed::empty(crate::fgemm::level()));
}

/// Scratch space of [`rewa_head`], reused across heads and texts.
#[derive(Default)]
pub(crate) struct Scratch {
    kc: Vec<f32>,
    qc: Vec<f32>,
    vc: Vec<f32>,
    y: Vec<f32>,
    z: Vec<f32>,
    kcode: Vec<u64>,
    qcode: Vec<u64>,
    scores: Vec<f32>,
    dist: Vec<u32>,
    hist: Vec<u32>,
    sel: Vec<u32>,
    cand: Vec<u32>,
    p: Vec<f32>,
    /// Keys attended, summed over queries (for cost reports).
    pub(crate) attended: u64,
}

fn resize<T: Clone + Default>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() < n {
        v.resize(n, T::default());
    }
    &mut v[..n]
}

dispatched!(
    /// REWA attention of one head (see the module docs); the same contract as
    /// [`full_head`]. Compiled twice, for AVX2 + FMA and for the baseline (which has POPCNT).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rewa_head(
        h: HeadRows<'_>,
        bias: Option<(&[f32], usize)>,
        cfg: &RewaAttention,
        code: &HeadCode,
        sc: &mut Scratch,
        out: &mut [f32],
        out_stride: usize
    ) => rewa_head_body
);

#[inline(always)]
fn rewa_head_body(
    h: HeadRows<'_>,
    bias: Option<(&[f32], usize)>,
    cfg: &RewaAttention,
    code: &HeadCode,
    sc: &mut Scratch,
    out: &mut [f32],
    out_stride: usize,
) {
    let (len, dh, bits) = (h.len, h.dh, cfg.bits);
    let words = bits.div_ceil(64);
    let scale = 1.0 / (dh as f32).sqrt();
    // keys centred on the text's mean, queries as they are; both contiguous
    let kc = resize(&mut sc.kc, len * dh);
    let mut mean = vec![0f32; dh];
    for i in 0..len {
        for (m, x) in mean.iter_mut().zip(&h.k[i * h.stride..][..dh]) {
            *m += x;
        }
    }
    mean.iter_mut().for_each(|m| *m /= len as f32);
    for i in 0..len {
        let row = &mut kc[i * dh..(i + 1) * dh];
        for ((o, x), m) in row.iter_mut().zip(&h.k[i * h.stride..][..dh]).zip(&mean) {
            *o = x - m;
        }
    }
    let qc = resize(&mut sc.qc, len * dh);
    let vc = resize(&mut sc.vc, len * dh);
    for i in 0..len {
        qc[i * dh..(i + 1) * dh].copy_from_slice(&h.q[i * h.stride..][..dh]);
        vc[i * dh..(i + 1) * dh].copy_from_slice(&h.v[i * h.stride..][..dh]);
    }
    let y = resize(&mut sc.y, len * bits);
    rewa::linalg::gemm_abt(kc, &code.proj, len, dh, bits, y);
    let z = resize(&mut sc.z, len * bits);
    rewa::linalg::gemm_abt(qc, &code.proj, len, dh, bits, z);
    let kcode = resize(&mut sc.kcode, len * words);
    pack_signs(y, bits, kcode);
    match cfg.score {
        Score::Hamming => {
            let qcode = resize(&mut sc.qcode, len * words);
            pack_signs(z, bits, qcode);
        }
        Score::Asym => {
            // y becomes the keys' signs times their block's factor; scores = z y^T
            for r in y.chunks_exact_mut(bits) {
                for &(a, b) in &code.blocks {
                    let blk = &mut r[a..b];
                    let l1: f32 = blk.iter().map(|v| v.abs()).sum();
                    let l2: f32 = blk.iter().map(|v| v * v).sum();
                    let f = if l1 > 0.0 { l2 / l1 } else { 0.0 };
                    for v in blk.iter_mut() {
                        *v = if *v > 0.0 { f } else { -f };
                    }
                }
            }
            let s = resize(&mut sc.scores, len * len);
            rewa::linalg::gemm_abt(z, y, len, bits, len, s);
        }
        Score::Exact => {
            let s = resize(&mut sc.scores, len * len);
            rewa::linalg::gemm_abt(qc, kc, len, dh, len, s);
        }
    }
    let dist = resize(&mut sc.dist, len);
    let mut sel = std::mem::take(&mut sc.sel);
    let mut cand = std::mem::take(&mut sc.cand);
    let p = resize(&mut sc.p, len);
    let mut forced: Vec<u32> = Vec::new();
    for i in 0..len {
        // the always-kept keys, ascending: the first `sink`, the window around i, the last
        // `last`
        forced.clear();
        let head = cfg.sink.min(len);
        let tail = len - cfg.last.min(len);
        forced.extend(0..head as u32);
        if cfg.window > 0 {
            let lo = i.saturating_sub(cfg.window).max(head);
            // saturating: window=2^64-1 keeps every key rather than wrapping to none
            let hi = i.saturating_add(cfg.window).saturating_add(1).min(tail);
            forced.extend(lo as u32..hi.max(lo) as u32);
        }
        forced.extend(tail.max(head) as u32..len as u32);
        sel.clear();
        match cfg.score {
            Score::Hamming => {
                let qw = &sc.qcode[i * words..(i + 1) * words];
                let hist = resize(&mut sc.hist, 4 * (bits + 1));
                hist.fill(0);
                hamming_row(qw, kcode, dist, hist);
                let hist = &mut hist[..bits + 1];
                for &j in &forced {
                    hist[dist[j as usize] as usize] -= 1;
                    dist[j as usize] = u32::MAX;
                }
                select_smallest(dist, hist, cfg.top, &mut sel);
            }
            Score::Asym | Score::Exact => {
                cand.clear();
                let mut f = forced.iter().peekable();
                cand.extend((0..len as u32).filter(|&j| f.next_if_eq(&&j).is_none()));
                let row = &sc.scores[i * len..(i + 1) * len];
                select_largest(row, &mut cand, cfg.top, &mut sel);
            }
        }
        sel.extend_from_slice(&forced);
        sel.sort_unstable();
        sc.attended += sel.len() as u64;
        // exact attention over the kept keys, from the contiguous copies (the centred keys
        // shift every score of query i by the same q.mean, which softmax ignores)
        let q = &qc[i * dh..(i + 1) * dh];
        let pr = &mut p[..sel.len()];
        for (pj, &j) in pr.iter_mut().zip(&sel) {
            let k = &kc[j as usize * dh..][..dh];
            let mut s = rewa::distance::dot(q, k) * scale;
            if let Some((b, bs)) = bias {
                s += b[i * bs + j as usize];
            }
            *pj = s;
        }
        crate::kernels::softmax(pr);
        let o = &mut out[i * out_stride..][..dh];
        o.fill(0.0);
        for (&pj, &j) in pr.iter().zip(&sel) {
            let v = &vc[j as usize * dh..][..dh];
            for (a, b) in o.iter_mut().zip(v) {
                *a += pj * b;
            }
        }
    }
    sc.sel = sel;
    sc.cand = cand;
}

/// Sign bits of each row of `y` (`bits` wide): bit b of word b / 64 set when `y[b] > 0`.
#[inline(always)]
fn pack_signs(y: &[f32], bits: usize, out: &mut [u64]) {
    let words = bits.div_ceil(64);
    for (r, o) in y.chunks_exact(bits).zip(out.chunks_exact_mut(words)) {
        o.fill(0);
        for (b, &v) in r.iter().enumerate() {
            o[b / 64] |= u64::from(v > 0.0) << (b % 64);
        }
    }
}

/// The Hamming distance of the query's code `qw` to every key's (`kcode`, `qw.len()` words
/// each) into `dist`, and their counts into `hist[..bits + 1]`; `hist` holds four times
/// that, zeroed, for four partial counts, so that keys at the same distance do not wait on
/// each other's increment.
#[inline(always)]
fn hamming_row(qw: &[u64], kcode: &[u64], dist: &mut [u32], hist: &mut [u32]) {
    match qw.len() {
        1 => hamming_row_words::<1>(qw, kcode, dist, hist),
        2 => hamming_row_words::<2>(qw, kcode, dist, hist),
        _ => hamming_row_words::<0>(qw, kcode, dist, hist),
    }
}

/// [`hamming_row`] for codes of `W` words (`W = 0`: any length).
#[inline(always)]
fn hamming_row_words<const W: usize>(
    qw: &[u64],
    kcode: &[u64],
    dist: &mut [u32],
    hist: &mut [u32],
) {
    let bins = hist.len() / 4;
    let words = if W == 0 { qw.len() } else { W };
    let (c0, rest) = hist.split_at_mut(bins);
    let (c1, rest) = rest.split_at_mut(bins);
    let (c2, c3) = rest.split_at_mut(bins);
    let d = |k: &[u64]| -> u32 { qw.iter().zip(k).map(|(a, b)| (a ^ b).count_ones()).sum() };
    let mut keys = kcode[..dist.len() * words].chunks_exact(words);
    let mut ds = dist.chunks_exact_mut(4);
    for out in &mut ds {
        let x = [
            d(keys.next().expect("invariant: one code per distance")),
            d(keys.next().expect("invariant: one code per distance")),
            d(keys.next().expect("invariant: one code per distance")),
            d(keys.next().expect("invariant: one code per distance")),
        ];
        out.copy_from_slice(&x);
        c0[x[0] as usize] += 1;
        c1[x[1] as usize] += 1;
        c2[x[2] as usize] += 1;
        c3[x[3] as usize] += 1;
    }
    for (o, k) in ds.into_remainder().iter_mut().zip(keys) {
        *o = d(k);
        c0[*o as usize] += 1;
    }
    for b in 0..bins {
        c0[b] += c1[b] + c2[b] + c3[b];
    }
}

/// Appends to `out` the `top` indices of smallest `dist` (ties: lower index first), skipping
/// entries equal to `u32::MAX`; `hist[d]` counts the other entries at distance `d`. The
/// counts give the threshold `t`; one pass takes every distance below it and the first ones
/// at `t` still needed, stopping when it has them all.
#[inline(always)]
pub(crate) fn select_smallest(dist: &[u32], hist: &[u32], top: usize, out: &mut Vec<u32>) {
    let (mut t, mut below) = (0usize, 0usize);
    while t < hist.len() && below + (hist[t] as usize) < top {
        below += hist[t] as usize;
        t += 1;
    }
    // few keys fall below t (about top of len), so these branches are rarely taken
    let mut at_t = top.saturating_sub(below);
    let mut left = below + at_t;
    for (j, &d) in dist.iter().enumerate() {
        if (d as usize) < t {
            out.push(j as u32);
            left -= 1;
        } else if d as usize == t && at_t > 0 {
            out.push(j as u32);
            at_t -= 1;
            left -= 1;
        } else {
            continue;
        }
        if left == 0 {
            break;
        }
    }
}

/// Appends to `out` the `top` candidates of largest `score` (ties: lower index first).
pub(crate) fn select_largest(score: &[f32], cand: &mut [u32], top: usize, out: &mut Vec<u32>) {
    let cmp = |a: &u32, b: &u32| {
        score[*b as usize]
            .total_cmp(&score[*a as usize])
            .then(a.cmp(b))
    };
    if cand.len() > top {
        cand.select_nth_unstable_by(top, cmp);
    }
    out.extend_from_slice(&cand[..top.min(cand.len())]);
}

/// What one layer's attention costs at one length, from [`cost`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct Cost {
    /// Tokens in the text.
    pub len: usize,
    /// Full attention: seconds per layer (all heads), best of the repetitions.
    pub full_seconds: f64,
    /// REWA attention: seconds per layer.
    pub rewa_seconds: f64,
    /// Full attention's multiply-adds per layer (`2 len^2 dh` per head).
    pub full_macs: f64,
    /// REWA's multiply-adds per layer: projections (`2 len bits dh`), asymmetric scores
    /// (`len^2 bits`), and the exact attention over the kept keys (`2 len kept dh`).
    pub rewa_macs: f64,
    /// REWA's 64-bit XOR + popcount steps per layer (Hamming scores), and the selection's
    /// passes over the scores (`2 len^2`).
    pub rewa_word_ops: f64,
    /// Keys each query attended, on average.
    pub kept: f64,
}

/// Times one layer of full and REWA attention (every head, one thread) on a random text of
/// each length, `reps` times each side alternating, keeping the best; with the operation
/// counts. The data are random (a cost does not depend on them; a Hamming selection's does
/// not either).
pub fn cost(
    cfg: &RewaAttention,
    heads: usize,
    head_dim: usize,
    lens: &[usize],
    reps: usize,
) -> Result<Vec<Cost>> {
    if heads == 0 || head_dim == 0 {
        return Err(Error::InvalidInput(
            "heads and head_dim must be at least 1".into(),
        ));
    }
    let shape = AttentionShape {
        layers: 1,
        heads,
        head_dim,
    };
    let mut plain = cfg.clone();
    plain.keys = None;
    let plan = Plan::new(plain, shape, None)?;
    let h = heads * head_dim;
    let mut rows = Vec::new();
    for &len in lens {
        let mut seed = len as u64;
        let qkv: Vec<f32> = (0..len * 3 * h)
            .map(|_| (splitmix(&mut seed) >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .collect();
        let mut out = vec![0f32; len * h];
        let mut scores = vec![0f32; len * len];
        let mut sc = Scratch::default();
        let (mut best_full, mut best_rewa) = (f64::INFINITY, f64::INFINITY);
        let mut kept = 0.0;
        for _ in 0..reps.max(1) {
            let t = std::time::Instant::now();
            for hd in 0..heads {
                full_head(
                    head_rows(&qkv, h, hd, head_dim, len),
                    None,
                    &mut scores,
                    &mut out[hd * head_dim..],
                    h,
                );
            }
            best_full = best_full.min(t.elapsed().as_secs_f64());
            std::hint::black_box(&out);
            sc.attended = 0;
            let t = std::time::Instant::now();
            for hd in 0..heads {
                let rows = head_rows(&qkv, h, hd, head_dim, len);
                if cfg.top >= len {
                    full_head(rows, None, &mut scores, &mut out[hd * head_dim..], h);
                    sc.attended += (len * len) as u64;
                } else {
                    rewa_head(
                        rows,
                        None,
                        &plan.cfg,
                        plan.head(0, hd),
                        &mut sc,
                        &mut out[hd * head_dim..],
                        h,
                    );
                }
            }
            best_rewa = best_rewa.min(t.elapsed().as_secs_f64());
            std::hint::black_box(&out);
            kept = sc.attended as f64 / (heads * len) as f64;
        }
        let (l, d, b, hf) = (len as f64, head_dim as f64, cfg.bits as f64, heads as f64);
        let sparse = cfg.top < len;
        let scored = match cfg.score {
            Score::Hamming => 0.0,
            Score::Asym => l * l * b,
            Score::Exact => l * l * d,
        };
        rows.push(Cost {
            len,
            full_seconds: best_full,
            rewa_seconds: best_rewa,
            full_macs: hf * 2.0 * l * l * d,
            rewa_macs: if sparse {
                hf * (2.0 * l * b * d + scored + 2.0 * l * kept * d)
            } else {
                hf * 2.0 * l * l * d
            },
            rewa_word_ops: if sparse {
                let words = (b / 64.0).ceil();
                hf * (if cfg.score == Score::Hamming {
                    l * l * words
                } else {
                    0.0
                } + 2.0 * l * l)
            } else {
                0.0
            },
            kept,
        });
    }
    Ok(rows)
}

fn head_rows(qkv: &[f32], h: usize, hd: usize, dh: usize, len: usize) -> HeadRows<'_> {
    HeadRows {
        q: &qkv[hd * dh..],
        k: &qkv[h + hd * dh..],
        v: &qkv[2 * h + hd * dh..],
        stride: 3 * h,
        len,
        dh,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| (splitmix(&mut s) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
            .collect()
    }

    /// The plan of one layer of `heads` heads of `dh` dims for `cfg` (random rotations).
    fn one_layer(cfg: &RewaAttention, heads: usize, dh: usize) -> Plan {
        let shape = AttentionShape {
            layers: 1,
            heads,
            head_dim: dh,
        };
        Plan::new(cfg.clone(), shape, None).unwrap()
    }

    #[test]
    fn specs_round_trip_and_bad_ones_are_refused() {
        for s in [
            "full",
            "rewa:bits=64,top=32",
            "rewa:bits=32,top=8,sink=0,window=2,score=asym",
            "rewa:bits=64,top=16,last=1",
            "rewa:bits=128,top=16,keys=/a,b/keys.safetensors",
            "rewa:bits=16,top=4,rank=8,keys=k.safetensors",
        ] {
            let a: Attention = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        let a: Attention = "rewa:top=4,bits=8".parse().unwrap();
        assert_eq!(a, Attention::Rewa(RewaAttention::new(8, 4)));
        for (s, why) in [
            ("sparse", "unknown mode"),
            ("rewa:bits=64", "top= is required"),
            ("rewa:top=8", "bits= is required"),
            ("rewa:bits=0,top=8", "outside"),
            ("rewa:bits=2000,top=8", "outside"),
            ("rewa:bits=64,top=0", "keeps no key"),
            ("rewa:bits=64,top=x", "not a whole number"),
            ("rewa:bits=64,top=8,score=l2", "score="),
            ("rewa:bits=64,top=8,colour=red", "unknown setting"),
            ("rewa:bits=64,top=8,keys=", "names no file"),
            ("rewa:bits=64,top=8,rank=4", "needs keys="),
            ("rewa:bits=64,top=8,rank=0,keys=k", "rank=0"),
            ("rewa:bits=8,,top=4", "empty setting"),
            ("rewa:bits=8,top=4,", "empty setting"),
            ("rewa:,bits=8,top=4", "empty setting"),
            ("rewa:bits=8,top=4,,keys=k", "empty setting"),
            ("rewa:bits=8,bits=16,top=4", "bits= given twice"),
            ("rewa:bits=8,top=4,sink=1,sink=2", "sink= given twice"),
            (
                "rewa:bits=8,top=4,score=asym,score=exact",
                "score= given twice",
            ),
        ] {
            let e = s.parse::<Attention>().unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
    }

    /// The selection kernels against sorting every key.
    #[test]
    fn selections_equal_a_full_sort() {
        for seed in 0..50u64 {
            let len = 1 + (seed as usize * 7) % 90;
            let bits = 1 + (seed as usize * 13) % 70;
            let top = 1 + (seed as usize * 5) % (len + 3);
            let mut s = seed;
            let dist: Vec<u32> = (0..len)
                .map(|_| match splitmix(&mut s) % 10 {
                    0 => u32::MAX,
                    r => (r as usize * bits / 9) as u32,
                })
                .collect();
            let mut got = Vec::new();
            let mut hist = vec![0u32; bits + 1];
            dist.iter()
                .filter(|&&d| d != u32::MAX)
                .for_each(|&d| hist[d as usize] += 1);
            select_smallest(&dist, &hist, top, &mut got);
            let mut want: Vec<u32> = (0..len as u32)
                .filter(|&j| dist[j as usize] != u32::MAX)
                .collect();
            want.sort_by_key(|&j| (dist[j as usize], j));
            want.truncate(top);
            want.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, want, "hamming, seed {seed}");

            let score: Vec<f32> = (0..len)
                .map(|_| (splitmix(&mut s) % 7) as f32 * 0.5)
                .collect();
            let mut cand: Vec<u32> = (0..len as u32).filter(|j| j % 5 != 3).collect();
            let mut want = cand.clone();
            let mut got = Vec::new();
            select_largest(&score, &mut cand, top, &mut got);
            want.sort_by(|&a, &b| {
                score[b as usize]
                    .total_cmp(&score[a as usize])
                    .then(a.cmp(&b))
            });
            want.truncate(top);
            want.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, want, "asym, seed {seed}");
        }
    }

    /// Distances and counts against bit-by-bit counting (50 keys: the four-key loop and its
    /// remainder).
    #[test]
    fn hamming_row_counts_differing_bits() {
        for words in [1usize, 2, 3] {
            let q: Vec<u64> = (0..words as u64)
                .map(|w| w.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                .collect();
            let mut s = words as u64;
            let keys: Vec<u64> = (0..50 * words).map(|_| splitmix(&mut s)).collect();
            let bits = 64 * words;
            let (mut d1, mut h1) = (vec![0u32; 50], vec![0u32; 4 * (bits + 1)]);
            hamming_row(&q, &keys, &mut d1, &mut h1);
            let mut count = vec![0u32; bits + 1];
            d1.iter().for_each(|&d| count[d as usize] += 1);
            assert_eq!(count, h1[..bits + 1]);
            let want: Vec<u32> = keys
                .chunks_exact(words)
                .map(|k| {
                    k.iter()
                        .zip(&q)
                        .map(|(a, b)| (0..64).filter(|i| (a ^ b) >> i & 1 == 1).count() as u32)
                        .sum()
                })
                .collect();
            assert_eq!(d1, want);
        }
    }

    /// The AVX2 build of the head kernel gives the baseline build's output exactly.
    #[test]
    fn head_kernel_twins_agree() {
        let (heads, dh, len) = (2, 32, 70);
        let h = heads * dh;
        let qkv = random(len * 3 * h, 21);
        let bias = random(len * len, 22);
        for score in [Score::Hamming, Score::Asym, Score::Exact] {
            let mut cfg = RewaAttention::new(64, 9);
            (cfg.score, cfg.window) = (score, 2);
            let plan = one_layer(&cfg, heads, dh);
            let (mut a, mut b) = (vec![0f32; len * h], vec![0f32; len * h]);
            let mut sc = Scratch::default();
            for hd in 0..heads {
                let r = head_rows(&qkv, h, hd, dh, len);
                let bb = Some((&bias[..], len));
                rewa_head(r, bb, &cfg, plan.head(0, hd), &mut sc, &mut a[hd * dh..], h);
                rewa_head_body(r, bb, &cfg, plan.head(0, hd), &mut sc, &mut b[hd * dh..], h);
            }
            assert_eq!(a, b, "{score:?}");
        }
    }

    /// Keeping every key is full attention, with and without a bias, for both scores.
    #[test]
    fn keeping_every_key_is_full_attention() {
        let (heads, dh, len) = (3, 16, 37);
        let h = heads * dh;
        let qkv = random(len * 3 * h, 7);
        let bias = random(len * len, 8);
        for score in [Score::Hamming, Score::Asym] {
            for b in [None, Some((&bias[..], len))] {
                let mut cfg = RewaAttention::new(24, len);
                cfg.score = score;
                let plan = one_layer(&cfg, heads, dh);
                let (mut full, mut sparse) = (vec![0f32; len * h], vec![0f32; len * h]);
                let mut scores = vec![0f32; len * len];
                let mut sc = Scratch::default();
                for hd in 0..heads {
                    let r = head_rows(&qkv, h, hd, dh, len);
                    full_head(r, b, &mut scores, &mut full[hd * dh..], h);
                    rewa_head(
                        r,
                        b,
                        &cfg,
                        plan.head(0, hd),
                        &mut sc,
                        &mut sparse[hd * dh..],
                        h,
                    );
                }
                assert_eq!(sc.attended, (heads * len * len) as u64);
                let worst = full
                    .iter()
                    .zip(&sparse)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(worst < 1e-5, "{score:?} bias {}: {worst}", b.is_some());
            }
        }
    }

    /// Fewer keys: each query keeps exactly top + the forced ones, and its output is the
    /// softmax over those keys computed directly.
    #[test]
    fn a_query_attends_to_its_selection_only() {
        let (dh, len) = (8, 40);
        let qkv = random(len * 3 * dh, 3);
        let mut cfg = RewaAttention::new(16, 5);
        cfg.window = 1;
        let plan = one_layer(&cfg, 1, dh);
        let mut out = vec![0f32; len * dh];
        let mut sc = Scratch::default();
        rewa_head(
            head_rows(&qkv, dh, 0, dh, len),
            None,
            &cfg,
            plan.head(0, 0),
            &mut sc,
            &mut out,
            dh,
        );
        // forced: token 0 and i-1, i, i+1 (fewer at the ends), plus 5
        let forced: u64 = (0..len)
            .map(|i| {
                ([0, i.saturating_sub(1), i, (i + 1).min(len - 1)]
                    .iter()
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()) as u64
            })
            .sum();
        assert_eq!(sc.attended, forced + 5 * len as u64);
        // rows differ from full attention (the test would be vacuous otherwise)
        let mut full = vec![0f32; len * dh];
        full_head(
            head_rows(&qkv, dh, 0, dh, len),
            None,
            &mut vec![0f32; len * len],
            &mut full,
            dh,
        );
        assert!(out.iter().zip(&full).any(|(a, b)| (a - b).abs() > 1e-3));
    }

    /// A window past the text keeps every key, up to `usize::MAX` (which once wrapped to an
    /// empty window): the output is full attention's, and every query attended every key.
    #[test]
    fn a_window_of_any_size_saturates() {
        let (dh, len) = (8, 24);
        let qkv = random(len * 3 * dh, 11);
        let mut full = vec![0f32; len * dh];
        full_head(
            head_rows(&qkv, dh, 0, dh, len),
            None,
            &mut vec![0f32; len * len],
            &mut full,
            dh,
        );
        let spec = format!("rewa:bits=16,top=2,window={}", usize::MAX);
        let Attention::Rewa(cfg) = spec.parse().unwrap() else {
            unreachable!()
        };
        assert_eq!(cfg.window, usize::MAX);
        let plan = one_layer(&cfg, 1, dh);
        let mut out = vec![0f32; len * dh];
        let mut sc = Scratch::default();
        rewa_head(
            head_rows(&qkv, dh, 0, dh, len),
            None,
            &cfg,
            plan.head(0, 0),
            &mut sc,
            &mut out,
            dh,
        );
        assert_eq!(sc.attended, (len * len) as u64);
        let worst = full
            .iter()
            .zip(&out)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "{worst}");
    }

    /// The kernel keeps exactly the keys a brute-force reference of the codes picks: values
    /// are one-hot rows (dh = len), so output entry j is non-zero iff key j was kept.
    #[test]
    fn the_kernel_keeps_the_reference_selection() {
        let (dh, len) = (32, 32);
        let mut qkv = random(len * 3 * dh, 5);
        for i in 0..len {
            for c in 0..dh {
                qkv[i * 3 * dh + 2 * dh + c] = (i == c) as u8 as f32;
                qkv[i * 3 * dh + dh + c] += 2.0; // an offset centring removes
            }
        }
        for (bits, score, sink, last, window) in [
            (16, Score::Hamming, 1, 0, 0),
            (64, Score::Hamming, 0, 1, 2),
            (100, Score::Asym, 1, 2, 1),
            (24, Score::Asym, 2, 0, 0),
            (8, Score::Exact, 1, 1, 3),
            (8, Score::Hamming, 3, 3, 4),
        ] {
            let mut cfg = RewaAttention::new(bits, 6);
            (cfg.score, cfg.sink, cfg.last, cfg.window) = (score, sink, last, window);
            let plan = one_layer(&cfg, 1, dh);
            let mut out = vec![0f32; len * dh];
            rewa_head(
                head_rows(&qkv, dh, 0, dh, len),
                None,
                &cfg,
                plan.head(0, 0),
                &mut Scratch::default(),
                &mut out,
                dh,
            );
            for i in 0..len {
                let got: Vec<u32> = (0..len as u32)
                    .filter(|&j| out[i * dh + j as usize] > 0.0)
                    .collect();
                let mut want = Vec::new();
                select_for(&qkv, dh, len, &cfg, plan.head(0, 0), i, &mut want);
                want.extend((0..len as u32).filter(|&j| {
                    let j = j as usize;
                    j < sink || j + last >= len || window > 0 && j.abs_diff(i) <= window
                }));
                want.sort_unstable();
                want.dedup();
                assert_eq!(got, want, "{bits} bits {score:?} query {i}");
            }
        }
    }

    /// The codes rank keys as the exact scores do: the kept keys hold far more of full
    /// attention's probability than random picks, more with more bits and with asym scores.
    #[test]
    fn codes_keep_the_heavy_keys() {
        let (dh, len, top) = (32, 128, 16);
        // keys with a shared offset (centring removes it) and uneven variance
        let mut qkv = random(len * 3 * dh, 11);
        for i in 0..len {
            for c in 0..dh {
                qkv[i * 3 * dh + c] *= 3.0;
                qkv[i * 3 * dh + dh + c] =
                    (qkv[i * 3 * dh + dh + c] + 2.0) * if c < 4 { 4.0 } else { 1.0 };
            }
        }
        let r = head_rows(&qkv, dh, 0, dh, len);
        let mut p = vec![0f32; len * len];
        full_head(r, None, &mut p, &mut vec![0f32; len * dh], dh);
        let mass = |cfg: &RewaAttention| -> f64 {
            let plan = one_layer(cfg, 1, dh);
            let mut m = 0.0;
            for i in 0..len {
                let mut keep = Vec::new();
                select_for(&qkv, dh, len, cfg, plan.head(0, 0), i, &mut keep);
                m += keep
                    .iter()
                    .map(|&j| p[i * len + j as usize] as f64)
                    .sum::<f64>();
            }
            m / len as f64
        };
        let random_mass = top as f64 / len as f64;
        let h32 = mass(&RewaAttention::new(32, top));
        let h128 = mass(&RewaAttention::new(128, top));
        let mut a = RewaAttention::new(32, top);
        a.score = Score::Asym;
        let a32 = mass(&a);
        assert!(
            h32 > 2.5 * random_mass,
            "hamming 32: {h32} vs random {random_mass}"
        );
        assert!(h128 > h32, "more bits: {h128} vs {h32}");
        assert!(a32 > h32, "asym: {a32} vs hamming {h32}");
    }

    /// The keys query `i` keeps by its code, besides the forced ones (sink and window, which
    /// are not candidates), computed the slow way: every projection a sum, every distance bit
    /// by bit.
    fn select_for(
        qkv: &[f32],
        dh: usize,
        len: usize,
        cfg: &RewaAttention,
        code: &HeadCode,
        i: usize,
        keep: &mut Vec<u32>,
    ) {
        let h = head_rows(qkv, dh, 0, dh, len);
        let bits = cfg.bits;
        let mut mean = vec![0f32; dh];
        for j in 0..len {
            for c in 0..dh {
                mean[c] += h.k[j * h.stride + c] / len as f32;
            }
        }
        let proj = |x: &[f32], centre: bool| -> Vec<f32> {
            (0..bits)
                .map(|b| {
                    (0..dh)
                        .map(|c| {
                            code.proj[b * dh + c] * (x[c] - if centre { mean[c] } else { 0.0 })
                        })
                        .sum()
                })
                .collect()
        };
        let forced = |j: usize| {
            j < cfg.sink || j + cfg.last >= len || cfg.window > 0 && j.abs_diff(i) <= cfg.window
        };
        let zq = proj(&h.q[i * h.stride..][..dh], false);
        let ys: Vec<Vec<f32>> = (0..len)
            .map(|j| proj(&h.k[j * h.stride..][..dh], true))
            .collect();
        match cfg.score {
            Score::Hamming => {
                let dist: Vec<u32> = ys
                    .iter()
                    .enumerate()
                    .map(|(j, y)| {
                        if forced(j) {
                            u32::MAX
                        } else {
                            y.iter()
                                .zip(&zq)
                                .filter(|(a, b)| (**a > 0.0) != (**b > 0.0))
                                .count() as u32
                        }
                    })
                    .collect();
                let mut hist = vec![0u32; bits + 1];
                dist.iter()
                    .filter(|&&d| d != u32::MAX)
                    .for_each(|&d| hist[d as usize] += 1);
                select_smallest(&dist, &hist, cfg.top, keep);
            }
            Score::Exact => {
                let q = &h.q[i * h.stride..][..dh];
                let score: Vec<f32> = (0..len)
                    .map(|j| {
                        (0..dh)
                            .map(|c| q[c] * (h.k[j * h.stride + c] - mean[c]))
                            .sum()
                    })
                    .collect();
                let mut cand: Vec<u32> = (0..len as u32).filter(|&j| !forced(j as usize)).collect();
                select_largest(&score, &mut cand, cfg.top, keep);
            }
            Score::Asym => {
                let score: Vec<f32> = ys
                    .iter()
                    .map(|y| {
                        code.blocks
                            .iter()
                            .map(|&(a, b)| {
                                let l1: f32 = y[a..b].iter().map(|v| v.abs()).sum();
                                let l2: f32 = y[a..b].iter().map(|v| v * v).sum();
                                let f = l2 / l1;
                                (a..b)
                                    .map(|t| if y[t] > 0.0 { zq[t] * f } else { -zq[t] * f })
                                    .sum::<f32>()
                            })
                            .sum()
                    })
                    .collect();
                let mut cand: Vec<u32> = (0..len as u32).filter(|&j| !forced(j as usize)).collect();
                select_largest(&score, &mut cand, cfg.top, keep);
            }
        }
    }
}
