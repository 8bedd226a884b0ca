//! `asignfs`: the bits of `sign` scored against the float query as `asign` scores them, with
//! FAISS's fast-scan kernel: per 4 bits of a code, a table of the 16 partial sums
//! `sum_b (bit b ? -w_b : +w_b)` over those 4 query weights, quantized to `u8` with one scale
//! per query, looked up 32 codes at a time with `vpshufb` ([`super::pq4`]'s kernel and its
//! scalar twin). Codes are byte-identical to `sign`'s and `asign`'s; distances are `asign`'s up
//! to the 8-bit rounding of the tables (at most half a step per 4 bits), so a rerank should
//! follow. Up to 1,024 bits (256 tables of 4 bits; the sums must fit 16 bits).

use super::pq4::{
    laid_bytes, lay_out, pq4_distance, quantize_tables, scan_lists_batch_fast, scan_pq4,
};
use super::sign::{SignAsymQuantizer, SignConfig, SignQuantizer};
use super::{Pq4Query, Quantizer, Tensor, TensorSource};
use crate::distance::Metric;
use crate::error::{invalid, Result};
use crate::rows::ListsRef;
use crate::topk::{Allow, Hit};
use crate::vectors::VectorsRef;

/// The most bits an `asignfs` code may have.
pub const ASIGNFS_MAX_BITS: usize = 1024;

/// Settings for [`SignFastQuantizer`].
#[derive(Clone, Debug)]
pub struct SignFastConfig {
    /// How the float query is compared with the bits (as `asign`).
    pub metric: Metric,
}

/// Fitted `asignfs`: `asign`'s thresholds and weights, fast-scan tables.
#[derive(Clone, Debug)]
pub struct SignFastQuantizer {
    asym: SignAsymQuantizer,
}

impl SignFastQuantizer {
    /// From the thresholds of a sign quantizer and the metric.
    pub fn new(bits: SignQuantizer, metric: Metric) -> Result<Self> {
        let n = bits.thresholds().len();
        if n > ASIGNFS_MAX_BITS {
            return invalid!("asignfs: at most {ASIGNFS_MAX_BITS} bits, got {n}");
        }
        Ok(SignFastQuantizer {
            asym: SignAsymQuantizer::new(bits, metric),
        })
    }
    /// Its tensor: the `thresholds` of its bits (the same as `sign`'s).
    pub fn tensors(&self) -> Vec<Tensor<'_>> {
        self.asym.tensors()
    }
    /// From the tensor of [`SignFastQuantizer::tensors`], for `dim` inputs.
    pub fn from_tensors(src: &TensorSource<'_>, dim: usize, metric: Metric) -> Result<Self> {
        Self::new(SignQuantizer::from_tensors(src, dim)?, metric).map_err(|e| src.corrupt(e))
    }
    /// The float tables of one query: 16 entries per 4 bits of the code.
    fn float_tables(&self, query: &[f32]) -> Vec<f32> {
        let w = self.asym.weights(query);
        let nib = 2 * self.code_len();
        let mut t = vec![0f32; nib * 16];
        for (j, tj) in t.chunks_exact_mut(16).enumerate() {
            let ws: [f32; 4] = std::array::from_fn(|b| w.get(4 * j + b).copied().unwrap_or(0.0));
            tj[0] = ws.iter().sum::<f32>();
            for v in 1..16usize {
                tj[v] = tj[v & (v - 1)] - 2.0 * ws[v.trailing_zeros() as usize];
            }
        }
        t
    }
}

impl Quantizer for SignFastQuantizer {
    type Config = SignFastConfig;
    type Query = Pq4Query;

    fn fit(cfg: &SignFastConfig, train: VectorsRef<'_>, seed: u64) -> Result<Self> {
        let bits = SignQuantizer::fit(&SignConfig::default(), train, seed)?;
        SignFastQuantizer::new(bits, cfg.metric)
    }
    fn code_len(&self) -> usize {
        self.asym.code_len()
    }
    fn encode(&self, x: &[f32], out: &mut [u8]) {
        self.asym.encode(x, out);
    }
    fn prepare(&self, query: &[f32]) -> Pq4Query {
        quantize_tables(&self.float_tables(query), self.code_len())
    }
    #[inline(always)]
    fn distance(&self, q: &Pq4Query, code: &[u8]) -> f32 {
        pq4_distance(q, code)
    }
    fn scan(
        &self,
        queries: VectorsRef<'_>,
        codes: &[u8],
        k: usize,
        allow: Allow<'_>,
    ) -> Vec<Vec<Hit>> {
        let qs = self.prepare_batch(queries);
        scan_pq4(&qs, codes, self.code_len(), k, crate::simd::avx2(), allow)
    }
    fn laid_list_bytes(&self, n: usize) -> usize {
        laid_bytes(n, self.code_len())
    }
    fn lay_out_list(&self, codes: &[u8], out: &mut [u8]) {
        lay_out(codes, self.code_len(), out)
    }
    fn scan_lists_batch(
        &self,
        tq: VectorsRef<'_>,
        codes: &[u8],
        lists: ListsRef<'_>,
        probes: &[u32],
        np: usize,
        adds: &[f32],
        keep: usize,
        allow: Allow<'_>,
    ) -> Vec<Vec<Hit>> {
        scan_lists_batch_fast(self, tq, codes, lists, probes, np, adds, keep, allow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_are_asign_s_up_to_the_table_rounding_and_scans_agree() {
        let base = crate::testutil::gaussian(3000, 100, 1);
        let queries = crate::testutil::gaussian(11, 100, 2);
        for metric in [Metric::Ip, Metric::L2] {
            let fast = SignFastQuantizer::fit(&SignFastConfig { metric }, base.view(), 0).unwrap();
            let exact =
                SignAsymQuantizer::fit(&super::super::SignAsymConfig { metric }, base.view(), 0)
                    .unwrap();
            let cl = fast.code_len();
            let mut codes = vec![0u8; 3000 * cl];
            fast.encode_batch(base.view(), &mut codes);
            let mut codes2 = vec![0u8; 3000 * cl];
            exact.encode_batch(base.view(), &mut codes2);
            assert_eq!(codes, codes2, "the same bits as asign");
            for y in queries.view().rows() {
                let (p, e) = (fast.prepare(y), exact.prepare(y));
                for c in codes.chunks_exact(cl).take(200) {
                    let (a, b) = (fast.distance(&p, c), exact.distance(&e, c));
                    // half a step per table (16 tables of 4 bits per 8 bytes), plus f32 rounding
                    let tol = p.scale() * (cl as f32 + 1.0) + 1e-3 * b.abs().max(1.0);
                    assert!((a - b).abs() <= tol, "{metric}: {a} vs {b} (tol {tol})");
                }
            }
            // the kernel (AVX2 or scalar) equals one distance per code
            let prepared = fast.prepare_batch(queries.view());
            assert_eq!(
                fast.scan(queries.view(), &codes, 30, crate::topk::Allow::ALL),
                crate::encode::scan::scan_codes(
                    &fast,
                    &prepared,
                    &codes,
                    30,
                    crate::topk::Allow::ALL
                )
            );
        }
    }

    #[test]
    fn more_than_1024_bits_is_refused() {
        let e = SignFastQuantizer::new(SignQuantizer::from_thresholds(vec![0.0; 1025]), Metric::Ip)
            .unwrap_err();
        assert!(e.to_string().contains("at most 1024 bits"), "{e}");
    }
}
