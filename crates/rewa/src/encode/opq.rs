//! `opq<m>`: the rotation of optimized product quantization (Ge et al. 2013; FAISS's
//! `OPQ<m>`), trained for `pq<m>` codes: `opq32+pq32` is FAISS's `OPQ32,PQ32`.
//!
//! A rotation `R` changes nothing for exact inner products and distances but decides how well
//! `m` independent codebooks fit the data. Training alternates, from `R = I`:
//!
//! 1. train `pq<m>` codebooks on the rotated sample `X R` (k-means, warm-started after the
//!    first round) and decode each row to `Y`;
//! 2. set `R` to the orthogonal matrix closest to mapping `X` onto `Y`: with
//!    `X^T Y = U S V^T` (SVD by `faer`), `R = U V^T` (orthogonal Procrustes).
//!
//! Each step lowers the quantization error `|X R - Y|^2`. The transform stores `W = R^T`
//! (`d x d`) and applies `y = W x`; the `pq<m>` after it is fitted on the rotated vectors as
//! usual.

use super::pq::{check_subspaces, codebooks, train_sample, PqQuantizer};
use super::{Quantizer, Tensor, TensorSource, Transform};
use crate::distance::Metric;
use crate::error::{invalid, Error, Result};
use crate::vectors::{Vectors, VectorsRef};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

/// Settings for [`OpqTransform`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpqConfig {
    /// Sub-spaces of the product quantizer the rotation is trained for.
    pub m: usize,
    /// Alternations of codebook training and rotation update.
    pub iters: usize,
    /// k-means iterations in the first round and in each later (warm-started) one.
    pub pq_iters: (usize, usize),
    /// At most this many training vectors are used (a seeded sample).
    pub max_train: usize,
    /// Assign codes score-aware in the loop, as the `pq<m>s<eta>` after it will.
    pub eta: Option<f32>,
}

impl OpqConfig {
    /// The defaults: 20 alternations, k-means 20 then 4 iterations, 65,536 vectors at most.
    pub fn new(m: usize) -> Self {
        OpqConfig {
            m,
            iters: 20,
            pq_iters: (20, 4),
            max_train: 65_536,
            eta: None,
        }
    }
}

/// A fitted OPQ rotation.
#[derive(Clone, Debug)]
pub struct OpqTransform {
    m: usize,
    dim: usize,
    /// `W = R^T`, `dim x dim`, row-major: `y_i = W[i] . x`.
    rotation: Vec<f32>,
}

impl OpqTransform {
    /// From a stored rotation (`dim * dim` floats, orthogonal).
    pub fn from_parts(dim: usize, m: usize, rotation: Vec<f32>) -> Result<Self> {
        check_subspaces("opq", m, dim)?;
        if rotation.len() != dim * dim {
            return invalid!(
                "opq{m}: a rotation of {} floats, dimension {dim} needs {}",
                rotation.len(),
                dim * dim
            );
        }
        Ok(OpqTransform { m, dim, rotation })
    }
    /// Its tensor: `rotation` (d x d).
    pub fn tensors(&self) -> Vec<Tensor<'_>> {
        vec![Tensor::f32(
            "rotation",
            vec![self.dim, self.dim],
            &self.rotation,
        )]
    }
    /// From the tensor of [`OpqTransform::tensors`], for `opq<m>` on `dim` inputs.
    pub fn from_tensors(src: &TensorSource<'_>, dim: usize, m: usize) -> Result<Self> {
        let rot = src.f32("rotation", dim * dim)?;
        Self::from_parts(dim, m, rot).map_err(|e| src.corrupt(e))
    }
    /// `W = R^T` (`dim x dim`, row-major).
    pub fn rotation(&self) -> &[f32] {
        &self.rotation
    }
    /// Sub-spaces it was trained for.
    pub fn m(&self) -> usize {
        self.m
    }
}

/// `W = R^T` for the orthogonal `R` nearest to mapping `x` onto `y` (both `n x d`): with
/// `x^T y = U S V^T`, `R = U V^T` and `W = V U^T`.
fn procrustes(x: VectorsRef<'_>, y: &[f32]) -> Result<Vec<f32>> {
    let d = x.dim();
    let mut xty = vec![0f32; d * d];
    crate::linalg::gemm_atb(x.as_slice(), y, x.len(), d, d, &mut xty);
    let a = faer::Mat::<f64>::from_fn(d, d, |i, j| xty[i * d + j] as f64);
    let svd = a
        .svd()
        .map_err(|e| Error::InvalidInput(format!("opq: SVD failed: {e:?}")))?;
    let (u, v) = (svd.U(), svd.V());
    let w = v * u.transpose();
    Ok((0..d * d).map(|k| w[(k / d, k % d)] as f32).collect())
}

impl Transform for OpqTransform {
    type Config = OpqConfig;

    fn fit(cfg: &OpqConfig, train: VectorsRef<'_>, seed: u64) -> Result<Self> {
        let d = train.dim();
        check_subspaces("opq", cfg.m, d)?;
        let x = train_sample(train, cfg.max_train, seed);
        // a seeded random rotation to start from (as FAISS): from the identity, data whose
        // variance sits in a few sub-spaces is a fixed point of the alternation
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0F0F);
        let g: Vec<f32> = (0..d * d)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        let gm = faer::Mat::<f64>::from_fn(d, d, |i, j| g[i * d + j] as f64);
        let q = gm.qr().compute_Q();
        let mut t = OpqTransform {
            m: cfg.m,
            dim: d,
            rotation: (0..d * d).map(|k| q[(k / d, k % d)] as f32).collect(),
        };
        let mut cents: Option<Vec<f32>> = None;
        let mut codes = vec![0u8; x.len() * cfg.m];
        for it in 0..cfg.iters {
            let xr = t.apply_batch(x.view());
            let iters = if it == 0 {
                cfg.pq_iters.0
            } else {
                cfg.pq_iters.1
            };
            let c = codebooks(xr.view(), cfg.m, iters, seed, cents.as_deref());
            let pq = PqQuantizer::from_parts(d, cfg.m, c, Metric::L2)?.with_eta(cfg.eta);
            pq.encode_batch(xr.view(), &mut codes);
            let mut y = vec![0f32; x.len() * d];
            y.par_chunks_mut(d)
                .zip(codes.par_chunks(cfg.m))
                .for_each(|(o, c)| pq.decode(c, o));
            t.rotation = procrustes(x.view(), &y)?;
            cents = Some(pq.centroids().to_vec());
        }
        Ok(t)
    }
    fn dim_in(&self) -> usize {
        self.dim
    }
    fn dim_out(&self) -> usize {
        self.dim
    }
    fn apply(&self, x: &[f32], out: &mut [f32]) {
        for (o, w) in out.iter_mut().zip(self.rotation.chunks_exact(self.dim)) {
            *o = crate::distance::dot(w, x);
        }
    }
    fn apply_batch(&self, x: VectorsRef<'_>) -> Vectors {
        let d = self.dim;
        let mut out = vec![0f32; x.len() * d];
        out.par_chunks_mut(d * 256)
            .zip(x.as_slice().par_chunks(d * 256))
            .for_each(|(o, xs)| {
                crate::linalg::gemm_abt(xs, &self.rotation, xs.len() / d, d, d, o);
            });
        Vectors::new(d, out).expect("invariant: d >= 1 divides the buffer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Encoder;

    #[test]
    fn rotation_is_orthogonal_and_batch_equals_single() {
        let base = crate::testutil::gaussian(500, 24, 1);
        let mut cfg = OpqConfig::new(4);
        cfg.iters = 3;
        cfg.pq_iters = (4, 2);
        let t = OpqTransform::fit(&cfg, base.view(), 0).unwrap();
        let w = t.rotation();
        for i in 0..24 {
            for j in 0..24 {
                let dot = crate::distance::dot(&w[i * 24..(i + 1) * 24], &w[j * 24..(j + 1) * 24]);
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-4, "W W^T [{i},{j}] = {dot}");
            }
        }
        let batch = t.apply_batch(base.view());
        let mut one = vec![0f32; 24];
        for (x, b) in base.view().rows().zip(batch.view().rows()) {
            t.apply(x, &mut one);
            for (a, b) in one.iter().zip(b) {
                assert!((a - b).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn opq_lowers_quantization_error_and_raises_recall_on_correlated_data() {
        // Sub-space 0 of each pair holds a strong shared direction across all of its
        // coordinates: without a rotation, some codebooks waste their centroids.
        let n = 1500;
        let d = 32;
        let g = crate::testutil::gaussian(n + 50, d, 4);
        let mut data = Vec::with_capacity((n + 50) * d);
        for r in g.view().rows() {
            let s: f32 = r[..4].iter().sum();
            data.extend(r.iter().enumerate().map(|(i, v)| {
                let scale = if i < d / 2 { 3.0 } else { 0.3 };
                scale * v + if i % 2 == 0 { s } else { -s }
            }));
        }
        let all = Vectors::new(d, data).unwrap();
        let (base, queries) = (all.view().slice(0, n), all.view().slice(n, n + 50));
        let err_and_recall = |spec: &str| {
            let enc = Encoder::fit(&spec.parse().unwrap(), base, Metric::L2, 1).unwrap();
            let codes = enc.encode_batch(base).unwrap();
            let t = enc.transform_batch(base);
            let crate::encode::AnyQuantizer::Pq(pq) = enc.quantizer() else {
                panic!("pq expected")
            };
            let mut dec = vec![0f32; d];
            let err: f32 = t
                .view()
                .rows()
                .zip(codes.chunks_exact(4))
                .map(|(x, c)| {
                    pq.decode(c, &mut dec);
                    crate::distance::l2sq(x, &dec)
                })
                .sum();
            let hits = crate::encode::scan::scan_encoded(
                &enc,
                &codes,
                queries,
                10,
                crate::topk::Allow::ALL,
            );
            let truth = crate::kernels::exact_search(base, queries, Metric::L2, 10);
            (err, crate::eval::recall_at_k(&hits, &truth, 10))
        };
        let (e_pq, r_pq) = err_and_recall("pq4");
        let (e_opq, r_opq) = err_and_recall("opq4+pq4");
        assert!(e_opq < 0.9 * e_pq, "error opq {e_opq} vs pq {e_pq}");
        assert!(r_opq > r_pq, "recall opq {r_opq} vs pq {r_pq}");
    }

    #[test]
    fn bad_shapes_are_refused() {
        let base = crate::testutil::gaussian(10, 4, 1);
        assert!(matches!(
            OpqTransform::fit(&OpqConfig::new(5), base.view(), 0),
            Err(Error::InvalidInput(_))
        ));
        assert!(OpqTransform::from_parts(4, 2, vec![0.0; 15]).is_err());
    }
}
