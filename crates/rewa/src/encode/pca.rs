//! `pca<m>`: projection onto the top `m` principal components of the training vectors.
//!
//! The components `W` (m x d, orthonormal rows) are the top eigenvectors of the training
//! covariance (eigendecomposition by `faer`). `apply` computes `y = W x` *without* subtracting
//! the mean:
//!
//! * squared L2 is unaffected by a shared shift (`|W x - W q| = |W (x - mu) - W (q - mu)|`);
//! * inner product: `Wx . Wq = x^T P q` with `P` the projector onto the principal subspace, the
//!   best rank-m approximation of `x . q`. Centering would instead rank by
//!   `(x - mu)^T P (q - mu)`, which differs from `x^T P q` by the term `-x^T P mu`, a bias
//!   that depends on `x` and reorders results.
//!
//! Quantizers after PCA centre or range-fit on their own (`sign` thresholds at the mean,
//! `int8` fits per-dimension ranges), so nothing is lost by leaving the mean in.

use super::{Tensor, TensorSource, Transform};
use crate::error::{invalid, Error, Result};
use crate::vectors::{Vectors, VectorsRef};
use rayon::prelude::*;

/// Settings for [`PcaTransform`].
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcaConfig {
    /// Number of components kept.
    pub m: usize,
}

/// A fitted PCA projection.
#[derive(Clone, Debug)]
pub struct PcaTransform {
    pub(crate) dim_in: usize,
    /// Training mean (kept for inspection and persistence).
    pub(crate) mean: Vec<f32>,
    /// `m x dim_in`, row-major, rows are unit-norm components by decreasing variance.
    pub(crate) components: Vec<f32>,
    /// Variance along each kept component.
    pub(crate) variances: Vec<f32>,
}

impl PcaTransform {
    /// A transform from fitted parts (as stored on disk).
    pub fn from_parts(
        dim_in: usize,
        mean: Vec<f32>,
        components: Vec<f32>,
        variances: Vec<f32>,
    ) -> Result<Self> {
        if mean.len() != dim_in || components.is_empty() || !components.len().is_multiple_of(dim_in)
        {
            return Err(Error::DimMismatch {
                expected: dim_in,
                got: mean.len(),
            });
        }
        Ok(PcaTransform {
            dim_in,
            mean,
            components,
            variances,
        })
    }
    /// Its tensors: `mean` (d), `components` (m x d), `variances` (m).
    pub fn tensors(&self) -> Vec<Tensor<'_>> {
        let m = self.variances.len();
        vec![
            Tensor::f32("mean", vec![self.mean.len()], &self.mean),
            Tensor::f32("components", vec![m, self.dim_in], &self.components),
            Tensor::f32("variances", vec![m], &self.variances),
        ]
    }
    /// From the tensors of [`PcaTransform::tensors`], for `pca<m>` on `dim` inputs.
    pub fn from_tensors(src: &TensorSource<'_>, dim: usize, m: usize) -> Result<Self> {
        let mean = src.f32("mean", dim)?;
        let comp = src.f32("components", m * dim)?;
        let var = src.f32("variances", m)?;
        Self::from_parts(dim, mean, comp, var).map_err(|e| src.corrupt(e))
    }
    /// Training mean.
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }
    /// Components, `m x dim_in` row-major.
    pub fn components(&self) -> &[f32] {
        &self.components
    }
    /// Variance along each component.
    pub fn variances(&self) -> &[f32] {
        &self.variances
    }
}

impl Transform for PcaTransform {
    type Config = PcaConfig;

    fn fit(cfg: &PcaConfig, train: VectorsRef<'_>, _seed: u64) -> Result<Self> {
        let (n, d, m) = (train.len(), train.dim(), cfg.m);
        if m == 0 || m > d {
            return invalid!(
                "pca{m}: the number of components must be between 1 and the input dimension {d}"
            );
        }
        if n < 2 {
            return invalid!("pca{m}: needs at least 2 training vectors, got {n}");
        }
        let mut mean = vec![0f64; d];
        for r in train.rows() {
            for (a, v) in mean.iter_mut().zip(r) {
                *a += *v as f64;
            }
        }
        mean.iter_mut().for_each(|a| *a /= n as f64);
        let mean_f: Vec<f32> = mean.iter().map(|&v| v as f32).collect();

        // Covariance by blocks: each block is centred in f32, multiplied by GEMM, summed in f64.
        const BLOCK: usize = 4096;
        let cov = train
            .as_slice()
            .par_chunks(BLOCK * d)
            .map(|chunk| {
                let rows = chunk.len() / d;
                let mut c: Vec<f32> = chunk.to_vec();
                for r in c.chunks_exact_mut(d) {
                    for (v, mu) in r.iter_mut().zip(&mean_f) {
                        *v -= mu;
                    }
                }
                let mut out = vec![0f32; d * d];
                // out (d x d) = c^T (d x rows) * c (rows x d)
                crate::linalg::gemm_atb(&c, &c, rows, d, d, &mut out);
                out.into_iter().map(f64::from).collect::<Vec<f64>>()
            })
            .reduce(
                || vec![0f64; d * d],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        let cov = faer::Mat::<f64>::from_fn(d, d, |i, j| cov[i * d + j] / (n - 1) as f64);
        let evd = cov.self_adjoint_eigen(faer::Side::Lower).map_err(|e| {
            Error::InvalidInput(format!("pca{m}: eigendecomposition failed: {e:?}"))
        })?;
        let (u, s) = (evd.U(), evd.S().column_vector());
        let mut order: Vec<usize> = (0..d).collect();
        order.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
        let mut components = Vec::with_capacity(m * d);
        let mut variances = Vec::with_capacity(m);
        for &j in &order[..m] {
            let col: Vec<f64> = (0..d).map(|i| u[(i, j)]).collect();
            // Fix the sign (largest-magnitude entry positive) so fits are reproducible.
            let big = col
                .iter()
                .copied()
                .fold(0f64, |a, b| if b.abs() > a.abs() { b } else { a });
            let sgn = if big < 0.0 { -1.0 } else { 1.0 };
            components.extend(col.iter().map(|v| (v * sgn) as f32));
            variances.push(s[j].max(0.0) as f32);
        }
        Ok(PcaTransform {
            dim_in: d,
            mean: mean_f,
            components,
            variances,
        })
    }
    fn dim_in(&self) -> usize {
        self.dim_in
    }
    fn dim_out(&self) -> usize {
        self.variances.len()
    }
    fn apply(&self, x: &[f32], out: &mut [f32]) {
        for (o, w) in out
            .iter_mut()
            .zip(self.components.chunks_exact(self.dim_in))
        {
            *o = crate::distance::dot(w, x);
        }
    }
    fn apply_batch(&self, x: VectorsRef<'_>) -> Vectors {
        let (d, m) = (self.dim_in, self.dim_out());
        let mut out = vec![0f32; x.len() * m];
        const BLOCK: usize = 1024;
        out.par_chunks_mut(BLOCK * m)
            .zip(x.as_slice().par_chunks(BLOCK * d))
            .for_each(|(o, xs)| {
                let rows = xs.len() / d;
                // o (rows x m) = xs (rows x d) * W^T (d x m)
                crate::linalg::gemm_abt(xs, &self.components, rows, d, m, o);
            });
        Vectors::new(m, out).expect("invariant: m >= 1 divides the buffer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::gaussian;

    #[test]
    fn recovers_dominant_axis_and_batch_matches_single() {
        // Data stretched along axis 2: the first component must be +-e2.
        let mut data = gaussian(500, 5, 1);
        for r in data.as_mut_slice().chunks_exact_mut(5) {
            r[2] *= 10.0;
        }
        let p = PcaTransform::fit(&PcaConfig { m: 2 }, data.view(), 0).unwrap();
        assert!(p.components[2].abs() > 0.99, "{:?}", &p.components[..5]);
        assert!(
            p.variances[0] > 50.0 && p.variances[1] < 2.0,
            "{:?}",
            p.variances
        );
        let batch = p.apply_batch(data.view());
        let mut one = vec![0f32; 2];
        for i in [0, 17, 499] {
            p.apply(data.row(i), &mut one);
            for (a, b) in one.iter().zip(batch.row(i)) {
                assert!((a - b).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn odd_dims_and_bad_m() {
        for d in [1, 7, 8, 9, 63, 64, 65, 127] {
            let data = gaussian(300, d, d as u64);
            let p = PcaTransform::fit(&PcaConfig { m: d.min(4) }, data.view(), 0).unwrap();
            assert_eq!(p.dim_out(), d.min(4));
            // Components are orthonormal.
            let w = &p.components;
            for a in 0..p.dim_out() {
                for b in 0..p.dim_out() {
                    let g = crate::distance::dot(&w[a * d..(a + 1) * d], &w[b * d..(b + 1) * d]);
                    assert!((g - if a == b { 1.0 } else { 0.0 }).abs() < 1e-3, "d={d}");
                }
            }
        }
        let data = gaussian(10, 4, 0);
        assert!(matches!(
            PcaTransform::fit(&PcaConfig { m: 5 }, data.view(), 0),
            Err(Error::InvalidInput(_))
        ));
    }
}
