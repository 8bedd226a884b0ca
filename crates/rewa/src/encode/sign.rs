//! `sign`: binary REWA codes, one bit per input dimension, compared by Hamming distance.
//!
//! Bit `i` is set when `x[i]` exceeds the training mean of dimension `i`. Thresholding at the
//! mean rather than at zero matters for real embeddings, whose coordinates are not centred
//! (sentence embeddings share a common direction; SIFT values are all positive): at zero most
//! bits would be the same for every vector. For centred data the two are the same.
//! Bits are packed little-endian into u64 words, so a code is `ceil(dim / 64) * 8` bytes;
//! padding bits are always 0 and do not affect distances.

use super::Quantizer;
use crate::error::Result;
use crate::vectors::VectorsRef;

/// Settings for [`SignQuantizer`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignConfig {
    /// Threshold each dimension at its training mean (`true`) or at zero.
    pub center: bool,
}

impl Default for SignConfig {
    fn default() -> Self {
        SignConfig { center: true }
    }
}

/// Fitted sign quantizer: one threshold per dimension.
#[derive(Clone, Debug)]
pub struct SignQuantizer {
    pub(crate) thresholds: Vec<f32>,
}

impl SignQuantizer {
    /// A quantizer with the given per-dimension thresholds.
    pub fn from_thresholds(thresholds: Vec<f32>) -> Self {
        SignQuantizer { thresholds }
    }
    /// The per-dimension thresholds.
    pub fn thresholds(&self) -> &[f32] {
        &self.thresholds
    }
}

/// Packs `x[i] > t[i]` into little-endian u64 words in `out`.
pub(crate) fn pack_bits(x: &[f32], t: &[f32], out: &mut [u8]) {
    out.fill(0);
    for (w, (xs, ts)) in out.chunks_exact_mut(8).zip(x.chunks(64).zip(t.chunks(64))) {
        let mut word = 0u64;
        for (b, (v, th)) in xs.iter().zip(ts).enumerate() {
            word |= ((v > th) as u64) << b;
        }
        w.copy_from_slice(&word.to_le_bytes());
    }
}

impl Quantizer for SignQuantizer {
    type Config = SignConfig;
    type Query = Vec<u8>;

    fn fit(cfg: &SignConfig, train: VectorsRef<'_>, _seed: u64) -> Result<Self> {
        let d = train.dim();
        let mut mean = vec![0f64; d];
        if cfg.center {
            for r in train.rows() {
                for (m, v) in mean.iter_mut().zip(r) {
                    *m += *v as f64;
                }
            }
            mean.iter_mut().for_each(|m| *m /= train.len() as f64);
        }
        Ok(SignQuantizer {
            thresholds: mean.into_iter().map(|m| m as f32).collect(),
        })
    }
    fn code_len(&self) -> usize {
        self.thresholds.len().div_ceil(64) * 8
    }
    fn encode(&self, x: &[f32], out: &mut [u8]) {
        pack_bits(x, &self.thresholds, out);
    }
    fn prepare(&self, query: &[f32]) -> Vec<u8> {
        let mut q = vec![0u8; self.code_len()];
        self.encode(query, &mut q);
        q
    }
    #[inline]
    fn distance(&self, q: &Vec<u8>, code: &[u8]) -> f32 {
        crate::distance::hamming(q, code) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Vectors;

    #[test]
    fn bit_layout_is_little_endian_words() {
        let q = SignQuantizer::from_thresholds(vec![0.0; 70]);
        let mut x = vec![-1.0f32; 70];
        x[0] = 1.0;
        x[9] = 1.0;
        x[64] = 1.0;
        let mut code = vec![0u8; q.code_len()];
        q.encode(&x, &mut code);
        assert_eq!(
            code,
            [0x01, 0x02, 0, 0, 0, 0, 0, 0, 0x01, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn hamming_counts_differing_signs() {
        // On +-1 data, Hamming distance = number of differing signs, so it orders exactly as L2.
        let data = Vectors::new(3, vec![1., 1., 1., -1., -1., -1., 1., -1., 1.]).unwrap();
        let q = SignQuantizer::fit(&SignConfig { center: false }, data.view(), 0).unwrap();
        let p = q.prepare(&[1., 1., 1.]);
        let d: Vec<f32> = (0..3)
            .map(|i| {
                let mut c = vec![0u8; 8];
                q.encode(data.row(i), &mut c);
                q.distance(&p, &c)
            })
            .collect();
        assert_eq!(d, [0.0, 3.0, 1.0]);
    }
}
