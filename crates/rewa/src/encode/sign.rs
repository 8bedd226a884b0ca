//! `sign`: binary REWA codes, one bit per input dimension, compared by Hamming distance.
//!
//! Bit `i` is set when `x[i]` exceeds the training mean of dimension `i`. Thresholding at the
//! mean rather than at zero matters for real embeddings, whose coordinates are not centred
//! (sentence embeddings share a common direction; SIFT values are all positive): at zero most
//! bits would be the same for every vector. For centred data the two are the same.
//! Bits are packed little-endian into u64 words, so a code is `ceil(dim / 64) * 8` bytes;
//! padding bits are always 0 and do not affect distances.
//!
//! `asign` ([`SignAsymQuantizer`]) stores the same bits but scores them against the float
//! query (binary rescoring): a code stands for the vector `t + s`, `s[i] = +-1` by bit `i` and
//! `t` the thresholds, so for inner product the score is `w . s` with `w = q` (the `q . t`
//! term is the same for every code) and for L2 `w = q - t`. The query is turned into one
//! table of 256 partial sums per code byte, so a distance is `code_len` table lookups.

use super::{Quantizer, Tensor, TensorSource};
use crate::distance::Metric;
use crate::error::Result;
use crate::kernels::{hamming_run, layout_words};
use crate::rows::Run;
use crate::topk::{Allow, Hit, TopK};
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
    /// Its tensor: `thresholds` (d).
    pub fn tensors(&self) -> Vec<Tensor<'_>> {
        vec![Tensor::f32(
            "thresholds",
            vec![self.thresholds.len()],
            &self.thresholds,
        )]
    }
    /// From the tensor of [`SignQuantizer::tensors`], for `dim` inputs.
    pub fn from_tensors(src: &TensorSource<'_>, dim: usize) -> Result<Self> {
        Ok(Self::from_thresholds(src.f32("thresholds", dim)?))
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
    #[inline(always)]
    fn distance(&self, q: &Vec<u8>, code: &[u8]) -> f32 {
        crate::distance::hamming(q, code) as f32
    }
    /// Hamming scans with the popcount loop unrolled for the code length.
    fn scan(
        &self,
        queries: VectorsRef<'_>,
        codes: &[u8],
        k: usize,
        allow: Allow<'_>,
    ) -> Vec<Vec<Hit>> {
        let qs: Vec<Vec<u8>> = queries.rows().map(|r| self.prepare(r)).collect();
        crate::encode::scan::scan_sign(&qs, codes, self.code_len(), k, allow)
    }
    /// Each list word-major in groups of 8 codes (`kernels::layout_words`), for the list
    /// kernel's 8 codes per step; none for one-word codes, where one scalar `popcnt` per code
    /// measured faster (GloVe, 64-bit codes, keep 300: the laid-out kernel took 1.12x the
    /// time of one distance per code).
    fn laid_list_bytes(&self, n: usize) -> usize {
        if self.code_len() < 16 {
            return 0;
        }
        n.div_ceil(8) * 8 * self.code_len()
    }
    fn lay_out_list(&self, codes: &[u8], out: &mut [u8]) {
        layout_words(codes, self.code_len() / 8, out)
    }
    /// The Hamming list kernel (`kernels::hamming_run`) over the laid-out list.
    fn scan_run(&self, p: &Vec<u8>, run: Run<'_>, add: f32, top: &mut TopK) {
        match run.laid {
            Some(laid) => hamming_run(p, laid, run.ids, add, top, crate::simd::avx2()),
            None => crate::encode::scan::scan_run_codes(self, p, run, add, top),
        }
    }
}

/// Settings for [`SignAsymQuantizer`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignAsymConfig {
    /// How the float query is compared with the bits (inner product for cosine and ip).
    pub metric: Metric,
}

/// The bits of [`SignQuantizer`], scored against the float query.
#[derive(Clone, Debug)]
pub struct SignAsymQuantizer {
    bits: SignQuantizer,
    metric: Metric,
}

impl SignAsymQuantizer {
    /// From the thresholds of a sign quantizer and the metric.
    pub fn new(bits: SignQuantizer, metric: Metric) -> Self {
        SignAsymQuantizer { bits, metric }
    }
    /// The per-dimension thresholds.
    pub fn thresholds(&self) -> &[f32] {
        self.bits.thresholds()
    }
    /// Its tensor: the `thresholds` of its bits (the same as `sign`'s).
    pub fn tensors(&self) -> Vec<Tensor<'_>> {
        self.bits.tensors()
    }
    /// From the tensor of [`SignAsymQuantizer::tensors`], for `dim` inputs.
    pub fn from_tensors(src: &TensorSource<'_>, dim: usize, metric: Metric) -> Result<Self> {
        Ok(Self::new(SignQuantizer::from_tensors(src, dim)?, metric))
    }
    /// The weights a query puts on the `+-1` of each bit (see the module docs).
    pub fn weights(&self, query: &[f32]) -> Vec<f32> {
        match self.metric {
            Metric::L2 => query
                .iter()
                .zip(self.thresholds())
                .map(|(q, t)| q - t)
                .collect(),
            Metric::Cosine | Metric::Ip => query.to_vec(),
        }
    }
}

/// Per code byte `j` and byte value `v`: the sum over the byte's 8 bits of `+-w` (`+` where
/// the bit is set), minus, so that a smaller value is a better match.
pub(crate) fn byte_tables(w: &[f32], code_len: usize) -> Vec<[f32; 256]> {
    (0..code_len)
        .map(|j| {
            let ws: [f32; 8] = std::array::from_fn(|b| w.get(8 * j + b).copied().unwrap_or(0.0));
            // f[v] = sum_b (bit b of v ? w_b : -w_b), built from v with its lowest bit cleared
            let mut t = [0f32; 256];
            t[0] = ws.iter().sum::<f32>();
            for v in 1..256usize {
                t[v] = t[v & (v - 1)] - 2.0 * ws[v.trailing_zeros() as usize];
            }
            t
        })
        .collect()
}

/// The table distance: one lookup per code byte, summed into four independent accumulators
/// (one chain of dependent adds made the scan latency-bound: 4x slower).
#[inline(always)]
pub(crate) fn table_distance(tables: &[[f32; 256]], code: &[u8]) -> f32 {
    let mut acc = [0f32; 4];
    let (tc, tr) = tables.split_at(tables.len() / 4 * 4);
    let (cc, cr) = code.split_at(tc.len());
    for (t, c) in tc.chunks_exact(4).zip(cc.chunks_exact(4)) {
        acc[0] += t[0][c[0] as usize];
        acc[1] += t[1][c[1] as usize];
        acc[2] += t[2][c[2] as usize];
        acc[3] += t[3][c[3] as usize];
    }
    for (t, &c) in tr.iter().zip(cr) {
        acc[0] += t[c as usize];
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

/// The reference the tables must agree with: `-sum_i w[i] * (+1 if bit i is set else -1)`.
pub fn asym_distance_reference(w: &[f32], code: &[u8]) -> f32 {
    -w.iter()
        .enumerate()
        .map(|(i, w)| {
            if code[i / 8] >> (i % 8) & 1 == 1 {
                *w
            } else {
                -*w
            }
        })
        .sum::<f32>()
}

impl Quantizer for SignAsymQuantizer {
    type Config = SignAsymConfig;
    type Query = Vec<[f32; 256]>;

    fn fit(cfg: &SignAsymConfig, train: VectorsRef<'_>, seed: u64) -> Result<Self> {
        let bits = SignQuantizer::fit(&SignConfig::default(), train, seed)?;
        Ok(SignAsymQuantizer::new(bits, cfg.metric))
    }
    fn code_len(&self) -> usize {
        self.bits.code_len()
    }
    fn encode(&self, x: &[f32], out: &mut [u8]) {
        self.bits.encode(x, out);
    }
    fn prepare(&self, query: &[f32]) -> Vec<[f32; 256]> {
        byte_tables(&self.weights(query), self.code_len())
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
    use crate::Vectors;

    /// The Hamming list kernel, AVX2 and scalar, against one `hamming` per code: the same
    /// hits for every code length (unrolled or not), lists not a multiple of 8 (padding
    /// never offered), an offset added, keeps from 1 to beyond the list.
    #[test]
    fn list_kernel_equals_one_distance_per_code_and_the_twins_agree() {
        use crate::encode::scan::scan_run_codes;
        let mut next = crate::testutil::xorshift(3);
        for words in [1usize, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 40] {
            let cl = words * 8;
            let q = SignQuantizer::from_thresholds(vec![0.0; words * 64]);
            for n in [0usize, 1, 7, 8, 9, 300, 1000] {
                // sparse words: many ties
                let codes: Vec<u8> = (0..n * words)
                    .flat_map(|_| (next() & next()).to_le_bytes())
                    .collect();
                let ids: Vec<u32> = (0..n as u32).map(|i| 7 * i + 3).collect();
                let mut laid = vec![0u8; n.div_ceil(8) * 8 * cl];
                layout_words(&codes, words, &mut laid);
                let p: Vec<u8> = (0..words).flat_map(|_| next().to_le_bytes()).collect();
                for keep in [1, 10, n + 3] {
                    for add in [0.0f32, -2.5] {
                        let mut want = TopK::new(keep);
                        let run = Run {
                            codes: &codes,
                            laid: None,
                            ids: &ids,
                        };
                        scan_run_codes(&q, &p, run, add, &mut want);
                        let want = want.into_sorted();
                        let mut wides = vec![false];
                        if crate::simd::avx2() {
                            wides.push(true);
                        }
                        for wide in wides {
                            let mut got = TopK::new(keep);
                            hamming_run(&p, &laid, &ids, add, &mut got, wide);
                            assert_eq!(
                                got.into_sorted(),
                                want,
                                "W {words} n {n} keep {keep} wide {wide}"
                            );
                        }
                    }
                }
                assert_eq!(codes.len(), n * cl);
            }
        }
    }

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

    #[test]
    fn asymmetric_tables_agree_with_the_reference_and_rank_better_than_hamming() {
        use crate::Encoder;
        // odd dimension: the last byte and word are partly padding
        let base = crate::testutil::gaussian(2000, 77, 3);
        let queries = crate::testutil::gaussian(50, 77, 4);
        for metric in [Metric::Ip, Metric::L2] {
            let q = SignAsymQuantizer::fit(&SignAsymConfig { metric }, base.view(), 0).unwrap();
            let mut code = vec![0u8; q.code_len()];
            for (x, y) in base.view().rows().zip(queries.view().rows()) {
                q.encode(x, &mut code);
                let p = q.prepare(y);
                let want = asym_distance_reference(&q.weights(y), &code);
                let got = q.distance(&p, &code);
                assert!(
                    (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "{got} vs {want}"
                );
            }
        }
        // same bits as sign, better recall@10 against exact inner product
        let recall = |spec: &str| {
            let enc = Encoder::fit(&spec.parse().unwrap(), base.view(), Metric::Ip, 1).unwrap();
            let codes = enc.encode_batch(base.view()).unwrap();
            let hits = crate::encode::scan::scan_encoded(
                &enc,
                &codes,
                queries.view(),
                10,
                crate::topk::Allow::ALL,
            );
            let truth = crate::kernels::exact_search(base.view(), queries.view(), Metric::Ip, 10);
            (codes, crate::eval::recall_at_k(&hits, &truth, 10))
        };
        let (c1, hamming) = recall("sign");
        let (c2, asym) = recall("asign");
        assert_eq!(c1, c2);
        assert!(asym > hamming + 0.05, "asign {asym} vs sign {hamming}");
    }
}
