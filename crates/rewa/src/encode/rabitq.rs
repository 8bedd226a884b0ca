//! `rabitq<bits>`: RaBitQ codes (Gao & Long, SIGMOD 2024) and their multi-bit extension
//! (Gao et al., "Practical and asymptotically optimal quantization", 2024), 1 to 8 bits per
//! dimension, with the unbiased inner-product estimator and its error bound.
//!
//! Fit: the centroid `c` (training mean) and a seeded random orthogonal `R` (QR of a Gaussian
//! matrix; any dimension, not only powers of two). Encode `x`: `o = R (x - c)`, `r = |o|`,
//! `u = o / r`; the code is a grid vector `g` with `g_i = k_i - (2^B - 1) / 2`, `k_i` in
//! `0..2^B` (for one bit `g = sign(u) / 2`), the scale `t` of `k = floor(t u + 2^B / 2)` chosen
//! to maximise `a = <g, u> / |g|` (a search over 48 scales). With `ô = g / |g|` RaBitQ's
//! estimator is `<u, y> ~ <ô, y> / a` for any `y`, unbiased under the random rotation, with
//! error about normal with deviation `sqrt(1 - a^2) / a / sqrt(D - 1) * |y|` at most
//! (the paper's bound is `eps0` of those: `eps0` = [`RABITQ_EPS0`] = 1.9 held for 95% of
//! random pairs in our test, 3.5 for all but 0.1%).
//!
//! Stored per vector: the `k_i` as `B` bit planes (`ceil(D / 8)` bytes each, lowest bit
//! first), then little-endian f32 factors: `f = r / (a |g|)` and `e = r sqrt(1 - a^2) / a`
//! (cosine and ip: `B * ceil(D/8) + 8` bytes, as FAISS's `IndexRaBitQ`), and for l2 also
//! `r^2` (12 bytes of factors).
//!
//! A query `q` becomes `y = R q` (cosine/ip) or `y = R (q - c)` (l2) and one table of 256
//! partial sums of `y` per code byte, shared by all planes: `<y, k> = sum_b 2^b sum_j
//! T_j[plane_b[j]]`, so a distance is `B * ceil(D / 8)` lookups. Inner product:
//! `-(<q, c> + f (<y, k> - h sum(y)))` with `h = (2^B - 1) / 2`, an estimate of `-<q, x>`
//! (so residual lists can add `-<q, list mean>`). L2: `r^2 + |q - c|^2 - 2 f (<y, k> - h
//! sum(y))`. A pipeline stage `rabitq<bits>:bound` keeps every code whose lower bound beats
//! the k-th best upper bound (k = the next stage's keep), as many as the bound requires.

use super::pq4::{quantize_tables, sums32, transpose_rows, CHUNK};
use super::sign::table_distance;
use super::{Pq4Query, Quantizer, Tensor, TensorSource};
use crate::distance::{dot, Metric};
use crate::error::{invalid, Error, Result};
use crate::rows::Run;
use crate::topk::{Allow, Hit, TopK};

/// Runs of codes scanned together: `(codes, ids, offset)`, `ids[j]` naming code `j` of the run
/// (`None`: `j`) and `offset` added to its estimates.
pub type CodeRuns<'a> = [(&'a [u8], Option<&'a [u32]>, f32)];
use crate::vectors::VectorsRef;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

/// The most bits per dimension.
pub const RABITQ_MAX_BITS: usize = 8;
/// The confidence constant of the error bound by default (the paper's `eps0 = 1.9`).
pub const RABITQ_EPS0: f32 = 1.9;
/// Candidate scales tried per vector for codes of more than one bit.
const SCALES: usize = 48;

/// Settings for [`RabitqQuantizer`].
#[derive(Clone, Debug)]
pub struct RabitqConfig {
    /// Bits per dimension, 1 to 8.
    pub bits: usize,
    /// How the query is compared with the codes.
    pub metric: Metric,
}

/// Fitted RaBitQ quantizer: centroid, rotation, bits.
#[derive(Clone, Debug)]
pub struct RabitqQuantizer {
    bits: usize,
    dim: usize,
    metric: Metric,
    centroid: Vec<f32>,
    /// `dim x dim`, row-major: `o = rotation * (x - c)`.
    rotation: Vec<f32>,
}

/// A prepared query: one table of 256 sums per code byte, and its constants.
#[derive(Clone, Debug)]
pub struct RabitqQuery {
    tables: Vec<[f32; 256]>,
    /// The same sums as 8-bit tables per 4 bits, for the fast-scan kernel (codes whose bit
    /// planes hold at most 128 bytes).
    fast: Option<Pq4Query>,
    /// `h * sum(y)`.
    shift: f32,
    /// `<q, c>` (ip) or `|q - c|^2` (l2).
    constant: f32,
    /// `|y| / sqrt(D - 1)`, times 2 for l2: times `eps0` and a code's `e`, the error bound.
    bound: f32,
}

impl RabitqQuantizer {
    /// From its parts (checked).
    pub fn from_parts(
        bits: usize,
        metric: Metric,
        centroid: Vec<f32>,
        rotation: Vec<f32>,
    ) -> Result<Self> {
        let dim = centroid.len();
        if !(1..=RABITQ_MAX_BITS).contains(&bits) {
            return invalid!(
                "rabitq{bits}: bits per dimension must be from 1 to {RABITQ_MAX_BITS}"
            );
        }
        if dim == 0 || rotation.len() != dim * dim {
            return invalid!(
                "rabitq: a rotation of {} values for dimension {dim}",
                rotation.len()
            );
        }
        Ok(RabitqQuantizer {
            bits,
            dim,
            metric,
            centroid,
            rotation,
        })
    }
    /// Its tensors: `centroid` (d) and `rotation` (d x d).
    pub fn tensors(&self) -> Vec<Tensor<'_>> {
        vec![
            Tensor::f32("centroid", vec![self.dim], &self.centroid),
            Tensor::f32("rotation", vec![self.dim, self.dim], &self.rotation),
        ]
    }
    /// From the tensors of [`RabitqQuantizer::tensors`], for `dim` inputs.
    pub fn from_tensors(
        src: &TensorSource<'_>,
        dim: usize,
        bits: usize,
        metric: Metric,
    ) -> Result<Self> {
        let c = src.f32("centroid", dim)?;
        let r = src.f32("rotation", dim * dim)?;
        Self::from_parts(bits, metric, c, r).map_err(|e| src.corrupt(e))
    }
    /// Bits per dimension.
    pub fn bits(&self) -> usize {
        self.bits
    }
    /// For each of `codes` (`n * code_len` bytes), the vector whose inner product with a query
    /// the estimator gives: `c + f R^T g` (cosine and ip; for training with the quantizer in
    /// the loop), row-major `n x dim`, by one GEMM.
    pub fn estimator_vectors(&self, codes: &[u8]) -> Vec<f32> {
        let (d, pl, cl) = (self.dim, self.plane_len(), self.code_len());
        let h = ((1usize << self.bits) - 1) as f32 / 2.0;
        let n = codes.len() / cl;
        let mut g = vec![0f32; n * d];
        g.par_chunks_mut(d)
            .zip(codes.par_chunks(cl))
            .for_each(|(g, code)| {
                let at = self.bits * pl;
                let f = f32::from_le_bytes(code[at..at + 4].try_into().expect("4 bytes"));
                for (i, gi) in g.iter_mut().enumerate() {
                    let k = (0..self.bits).fold(0u32, |k, b| {
                        k | (((code[b * pl + i / 8] >> (i % 8)) & 1) as u32) << b
                    });
                    *gi = f * (k as f32 - h);
                }
            });
        // c + g R: gemm_abt takes the transpose of its second matrix
        let mut rt = vec![0f32; d * d];
        for i in 0..d {
            for j in 0..d {
                rt[j * d + i] = self.rotation[i * d + j];
            }
        }
        let mut out = vec![0f32; n * d];
        out.par_chunks_mut(64 * d)
            .zip(g.par_chunks(64 * d))
            .for_each(|(o, g)| {
                crate::linalg::gemm_abt(g, &rt, g.len() / d, d, d, o);
                for row in o.chunks_exact_mut(d) {
                    row.iter_mut()
                        .zip(&self.centroid)
                        .for_each(|(o, c)| *o += c);
                }
            });
        out
    }
    /// A prepared query from its rotated form `y` and its constant (`<q, c>` or `|q - c|^2`).
    fn query_from_rotated(&self, y: &[f32], constant: f32) -> RabitqQuery {
        let h = ((1usize << self.bits) - 1) as f32 / 2.0;
        let norm = dot(y, y).sqrt();
        let scale = if self.metric == Metric::L2 { 2.0 } else { 1.0 };
        let tables = sum_tables(y, self.plane_len());
        let fast = self.fast_scan().then(|| {
            let (pl, cp) = (self.plane_len(), self.bits * self.plane_len());
            let mut t = vec![0f32; 2 * cp * 16];
            for b in 0..self.bits {
                let w = (1u32 << b) as f32;
                for (j, tj) in tables.iter().enumerate().take(pl) {
                    let at = 2 * (b * pl + j) * 16;
                    for v in 0..16 {
                        t[at + v] = w * tj[v];
                        t[at + 16 + v] = w * tj[v << 4];
                    }
                }
            }
            quantize_tables(&t, cp)
        });
        RabitqQuery {
            tables,
            fast,
            shift: h * y.iter().sum::<f32>(),
            constant,
            bound: scale / ((self.dim.max(2) - 1) as f32).sqrt() * norm,
        }
    }
    fn plane_len(&self) -> usize {
        self.dim.div_ceil(8)
    }
    fn factors(&self) -> usize {
        if self.metric == Metric::L2 {
            3
        } else {
            2
        }
    }
    /// The error bound's half-width for a prepared query and a code, in distance units, for
    /// `eps0 = 1` (multiply by the confidence constant).
    #[inline(always)]
    pub fn error_bound(&self, q: &RabitqQuery, code: &[u8]) -> f32 {
        let at = self.bits * self.plane_len() + 4;
        q.bound * f32::from_le_bytes(code[at..at + 4].try_into().expect("4 bytes"))
    }
    /// Encodes a rotated residual `o` into `out`.
    fn encode_rotated(&self, o: &[f32], out: &mut [u8]) {
        out.fill(0);
        let r2: f32 = o.iter().map(|v| v * v).sum();
        let r = r2.sqrt();
        let pl = self.plane_len();
        let levels = 1usize << self.bits;
        let h = (levels - 1) as f32 / 2.0;
        let mut k = vec![0u8; self.dim];
        // <g, u> and |g| for the chosen grid point (u = o / r)
        let (gu, gn) = if r == 0.0 {
            (0.0, 1.0)
        } else if self.bits == 1 {
            for (ki, &v) in k.iter_mut().zip(o) {
                *ki = (v > 0.0) as u8;
            }
            let l1: f32 = o.iter().map(|v| v.abs()).sum();
            (0.5 * l1 / r, 0.5 * (self.dim as f32).sqrt())
        } else {
            let umax = o.iter().fold(0f32, |m, v| m.max(v.abs())) / r;
            let half = levels as f32 / 2.0;
            let grid = |t: f32, ki: &mut [u8]| -> (f32, f32) {
                let (mut gu, mut gg) = (0f32, 0f32);
                for (kk, &v) in ki.iter_mut().zip(o) {
                    let u = v / r;
                    let q = (t * u + half).floor().clamp(0.0, (levels - 1) as f32);
                    *kk = q as u8;
                    let g = q - h;
                    gu += g * u;
                    gg += g * g;
                }
                (gu, gg.sqrt())
            };
            let mut best = (f32::MIN, 0f32);
            for s in 0..SCALES {
                // from 15% to 135% of the scale that puts the largest coordinate on the top level
                let t = half / umax * (0.15 + 1.2 * s as f32 / (SCALES - 1) as f32);
                let (gu, gn) = grid(t, &mut k);
                if gn > 0.0 && gu / gn > best.0 {
                    best = (gu / gn, t);
                }
            }
            grid(best.1, &mut k)
        };
        for (i, &ki) in k.iter().enumerate() {
            for b in 0..self.bits {
                out[b * pl + i / 8] |= ((ki >> b) & 1) << (i % 8);
            }
        }
        let a = (gu / gn).clamp(1e-6, 1.0);
        let f = if r == 0.0 { 0.0 } else { r / (a * gn) };
        let e = r * (1.0 - a * a).max(0.0).sqrt() / a;
        let at = self.bits * pl;
        out[at..at + 4].copy_from_slice(&f.to_le_bytes());
        out[at + 4..at + 8].copy_from_slice(&e.to_le_bytes());
        if self.metric == Metric::L2 {
            out[at + 8..at + 12].copy_from_slice(&r2.to_le_bytes());
        }
    }

    /// Per query: the codes whose lower bound is at most the `k`-th smallest upper bound
    /// (every code that can still be in the true top `k`, with the confidence `eps0` gives),
    /// sorted by estimate; only codes `allow` allows.
    pub fn scan_bound(
        &self,
        queries: VectorsRef<'_>,
        codes: &[u8],
        k: usize,
        eps0: f32,
        allow: Allow<'_>,
    ) -> Vec<Vec<Hit>> {
        self.in_groups(queries, |qs| {
            if !self.fast_scan() {
                return qs
                    .iter()
                    .map(|p| bound_scan(self, p, &[(codes, None, 0.0)], k, eps0, allow))
                    .collect();
            }
            let refs: Vec<&RabitqQuery> = qs.iter().collect();
            self.bound_fast(&refs, &[(codes, None, 0.0)], k, eps0, allow)
        })
    }

    /// `f` over groups of queries (in parallel), each group prepared on its own: a prepared
    /// query holds a table of 256 floats per code byte, and a group shares each chunk's
    /// transposition in the fast scan.
    fn in_groups<F>(&self, queries: VectorsRef<'_>, f: F) -> Vec<Vec<Hit>>
    where
        F: Fn(&[RabitqQuery]) -> Vec<Vec<Hit>> + Sync,
    {
        let d = self.dim;
        let qb = crate::kernels::query_block(queries.len());
        queries
            .as_slice()
            .par_chunks(qb * d)
            .flat_map_iter(|rows| {
                f(&self.prepare_batch(VectorsRef::new(d, rows).expect("invariant: whole rows")))
            })
            .collect()
    }

    /// `true` when scans use the fast-scan kernel: 1 or 2 bits per dimension (8-bit tables
    /// cannot hold what more bits add: with them rabitq8 fell from 0.99 to 0.96 recall in the
    /// tests) and bit planes of at most 128 bytes (256 4-bit tables, whose 8-bit sums fit
    /// the kernel's 16-bit lanes).
    fn fast_scan(&self) -> bool {
        self.bits <= 2 && self.bits * self.plane_len() <= super::PQ4_MAX_M / 2
    }

    /// Margin for the 8-bit rounding of the fast-scan tables, per unit of a code's `f`: three
    /// standard deviations of the sum of `2 * cp` independent roundings (half a step each at
    /// most, uniform), doubled for l2.
    fn rounding_margin(&self, fast: &Pq4Query) -> f32 {
        let nib = (2 * self.bits * self.plane_len()) as f32;
        let l2 = if self.metric == Metric::L2 { 2.0 } else { 1.0 };
        l2 * 3.0 * fast.scale * (nib / 12.0).sqrt()
    }

    /// Every code of `parts` scored for every query of `qs` by the fast-scan kernel:
    /// `visit(query, id, distance, code)`. Each 4,096-code chunk's bit planes are transposed
    /// once for all the queries.
    fn fast_visit(
        &self,
        qs: &[&RabitqQuery],
        parts: &CodeRuns<'_>,
        mut visit: impl FnMut(usize, u32, f32, &[u8]),
    ) {
        let (cl, cp) = (self.code_len(), self.bits * self.plane_len());
        let wide = crate::simd::avx2();
        let mut tb = vec![0u8; CHUNK * cp];
        let mut sums = [0u16; 32];
        for &(codes, ids, off) in parts {
            for (ci, chunk) in codes.chunks(CHUNK * cl).enumerate() {
                let nc = chunk.len() / cl;
                let ng = nc.div_ceil(32);
                transpose_rows(chunk, cl, cp, ng, &mut tb);
                for (qi, q) in qs.iter().enumerate() {
                    let fast = q.fast.as_ref().expect("invariant: fast tables prepared");
                    for g in 0..ng {
                        sums32(
                            &fast.lut,
                            &tb[g * cp * 32..(g + 1) * cp * 32],
                            cp,
                            u16::MAX,
                            &mut sums,
                            wide,
                        );
                        for (i, &sum) in sums.iter().enumerate().take((nc - g * 32).min(32)) {
                            let r = g * 32 + i;
                            let code = &chunk[r * cl..(r + 1) * cl];
                            let d = self.finish(q, fast.bias + fast.scale * sum as f32, code) + off;
                            let j = ci * CHUNK + r;
                            visit(qi, ids.map_or(j as u32, |ids| ids[j]), d, code);
                        }
                    }
                }
            }
        }
    }

    /// [`RabitqQuantizer::scan_bound`] for one prepared query over several runs of codes:
    /// `(codes, ids, offset)`, `ids[j]` naming code `j` of the run (`None`: `j`) and `offset`
    /// added to its estimates (a residual list's `-<q, mean>`); only ids `allow` allows.
    pub fn bound_lists(
        &self,
        p: &RabitqQuery,
        parts: &CodeRuns<'_>,
        k: usize,
        eps0: f32,
        allow: Allow<'_>,
    ) -> Vec<Hit> {
        if p.fast.is_none() {
            return bound_scan(self, p, parts, k, eps0, allow);
        }
        self.bound_fast(&[p], parts, k, eps0, allow)
            .pop()
            .expect("one query")
    }

    /// The bound's selection over the fast-scan estimates for a group of queries, the bound
    /// widened by the tables' rounding ([`RabitqQuantizer::rounding_margin`]).
    fn bound_fast(
        &self,
        qs: &[&RabitqQuery],
        parts: &CodeRuns<'_>,
        k: usize,
        eps0: f32,
        allow: Allow<'_>,
    ) -> Vec<Vec<Hit>> {
        let at = self.bits * self.plane_len();
        let margins: Vec<f32> = qs
            .iter()
            .map(|p| self.rounding_margin(p.fast.as_ref().expect("invariant: fast tables")))
            .collect();
        let mut sets: Vec<BoundSet> = qs.iter().map(|_| BoundSet::new(k, allow)).collect();
        self.fast_visit(qs, parts, |qi, id, d, code| {
            let f = f32::from_le_bytes(code[at..at + 4].try_into().expect("4 bytes"));
            let e = eps0 * self.error_bound(qs[qi], code) + f.abs() * margins[qi];
            sets[qi].offer(id, d, e);
        });
        sets.into_iter().map(BoundSet::finish).collect()
    }
}

/// The codes one query's bound keeps: the `k` smallest upper bounds so far, and every code
/// whose lower bound reached the k-th of them when it was seen (cut again at the end); only
/// ids `allow` allows.
struct BoundSet<'a> {
    upper: TopK<'a>,
    cand: Vec<(Hit, f32)>,
    allow: Allow<'a>,
}

impl<'a> BoundSet<'a> {
    fn new(k: usize, allow: Allow<'a>) -> Self {
        BoundSet {
            upper: TopK::new(k.max(1)),
            cand: Vec::new(),
            allow,
        }
    }
    /// A code with estimate `d` and error bound `e`.
    #[inline(always)]
    fn offer(&mut self, id: u32, d: f32, e: f32) {
        if !self.allow.contains(id) {
            return;
        }
        if d + e < self.upper.threshold() {
            self.upper.push(id, d + e);
        }
        if d - e <= self.upper.threshold() {
            self.cand.push((Hit { id, distance: d }, d - e));
        }
    }
    /// The kept codes, sorted by estimate.
    fn finish(self) -> Vec<Hit> {
        let tau = self.upper.threshold();
        let mut out: Vec<Hit> = self
            .cand
            .into_iter()
            .filter(|(_, lb)| *lb <= tau)
            .map(|(h, _)| h)
            .collect();
        out.sort_unstable();
        out
    }
}

crate::simd::twin! { [bound_scan_baseline, bound_scan_avx2]
fn bound_scan(
    q: &RabitqQuantizer,
    p: &RabitqQuery,
    parts: &CodeRuns<'_>,
    k: usize,
    eps0: f32,
    allow: Allow<'_>,
) -> Vec<Hit> {
    let cl = q.code_len();
    let mut set = BoundSet::new(k, allow);
    for &(codes, ids, off) in parts {
        for (j, c) in codes.chunks_exact(cl).enumerate() {
            let d = q.distance(p, c) + off;
            set.offer(ids.map_or(j as u32, |ids| ids[j]), d, eps0 * q.error_bound(p, c));
        }
    }
    set.finish()
}
}

/// Partial sums of `y` over the set bits of every byte value, one table per code byte.
fn sum_tables(y: &[f32], plane_len: usize) -> Vec<[f32; 256]> {
    (0..plane_len)
        .map(|j| {
            let ws: [f32; 8] = std::array::from_fn(|b| y.get(8 * j + b).copied().unwrap_or(0.0));
            let mut t = [0f32; 256];
            for v in 1..256usize {
                t[v] = t[v & (v - 1)] + ws[v.trailing_zeros() as usize];
            }
            t
        })
        .collect()
}

/// Fits a seeded random orthogonal `d x d` matrix (QR of a Gaussian one).
fn random_rotation(d: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7AB1_7000);
    let g: Vec<f64> = (0..d * d)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    let gm = faer::Mat::<f64>::from_fn(d, d, |i, j| g[i * d + j]);
    let q = gm.qr().compute_Q();
    (0..d * d).map(|k| q[(k / d, k % d)] as f32).collect()
}

impl Quantizer for RabitqQuantizer {
    type Config = RabitqConfig;
    type Query = RabitqQuery;

    fn fit(cfg: &RabitqConfig, train: VectorsRef<'_>, seed: u64) -> Result<Self> {
        let d = train.dim();
        if train.is_empty() {
            return Err(Error::InvalidInput("rabitq: no training vectors".into()));
        }
        let mut mean = vec![0f64; d];
        for r in train.rows() {
            for (m, v) in mean.iter_mut().zip(r) {
                *m += *v as f64;
            }
        }
        let centroid = mean
            .into_iter()
            .map(|m| (m / train.len() as f64) as f32)
            .collect();
        Self::from_parts(cfg.bits, cfg.metric, centroid, random_rotation(d, seed))
    }
    fn code_len(&self) -> usize {
        self.bits * self.plane_len() + 4 * self.factors()
    }
    fn encode(&self, x: &[f32], out: &mut [u8]) {
        let one = VectorsRef::new(self.dim, x).expect("invariant: a vector of dim floats");
        self.encode_batch(one, out);
    }
    fn encode_batch(&self, x: VectorsRef<'_>, out: &mut [u8]) {
        let d = self.dim;
        let mut xc = x.as_slice().to_vec();
        for row in xc.chunks_exact_mut(d) {
            for (v, c) in row.iter_mut().zip(&self.centroid) {
                *v -= c;
            }
        }
        let mut o = vec![0f32; xc.len()];
        crate::linalg::gemm_abt(&xc, &self.rotation, x.len(), d, d, &mut o);
        let cl = self.code_len();
        for (row, code) in o.chunks_exact(d).zip(out.chunks_exact_mut(cl)) {
            self.encode_rotated(row, code);
        }
    }
    /// The fast-scan kernel for codes whose planes fit it (8-bit tables: estimates within
    /// [`RabitqQuantizer::rounding_margin`]-sized rounding of the exact table sums, so rerank
    /// after it), else one table distance per code.
    fn scan(
        &self,
        queries: VectorsRef<'_>,
        codes: &[u8],
        k: usize,
        allow: Allow<'_>,
    ) -> Vec<Vec<Hit>> {
        if !self.fast_scan() {
            let qs = self.prepare_batch(queries);
            return crate::encode::scan::scan_codes(self, &qs, codes, k, allow);
        }
        let n = codes.len() / self.code_len();
        let k = k.min(n).max(1);
        self.in_groups(queries, |group| {
            let mut tops: Vec<TopK> = group.iter().map(|_| TopK::allowing(k, allow)).collect();
            let refs: Vec<&RabitqQuery> = group.iter().collect();
            self.fast_visit(&refs, &[(codes, None, 0.0)], |qi, id, d, _| {
                if d <= tops[qi].threshold() {
                    tops[qi].push(id, d);
                }
            });
            tops.into_iter().map(TopK::into_sorted).collect()
        })
    }
    /// For fast-scan codes: each list's bit planes transposed in groups of 32 codes (the
    /// full scan's per-chunk transposition, done once), a short last group padded.
    fn laid_list_bytes(&self, n: usize) -> usize {
        if self.fast_scan() {
            n.div_ceil(32) * 32 * self.bits * self.plane_len()
        } else {
            0
        }
    }
    fn lay_out_list(&self, codes: &[u8], out: &mut [u8]) {
        let (cl, cp) = (self.code_len(), self.bits * self.plane_len());
        let ng = (codes.len() / cl).div_ceil(32);
        transpose_rows(codes, cl, cp, ng, out);
    }
    /// The fast-scan kernel over a laid-out list: the same estimates as the full scan's, so
    /// probing every list returns its hits.
    fn scan_run(&self, p: &RabitqQuery, run: Run<'_>, add: f32, top: &mut TopK) {
        let (Some(laid), Some(fast)) = (run.laid, p.fast.as_ref()) else {
            return crate::encode::scan::scan_run_codes(self, p, run, add, top);
        };
        let (cl, cp) = (self.code_len(), self.bits * self.plane_len());
        let wide = crate::simd::avx2();
        let n = run.ids.len();
        let mut sums = [0u16; 32];
        for (g, tb) in laid.chunks_exact(cp * 32).enumerate() {
            sums32(&fast.lut, tb, cp, u16::MAX, &mut sums, wide);
            for (i, &sum) in sums.iter().enumerate().take((n - g * 32).min(32)) {
                let r = g * 32 + i;
                let code = &run.codes[r * cl..(r + 1) * cl];
                let d = self.finish(p, fast.bias + fast.scale * sum as f32, code) + add;
                if d <= top.threshold() {
                    top.push(run.ids[r], d);
                }
            }
        }
    }
    /// The rotation of a whole batch as one GEMM.
    fn prepare_batch(&self, queries: VectorsRef<'_>) -> Vec<RabitqQuery> {
        let d = self.dim;
        let mut src = queries.as_slice().to_vec();
        let mut constants = Vec::with_capacity(queries.len());
        for row in src.chunks_exact_mut(d) {
            constants.push(match self.metric {
                Metric::L2 => {
                    row.iter_mut()
                        .zip(&self.centroid)
                        .for_each(|(v, c)| *v -= c);
                    dot(row, row)
                }
                Metric::Cosine | Metric::Ip => dot(row, &self.centroid),
            });
        }
        let mut y = vec![0f32; src.len()];
        crate::linalg::gemm_abt(&src, &self.rotation, queries.len(), d, d, &mut y);
        y.par_chunks(d)
            .zip(constants.into_par_iter())
            .map(|(y, c)| self.query_from_rotated(y, c))
            .collect()
    }
    fn prepare(&self, query: &[f32]) -> RabitqQuery {
        let one = VectorsRef::new(self.dim, query).expect("invariant: a query of dim floats");
        self.prepare_batch(one).pop().expect("one query")
    }
    #[inline(always)]
    fn distance(&self, q: &RabitqQuery, code: &[u8]) -> f32 {
        let pl = self.plane_len();
        let mut s = 0f32;
        for b in 0..self.bits {
            s += (1u32 << b) as f32 * table_distance(&q.tables, &code[b * pl..(b + 1) * pl]);
        }
        self.finish(q, s, code)
    }
}

impl RabitqQuantizer {
    /// The distance from `s = <y, k>` (the query's sums over the code's grid) and the code's
    /// factors.
    #[inline(always)]
    fn finish(&self, q: &RabitqQuery, s: f32, code: &[u8]) -> f32 {
        let at = self.bits * self.plane_len();
        let f = f32::from_le_bytes(code[at..at + 4].try_into().expect("4 bytes"));
        let est = f * (s - q.shift);
        match self.metric {
            Metric::L2 => {
                let r2 = f32::from_le_bytes(code[at + 8..at + 12].try_into().expect("4 bytes"));
                r2 + q.constant - 2.0 * est
            }
            Metric::Cosine | Metric::Ip => -(q.constant + est),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distance::Metric;

    fn fit(bits: usize, metric: Metric, base: VectorsRef<'_>) -> (RabitqQuantizer, Vec<u8>) {
        let q = RabitqQuantizer::fit(&RabitqConfig { bits, metric }, base, 7).unwrap();
        let mut codes = vec![0u8; base.len() * q.code_len()];
        q.encode_batch(base, &mut codes);
        (q, codes)
    }

    #[test]
    fn rotation_is_orthogonal_and_batch_encoding_equals_one_by_one() {
        let r = random_rotation(37, 1);
        for i in 0..37 {
            for j in 0..37 {
                let d = dot(&r[i * 37..(i + 1) * 37], &r[j * 37..(j + 1) * 37]);
                assert!((d - (i == j) as u8 as f32).abs() < 1e-5, "{i} {j} {d}");
            }
        }
        let base = crate::testutil::gaussian(50, 37, 2);
        for bits in [1, 3] {
            let (q, codes) = fit(bits, Metric::L2, base.view());
            assert_eq!(q.code_len(), bits * 5 + 12);
            // queries prepared in a batch (one GEMM) score as prepared one by one
            let batch = q.prepare_batch(base.view().slice(0, 5));
            for (p, y) in batch.iter().zip(base.view().rows()) {
                let one = q.prepare(y);
                for c in codes.chunks_exact(q.code_len()) {
                    let (a, b) = (q.distance(p, c), q.distance(&one, c));
                    assert!((a - b).abs() < 1e-3 * (1.0 + b.abs()), "{a} vs {b}");
                }
            }
            for (x, c) in base.view().rows().zip(codes.chunks_exact(q.code_len())) {
                let mut one = vec![0u8; q.code_len()];
                q.encode(x, &mut one);
                // the same bits; factors equal up to the order of the float sums
                assert_eq!(one[..bits * 5], c[..bits * 5]);
            }
        }
    }

    #[test]
    fn estimates_are_unbiased_and_within_the_bound_and_sharpen_with_bits() {
        let base = crate::testutil::gaussian(400, 128, 3);
        let queries = crate::testutil::gaussian(20, 128, 4);
        let mut prev_err = f32::MAX;
        for bits in [1, 2, 4, 8] {
            for metric in [Metric::Ip, Metric::L2] {
                let (q, codes) = fit(bits, metric, base.view());
                let (mut sum, mut abs, mut n) = (0f64, 0f64, 0);
                let mut outside = [0usize; 2];
                for y in queries.view().rows() {
                    let p = q.prepare(y);
                    for (x, c) in base.view().rows().zip(codes.chunks_exact(q.code_len())) {
                        let truth = metric.distance(y, x);
                        let est = q.distance(&p, c);
                        let err = est - truth;
                        sum += err as f64;
                        abs += err.abs() as f64;
                        n += 1;
                        for (o, eps) in outside.iter_mut().zip([RABITQ_EPS0, 3.5]) {
                            if err.abs() > eps * q.error_bound(&p, c) * 1.0001 + 1e-3 {
                                *o += 1;
                            }
                        }
                    }
                }
                let (bias, mae) = ((sum / n as f64) as f32, (abs / n as f64) as f32);
                // |<q, x>| is about 11 here (128 unit-variance dimensions)
                assert!(
                    bias.abs() < 0.1 * mae.max(0.01) + 0.05,
                    "bits {bits} {metric}: bias {bias} vs mae {mae}"
                );
                // about normal: 1.9 deviations leave ~6% outside, 3.5 about 0.05%
                assert!(
                    outside[0] * 100 <= n * 8,
                    "bits {bits} {metric}: {outside:?} of {n} outside the bound"
                );
                assert!(
                    outside[1] * 1000 <= n,
                    "bits {bits} {metric}: {outside:?} of {n} outside the bound"
                );
                if metric == Metric::Ip {
                    assert!(
                        mae < prev_err,
                        "bits {bits}: mae {mae} not below {prev_err}"
                    );
                    prev_err = mae;
                }
            }
        }
        // 8 bits are near exact: under 1% of the typical |<q, x>|
        assert!(prev_err < 0.11, "{prev_err}");
    }

    #[test]
    fn bound_scan_keeps_the_true_top_k_and_fewer_than_all() {
        let (base, _, queries, _) = crate::testutil::clusters(40, 100, 96, 0.3, 5);
        for metric in [Metric::Ip, Metric::L2] {
            let (q, codes) = fit(2, metric, base.view());
            let truth = crate::kernels::exact_search(base.view(), queries.view(), metric, 10);
            let cands = q.scan_bound(queries.view(), &codes, 10, 3.5, Allow::ALL);
            let (mut found, mut kept) = (0, 0);
            for (c, t) in cands.iter().zip(&truth) {
                kept += c.len();
                found += t.iter().filter(|h| c.iter().any(|x| x.id == h.id)).count();
                assert!(c.windows(2).all(|w| w[0] <= w[1]), "sorted by estimate");
            }
            let want = truth.len() * 10;
            assert!(
                found * 1000 >= want * 995,
                "{metric}: {found} of {want} true neighbours kept"
            );
            assert!(kept < truth.len() * base.len() / 4, "{metric}: kept {kept}");
            // the fast-scan estimates are the table distances up to the tables' 8-bit
            // rounding: at most half a step per 4-bit table (times 2 for l2)
            let p = &q.prepare_batch(queries.view())[0];
            let fast = p.fast.as_ref().unwrap();
            let max = 0.5
                * fast.scale
                * (4 * q.plane_len()) as f32
                * if metric == Metric::L2 { 2.0 } else { 1.0 };
            let at = 2 * q.plane_len();
            for h in &cands[0] {
                let c = &codes[h.id as usize * q.code_len()..][..q.code_len()];
                let f = f32::from_le_bytes(c[at..at + 4].try_into().unwrap());
                let want = q.distance(p, c);
                assert!(
                    (h.distance - want).abs() <= f * max + 1e-5,
                    "{} vs {want}",
                    h.distance
                );
            }
        }
    }

    #[test]
    fn the_estimator_vectors_give_the_ip_estimate() {
        let base = crate::testutil::gaussian(30, 40, 8);
        let y = crate::testutil::gaussian(1, 40, 9);
        for bits in [1, 3] {
            let (q, codes) = fit(bits, Metric::Ip, base.view());
            let p = q.prepare(y.row(0));
            let all = q.estimator_vectors(&codes);
            for (c, v) in codes.chunks_exact(q.code_len()).zip(all.chunks_exact(40)) {
                let (a, b) = (-dot(y.row(0), v), q.distance(&p, c));
                assert!((a - b).abs() < 1e-3 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn the_fast_scan_ranks_as_the_table_scan() {
        let (base, _, queries, _) = crate::testutil::clusters(30, 100, 128, 0.3, 6);
        for (bits, metric) in [(1, Metric::Ip), (2, Metric::L2), (1, Metric::L2)] {
            let (q, codes) = fit(bits, metric, base.view());
            assert!(q.fast_scan());
            let fast = q.scan(queries.view(), &codes, 10, crate::topk::Allow::ALL);
            let qs = q.prepare_batch(queries.view());
            let slow =
                crate::encode::scan::scan_codes(&q, &qs, &codes, 10, crate::topk::Allow::ALL);
            let same = fast
                .iter()
                .zip(&slow)
                .map(|(a, b)| a.iter().filter(|h| b.iter().any(|x| x.id == h.id)).count())
                .sum::<usize>();
            assert!(
                same * 100 >= 97 * 10 * queries.len(),
                "rabitq{bits} {metric}: {same}"
            );
        }
        // more bits, or planes over 128 bytes, take the table scan
        let (q, _) = fit(4, Metric::Ip, base.view());
        assert!(!q.fast_scan());
        let (q, _) = fit(2, Metric::Ip, crate::testutil::gaussian(50, 520, 1).view());
        assert!(!q.fast_scan(), "130 bytes of planes take the table scan");
    }

    #[test]
    fn bad_bits_and_shapes_are_refused() {
        for bits in [0, 9] {
            let e = RabitqQuantizer::from_parts(bits, Metric::Ip, vec![0.0; 4], vec![0.0; 16])
                .unwrap_err();
            assert!(e.to_string().contains("from 1 to 8"), "{e}");
        }
        let e =
            RabitqQuantizer::from_parts(1, Metric::Ip, vec![0.0; 4], vec![0.0; 15]).unwrap_err();
        assert!(e.to_string().contains("rotation"), "{e}");
    }
}
