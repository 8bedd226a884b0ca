//! [`Index`]: fitted encoders, their codes, optional float vectors, and a default pipeline.
//!
//! `Index` is a struct, not a trait: there is one layout (flat codes). Files live in
//! [`format`]; nothing else reads or writes index bytes.

mod bytes;
pub mod format;

pub(crate) use bytes::Bytes;
pub use format::{check_build_target, WriteLock};

use crate::distance::Metric;
use crate::encode::{Encoder, EncoderSpec};
use crate::error::{invalid, Error, Result};
use crate::search::{run_stages, Hit, ListsRef, Pipeline, Scored, Scorer, SearchParams, Stage};
use crate::vectors::{Prepared, VectorsRef};

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

/// The text model an index's vectors were embedded with: what `rewa build --model --text`
/// records, so that queries given as text are embedded by the same model (a model whose
/// weights differ is refused).
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TextModel {
    /// The model directory as given when the index was built.
    pub dir: String,
    /// SHA-256 of the model's `model.safetensors`, lower-case hex.
    pub weights_sha256: String,
    /// Word pieces per text the documents were embedded with (special tokens included).
    pub max_seq_len: usize,
}

/// An index's facts, as [`Index::summary`] gives them.
#[derive(serde::Serialize, Clone, Debug)]
pub struct Summary {
    /// Vectors held.
    pub count: usize,
    /// Their dimension.
    pub dim: usize,
    /// The metric's name.
    pub metric: String,
    /// The default pipeline.
    pub pipeline: String,
    /// Bytes stored per vector (codes and float vectors).
    pub bytes_per_vector: usize,
    /// Each code set's spec and code length, as `spec (n B)`.
    pub code_sets: Vec<String>,
    /// Whether float vectors are stored (for `exact` stages).
    pub has_vectors: bool,
    /// Whether rows carry the corpus ids they were built from (hits then name documents).
    pub has_doc_ids: bool,
    /// The text model the vectors were embedded with, for an index built from text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_model: Option<TextModel>,
    /// Format version and files, for a saved index.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub disk: Option<format::IndexInfo>,
}

/// The codes of one fitted encoder.
#[derive(Clone, Debug)]
pub struct CodeSet {
    pub(crate) encoder: Encoder,
    pub(crate) codes: Bytes,
    /// For a partitioned encoder (`ivf<nlist>+...`): `nlist + 1` list offsets then one id per
    /// code, u32 each (the codes are in list order, see [`ListsRef`]).
    pub(crate) lists: Option<Bytes>,
}

impl CodeSet {
    fn new(encoder: Encoder) -> CodeSet {
        let lists = encoder.coarse().map(|c| {
            let mut b = Bytes::default();
            b.extend(bytemuck::cast_slice(&vec![0u32; c.nlist() + 1]));
            b
        });
        CodeSet {
            encoder,
            codes: Bytes::default(),
            lists,
        }
    }
    /// The fitted encoder.
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }
    /// All codes, `count * code_len` bytes: in id order, or in list order for a partitioned
    /// encoder (then [`CodeSet::lists`] says whose each code is).
    pub fn codes(&self) -> &[u8] {
        self.codes.as_slice()
    }
    /// Bytes held per vector: the code, plus its id in the lists of a partitioned code set.
    pub fn bytes_per_vector(&self) -> usize {
        self.encoder.code_len() + if self.lists.is_some() { 4 } else { 0 }
    }
    /// The lists of a partitioned code set.
    pub fn lists(&self) -> Option<ListsRef<'_>> {
        let nlist = self.encoder.coarse()?.nlist();
        let all: &[u32] = bytemuck::cast_slice(self.lists.as_ref()?.as_slice());
        let (offsets, ids) = all.split_at(nlist + 1);
        Some(ListsRef { offsets, ids })
    }

    /// Puts the codes of rows `first_id..` (`codes`, in row order, list `assign[j]` for row
    /// `j`) at the ends of their lists: one pass that copies the old lists and the new codes
    /// into buffers of the final size.
    fn merge_into_lists(&mut self, first_id: u32, codes: &[u8], assign: &[u32]) {
        let cl = self.encoder.code_len();
        let old = self
            .lists()
            .expect("invariant: a partitioned code set has lists");
        let nlist = old.offsets.len() - 1;
        let mut offsets = vec![0u32; nlist + 1];
        for &a in assign {
            offsets[a as usize + 1] += 1;
        }
        for l in 0..nlist {
            offsets[l + 1] += offsets[l] + old.offsets[l + 1] - old.offsets[l];
        }
        let n = offsets[nlist] as usize;
        let mut new_codes = vec![0u8; n * cl];
        let mut ids = vec![0u32; n];
        let mut fill: Vec<usize> = offsets[..nlist].iter().map(|&o| o as usize).collect();
        let old_codes = self.codes.as_slice();
        for (l, f) in fill.iter_mut().enumerate() {
            let (a, b) = (old.offsets[l] as usize, old.offsets[l + 1] as usize);
            new_codes[*f * cl..(*f + b - a) * cl].copy_from_slice(&old_codes[a * cl..b * cl]);
            ids[*f..*f + b - a].copy_from_slice(&old.ids[a..b]);
            *f += b - a;
        }
        for (j, (&l, c)) in assign.iter().zip(codes.chunks_exact(cl)).enumerate() {
            let f = &mut fill[l as usize];
            new_codes[*f * cl..(*f + 1) * cl].copy_from_slice(c);
            ids[*f] = first_id + j as u32;
            *f += 1;
        }
        let mut c = Bytes::default();
        c.extend(&new_codes);
        drop(new_codes);
        let mut lists = Bytes::default();
        lists.reserve(4 * (nlist + 1 + n));
        lists.extend(bytemuck::cast_slice(&offsets));
        lists.extend(bytemuck::cast_slice(&ids));
        self.codes = c;
        self.lists = Some(lists);
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
    /// Corpus ids of the rows, for an index built from text (row i is `doc_ids[i]`).
    pub(crate) doc_ids: Option<Vec<String>>,
    pub(crate) text_model: Option<TextModel>,
}

impl Index {
    /// Fits every encoder of `spec.pipeline` on `train` and returns an empty index.
    pub fn fit(spec: &IndexSpec, train: VectorsRef<'_>) -> Result<Index> {
        Index::fit_prepared(spec, &spec.metric.prepare(train)?)
    }

    /// [`Index::fit`] on vectors already prepared for `spec.metric`.
    pub fn fit_prepared(spec: &IndexSpec, train: &Prepared<'_>) -> Result<Index> {
        if train.is_empty() {
            return invalid!("cannot fit an index on zero training vectors");
        }
        same_metric(spec.metric, train)?;
        spec.pipeline.check(1)?;
        let train = train.view();
        let mut code_sets = Vec::new();
        for (i, es) in spec.pipeline.encoders().into_iter().enumerate() {
            es.check(train.dim())?;
            let encoder = Encoder::fit_checked(
                es,
                train,
                spec.metric,
                spec.seed.wrapping_add(i as u64 * 7919),
            )?;
            code_sets.push(CodeSet::new(encoder));
        }
        Ok(Index {
            dim: train.dim(),
            metric: spec.metric,
            pipeline: spec.pipeline.clone(),
            seed: spec.seed,
            count: 0,
            code_sets,
            vectors: spec.pipeline.needs_vectors().then(Bytes::default),
            doc_ids: None,
            text_model: None,
        })
    }

    /// Fits on `data`, then adds it (checked and normalised once).
    pub fn build(spec: &IndexSpec, data: VectorsRef<'_>) -> Result<Index> {
        let data = spec.metric.prepare(data)?;
        let mut index = Index::fit_prepared(spec, &data)?;
        index.add_prepared(&data, &mut |_, _| {})?;
        Ok(index)
    }

    /// Encodes and appends `data`; ids continue from the current count.
    pub fn add(&mut self, data: VectorsRef<'_>) -> Result<()> {
        self.check_dim(data.dim())?;
        self.add_prepared(&self.metric.prepare(data)?, &mut |_, _| {})
    }

    /// Appends vectors already prepared for the index's metric, in chunks, calling
    /// `progress(done, total)` after each; buffers are reserved first, so they are not
    /// copied as they grow. An index whose rows carry corpus ids takes new rows only with
    /// theirs ([`Index::add_with_ids`]).
    pub fn add_prepared(
        &mut self,
        data: &Prepared<'_>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<()> {
        if self.doc_ids.is_some() && !data.is_empty() {
            return invalid!(
                "this index names its rows by corpus ids (it was built from text): add texts with their ids, not bare vectors"
            );
        }
        self.add_rows(data, progress)
    }

    /// [`Index::add_prepared`] for rows named by corpus ids (`ids[i]` names row i of `data`):
    /// an empty index starts naming its rows, one that already names them goes on. Ids must
    /// be new, non-empty and free of line breaks; nothing is added if one is not.
    pub fn add_with_ids(
        &mut self,
        data: &Prepared<'_>,
        ids: Vec<String>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<()> {
        if ids.len() != data.len() {
            return invalid!("{} ids for {} vectors", ids.len(), data.len());
        }
        if self.doc_ids.is_none() && self.count > 0 {
            return invalid!(
                "the index's {} rows have no corpus ids, so new rows cannot be named by theirs",
                self.count
            );
        }
        let old = self.doc_ids.as_deref().unwrap_or_default();
        check_ids(old, &ids)?;
        self.add_rows(data, progress)?;
        self.doc_ids.get_or_insert_with(Vec::new).extend(ids);
        Ok(())
    }

    fn add_rows(
        &mut self,
        data: &Prepared<'_>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<()> {
        self.check_dim(data.dim())?;
        same_metric(self.metric, data)?;
        if self.count + data.len() > u32::MAX as usize {
            return invalid!("an index holds at most {} vectors", u32::MAX);
        }
        // Partitioned code sets gather the new codes and their lists, then merge them in once.
        let mut gathered: Vec<Option<(Vec<u8>, Vec<u32>)>> = Vec::new();
        for cs in &mut self.code_sets {
            let more = data.len() * cs.encoder.code_len();
            gathered.push(if cs.lists.is_some() {
                Some((Vec::with_capacity(more), Vec::with_capacity(data.len())))
            } else {
                cs.codes.reserve(more);
                None
            });
        }
        if let Some(v) = &mut self.vectors {
            v.reserve(data.len() * 4 * self.dim);
        }
        const CHUNK: usize = 65536;
        let n = data.len();
        let first_id = self.count as u32;
        for start in (0..n).step_by(CHUNK) {
            let end = (start + CHUNK).min(n);
            let part = data.view().slice(start, end);
            for (cs, g) in self.code_sets.iter_mut().zip(&mut gathered) {
                let codes = cs.encoder.encode_batch(part)?;
                match (g, cs.encoder.coarse()) {
                    (Some((c, a)), Some(coarse)) => {
                        c.extend_from_slice(&codes);
                        a.extend(coarse.assign(part));
                    }
                    _ => cs.codes.extend(&codes),
                }
            }
            if let Some(v) = &mut self.vectors {
                v.extend(bytemuck::cast_slice(part.as_slice()));
            }
            progress(end, n);
        }
        for (cs, g) in self.code_sets.iter_mut().zip(gathered) {
            if let Some((codes, assign)) = g {
                cs.merge_into_lists(first_id, &codes, &assign);
            }
        }
        self.count += n;
        Ok(())
    }

    fn check_dim(&self, got: usize) -> Result<()> {
        if got != self.dim {
            return Err(Error::DimMismatch {
                expected: self.dim,
                got,
            });
        }
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
    /// The corpus id of every row, for an index built from text (row i is `doc_ids()[i]`).
    pub fn doc_ids(&self) -> Option<&[String]> {
        self.doc_ids.as_deref()
    }
    /// The text model the vectors were embedded with, if recorded.
    pub fn text_model(&self) -> Option<&TextModel> {
        self.text_model.as_ref()
    }
    /// Records the text model the vectors were embedded with (saved in the manifest).
    pub fn set_text_model(&mut self, model: Option<TextModel>) {
        self.text_model = model;
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
    /// The facts `rewa info --json` prints (and the server's `/info` and Python's `info()`
    /// answer): counts, specs, bytes per vector; with `dir`, also the files on disk.
    pub fn summary(&self, dir: Option<&std::path::Path>) -> Result<Summary> {
        Ok(Summary {
            count: self.count,
            dim: self.dim,
            metric: self.metric.to_string(),
            pipeline: self.pipeline.to_string(),
            bytes_per_vector: self.bytes_per_vector(),
            code_sets: self
                .code_sets
                .iter()
                .map(|c| format!("{} ({} B)", c.encoder.spec(), c.encoder.code_len()))
                .collect(),
            has_vectors: self.vectors.is_some(),
            has_doc_ids: self.doc_ids.is_some(),
            text_model: self.text_model.clone(),
            disk: dir.map(format::info).transpose()?,
        })
    }
    /// Bytes stored per vector over all code sets (with list ids) and float vectors.
    pub fn bytes_per_vector(&self) -> usize {
        self.code_sets
            .iter()
            .map(CodeSet::bytes_per_vector)
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
        for s in p.stages() {
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

    /// Saves into `dir` (created if missing) crash-safely, taking the directory's writer lock
    /// for the write; fails at once with [`Error::Locked`] if another writer holds it. To
    /// read, change and save an index without another writer in between, take the lock first
    /// ([`WriteLock::acquire`]) and use [`Index::save_locked`].
    pub fn save(&self, dir: &std::path::Path) -> Result<()> {
        self.save_locked(&WriteLock::acquire(dir, std::time::Duration::ZERO)?)
    }
    /// Saves into the directory `lock` holds (see [`format`]).
    pub fn save_locked(&self, lock: &WriteLock) -> Result<()> {
        format::save(self, lock)
    }
    /// Opens an index saved by [`Index::save`], memory-mapping and checking every file.
    pub fn open(dir: &std::path::Path) -> Result<Index> {
        format::open(dir)
    }

    /// Searches one query.
    pub fn search(&self, query: &[f32], params: &SearchParams) -> Result<Vec<Hit>> {
        self.check_dim(query.len())?;
        let q = VectorsRef::new(self.dim, query)?;
        Ok(self.search_batch(q, params)?.pop().unwrap_or_default())
    }

    /// Searches many queries on the current rayon pool (the global one unless called inside
    /// `ThreadPool::install`; see [`Index::search_batch_on`]). Returns up to `k` hits per
    /// query, best first.
    pub fn search_batch(
        &self,
        queries: VectorsRef<'_>,
        params: &SearchParams,
    ) -> Result<Vec<Vec<Hit>>> {
        self.check_dim(queries.dim())?;
        self.search_prepared(&self.metric.prepare(queries)?, params)
    }

    /// [`Index::search_batch`] on a thread pool the caller chooses: a server answering
    /// concurrent requests gives each a small pool (or one thread) instead of letting every
    /// single query spread over all cores.
    pub fn search_batch_on(
        &self,
        pool: &rayon::ThreadPool,
        queries: VectorsRef<'_>,
        params: &SearchParams,
    ) -> Result<Vec<Vec<Hit>>> {
        pool.install(|| self.search_batch(queries, params))
    }

    /// [`Index::search_batch`] for queries already prepared for the index's metric.
    pub fn search_prepared(
        &self,
        queries: &Prepared<'_>,
        params: &SearchParams,
    ) -> Result<Vec<Vec<Hit>>> {
        let pipeline = params.pipeline.as_ref().unwrap_or(&self.pipeline);
        self.check_pipeline(pipeline, params.k)?;
        self.check_dim(queries.dim())?;
        same_metric(self.metric, queries)?;
        if self.count == 0 {
            return Ok(vec![Vec::new(); queries.len()]);
        }
        let stages = pipeline
            .stages()
            .iter()
            .map(|st| Ok((self.scored(st)?, st.keep)))
            .collect::<Result<Vec<_>>>()?;
        Ok(run_stages(&stages, queries.view(), params.k))
    }

    /// What a stage of this index scores with.
    fn scored(&self, stage: &Stage) -> Result<Scored<'_>> {
        Ok(match &stage.scorer {
            Scorer::Exact => Scored::Exact {
                vectors: self.vectors().ok_or_else(|| {
                    Error::InvalidInput(
                        "an exact stage needs float vectors, and the index stores none".into(),
                    )
                })?,
                metric: self.metric,
            },
            Scorer::Codes(spec) => {
                let cs = self.code_set(spec)?;
                match (cs.lists(), stage.nprobe) {
                    (Some(lists), Some(nprobe)) => Scored::Partitioned {
                        encoder: &cs.encoder,
                        codes: cs.codes(),
                        lists,
                        nprobe,
                    },
                    _ => Scored::Codes {
                        encoder: &cs.encoder,
                        codes: cs.codes(),
                    },
                }
            }
        })
    }
}

/// Fails unless every one of `new` is non-empty, free of line breaks, and in neither `old` nor
/// earlier in `new`.
fn check_ids(old: &[String], new: &[String]) -> Result<()> {
    let mut seen: std::collections::HashSet<&str> = old.iter().map(String::as_str).collect();
    for (i, id) in new.iter().enumerate() {
        if id.is_empty() || id.contains(['\n', '\r']) {
            return invalid!("id {} ({id:?}) is empty or holds a line break", i + 1);
        }
        if !seen.insert(id) {
            return invalid!("id {id:?} names two rows (ids must be unique)");
        }
    }
    Ok(())
}

fn same_metric(metric: Metric, v: &Prepared<'_>) -> Result<()> {
    if v.metric() != metric {
        return invalid!(
            "vectors prepared for {} given to an index of metric {metric}",
            v.metric()
        );
    }
    Ok(())
}
