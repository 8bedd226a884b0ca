//! `pq<M>`: product quantization, one byte per sub-space (FAISS's `PQ<M>x8`).
//!
//! The input's `d` coordinates are cut into `M` contiguous sub-spaces (sizes differ by at most
//! one when `M` does not divide `d`); each gets 256 centroids by k-means on the training
//! vectors, and a vector is stored as the index of the nearest centroid in each sub-space.
//! A float query is scored against the codes asymmetrically (ADC): `prepare` computes, per
//! sub-space, the 256 partial distances from the query to the centroids, and a distance is one
//! table lookup per code byte, the kernel `asign` uses ([`super::sign`]).
//!
//! Sub-spaces should carry similar variance: put a rotation in front (`hadamard384+pq32`),
//! which plays the part of FAISS's OPQ rotation without training it. After `pca<m>` the first
//! sub-spaces would hold most of the variance.

use super::sign::table_distance;
use super::{Quantizer, Tensor, TensorSource};
use crate::distance::{dot, Metric};
use crate::error::{invalid, Result};
use crate::topk::{Allow, Hit};
use crate::vectors::{Vectors, VectorsRef};
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Centroids per sub-space: codes are one byte.
pub const PQ_CENTROIDS: usize = 256;

/// Settings for [`PqQuantizer`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PqConfig {
    /// Sub-spaces = bytes per code.
    pub m: usize,
    /// How the float query is compared with the decoded codes.
    pub metric: Metric,
    /// k-means iterations per sub-space.
    pub iters: usize,
    /// At most this many training vectors are used (a seeded sample), as FAISS's 256 per
    /// centroid.
    pub max_train: usize,
}

impl PqConfig {
    /// `m` sub-spaces with the defaults (25 iterations, 65,536 training vectors at most).
    pub fn new(m: usize, metric: Metric) -> Self {
        PqConfig {
            m,
            metric,
            iters: 25,
            max_train: 256 * PQ_CENTROIDS,
        }
    }
}

/// Fitted product quantizer.
#[derive(Clone, Debug)]
pub struct PqQuantizer {
    dim: usize,
    m: usize,
    /// Sub-space `j` (coordinates `s..e`) owns `centroids[256 * s..256 * e]`: 256 rows of
    /// `e - s` floats.
    centroids: Vec<f32>,
    /// Squared norm of every centroid, sub-space after sub-space (`256 * m`).
    norms: Vec<f32>,
    metric: Metric,
    /// `pq<m>s<eta>`: codes assigned score-aware (ScaNN's anisotropic loss) with this weight
    /// on the residual's component along the vector; `None`: nearest centroids.
    eta: Option<f32>,
}

/// `name<m>` (pq or opq) needs 1 to `dim` sub-spaces.
pub(crate) fn check_subspaces(name: &str, m: usize, dim: usize) -> Result<()> {
    if m == 0 || m > dim {
        return invalid!("{name}{m} needs 1 to {dim} sub-spaces for input dimension {dim}");
    }
    Ok(())
}

/// The squared norm of every centroid, sub-space after sub-space (`k * m`), for `k`
/// centroids per sub-space laid out as [`PqQuantizer::centroids`].
pub(crate) fn subspace_norms(centroids: &[f32], dim: usize, m: usize, k: usize) -> Vec<f32> {
    let mut norms = Vec::with_capacity(k * m);
    for j in 0..m {
        let (s, e) = bounds(dim, m, j);
        norms.extend(
            centroids[k * s..k * e]
                .chunks_exact(e - s)
                .map(|c| dot(c, c)),
        );
    }
    norms
}

/// Coordinates `s..e` of sub-space `j` of `m` over `d` dims.
#[inline(always)]
pub(crate) fn bounds(d: usize, m: usize, j: usize) -> (usize, usize) {
    (j * d / m, (j + 1) * d / m)
}

impl PqQuantizer {
    /// From stored centroids (`256 * dim` floats, laid out as [`PqQuantizer::centroids`]).
    pub fn from_parts(dim: usize, m: usize, centroids: Vec<f32>, metric: Metric) -> Result<Self> {
        check_subspaces("pq", m, dim)?;
        if centroids.len() != PQ_CENTROIDS * dim {
            return invalid!(
                "pq{m}: {} centroid floats, dimension {dim} needs {}",
                centroids.len(),
                PQ_CENTROIDS * dim
            );
        }
        let norms = subspace_norms(&centroids, dim, m, PQ_CENTROIDS);
        Ok(PqQuantizer {
            dim,
            m,
            centroids,
            norms,
            metric,
            eta: None,
        })
    }
    /// The same codebooks, codes assigned score-aware with weight `eta` (`pq<m>s<eta>`).
    pub fn with_eta(mut self, eta: Option<f32>) -> Self {
        self.eta = eta;
        self
    }

    /// Score-aware reassignment (ScaNN, Guo et al. 2020): coordinate descent over sub-spaces
    /// on `|r|^2 + (eta - 1) (r . x/|x|)^2`, `r = x - decode(code)`, from the nearest
    /// centroids, at most three rounds. For inner-product search the error along `x` moves
    /// scores most; `eta > 1` trades more error across `x` for less along it.
    fn anisotropic(&self, x: &[f32], code: &mut [u8], eta: f32) {
        let nx = x.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        let mut dec = vec![0f32; self.dim];
        self.decode(code, &mut dec);
        let mut r: Vec<f32> = x.iter().zip(&dec).map(|(a, b)| a - b).collect();
        let mut rp: f32 = r.iter().zip(x).map(|(a, b)| a * b / nx).sum();
        let along = |c: &[f32], xs: &[f32]| c.iter().zip(xs).map(|(c, v)| c * v / nx).sum::<f32>();
        for _ in 0..3 {
            let mut changed = false;
            for j in 0..self.m {
                let (s, e) = bounds(self.dim, self.m, j);
                let (cents, _, ds) = self.sub_centroids(j);
                let cur = &cents[code[j] as usize * ds..][..ds];
                // this sub-space's residual and the parallel part with its centroid taken out
                let base: Vec<f32> = r[s..e].iter().zip(cur).map(|(a, c)| a + c).collect();
                let base_p = rp + along(cur, &x[s..e]);
                let (mut best, mut best_loss) = (code[j], f32::MAX);
                for (c, cc) in cents.chunks_exact(ds).enumerate() {
                    let n2: f32 = base.iter().zip(cc).map(|(b, c)| (b - c) * (b - c)).sum();
                    let p = base_p - along(cc, &x[s..e]);
                    let loss = n2 + (eta - 1.0) * p * p;
                    if loss < best_loss {
                        (best, best_loss) = (c as u8, loss);
                    }
                }
                if best != code[j] {
                    changed = true;
                    let cb = &cents[best as usize * ds..][..ds];
                    for (t, (b, c)) in base.iter().zip(cb).enumerate() {
                        r[s + t] = b - c;
                    }
                    rp = base_p - along(cb, &x[s..e]);
                    code[j] = best;
                }
            }
            if !changed {
                break;
            }
        }
    }
    /// Its tensor: `centroids` (256 x d, laid out as [`PqQuantizer::centroids`]).
    pub fn tensors(&self) -> Vec<Tensor<'_>> {
        vec![Tensor::f32(
            "centroids",
            vec![PQ_CENTROIDS, self.dim],
            &self.centroids,
        )]
    }
    /// From the tensor of [`PqQuantizer::tensors`], for `pq<m>` on `dim` inputs.
    pub fn from_tensors(
        src: &TensorSource<'_>,
        dim: usize,
        m: usize,
        metric: Metric,
    ) -> Result<Self> {
        let c = src.f32("centroids", PQ_CENTROIDS * dim)?;
        Self::from_parts(dim, m, c, metric).map_err(|e| src.corrupt(e))
    }
    /// All centroids: sub-space `j` over coordinates `s..e` holds 256 rows of `e - s` floats
    /// at `256 * s`.
    pub fn centroids(&self) -> &[f32] {
        &self.centroids
    }
    /// Input dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// The vector a code stands for.
    pub fn decode(&self, code: &[u8], out: &mut [f32]) {
        for j in 0..self.m {
            let (s, e) = bounds(self.dim, self.m, j);
            out[s..e].copy_from_slice(&self.centroids[self.centroid_start(j, code[j])..][..e - s]);
        }
    }
    /// For each coordinate of the vector `code` stands for, its position in
    /// [`PqQuantizer::centroids`] (a gather that decodes; training uses it to reach the
    /// codebooks).
    pub fn decode_positions(&self, code: &[u8], out: &mut [u32]) {
        for j in 0..self.m {
            let (s, e) = bounds(self.dim, self.m, j);
            let at = self.centroid_start(j, code[j]);
            for (t, o) in out[s..e].iter_mut().enumerate() {
                *o = (at + t) as u32;
            }
        }
    }
    /// Where centroid `c` of sub-space `j` starts in [`PqQuantizer::centroids`].
    fn centroid_start(&self, j: usize, c: u8) -> usize {
        let (s, e) = bounds(self.dim, self.m, j);
        PQ_CENTROIDS * s + c as usize * (e - s)
    }
    fn sub_centroids(&self, j: usize) -> (&[f32], &[f32], usize) {
        let (s, e) = bounds(self.dim, self.m, j);
        (
            &self.centroids[PQ_CENTROIDS * s..PQ_CENTROIDS * e],
            &self.norms[PQ_CENTROIDS * j..PQ_CENTROIDS * (j + 1)],
            e - s,
        )
    }
}

/// Index of the nearest centroid (squared L2) for every row of `x` (`n x ds`), by one matrix
/// product per block: `|x - c|^2 = |x|^2 - 2 x.c + |c|^2`, and `|x|^2` does not change the
/// winner.
pub(crate) fn nearest(x: &[f32], ds: usize, cents: &[f32], norms: &[f32], out: &mut [u8]) {
    let k = norms.len();
    const B: usize = 512;
    let mut scores = vec![0f32; B.min(x.len() / ds) * k];
    for (xs, o) in x.chunks(B * ds).zip(out.chunks_mut(B)) {
        let nb = xs.len() / ds;
        crate::linalg::gemm_abt(xs, cents, nb, ds, k, &mut scores);
        for (row, o) in scores[..nb * k].chunks_exact(k).zip(o.iter_mut()) {
            // the minimum first (a loop the compiler vectorizes), then where it is
            let dist = |(&s, &nc): (&f32, &f32)| nc - 2.0 * s;
            let min = row
                .iter()
                .zip(norms)
                .map(dist)
                .fold(f32::INFINITY, f32::min);
            let at = row.iter().zip(norms).map(dist).position(|d| d <= min);
            *o = at.unwrap_or(0) as u8;
        }
    }
}

/// k-means (Lloyd) of the rows of `x` (`n x ds`) into `k` centroids, from `init` (`k x ds`)
/// when given, else from `k` distinct seeded rows (repeated when `n < k`). An emptied centroid
/// takes half of the largest cluster: a copy of its centroid, both nudged apart (as FAISS
/// does).
pub(crate) fn kmeans(
    x: &[f32],
    ds: usize,
    k: usize,
    iters: usize,
    seed: u64,
    init: Option<&[f32]>,
) -> Vec<f32> {
    let n = x.len() / ds;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cents = vec![0f32; k * ds];
    if let Some(init) = init {
        cents.copy_from_slice(init);
    } else {
        let first: Vec<usize> = if n >= k {
            sample(&mut rng, n, k).into_vec()
        } else {
            (0..k).map(|i| i % n).collect()
        };
        for (c, &i) in cents.chunks_exact_mut(ds).zip(&first) {
            c.copy_from_slice(&x[i * ds..(i + 1) * ds]);
        }
    }
    let mut assign = vec![0u8; n];
    let mut sums = vec![0f64; k * ds];
    let mut counts = vec![0usize; k];
    for _ in 0..iters {
        let norms: Vec<f32> = cents.chunks_exact(ds).map(|c| dot(c, c)).collect();
        nearest(x, ds, &cents, &norms, &mut assign);
        sums.fill(0.0);
        counts.fill(0);
        for (r, &a) in x.chunks_exact(ds).zip(&assign) {
            let a = a as usize;
            counts[a] += 1;
            for (s, &v) in sums[a * ds..(a + 1) * ds].iter_mut().zip(r) {
                *s += v as f64;
            }
        }
        for c in 0..k {
            if counts[c] > 0 {
                let inv = 1.0 / counts[c] as f64;
                for (o, s) in cents[c * ds..(c + 1) * ds]
                    .iter_mut()
                    .zip(&sums[c * ds..(c + 1) * ds])
                {
                    *o = (s * inv) as f32;
                }
            }
        }
        if n >= k {
            split_empty(&mut cents, &mut counts, ds, &mut rng);
        }
    }
    cents
}

/// Gives each emptied centroid half of the largest cluster: a copy of its centroid, both
/// nudged apart by a random sign per coordinate (as FAISS does). Shared by the PQ and IVF
/// k-means.
pub(crate) fn split_empty(
    cents: &mut [f32],
    counts: &mut [usize],
    ds: usize,
    rng: &mut ChaCha8Rng,
) {
    let k = counts.len();
    for c in 0..k {
        if counts[c] > 0 {
            continue;
        }
        let big = (0..k).max_by_key(|&i| counts[i]).expect("k >= 1");
        const EPS: f32 = 1.0 / 1024.0;
        for t in 0..ds {
            let v = cents[big * ds + t];
            let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
            cents[c * ds + t] = v * (1.0 + sign * EPS);
            cents[big * ds + t] = v * (1.0 - sign * EPS);
        }
        counts[c] = counts[big] / 2;
        counts[big] -= counts[c];
    }
}

/// At most `max` rows of `x`: a seeded sample in row order, or all of them.
pub(crate) fn train_sample(x: VectorsRef<'_>, max: usize, seed: u64) -> Vectors {
    if x.len() <= max {
        return x.to_owned();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rows: Vec<u32> = sample(&mut rng, x.len(), max)
        .into_iter()
        .map(|i| i as u32)
        .collect();
    rows.sort_unstable();
    x.gather(&rows)
}

/// The 256 centroids of each of the `m` sub-spaces of `x`, by k-means (warm-started from
/// `init`, laid out as [`PqQuantizer::centroids`], when given), sub-spaces in parallel.
pub(crate) fn codebooks(
    x: VectorsRef<'_>,
    m: usize,
    iters: usize,
    seed: u64,
    init: Option<&[f32]>,
) -> Vec<f32> {
    codebooks_k(x, m, PQ_CENTROIDS, iters, seed, init)
}

/// `k` centroids (at most 256) for each of the `m` sub-spaces of `x` (warm-started from
/// `init`, same layout, when given), sub-spaces in parallel; sub-space `j` over coordinates
/// `s..e` at `k * s`.
pub(crate) fn codebooks_k(
    x: VectorsRef<'_>,
    m: usize,
    k: usize,
    iters: usize,
    seed: u64,
    init: Option<&[f32]>,
) -> Vec<f32> {
    let d = x.dim();
    let parts: Vec<Vec<f32>> = (0..m)
        .into_par_iter()
        .map(|j| {
            let (s, e) = bounds(d, m, j);
            let sub: Vec<f32> = x.rows().flat_map(|r| &r[s..e]).copied().collect();
            let sj = seed ^ (j as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let init = init.map(|c| &c[k * s..k * e]);
            kmeans(&sub, e - s, k, iters, sj, init)
        })
        .collect();
    parts.concat()
}

impl Quantizer for PqQuantizer {
    type Config = PqConfig;
    type Query = Vec<[f32; 256]>;

    fn fit(cfg: &PqConfig, train: VectorsRef<'_>, seed: u64) -> Result<Self> {
        let d = train.dim();
        check_subspaces("pq", cfg.m, d)?;
        let sample = train_sample(train, cfg.max_train, seed);
        let cents = codebooks(sample.view(), cfg.m, cfg.iters, seed, None);
        PqQuantizer::from_parts(d, cfg.m, cents, cfg.metric)
    }
    fn code_len(&self) -> usize {
        self.m
    }
    fn encode(&self, x: &[f32], out: &mut [u8]) {
        let one = VectorsRef::new(self.dim, x).expect("invariant: a vector of dim floats");
        self.encode_batch(one, out);
    }
    fn encode_batch(&self, x: VectorsRef<'_>, out: &mut [u8]) {
        let n = x.len();
        let mut sub = Vec::new();
        let mut idx = vec![0u8; n];
        for j in 0..self.m {
            let (s, e) = bounds(self.dim, self.m, j);
            sub.clear();
            sub.extend(x.rows().flat_map(|r| &r[s..e]));
            let (cents, norms, ds) = self.sub_centroids(j);
            nearest(&sub, ds, cents, norms, &mut idx);
            for (o, &c) in out.chunks_exact_mut(self.m).zip(&idx) {
                o[j] = c;
            }
        }
        if let Some(eta) = self.eta {
            out.par_chunks_mut(self.m)
                .zip(x.as_slice().par_chunks(self.dim))
                .for_each(|(code, v)| self.anisotropic(v, code, eta));
        }
    }
    fn prepare(&self, query: &[f32]) -> Vec<[f32; 256]> {
        let one = VectorsRef::new(self.dim, query).expect("invariant: a query of dim floats");
        self.prepare_batch(one)
            .pop()
            .expect("one query, one table set")
    }
    /// The tables of many queries by one matrix product per sub-space (one dot product of a
    /// dozen floats per table entry was most of a SciFact query's time).
    fn prepare_batch(&self, queries: VectorsRef<'_>) -> Vec<Vec<[f32; 256]>> {
        let nq = queries.len();
        let mut out = vec![vec![[0f32; 256]; self.m]; nq];
        let mut sub = Vec::new();
        let mut scores = vec![0f32; nq * PQ_CENTROIDS];
        for j in 0..self.m {
            let (s, e) = bounds(self.dim, self.m, j);
            let (cents, norms, ds) = self.sub_centroids(j);
            sub.clear();
            sub.extend(queries.rows().flat_map(|r| &r[s..e]));
            crate::linalg::gemm_abt(&sub, cents, nq, ds, PQ_CENTROIDS, &mut scores);
            for ((o, row), q) in out
                .iter_mut()
                .zip(scores.chunks_exact(PQ_CENTROIDS))
                .zip(sub.chunks_exact(ds))
            {
                let t = &mut o[j];
                match self.metric {
                    Metric::Cosine | Metric::Ip => {
                        for (t, &sc) in t.iter_mut().zip(row) {
                            *t = -sc;
                        }
                    }
                    Metric::L2 => {
                        let qq = dot(q, q);
                        for ((t, &sc), &nc) in t.iter_mut().zip(row).zip(norms) {
                            *t = qq - 2.0 * sc + nc;
                        }
                    }
                }
            }
        }
        out
    }
    #[inline(always)]
    fn distance(&self, q: &Vec<[f32; 256]>, code: &[u8]) -> f32 {
        table_distance(q, code)
    }
    fn scan(
        &self,
        queries: VectorsRef<'_>,
        codes: &[u8],
        k: usize,
        allow: Allow<'_>,
    ) -> Vec<Vec<Hit>> {
        crate::encode::scan::scan_tables(self, queries, codes, k, allow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_aware_codes_lower_the_anisotropic_loss_and_eta_1_is_nearest() {
        let base = crate::testutil::gaussian(400, 48, 11);
        let q = PqQuantizer::fit(&PqConfig::new(8, Metric::Ip), base.view(), 1).unwrap();
        let loss = |x: &[f32], code: &[u8], eta: f32| {
            let mut d = vec![0f32; 48];
            q.decode(code, &mut d);
            let r: Vec<f32> = x.iter().zip(&d).map(|(a, b)| a - b).collect();
            let nx = x.iter().map(|v| v * v).sum::<f32>().sqrt();
            let p: f32 = r.iter().zip(x).map(|(a, b)| a * b / nx).sum();
            r.iter().map(|v| v * v).sum::<f32>() + (eta - 1.0) * p * p
        };
        let mut plain = vec![0u8; 400 * 8];
        q.encode_batch(base.view(), &mut plain);
        let one = q.clone().with_eta(Some(1.0));
        let mut same = vec![0u8; 400 * 8];
        one.encode_batch(base.view(), &mut same);
        assert_eq!(same, plain, "eta 1 is the nearest-centroid assignment");
        let aware = q.clone().with_eta(Some(4.0));
        let mut codes = vec![0u8; 400 * 8];
        aware.encode_batch(base.view(), &mut codes);
        assert_ne!(codes, plain);
        let (mut before, mut after) = (0f32, 0f32);
        for ((x, a), b) in base.view().rows().zip(codes.chunks(8)).zip(plain.chunks(8)) {
            let (la, lb) = (loss(x, a, 4.0), loss(x, b, 4.0));
            assert!(la <= lb * (1.0 + 1e-5), "{la} > {lb}");
            after += la;
            before += lb;
        }
        assert!(
            after < before,
            "score-aware loss {after} vs nearest {before}"
        );
        // what it buys: the error along the vectors (what moves inner products) falls
        let along = |c: &[u8]| -> f32 {
            base.view()
                .rows()
                .zip(c.chunks(8))
                .map(|(x, c)| loss(x, c, 2.0) - loss(x, c, 1.0))
                .sum()
        };
        let (pa, pb) = (along(&codes), along(&plain));
        assert!(pa < 0.9 * pb, "parallel error {pa} vs {pb}"); // measured 0.83
    }
    use crate::{Encoder, Error};

    #[test]
    fn table_distance_is_the_metric_to_the_decoded_vector() {
        // 50 dims into 7 uneven sub-spaces (7 or 8 coordinates)
        let base = crate::testutil::gaussian(600, 50, 1);
        let queries = crate::testutil::gaussian(20, 50, 2);
        for metric in [Metric::Ip, Metric::L2] {
            let mut cfg = PqConfig::new(7, metric);
            cfg.iters = 5;
            let q = PqQuantizer::fit(&cfg, base.view(), 3).unwrap();
            assert_eq!(q.code_len(), 7);
            let mut code = vec![0u8; 7];
            let mut dec = vec![0f32; 50];
            let batch = q.prepare_batch(queries.view());
            for ((x, y), b) in base.view().rows().zip(queries.view().rows()).zip(&batch) {
                for (t1, t2) in b.iter().zip(&q.prepare(y)) {
                    for (a, c) in t1.iter().zip(t2) {
                        assert!((a - c).abs() < 1e-4 * (1.0 + c.abs()), "batch {a} vs {c}");
                    }
                }
                q.encode(x, &mut code);
                q.decode(&code, &mut dec);
                let want = metric.distance(y, &dec);
                let got = q.distance(&q.prepare(y), &code);
                assert!(
                    (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "{metric}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn batch_encoding_equals_one_at_a_time_and_codes_are_nearest_centroids() {
        let base = crate::testutil::gaussian(700, 24, 5);
        let mut cfg = PqConfig::new(4, Metric::L2);
        cfg.iters = 3;
        let q = PqQuantizer::fit(&cfg, base.view(), 0).unwrap();
        let mut batch = vec![0u8; 700 * 4];
        q.encode_batch(base.view(), &mut batch);
        let mut one = vec![0u8; 4];
        for (x, b) in base.view().rows().zip(batch.chunks_exact(4)) {
            q.encode(x, &mut one);
            assert_eq!(one, b);
            // brute force over the 256 centroids of each sub-space
            for (j, &c) in b.iter().enumerate() {
                let (cents, _, ds) = q.sub_centroids(j);
                let sub = &x[6 * j..6 * j + 6];
                let best = (0..256)
                    .min_by(|&a, &b| {
                        crate::distance::l2sq(sub, &cents[a * ds..(a + 1) * ds])
                            .total_cmp(&crate::distance::l2sq(sub, &cents[b * ds..(b + 1) * ds]))
                    })
                    .unwrap();
                let dist = |i: usize| crate::distance::l2sq(sub, &cents[i * ds..(i + 1) * ds]);
                assert!(dist(c as usize) <= dist(best) * (1.0 + 1e-5) + 1e-6);
            }
        }
    }

    #[test]
    fn kmeans_finds_separated_clusters_and_refills_empty_ones() {
        // 4 tight clusters far apart, 4 centroids: each centroid lands on one cluster mean
        let mut x = Vec::new();
        let centres = [[0.0f32, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]];
        for i in 0..400 {
            let c = centres[i % 4];
            x.extend([
                c[0] + (i as f32 * 0.37).sin() * 0.1,
                c[1] + (i as f32 * 0.11).cos() * 0.1,
            ]);
        }
        let cents = kmeans(&x, 2, 4, 20, 7, None);
        for c in centres {
            let hit = cents
                .chunks_exact(2)
                .any(|k| (k[0] - c[0]).abs() < 0.2 && (k[1] - c[1]).abs() < 0.2);
            assert!(hit, "no centroid near {c:?}: {cents:?}");
        }
        // more centroids than distinct points: still finite, no panic
        let few = kmeans(&x[..6], 2, 8, 5, 1, None);
        assert!(few.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn rotated_pq_beats_sign_codes_of_the_same_bytes() {
        // 16 bytes each: 128 sign bits vs 16 PQ sub-spaces, recall@10 against exact
        let (base, _, queries, _) = crate::testutil::clusters(20, 100, 64, 0.5, 9);
        let recall = |spec: &str| {
            let enc = Encoder::fit(&spec.parse().unwrap(), base.view(), Metric::Ip, 1).unwrap();
            assert_eq!(enc.code_len(), 16);
            let codes = enc.encode_batch(base.view()).unwrap();
            let hits = crate::encode::scan::scan_encoded(
                &enc,
                &codes,
                queries.view(),
                10,
                crate::topk::Allow::ALL,
            );
            let truth = crate::kernels::exact_search(base.view(), queries.view(), Metric::Ip, 10);
            crate::eval::recall_at_k(&hits, &truth, 10)
        };
        let sign = recall("hadamard128+asign");
        let pq = recall("hadamard64+pq16");
        assert!(pq > sign + 0.05, "pq16 {pq} vs asign {sign}");
    }

    #[test]
    fn bad_shapes_are_refused() {
        let base = Vectors::new(4, vec![0.5; 40]).unwrap();
        assert!(matches!(
            PqQuantizer::fit(&PqConfig::new(5, Metric::Ip), base.view(), 0),
            Err(Error::InvalidInput(_))
        ));
        assert!(PqQuantizer::from_parts(4, 2, vec![0.0; 10], Metric::Ip).is_err());
    }
}
