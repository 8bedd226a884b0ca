//! `hadamard<m>`: the continuous REWA encoder, a subsampled randomized Hadamard transform.
//!
//! For input dimension `d`, let `n` be the next power of two. One block computes
//! `z = H D pad(x) / sqrt(n)`, with `D` a diagonal of random +-1 signs and `H` the n x n
//! Walsh-Hadamard matrix (fast transform, O(n log n)); `z` is an orthogonal image of `x`, so
//! `|z| = |x|`. When `m > n`, `ceil(m / n)` blocks with independent signs are concatenated. Of
//! the `b * n` outputs, `m` coordinates are kept (a random subset, stored sorted), scaled by
//! `sqrt(n / m)` so that norms, inner products and distances are preserved in expectation.
//!
//! The realized signs and kept coordinates are stored (not re-derived from the seed), so a
//! saved transform stays the same whatever happens to the random number generator.

use super::{Tensor, TensorSource, Transform};
use crate::error::{invalid, Result};
use crate::vectors::VectorsRef;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Settings for [`HadamardTransform`].
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HadamardConfig {
    /// Output dimension.
    pub m: usize,
}

/// A fitted subsampled randomized Hadamard transform.
#[derive(Clone, Debug)]
pub struct HadamardTransform {
    pub(crate) dim_in: usize,
    /// `blocks * n` random signs (+1.0 / -1.0).
    pub(crate) signs: Vec<f32>,
    /// `m` kept output coordinates, sorted, each `< blocks * n`.
    pub(crate) keep: Vec<u32>,
}

impl HadamardTransform {
    /// A transform from realized signs and kept coordinates (as stored on disk).
    pub fn from_parts(dim_in: usize, signs: Vec<f32>, keep: Vec<u32>) -> Result<Self> {
        let n = dim_in.next_power_of_two();
        if signs.is_empty() || !signs.len().is_multiple_of(n) {
            return invalid!(
                "hadamard: {} signs is not a whole number of blocks of {n}",
                signs.len()
            );
        }
        if keep.iter().any(|&k| k as usize >= signs.len()) || keep.is_empty() {
            return invalid!("hadamard: kept coordinates out of range");
        }
        Ok(HadamardTransform {
            dim_in,
            signs,
            keep,
        })
    }
    /// Its tensors: `signs` (f32, blocks x padded dimension) and `keep` (u32, m).
    pub fn tensors(&self) -> Vec<Tensor<'_>> {
        vec![
            Tensor::f32("signs", vec![self.signs.len()], &self.signs),
            Tensor::u32("keep", vec![self.keep.len()], &self.keep),
        ]
    }
    /// From the tensors of [`HadamardTransform::tensors`], for `hadamard<m>` on `dim` inputs.
    pub fn from_tensors(src: &TensorSource<'_>, dim: usize, m: usize) -> Result<Self> {
        let n = dim.next_power_of_two();
        let signs = src.f32("signs", m.div_ceil(n) * n)?;
        let keep = src.u32("keep", m)?;
        Self::from_parts(dim, signs, keep).map_err(|e| src.corrupt(e))
    }
    /// The realized signs.
    pub fn signs(&self) -> &[f32] {
        &self.signs
    }
    /// The kept coordinates.
    pub fn keep(&self) -> &[u32] {
        &self.keep
    }
    fn n(&self) -> usize {
        self.dim_in.next_power_of_two()
    }
}

/// In-place fast Walsh-Hadamard transform (unnormalized). `x.len()` must be a power of two.
pub fn fwht(x: &mut [f32]) {
    let n = x.len();
    debug_assert!(n.is_power_of_two());
    let mut h = 1;
    while h < n {
        for block in x.chunks_exact_mut(2 * h) {
            let (a, b) = block.split_at_mut(h);
            for (u, v) in a.iter_mut().zip(b.iter_mut()) {
                let (s, t) = (*u + *v, *u - *v);
                *u = s;
                *v = t;
            }
        }
        h *= 2;
    }
}

/// Reference twin of [`fwht`]: multiplies by `H[i][j] = (-1)^popcount(i & j)` in O(n^2).
pub fn fwht_reference(x: &[f32]) -> Vec<f32> {
    let n = x.len();
    (0..n)
        .map(|i| {
            (0..n)
                .map(|j| {
                    if (i & j).count_ones() % 2 == 0 {
                        x[j] as f64
                    } else {
                        -x[j] as f64
                    }
                })
                .sum::<f64>() as f32
        })
        .collect()
}

impl Transform for HadamardTransform {
    type Config = HadamardConfig;

    fn fit(cfg: &HadamardConfig, train: VectorsRef<'_>, seed: u64) -> Result<Self> {
        if cfg.m == 0 {
            return invalid!("hadamard: output dimension must be at least 1");
        }
        let d = train.dim();
        let n = d.next_power_of_two();
        let blocks = cfg.m.div_ceil(n);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let signs: Vec<f32> = (0..blocks * n)
            .map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 })
            .collect();
        let mut keep: Vec<u32> = if cfg.m == blocks * n {
            (0..cfg.m as u32).collect()
        } else {
            sample(&mut rng, blocks * n, cfg.m)
                .into_iter()
                .map(|i| i as u32)
                .collect()
        };
        keep.sort_unstable();
        Ok(HadamardTransform {
            dim_in: d,
            signs,
            keep,
        })
    }
    fn dim_in(&self) -> usize {
        self.dim_in
    }
    fn dim_out(&self) -> usize {
        self.keep.len()
    }
    fn apply(&self, x: &[f32], out: &mut [f32]) {
        let n = self.n();
        let blocks = self.signs.len() / n;
        let mut buf = vec![0f32; blocks * n];
        for (b, chunk) in buf.chunks_exact_mut(n).enumerate() {
            let s = &self.signs[b * n..(b + 1) * n];
            for i in 0..self.dim_in {
                chunk[i] = x[i] * s[i];
            }
            fwht(chunk);
        }
        // 1/sqrt(n) makes each block orthogonal; sqrt(n/m) restores the norm after subsampling.
        let scale = 1.0 / (self.keep.len() as f32).sqrt();
        for (o, &k) in out.iter_mut().zip(&self.keep) {
            *o = buf[k as usize] * scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::gaussian;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn fwht_matches_reference(log in 0u32..=10, seed in any::<u64>()) {
            let n = 1usize << log;
            let x = gaussian(1, n, seed).into_vec();
            let mut fast = x.clone();
            fwht(&mut fast);
            let slow = fwht_reference(&x);
            for (a, b) in fast.iter().zip(&slow) {
                prop_assert!((a - b).abs() <= 1e-3 * (1.0 + b.abs()));
            }
        }
    }

    #[test]
    fn full_transform_preserves_norms_and_dots_over_odd_dims() {
        for d in [1, 7, 8, 9, 63, 64, 65, 127, 768] {
            let data = gaussian(3, d, d as u64);
            let n = d.next_power_of_two();
            let t = HadamardTransform::fit(&HadamardConfig { m: n }, data.view(), 1).unwrap();
            let y = t.apply_batch(data.view());
            let dot = crate::distance::dot;
            for (i, j) in [(0, 0), (0, 1), (1, 2)] {
                let (a, b) = (dot(data.row(i), data.row(j)), dot(y.row(i), y.row(j)));
                assert!((a - b).abs() < 1e-3 * (1.0 + a.abs()), "d={d}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn subsampled_and_multiblock_shapes() {
        let data = gaussian(10, 100, 5);
        for m in [16, 128, 300] {
            let t = HadamardTransform::fit(&HadamardConfig { m }, data.view(), 9).unwrap();
            assert_eq!(t.dim_out(), m);
            assert_eq!(t.signs.len(), m.div_ceil(128) * 128);
            let t2 = HadamardTransform::fit(&HadamardConfig { m }, data.view(), 9).unwrap();
            assert_eq!(t.signs, t2.signs, "same seed, same signs");
            assert_eq!(t.keep, t2.keep);
        }
    }
}
