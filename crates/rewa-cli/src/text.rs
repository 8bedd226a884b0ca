//! Text inputs of `build`, `search` and `eval`: a model loaded once, files embedded with a
//! progress bar. The embedding itself is `rewa_embed`'s.

use crate::data::{log, progress_bar};
use anyhow::{Context, Result};
use rewa_embed::{EmbeddedFile, Embedder, TextField};
use std::path::Path;
use std::time::Instant;

/// How texts are read and embedded.
#[derive(clap::Args, Clone, Debug)]
pub struct TextOpts {
    /// With text input: take each text from this field (a .jsonl key or a .tsv header column)
    /// instead of the BEIR title + text.
    #[arg(long, value_name = "NAME")]
    pub field: Option<String>,
    /// With text input: texts per forward pass.
    #[arg(long, default_value_t = rewa_embed::DEFAULT_BATCH_SIZE, value_name = "N")]
    pub batch: usize,
}

impl TextOpts {
    pub fn field(&self) -> TextField {
        self.field.clone().map_or(TextField::Beir, TextField::Named)
    }
}

/// The texts of a file, checked line by line (and their ids unique) before any model work.
pub struct CheckedTexts<'a> {
    path: &'a Path,
    ids: Vec<String>,
}

/// Reads every text of `path` once, checking each line, and keeps the ids.
pub fn check_texts<'a>(path: &'a Path, opts: &TextOpts) -> Result<CheckedTexts<'a>> {
    let ids = rewa_embed::read_ids(path, &opts.field())
        .with_context(|| format!("reading texts from {}", path.display()))?;
    Ok(CheckedTexts { path, ids })
}

/// Loads a sentence-transformers model directory with the batch size of `opts`.
pub fn load_model(dir: &Path, opts: &TextOpts) -> Result<Embedder> {
    let t = Instant::now();
    let mut e =
        Embedder::load(dir).with_context(|| format!("loading the model {}", dir.display()))?;
    e.set_batch_size(opts.batch).context("--batch")?;
    log(&format!(
        "loaded {} ({:?}, dim {}, max_seq_len {}) in {:.2}s",
        dir.display(),
        e.model_dir().arch,
        e.dim(),
        e.max_seq_len(),
        t.elapsed().as_secs_f64()
    ));
    Ok(e)
}

/// Embeds checked texts with a progress bar.
pub fn embed_file(
    embedder: &Embedder,
    texts: CheckedTexts<'_>,
    field: &TextField,
) -> Result<EmbeddedFile> {
    let t = Instant::now();
    let path = texts.path;
    let pb = progress_bar(texts.ids.len() as u64, "embedding texts");
    let out = rewa_embed::embed_checked_file(embedder, path, field, texts.ids, |done, _| {
        pb.set_position(done as u64);
    })
    .with_context(|| format!("embedding the texts of {}", path.display()))?;
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    log(&format!(
        "embedded {} texts of {} ({} word pieces) in {secs:.2}s ({:.0} tokens/s)",
        out.ids.len(),
        path.display(),
        out.tokens,
        out.tokens as f64 / secs.max(1e-9)
    ));
    Ok(out)
}
