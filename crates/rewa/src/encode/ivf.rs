//! `ivf<nlist>`: the coarse quantizer of a partitioned (IVF) first stage.
//!
//! `nlist` centroids by k-means on a seeded sample of the training vectors (at most
//! [`MAX_TRAIN_PER_LIST`] per centroid, [`ITERS`] Lloyd iterations, as FAISS trains its IVF
//! quantizers). Each vector belongs to the list of its nearest centroid; a query probes the
//! `nprobe` lists whose centroids are nearest to it. For `l2` "nearest" is squared L2; for
//! `cosine` and `ip` it is the largest inner product with centroids normalised to unit length
//! after each iteration (spherical k-means, FAISS's `spherical` option), so that lists are
//! cones around directions rather than biased towards long centroids.
//!
//! The centroids live in the input space (before the encoder's transforms): the partition is
//! the encoder's first step and the codes inside each list are the encoder's usual codes (no
//! residuals: every quantizer works unchanged inside lists).

use super::{Tensor, TensorSource};
use crate::distance::{dot, Metric};
use crate::error::{invalid, Result};
use crate::vectors::VectorsRef;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Training vectors used per centroid at most (a seeded sample beyond that).
pub const MAX_TRAIN_PER_LIST: usize = 256;
/// Lloyd iterations.
pub const ITERS: usize = 10;

/// The fitted coarse quantizer: `nlist` centroids of the input dimension.
#[derive(Clone, Debug)]
pub struct Coarse {
    dim: usize,
    metric: Metric,
    /// `nlist x dim`, row-major.
    centroids: Vec<f32>,
    /// Squared norm of each centroid (for l2), or zeros (inner product).
    norms: Vec<f32>,
    /// For residual lists: each list's mean training vector (`nlist x dim`), what residuals
    /// are taken from. Spherical centroids are unit directions; a residual from one keeps a
    /// radial part (measured: it cost PQ recall), a residual from the mean does not.
    means: Option<Vec<f32>>,
}

impl Coarse {
    /// k-means of `train` into `nlist` lists. Fails with fewer training vectors than lists.
    pub fn fit(nlist: usize, train: VectorsRef<'_>, metric: Metric, seed: u64) -> Result<Coarse> {
        if train.len() < nlist {
            return invalid!(
                "ivf{nlist} needs at least {nlist} training vectors (one per list), got {}; use fewer lists (about sqrt(n) to 4 sqrt(n))",
                train.len()
            );
        }
        let sample = super::pq::train_sample(train, MAX_TRAIN_PER_LIST * nlist, seed);
        let centroids = kmeans(
            sample.as_slice(),
            train.dim(),
            nlist,
            ITERS,
            seed ^ 0x1F_0C0A_45E5,
            metric != Metric::L2,
        );
        Coarse::from_centroids(train.dim(), metric, centroids)
    }

    fn from_centroids(dim: usize, metric: Metric, centroids: Vec<f32>) -> Result<Coarse> {
        if dim == 0 || centroids.is_empty() || !centroids.len().is_multiple_of(dim) {
            return invalid!(
                "ivf: {} centroid values for dimension {dim}",
                centroids.len()
            );
        }
        let norms = norms(&centroids, dim, metric);
        Ok(Coarse {
            dim,
            metric,
            centroids,
            norms,
            means: None,
        })
    }

    /// How "nearest" is decided (squared L2 for `l2`, inner product otherwise).
    pub fn metric(&self) -> Metric {
        self.metric
    }
    /// Number of lists.
    pub fn nlist(&self) -> usize {
        self.centroids.len() / self.dim
    }
    /// The centroids, `nlist x dim`.
    pub fn centroids(&self) -> &[f32] {
        &self.centroids
    }

    /// The list of each row of `x` (its nearest centroid).
    pub fn assign(&self, x: VectorsRef<'_>) -> Vec<u32> {
        nearest(x.as_slice(), self.dim, &self.centroids, &self.norms, 1)
    }

    /// Records each list's mean over `x` (`assign[i]` the list of row i; an empty list keeps
    /// its centroid): residual lists are then taken from the means.
    pub fn fit_means(&mut self, x: VectorsRef<'_>, assign: &[u32]) {
        let (d, k) = (self.dim, self.nlist());
        let mut sums = vec![0f64; k * d];
        let mut counts = vec![0usize; k];
        for (r, &l) in x.rows().zip(assign) {
            counts[l as usize] += 1;
            for (s, &v) in sums[l as usize * d..(l as usize + 1) * d].iter_mut().zip(r) {
                *s += v as f64;
            }
        }
        let mut means = self.centroids.clone();
        for (l, &n) in counts.iter().enumerate().filter(|(_, &n)| n > 0) {
            for (m, s) in means[l * d..(l + 1) * d]
                .iter_mut()
                .zip(&sums[l * d..(l + 1) * d])
            {
                *m = (s / n as f64) as f32;
            }
        }
        self.means = Some(means);
    }
    /// What residuals are taken from: the list means when recorded, else the centroids.
    fn anchors(&self) -> &[f32] {
        self.means.as_deref().unwrap_or(&self.centroids)
    }
    /// `x` minus the anchor (list mean, else centroid) of each row's list (`assign[i]`).
    pub fn residuals(&self, x: VectorsRef<'_>, assign: &[u32]) -> crate::vectors::Vectors {
        let d = self.dim;
        let anchors = self.anchors();
        let mut out = x.as_slice().to_vec();
        for (r, &l) in out.chunks_exact_mut(d).zip(assign) {
            let c = &anchors[l as usize * d..(l as usize + 1) * d];
            for (v, &cv) in r.iter_mut().zip(c) {
                *v -= cv;
            }
        }
        crate::vectors::Vectors::new(d, out).expect("invariant: whole rows")
    }
    /// The inner product of `q` with the anchor residuals of list `l` are taken from.
    #[inline]
    pub fn dot_centroid(&self, q: &[f32], l: u32) -> f32 {
        let d = self.dim;
        dot(q, &self.anchors()[l as usize * d..(l as usize + 1) * d])
    }

    /// The `nprobe` lists nearest to each row of `x`, nearest first: `x.len() * nprobe` list
    /// numbers (`nprobe` is cut to `nlist`).
    pub fn probe(&self, x: VectorsRef<'_>, nprobe: usize) -> Vec<u32> {
        nearest(
            x.as_slice(),
            self.dim,
            &self.centroids,
            &self.norms,
            nprobe.clamp(1, self.nlist()),
        )
    }

    /// Its tensors: `centroids` (`nlist x dim`), and `means` for residual lists.
    pub fn tensors(&self) -> Vec<Tensor<'_>> {
        let mut t = vec![Tensor::f32(
            "centroids",
            vec![self.nlist(), self.dim],
            &self.centroids,
        )];
        if let Some(m) = &self.means {
            t.push(Tensor::f32("means", vec![self.nlist(), self.dim], m));
        }
        t
    }

    /// Reads what [`Coarse::tensors`] wrote, for `nlist` lists of dimension `dim` (with the
    /// list means when `residual`).
    pub fn from_tensors(
        src: &TensorSource<'_>,
        nlist: usize,
        dim: usize,
        metric: Metric,
        residual: bool,
    ) -> Result<Coarse> {
        let c = src.f32("centroids", nlist * dim)?;
        if c.iter().any(|v| !v.is_finite()) {
            return Err(src.corrupt("ivf centroids hold a value that is not finite"));
        }
        let mut coarse = Coarse::from_centroids(dim, metric, c)?;
        if residual {
            let m = src.f32("means", nlist * dim)?;
            if m.iter().any(|v| !v.is_finite()) {
                return Err(src.corrupt("ivf list means hold a value that is not finite"));
            }
            coarse.means = Some(m);
        }
        Ok(coarse)
    }
}

/// What `nearest` adds to `-2 x.c` (l2) or uses instead (`-x.c`, inner product): the
/// squared norms for l2, zeros otherwise.
fn norms(c: &[f32], dim: usize, metric: Metric) -> Vec<f32> {
    match metric {
        Metric::L2 => c.chunks_exact(dim).map(|r| dot(r, r)).collect(),
        _ => vec![0.0; c.len() / dim],
    }
}

/// The `top` nearest centroids of every row of `x`, nearest first (ties by centroid number):
/// distance `norms[c] - 2 x.c`, which orders as squared L2 when `norms` are the centroids'
/// squared norms and as the inner product (largest first) when they are zero.
fn nearest(x: &[f32], dim: usize, cents: &[f32], norms: &[f32], top: usize) -> Vec<u32> {
    let k = norms.len();
    let n = x.len() / dim;
    const B: usize = 256;
    let mut out = vec![0u32; n * top];
    x.par_chunks(B * dim)
        .zip(out.par_chunks_mut(B * top))
        .for_each(|(xs, o)| {
            let nb = xs.len() / dim;
            let mut scores = vec![0f32; nb * k];
            crate::linalg::gemm_abt(xs, cents, nb, dim, k, &mut scores);
            let mut order: Vec<u64> = Vec::with_capacity(k);
            for (row, o) in scores.chunks_exact(k).zip(o.chunks_exact_mut(top)) {
                let dist = |(&s, &nc): (&f32, &f32)| nc - 2.0 * s;
                if top == 1 {
                    let min = row
                        .iter()
                        .zip(norms)
                        .map(dist)
                        .fold(f32::INFINITY, f32::min);
                    let at = row.iter().zip(norms).map(dist).position(|d| d <= min);
                    o[0] = at.unwrap_or(0) as u32;
                    continue;
                }
                // (distance, centroid) as one integer key ordered as `total_cmp` then the
                // centroid: a selection over plain integers (the float comparator with its tie
                // rule was a tenth of a partitioned search's time)
                order.clear();
                order.extend(
                    row.iter()
                        .zip(norms)
                        .map(dist)
                        .zip(0u32..)
                        .map(|(d, c)| (ordered_bits(d) as u64) << 32 | c as u64),
                );
                if top < k {
                    order.select_nth_unstable(top - 1);
                }
                order[..top].sort_unstable();
                for (o, &key) in o.iter_mut().zip(&order[..top]) {
                    *o = key as u32;
                }
            }
        });
    out
}

/// `f32` bits mapped to a `u32` that orders as [`f32::total_cmp`] does.
#[inline(always)]
fn ordered_bits(x: f32) -> u32 {
    let b = x.to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 1 << 31
    }
}

/// Lloyd's k-means of the rows of `x` into `k` centroids from `k` distinct seeded rows, the
/// assignment step in parallel; `spherical` normalises the centroids after each update and
/// assigns by inner product. An emptied centroid takes half of the largest cluster (a copy,
/// both nudged apart), as FAISS does. Needs `x.len() / dim >= k`.
fn kmeans(x: &[f32], dim: usize, k: usize, iters: usize, seed: u64, spherical: bool) -> Vec<f32> {
    let n = x.len() / dim;
    debug_assert!(n >= k);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cents = vec![0f32; k * dim];
    for (c, i) in cents
        .chunks_exact_mut(dim)
        .zip(rand::seq::index::sample(&mut rng, n, k))
    {
        c.copy_from_slice(&x[i * dim..(i + 1) * dim]);
    }
    let metric = if spherical { Metric::Ip } else { Metric::L2 };
    let mut sums = vec![0f64; k * dim];
    let mut counts = vec![0usize; k];
    for _ in 0..iters {
        let assign = nearest(x, dim, &cents, &norms(&cents, dim, metric), 1);
        sums.fill(0.0);
        counts.fill(0);
        for (r, &a) in x.chunks_exact(dim).zip(&assign) {
            let a = a as usize;
            counts[a] += 1;
            for (s, &v) in sums[a * dim..(a + 1) * dim].iter_mut().zip(r) {
                *s += v as f64;
            }
        }
        for c in 0..k {
            if counts[c] == 0 {
                continue;
            }
            let row = &sums[c * dim..(c + 1) * dim];
            let scale = if spherical {
                let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
                if norm > 0.0 {
                    1.0 / norm
                } else {
                    1.0 / counts[c] as f64
                }
            } else {
                1.0 / counts[c] as f64
            };
            for (o, s) in cents[c * dim..(c + 1) * dim].iter_mut().zip(row) {
                *o = (s * scale) as f32;
            }
        }
        super::pq::split_empty(&mut cents, &mut counts, dim, &mut rng);
    }
    cents
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn clusters(n_per: usize, centers: &[[f32; 2]]) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut x = Vec::new();
        for c in centers {
            for _ in 0..n_per {
                x.push(c[0] + rng.random_range(-0.1..0.1));
                x.push(c[1] + rng.random_range(-0.1..0.1));
            }
        }
        x
    }

    #[test]
    fn separated_clusters_get_one_list_each() {
        let centers = [[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]];
        let x = clusters(50, &centers);
        let v = VectorsRef::new(2, &x).unwrap();
        let c = Coarse::fit(4, v, Metric::L2, 1).unwrap();
        let a = c.assign(v);
        for block in a.chunks(50) {
            assert!(block.iter().all(|&l| l == block[0]), "{block:?}");
        }
        let mut firsts: Vec<u32> = a.chunks(50).map(|b| b[0]).collect();
        firsts.sort_unstable();
        assert_eq!(firsts, [0, 1, 2, 3]);
        // probing all lists orders them by distance; the first is the assigned list
        let p = c.probe(v, 4);
        for (row, &l) in p.chunks(4).zip(&a) {
            assert_eq!(row[0], l);
            let mut s = row.to_vec();
            s.sort_unstable();
            assert_eq!(s, [0, 1, 2, 3]);
        }
    }

    #[test]
    fn probe_orders_lists_by_metric_distance() {
        // brute force over random centroids and queries, both metrics
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let x: Vec<f32> = (0..300 * 8).map(|_| rng.random_range(-1.0..1.0)).collect();
        for metric in [Metric::L2, Metric::Ip] {
            let c = Coarse::fit(16, VectorsRef::new(8, &x).unwrap(), metric, 5).unwrap();
            let q = &x[..20 * 8];
            let p = c.probe(VectorsRef::new(8, q).unwrap(), 5);
            for (qi, row) in q.chunks(8).zip(p.chunks(5)) {
                let d = |l: u32| {
                    let cen = &c.centroids()[l as usize * 8..(l as usize + 1) * 8];
                    match metric {
                        Metric::L2 => qi
                            .iter()
                            .zip(cen)
                            .map(|(a, b)| (a - b) * (a - b))
                            .sum::<f32>(),
                        _ => -qi.iter().zip(cen).map(|(a, b)| a * b).sum::<f32>(),
                    }
                };
                let mut all: Vec<u32> = (0..16).collect();
                all.sort_by(|&a, &b| d(a).total_cmp(&d(b)).then(a.cmp(&b)));
                // the same lists (a last-bit tie between two distances may swap neighbours)
                for (got, want) in row.iter().zip(&all[..5]) {
                    assert!(
                        (d(*got) - d(*want)).abs() < 1e-4,
                        "{row:?} vs {:?}",
                        &all[..5]
                    );
                }
            }
            if metric != Metric::L2 {
                for cen in c.centroids().chunks(8) {
                    assert!(
                        (dot(cen, cen) - 1.0).abs() < 1e-4,
                        "spherical centroids are unit"
                    );
                }
            }
        }
    }

    #[test]
    fn ordered_bits_sort_as_total_cmp() {
        let v = [
            f32::NEG_INFINITY,
            -3.5,
            -1.0,
            -f32::MIN_POSITIVE,
            -0.0,
            0.0,
            1e-30,
            0.5,
            2.0,
            f32::MAX,
            f32::INFINITY,
        ];
        for a in v {
            for b in v {
                assert_eq!(
                    ordered_bits(a).cmp(&ordered_bits(b)),
                    a.total_cmp(&b),
                    "{a} {b}"
                );
            }
        }
    }

    #[test]
    fn too_few_training_vectors_is_an_error() {
        let x = vec![0.5f32; 10 * 4];
        let e = Coarse::fit(16, VectorsRef::new(4, &x).unwrap(), Metric::L2, 1).unwrap_err();
        assert!(
            e.to_string().contains("at least 16 training vectors"),
            "{e}"
        );
    }
}
