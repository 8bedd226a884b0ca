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

/// Reads every text of `path` once, checking each line, before any model work.
pub fn check_texts(path: &Path, opts: &TextOpts) -> Result<()> {
    rewa_embed::read_ids(path, &opts.field())
        .with_context(|| format!("reading texts from {}", path.display()))?;
    Ok(())
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

/// Embeds every text of `path` (checked line by line first) with a progress bar.
pub fn embed_file(embedder: &Embedder, path: &Path, field: &TextField) -> Result<EmbeddedFile> {
    let t = Instant::now();
    let pb = progress_bar(0, "embedding texts");
    let out = rewa_embed::embed_file(embedder, path, field, |done, total| {
        pb.set_length(total as u64);
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
