//! [`Index`]: fitted encoders, their codes, optional float vectors, and a default pipeline.
//!
//! `Index` is a struct, not a trait: one layout (segments of rows, each holding every
//! encoder's codes). Files live in [`format`](mod@format); nothing else reads or writes index bytes.

mod bytes;
pub mod format;

pub(crate) use bytes::Bytes;
pub use format::{check_build_target, crash_test_pause, WriteLock};

/// Settings of [`Index::build_from_file`].
#[derive(Clone, Debug)]
pub struct StreamOptions {
    /// Rows the encoders are fitted on: a seeded sample when the input holds more.
    pub train_sample: usize,
    /// Rows read, encoded and written at a time.
    pub chunk: usize,
}

impl Default for StreamOptions {
    /// 262,144 training rows, chunks of 65,536.
    fn default() -> Self {
        StreamOptions {
            train_sample: 1 << 18,
            chunk: 1 << 16,
        }
    }
}

use crate::distance::Metric;
use crate::encode::{Encoder, EncoderSpec};
use crate::error::{invalid, Error, Result};
use crate::pipeline::{Pipeline, Scorer, SearchParams, Stage};
use crate::rows::{Deleted, ListLayout, ListsRef, RowPart, Rows};
use crate::search::{run_stages_counted, Scored};
use crate::topk::Hit;
use crate::vectors::{Prepared, VectorsRef};
use std::sync::OnceLock;

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
    /// The arithmetic of the model's linear layers when the documents were embedded: `f32`
    /// or `int8` (queries given as text are embedded the same way). Not written for `f32`,
    /// so such an index reads as before; an index from before int8 existed is `f32`.
    #[serde(default = "f32_name", skip_serializing_if = "is_f32")]
    pub precision: String,
}

fn f32_name() -> String {
    "f32".into()
}

fn is_f32(p: &str) -> bool {
    p == "f32"
}

/// An index's facts, as [`Index::summary`] gives them.
#[derive(serde::Serialize, Clone, Debug)]
pub struct Summary {
    /// Vectors held and not deleted.
    pub count: usize,
    /// Their dimension.
    pub dim: usize,
    /// The metric's name.
    pub metric: String,
    /// The default pipeline.
    pub pipeline: String,
    /// Bytes stored per vector (codes and float vectors).
    pub bytes_per_vector: usize,
    /// Bytes a search keeps in memory: every code set (with its lists and the fast-scan
    /// layout of a partitioned one), row ids, tombstones and the fitted parameters.
    pub resident_bytes: u64,
    /// Bytes of float vectors: on disk (memory-mapped), read a candidate row at a time by an
    /// exact rerank, so they need not fit in memory.
    pub vector_bytes: u64,
    /// Each code set's spec and code length, as `spec (n B)`.
    pub code_sets: Vec<String>,
    /// Whether float vectors are stored (for `exact` stages).
    pub has_vectors: bool,
    /// Whether rows carry the corpus ids they were built from (hits then name documents).
    pub has_doc_ids: bool,
    /// Segments (runs of rows written together; `rewa compact` makes one).
    pub segments: usize,
    /// Deleted ids still held (their rows go at the next compaction).
    pub deleted: usize,
    /// The id the next added vector gets.
    pub next_id: usize,
    /// The text model the vectors were embedded with, for an index built from text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_model: Option<TextModel>,
    /// Format version and files, for a saved index.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub disk: Option<format::IndexInfo>,
}

/// A run of rows written together: their codes for every encoder, their float vectors, and
/// their ids. `add` writes a new segment (or grows one not yet saved), so a save writes only
/// what changed; `compact` (and the merging of small tail segments) rewrites segments without
/// their deleted rows.
#[derive(Clone, Debug)]
pub struct Segment {
    pub(crate) rows: usize,
    /// Row `j` has id `start + j`, unless `ids` is given.
    pub(crate) start: u32,
    /// u32 ids, ascending, for a segment compacted with gaps.
    pub(crate) ids: Option<Bytes>,
    /// Per encoder: `rows * code_len` bytes, in row order, or in list order when partitioned.
    pub(crate) codes: Vec<Bytes>,
    /// Per encoder: for a partitioned one, `nlist + 1` offsets then one row number per code
    /// (u32 each).
    pub(crate) lists: Vec<Option<Bytes>>,
    /// `rows * 4 * dim` bytes of f32, when the index stores vectors.
    pub(crate) vectors: Option<Bytes>,
    /// Per encoder: a partitioned one's codes laid out for its quantizer's blocked list
    /// kernel, made at the first search that probes them (`None` inside: no such kernel).
    pub(crate) layouts: Vec<OnceLock<Option<ListLayout>>>,
    /// A streaming build's vectors file, still under its staging name in the index's
    /// directory: the save that first names the segment renames it instead of copying.
    pub(crate) staged: Option<format::Staged>,
    /// The manifest entry it was loaded from or last saved as: a save into the same directory
    /// reuses its files instead of writing them again.
    pub(crate) written: format::Written,
}

impl Segment {
    fn empty(encoders: &[Encoder], start: u32, vectors: bool) -> Segment {
        Segment {
            rows: 0,
            start,
            ids: None,
            codes: encoders.iter().map(|_| Bytes::default()).collect(),
            lists: encoders
                .iter()
                .map(|e| {
                    e.coarse()
                        .map(|c| Bytes::from_u32(&vec![0u32; c.nlist() + 1]))
                })
                .collect(),
            vectors: vectors.then(Bytes::default),
            layouts: encoders.iter().map(|_| OnceLock::new()).collect(),
            staged: None,
            written: Default::default(),
        }
    }
    /// Rows held.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// The id of row `j`.
    pub fn id(&self, j: usize) -> u32 {
        match &self.ids {
            Some(ids) => ids.as_u32()[j],
            None => self.start + j as u32,
        }
    }
    /// The ids of its rows, ascending.
    pub fn ids(&self) -> Vec<u32> {
        (0..self.rows).map(|j| self.id(j)).collect()
    }
    /// Codes of encoder `i`: in row order, or in list order for a partitioned encoder (then
    /// [`Segment::lists`] says which row each is).
    pub fn codes(&self, i: usize) -> &[u8] {
        self.codes[i].as_slice()
    }
    /// The lists of partitioned encoder `i` (their ids are row numbers in this segment).
    pub fn lists(&self, i: usize) -> Option<ListsRef<'_>> {
        let all = self.lists[i].as_ref()?.as_u32();
        let nlist = all.len() - self.rows - 1;
        let (offsets, ids) = all.split_at(nlist + 1);
        Some(ListsRef {
            offsets,
            ids,
            layout: None,
        })
    }
    /// [`Segment::lists`] with the codes' blocked layout for `e`'s list kernel (made once).
    fn lists_laid_out(&self, i: usize, e: &Encoder) -> Option<ListsRef<'_>> {
        let lists = self.lists(i)?;
        let layout = self.layouts[i]
            .get_or_init(|| e.quantizer().layout_lists(self.codes(i), lists.offsets))
            .as_ref();
        Some(ListsRef { layout, ..lists })
    }
    /// Whether it holds `id`.
    fn holds(&self, id: u32) -> bool {
        match &self.ids {
            Some(ids) => ids.as_u32().binary_search(&id).is_ok(),
            None => id >= self.start && ((id - self.start) as usize) < self.rows,
        }
    }
    /// Its smallest id and one past its largest (u64: a damaged manifest must not overflow).
    fn id_bounds64(&self) -> (u64, u64) {
        match &self.ids {
            Some(ids) => {
                let ids = ids.as_u32();
                (
                    ids.first().map_or(self.start as u64, |&f| f as u64),
                    ids.last().map_or(self.start as u64, |&l| l as u64 + 1),
                )
            }
            None => (self.start as u64, self.start as u64 + self.rows as u64),
        }
    }
    /// [`Segment::id_bounds64`] for a segment known to be valid (ids below `u32::MAX`).
    fn id_bounds(&self) -> (u32, u32) {
        let (lo, hi) = self.id_bounds64();
        (lo as u32, hi as u32)
    }
    fn part<'a>(&'a self, data: &'a [u8], lists: Option<ListsRef<'a>>) -> RowPart<'a> {
        RowPart {
            start: self.start,
            ids: self.ids.as_ref().map(|b| b.as_u32()),
            data,
            lists,
        }
    }
    /// Whether adds may grow it in place: built in memory, never saved, ids without gaps.
    fn growable(&self) -> bool {
        self.ids.is_none() && self.written.get().is_none()
    }

    /// Puts the codes of encoder `i` for rows `first_row..` (`codes` in row order, list
    /// `assign[j]` for row `first_row + j`) at the ends of their lists: one pass that copies
    /// the old lists and the new codes into buffers of the final size.
    fn merge_into_lists(
        &mut self,
        i: usize,
        cl: usize,
        first_row: u32,
        codes: &[u8],
        assign: &[u32],
    ) {
        let old_rows = first_row as usize;
        let old_all = self.lists[i]
            .as_ref()
            .expect("invariant: partitioned")
            .as_u32();
        let nlist = old_all.len() - old_rows - 1;
        let (old_off, old_ids) = old_all.split_at(nlist + 1);
        let mut offsets = vec![0u32; nlist + 1];
        for &a in assign {
            offsets[a as usize + 1] += 1;
        }
        for l in 0..nlist {
            offsets[l + 1] += offsets[l] + old_off[l + 1] - old_off[l];
        }
        let n = offsets[nlist] as usize;
        let mut new_codes = vec![0u8; n * cl];
        let mut ids = vec![0u32; n];
        let mut fill: Vec<usize> = offsets[..nlist].iter().map(|&o| o as usize).collect();
        let old_codes = self.codes[i].as_slice();
        for (l, f) in fill.iter_mut().enumerate() {
            let (a, b) = (old_off[l] as usize, old_off[l + 1] as usize);
            new_codes[*f * cl..(*f + b - a) * cl].copy_from_slice(&old_codes[a * cl..b * cl]);
            ids[*f..*f + b - a].copy_from_slice(&old_ids[a..b]);
            *f += b - a;
        }
        for (j, (&l, c)) in assign.iter().zip(codes.chunks_exact(cl)).enumerate() {
            let f = &mut fill[l as usize];
            new_codes[*f * cl..(*f + 1) * cl].copy_from_slice(c);
            ids[*f] = first_row + j as u32;
            *f += 1;
        }
        self.codes[i] = Bytes::from_vec(new_codes);
        self.layouts[i] = OnceLock::new();
        let mut lists = offsets;
        lists.extend_from_slice(&ids);
        self.lists[i] = Some(Bytes::from_u32(&lists));
    }
}

/// Merges `segs` (in id order) into one segment without the rows whose ids are in `deleted`:
/// rows keep their ids (a segment with gaps records them), partitioned codes keep their
/// lists (each list the concatenation of the segments' lists, in order).
fn merge_segments(
    segs: &[Segment],
    encoders: &[Encoder],
    dim: usize,
    deleted: &Deleted,
) -> Segment {
    let mut kept_ids: Vec<u32> = Vec::new();
    // per segment: its rows' new row numbers (u32::MAX when dropped)
    let mut renumber: Vec<Vec<u32>> = Vec::with_capacity(segs.len());
    for s in segs {
        let mut r = Vec::with_capacity(s.rows);
        for j in 0..s.rows {
            let id = s.id(j);
            if deleted.contains(id) {
                r.push(u32::MAX);
            } else {
                r.push(kept_ids.len() as u32);
                kept_ids.push(id);
            }
        }
        renumber.push(r);
    }
    let n = kept_ids.len();
    let start = kept_ids
        .first()
        .copied()
        .unwrap_or_else(|| segs.first().map_or(0, |s| s.id_bounds().0));
    let contiguous = kept_ids
        .last()
        .is_none_or(|&l| (l - start) as usize + 1 == n);
    let rows_of = |bytes: &dyn Fn(&Segment) -> &[u8], row: usize| -> Bytes {
        let mut out = Vec::with_capacity(n * row);
        for (s, r) in segs.iter().zip(&renumber) {
            let data = bytes(s);
            for (j, &to) in r.iter().enumerate() {
                if to != u32::MAX {
                    out.extend_from_slice(&data[j * row..(j + 1) * row]);
                }
            }
        }
        Bytes::from_vec(out)
    };
    let mut codes = Vec::new();
    let mut lists = Vec::new();
    for (i, e) in encoders.iter().enumerate() {
        let cl = e.code_len();
        match e.coarse() {
            None => {
                codes.push(rows_of(&|s: &Segment| s.codes(i), cl));
                lists.push(None);
            }
            Some(c) => {
                let nlist = c.nlist();
                let mut out = Vec::with_capacity(n * cl);
                let mut offsets = vec![0u32; nlist + 1];
                let mut ids = Vec::with_capacity(n);
                for l in 0..nlist {
                    for (s, r) in segs.iter().zip(&renumber) {
                        let lr = s.lists(i).expect("invariant: partitioned");
                        let data = s.codes(i);
                        for p in lr.offsets[l] as usize..lr.offsets[l + 1] as usize {
                            let to = r[lr.ids[p] as usize];
                            if to != u32::MAX {
                                out.extend_from_slice(&data[p * cl..(p + 1) * cl]);
                                ids.push(to);
                            }
                        }
                    }
                    offsets[l + 1] = ids.len() as u32;
                }
                offsets.extend_from_slice(&ids);
                codes.push(Bytes::from_vec(out));
                lists.push(Some(Bytes::from_u32(&offsets)));
            }
        }
    }
    let vectors = segs.first().is_some_and(|s| s.vectors.is_some()).then(|| {
        rows_of(
            &|s: &Segment| s.vectors.as_ref().expect("invariant").as_slice(),
            4 * dim,
        )
    });
    Segment {
        rows: n,
        start,
        ids: (!contiguous).then(|| Bytes::from_u32(&kept_ids)),
        layouts: codes.iter().map(|_| OnceLock::new()).collect(),
        staged: None,
        codes,
        lists,
        vectors,
        written: Default::default(),
    }
}

/// A searchable set of vectors: fitted encoders, and segments of rows holding their codes
/// (and float vectors, for `exact` stages). Ids are insertion positions; deleting leaves the
/// other ids as they were.
#[derive(Clone, Debug)]
pub struct Index {
    pub(crate) dim: usize,
    pub(crate) metric: Metric,
    pub(crate) pipeline: Pipeline,
    pub(crate) seed: u64,
    pub(crate) encoders: Vec<Encoder>,
    pub(crate) segments: Vec<Segment>,
    pub(crate) deleted: Deleted,
    /// The id the next added row gets (ids are never reused).
    pub(crate) next_id: usize,
    pub(crate) has_vectors: bool,
    /// Corpus ids by id, for an index built from text (`doc_ids[id]`; rows removed by
    /// compaction leave an empty string).
    pub(crate) doc_ids: Option<Vec<String>>,
    pub(crate) text_model: Option<TextModel>,
    /// The params file entry the encoders were loaded from or last saved as.
    pub(crate) params_written: format::Written<format::FileEntry>,
    /// The directory and manifest it was opened from or last saved to: a save there checks
    /// that no other writer saved in between.
    pub(crate) origin: format::Written<format::Origin>,
}

/// Rows being appended to a segment, encoder by encoder: a partitioned encoder's codes and
/// lists are gathered over the chunks and merged into its lists once at the end; the others'
/// codes are appended to the segment as they come.
struct Gathered(Vec<Option<(Vec<u8>, Vec<u32>)>>);

impl Gathered {
    /// Room for `n` more rows of every encoder.
    fn new(encoders: &[Encoder], seg: &mut Segment, n: usize) -> Gathered {
        Gathered(
            encoders
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let more = n * e.code_len();
                    if e.coarse().is_some() {
                        Some((Vec::with_capacity(more), Vec::with_capacity(n)))
                    } else {
                        seg.codes[i].reserve(more);
                        None
                    }
                })
                .collect(),
        )
    }
    /// Encodes one chunk of prepared rows with every encoder.
    fn encode(
        &mut self,
        encoders: &[Encoder],
        seg: &mut Segment,
        part: VectorsRef<'_>,
    ) -> Result<()> {
        for (i, (e, g)) in encoders.iter().zip(&mut self.0).enumerate() {
            match (g, e.coarse()) {
                (Some((c, a)), Some(coarse)) => {
                    let assign = coarse.assign(part);
                    let codes = if e.spec().residual {
                        e.encode_batch(coarse.residuals(part, &assign).view())?
                    } else {
                        e.encode_batch(part)?
                    };
                    c.extend_from_slice(&codes);
                    a.extend(assign);
                }
                _ => seg.codes[i].extend(&e.encode_batch(part)?),
            }
        }
        Ok(())
    }
    /// Merges the gathered codes into the lists of their encoders (the new rows start at row
    /// `first_row` of `seg`).
    fn merge(self, encoders: &[Encoder], seg: &mut Segment, first_row: u32) {
        for (i, (e, g)) in encoders.iter().zip(self.0).enumerate() {
            if let Some((codes, assign)) = g {
                seg.merge_into_lists(i, e.code_len(), first_row, &codes, &assign);
            }
        }
    }
}

/// An add merges the last two segments while the last is at least 1/this of the one before.
const TAIL_MERGE_RATIO: usize = 2;

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
        let mut encoders = Vec::new();
        for (i, es) in spec.pipeline.encoders().into_iter().enumerate() {
            es.check(train.dim())?;
            encoders.push(Encoder::fit_checked(
                es,
                train,
                spec.metric,
                spec.seed.wrapping_add(i as u64 * 7919),
            )?);
        }
        Ok(Index {
            dim: train.dim(),
            metric: spec.metric,
            pipeline: spec.pipeline.clone(),
            seed: spec.seed,
            encoders,
            segments: Vec::new(),
            deleted: Deleted::default(),
            next_id: 0,
            has_vectors: spec.pipeline.needs_vectors(),
            doc_ids: None,
            text_model: None,
            params_written: Default::default(),
            origin: Default::default(),
        })
    }

    /// Fits on `data`, then adds it (checked and normalised once).
    pub fn build(spec: &IndexSpec, data: VectorsRef<'_>) -> Result<Index> {
        let data = spec.metric.prepare(data)?;
        let mut index = Index::fit_prepared(spec, &data)?;
        index.add_prepared(&data, &mut |_, _| {})?;
        Ok(index)
    }

    /// Builds an index from a vector file of any size into `lock`'s directory, holding only
    /// the codes and one chunk of vectors in memory: the encoders are fitted on a seeded
    /// sample of `opts.train_sample` rows (of `train`, or of `file`; every row when it holds
    /// no more), then `file` is read, prepared, encoded and appended `opts.chunk` rows at a
    /// time, the float vectors (when a stage needs them) written straight to a staged file in
    /// the directory, which the next save renames into place. `progress(done, total)` after
    /// each chunk. Save it (under the same lock) to make it an index: until then the directory
    /// holds no new manifest, and a kill leaves the old index (or none) and a staged file the
    /// next save deletes.
    pub fn build_from_file(
        spec: &IndexSpec,
        file: &crate::io::VectorFile,
        train: Option<&crate::io::VectorFile>,
        opts: &StreamOptions,
        lock: &WriteLock,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Index> {
        if opts.train_sample == 0 || opts.chunk == 0 {
            return invalid!("the training sample and the chunk need at least one row");
        }
        let src = train.unwrap_or(file);
        if src.dim() != file.dim() {
            return Err(Error::DimMismatch {
                expected: file.dim(),
                got: src.dim(),
            });
        }
        let sample = if src.len() <= opts.train_sample {
            src.read(0, src.len())?
        } else {
            use rand::SeedableRng;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(spec.seed ^ 0x5A3B_1E55);
            let mut rows =
                rand::seq::index::sample(&mut rng, src.len(), opts.train_sample).into_vec();
            rows.sort_unstable();
            src.gather(&rows)?
        };
        let mut index = Index::fit_prepared(spec, &spec.metric.prepare_owned(sample)?)?;
        index.append_streamed(file, opts.chunk, lock, progress)?;
        Ok(index)
    }

    /// Appends the vectors of `file` as [`Index::build_from_file`] writes them: a chunk at a
    /// time, into one new segment whose float vectors are staged in `lock`'s directory (the
    /// directory this index is saved to next), so that an add larger than memory works. The
    /// new segment is not merged with the one before (a merge would hold both in memory):
    /// `compact` merges. Ids continue from [`Index::next_id`].
    pub fn add_from_file(
        &mut self,
        file: &crate::io::VectorFile,
        opts: &StreamOptions,
        lock: &WriteLock,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<()> {
        self.check_bare_vectors(file.len())?;
        if opts.chunk == 0 {
            return invalid!("the chunk needs at least one row");
        }
        self.append_streamed(file, opts.chunk, lock, progress)
    }

    fn append_streamed(
        &mut self,
        file: &crate::io::VectorFile,
        chunk: usize,
        lock: &WriteLock,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<()> {
        self.check_dim(file.dim())?;
        let n = file.len();
        if self.next_id + n > u32::MAX as usize {
            return invalid!("an index holds at most {} vectors", u32::MAX);
        }
        let mut staged = if self.has_vectors {
            Some(format::stage_vectors(lock, self.dim, n)?)
        } else {
            None
        };
        let path = staged.as_ref().map(|s| s.path());
        let result = self.stream_rows(file, chunk, staged.as_mut(), progress);
        let finished = result.and_then(|seg| Ok((seg, staged.map(|s| s.finish()).transpose()?)));
        let (mut seg, vectors) = match finished {
            Ok(x) => x,
            Err(e) => {
                if let Some(p) = path {
                    let _ = std::fs::remove_file(p);
                }
                return Err(e);
            }
        };
        if let Some((bytes, st)) = vectors {
            seg.vectors = Some(bytes);
            seg.staged = Some(st);
        }
        self.next_id += n;
        self.segments.push(seg);
        Ok(())
    }

    /// The rows of `file`, `chunk` at a time, encoded into one new segment (codes in memory,
    /// lists merged once at the end); prepared vectors go to `staged`.
    fn stream_rows(
        &self,
        file: &crate::io::VectorFile,
        chunk: usize,
        mut staged: Option<&mut format::StagedVectors>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Segment> {
        self.check_dim(file.dim())?;
        let n = file.len();
        let mut seg = Segment::empty(&self.encoders, self.next_id as u32, false);
        let mut gathered = Gathered::new(&self.encoders, &mut seg, n);
        for start in (0..n).step_by(chunk) {
            let end = (start + chunk).min(n);
            let part = self.metric.prepare_owned(file.read(start, end)?)?;
            gathered.encode(&self.encoders, &mut seg, part.view())?;
            if let Some(s) = staged.as_deref_mut() {
                s.write(part.view().as_slice())?;
            }
            progress(end, n);
        }
        gathered.merge(&self.encoders, &mut seg, 0);
        seg.rows = n;
        Ok(seg)
    }

    /// Encodes and appends `data`; ids continue from the last id given.
    pub fn add(&mut self, data: VectorsRef<'_>) -> Result<()> {
        self.check_dim(data.dim())?;
        self.add_prepared(&self.metric.prepare(data)?, &mut |_, _| {})
    }

    /// Appends vectors already prepared for the index's metric, in chunks, calling
    /// `progress(done, total)` after each. The rows go into a new segment (or the last one,
    /// if it was never saved), so saving afterwards writes only them. An index whose rows
    /// carry corpus ids takes new rows only with theirs ([`Index::add_with_ids`]).
    pub fn add_prepared(
        &mut self,
        data: &Prepared<'_>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<()> {
        self.check_bare_vectors(data.len())?;
        self.add_rows(data, progress)
    }

    /// Fails when `n` vectors without corpus ids may not be added: the index names its rows
    /// by the corpus ids it was built from.
    fn check_bare_vectors(&self, n: usize) -> Result<()> {
        if self.doc_ids.is_some() && n > 0 {
            return invalid!(
                "this index names its rows by corpus ids (it was built from text): add texts with their ids, not bare vectors"
            );
        }
        Ok(())
    }

    /// [`Index::add_prepared`] for rows named by corpus ids (`ids[i]` names row i of `data`):
    /// an empty index starts naming its rows, one that already names them goes on. Ids must
    /// be new (among the rows not deleted), non-empty and free of line breaks; nothing is
    /// added if one is not.
    pub fn add_with_ids(
        &mut self,
        data: &Prepared<'_>,
        ids: Vec<String>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<()> {
        if ids.len() != data.len() {
            return invalid!("{} ids for {} vectors", ids.len(), data.len());
        }
        self.check_new_doc_ids(&ids, data.len())?;
        self.add_rows(data, progress)?;
        let d = self.doc_ids.get_or_insert_with(Vec::new);
        d.resize(self.next_id - ids.len(), String::new());
        d.extend(ids);
        Ok(())
    }

    /// Fails unless `ids` may name `n` new rows (one each): the index names its rows by
    /// corpus ids (or holds none yet), and each id is non-empty, free of line breaks and new
    /// among the rows not deleted. [`Index::add_with_ids`] checks the same; this lets a
    /// caller refuse before the work of embedding the texts.
    pub fn check_new_doc_ids(&self, ids: &[String], n: usize) -> Result<()> {
        if ids.len() != n {
            return invalid!("{} ids for {n} rows", ids.len());
        }
        if self.doc_ids.is_none() && self.next_id > 0 {
            return invalid!(
                "the index's {} rows have no corpus ids, so new rows cannot be named by theirs",
                self.len()
            );
        }
        let live: Vec<&str> = match &self.doc_ids {
            Some(d) => self.live_ids().map(|i| d[i as usize].as_str()).collect(),
            None => Vec::new(),
        };
        check_ids(&live, ids)
    }

    /// Whether row `id` is held and not deleted (a compaction removes deleted rows, and
    /// forgets their ids).
    pub fn is_live(&self, id: u32) -> bool {
        !self.deleted.contains(id) && self.segments.iter().any(|s| s.holds(id))
    }

    /// Ids of the rows held and not deleted, ascending.
    pub fn live_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.segments
            .iter()
            .flat_map(|s| (0..s.rows).map(|j| s.id(j)))
            .filter(|&i| !self.deleted.contains(i))
    }

    fn add_rows(
        &mut self,
        data: &Prepared<'_>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<()> {
        self.check_dim(data.dim())?;
        same_metric(self.metric, data)?;
        if self.next_id + data.len() > u32::MAX as usize {
            return invalid!("an index holds at most {} vectors", u32::MAX);
        }
        let n = data.len();
        if n == 0 {
            return Ok(());
        }
        let next = self.next_id;
        // Grow the last segment only if its ids run up to next_id: a compacted segment whose
        // last rows were deleted ends below it, and growing it would hand out deleted ids.
        if !self
            .segments
            .last()
            .is_some_and(|s| s.growable() && s.id_bounds().1 as usize == next)
        {
            self.segments.push(Segment::empty(
                &self.encoders,
                self.next_id as u32,
                self.has_vectors,
            ));
        }
        let seg = self.segments.last_mut().expect("invariant: pushed above");
        let first_row = seg.rows as u32;
        let mut gathered = Gathered::new(&self.encoders, seg, n);
        if let Some(v) = &mut seg.vectors {
            v.reserve(n * 4 * self.dim);
        }
        const CHUNK: usize = 65536;
        for start in (0..n).step_by(CHUNK) {
            let end = (start + CHUNK).min(n);
            let part = data.view().slice(start, end);
            gathered.encode(&self.encoders, seg, part)?;
            if let Some(v) = &mut seg.vectors {
                v.extend(bytemuck::cast_slice(part.as_slice()));
            }
            progress(end, n);
        }
        gathered.merge(&self.encoders, seg, first_row);
        seg.rows += n;
        self.next_id += n;
        self.merge_tail();
        Ok(())
    }

    /// Keeps the number of segments logarithmic in the number of adds: while the last segment
    /// is at least half the size of the one before, the two are merged (their deleted rows
    /// dropped), as a log-structured merge does. Appending 1% to a large index merges nothing.
    fn merge_tail(&mut self) {
        while self.segments.len() >= 2 {
            let l = self.segments.len();
            let (a, b) = (&self.segments[l - 2], &self.segments[l - 1]);
            if b.rows * TAIL_MERGE_RATIO < a.rows {
                break;
            }
            let merged = merge_segments(
                &self.segments[l - 2..],
                &self.encoders,
                self.dim,
                &self.deleted,
            );
            let (lo, hi) = (
                self.segments[l - 2].id_bounds().0,
                self.segments[l - 1].id_bounds().1,
            );
            self.forget_deleted_in(lo, hi);
            self.segments.truncate(l - 2);
            self.segments.push(merged);
        }
    }

    /// Drops the deleted ids in `lo..hi` from the deleted set (the segments holding them are
    /// being rewritten without their deleted rows; segments hold disjoint id ranges).
    fn forget_deleted_in(&mut self, lo: u32, hi: u32) {
        if self.deleted.is_empty() {
            return;
        }
        let keep: Vec<u32> = self
            .deleted
            .ids()
            .iter()
            .copied()
            .filter(|&id| id < lo || id >= hi)
            .collect();
        self.deleted = Deleted::new(keep);
    }

    /// Marks `ids` deleted: searches never return them again, and other ids do not change.
    /// Deleting is O(deleted ids): the rows stay in their segments until [`Index::compact`]
    /// (or a merge) rewrites them. Returns how many ids were newly deleted (ids already
    /// deleted or compacted away count 0); an id never given out is an error and nothing is
    /// deleted.
    pub fn delete(&mut self, ids: &[u32]) -> Result<usize> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.next_id) {
            return invalid!(
                "id {bad} was never given out (this index's ids are 0..{})",
                self.next_id
            );
        }
        let new: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&i| !self.deleted.contains(i) && self.segments.iter().any(|s| s.holds(i)))
            .collect::<std::collections::BTreeSet<u32>>()
            .into_iter()
            .collect();
        let n = new.len();
        if n > 0 {
            let mut all = self.deleted.ids().to_vec();
            all.extend(new);
            self.deleted = Deleted::new(all);
        }
        Ok(n)
    }

    /// [`Index::delete`] by corpus ids, for an index built from text; an unknown corpus id is
    /// an error and nothing is deleted.
    pub fn delete_doc_ids(&mut self, doc_ids: &[String]) -> Result<usize> {
        let Some(d) = &self.doc_ids else {
            return invalid!(
                "this index has no corpus ids (it was not built from text): delete by row id"
            );
        };
        let by: std::collections::HashMap<&str, u32> = self
            .live_ids()
            .map(|i| (d[i as usize].as_str(), i))
            .collect();
        let mut ids = Vec::with_capacity(doc_ids.len());
        for x in doc_ids {
            match by.get(x.as_str()) {
                Some(&i) => ids.push(i),
                None => return invalid!("no row has corpus id {x:?} (or it is deleted already)"),
            }
        }
        self.delete(&ids)
    }

    /// Rewrites all segments into one without the deleted rows (ids unchanged).
    pub fn compact(&mut self) {
        if self.segments.len() <= 1 && self.deleted.is_empty() {
            return;
        }
        let merged = merge_segments(&self.segments, &self.encoders, self.dim, &self.deleted);
        self.segments = vec![merged];
        self.deleted = Deleted::default();
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

    /// Number of vectors held and not deleted.
    pub fn len(&self) -> usize {
        self.segments.iter().map(|s| s.rows).sum::<usize>() - self.deleted.len()
    }
    /// `true` if the index holds no vectors (or all are deleted).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The id the next added vector gets.
    pub fn next_id(&self) -> usize {
        self.next_id
    }
    /// The deleted ids still held (until a compaction), ascending.
    pub fn deleted(&self) -> &[u32] {
        self.deleted.ids()
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
    /// The corpus id of every id, for an index built from text (`doc_ids()[id]`).
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
    /// The fitted encoders, in the order the pipeline first names them.
    pub fn encoders(&self) -> &[Encoder] {
        &self.encoders
    }
    /// The segments, in id order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }
    /// Whether float vectors are stored (for `exact` stages).
    pub fn has_vectors(&self) -> bool {
        self.has_vectors
    }
    /// The facts `rewa info --json` prints (and the server's `/info` and Python's `info()`
    /// answer): counts, specs, bytes per vector; with `dir`, also the files on disk.
    pub fn summary(&self, dir: Option<&std::path::Path>) -> Result<Summary> {
        Ok(Summary {
            count: self.len(),
            dim: self.dim,
            metric: self.metric.to_string(),
            pipeline: self.pipeline.to_string(),
            bytes_per_vector: self.bytes_per_vector(),
            resident_bytes: self.resident_bytes(),
            vector_bytes: self
                .segments
                .iter()
                .filter_map(|s| s.vectors.as_ref())
                .map(|v| v.as_slice().len() as u64)
                .sum(),
            code_sets: self
                .encoders
                .iter()
                .map(|e| format!("{} ({} B)", e.spec(), e.code_len()))
                .collect(),
            has_vectors: self.has_vectors,
            has_doc_ids: self.doc_ids.is_some(),
            segments: self.segments.len(),
            deleted: self.deleted.len(),
            next_id: self.next_id,
            text_model: self.text_model.clone(),
            disk: dir.map(format::info).transpose()?,
        })
    }
    /// [`Summary::resident_bytes`].
    pub fn resident_bytes(&self) -> u64 {
        let mut b: u64 = self
            .encoders
            .iter()
            .flat_map(|e| e.tensors())
            .map(|(_, t)| t.shape.iter().product::<usize>() as u64 * 4)
            .sum();
        b += 4 * self.deleted.len() as u64;
        for s in &self.segments {
            b += s.ids.as_ref().map_or(0, |i| i.as_slice().len() as u64);
            for (i, e) in self.encoders.iter().enumerate() {
                b += s.codes(i).len() as u64;
                if let Some(l) = s.lists(i) {
                    b += 4 * (l.offsets.len() + l.ids.len()) as u64;
                    // the list kernel's copy of the codes, if it has one
                    b += l
                        .offsets
                        .windows(2)
                        .map(|w| e.quantizer().laid_list_bytes((w[1] - w[0]) as usize) as u64)
                        .sum::<u64>();
                }
            }
        }
        b
    }
    /// Bytes stored per vector over all code sets (with list ids) and float vectors.
    pub fn bytes_per_vector(&self) -> usize {
        self.encoders.iter().map(encoder_bytes).sum::<usize>()
            + if self.has_vectors { 4 * self.dim } else { 0 }
    }

    fn encoder_index(&self, spec: &EncoderSpec) -> Result<usize> {
        self.encoders
            .iter()
            .position(|e| e.spec() == spec)
            .ok_or_else(|| {
                let have: Vec<String> =
                    self.encoders.iter().map(|e| e.spec().to_string()).collect();
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
                Scorer::Exact if !self.has_vectors => {
                    return invalid!(
                        "pipeline {p} has an exact stage, but the index stores no float vectors"
                    );
                }
                Scorer::Exact => {}
                Scorer::Codes(spec) => {
                    self.encoder_index(spec)?;
                }
            }
        }
        Ok(())
    }

    /// Saves into `dir` (created if missing) crash-safely, taking the directory's writer lock
    /// for the write; fails at once with [`Error::Locked`] if another writer holds it. To
    /// read, change and save an index without another writer in between, take the lock first
    /// ([`WriteLock::acquire`]) and use [`Index::save_locked`]. Segments already saved in
    /// `dir` are not written again.
    ///
    /// An index opened from `dir` (or saved there last) is saved only if the directory still
    /// holds the generation it read: if another writer (`rewa add`, the server, another
    /// `Index`) saved in between, this fails with [`Error::Stale`] and writes nothing, since
    /// saving would drop that writer's rows and deletions and give their ids out again. Open
    /// the directory again and re-apply the changes. An index that came from elsewhere (built
    /// in memory, or opened from another directory) replaces what `dir` holds; callers that
    /// must not replace an index ask [`check_build_target`] first.
    pub fn save(&self, dir: &std::path::Path) -> Result<()> {
        self.save_locked(&WriteLock::acquire(dir, std::time::Duration::ZERO)?)
    }
    /// [`Index::save`] into the directory `lock` holds (see [`format`](mod@format)).
    pub fn save_locked(&self, lock: &WriteLock) -> Result<()> {
        format::save(self, lock, false)
    }
    /// [`Index::save_locked`] without the generation check: replaces whatever index the
    /// directory holds by this one, also when it is a stale copy of it (the caller asked
    /// for the replacement, as `force=True` does in Python). Ids the directory gave out
    /// since this index was read may then be given out again.
    pub fn replace_locked(&self, lock: &WriteLock) -> Result<()> {
        format::save(self, lock, true)
    }
    /// Whether this index was opened from `dir` or last saved there (a save there is then an
    /// update, checked against the generation it read, rather than a replacement).
    pub fn is_from(&self, dir: &std::path::Path) -> bool {
        self.origin
            .get()
            .is_some_and(|o| o.dir == format::dir_key(dir))
    }
    /// The generation of the directory's manifest this index was opened at or last saved
    /// as (`None` for an index never opened or saved).
    pub fn generation(&self) -> Option<u64> {
        self.origin.get().map(|o| o.generation)
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
        Ok(self.search_counted(queries, params)?.0)
    }

    /// Makes ready what a search with `pipeline` (the index's default when `None`) needs
    /// before its first query: the list layouts of a partitioned first stage, which the
    /// first search that probes them would otherwise build (for 10M codes of 96 bytes,
    /// about a second). Errors as that search would.
    pub fn warm(&self, pipeline: Option<&Pipeline>) -> Result<()> {
        let pipeline = pipeline.unwrap_or(&self.pipeline);
        if let Some(first) = pipeline.stages().first() {
            self.scored(first)?;
        }
        Ok(())
    }

    /// [`Index::search_prepared`] one query at a time, as single requests arrive at a server
    /// (each query still uses the current rayon pool: a pool of one thread measures one core's
    /// latency): the hits, and each query's latency.
    pub fn search_one_at_a_time(
        &self,
        queries: &Prepared<'_>,
        params: &SearchParams,
    ) -> Result<(Vec<Vec<Hit>>, crate::latency::Latencies)> {
        let mut hits = Vec::with_capacity(queries.len());
        let mut secs = Vec::with_capacity(queries.len());
        for i in 0..queries.len() {
            let t = std::time::Instant::now();
            hits.extend(self.search_prepared(&queries.slice(i, i + 1), params)?);
            secs.push(t.elapsed().as_secs_f64());
        }
        Ok((hits, crate::latency::Latencies::new(secs)))
    }

    /// [`Index::search_prepared`], also counting the hits each stage passed on (summed over
    /// the queries): how many candidates each rerank saw.
    pub fn search_counted(
        &self,
        queries: &Prepared<'_>,
        params: &SearchParams,
    ) -> Result<(Vec<Vec<Hit>>, Vec<usize>)> {
        let pipeline = params.pipeline.as_ref().unwrap_or(&self.pipeline);
        self.check_pipeline(pipeline, params.k)?;
        self.check_dim(queries.dim())?;
        same_metric(self.metric, queries)?;
        if self.is_empty() {
            return Ok((
                vec![Vec::new(); queries.len()],
                vec![0; pipeline.stages().len()],
            ));
        }
        let stages = pipeline
            .stages()
            .iter()
            .map(|st| Ok((self.scored(st)?, st.keep)))
            .collect::<Result<Vec<_>>>()?;
        let filter = params
            .filter
            .as_ref()
            .map(|f| f.without(&self.deleted, self.next_id() as u32));
        Ok(run_stages_counted(
            &stages,
            queries.view(),
            params.k,
            &self.deleted,
            filter.as_ref(),
        ))
    }

    /// What a stage of this index scores with.
    fn scored(&self, stage: &Stage) -> Result<Scored<'_>> {
        Ok(match &stage.scorer {
            Scorer::Exact => {
                if !self.has_vectors {
                    return invalid!(
                        "an exact stage needs float vectors, and the index stores none"
                    );
                }
                Scored::Exact {
                    vectors: Rows::new(
                        4 * self.dim,
                        self.segments
                            .iter()
                            .filter(|s| s.rows > 0)
                            .map(|s| {
                                s.part(s.vectors.as_ref().expect("invariant").as_slice(), None)
                            })
                            .collect(),
                    ),
                    dim: self.dim,
                    metric: self.metric,
                }
            }
            Scorer::Codes(spec) => {
                let i = self.encoder_index(spec)?;
                let e = &self.encoders[i];
                Scored::Codes {
                    encoder: e,
                    codes: Rows::new(
                        e.code_len(),
                        self.segments
                            .iter()
                            .filter(|s| s.rows > 0)
                            .map(|s| {
                                // a bound stage scans its lists through `scan_bound`,
                                // which reads the codes as stored: no layout for it
                                let lists = if stage.nprobe.is_some() && stage.bound.is_none() {
                                    s.lists_laid_out(i, e)
                                } else {
                                    s.lists(i)
                                };
                                s.part(s.codes(i), lists)
                            })
                            .collect(),
                    ),
                    nprobe: stage.nprobe,
                    bound: stage.bound.map(|e| e as f32 / 100.0),
                }
            }
        })
    }
}

/// Bytes held per vector for an encoder: the code, plus its row number in the lists of a
/// partitioned one.
pub fn encoder_bytes(e: &Encoder) -> usize {
    e.code_len() + if e.coarse().is_some() { 4 } else { 0 }
}

/// Fails unless every one of `new` is non-empty, free of line breaks, and in neither `old` nor
/// earlier in `new`.
fn check_ids(old: &[&str], new: &[String]) -> Result<()> {
    let mut seen: std::collections::HashSet<&str> = old.iter().copied().collect();
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
