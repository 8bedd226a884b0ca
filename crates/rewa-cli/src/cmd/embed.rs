use crate::data::{log, progress_bar};
use anyhow::{bail, Context, Result};
use rewa_embed::{read_texts, Embedder, TextField};
use std::path::PathBuf;
use std::time::Instant;

/// Embed texts with a sentence-transformers model directory (BERT or MPNet) and write the
/// vectors as float32 .npy, one row per text in input order. The input is read and checked
/// whole before the model loads; outputs are written atomically at the end. With --json,
/// stdout holds exactly one JSON object.
#[derive(clap::Args)]
pub struct Args {
    /// The model directory (modules.json, config.json, model.safetensors, tokenizer.json, ...),
    /// as scripts/fetch-models.sh lays it out.
    #[arg(long)]
    model: PathBuf,
    /// Texts: .jsonl (BEIR layout: (title + " " + text).strip(), `_id` as id), .txt (one text
    /// per line) or .tsv (id<TAB>text or id<TAB>title<TAB>text; with --field, a header line).
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
    /// Print the summary as JSON: count, dim, tokens, seconds, load_seconds.
    #[arg(long)]
    json: bool,
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
}

pub fn run(a: Args) -> Result<()> {
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    rewa::io::check_writable(&a.out).context("--out")?;
    if let Some(ids_out) = &a.ids_out {
        if ids_out == &a.out {
            bail!("--ids-out and --out are the same file {}", a.out.display());
        }
        rewa::io::check_writable(ids_out).context("--ids-out")?;
    }
    let field = a.field.clone().map_or(TextField::Beir, TextField::Named);
    let texts = read_texts(&a.input, &field)
        .with_context(|| format!("reading texts from {}", a.input.display()))?;
    if texts.is_empty() {
        bail!("{} holds no texts", a.input.display());
    }
    if a.ids_out.is_some() {
        if let Some(i) = texts.ids.iter().position(|id| id.contains(['\n', '\r'])) {
            bail!(
                "{}: the id of text {} holds a line break, which --ids-out cannot write",
                a.input.display(),
                i + 1
            );
        }
    }
    log(&format!(
        "read {} texts from {}",
        texts.len(),
        a.input.display()
    ));

    let t = Instant::now();
    let mut embedder = Embedder::load(&a.model)
        .with_context(|| format!("loading the model {}", a.model.display()))?;
    if let Some(n) = a.max_seq_len {
        embedder.set_max_seq_len(n).context("--max-seq-len")?;
    }
    embedder.set_batch_size(a.batch)?;
    let load_seconds = t.elapsed().as_secs_f64();
    log(&format!(
        "loaded {} ({:?}, dim {}, max_seq_len {}) in {load_seconds:.2}s",
        a.model.display(),
        embedder.model_dir().arch,
        embedder.dim(),
        embedder.max_seq_len()
    ));

    let t = Instant::now();
    let refs: Vec<&str> = texts.texts.iter().map(String::as_str).collect();
    let pb = progress_bar(refs.len() as u64, "embedding texts");
    let done = embedder
        .embed_with_progress(&refs, |n| pb.inc(n as u64))
        .context("embedding")?;
    pb.finish_and_clear();
    let seconds = t.elapsed().as_secs_f64();

    rewa::io::write_npy_f32(&a.out, &done.vectors)
        .with_context(|| format!("writing {}", a.out.display()))?;
    if let Some(ids_out) = &a.ids_out {
        let mut text = texts.ids.join("\n");
        text.push('\n');
        rewa::io::write_text(ids_out, &text)
            .with_context(|| format!("writing {}", ids_out.display()))?;
    }
    let s = Summary {
        count: done.vectors.len(),
        dim: done.vectors.dim(),
        tokens: done.tokens,
        seconds,
        load_seconds,
        max_seq_len: embedder.max_seq_len(),
        batch: a.batch,
    };
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!(
            "embedded {} texts ({} word pieces) into {} x {} in {:.2}s ({:.0} texts/s, {:.0} tokens/s); wrote {}",
            s.count,
            s.tokens,
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
