//! Commands over a persistent index: build, add, search, info, tune.

use crate::data::{check_dim, load_prepared, load_train_prepared, log, progress_bar};
use crate::text::{check_texts, embed_file, load_model, load_model_for, TextOpts};
use anyhow::{bail, Context, Result};
use rewa::index::{check_build_target, WriteLock};
use rewa::{Index, IndexSpec, Metric, Pipeline, Prepared, SearchParams, TuneOptions};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Fit every encoder the pipeline names, encode the base, and save an index directory.
///
/// From text: --text corpus.jsonl --model DIR embeds the texts first; the index then keeps
/// each row's corpus id (hits print it) and records the model (its directory and the SHA-256
/// of its weights), so `rewa search --text` embeds queries with the same model.
#[derive(clap::Args)]
pub struct BuildArgs {
    /// Vectors to index (.npy, .fvecs, .bvecs).
    #[arg(long, required_unless_present = "text", conflicts_with = "text")]
    base: Option<PathBuf>,
    /// Texts to index instead of vectors: .jsonl (BEIR layout: (title + " " + text).strip(),
    /// `_id` as id), .txt (one text per line, ids are line numbers) or .tsv; needs --model.
    #[arg(long, requires = "model")]
    text: Option<PathBuf>,
    /// A sentence-transformers model directory (as scripts/fetch-models.sh lays it out) to
    /// embed --text with.
    #[arg(long, requires = "text")]
    model: Option<PathBuf>,
    /// With --text: word pieces per text (default: the model's max_seq_length); recorded in
    /// the index, so queries are cut the same way.
    #[arg(long, requires = "text")]
    max_seq_len: Option<usize>,
    #[command(flatten)]
    text_opts: TextOpts,
    /// Stored fields, returned with hits (`rewa search --show`), filtered by (`--filter`) and
    /// searched by BM25 (`--mode bm25|hybrid`). With --text: the record keys to keep,
    /// comma-separated (default: every field of each .jsonl record; a .txt or .tsv line is
    /// kept as `text`). With --base: a .jsonl file of one JSON object per row, in row order.
    #[arg(long, value_name = "NAMES|FILE")]
    fields: Option<String>,
    /// With --text: store no documents (no fields, filters or BM25; a smaller, faster build).
    #[arg(long, requires = "text", conflicts_with = "fields")]
    no_docs: bool,
    /// Default pipeline; float vectors are stored when it has an exact stage. A first stage
    /// `ivf<nlist>/<nprobe>+SPEC:keep` is partitioned: its codes are kept in nlist lists and a
    /// query scans the nprobe nearest (e.g. ivf1024/16+opq32+pq32:200,exact:10).
    #[arg(
        long,
        default_value = "hadamard512+sign:2000,hadamard256+int8:200,exact:10"
    )]
    pipeline: Pipeline,
    /// Index directory to write.
    #[arg(long)]
    out: PathBuf,
    /// Vectors to fit encoders on (default: --base).
    #[arg(long)]
    train: Option<PathBuf>,
    /// With --base: fit the encoders on this many rows of --train (or --base), a seeded
    /// sample when it holds more. --base is then read, encoded and written in chunks, so a
    /// base larger than memory builds: memory holds the codes, the sample and one chunk.
    #[arg(long, default_value_t = 262_144, value_name = "N")]
    train_sample: usize,
    /// cosine (normalises), ip or l2.
    #[arg(long, default_value = "cosine")]
    metric: Metric,
    /// Seed for encoder fitting.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Build into --out even if it holds an index (which is then replaced) or other files
    /// (files an index did not write are never deleted). Without it an existing index is
    /// refused, so a build cannot silently replace one.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    lock: LockArgs,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// How long to wait for another process writing the same index.
#[derive(clap::Args)]
pub struct LockArgs {
    /// Seconds to wait for another writer of the index to finish (0: fail at once, naming it).
    #[arg(long, default_value_t = 0.0, value_name = "SECONDS")]
    wait_lock: f64,
}

impl LockArgs {
    fn wait(&self) -> Result<Duration> {
        if !(self.wait_lock.is_finite() && self.wait_lock >= 0.0) {
            anyhow::bail!(
                "--wait-lock must be a number of seconds >= 0, got {}",
                self.wait_lock
            );
        }
        Ok(Duration::from_secs_f64(self.wait_lock.min(1e9)))
    }
    /// The lock of a new index's folder (created if missing).
    fn acquire(&self, dir: &Path) -> Result<WriteLock> {
        Ok(WriteLock::acquire(dir, self.wait()?)?)
    }
    /// The lock of an existing index.
    fn acquire_existing(&self, dir: &Path) -> Result<WriteLock> {
        WriteLock::acquire_existing(dir, self.wait()?)
            .with_context(|| format!("opening index {}", dir.display()))
    }
}

/// Append vectors to an index; ids continue from the current count. An index built from text
/// takes texts (--text), embedded with the model it records, and keeps their ids. A --base
/// of more than 2 GiB of floats is read, encoded and written a chunk at a time into a segment
/// of its own (memory holds its codes and one chunk; `rewa compact` merges segments).
#[derive(clap::Args)]
pub struct AddArgs {
    /// Index directory.
    #[arg(long)]
    index: PathBuf,
    /// Vectors to append.
    #[arg(long, required_unless_present = "text", conflicts_with = "text")]
    base: Option<PathBuf>,
    /// Texts to append (.jsonl, .txt, .tsv), for an index built from text; their ids must be
    /// new to the index.
    #[arg(long)]
    text: Option<PathBuf>,
    /// The model for --text (default: the directory the index records); its weights must be
    /// the ones the index was built with.
    #[arg(long, requires = "text")]
    model: Option<PathBuf>,
    #[command(flatten)]
    text_opts: TextOpts,
    /// Stored fields, returned with hits (`rewa search --show`), filtered by (`--filter`) and
    /// searched by BM25 (`--mode bm25|hybrid`). With --text: the record keys to keep,
    /// comma-separated (default: every field of each .jsonl record; a .txt or .tsv line is
    /// kept as `text`). With --base: a .jsonl file of one JSON object per new row, in order.
    #[arg(long, value_name = "NAMES|FILE")]
    fields: Option<String>,
    #[command(flatten)]
    lock: LockArgs,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Search an index; results as TSV (query, rank, id, score) or .npy ids (by --out's extension).
///
/// Queries are vectors (--queries) or texts (--text, --text-file) embedded with the model the
/// index was built with (`rewa build --text --model`); a model whose weights differ is
/// refused. For an index built from text the TSV's id column holds the corpus ids, and for
/// --text-file the query column holds the queries' ids.
#[derive(clap::Args)]
pub struct SearchArgs {
    /// Index directory.
    #[arg(long)]
    index: PathBuf,
    /// Query vectors.
    #[arg(
        long,
        required_unless_present_any = ["text", "text_file"],
        conflicts_with_all = ["text", "text_file"]
    )]
    queries: Option<PathBuf>,
    /// A query as text (repeat for several).
    #[arg(long, conflicts_with = "text_file")]
    text: Vec<String>,
    /// Queries as texts: .jsonl (BEIR queries), .txt (one per line) or .tsv.
    #[arg(long)]
    text_file: Option<PathBuf>,
    /// The model for text queries (default: the directory the index records); its weights
    /// must be the ones the index was built with.
    #[arg(long)]
    model: Option<PathBuf>,
    #[command(flatten)]
    text_opts: TextOpts,
    /// Neighbours per query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Override the index's default pipeline (same encoders, other keeps).
    #[arg(long)]
    pipeline: Option<Pipeline>,
    /// Only rows whose stored fields pass this filter (Qdrant's JSON filter, or @FILE holding
    /// it), e.g. '{"must": [{"key": "year", "range": {"gte": 2020}}, {"key": "source",
    /// "match": {"any": ["pubmed", "arxiv"]}}], "must_not": [{"key": "retracted", "match":
    /// {"value": true}}]}'. Conditions: match.value, match.any, match.except, range (gt, gte,
    /// lt, lte; numbers, or RFC 3339 dates); a condition may itself be a filter. The hits are
    /// the best k of the matching rows (fewer when fewer match).
    #[arg(long, value_name = "JSON|@FILE")]
    filter: Option<String>,
    /// dense (nearest vectors), bm25 (words, over the stored text; needs --text or
    /// --text-file, no model) or hybrid (both, fused by reciprocal rank).
    #[arg(long, default_value = "dense")]
    mode: rewa_docs::Mode,
    /// Hybrid: how the dense and BM25 lists (100 deep each) are fused: weighted:ALPHA (ALPHA
    /// x dense + (1 - ALPHA) x BM25, each list's scores min-max normalised) or rrf:K
    /// (reciprocal rank fusion, sum of 1 / (K + rank)).
    #[arg(
        long,
        default_value = "weighted:0.5",
        value_name = "weighted:ALPHA|rrf:K"
    )]
    fusion: rewa_docs::Fusion,
    /// Stored fields to print with each hit, comma-separated (`all` for every one): a TSV
    /// column `fields` holding a JSON object, and with --json a `hits` list.
    #[arg(long, value_name = "FIELDS")]
    show: Option<String>,
    /// Threads to search on (default: every core; a single query is then split across them).
    #[arg(long)]
    threads: Option<usize>,
    /// Search the queries one at a time, as single requests to a server, and report each
    /// query's latency: p50, p90, p99 and max in milliseconds (with --json also in the
    /// summary). With --threads 1 that is one core's latency. The hits are the same.
    #[arg(long)]
    one_at_a_time: bool,
    /// Output file: .tsv (default on stdout without --json) or .npy (int64 ids, one row per
    /// query of min(k, index size) columns, -1 where fewer hits were found).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print one JSON summary object on stdout.
    #[arg(long)]
    json: bool,
}

/// Delete vectors from an index by id: searches never return them again and other ids do not
/// change. Only the list of deleted ids is written (O(deleted)); the rows themselves go at the
/// next `rewa compact`.
#[derive(clap::Args)]
pub struct DeleteArgs {
    /// Index directory.
    #[arg(long)]
    index: PathBuf,
    /// Ids to delete (as `rewa search` prints them): a text file with one id per line, or a
    /// 1-D .npy of integers (-1 entries, the padding of `rewa search --out x.npy`, are
    /// skipped). Ids are 0 to 4294967295; an id listed twice is deleted once.
    #[arg(long, required_unless_present = "doc_ids", conflicts_with = "doc_ids")]
    ids: Option<PathBuf>,
    /// For an index built from text: corpus ids to delete, one per line.
    #[arg(long)]
    doc_ids: Option<PathBuf>,
    #[command(flatten)]
    lock: LockArgs,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Rewrite an index's segments into one without its deleted rows (ids do not change).
#[derive(clap::Args)]
pub struct CompactArgs {
    /// Index directory.
    #[arg(long)]
    index: PathBuf,
    #[command(flatten)]
    lock: LockArgs,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Show an index's counts, specs, bytes per vector, file sizes and format version.
#[derive(clap::Args)]
pub struct InfoArgs {
    /// Index directory.
    #[arg(long)]
    index: PathBuf,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Find the keep sizes (and the lists a partitioned first stage probes) that reach a target
/// recall@k on validation queries at the highest QPS, print the curve, and store the chosen
/// pipeline as the index default.
///
/// Ground truth is exact search over --base if given, else over the index's float vectors
/// (an `exact` stage) or its `flat` codes; an index with neither needs --base.
#[derive(clap::Args)]
pub struct TuneArgs {
    /// Index directory.
    #[arg(long)]
    index: PathBuf,
    /// Validation queries (not the queries you will report on).
    #[arg(long)]
    queries: PathBuf,
    /// The vectors the index was built from and added, in order (row i is id i): ground
    /// truth for an index that stores neither float vectors nor flat codes.
    #[arg(long)]
    base: Option<PathBuf>,
    /// Target recall@k.
    #[arg(long, default_value_t = 0.95)]
    target_recall: f64,
    /// How sure to be that the chosen setting reaches the target on queries like these: a
    /// setting counts when the one-sided lower confidence bound of its recall does (the mean
    /// recall of a few hundred queries is itself noisy). 0 compares the mean recall itself.
    #[arg(long, default_value_t = 0.95)]
    confidence: f64,
    /// Neighbours per query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Largest keep tried for any stage (default: the index size). At a million vectors the
    /// settings with huge keeps are slow to measure and slower than exact search anyway.
    #[arg(long)]
    max_keep: Option<usize>,
    /// Time budget: after this many seconds the best setting found so far is stored, and the
    /// JSON says `"timed_out": true`.
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS")]
    max_seconds: f64,
    #[command(flatten)]
    lock: LockArgs,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

fn open(dir: &Path) -> Result<Index> {
    let t = Instant::now();
    let index = Index::open(dir).with_context(|| format!("opening index {}", dir.display()))?;
    log(&format!(
        "opened {} ({} vectors) in {:.3}s",
        dir.display(),
        index.len(),
        t.elapsed().as_secs_f64()
    ));
    Ok(index)
}

/// Opens an index and reads a vector file prepared for its metric, checking the dimension.
/// `add --base` reads a file of up to this many bytes of floats whole (its segment is then
/// merged with the one before while it is at least half its size, keeping the segment count
/// logarithmic); a larger one streams into a segment of its own ([`Index::add_from_file`]).
const STREAM_ADD_BYTES: u64 = 2 << 30;

fn open_with(dir: &Path, file: &Path) -> Result<(Index, Prepared<'static>)> {
    let index = open(dir)?;
    let v = load_prepared(file, index.metric())?;
    check_dim(file, v.dim(), dir, index.dim())?;
    Ok((index, v))
}

fn add_with_progress(index: &mut Index, data: &Prepared<'_>) -> Result<()> {
    let pb = progress_bar(data.len() as u64, "encoding");
    index.add_prepared(data, &mut |done, _| pb.set_position(done as u64))?;
    pb.finish_and_clear();
    Ok(())
}

pub fn build(a: BuildArgs) -> Result<()> {
    let t0 = Instant::now();
    // Refuse a folder of other files before any work, and hold the writer lock throughout.
    check_build_target(&a.out, a.force, "--force")?;
    let lock = a.lock.acquire(&a.out)?;
    // again under the lock: another build may have saved an index there in between
    check_build_target(&a.out, a.force, "--force")?;
    if let Some(b) = &a.base {
        return build_streamed(&a, b, &lock, t0);
    }
    // from text: embedded whole (the model's pass dominates), then fitted and encoded
    let (Some(text), Some(m)) = (&a.text, &a.model) else {
        bail!("give --base, or --text with --model");
    };
    let texts = check_texts(text, &a.text_opts)?;
    let mut e = load_model(m, &a.text_opts)?;
    if let Some(n) = a.max_seq_len {
        e.set_max_seq_len(n).context("--max-seq-len")?;
    }
    let text_model = e.text_model()?;
    let records = (!a.no_docs)
        .then(|| text_records(text, &a.text_opts, a.fields.as_deref()))
        .transpose()?;
    let f = embed_file(&e, texts, &a.text_opts.field())?;
    let base = a.metric.prepare_owned(f.vectors)?;
    let train = load_train_prepared(a.train.as_deref(), a.metric, text, base.dim())?;
    let spec = IndexSpec {
        metric: a.metric,
        pipeline: a.pipeline.clone(),
        seed: a.seed,
    };
    let t = Instant::now();
    let mut index = Index::fit_prepared(&spec, train.as_ref().unwrap_or(&base))?;
    log(&format!(
        "fitted {} in {:.2}s",
        a.pipeline,
        t.elapsed().as_secs_f64()
    ));
    let pb = progress_bar(base.len() as u64, "encoding");
    index.add_with_ids(&base, f.ids, &mut |done, _| pb.set_position(done as u64))?;
    pb.finish_and_clear();
    index.set_text_model(Some(text_model));
    let t = Instant::now();
    let docs = rewa_docs::save_build(&index, &a.out, &lock, records)
        .with_context(|| format!("saving {}", a.out.display()))?;
    if docs.is_some() {
        log(&format!(
            "stored documents in {:.2}s",
            t.elapsed().as_secs_f64()
        ));
    }
    report_built(&index, &a, t0);
    Ok(())
}

/// The records `rewa build/add --text` stores: each text's fields (all, or the names in
/// `fields`), BM25 reading the text that was embedded.
fn text_records(
    text: &Path,
    opts: &TextOpts,
    fields: Option<&str>,
) -> Result<Vec<rewa_docs::Record>> {
    let names = fields.map(field_names).transpose()?;
    let texts = rewa_embed::read_texts(text, &opts.field())
        .with_context(|| format!("reading texts from {}", text.display()))?;
    rewa_docs::text_records(text, texts.texts, names.as_deref())
        .with_context(|| format!("reading the fields of {}", text.display()))
}

/// `--fields a,b` or `--show a,b`: the names.
fn field_names(s: &str) -> Result<Vec<String>> {
    let v: Vec<String> = s
        .split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect();
    if v.is_empty() {
        bail!("no field names in {s:?} (give them comma-separated: title,text)");
    }
    Ok(v)
}

/// `--fields F.jsonl` with --base: one record per row of `rows`.
fn file_records(fields: Option<&str>, rows: usize) -> Result<Option<Vec<rewa_docs::Record>>> {
    let Some(f) = fields else { return Ok(None) };
    let p = Path::new(f);
    if !p.is_file() {
        bail!("--fields {f}: with --base, --fields names a .jsonl file of one JSON object per row (no such file)");
    }
    let r = rewa_docs::read_records(p, None).with_context(|| format!("--fields {f}"))?;
    if r.len() != rows {
        bail!(
            "--fields {f} holds {} records, but there are {rows} vectors (one record per row, in order)",
            r.len()
        );
    }
    Ok(Some(r))
}

/// The end of a build: its log line, and its JSON with `--json`.
fn report_built(index: &Index, a: &BuildArgs, t0: Instant) {
    let secs = t0.elapsed().as_secs_f64();
    log(&format!(
        "built {} vectors into {} in {secs:.2}s",
        index.len(),
        a.out.display()
    ));
    if a.json {
        println!(
            "{}",
            json!({"count": index.len(), "seconds": secs, "pipeline": index.pipeline().to_string()})
        );
    }
}

/// `build --base`: the vectors read, encoded and written a chunk at a time
/// ([`Index::build_from_file`]).
fn build_streamed(a: &BuildArgs, base: &Path, lock: &WriteLock, t0: Instant) -> Result<()> {
    let ctx = |p: &Path| format!("reading vectors from {}", p.display());
    let file = rewa::io::VectorFile::open(base).with_context(|| ctx(base))?;
    let train = match &a.train {
        Some(t) => {
            let f = rewa::io::VectorFile::open(t).with_context(|| ctx(t))?;
            check_dim(t, f.dim(), base, file.dim())?;
            Some(f)
        }
        None => None,
    };
    let spec = IndexSpec {
        metric: a.metric,
        pipeline: a.pipeline.clone(),
        seed: a.seed,
    };
    let opts = rewa::StreamOptions {
        train_sample: a.train_sample,
        ..Default::default()
    };
    log(&format!(
        "{} x {} in {}; fitting {} on {} rows",
        file.len(),
        file.dim(),
        base.display(),
        a.pipeline,
        train.as_ref().unwrap_or(&file).len().min(a.train_sample)
    ));
    let records = file_records(a.fields.as_deref(), file.len())?;
    let pb = std::cell::OnceCell::new();
    let t = Instant::now();
    let index = Index::build_from_file(
        &spec,
        &file,
        train.as_ref(),
        &opts,
        lock,
        &mut |done, total| {
            pb.get_or_init(|| {
                log(&format!("fitted in {:.2}s", t.elapsed().as_secs_f64()));
                progress_bar(total as u64, "encoding")
            })
            .set_position(done as u64)
        },
    )
    .with_context(|| ctx(base))?;
    if let Some(pb) = pb.get() {
        pb.finish_and_clear();
    }
    rewa_docs::save_build(&index, &a.out, lock, records)
        .with_context(|| format!("saving {}", a.out.display()))?;
    report_built(&index, a, t0);
    Ok(())
}

pub fn add(a: AddArgs) -> Result<()> {
    let t0 = Instant::now();
    // The lock is taken before the index is read: two writers cannot both start from the same
    // generation and lose one update.
    let lock = a.lock.acquire_existing(&a.index)?;
    let (data, count) = match (&a.base, &a.text) {
        (Some(base), _) => {
            let file = rewa::io::VectorFile::open(base)
                .with_context(|| format!("reading vectors from {}", base.display()))?;
            let records = file_records(a.fields.as_deref(), file.len())?;
            if (file.len() as u64) * (file.dim() as u64) * 4 <= STREAM_ADD_BYTES {
                let (mut index, data) = open_with(&a.index, base)?;
                let mut docs = rewa_docs::open_for_write(&a.index, &index)?;
                let first = index.next_id() as u32;
                add_with_progress(&mut index, &data)?;
                rewa_docs::save_add(&index, &a.index, &lock, &mut docs, first, records)?;
                (data.len(), index.len())
            } else {
                // larger than memory may hold: a chunk at a time, into a segment of its own
                let mut index = open(&a.index)?;
                let mut docs = rewa_docs::open_for_write(&a.index, &index)?;
                let first = index.next_id() as u32;
                check_dim(base, file.dim(), &a.index, index.dim())?;
                let pb = progress_bar(file.len() as u64, "encoding");
                index
                    .add_from_file(&file, &Default::default(), &lock, &mut |d, _| {
                        pb.set_position(d as u64)
                    })
                    .with_context(|| format!("reading vectors from {}", base.display()))?;
                pb.finish_and_clear();
                rewa_docs::save_add(&index, &a.index, &lock, &mut docs, first, records)?;
                (file.len(), index.len())
            }
        }
        (None, Some(text)) => {
            let texts = check_texts(text, &a.text_opts)?;
            let mut index = open(&a.index)?;
            texts.check_new_for(&index, &a.index)?;
            let mut docs = rewa_docs::open_for_write(&a.index, &index)?;
            let first = index.next_id() as u32;
            // an index with documents stores the new texts' too
            let records = (docs.is_some() || a.fields.is_some())
                .then(|| text_records(text, &a.text_opts, a.fields.as_deref()))
                .transpose()?;
            let e = text_model_for(&index, &a.index, a.model.as_deref(), &a.text_opts)?;
            let f = embed_file(&e, texts, &a.text_opts.field())?;
            let v = index.metric().prepare_owned(f.vectors)?;
            let pb = progress_bar(v.len() as u64, "encoding");
            index
                .add_with_ids(&v, f.ids, &mut |done, _| pb.set_position(done as u64))
                .with_context(|| format!("adding the texts of {}", text.display()))?;
            pb.finish_and_clear();
            rewa_docs::save_add(&index, &a.index, &lock, &mut docs, first, records)?;
            (v.len(), index.len())
        }
        _ => bail!("give --base or --text"),
    };
    let secs = t0.elapsed().as_secs_f64();
    log(&format!("added {data} vectors; {count} in all"));
    if a.json {
        println!(
            "{}",
            json!({"count": count, "added": data, "seconds": secs})
        );
    }
    Ok(())
}

/// The model to embed texts for the index in `dir`: `model` if given, else the directory the
/// index records; refused unless its weights are the recorded ones and its dimension the
/// index's.
fn text_model_for(
    index: &Index,
    dir: &Path,
    model: Option<&Path>,
    opts: &TextOpts,
) -> Result<rewa_embed::Embedder> {
    let recorded = index.text_model();
    let mdir = match (model, recorded) {
        (Some(m), _) => m.to_path_buf(),
        (None, Some(r)) => PathBuf::from(&r.dir),
        (None, None) => bail!(
            "{} records no text model (it was built from vectors): pass --model DIR",
            dir.display()
        ),
    };
    let e = match recorded {
        Some(r) => load_model_for(&mdir, opts, r)
            .with_context(|| format!("embedding texts for {}", dir.display()))?,
        None => load_model(&mdir, opts)?,
    };
    if e.dim() != index.dim() {
        bail!(
            "the model {} makes {}-dimensional vectors, but {} holds {}-dimensional ones",
            mdir.display(),
            e.dim(),
            dir.display(),
            index.dim()
        );
    }
    Ok(e)
}

/// The queries of `rewa search`: vectors prepared for the index (not for BM25 alone), their
/// texts (for BM25 and hybrid), and their labels for the TSV (their ids for --text-file,
/// else row numbers).
type SearchQueries = (
    Option<Prepared<'static>>,
    Option<Vec<String>>,
    Option<Vec<String>>,
);

fn search_queries(a: &SearchArgs, index: &Index) -> Result<SearchQueries> {
    use rewa_docs::Mode;
    if let Some(q) = &a.queries {
        if a.mode != Mode::Dense {
            bail!(
                "--mode {} needs query texts (--text or --text-file), not --queries",
                a.mode
            );
        }
        let v = load_prepared(q, index.metric())?;
        check_dim(q, v.dim(), &a.index, index.dim())?;
        return Ok((Some(v), None, None));
    }
    if let Some(i) = a.text.iter().position(|t| t.trim().is_empty()) {
        bail!("--text number {} is empty", i + 1);
    }
    let texts: Vec<String> = match &a.text_file {
        Some(f) if a.mode != Mode::Dense => {
            let t = rewa_embed::read_texts(f, &a.text_opts.field())
                .with_context(|| format!("reading texts from {}", f.display()))?;
            return if a.mode == Mode::Bm25 {
                Ok((None, Some(t.texts), Some(t.ids)))
            } else {
                let e = text_model_for(index, &a.index, a.model.as_deref(), &a.text_opts)?;
                let f = embed_file(&e, check_texts(f, &a.text_opts)?, &a.text_opts.field())?;
                Ok((
                    Some(index.metric().prepare_owned(f.vectors)?),
                    Some(t.texts),
                    Some(t.ids),
                ))
            };
        }
        Some(_) => Vec::new(),
        None => a.text.clone(),
    };
    if a.mode == Mode::Bm25 {
        return Ok((None, Some(texts), None));
    }
    let e = text_model_for(index, &a.index, a.model.as_deref(), &a.text_opts)?;
    let (vectors, labels) = match &a.text_file {
        Some(f) => {
            let f = embed_file(&e, check_texts(f, &a.text_opts)?, &a.text_opts.field())?;
            (f.vectors, Some(f.ids))
        }
        None => {
            let refs: Vec<&str> = a.text.iter().map(String::as_str).collect();
            (e.embed(&refs).context("embedding --text")?, None)
        }
    };
    let texts = (a.mode == Mode::Hybrid).then_some(texts);
    Ok((Some(index.metric().prepare_owned(vectors)?), texts, labels))
}

/// `--filter JSON` or `--filter @FILE`.
fn read_filter(s: &str) -> Result<rewa_docs::Filter> {
    let text = match s.strip_prefix('@') {
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("--filter @{f}"))?,
        None => s.to_string(),
    };
    text.parse().context("--filter")
}

pub fn search(a: SearchArgs) -> Result<()> {
    use rewa_docs::Mode;
    let index = open(&a.index)?;
    let docs = rewa_docs::Docs::open(&a.index)
        .with_context(|| format!("opening the documents of {}", a.index.display()))?;
    let filter = a.filter.as_deref().map(read_filter).transpose()?;
    // Some(None): every field
    let show: Option<Option<Vec<String>>> = a
        .show
        .as_deref()
        .map(|s| {
            if s == "all" {
                Ok(None)
            } else {
                field_names(s).map(Some)
            }
        })
        .transpose()?;
    if docs.is_none() {
        let what = [
            (filter.is_some(), "--filter"),
            (show.is_some(), "--show"),
            (a.mode != Mode::Dense, "--mode bm25/hybrid"),
        ];
        if let Some((_, w)) = what.iter().find(|(on, _)| *on) {
            bail!(
                "{w} needs stored documents, and {} has none (build it with --text, or with --base and --fields F.jsonl)",
                a.index.display()
            );
        }
    }
    let (queries, texts, labels) = search_queries(&a, &index)?;
    let nq = queries
        .as_ref()
        .map_or_else(|| texts.as_ref().map_or(0, Vec::len), |q| q.len());
    let pipeline = a
        .pipeline
        .clone()
        .unwrap_or_else(|| index.pipeline().clone());
    // the filter's rows, once for the batch (timed apart from the search)
    let t = Instant::now();
    let allowed = match (&filter, &docs) {
        (Some(f), Some(d)) if !f.is_empty() => {
            Some(std::sync::Arc::new(d.filter(f).context("--filter")?))
        }
        (Some(f), Some(d)) => {
            f.check(d.fields()).context("--filter")?;
            None
        }
        _ => None,
    };
    let filter_secs = t.elapsed().as_secs_f64();
    if let Some(al) = &allowed {
        log(&format!(
            "the filter allows {} rows (found in {:.3}s)",
            al.len(),
            filter_secs
        ));
    }
    let params = SearchParams {
        k: a.k,
        pipeline: Some(pipeline.clone()),
        filter: allowed,
    };
    let pool = match a.threads {
        Some(0) => anyhow::bail!("--threads must be at least 1"),
        Some(n) => Some(rayon::ThreadPoolBuilder::new().num_threads(n).build()?),
        None => None,
    };
    // lists laid out for the kernels before the clock starts (else the first query pays)
    let t = Instant::now();
    index.warm(Some(&pipeline))?;
    let warm = t.elapsed().as_secs_f64();
    if warm > 0.05 {
        log(&format!("laid out the first stage's lists in {warm:.2}s"));
    }
    let t = Instant::now();
    let run = || -> anyhow::Result<_> {
        if a.mode != Mode::Dense {
            // BM25 and hybrid: through the documents, a query at a time when asked
            let q = |vectors: Option<&Prepared<'_>>, texts: &[String]| {
                rewa_docs::search(
                    &index,
                    docs.as_ref(),
                    &rewa_docs::Query {
                        k: a.k,
                        mode: a.mode,
                        pipeline: Some(pipeline.clone()),
                        filter: filter.as_ref(),
                        vectors,
                        texts: Some(texts),
                        fusion: a.fusion,
                    },
                )
            };
            let texts = texts.as_deref().unwrap_or_default();
            if !a.one_at_a_time {
                return Ok((q(queries.as_ref(), texts)?, None));
            }
            let (mut hits, mut secs) = (Vec::new(), Vec::new());
            for i in 0..texts.len() {
                let t = Instant::now();
                let v = queries.as_ref().map(|v| v.slice(i, i + 1));
                hits.extend(q(v.as_ref(), &texts[i..i + 1])?);
                secs.push(t.elapsed().as_secs_f64());
            }
            return Ok((hits, Some(rewa::eval::Latencies::new(secs))));
        }
        let queries = queries.as_ref().expect("dense queries are vectors");
        if a.one_at_a_time {
            let (hits, lat) = index.search_one_at_a_time(queries, &params)?;
            Ok((hits, Some(lat)))
        } else {
            Ok((index.search_prepared(queries, &params)?, None))
        }
    };
    let (hits, latencies) = match &pool {
        Some(pool) => pool.install(run)?,
        None => run()?,
    };
    let secs = t.elapsed().as_secs_f64();
    let qps = nq as f64 / secs.max(1e-9);
    let metric = index.metric();
    let doc_ids = index.doc_ids();
    // dense hits carry distances (printed as the metric's score); BM25 and hybrid -score
    let score = |d: f32| {
        if a.mode == Mode::Dense {
            metric.score(d)
        } else {
            -d
        }
    };
    let shown: Vec<Vec<Option<serde_json::Map<String, serde_json::Value>>>> = match (&show, &docs) {
        (Some(only), Some(d)) => hits
            .iter()
            .map(|hs| {
                let rows: Vec<u32> = hs.iter().map(|h| h.id).collect();
                d.get(&rows, only.as_deref())
            })
            .collect::<rewa_docs::Result<_>>()?,
        _ => Vec::new(),
    };
    let tsv = || {
        let mut tsv = String::from("query\trank\tid\tscore");
        tsv += if show.is_some() { "\tfields\n" } else { "\n" };
        for (qi, hs) in hits.iter().enumerate() {
            let query = labels
                .as_ref()
                .map_or_else(|| qi.to_string(), |l| l[qi].clone());
            for (rank, h) in hs.iter().enumerate() {
                let id = doc_ids.map_or_else(|| h.id.to_string(), |d| d[h.id as usize].clone());
                tsv += &format!("{query}\t{}\t{id}\t{}", rank + 1, score(h.distance));
                if let Some(f) = shown.get(qi).and_then(|s| s.get(rank)) {
                    // compact JSON: tabs and line breaks inside are escaped
                    let f = f.clone().unwrap_or_default();
                    tsv += &format!("\t{}", serde_json::Value::Object(f));
                }
                tsv += "\n";
            }
        }
        tsv
    };
    match &a.out {
        Some(p) if p.extension().is_some_and(|e| e == "npy") => {
            let width = a.k.min(index.len()).max(1);
            let ids: Vec<i64> = hits
                .iter()
                .flat_map(|hs| (0..width).map(move |r| hs.get(r).map_or(-1, |h| h.id as i64)))
                .collect();
            rewa::io::write_npy_i64(p, &[nq, width], &ids)?;
        }
        Some(p) => rewa::io::write_text(p, &tsv())?,
        None if !a.json => print!("{}", tsv()),
        None => {}
    }
    log(&format!("{nq} queries in {secs:.3}s ({qps:.0} QPS)"));
    let ms = |p: f64| latencies.as_ref().map(|l| 1e3 * l.percentile(p));
    if let Some(l) = &latencies {
        log(&format!(
            "latency per query: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms (mean {:.3} ms)",
            1e3 * l.percentile(0.5),
            1e3 * l.percentile(0.9),
            1e3 * l.percentile(0.99),
            1e3 * l.percentile(1.0),
            1e3 * l.mean()
        ));
    }
    if a.json {
        let mut j = json!({"n_queries": nq, "k": a.k, "mode": a.mode.to_string(), "pipeline": pipeline.to_string(), "qps": qps, "seconds": secs, "warm_seconds": warm, "memory": crate::data::memory_json()});
        if let Some(al) = &params.filter {
            j["filter"] = json!({"rows": al.len(), "seconds": filter_secs});
        }
        if show.is_some() {
            j["hits"] = hits
                .iter()
                .enumerate()
                .map(|(qi, hs)| {
                    hs.iter()
                        .enumerate()
                        .map(|(r, h)| {
                            let mut o = json!({"id": h.id, "score": score(h.distance)});
                            if let Some(d) = doc_ids {
                                o["doc_id"] = json!(d[h.id as usize]);
                            }
                            o["fields"] = json!(shown[qi][r]);
                            o
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
        }
        if latencies.is_some() {
            j["latency_ms"] =
                json!({"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": ms(1.0)});
        }
        println!("{j}");
    }
    Ok(())
}

/// Reads row ids: .npy integers (-1, the padding `rewa search` writes, skipped) or text, one
/// per line (blank lines skipped). An id that does not fit the index's ids (u32) is an error,
/// never skipped.
fn read_row_ids(path: &Path) -> Result<Vec<u32>> {
    let fit = |i: i128, at: String| -> Result<u32> {
        u32::try_from(i).map_err(|_| {
            anyhow::anyhow!(
                "--ids {}{at}: {i} is not an id (ids are whole numbers from 0 to {})",
                path.display(),
                u32::MAX
            )
        })
    };
    if path.extension().is_some_and(|e| e == "npy") {
        let v = rewa::io::read_labels(path).with_context(|| format!("--ids {}", path.display()))?;
        return v
            .into_iter()
            .enumerate()
            .filter(|&(_, i)| i != -1)
            .map(|(n, i)| fit(i as i128, format!(" entry {n}")))
            .collect();
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--ids {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            let at = format!(" line {}", n + 1);
            match l.trim().parse::<i128>() {
                Ok(i) => fit(i, at),
                Err(_) => bail!(
                    "--ids {}{at}: {:?} is not an id (a whole number)",
                    path.display(),
                    l.trim()
                ),
            }
        })
        .collect()
}

pub fn delete(a: DeleteArgs) -> Result<()> {
    let t0 = Instant::now();
    let lock = a.lock.acquire_existing(&a.index)?;
    let mut index = open(&a.index)?;
    let mut docs = rewa_docs::open_for_write(&a.index, &index)?;
    let before: std::collections::HashSet<u32> = index.deleted().iter().copied().collect();
    // (ids listed, distinct ids, newly deleted)
    let (listed, asked, deleted) = match (&a.ids, &a.doc_ids) {
        (Some(p), _) => {
            let ids = read_row_ids(p)?;
            let distinct = ids.iter().collect::<std::collections::HashSet<_>>().len();
            (ids.len(), distinct, index.delete(&ids)?)
        }
        (None, Some(p)) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("--doc-ids {}", p.display()))?;
            let ids: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            let distinct = ids.iter().collect::<std::collections::HashSet<_>>().len();
            (ids.len(), distinct, index.delete_doc_ids(&ids)?)
        }
        _ => bail!("give --ids or --doc-ids"),
    };
    if deleted > 0 {
        let rows: Vec<u32> = index
            .deleted()
            .iter()
            .copied()
            .filter(|i| !before.contains(i))
            .collect();
        rewa_docs::save_delete(&index, &lock, docs.as_mut(), &rows)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let repeated = match listed - asked {
        0 => String::new(),
        n => format!("; {n} listed more than once"),
    };
    log(&format!(
        "deleted {deleted} of {asked} ids ({} already deleted{repeated}); {} vectors left, {} deleted rows await `rewa compact`",
        asked - deleted,
        index.len(),
        index.deleted().len()
    ));
    if a.json {
        println!(
            "{}",
            json!({"deleted": deleted, "asked": asked, "repeated": listed - asked, "count": index.len(), "pending_compaction": index.deleted().len(), "seconds": secs})
        );
    }
    Ok(())
}

pub fn compact(a: CompactArgs) -> Result<()> {
    let t0 = Instant::now();
    let lock = a.lock.acquire_existing(&a.index)?;
    let mut index = open(&a.index)?;
    let mut docs = rewa_docs::open_for_write(&a.index, &index)?;
    let (segments, deleted) = (index.segments().len(), index.deleted().len());
    index.compact();
    rewa_docs::save_compact(&index, &lock, docs.as_mut())?;
    let secs = t0.elapsed().as_secs_f64();
    log(&format!(
        "compacted {segments} segments and {deleted} deleted rows into one segment of {} vectors in {secs:.2}s",
        index.len()
    ));
    if a.json {
        println!(
            "{}",
            json!({"count": index.len(), "segments_before": segments, "removed": deleted, "seconds": secs})
        );
    }
    Ok(())
}

pub fn info(a: InfoArgs) -> Result<()> {
    let index = open(&a.index)?;
    let s = index.summary(Some(&a.index))?;
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(());
    }
    println!("count           {}", s.count);
    println!("dim             {}", s.dim);
    println!("metric          {}", s.metric);
    println!("pipeline        {}", s.pipeline);
    println!("code sets       {}", s.code_sets.join(", "));
    let stored = if s.has_vectors {
        "stored"
    } else {
        "not stored"
    };
    println!("float vectors   {stored}");
    println!("bytes/vector    {}", s.bytes_per_vector);
    println!(
        "in memory       {} bytes (codes, lists, parameters: what a search keeps resident)",
        s.resident_bytes
    );
    if s.has_vectors {
        println!(
            "vectors on disk {} bytes (mapped: an exact rerank reads only its candidates' rows)",
            s.vector_bytes
        );
    }
    println!("segments        {}", s.segments);
    if let Some(m) = &s.text_model {
        println!(
            "text model      {} (weights sha256 {}..., {} word pieces per text{})",
            m.dir,
            m.weights_sha256.chars().take(16).collect::<String>(),
            m.max_seq_len,
            if m.precision == "f32" {
                String::new()
            } else {
                format!(", {}", m.precision)
            }
        );
    }
    if s.has_doc_ids {
        println!("corpus ids      stored (hits name documents)");
    }
    if s.deleted > 0 {
        println!("deleted         {} (removed by `rewa compact`)", s.deleted);
    }
    if let Some(d) = &s.disk {
        println!("format version  {}", d.format_version);
        for (f, n) in &d.files {
            println!("  {f:<28} {n:>14} bytes");
        }
        println!("on disk         {} bytes", d.disk_bytes);
    }
    Ok(())
}

pub fn tune(a: TuneArgs) -> Result<()> {
    let lock = a.lock.acquire_existing(&a.index)?;
    let (mut index, queries) = open_with(&a.index, &a.queries)?;
    let base = match &a.base {
        Some(b) => {
            let v = load_prepared(b, index.metric())?;
            check_dim(b, v.dim(), &a.index, index.dim())?;
            Some(v)
        }
        None => None,
    };
    let opts = TuneOptions {
        k: a.k,
        target_recall: a.target_recall,
        max_keep: a.max_keep,
        max_seconds: a.max_seconds,
        confidence: a.confidence,
    };
    let pb = progress_bar(0, "tuning");
    let data = rewa::tune::TuneData {
        queries: &queries,
        base: base.as_ref(),
    };
    let report = rewa::tune::tune_on(&index, data, &opts, &mut |p| {
        pb.set_length(p.total as u64);
        pb.set_position(p.done as u64);
        pb.suspend(|| {
            eprintln!(
                "  {:<60} recall@{} {:.4} (>= {:.4})  {:>9.0} QPS",
                p.point.pipeline, a.k, p.point.recall_at_k, p.point.recall_lower, p.point.qps
            )
        });
    })?;
    pb.finish_and_clear();
    if report.timed_out {
        log(&format!(
            "time budget of {} s spent; keeping the best setting found so far",
            a.max_seconds
        ));
    }
    if !report.target_met {
        log(&format!(
            "no setting measured reaches recall {} with confidence {}; keeping the best recall found",
            a.target_recall, a.confidence
        ));
    }
    index.set_pipeline(report.chosen().clone())?;
    index.save_locked(&lock)?;
    log(&format!(
        "default pipeline now {} (recall@{} {:.4}, at least {:.4} with confidence {}; {:.0} QPS)",
        report.pipeline, a.k, report.recall_at_k, report.recall_lower, a.confidence, report.qps
    ));
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
