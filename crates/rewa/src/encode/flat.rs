//! `flat`: the vector itself as little-endian f32, the uncompressed baseline.

use super::Quantizer;
use crate::distance::Metric;
use crate::error::Result;
use crate::topk::{Allow, Hit};
use crate::vectors::VectorsRef;

/// Settings for [`FlatQuantizer`].
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlatConfig {
    /// How codes are compared.
    pub metric: Metric,
}

/// Stores f32 vectors unchanged.
#[derive(Clone, Debug)]
pub struct FlatQuantizer {
    pub(crate) dim: usize,
    pub(crate) metric: Metric,
}

impl FlatQuantizer {
    /// A flat quantizer for `dim`-dimensional vectors.
    pub fn new(dim: usize, metric: Metric) -> Self {
        FlatQuantizer { dim, metric }
    }
    /// The metric codes are compared with.
    pub fn metric(&self) -> Metric {
        self.metric
    }
}

/// Reads little-endian f32 values from `bytes` into `out`.
#[inline(always)]
pub(crate) fn decode_f32(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

/// Views `bytes` as f32 when aligned, else copies into `buf`.
#[inline(always)]
pub(crate) fn as_f32<'a>(bytes: &'a [u8], buf: &'a mut Vec<f32>) -> &'a [f32] {
    if let Ok(v) = bytemuck::try_cast_slice(bytes) {
        return v;
    }
    buf.resize(bytes.len() / 4, 0.0);
    decode_f32(bytes, buf);
    buf
}

impl Quantizer for FlatQuantizer {
    type Config = FlatConfig;
    type Query = Vec<f32>;

    fn fit(cfg: &FlatConfig, train: VectorsRef<'_>, _seed: u64) -> Result<Self> {
        Ok(FlatQuantizer {
            dim: train.dim(),
            metric: cfg.metric,
        })
    }
    fn code_len(&self) -> usize {
        4 * self.dim
    }
    fn encode(&self, x: &[f32], out: &mut [u8]) {
        for (o, v) in out.chunks_exact_mut(4).zip(x) {
            o.copy_from_slice(&v.to_le_bytes());
        }
    }
    fn prepare(&self, query: &[f32]) -> Vec<f32> {
        query.to_vec()
    }
    #[inline(always)]
    fn distance(&self, q: &Vec<f32>, code: &[u8]) -> f32 {
        let mut buf = Vec::new();
        self.metric.distance(q, as_f32(code, &mut buf))
    }
    /// Float codes are scanned like exact search: blocked GEMM.
    fn scan(
        &self,
        queries: VectorsRef<'_>,
        codes: &[u8],
        k: usize,
        allow: Allow<'_>,
    ) -> Vec<Vec<Hit>> {
        let floats = crate::io::f32_cow(codes);
        let base =
            VectorsRef::new(self.dim, &floats).expect("invariant: flat codes hold dim floats each");
        crate::kernels::exact_search_allowing(base, queries, self.metric, k, allow)
    }
}
