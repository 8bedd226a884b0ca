//! Encoders: zero or more [`Transform`]s (f32 -> f32) followed by one [`Quantizer`]
//! (f32 -> fixed-size code).
//!
//! Runtime choice goes through the closed enums [`AnyTransform`] and [`AnyQuantizer`]: callers
//! match once, outside any loop, then run a loop compiled for the concrete type.
//!
//! An encoder is named by an [`EncoderSpec`] whose text form joins tokens with `+`:
//! `hadamard256+sign`, `pca64+int8`, `flat`. Transforms come first; the quantizer, if any, last.
//! Without a quantizer the code is the transformed vector as little-endian f32 (`flat`).

mod asignfs;
mod flat;
mod hadamard;
mod int8;
mod ivf;
mod learned;
mod opq;
mod params;
mod pca;
mod pq;
mod pq4;
mod rabitq;
pub(crate) mod scan;
mod sign;
mod spec;

pub use asignfs::{SignFastConfig, SignFastQuantizer, ASIGNFS_MAX_BITS};
pub use flat::{FlatConfig, FlatQuantizer};
pub use hadamard::{fwht, fwht_reference, HadamardConfig, HadamardTransform};
pub use int8::{Int8Config, Int8Quantizer, Int8Query};
pub use ivf::Coarse;
pub use learned::{
    gelu, gelu_u, layer_norm, trained_quantizer, LearnedConfig, LearnedTransform, ModelConfig,
    CONFIG_FILE, MODEL_FORMAT, MODEL_VERSION, QUANTIZER_FILE, TENSOR_NAMES, WEIGHTS_FILE,
};
pub use opq::{OpqConfig, OpqTransform};
pub use params::{Tensor, TensorData, TensorSource};
pub use pca::{PcaConfig, PcaTransform};
pub use pq::{PqConfig, PqQuantizer, PQ_CENTROIDS};
pub use pq4::{Pq4Config, Pq4Quantizer, Pq4Query, PQ4_CENTROIDS, PQ4_MAX_M};
pub use rabitq::{RabitqConfig, RabitqQuantizer, RabitqQuery, RABITQ_EPS0, RABITQ_MAX_BITS};
pub use sign::{
    asym_distance_reference, SignAsymConfig, SignAsymQuantizer, SignConfig, SignQuantizer,
};
pub use spec::{EncoderSpec, QuantizerSpec, TransformSpec, MAX_SPEC_DIM};

use crate::distance::Metric;
use crate::error::{Error, Result};
use crate::rows::{ListLayout, ListsRef, Run};
use crate::topk::{Allow, Hit, TopK};
use crate::vectors::{Vectors, VectorsRef};
use rayon::prelude::*;

/// A fitted map from `dim_in` floats to `dim_out` floats (Hadamard, PCA, a learned MLP).
pub trait Transform: Send + Sync {
    /// What the user asks for.
    type Config;
    /// Learns the transform from `train`. Never pass evaluation queries here.
    fn fit(cfg: &Self::Config, train: VectorsRef<'_>, seed: u64) -> Result<Self>
    where
        Self: Sized;
    /// Input dimension.
    fn dim_in(&self) -> usize;
    /// Output dimension.
    fn dim_out(&self) -> usize;
    /// Transforms one vector. `x.len() == dim_in()`, `out.len() == dim_out()`.
    fn apply(&self, x: &[f32], out: &mut [f32]);

    /// Transforms many vectors, in parallel.
    fn apply_batch(&self, x: VectorsRef<'_>) -> Vectors {
        let (di, d) = (self.dim_in(), self.dim_out());
        let mut out = vec![0f32; x.len() * d];
        out.par_chunks_mut(d * 256)
            .zip(x.as_slice().par_chunks(di * 256))
            .for_each(|(o, xs)| {
                for (o, x) in o.chunks_exact_mut(d).zip(xs.chunks_exact(di)) {
                    self.apply(x, o);
                }
            });
        Vectors::new(d, out).expect("invariant: d >= 1 divides the buffer")
    }
}

/// A fitted map from floats to fixed-size codes, and the distance from a prepared query to a
/// code (lower is closer).
pub trait Quantizer: Send + Sync {
    /// What the user asks for.
    type Config;
    /// A query made ready for fast distance evaluation (packed bits, scaled weights, ...).
    type Query: Send + Sync;
    /// Learns the quantizer from `train`.
    fn fit(cfg: &Self::Config, train: VectorsRef<'_>, seed: u64) -> Result<Self>
    where
        Self: Sized;
    /// Bytes per code.
    fn code_len(&self) -> usize;
    /// Encodes one vector into `out` (`out.len() == code_len()`).
    fn encode(&self, x: &[f32], out: &mut [u8]);
    /// Encodes every row of `x` into `out` (`x.len() * code_len()` bytes); quantizers with a
    /// faster batched path (a matrix product) override it.
    fn encode_batch(&self, x: VectorsRef<'_>, out: &mut [u8]) {
        for (code, v) in out.chunks_exact_mut(self.code_len()).zip(x.rows()) {
            self.encode(v, code);
        }
    }
    /// Prepares a (transformed) query.
    fn prepare(&self, query: &[f32]) -> Self::Query;
    /// Prepares many queries; quantizers with a batched path (a matrix product) override it.
    fn prepare_batch(&self, queries: VectorsRef<'_>) -> Vec<Self::Query> {
        queries.rows().map(|r| self.prepare(r)).collect()
    }
    /// Distance from a prepared query to one code.
    fn distance(&self, q: &Self::Query, code: &[u8]) -> f32;
    /// First stage: the best `k` of the `codes` (`code_len()` bytes each) `allow` allows for
    /// every transformed query. Quantizers with a faster kernel than one `distance` per code
    /// override it.
    fn scan(
        &self,
        queries: VectorsRef<'_>,
        codes: &[u8],
        k: usize,
        allow: Allow<'_>,
    ) -> Vec<Vec<Hit>>
    where
        Self: Sized,
    {
        let qs = self.prepare_batch(queries);
        scan::scan_codes(self, &qs, codes, k, allow)
    }
    /// Bytes a list of `n` codes takes in the quantizer's list layout (for its blocked list
    /// kernel, [`Quantizer::scan_run`]); 0 (the default) when it has none and scores one code
    /// at a time.
    fn laid_list_bytes(&self, n: usize) -> usize {
        let _ = n;
        0
    }
    /// Lays out one list's codes (`code_len()` bytes each) into `out`
    /// ([`Quantizer::laid_list_bytes`] bytes, zeroed).
    fn lay_out_list(&self, codes: &[u8], out: &mut [u8]) {
        let _ = (codes, out);
    }
    /// The codes of a partitioned set (in list order, list `l` at positions
    /// `offsets[l]..offsets[l + 1]`) laid out list by list ([`Quantizer::lay_out_list`]);
    /// `None` when the quantizer has no layout.
    fn layout_lists(&self, codes: &[u8], offsets: &[u32]) -> Option<ListLayout>
    where
        Self: Sized,
    {
        if self.laid_list_bytes(1) == 0 {
            return None;
        }
        let cl = self.code_len();
        let nlist = offsets.len().saturating_sub(1);
        let mut starts = Vec::with_capacity(nlist + 1);
        starts.push(0);
        for l in 0..nlist {
            starts.push(starts[l] + self.laid_list_bytes((offsets[l + 1] - offsets[l]) as usize));
        }
        let mut data = vec![0u8; starts[nlist]];
        for l in 0..nlist {
            let (a, b) = (offsets[l] as usize, offsets[l + 1] as usize);
            self.lay_out_list(&codes[a * cl..b * cl], &mut data[starts[l]..starts[l + 1]]);
        }
        Some(ListLayout { data, starts })
    }
    /// One list for one prepared query: offers `top` every code of `run` whose distance plus
    /// `add` reaches its threshold. The default scores one `distance` per code; a quantizer
    /// with a list layout ([`Quantizer::layout_lists`]) scans `run.laid` with its blocked
    /// kernel instead (the same hits).
    fn scan_run(&self, p: &Self::Query, run: Run<'_>, add: f32, top: &mut TopK)
    where
        Self: Sized,
    {
        scan::scan_run_codes(self, p, run, add, top)
    }
    /// A partitioned first stage for a batch of transformed queries: the best `keep` codes of
    /// query `i`'s lists `probes[i * np..(i + 1) * np]`, `adds[i * np + j]` added to the
    /// distances in its j-th list (the residual lists' centroid term; zeros otherwise), ties
    /// by id; only rows `allow` allows (list ids are the rows it is asked about).
    /// The default prepares the queries in groups and scans each group list by list with
    /// [`Quantizer::scan_run`] (`scan::scan_lists_grouped`); the same hits.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Vec<Vec<Hit>>
    where
        Self: Sized,
    {
        scan::scan_lists_grouped(self, tq, codes, lists, probes, np, adds, keep, allow)
    }
}

/// Any transform, chosen at run time.
#[derive(Clone, Debug)]
pub enum AnyTransform {
    /// Subsampled randomized Hadamard transform.
    Hadamard(HadamardTransform),
    /// Principal component projection.
    Pca(PcaTransform),
    /// A trained MLP.
    Learned(LearnedTransform),
    /// A rotation trained for product quantization.
    Opq(OpqTransform),
}

impl AnyTransform {
    fn as_dyn(&self) -> &dyn DynTransform {
        match self {
            AnyTransform::Hadamard(t) => t,
            AnyTransform::Pca(t) => t,
            AnyTransform::Learned(t) => t,
            AnyTransform::Opq(t) => t,
        }
    }
    /// Input dimension.
    pub fn dim_in(&self) -> usize {
        self.as_dyn().dim_in_()
    }
    /// Output dimension.
    pub fn dim_out(&self) -> usize {
        self.as_dyn().dim_out_()
    }
    /// Transforms one vector.
    pub fn apply(&self, x: &[f32], out: &mut [f32]) {
        self.as_dyn().apply_(x, out)
    }
    /// Transforms many vectors.
    pub fn apply_batch(&self, x: VectorsRef<'_>) -> Vectors {
        self.as_dyn().apply_batch_(x)
    }
    /// Its fitted parameters.
    pub fn tensors(&self) -> Vec<Tensor<'_>> {
        match self {
            AnyTransform::Hadamard(t) => t.tensors(),
            AnyTransform::Pca(t) => t.tensors(),
            AnyTransform::Opq(t) => t.tensors(),
            AnyTransform::Learned(t) => {
                let mut v: Vec<Tensor<'_>> = t
                    .tensors()
                    .into_iter()
                    .map(|(name, shape, data)| Tensor::f32(name, shape, data))
                    .collect();
                v.push(Tensor {
                    name: "ln_eps".into(),
                    shape: vec![1],
                    data: TensorData::F32(vec![t.eps()].into()),
                });
                v
            }
        }
    }
    /// The transform `spec` names, on `dim` inputs, from the tensors [`AnyTransform::tensors`]
    /// wrote.
    pub fn from_tensors(spec: &TransformSpec, src: &TensorSource<'_>, dim: usize) -> Result<Self> {
        Ok(match *spec {
            TransformSpec::Hadamard { m } => HadamardTransform::from_tensors(src, dim, m)?.into(),
            TransformSpec::Pca { m } => PcaTransform::from_tensors(src, dim, m)?.into(),
            TransformSpec::Opq { m } => OpqTransform::from_tensors(src, dim, m)?.into(),
            TransformSpec::Learned { .. } => LearnedTransform::from_source(src, dim, None)?.into(),
        })
    }
}

/// Object-safe view of `Transform` used only inside `AnyTransform`.
trait DynTransform {
    fn dim_in_(&self) -> usize;
    fn dim_out_(&self) -> usize;
    fn apply_(&self, x: &[f32], out: &mut [f32]);
    fn apply_batch_(&self, x: VectorsRef<'_>) -> Vectors;
}

impl<T: Transform> DynTransform for T {
    fn dim_in_(&self) -> usize {
        self.dim_in()
    }
    fn dim_out_(&self) -> usize {
        self.dim_out()
    }
    fn apply_(&self, x: &[f32], out: &mut [f32]) {
        self.apply(x, out)
    }
    fn apply_batch_(&self, x: VectorsRef<'_>) -> Vectors {
        self.apply_batch(x)
    }
}

impl From<HadamardTransform> for AnyTransform {
    fn from(t: HadamardTransform) -> Self {
        AnyTransform::Hadamard(t)
    }
}
impl From<PcaTransform> for AnyTransform {
    fn from(t: PcaTransform) -> Self {
        AnyTransform::Pca(t)
    }
}
impl From<OpqTransform> for AnyTransform {
    fn from(t: OpqTransform) -> Self {
        AnyTransform::Opq(t)
    }
}
impl From<LearnedTransform> for AnyTransform {
    fn from(t: LearnedTransform) -> Self {
        AnyTransform::Learned(t)
    }
}

/// Any quantizer, chosen at run time.
#[derive(Clone, Debug)]
pub enum AnyQuantizer {
    /// Uncompressed f32.
    Flat(FlatQuantizer),
    /// One bit per dimension, Hamming distance.
    Sign(SignQuantizer),
    /// The same bits, scored against the float query.
    SignAsym(SignAsymQuantizer),
    /// One byte per dimension, asymmetric distance.
    Int8(Int8Quantizer),
    /// One byte per sub-space (product quantization), asymmetric distance.
    Pq(PqQuantizer),
    /// Four bits per sub-space, scanned with 8-bit tables in registers (fast scan).
    Pq4(Pq4Quantizer),
    /// Sign bits scored against the float query with the fast-scan kernel.
    SignFast(SignFastQuantizer),
    /// RaBitQ: rotated residual on a grid of `bits` per dimension, with per-vector factors.
    Rabitq(RabitqQuantizer),
}

impl From<FlatQuantizer> for AnyQuantizer {
    fn from(q: FlatQuantizer) -> Self {
        AnyQuantizer::Flat(q)
    }
}
impl From<SignQuantizer> for AnyQuantizer {
    fn from(q: SignQuantizer) -> Self {
        AnyQuantizer::Sign(q)
    }
}
impl From<SignAsymQuantizer> for AnyQuantizer {
    fn from(q: SignAsymQuantizer) -> Self {
        AnyQuantizer::SignAsym(q)
    }
}
impl From<Int8Quantizer> for AnyQuantizer {
    fn from(q: Int8Quantizer) -> Self {
        AnyQuantizer::Int8(q)
    }
}
impl From<PqQuantizer> for AnyQuantizer {
    fn from(q: PqQuantizer) -> Self {
        AnyQuantizer::Pq(q)
    }
}
impl From<SignFastQuantizer> for AnyQuantizer {
    fn from(q: SignFastQuantizer) -> Self {
        AnyQuantizer::SignFast(q)
    }
}
impl From<RabitqQuantizer> for AnyQuantizer {
    fn from(q: RabitqQuantizer) -> Self {
        AnyQuantizer::Rabitq(q)
    }
}
impl From<Pq4Quantizer> for AnyQuantizer {
    fn from(q: Pq4Quantizer) -> Self {
        AnyQuantizer::Pq4(q)
    }
}

/// Runs `$body` with `$q` bound to the concrete quantizer inside an [`AnyQuantizer`]: the one
/// place that lists the variants for dispatch, so each use compiles its own loop per type.
macro_rules! with_quantizer {
    ($any:expr, $q:ident => $body:expr) => {
        match $any {
            $crate::encode::AnyQuantizer::Flat($q) => $body,
            $crate::encode::AnyQuantizer::Sign($q) => $body,
            $crate::encode::AnyQuantizer::SignAsym($q) => $body,
            $crate::encode::AnyQuantizer::Int8($q) => $body,
            $crate::encode::AnyQuantizer::Pq($q) => $body,
            $crate::encode::AnyQuantizer::Pq4($q) => $body,
            $crate::encode::AnyQuantizer::SignFast($q) => $body,
            $crate::encode::AnyQuantizer::Rabitq($q) => $body,
        }
    };
}
pub(crate) use with_quantizer;

impl AnyQuantizer {
    /// [`Quantizer::layout_lists`] of the quantizer inside.
    pub fn layout_lists(&self, codes: &[u8], offsets: &[u32]) -> Option<ListLayout> {
        with_quantizer!(self, q => q.layout_lists(codes, offsets))
    }
    /// [`Quantizer::laid_list_bytes`] of the quantizer inside.
    pub fn laid_list_bytes(&self, n: usize) -> usize {
        with_quantizer!(self, q => q.laid_list_bytes(n))
    }
    /// Fits the quantizer `spec` names on (transformed) `train`.
    pub fn fit(
        spec: QuantizerSpec,
        train: VectorsRef<'_>,
        metric: Metric,
        seed: u64,
    ) -> Result<Self> {
        Ok(match spec {
            QuantizerSpec::Flat => FlatQuantizer::fit(&FlatConfig { metric }, train, seed)?.into(),
            QuantizerSpec::Sign => SignQuantizer::fit(&SignConfig::default(), train, seed)?.into(),
            QuantizerSpec::SignAsym => {
                SignAsymQuantizer::fit(&SignAsymConfig { metric }, train, seed)?.into()
            }
            QuantizerSpec::Int8 => Int8Quantizer::fit(
                &Int8Config {
                    metric,
                    ..Default::default()
                },
                train,
                seed,
            )?
            .into(),
            QuantizerSpec::Pq { m } => {
                PqQuantizer::fit(&PqConfig::new(m, metric), train, seed)?.into()
            }
            QuantizerSpec::PqScore { m, eta } => {
                PqQuantizer::fit(&PqConfig::new(m, metric), train, seed)?
                    .with_eta(Some(eta as f32))
                    .into()
            }
            QuantizerSpec::Pq4 { m } => {
                Pq4Quantizer::fit(&Pq4Config::new(m, metric), train, seed)?.into()
            }
            QuantizerSpec::SignFast => {
                SignFastQuantizer::fit(&SignFastConfig { metric }, train, seed)?.into()
            }
            QuantizerSpec::Rabitq { bits } => {
                RabitqQuantizer::fit(&RabitqConfig { bits, metric }, train, seed)?.into()
            }
        })
    }
    /// The quantizer `spec` names, on `dim` inputs, from the tensors
    /// [`AnyQuantizer::tensors`] wrote.
    pub fn from_tensors(
        spec: QuantizerSpec,
        src: &TensorSource<'_>,
        dim: usize,
        metric: Metric,
    ) -> Result<Self> {
        Ok(match spec {
            QuantizerSpec::Flat => FlatQuantizer::new(dim, metric).into(),
            QuantizerSpec::Sign => SignQuantizer::from_tensors(src, dim)?.into(),
            QuantizerSpec::SignAsym => SignAsymQuantizer::from_tensors(src, dim, metric)?.into(),
            QuantizerSpec::Int8 => Int8Quantizer::from_tensors(src, dim, metric)?.into(),
            QuantizerSpec::Pq { m } => PqQuantizer::from_tensors(src, dim, m, metric)?.into(),
            QuantizerSpec::PqScore { m, eta } => PqQuantizer::from_tensors(src, dim, m, metric)?
                .with_eta(Some(eta as f32))
                .into(),
            QuantizerSpec::Pq4 { m } => Pq4Quantizer::from_tensors(src, dim, m, metric)?.into(),
            QuantizerSpec::SignFast => SignFastQuantizer::from_tensors(src, dim, metric)?.into(),
            QuantizerSpec::Rabitq { bits } => {
                RabitqQuantizer::from_tensors(src, dim, bits, metric)?.into()
            }
        })
    }
    /// Its fitted parameters.
    pub fn tensors(&self) -> Vec<Tensor<'_>> {
        match self {
            AnyQuantizer::Flat(_) => Vec::new(),
            AnyQuantizer::Sign(q) => q.tensors(),
            AnyQuantizer::SignAsym(q) => q.tensors(),
            AnyQuantizer::Int8(q) => q.tensors(),
            AnyQuantizer::Pq(q) => q.tensors(),
            AnyQuantizer::Pq4(q) => q.tensors(),
            AnyQuantizer::SignFast(q) => q.tensors(),
            AnyQuantizer::Rabitq(q) => q.tensors(),
        }
    }
    /// Bytes per code.
    pub fn code_len(&self) -> usize {
        with_quantizer!(self, q => q.code_len())
    }
    /// Encodes one vector.
    pub fn encode(&self, x: &[f32], out: &mut [u8]) {
        with_quantizer!(self, q => q.encode(x, out))
    }
    /// Encodes every row of `x`.
    pub fn encode_batch(&self, x: VectorsRef<'_>, out: &mut [u8]) {
        with_quantizer!(self, q => q.encode_batch(x, out))
    }
    /// First-stage scan of `codes` (those `allow` allows) for transformed queries.
    pub fn scan(
        &self,
        queries: VectorsRef<'_>,
        codes: &[u8],
        k: usize,
        allow: Allow<'_>,
    ) -> Vec<Vec<Hit>> {
        with_quantizer!(self, q => q.scan(queries, codes, k, allow))
    }
}

/// A fitted encoder: transforms, then a quantizer.
#[derive(Clone, Debug)]
pub struct Encoder {
    spec: EncoderSpec,
    dim: usize,
    /// The partition (`ivf<nlist>`), on the input vectors.
    coarse: Option<Coarse>,
    transforms: Vec<AnyTransform>,
    quantizer: AnyQuantizer,
}

impl Encoder {
    /// Fits every part of `spec` on `train`, in order: each transform on the output of the one
    /// before, the quantizer on the output of the last. `metric` decides how continuous and
    /// int8 codes are compared (inner product for cosine/ip, squared L2 for l2).
    pub fn fit(
        spec: &EncoderSpec,
        train: VectorsRef<'_>,
        metric: Metric,
        seed: u64,
    ) -> Result<Encoder> {
        train.check_finite()?;
        Encoder::fit_checked(spec, train, metric, seed)
    }

    /// [`Encoder::fit`] on vectors already checked finite (they crossed `Metric::prepare`).
    pub(crate) fn fit_checked(
        spec: &EncoderSpec,
        train: VectorsRef<'_>,
        metric: Metric,
        seed: u64,
    ) -> Result<Encoder> {
        if train.is_empty() {
            return Err(Error::InvalidInput(
                "cannot fit an encoder on zero training vectors".into(),
            ));
        }
        spec.check(train.dim())?;
        let mut coarse = spec
            .ivf
            .map(|nlist| Coarse::fit(nlist, train, metric, seed ^ 0xC0A5_5E00))
            .transpose()?;
        // Residual lists: everything after the partition is fitted on x - mean(list of x).
        let residuals = match (&mut coarse, spec.residual) {
            (Some(c), true) => {
                if metric == Metric::L2 {
                    return Err(Error::InvalidInput(format!(
                        "{spec}: residual lists score inner products; use metric cosine or ip, or ivf<nlist> without r"
                    )));
                }
                let assign = c.assign(train);
                c.fit_means(train, &assign);
                Some(c.residuals(train, &assign))
            }
            _ => None,
        };
        let train = residuals.as_ref().map(|r| r.view()).unwrap_or(train);
        let mut transforms = Vec::new();
        let mut cur: Option<Vectors> = None;
        for (i, t) in spec.transforms.iter().enumerate() {
            let input = cur.as_ref().map(|v| v.view()).unwrap_or(train);
            let s = seed.wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i as u64 + 1));
            let fitted: AnyTransform = match t {
                TransformSpec::Hadamard { m } => {
                    HadamardTransform::fit(&HadamardConfig { m: *m }, input, s)?.into()
                }
                TransformSpec::Pca { m } => {
                    PcaTransform::fit(&PcaConfig { m: *m }, input, s)?.into()
                }
                TransformSpec::Opq { m } => {
                    // trained for the codes the quantizer after it assigns
                    let eta = match (spec.transforms.get(i + 1), spec.quantizer) {
                        (None, QuantizerSpec::PqScore { eta, .. }) => Some(eta as f32),
                        _ => None,
                    };
                    OpqTransform::fit(
                        &OpqConfig {
                            eta,
                            ..OpqConfig::new(*m)
                        },
                        input,
                        s,
                    )?
                    .into()
                }
                TransformSpec::Learned { path } => {
                    LearnedTransform::fit(&LearnedConfig { path: path.into() }, input, s)?.into()
                }
            };
            cur = Some(fitted.apply_batch(input));
            transforms.push(fitted);
        }
        let input = cur.as_ref().map(|v| v.view()).unwrap_or(train);
        // a model trained with its quantizer (`rewa train --qat pq32`) brings it along
        let trained = match spec.transforms.last() {
            Some(TransformSpec::Learned { path }) => learned::trained_quantizer(
                std::path::Path::new(path),
                spec.quantizer,
                input.dim(),
                metric,
            )?,
            _ => None,
        };
        let quantizer = match trained {
            Some(q) => q,
            None => AnyQuantizer::fit(spec.quantizer, input, metric, seed)?,
        };
        Ok(Encoder {
            spec: spec.clone(),
            dim: train.dim(),
            coarse,
            transforms,
            quantizer,
        })
    }

    /// Assembles an encoder from fitted parts (used when loading from disk).
    pub fn from_parts(
        spec: EncoderSpec,
        dim: usize,
        coarse: Option<Coarse>,
        transforms: Vec<AnyTransform>,
        quantizer: AnyQuantizer,
    ) -> Result<Encoder> {
        if coarse.as_ref().map(Coarse::nlist) != spec.ivf {
            return Err(Error::InvalidInput(format!(
                "encoder {spec}: the partition given does not match the spec"
            )));
        }
        let mut d = dim;
        for t in &transforms {
            if t.dim_in() != d {
                return Err(Error::DimMismatch {
                    expected: d,
                    got: t.dim_in(),
                });
            }
            d = t.dim_out();
        }
        Ok(Encoder {
            spec,
            dim,
            coarse,
            transforms,
            quantizer,
        })
    }

    /// Its fitted parameters, named `c.<name>` for the partition, `t<j>.<name>` for transform
    /// `j` and `q.<name>` for the quantizer.
    pub fn tensors(&self) -> Vec<(String, Tensor<'_>)> {
        let mut out = Vec::new();
        if let Some(c) = &self.coarse {
            out.extend(
                c.tensors()
                    .into_iter()
                    .map(|x| (format!("c.{}", x.name), x)),
            );
        }
        for (j, t) in self.transforms.iter().enumerate() {
            out.extend(
                t.tensors()
                    .into_iter()
                    .map(|x| (format!("t{j}.{}", x.name), x)),
            );
        }
        out.extend(
            self.quantizer
                .tensors()
                .into_iter()
                .map(|x| (format!("q.{}", x.name), x)),
        );
        out
    }

    /// The encoder `spec` names, on `dim` inputs, from the tensors [`Encoder::tensors`] wrote.
    pub fn from_tensors(
        spec: &EncoderSpec,
        src: &TensorSource<'_>,
        dim: usize,
        metric: Metric,
    ) -> Result<Encoder> {
        let coarse = spec
            .ivf
            .map(|nlist| Coarse::from_tensors(&src.part("c"), nlist, dim, metric, spec.residual))
            .transpose()?;
        let mut transforms = Vec::new();
        let mut d = dim;
        for (j, t) in spec.transforms.iter().enumerate() {
            let tr = AnyTransform::from_tensors(t, &src.part(&format!("t{j}")), d)?;
            d = tr.dim_out();
            transforms.push(tr);
        }
        let q = AnyQuantizer::from_tensors(spec.quantizer, &src.part("q"), d, metric)?;
        Encoder::from_parts(spec.clone(), dim, coarse, transforms, q)
    }

    /// The spec this encoder was fitted from.
    pub fn spec(&self) -> &EncoderSpec {
        &self.spec
    }
    /// Input dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Dimension after all transforms (the quantizer's input).
    pub fn dim_out(&self) -> usize {
        self.transforms.last().map_or(self.dim, |t| t.dim_out())
    }
    /// Bytes per code.
    pub fn code_len(&self) -> usize {
        self.quantizer.code_len()
    }
    /// The partition (`ivf<nlist>`), if the codes are kept in lists.
    pub fn coarse(&self) -> Option<&Coarse> {
        self.coarse.as_ref()
    }
    /// The fitted transforms.
    pub fn transforms(&self) -> &[AnyTransform] {
        &self.transforms
    }
    /// The fitted quantizer.
    pub fn quantizer(&self) -> &AnyQuantizer {
        &self.quantizer
    }

    /// Applies all transforms to one vector.
    pub fn transform(&self, x: &[f32]) -> Vec<f32> {
        let mut cur = x.to_vec();
        for t in &self.transforms {
            let mut out = vec![0f32; t.dim_out()];
            t.apply(&cur, &mut out);
            cur = out;
        }
        cur
    }

    /// Applies all transforms to many vectors.
    pub fn transform_batch(&self, x: VectorsRef<'_>) -> Vectors {
        let mut cur: Option<Vectors> = None;
        for t in &self.transforms {
            cur = Some(t.apply_batch(cur.as_ref().map(|v| v.view()).unwrap_or(x)));
        }
        cur.unwrap_or_else(|| x.to_owned())
    }

    /// Encodes many vectors into `len * code_len` bytes, in parallel.
    pub fn encode_batch(&self, x: VectorsRef<'_>) -> Result<Vec<u8>> {
        if x.dim() != self.dim {
            return Err(Error::DimMismatch {
                expected: self.dim,
                got: x.dim(),
            });
        }
        const CHUNK: usize = 4096;
        let cl = self.code_len();
        let mut out = vec![0u8; x.len() * cl];
        out.par_chunks_mut(cl * CHUNK)
            .enumerate()
            .for_each(|(i, o)| {
                let start = i * CHUNK;
                let part = x.slice(start, start + o.len() / cl);
                let t = self.transform_batch(part);
                self.quantizer.encode_batch(t.view(), o);
            });
        Ok(out)
    }
}
