use crate::data::{log, progress_bar};
use anyhow::{bail, Context, Result};
use rewa_embed::{Embedder, TextField, TextReader};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Embed texts with a sentence-transformers model directory (BERT or MPNet) and write the
/// vectors as float32 .npy, one row per text in input order. Every line of the input is
/// checked before the model loads; texts are then read a chunk at a time, so memory does not
/// grow with the corpus (--ids-out keeps the ids). With --json, stdout holds exactly one JSON
/// object.
///
/// The vectors stream into OUT.partial.npy beside --out, and OUT.partial.json records what
/// they are made from (the input's checksum, the weights' SHA-256, the settings) and how many
/// rows are done, after every chunk of texts; --resume continues a stopped run from there, and
/// refuses one made from other inputs, weights or settings. At the end OUT.partial.npy is
/// renamed to OUT. --input must be a regular file: it is read twice (checked, then embedded).
#[derive(clap::Args)]
pub struct Args {
    /// The model directory (modules.json, config.json, model.safetensors, tokenizer.json, ...),
    /// as scripts/fetch-models.sh lays it out.
    #[arg(long)]
    model: PathBuf,
    /// Texts: .jsonl (BEIR layout: (title + " " + text).strip(), `_id` as id in every record or
    /// in none, then row numbers), .txt (one text per line) or .tsv (id<TAB>text or
    /// id<TAB>title<TAB>text; with --field, a header line). A regular file, not a pipe.
    #[arg(long)]
    input: PathBuf,
    /// Output .npy (float32, texts x dim).
    #[arg(long)]
    out: PathBuf,
    /// Also write the texts' ids, one per line, in row order.
    #[arg(long)]
    ids_out: Option<PathBuf>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = rewa_embed::DEFAULT_BATCH_SIZE)]
    batch: usize,
    /// Word pieces per text, special tokens included (default: the model's max_seq_length).
    #[arg(long)]
    max_seq_len: Option<usize>,
    /// Take the text from this field (a .jsonl key or a .tsv header column) instead of the
    /// BEIR title + text.
    #[arg(long)]
    field: Option<String>,
    /// Self-attention: `full` (the model as trained), or REWA attention, where each query
    /// attends only to the keys a compressed code ranks closest:
    /// rewa:bits=<1..=1024>,top=<n>[,sink=<n>][,last=<n>][,window=<n>][,score=hamming|asym|exact][,rank=<n>,keys=FILE]
    /// (codes of `bits` sign bits from random Hadamard rotations of each head's centred keys, or
    /// of the directions `rewa attention fit` wrote to FILE; `top` keys kept by code besides the
    /// first `sink` tokens (default 1), the last `last` (default 0) and those within `window`
    /// positions; exact softmax over the kept keys; score=exact ranks by q.k itself, the
    /// reference for the codes). Native forward pass only. Recorded in --json's output.
    #[arg(long, default_value = "full")]
    attention: String,
    /// Arithmetic of the model's linear layers: `f32` (sentence-transformers' own) or `int8`
    /// (weights quantized per output channel at load, activations per token on the fly,
    /// exact integer sums: faster, with vectors at cosine about 0.99 to f32's; see README).
    /// Native forward pass only. Recorded in --json's output.
    #[arg(long, default_value = "f32")]
    precision: rewa_embed::Precision,
    /// Continue a stopped run of the same command from its OUT.partial.* files.
    #[arg(long)]
    resume: bool,
    /// Print the summary as JSON: count, dim, tokens, seconds, load_seconds.
    #[arg(long)]
    json: bool,
}

/// What a partial run was made from (OUT.partial.json); a resumed run must match it.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
struct Partial {
    input_bytes: u64,
    input_crc32: u32,
    model: PathBuf,
    /// SHA-256 of model.safetensors: weights rewritten in place at the same size differ here.
    weights_sha256: String,
    max_seq_len: usize,
    field: Option<String>,
    dim: usize,
    count: usize,
    /// Chunk size, so a resumed run batches the rest exactly as one run would have.
    chunk: usize,
    /// The attention mode (`full` in records written before it existed).
    #[serde(default = "full")]
    attention: String,
    /// The precision (`f32` in records written before it existed).
    #[serde(default = "f32_name")]
    precision: String,
    rows_done: usize,
    tokens_done: usize,
}

fn full() -> String {
    "full".into()
}

fn f32_name() -> String {
    "f32".into()
}

impl Partial {
    /// Fails unless the record is one a run can be in: a chunk of at least one text, rows done
    /// a whole number of chunks (or all of them) and no more than the count.
    fn check(&self) -> std::result::Result<(), String> {
        if self.chunk == 0 {
            return Err("chunk 0".into());
        }
        if self.rows_done > self.count {
            return Err(format!("{} of {} rows done", self.rows_done, self.count));
        }
        if !self.rows_done.is_multiple_of(self.chunk) && self.rows_done != self.count {
            return Err(format!(
                "{} rows done, not a whole number of chunks of {}",
                self.rows_done, self.chunk
            ));
        }
        if self.weights_sha256.len() != 64 {
            return Err(format!("weights_sha256 {:?}", self.weights_sha256));
        }
        Ok(())
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// Texts per chunk (progress is saved after each; texts are length-sorted within one):
/// `REWA_EMBED_CHUNK` (for tests), else 16 batches.
fn chunk_len(batch: usize) -> usize {
    std::env::var("REWA_EMBED_CHUNK")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(batch * 16)
}

/// `OUT.partial.npy` and `OUT.partial.json`.
fn partial_paths(out: &Path) -> (PathBuf, PathBuf) {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (
        out.with_file_name(format!("{name}.partial.npy")),
        out.with_file_name(format!("{name}.partial.json")),
    )
}

/// Opens the streamed .npy of a run: a fresh one holding just `header`, or the resumed one cut
/// back to the header and the `rows` rows of `dim` floats its state records (a run stopped
/// between appending rows and recording them left extra bytes).
fn open_rows(
    path: &Path,
    header: &[u8],
    (rows, dim): (usize, usize),
    fresh: bool,
) -> Result<std::fs::File> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(fresh)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    if fresh {
        f.write_all(header)
            .with_context(|| format!("writing {}", path.display()))?;
        return Ok(f);
    }
    let keep = (header.len() + rows * dim * 4) as u64;
    let len = f.metadata()?.len();
    let mut head = vec![0u8; header.len()];
    let head_ok = len >= keep && f.read_exact(&mut head).is_ok() && head == header;
    if !head_ok {
        bail!(
            "{} does not hold the {rows} rows its state records: delete it and its .partial.json to start again",
            path.display(),
        );
    }
    f.set_len(keep)?;
    Ok(f)
}

#[derive(serde::Serialize)]
struct Summary {
    count: usize,
    dim: usize,
    /// Word pieces after truncation, special tokens included, padding excluded.
    tokens: usize,
    /// Embedding alone (tokenizing included, model load excluded).
    seconds: f64,
    load_seconds: f64,
    max_seq_len: usize,
    batch: usize,
    /// Texts a stopped run had already embedded (0 unless --resume continued one).
    resumed_from: usize,
    /// The attention mode (`full`, or the `rewa:...` spec).
    attention: String,
    /// The linear layers' arithmetic (`f32` or `int8`).
    precision: String,
}

pub fn run(a: Args) -> Result<()> {
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let attention: rewa_embed::Attention = a.attention.parse().context("--attention")?;
    rewa::io::check_writable(&a.out).context("--out")?;
    if let Some(ids_out) = &a.ids_out {
        if ids_out == &a.out {
            bail!("--ids-out and --out are the same file {}", a.out.display());
        }
        rewa::io::check_writable(ids_out).context("--ids-out")?;
    }
    let field = a.field.clone().map_or(TextField::Beir, TextField::Named);
    let input = scan_input(&a, &field)?;
    let t = Instant::now();
    let embedder = load_model(&a, attention)?;
    let load_seconds = t.elapsed().as_secs_f64();
    log(&format!(
        "loaded {} ({:?}, dim {}, max_seq_len {}, {}{}) in {load_seconds:.2}s",
        a.model.display(),
        embedder.model_dir().arch,
        embedder.dim(),
        embedder.max_seq_len(),
        embedder.precision(),
        match embedder.precision() {
            rewa_embed::Precision::Int8 => format!(" on {} kernels", rewa_embed::int8_kernel()),
            rewa_embed::Precision::F32 => String::new(),
        }
    ));

    let mut run = Progress::start_or_resume(&a, &embedder, &input)?;
    let resumed_from = run.state.rows_done;
    let t = Instant::now();
    run.embed(&embedder, &a.input, &field)?;
    let seconds = t.elapsed().as_secs_f64();
    if let (Some(ids_out), Some(ids)) = (&a.ids_out, &input.ids) {
        let mut text = ids.join("\n");
        text.push('\n');
        rewa::io::write_text(ids_out, &text)
            .with_context(|| format!("writing {}", ids_out.display()))?;
    }
    let state = run.finish(&a.out)?;

    let s = Summary {
        count: state.count,
        dim: state.dim,
        tokens: state.tokens_done,
        seconds,
        load_seconds,
        max_seq_len: embedder.max_seq_len(),
        batch: a.batch,
        resumed_from,
        attention: embedder.attention().to_string(),
        precision: embedder.precision().to_string(),
    };
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!(
            "embedded {} texts ({} word pieces{}) into {} x {} in {:.2}s ({:.0} texts/s, {:.0} tokens/s); wrote {}",
            s.count,
            s.tokens,
            match embedder.attention() {
                rewa_embed::Attention::Full => String::new(),
                a => format!(", attention {a}"),
            },
            s.count,
            s.dim,
            seconds,
            s.count as f64 / seconds.max(1e-9),
            s.tokens as f64 / seconds.max(1e-9),
            a.out.display()
        );
    }
    Ok(())
}

/// What the first pass over --input found: it checks every line (before the model loads)
/// without keeping the texts, so memory does not grow with the corpus.
struct Input {
    count: usize,
    /// The ids, kept only for --ids-out.
    ids: Option<Vec<String>>,
    bytes: u64,
    crc32: u32,
}

/// A reader that checksums what passes through it.
struct Crc<R> {
    inner: R,
    hasher: crc32fast::Hasher,
    bytes: u64,
}

impl<R: Read> Read for Crc<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

fn scan_input(a: &Args, field: &TextField) -> Result<Input> {
    let context = || format!("reading texts from {}", a.input.display());
    rewa_embed::require_regular_file(&a.input).context("--input")?;
    let file = std::fs::File::open(&a.input).with_context(context)?;
    let crc = Crc {
        inner: file,
        hasher: crc32fast::Hasher::new(),
        bytes: 0,
    };
    let mut reader = TextReader::new(
        std::io::BufReader::with_capacity(1 << 16, crc),
        &a.input,
        field,
    )
    .with_context(context)?;
    let mut count = 0;
    let mut ids = a.ids_out.as_ref().map(|_| Vec::new());
    for record in &mut reader {
        let (id, _) = record.with_context(context)?;
        if let Some(ids) = &mut ids {
            if id.contains(['\n', '\r']) {
                bail!(
                    "{}: the id of text {} holds a line break, which --ids-out cannot write",
                    a.input.display(),
                    count + 1
                );
            }
            ids.push(id);
        }
        count += 1;
    }
    if count == 0 {
        bail!("{} holds no texts", a.input.display());
    }
    let crc = reader.into_inner().into_inner();
    log(&format!("read {count} texts from {}", a.input.display()));
    Ok(Input {
        count,
        ids,
        bytes: crc.bytes,
        crc32: crc.hasher.finalize(),
    })
}

/// The model of --model with --max-seq-len, --batch and --attention applied.
fn load_model(a: &Args, attention: rewa_embed::Attention) -> Result<Embedder> {
    let mut embedder = Embedder::load_precision(&a.model, a.precision)
        .with_context(|| format!("loading the model {}", a.model.display()))?;
    if let Some(n) = a.max_seq_len {
        embedder.set_max_seq_len(n).context("--max-seq-len")?;
    }
    embedder.set_batch_size(a.batch)?;
    embedder.set_attention(attention).context("--attention")?;
    Ok(embedder)
}

/// A run's streamed output and its recorded state.
struct Progress {
    rows: std::fs::File,
    rows_path: PathBuf,
    state_path: PathBuf,
    header_len: usize,
    state: Partial,
}

impl Progress {
    /// Starts a run, or continues the stopped one beside --out when --resume says so and its
    /// record matches this run's input, model and settings.
    fn start_or_resume(a: &Args, embedder: &Embedder, input: &Input) -> Result<Progress> {
        let mut state = Partial {
            input_bytes: input.bytes,
            input_crc32: input.crc32,
            model: std::fs::canonicalize(&a.model).unwrap_or_else(|_| a.model.clone()),
            weights_sha256: rewa_embed::weights_sha256(&a.model)?,
            max_seq_len: embedder.max_seq_len(),
            field: a.field.clone(),
            dim: embedder.dim(),
            count: input.count,
            chunk: chunk_len(a.batch),
            attention: embedder.attention().to_string(),
            precision: embedder.precision().to_string(),
            rows_done: 0,
            tokens_done: 0,
        };
        let (rows_path, state_path) = partial_paths(&a.out);
        let resumed = state_path.exists();
        if resumed && !a.resume {
            bail!(
                "{} is left from a stopped run: pass --resume to continue it, or delete {} and {}",
                state_path.display(),
                state_path.display(),
                rows_path.display()
            );
        }
        if resumed {
            let start_again = format!("delete it and {} to start again", rows_path.display());
            let text = std::fs::read_to_string(&state_path)
                .with_context(|| format!("reading {}", state_path.display()))?;
            let old: Partial = serde_json::from_str(&text).with_context(|| {
                format!(
                    "--resume: {} is not a state rewa embed wrote: {start_again}",
                    state_path.display()
                )
            })?;
            if let Err(why) = old.check() {
                bail!(
                    "--resume: {} records an impossible state ({why}): {start_again}",
                    state_path.display()
                );
            }
            if old.weights_sha256 != state.weights_sha256 {
                bail!(
                    "--resume: the weights {} changed since the stopped run (SHA-256 {}, the run recorded {}): {start_again}",
                    a.model.join("model.safetensors").display(),
                    short(&state.weights_sha256),
                    short(&old.weights_sha256)
                );
            }
            let same = Partial {
                rows_done: old.rows_done,
                tokens_done: old.tokens_done,
                chunk: old.chunk,
                ..state
            };
            if old != same {
                bail!(
                    "--resume: {} was made from other inputs or settings (input, model, --max-seq-len, --field or --attention differ): {start_again}",
                    state_path.display(),
                );
            }
            state = old;
            log(&format!(
                "resuming after {} of {} texts",
                state.rows_done, state.count
            ));
        } else if a.resume {
            log("--resume: no stopped run to continue; starting from the first text");
        }
        let header = rewa::io::npy_header_f32(state.count, state.dim);
        let mut rows = open_rows(&rows_path, &header, (state.rows_done, state.dim), !resumed)?;
        rows.seek(std::io::SeekFrom::End(0))?;
        Ok(Progress {
            rows,
            rows_path,
            state_path,
            header_len: header.len(),
            state,
        })
    }

    /// Embeds the texts not yet done, a chunk at a time, appending and recording each. The
    /// texts are read again, a chunk at a time.
    fn embed(&mut self, embedder: &Embedder, input: &Path, field: &TextField) -> Result<()> {
        let stop_after: Option<usize> = std::env::var("REWA_EMBED_STOP_AFTER_CHUNKS")
            .ok()
            .and_then(|v| v.parse().ok());
        let context = || format!("reading texts from {}", input.display());
        let changed = || {
            anyhow::anyhow!(
                "{} changed while it was being embedded: it no longer holds {} texts",
                input.display(),
                self.state.count
            )
        };
        let mut reader = TextReader::open(input, field).with_context(context)?;
        for _ in 0..self.state.rows_done {
            reader.next().ok_or_else(changed)?.with_context(context)?;
        }
        let count = self.state.count;
        let pb = progress_bar(count as u64, "embedding texts");
        pb.set_position(self.state.rows_done as u64);
        let mut chunks_run = 0;
        while self.state.rows_done < count {
            if stop_after == Some(chunks_run) {
                pb.abandon();
                bail!("stopped after {chunks_run} chunks (REWA_EMBED_STOP_AFTER_CHUNKS)");
            }
            let end = (self.state.rows_done + self.state.chunk).min(count);
            let mut texts = Vec::with_capacity(end - self.state.rows_done);
            for _ in self.state.rows_done..end {
                let (_, text) = reader.next().ok_or_else(changed)?.with_context(context)?;
                texts.push(text);
            }
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let done = embedder
                .embed_with_progress(&refs, |n| pb.inc(n as u64))
                .context("embedding")?;
            let bytes: Vec<u8> = done
                .vectors
                .as_slice()
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            self.rows
                .write_all(&bytes)
                .and_then(|()| self.rows.sync_data())
                .with_context(|| format!("writing {}", self.rows_path.display()))?;
            self.state.rows_done = end;
            self.state.tokens_done += done.tokens;
            rewa::io::write_text(&self.state_path, &serde_json::to_string(&self.state)?)
                .with_context(|| format!("writing {}", self.state_path.display()))?;
            chunks_run += 1;
        }
        if reader.next().is_some() {
            return Err(changed());
        }
        pb.finish_and_clear();
        Ok(())
    }

    /// Puts the finished .npy at `out` and removes the record; returns the final state.
    fn finish(self, out: &Path) -> Result<Partial> {
        let Progress {
            rows,
            rows_path,
            state_path,
            header_len,
            state,
        } = self;
        let want = (header_len + state.count * state.dim * 4) as u64;
        let len = rows.metadata()?.len();
        if len != want {
            bail!(
                "{} holds {len} bytes, not the {want} of {} rows",
                rows_path.display(),
                state.count
            );
        }
        drop(rows);
        let out_is_link = std::fs::symlink_metadata(out).is_ok_and(|m| m.file_type().is_symlink());
        if out_is_link {
            // Write through the link, as rewa's writers do, rather than replace it.
            let v = rewa::io::read_vectors(&rows_path)?;
            rewa::io::write_npy_f32(out, &v)
                .with_context(|| format!("writing {}", out.display()))?;
            std::fs::remove_file(&rows_path)
                .with_context(|| format!("removing {}", rows_path.display()))?;
        } else {
            // Every chunk was synced as it was appended.
            std::fs::rename(&rows_path, out).with_context(|| {
                format!("renaming {} to {}", rows_path.display(), out.display())
            })?;
        }
        std::fs::remove_file(&state_path)
            .with_context(|| format!("removing {}", state_path.display()))?;
        Ok(state)
    }
}
