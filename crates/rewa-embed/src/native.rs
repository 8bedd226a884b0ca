//! The encoder forward pass in plain Rust: BERT and MPNet on f32 slices, one batch per thread.
//!
//! The same arithmetic as the candle models ([`crate::bert`] and [`crate::mpnet`]), which stay
//! as its reference (`Backend::Candle`), arranged for the CPU:
//!
//! - **No padding.** The texts of a batch are concatenated: every linear layer runs one GEMM
//!   over all their tokens, and attention runs per text over its own tokens, so no work is
//!   spent on padding and no mask is needed.
//! - **No allocation per operation.** Each forward allocates its activations once.
//! - **Element-wise work fused and vectorised:** bias + GELU in one pass with a polynomial
//!   `erf` (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7) and a polynomial `exp` (Cephes,
//!   about 1 ulp); softmax with the same `exp`; both compiled for AVX2+FMA and chosen at run
//!   time, with the plain build as the fallback (the kernels are in [`crate::kernels`], which
//!   REWA attention shares).
//! - **Matrix products by `matrixmultiply`** (its run-time-selected AVX2/AVX-512 kernels), one
//!   thread per batch: [`crate::Embedder`] runs batches side by side, one per core, so the
//!   cores never wait for each other.

use crate::attention::{full_head, rewa_head, AttentionShape, HeadRows, Plan, Scratch};
use crate::error::{Error, Result};
use crate::fgemm::{self, Packed};
use crate::kernels::bias_gelu;
use crate::model_dir::Arch;
use crate::precision::Precision;
use crate::qgemm::{self, QMatrix, QRows};
use candle_core::{DType, Tensor};
use std::collections::HashMap;

/// The fields of `config.json` the native forward reads (BERT and MPNet share the names).
#[derive(serde::Deserialize)]
pub(crate) struct NativeConfig {
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default)]
    pad_token_id: Option<u32>,
    #[serde(default = "default_buckets")]
    relative_attention_num_buckets: usize,
    #[serde(default = "default_position_type")]
    position_embedding_type: String,
}

fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_buckets() -> usize {
    32
}
fn default_position_type() -> String {
    "absolute".into()
}

struct Linear {
    /// `out x in`, row-major (as stored), until [`Linear::prepare`] moves them into `p` or `q`.
    w: Vec<f32>,
    /// The weights packed for the f32 kernels (`Precision::F32`).
    p: Option<Packed>,
    /// The weights as int8 codes (`Precision::Int8`).
    q: Option<QMatrix>,
    b: Vec<f32>,
    n_in: usize,
    n_out: usize,
}

struct Norm {
    g: Vec<f32>,
    b: Vec<f32>,
    eps: f32,
}

struct Layer {
    /// Query, key and value stacked: `3h x h`.
    qkv: Linear,
    o: Linear,
    ln1: Norm,
    up: Linear,
    down: Linear,
    ln2: Norm,
}

/// The activations of a forward pass, kept per thread and reused: allocating them anew for
/// every batch cost the kernel's page clearing (7% of an int8 pass).
#[derive(Default)]
struct Buffers {
    x: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    tmp: Vec<f32>,
    up: Vec<f32>,
    scores: Vec<f32>,
    scratch: Scratch,
    qa: QRows,
}

thread_local! {
    static BUFFERS: std::cell::RefCell<Buffers> = std::cell::RefCell::new(Buffers::default());
}

/// `v` at length `n` (its capacity kept: only growth is zeroed), as a slice.
fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.truncate(n);
    v.resize(n, 0.0);
    v.as_mut_slice()
}

/// Sees each layer's index and its stacked queries, keys and values.
pub(crate) type Observer<'a> = &'a mut dyn FnMut(usize, &[f32]);

/// A BERT or MPNet encoder with its weights as plain vectors.
pub(crate) struct Native {
    arch: Arch,
    hidden: usize,
    heads: usize,
    word: Vec<f32>,
    position: Vec<f32>,
    /// Token type 0's row (BERT; every text here is a single segment).
    token_type: Option<Vec<f32>>,
    emb_ln: Norm,
    layers: Vec<Layer>,
    /// MPNet: `buckets x heads`.
    rel_bias: Option<Vec<f32>>,
    buckets: usize,
    pad_id: u32,
}

/// Tensors by name, read as f32.
struct Weights<'a> {
    t: &'a HashMap<String, Tensor>,
    prefix: String,
}

impl Weights<'_> {
    fn get(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let full = format!("{}{name}", self.prefix);
        let t = self
            .t
            .get(&full)
            .ok_or_else(|| Error::Unsupported(format!("no weight named {full}")))?;
        let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        if v.len() != len {
            return Err(Error::Unsupported(format!(
                "weight {full} holds {} values, expected {len}",
                v.len()
            )));
        }
        Ok(v)
    }
    fn linear(&self, name: &str, n_in: usize, n_out: usize) -> Result<Linear> {
        Ok(Linear {
            w: self.get(&format!("{name}.weight"), n_in * n_out)?,
            p: None,
            q: None,
            b: self.get(&format!("{name}.bias"), n_out)?,
            n_in,
            n_out,
        })
    }
    fn norm(&self, name: &str, h: usize, eps: f64) -> Result<Norm> {
        Ok(Norm {
            g: self.get(&format!("{name}.weight"), h)?,
            b: self.get(&format!("{name}.bias"), h)?,
            eps: eps as f32,
        })
    }
}

impl Native {
    /// Builds the encoder from the model's tensors, or says why it cannot (the caller then
    /// runs the candle model). With [`Precision::Int8`] every linear layer's weights are
    /// quantized now and their f32 copies dropped.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn load(
        arch: Arch,
        precision: Precision,
        cfg: &NativeConfig,
        tensors: &HashMap<String, Tensor>,
        vocab: usize,
        positions: usize,
        type_vocab: usize,
    ) -> Result<Native> {
        let h = cfg.hidden_size;
        if cfg.hidden_act != "gelu" {
            return Err(Error::Unsupported(format!("hidden_act {}", cfg.hidden_act)));
        }
        if arch == Arch::Bert && cfg.position_embedding_type != "absolute" {
            return Err(Error::Unsupported(format!(
                "position_embedding_type {}",
                cfg.position_embedding_type
            )));
        }
        if cfg.num_attention_heads == 0 || !h.is_multiple_of(cfg.num_attention_heads) {
            return Err(Error::Unsupported("heads do not divide hidden_size".into()));
        }
        let root = match arch {
            Arch::Bert => "bert.",
            Arch::MpNet => "mpnet.",
        };
        let prefix = if tensors.contains_key(&format!("{root}embeddings.word_embeddings.weight")) {
            root.to_string()
        } else {
            String::new()
        };
        let w = Weights { t: tensors, prefix };
        let eps = cfg.layer_norm_eps;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = format!("encoder.layer.{i}");
            let (q, k, v, o, ln1) = match arch {
                Arch::Bert => (
                    format!("{l}.attention.self.query"),
                    format!("{l}.attention.self.key"),
                    format!("{l}.attention.self.value"),
                    format!("{l}.attention.output.dense"),
                    format!("{l}.attention.output.LayerNorm"),
                ),
                Arch::MpNet => (
                    format!("{l}.attention.attn.q"),
                    format!("{l}.attention.attn.k"),
                    format!("{l}.attention.attn.v"),
                    format!("{l}.attention.attn.o"),
                    format!("{l}.attention.LayerNorm"),
                ),
            };
            let (q, k, v) = (
                w.linear(&q, h, h)?,
                w.linear(&k, h, h)?,
                w.linear(&v, h, h)?,
            );
            let qkv = Linear {
                w: [q.w, k.w, v.w].concat(),
                p: None,
                q: None,
                b: [q.b, k.b, v.b].concat(),
                n_in: h,
                n_out: 3 * h,
            };
            let mut layer = Layer {
                qkv,
                o: w.linear(&o, h, h)?,
                ln1: w.norm(&ln1, h, eps)?,
                up: w.linear(&format!("{l}.intermediate.dense"), h, cfg.intermediate_size)?,
                down: w.linear(&format!("{l}.output.dense"), cfg.intermediate_size, h)?,
                ln2: w.norm(&format!("{l}.output.LayerNorm"), h, eps)?,
            };
            for lin in [&mut layer.qkv, &mut layer.o, &mut layer.up, &mut layer.down] {
                lin.prepare(precision);
            }
            layers.push(layer);
        }
        let (token_type, rel_bias) = match arch {
            Arch::Bert => {
                let t = w.get("embeddings.token_type_embeddings.weight", type_vocab * h)?;
                (Some(t[..h].to_vec()), None)
            }
            Arch::MpNet => {
                let n = cfg.relative_attention_num_buckets * cfg.num_attention_heads;
                (
                    None,
                    Some(w.get("encoder.relative_attention_bias.weight", n)?),
                )
            }
        };
        Ok(Native {
            arch,
            hidden: h,
            heads: cfg.num_attention_heads,
            word: w.get("embeddings.word_embeddings.weight", vocab * h)?,
            position: w.get("embeddings.position_embeddings.weight", positions * h)?,
            token_type,
            emb_ln: w.norm("embeddings.LayerNorm", h, eps)?,
            layers,
            rel_bias,
            buckets: cfg.relative_attention_num_buckets,
            pad_id: cfg.pad_token_id.unwrap_or(1),
        })
    }

    /// The attention shape: layers, heads, head dimension.
    pub(crate) fn shape(&self) -> AttentionShape {
        AttentionShape {
            layers: self.layers.len(),
            heads: self.heads,
            head_dim: self.hidden / self.heads,
        }
    }

    /// The last hidden states of each text's tokens (no padding anywhere), concatenated:
    /// `sum(len) x hidden`, row-major. With a `plan`, attention runs in REWA mode; `observe`
    /// sees each layer's stacked queries, keys and values (`sum(len) x 3 hidden`).
    pub(crate) fn forward(
        &self,
        rows: &[&[u32]],
        plan: Option<&Plan>,
        observe: Option<Observer<'_>>,
    ) -> Result<Vec<f32>> {
        BUFFERS.with(|b| match b.try_borrow_mut() {
            Ok(mut b) => self.forward_in(rows, plan, observe, &mut b),
            // (an observer that runs a forward pass itself gets buffers of its own)
            Err(_) => self.forward_in(rows, plan, observe, &mut Buffers::default()),
        })
    }

    fn forward_in(
        &self,
        rows: &[&[u32]],
        plan: Option<&Plan>,
        mut observe: Option<Observer<'_>>,
        b: &mut Buffers,
    ) -> Result<Vec<f32>> {
        let h = self.hidden;
        let total: usize = rows.iter().map(|r| r.len()).sum();
        let vocab = self.word.len() / h;
        let n_pos = self.position.len() / h;
        let Buffers {
            x,
            qkv,
            ctx,
            tmp,
            up,
            scores,
            scratch,
            qa,
        } = b;
        let mut x = sized(x, total * h);
        let mut t = 0;
        for r in rows {
            for (i, &id) in r.iter().enumerate() {
                let pos = match self.arch {
                    Arch::Bert => i,
                    // after the padding index, as RoBERTa/MPNet number positions
                    Arch::MpNet => self.pad_id as usize + 1 + i,
                };
                if id as usize >= vocab || pos >= n_pos {
                    return Err(Error::InvalidInput(format!(
                        "token id {id} or position {pos} outside the model's tables"
                    )));
                }
                let out = &mut x[t * h..(t + 1) * h];
                let wr = &self.word[id as usize * h..(id as usize + 1) * h];
                let pr = &self.position[pos * h..(pos + 1) * h];
                match &self.token_type {
                    Some(tt) => {
                        for j in 0..h {
                            out[j] = wr[j] + tt[j] + pr[j];
                        }
                    }
                    None => {
                        for j in 0..h {
                            out[j] = wr[j] + pr[j];
                        }
                    }
                }
                t += 1;
            }
        }
        layer_norm(x, &self.emb_ln, h);

        let max_len = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let inter = self.layers.first().map_or(0, |l| l.up.n_out);
        let qkv = sized(qkv, total * 3 * h);
        let ctx = sized(ctx, total * h);
        let mut tmp = sized(tmp, total * h);
        let up = sized(up, total * inter);
        let scores = sized(scores, max_len * max_len);
        // MPNet: each head's bias for every (query, key) offset, looked up per text.
        let bias = self.rel_bias.as_ref().map(|b| self.bias_table(b, max_len));
        let dh = h / self.heads;
        for (li, layer) in self.layers.iter().enumerate() {
            linear(x, &layer.qkv, total, qkv, qa);
            if let Some(f) = observe.as_mut() {
                f(li, qkv);
            }
            let mut start = 0;
            for r in rows {
                let len = r.len();
                let base = start * 3 * h;
                for hd in 0..self.heads {
                    let rows = HeadRows {
                        q: &qkv[base + hd * dh..],
                        k: &qkv[base + h + hd * dh..],
                        v: &qkv[base + 2 * h + hd * dh..],
                        stride: 3 * h,
                        len,
                        dh,
                    };
                    let b = bias
                        .as_deref()
                        .map(|b| (&b[hd * max_len * max_len..], max_len));
                    let out = &mut ctx[start * h + hd * dh..];
                    match plan {
                        Some(p) if p.cfg.top < len => {
                            rewa_head(rows, b, &p.cfg, p.head(li, hd), scratch, out, h)
                        }
                        _ => full_head(rows, b, scores, out, h),
                    }
                }
                start += len;
            }
            linear(ctx, &layer.o, total, tmp, qa);
            add(tmp, x);
            layer_norm(tmp, &layer.ln1, h);
            std::mem::swap(&mut x, &mut tmp); // x = attention block's output
            linear_gelu(x, &layer.up, total, up, qa);
            linear(up, &layer.down, total, tmp, qa);
            add(tmp, x);
            layer_norm(tmp, &layer.ln2, h);
            std::mem::swap(&mut x, &mut tmp);
        }
        Ok(x.to_vec())
    }

    /// `heads x max_len x max_len`: the bias of key j for query i (MPNet's relative position
    /// bucket of j - i).
    fn bias_table(&self, table: &[f32], max_len: usize) -> Vec<f32> {
        let heads = self.heads;
        let mut out = vec![0f32; heads * max_len * max_len];
        for i in 0..max_len {
            for j in 0..max_len {
                let b = crate::mpnet::relative_position_bucket(
                    j as i64 - i as i64,
                    self.buckets,
                    crate::mpnet::MAX_DISTANCE,
                ) as usize;
                for hd in 0..heads {
                    out[(hd * max_len + i) * max_len + j] = table[b * heads + hd];
                }
            }
        }
        out
    }
}

impl Linear {
    /// Moves the weights into the form `precision`'s kernels on this CPU read: packed f32, or
    /// int8 codes.
    fn prepare(&mut self, precision: Precision) {
        let w = std::mem::take(&mut self.w);
        match precision {
            Precision::F32 => {
                self.p = Some(Packed::new(w, self.n_out, self.n_in, fgemm::level()));
            }
            Precision::Int8 => {
                self.q = Some(QMatrix::new(&w, self.n_out, self.n_in, qgemm::level()));
            }
        }
    }
}

/// `out (rows x n_out) = x (rows x n_in) W^T + b` (in int8 when the layer is quantized: `qa`
/// is the scratch its activations' codes go to).
fn linear(x: &[f32], l: &Linear, rows: usize, out: &mut [f32], qa: &mut QRows) {
    match (&l.p, &l.q) {
        (_, Some(q)) => {
            qa.quantize(&x[..rows * l.n_in], rows, l.n_in, q.level());
            qgemm::gemm(qa, q, Some(&l.b), out);
        }
        (Some(p), None) => fgemm::linear(x, rows, p, Some(&l.b), out),
        (None, None) => unreachable!("Linear::prepare runs at load"),
    }
}

/// [`linear`] then exact GELU, `x * (1 + erf(x / sqrt 2)) / 2`, in one pass.
fn linear_gelu(x: &[f32], l: &Linear, rows: usize, out: &mut [f32], qa: &mut QRows) {
    match (&l.p, &l.q) {
        (_, Some(q)) => {
            qa.quantize(&x[..rows * l.n_in], rows, l.n_in, q.level());
            qgemm::gemm(qa, q, None, out);
        }
        (Some(p), None) => fgemm::linear(x, rows, p, None, out),
        (None, None) => unreachable!("Linear::prepare runs at load"),
    }
    for r in out[..rows * l.n_out].chunks_exact_mut(l.n_out) {
        bias_gelu(r, &l.b);
    }
}

fn add(a: &mut [f32], b: &[f32]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// Layer norm of each row of `x` (width `h`) in place, as torch computes it in f32 (biased
/// variance).
fn layer_norm(x: &mut [f32], n: &Norm, h: usize) {
    for r in x.chunks_exact_mut(h) {
        let mean = r.iter().sum::<f32>() / h as f32;
        let var = r.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / h as f32;
        let inv = 1.0 / (var + n.eps).sqrt();
        for ((v, g), b) in r.iter_mut().zip(&n.g).zip(&n.b) {
            *v = (*v - mean) * inv * g + b;
        }
    }
}
