//! [`Index`]: fitted encoders, their codes, optional float vectors, and a default pipeline.
//!
//! `Index` is a struct, not a trait: there is one layout (flat codes). Files live in
//! [`format`]; nothing else reads or writes index bytes.

mod bytes;
pub mod format;

pub(crate) use bytes::Bytes;

use crate::distance::Metric;
use crate::encode::{AnyQuantizer, Encoder, EncoderSpec, Quantizer};
use crate::error::{invalid, Error, Result};
use crate::search::{exact_search, rerank, scan_encoded, Hit, Pipeline, Scorer, SearchParams};
use crate::vectors::VectorsRef;
use rayon::prelude::*;
use std::borrow::Cow;

/// Build-time settings.
#[derive(Clone, Debug)]
pub struct IndexSpec {
    /// How vectors are compared.
    pub metric: Metric,
    /// The default search pipeline; every encoder it names is fitted, and float vectors are
    /// stored when it has an `exact` stage.
    pub pipeline: Pipeline,
    /// Seed for every random choice made while fitting.
    pub seed: u64,
}

/// The codes of one fitted encoder.
#[derive(Clone, Debug)]
pub struct CodeSet {
    pub(crate) encoder: Encoder,
    pub(crate) codes: Bytes,
}

impl CodeSet {
    /// The fitted encoder.
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }
    /// All codes, `count * code_len` bytes.
    pub fn codes(&self) -> &[u8] {
        self.codes.as_slice()
    }
}

/// A searchable set of vectors.
#[derive(Clone, Debug)]
pub struct Index {
    pub(crate) dim: usize,
    pub(crate) metric: Metric,
    pub(crate) pipeline: Pipeline,
    pub(crate) seed: u64,
    pub(crate) count: usize,
    pub(crate) code_sets: Vec<CodeSet>,
    pub(crate) vectors: Option<Bytes>,
}

fn prepared(v: VectorsRef<'_>, metric: Metric) -> Cow<'_, [f32]> {
    if metric.normalizes() {
        let mut o = v.to_owned();
        o.normalize();
        Cow::Owned(o.into_vec())
    } else {
        Cow::Borrowed(v.as_slice())
    }
}

impl Index {
    /// Fits every encoder of `spec.pipeline` on `train` and returns an empty index.
    pub fn fit(spec: &IndexSpec, train: VectorsRef<'_>) -> Result<Index> {
        if train.is_empty() {
            return invalid!("cannot fit an index on zero training vectors");
        }
        train.check_finite()?;
        spec.pipeline.check(1)?;
        let data = prepared(train, spec.metric);
        let train = VectorsRef::new(train.dim(), &data)?;
        let mut code_sets = Vec::new();
        for (i, es) in spec.pipeline.encoders().into_iter().enumerate() {
            es.check(train.dim())?;
            let encoder = Encoder::fit(
                es,
                train,
                spec.metric,
                spec.seed.wrapping_add(i as u64 * 7919),
            )?;
            code_sets.push(CodeSet {
                encoder,
                codes: Bytes::default(),
            });
        }
        Ok(Index {
            dim: train.dim(),
            metric: spec.metric,
            pipeline: spec.pipeline.clone(),
            seed: spec.seed,
            count: 0,
            code_sets,
            vectors: spec.pipeline.needs_vectors().then(Bytes::default),
        })
    }

    /// Fits on `data`, then adds it.
    pub fn build(spec: &IndexSpec, data: VectorsRef<'_>) -> Result<Index> {
        let mut index = Index::fit(spec, data)?;
        index.add(data)?;
        Ok(index)
    }

    /// Makes room for `more` vectors, so that adding them in chunks does not grow (and copy)
    /// the buffers step by step.
    pub fn reserve(&mut self, more: usize) {
        for cs in &mut self.code_sets {
            let cl = cs.encoder.code_len();
            cs.codes.reserve(more * cl);
        }
        if let Some(v) = &mut self.vectors {
            v.reserve(more * 4 * self.dim);
        }
    }

    /// Encodes and appends `data`; ids continue from the current count.
    pub fn add(&mut self, data: VectorsRef<'_>) -> Result<()> {
        if data.dim() != self.dim {
            return Err(Error::DimMismatch {
                expected: self.dim,
                got: data.dim(),
            });
        }
        data.check_finite()?;
        if self.count + data.len() > u32::MAX as usize {
            return invalid!("an index holds at most {} vectors", u32::MAX);
        }
        let buf = prepared(data, self.metric);
        let data = VectorsRef::new(self.dim, &buf)?;
        for cs in &mut self.code_sets {
            let codes = cs.encoder.encode_batch(data)?;
            cs.codes.extend(&codes);
        }
        if let Some(v) = &mut self.vectors {
            v.extend(crate::io::as_bytes(data.as_slice()));
        }
        self.count += data.len();
        Ok(())
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.count
    }
    /// `true` if the index holds no vectors.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// The metric.
    pub fn metric(&self) -> Metric {
        self.metric
    }
    /// The default pipeline.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }
    /// Replaces the default pipeline (e.g. after tuning). It must only use stored code sets.
    pub fn set_pipeline(&mut self, p: Pipeline) -> Result<()> {
        self.check_pipeline(&p, 1)?;
        self.pipeline = p;
        Ok(())
    }
    /// The code sets.
    pub fn code_sets(&self) -> &[CodeSet] {
        &self.code_sets
    }
    /// The stored float vectors (normalised for cosine), if any.
    pub fn vectors(&self) -> Option<VectorsRef<'_>> {
        self.vectors
            .as_ref()
            .map(|b| VectorsRef::new(self.dim, b.as_f32()).expect("invariant: checked shape"))
    }
    /// Bytes stored per vector over all code sets and float vectors.
    pub fn bytes_per_vector(&self) -> usize {
        self.code_sets
            .iter()
            .map(|c| c.encoder.code_len())
            .sum::<usize>()
            + if self.vectors.is_some() {
                4 * self.dim
            } else {
                0
            }
    }

    fn code_set(&self, spec: &EncoderSpec) -> Result<&CodeSet> {
        self.code_sets
            .iter()
            .find(|c| c.encoder.spec() == spec)
            .ok_or_else(|| {
                let have: Vec<String> = self
                    .code_sets
                    .iter()
                    .map(|c| c.encoder.spec().to_string())
                    .collect();
                Error::InvalidInput(format!(
                    "the index has no codes for {spec} (it has: {})",
                    have.join(", ")
                ))
            })
    }

    fn check_pipeline(&self, p: &Pipeline, k: usize) -> Result<()> {
        p.check(k)?;
        for s in &p.stages {
            match &s.scorer {
                Scorer::Exact if self.vectors.is_none() => {
                    return invalid!(
                        "pipeline {p} has an exact stage, but the index stores no float vectors"
                    );
                }
                Scorer::Exact => {}
                Scorer::Codes(spec) => {
                    self.code_set(spec)?;
                }
            }
        }
        Ok(())
    }

    /// Saves into `dir` crash-safely (see [`format`]).
    pub fn save(&self, dir: &std::path::Path) -> Result<()> {
        format::save(self, dir)
    }
    /// Opens an index saved by [`Index::save`], memory-mapping and checking every file.
    pub fn open(dir: &std::path::Path) -> Result<Index> {
        format::open(dir)
    }

    /// Searches one query.
    pub fn search(&self, query: &[f32], params: &SearchParams) -> Result<Vec<Hit>> {
        let q = VectorsRef::new(query.len().max(1), query).map_err(|_| Error::DimMismatch {
            expected: self.dim,
            got: 0,
        })?;
        Ok(self.search_batch(q, params)?.pop().unwrap_or_default())
    }

    /// Searches many queries, in parallel. Returns up to `k` hits per query, best first.
    pub fn search_batch(
        &self,
        queries: VectorsRef<'_>,
        params: &SearchParams,
    ) -> Result<Vec<Vec<Hit>>> {
        let pipeline = params.pipeline.as_ref().unwrap_or(&self.pipeline);
        self.check_pipeline(pipeline, params.k)?;
        if queries.dim() != self.dim {
            return Err(Error::DimMismatch {
                expected: self.dim,
                got: queries.dim(),
            });
        }
        queries.check_finite()?;
        if self.count == 0 {
            return Ok(vec![Vec::new(); queries.len()]);
        }
        let buf = prepared(queries, self.metric);
        let queries = VectorsRef::new(self.dim, &buf)?;
        let mut hits =
            self.first_stage(&pipeline.stages[0].scorer, pipeline.stages[0].keep, queries)?;
        for stage in &pipeline.stages[1..] {
            hits = hits
                .into_par_iter()
                .enumerate()
                .map(|(qi, prev)| {
                    self.rerank_stage(&stage.scorer, stage.keep, queries.row(qi), &prev)
                })
                .collect::<Result<_>>()?;
        }
        for h in &mut hits {
            h.truncate(params.k);
        }
        Ok(hits)
    }

    fn first_stage(
        &self,
        scorer: &Scorer,
        keep: usize,
        queries: VectorsRef<'_>,
    ) -> Result<Vec<Vec<Hit>>> {
        let spec = match scorer {
            Scorer::Exact => {
                let base = self
                    .vectors()
                    .expect("invariant: checked by check_pipeline");
                return Ok(exact_search(base, queries, self.metric, keep));
            }
            Scorer::Codes(spec) => spec,
        };
        let cs = self.code_set(spec)?;
        Ok(scan_encoded(&cs.encoder, cs.codes(), queries, keep))
    }

    fn rerank_stage(
        &self,
        scorer: &Scorer,
        keep: usize,
        query: &[f32],
        prev: &[Hit],
    ) -> Result<Vec<Hit>> {
        let ids = prev.iter().map(|h| h.id);
        let spec = match scorer {
            Scorer::Exact => {
                let base = self
                    .vectors()
                    .expect("invariant: checked by check_pipeline");
                return Ok(rerank(ids, keep, |i| {
                    self.metric.distance(query, base.row(i as usize))
                }));
            }
            Scorer::Codes(spec) => spec,
        };
        let cs = self.code_set(spec)?;
        let tq = cs.encoder.transform(query);
        let codes = cs.codes();
        Ok(rerank_codes(cs.encoder.quantizer(), &tq, codes, ids, keep))
    }
}

fn rerank_codes(
    q: &AnyQuantizer,
    tq: &[f32],
    codes: &[u8],
    ids: impl Iterator<Item = u32>,
    keep: usize,
) -> Vec<Hit> {
    fn go<Q: Quantizer>(
        q: &Q,
        tq: &[f32],
        codes: &[u8],
        ids: impl Iterator<Item = u32>,
        keep: usize,
    ) -> Vec<Hit> {
        let p = q.prepare(tq);
        let cl = q.code_len();
        rerank(ids, keep, |i| {
            q.distance(&p, &codes[i as usize * cl..(i as usize + 1) * cl])
        })
    }
    match q {
        AnyQuantizer::Flat(f) => go(f, tq, codes, ids, keep),
        AnyQuantizer::Sign(s) => go(s, tq, codes, ids, keep),
        AnyQuantizer::SignAsym(s) => go(s, tq, codes, ids, keep),
        AnyQuantizer::Int8(i) => go(i, tq, codes, ids, keep),
        AnyQuantizer::Pq(q) => go(q, tq, codes, ids, keep),
    }
}
