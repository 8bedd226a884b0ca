//! `int8`: 8-bit scalar codes with per-dimension ranges, scored asymmetrically (the query
//! stays float).
//!
//! Each dimension `i` gets `lo[i]` and `scale[i] = (hi[i] - lo[i]) / 255` from the training
//! vectors; a value is stored as `c = round((x - lo) / scale)` clamped to 0..=255 and decoded
//! as `x^ = lo + scale * c`. Against a float query `q`:
//!
//! * inner product: `q . x^ = sum q_i lo_i + sum (q_i scale_i) c_i`, so `prepare` computes the
//!   constant `sum q_i lo_i` and the weights `w_i = q_i scale_i`; a distance is one
//!   multiply-add per byte ([`crate::distance::dot_u8`]).
//! * squared L2: `|q - x^|^2 = sum ((q_i - lo_i) - scale_i c_i)^2`, so `prepare` subtracts `lo`.
//!
//! The error per coordinate is at most `scale_i / 2` for values inside the fitted range.

use super::{Quantizer, Tensor, TensorSource};
use crate::distance::{dot_u8, l2sq_u8, Metric};
use crate::error::Result;
use crate::vectors::VectorsRef;

/// Settings for [`Int8Quantizer`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Int8Config {
    /// How codes are compared.
    pub metric: Metric,
    /// Share of training values clipped at each end of every dimension's range (0 = min/max).
    pub clip: f32,
}

impl Default for Int8Config {
    fn default() -> Self {
        Int8Config {
            metric: Metric::Cosine,
            clip: 0.0,
        }
    }
}

/// Fitted 8-bit quantizer.
#[derive(Clone, Debug)]
pub struct Int8Quantizer {
    pub(crate) lo: Vec<f32>,
    pub(crate) scale: Vec<f32>,
    pub(crate) metric: Metric,
}

/// A query prepared for [`Int8Quantizer`].
#[derive(Clone, Debug)]
pub enum Int8Query {
    /// Inner product: distance = -(c + sum w_i code_i).
    Ip {
        /// Per-byte weights `q_i * scale_i`.
        w: Vec<f32>,
        /// `sum q_i * lo_i`.
        c: f32,
    },
    /// Squared L2: distance = sum (a_i - scale_i code_i)^2.
    L2 {
        /// `q_i - lo_i`.
        a: Vec<f32>,
    },
}

impl Int8Quantizer {
    /// A quantizer from fitted ranges.
    pub fn from_parts(lo: Vec<f32>, scale: Vec<f32>, metric: Metric) -> Self {
        Int8Quantizer { lo, scale, metric }
    }
    /// Its tensors: `lo` and `scale` (d each).
    pub fn tensors(&self) -> Vec<Tensor<'_>> {
        vec![
            Tensor::f32("lo", vec![self.lo.len()], &self.lo),
            Tensor::f32("scale", vec![self.scale.len()], &self.scale),
        ]
    }
    /// From the tensors of [`Int8Quantizer::tensors`], for `dim` inputs.
    pub fn from_tensors(src: &TensorSource<'_>, dim: usize, metric: Metric) -> Result<Self> {
        Ok(Self::from_parts(
            src.f32("lo", dim)?,
            src.f32("scale", dim)?,
            metric,
        ))
    }
    /// Per-dimension lower bounds.
    pub fn lo(&self) -> &[f32] {
        &self.lo
    }
    /// Per-dimension step sizes.
    pub fn scale(&self) -> &[f32] {
        &self.scale
    }
    /// The metric codes are compared with.
    pub fn metric(&self) -> Metric {
        self.metric
    }
    /// Decodes one code.
    pub fn decode(&self, code: &[u8], out: &mut [f32]) {
        for i in 0..out.len() {
            out[i] = self.lo[i] + self.scale[i] * code[i] as f32;
        }
    }
}

impl Quantizer for Int8Quantizer {
    type Config = Int8Config;
    type Query = Int8Query;

    fn fit(cfg: &Int8Config, train: VectorsRef<'_>, _seed: u64) -> Result<Self> {
        let d = train.dim();
        let n = train.len();
        let (mut lo, mut hi) = (vec![f32::INFINITY; d], vec![f32::NEG_INFINITY; d]);
        if cfg.clip > 0.0 && n > 2 {
            let cut = ((cfg.clip as f64 * n as f64) as usize).min((n - 1) / 2);
            let mut col = vec![0f32; n];
            for i in 0..d {
                for (c, r) in col.iter_mut().zip(train.rows()) {
                    *c = r[i];
                }
                col.sort_unstable_by(f32::total_cmp);
                lo[i] = col[cut];
                hi[i] = col[n - 1 - cut];
            }
        } else {
            for r in train.rows() {
                for i in 0..d {
                    lo[i] = lo[i].min(r[i]);
                    hi[i] = hi[i].max(r[i]);
                }
            }
        }
        let scale = lo
            .iter()
            .zip(&hi)
            .map(|(l, h)| ((h - l) / 255.0).max(f32::MIN_POSITIVE))
            .collect();
        Ok(Int8Quantizer {
            lo,
            scale,
            metric: cfg.metric,
        })
    }
    fn code_len(&self) -> usize {
        self.lo.len()
    }
    fn encode(&self, x: &[f32], out: &mut [u8]) {
        for i in 0..out.len() {
            out[i] = ((x[i] - self.lo[i]) / self.scale[i])
                .round()
                .clamp(0.0, 255.0) as u8;
        }
    }
    fn prepare(&self, q: &[f32]) -> Int8Query {
        if self.metric.is_similarity() {
            let w = q.iter().zip(&self.scale).map(|(a, s)| a * s).collect();
            let c = crate::distance::dot(q, &self.lo);
            Int8Query::Ip { w, c }
        } else {
            Int8Query::L2 {
                a: q.iter().zip(&self.lo).map(|(a, l)| a - l).collect(),
            }
        }
    }
    #[inline(always)]
    fn distance(&self, q: &Int8Query, code: &[u8]) -> f32 {
        match q {
            Int8Query::Ip { w, c } => -(c + dot_u8(w, code)),
            Int8Query::L2 { a } => l2sq_u8(a, &self.scale, code),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::gaussian;

    #[test]
    fn distance_error_within_bound() {
        // |q.x - q.x^| <= sum |q_i| scale_i / 2 for values inside the fitted range.
        for dim in [1, 7, 8, 9, 63, 64, 65, 127, 768] {
            let data = gaussian(200, dim, 3);
            for metric in [Metric::Ip, Metric::L2] {
                let q =
                    Int8Quantizer::fit(&Int8Config { metric, clip: 0.0 }, data.view(), 0).unwrap();
                let query = data.row(0);
                let p = q.prepare(query);
                let mut code = vec![0u8; dim];
                let mut dec = vec![0f32; dim];
                for r in data.view().rows().skip(1).take(50) {
                    q.encode(r, &mut code);
                    q.decode(&code, &mut dec);
                    let want = metric.distance(query, &dec);
                    let got = q.distance(&p, &code);
                    assert!(
                        (want - got).abs() <= 1e-3 * (1.0 + want.abs()),
                        "dim {dim} {metric}: {want} vs {got}"
                    );
                    let bound: f32 = query
                        .iter()
                        .zip(&q.scale)
                        .map(|(a, s)| a.abs() * s / 2.0)
                        .sum();
                    if metric == Metric::Ip {
                        let exact = metric.distance(query, r);
                        assert!(
                            (exact - got).abs() <= bound * 1.001 + 1e-4,
                            "dim {dim}: {exact} vs {got}, bound {bound}"
                        );
                    }
                }
            }
        }
    }
}
