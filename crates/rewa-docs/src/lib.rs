//! Documents beside a rewa index: each row's stored fields, filters over them, and BM25 over
//! their text, kept in a tantivy index in the index directory's `docs/` folder.
//!
//! One tantivy document per rewa row: `row` (the id), `text` (BM25: the record's `title` and
//! `text` when it has either, else every string value), `f` (the fields, indexed for
//! filters) and `src` (the record as given, returned with hits).
//!
//! **Agreement with the vectors after a crash.** tantivy may hold more rows than the rewa
//! index, never fewer: an add commits its documents before rewa saves its manifest, a delete
//! saves rewa's tombstones before removing documents. Each commit records what it
//! corresponds to (`next_id`, the deleted ids) in tantivy's commit payload; readers show only
//! rows below the index's `next_id` and not deleted, and every writer first makes the
//! documents agree with the manifest ([`Docs::sync`]), so a kill at any point leaves nothing
//! a search can see that the vectors do not have, and the next write repairs the rest.

mod filter;
mod search;
mod store;

pub use filter::{Condition, FieldCondition, Filter, Match, Range, Scalar};
pub use search::{
    fields_of, filter_stores, rrf, search, search_stores, weighted, Fusion, Mode, Query,
    HYBRID_DEPTH, RRF_K,
};
pub use store::{
    clear, open_for_write, read_records, save_add, save_build, save_build_with, save_compact,
    save_delete, text_records,
};

use rewa::RowFilter;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tantivy::collector::{Collector, SegmentCollector, TopDocs};
use tantivy::query::{QueryParser, RangeQuery};
use tantivy::schema::{
    Field, IndexRecordOption, JsonObjectOptions, Schema, TextFieldIndexing, Value as _, FAST,
    INDEXED, STORED, TEXT,
};
use tantivy::{DocAddress, DocId, IndexReader, IndexWriter, Score, SegmentOrdinal, SegmentReader};
use tantivy::{TantivyDocument, Term};

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filter that is not valid for this index (syntax, unknown field, wrong type).
    #[error("{0}")]
    Filter(String),
    /// Records or requests that do not fit.
    #[error("{0}")]
    Invalid(String),
    /// The document store.
    #[error("documents: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    /// The vector index.
    #[error(transparent)]
    Rewa(#[from] rewa::Error),
    /// A file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// This crate's result.
pub type Result<T> = std::result::Result<T, Error>;

/// The kinds of value a field holds (a field may hold several).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Strings (matched exactly).
    String,
    /// Numbers (matched and ranged as 64-bit floats).
    Number,
    /// true / false.
    Bool,
    /// RFC 3339 date strings (ranged as dates).
    Date,
    /// Strings longer than [`MAX_KEYWORD`] bytes: stored and searched by BM25, not matched
    /// by filters.
    Text,
}

/// The longest string a filter matches (bytes); longer ones (abstracts, bodies) are kept and
/// searched by BM25 but not indexed for filters, which would double the store's size.
pub const MAX_KEYWORD: usize = 256;

impl Kind {
    /// Its name in messages.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::String => "strings",
            Kind::Number => "numbers",
            Kind::Bool => "booleans",
            Kind::Date => "dates",
            Kind::Text => "long texts",
        }
    }
}

/// What the documents correspond to: tantivy's commit payload.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct State {
    /// Rows `0..next_id` have a document.
    next_id: u32,
    /// The deleted rows whose documents are gone: their count and CRC.
    deleted: usize,
    deleted_crc: u32,
    /// Every field key (dotted paths) and the kinds of value it holds.
    fields: BTreeMap<String, BTreeSet<Kind>>,
}

fn crc(ids: &[u32]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for i in ids {
        h.update(&i.to_le_bytes());
    }
    h.finalize()
}

/// One record to store with a row: its fields, and the text BM25 indexes (`None`: the
/// fields' `title` and `text`, or every string value).
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// The fields, as given.
    pub fields: Map<String, Value>,
    /// BM25 text, when not taken from the fields.
    pub text: Option<String>,
}

impl Record {
    /// A record of these fields.
    pub fn new(fields: Map<String, Value>) -> Record {
        Record { fields, text: None }
    }
    /// The text BM25 indexes.
    fn bm25_text(&self) -> String {
        if let Some(t) = &self.text {
            return t.clone();
        }
        let s = |k: &str| self.fields.get(k).and_then(Value::as_str);
        if s("title").is_some() || s("text").is_some() {
            return [s("title"), s("text")]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
        }
        let mut out = Vec::new();
        collect_strings(&Value::Object(self.fields.clone()), &mut out);
        out.join(" ")
    }
}

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| collect_strings(x, out)),
        _ => {}
    }
}

/// Fails unless every record can be stored (the checks [`Docs::add`] makes), naming the first
/// bad one: front ends call it before adding rows.
pub fn check_records(records: &[Map<String, Value>]) -> Result<()> {
    let mut fields = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        kinds_of("", &Value::Object(r.clone()), &mut fields, false)
            .map_err(|e| Error::Invalid(format!("record {}: {e}", i + 1)))?;
    }
    Ok(())
}

/// Records the kinds of every (dotted) key of `v`; fails on a value a filter cannot use
/// (null inside a list, a list of lists).
fn kinds_of(
    prefix: &str,
    v: &Value,
    fields: &mut BTreeMap<String, BTreeSet<Kind>>,
    in_list: bool,
) -> Result<()> {
    let mut add = |k: Kind| {
        fields.entry(prefix.to_string()).or_default().insert(k);
    };
    match v {
        Value::String(s) if s.len() > MAX_KEYWORD => add(Kind::Text),
        Value::String(s) => add(if filter::date(s).is_some() {
            Kind::Date
        } else {
            Kind::String
        }),
        Value::Number(_) => add(Kind::Number),
        Value::Bool(_) => add(Kind::Bool),
        Value::Null => {}
        Value::Array(a) => {
            if in_list {
                return Err(Error::Invalid(format!(
                    "field {prefix:?} holds a list inside a list (lists of strings, numbers or booleans are kept)"
                )));
            }
            for x in a {
                kinds_of(prefix, x, fields, true)?;
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                if k.is_empty() || k.contains('.') {
                    return Err(Error::Invalid(format!(
                        "field name {k:?}{}: names must be non-empty and without '.' (a '.' reaches into a nested object in filters)",
                        if prefix.is_empty() { String::new() } else { format!(" in {prefix:?}") }
                    )));
                }
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                kinds_of(&p, x, fields, in_list)?;
            }
        }
    }
    Ok(())
}

/// What filters index of a record: numbers as 64-bit floats (so that a filter's `5` and a
/// stored `5.0` are one value), strings up to [`MAX_KEYWORD`] bytes.
fn numbers_as_floats(v: &Value) -> Value {
    match v {
        Value::String(s) if s.len() > MAX_KEYWORD => Value::Null,
        Value::Number(n) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        Value::Array(a) => Value::Array(a.iter().map(numbers_as_floats).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), numbers_as_floats(x)))
                .collect(),
        ),
        x => x.clone(),
    }
}

#[derive(Clone, Copy)]
struct Fields {
    row: Field,
    text: Field,
    f: Field,
    src: Field,
}

fn schema() -> (Schema, Fields) {
    let mut sb = Schema::builder();
    let row = sb.add_u64_field("row", INDEXED | FAST);
    let text = sb.add_text_field("text", TEXT);
    let f = sb.add_json_field(
        "f",
        JsonObjectOptions::default()
            .set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer("raw")
                    .set_index_option(IndexRecordOption::Basic),
            )
            .set_fast("raw"),
    );
    let src = sb.add_text_field("src", STORED);
    (sb.build(), Fields { row, text, f, src })
}

/// The documents of one rewa index.
pub struct Docs {
    dir: PathBuf,
    index: tantivy::Index,
    reader: IndexReader,
    s: Fields,
    state: State,
}

impl std::fmt::Debug for Docs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Docs")
            .field("dir", &self.dir)
            .field("next_id", &self.state.next_id)
            .finish()
    }
}

/// Memory for tantivy's writer (it splits it between its threads; at least 15 MB each).
const WRITER_BYTES: usize = 64 << 20;

impl Docs {
    /// Where an index directory keeps its documents.
    pub fn path(index_dir: &Path) -> PathBuf {
        index_dir.join("docs")
    }

    /// Whether the index in `index_dir` has documents.
    pub fn exists(index_dir: &Path) -> bool {
        Docs::path(index_dir).join("meta.json").is_file()
    }

    /// New, empty documents for a new index in `index_dir` (replacing any there: call it
    /// under the index's write lock, when building).
    pub fn create(index_dir: &Path) -> Result<Docs> {
        let dir = Docs::path(index_dir);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?;
        }
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        let (schema, s) = schema();
        let index = tantivy::Index::create_in_dir(&dir, schema)?;
        let reader = index.reader()?;
        Ok(Docs {
            dir,
            index,
            reader,
            s,
            state: State::default(),
        })
    }

    /// New, empty documents in memory (an index not saved yet: its records are written to a
    /// directory when it is).
    pub fn create_in_ram() -> Docs {
        Docs::create_in_ram_at(0)
    }

    /// [`Docs::create_in_ram`] for rows from `first` on (the records added to an index since
    /// it was saved).
    pub fn create_in_ram_at(first: u32) -> Docs {
        let (schema, s) = schema();
        let index = tantivy::Index::create_in_ram(schema);
        let reader = index.reader().expect("a reader of an index in memory");
        Docs {
            dir: PathBuf::new(),
            index,
            reader,
            s,
            state: State {
                next_id: first,
                ..State::default()
            },
        }
    }

    /// The documents of the index in `index_dir`, if it has any.
    pub fn open(index_dir: &Path) -> Result<Option<Docs>> {
        // a build replacing the index was killed: the store that goes with the manifest
        let Some(dir) = store::live_store(index_dir) else {
            return Ok(None);
        };
        if !dir.join("meta.json").is_file() {
            return Ok(None);
        }
        let index = tantivy::Index::open_in_dir(&dir)?;
        let (want, _) = schema();
        if index.schema() != want {
            return Err(Error::Invalid(format!(
                "{}: not a rewa document store (its schema differs)",
                dir.display()
            )));
        }
        let (_, s) = schema();
        let state = read_state(&index)?;
        let reader = index
            .reader_builder()
            .reload_policy(tantivy::ReloadPolicy::Manual)
            .try_into()?;
        Ok(Some(Docs {
            dir,
            index,
            reader,
            s,
            state,
        }))
    }

    /// The fields the documents hold (dotted keys) and the kinds of value in each.
    pub fn fields(&self) -> &BTreeMap<String, BTreeSet<Kind>> {
        &self.state.fields
    }

    /// Rows `0..next_id()` have a document (the index may not have saved the last ones).
    pub fn next_id(&self) -> u32 {
        self.state.next_id
    }

    fn writer(&self) -> Result<IndexWriter> {
        let w: IndexWriter = self.index.writer_with_num_threads(1, WRITER_BYTES)?;
        w.set_merge_policy(Box::new(tantivy::indexer::NoMergePolicy));
        Ok(w)
    }

    fn commit(&mut self, mut w: IndexWriter, state: State) -> Result<()> {
        let mut pc = w.prepare_commit()?;
        pc.set_payload(&serde_json::to_string(&state).expect("state serialises"));
        pc.commit()?;
        w.wait_merging_threads()?;
        // the commit renamed meta.json: make the rename itself durable
        if !self.dir.as_os_str().is_empty() {
            sync_dir(&self.dir)?;
        }
        self.state = state;
        self.reader.reload()?;
        Ok(())
    }

    /// Makes the documents agree with the index's manifest (`next_id`, the deleted ids):
    /// removes the documents of rows a killed add left beyond `next_id` and of deleted rows a
    /// killed delete left. Safe to repeat; every writer calls it first, under the index's
    /// write lock. Fails if the documents lack rows the index holds.
    pub fn sync(&mut self, next_id: u32, deleted: &[u32]) -> Result<()> {
        let want_crc = crc(deleted);
        if self.state.next_id == next_id
            && self.state.deleted == deleted.len()
            && self.state.deleted_crc == want_crc
        {
            return Ok(());
        }
        if self.state.next_id < next_id {
            return Err(Error::Invalid(format!(
                "{}: documents for rows up to {} only, but the index holds rows up to {next_id} (add rows through the document-aware commands)",
                self.dir.display(),
                self.state.next_id
            )));
        }
        let w = self.writer()?;
        w.delete_query(Box::new(RangeQuery::new(
            std::ops::Bound::Included(Term::from_field_u64(self.s.row, next_id as u64)),
            std::ops::Bound::Unbounded,
        )))?;
        for &id in deleted {
            w.delete_term(Term::from_field_u64(self.s.row, id as u64));
        }
        let state = State {
            next_id,
            deleted: deleted.len(),
            deleted_crc: want_crc,
            fields: self.state.fields.clone(),
        };
        self.commit(w, state)
    }

    /// Stores `records` as rows `first..first + records.len()` and commits (the index must
    /// save those rows after this returns; until it does, readers do not show them). Every
    /// record must be a JSON object of strings, numbers, booleans, nulls, lists of those and
    /// nested objects.
    pub fn add(&mut self, first: u32, records: &[Record], deleted: &[u32]) -> Result<()> {
        if first != self.state.next_id {
            return Err(Error::Invalid(format!(
                "documents end at row {}, not {first}: sync them with the index first",
                self.state.next_id
            )));
        }
        let mut fields = self.state.fields.clone();
        for (i, r) in records.iter().enumerate() {
            kinds_of("", &Value::Object(r.fields.clone()), &mut fields, false).map_err(|e| {
                Error::Invalid(format!(
                    "record {} (row {}): {e}",
                    i + 1,
                    first as usize + i
                ))
            })?;
        }
        let schema = self.index.schema();
        let w = self.writer()?;
        for (i, r) in records.iter().enumerate() {
            let doc = serde_json::json!({
                "row": first as u64 + i as u64,
                "text": r.bm25_text(),
                "f": numbers_as_floats(&Value::Object(r.fields.clone())),
                "src": Value::Object(r.fields.clone()).to_string(),
            });
            let d = TantivyDocument::parse_json(&schema, &doc.to_string())
                .map_err(|e| Error::Invalid(format!("record {}: {e}", i + 1)))?;
            w.add_document(d)?;
        }
        let state = State {
            next_id: first + records.len() as u32,
            deleted: deleted.len(),
            deleted_crc: crc(deleted),
            fields,
        };
        self.commit(w, state)
    }

    /// Removes the documents of `rows`, after the index saved them deleted (`deleted`: all
    /// its deleted ids now).
    pub fn delete(&mut self, rows: &[u32], deleted: &[u32]) -> Result<()> {
        let w = self.writer()?;
        for &id in rows {
            w.delete_term(Term::from_field_u64(self.s.row, id as u64));
        }
        let state = State {
            next_id: self.state.next_id,
            deleted: deleted.len(),
            deleted_crc: crc(deleted),
            fields: self.state.fields.clone(),
        };
        self.commit(w, state)
    }

    /// Records the index's deleted ids after a compaction dropped them (the documents were
    /// removed when the rows were deleted).
    pub fn compacted(&mut self, deleted: &[u32]) -> Result<()> {
        let w = self.writer()?;
        let state = State {
            deleted: deleted.len(),
            deleted_crc: crc(deleted),
            ..self.state.clone()
        };
        self.commit(w, state)
    }

    /// Re-reads the store (after another process wrote it).
    pub fn reload(&mut self) -> Result<()> {
        self.reader.reload()?;
        self.state = read_state(&self.index)?;
        Ok(())
    }

    /// The rows `filter` allows (before the index's own deletes and `next_id` are applied);
    /// an error names a key the documents do not hold or a value of the wrong kind.
    pub fn filter(&self, filter: &Filter) -> Result<RowFilter> {
        filter.check(&self.state.fields)?;
        self.matching(filter, &self.state.fields)
    }

    /// The rows `filter` allows, its keys read with the kinds in `fields` (checked by the
    /// caller: several stores searched together check against all their fields).
    pub fn matching(
        &self,
        filter: &Filter,
        fields: &BTreeMap<String, BTreeSet<Kind>>,
    ) -> Result<RowFilter> {
        let q = filter.to_query(self.s.f, fields);
        let searcher = self.reader.searcher();
        let bits = searcher.search(&*q, &RowBits)?;
        Ok(RowFilter::from_bits(bits))
    }

    /// BM25's best `k` rows for `text`, among `allowed` (all when `None`) and `live`, as
    /// hits with distance `-score`, ties by row. Query text is read leniently: words are
    /// ORed, Lucene syntax (`"a phrase"`, `+must`, `-not`, `field:`) is honoured where valid.
    pub fn bm25(
        &self,
        text: &str,
        k: usize,
        allowed: Option<&RowFilter>,
        live: &dyn Fn(u32) -> bool,
    ) -> Result<Vec<rewa::Hit>> {
        let qp = QueryParser::for_index(&self.index, vec![self.s.text]);
        let (q, _errors) = qp.parse_query_lenient(text);
        let searcher = self.reader.searcher();
        // the filter as a predicate on each matching document's row (its fast column): the
        // BM25 scores stay those of the query alone
        let allowed: Option<std::sync::Arc<RowFilter>> =
            allowed.map(|a| std::sync::Arc::new(a.clone()));
        // over-fetch past rows readers must not show, then cut; never more than the store holds
        let most = (searcher.num_docs() as usize).max(1);
        let k = k.min(most);
        let mut want = k.max(1);
        loop {
            let top: Vec<(Score, DocAddress)> = match &allowed {
                None => searcher.search(&q, &TopDocs::with_limit(want).order_by_score())?,
                Some(a) => {
                    let a = a.clone();
                    let pred = move |row: u64| a.contains(row as u32);
                    let c = tantivy::collector::FilterCollector::new(
                        "row".to_string(),
                        pred,
                        TopDocs::with_limit(want).order_by_score(),
                    );
                    searcher.search(&q, &c)?
                }
            };
            let full = top.len() < want;
            let mut hits = Vec::with_capacity(top.len());
            for (score, addr) in &top {
                let col = searcher
                    .segment_reader(addr.segment_ord)
                    .fast_fields()
                    .u64("row")?;
                if let Some(r) = col.first(addr.doc_id) {
                    let r = r as u32;
                    if live(r) {
                        hits.push(rewa::Hit {
                            id: r,
                            distance: -score,
                        });
                    }
                }
            }
            if hits.len() >= k || full || want >= most {
                hits.sort_unstable();
                hits.truncate(k);
                return Ok(hits);
            }
            want = want.saturating_mul(4).min(most);
        }
    }

    /// The stored fields of each row (`None`: a row without a document), all or only those
    /// named in `only`.
    pub fn get(
        &self,
        rows: &[u32],
        only: Option<&[String]>,
    ) -> Result<Vec<Option<Map<String, Value>>>> {
        let searcher = self.reader.searcher();
        let mut out = Vec::with_capacity(rows.len());
        for &r in rows {
            let q = tantivy::query::TermQuery::new(
                Term::from_field_u64(self.s.row, r as u64),
                IndexRecordOption::Basic,
            );
            let top: Vec<(Score, DocAddress)> =
                searcher.search(&q, &TopDocs::with_limit(1).order_by_score())?;
            let Some((_, addr)) = top.first() else {
                out.push(None);
                continue;
            };
            let doc: TantivyDocument = searcher.doc(*addr)?;
            let src = doc
                .get_first(self.s.src)
                .and_then(|v| v.as_str())
                .unwrap_or("{}");
            let mut m: Map<String, Value> = serde_json::from_str(src)
                .map_err(|e| Error::Invalid(format!("row {r}: stored fields unreadable: {e}")))?;
            if let Some(only) = only {
                m.retain(|k, _| only.iter().any(|o| o == k));
            }
            out.push(Some(m));
        }
        Ok(out)
    }

    /// Bytes the store takes on disk.
    pub fn disk_bytes(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

fn read_state(index: &tantivy::Index) -> Result<State> {
    let metas = index.load_metas()?;
    match metas.payload {
        None => Ok(State::default()),
        Some(p) => serde_json::from_str(&p)
            .map_err(|e| Error::Invalid(format!("documents: unreadable commit payload: {e}"))),
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })
}

/// A collector of the rows of the matching documents, as a bitset (64 rows per word).
struct RowBits;

struct SegRows {
    col: tantivy::columnar::Column<u64>,
    buf: Vec<Option<u64>>,
    bits: Vec<u64>,
}

impl SegRows {
    fn set(&mut self, r: u64) {
        let w = (r / 64) as usize;
        if w >= self.bits.len() {
            self.bits.resize(w + 1, 0);
        }
        self.bits[w] |= 1 << (r % 64);
    }
}

impl Collector for RowBits {
    type Fruit = Vec<u64>;
    type Child = SegRows;
    fn for_segment(&self, _: SegmentOrdinal, seg: &SegmentReader) -> tantivy::Result<SegRows> {
        Ok(SegRows {
            col: seg.fast_fields().u64("row")?,
            buf: Vec::new(),
            bits: Vec::new(),
        })
    }
    fn requires_scoring(&self) -> bool {
        false
    }
    fn merge_fruits(&self, parts: Vec<Vec<u64>>) -> tantivy::Result<Vec<u64>> {
        let len = parts.iter().map(Vec::len).max().unwrap_or(0);
        let mut out = vec![0u64; len];
        for p in parts {
            for (o, w) in out.iter_mut().zip(p) {
                *o |= w;
            }
        }
        Ok(out)
    }
}

impl SegmentCollector for SegRows {
    type Fruit = Vec<u64>;
    fn collect(&mut self, doc: DocId, _: Score) {
        if let Some(r) = self.col.first(doc) {
            self.set(r);
        }
    }
    fn collect_block(&mut self, docs: &[DocId]) {
        self.buf.clear();
        self.buf.resize(docs.len(), None);
        self.col.first_vals(docs, &mut self.buf);
        for i in 0..self.buf.len() {
            if let Some(r) = self.buf[i] {
                self.set(r);
            }
        }
    }
    fn harvest(self) -> Vec<u64> {
        self.bits
    }
}
