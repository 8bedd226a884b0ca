//! Text inputs of `build`, `search` and `eval`: a model loaded once, files embedded with a
//! progress bar. The embedding itself is `rewa_embed`'s.

use crate::data::{log, progress_bar};
use anyhow::{Context, Result};
use rewa::TextModel;
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
    /// With text input: the model's linear layers in `f32` or `int8` (faster; see `rewa embed
    /// --help`). A new index records it; texts for an existing index are embedded in the
    /// precision it records (asking for another is an error).
    #[arg(long, value_name = "f32|int8")]
    pub precision: Option<rewa_embed::Precision>,
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

impl CheckedTexts<'_> {
    /// Fails unless these texts can be added to `index` under their ids: the index names its
    /// rows by corpus ids (or holds none yet) and no id already names a row it holds. Checked
    /// before the model loads, not after the embedding (the library checks again when adding).
    pub fn check_new_for(&self, index: &rewa::Index, dir: &Path) -> Result<()> {
        let Some(doc_ids) = index.doc_ids() else {
            if index.next_id() > 0 {
                anyhow::bail!(
                    "{}: its {} rows have no corpus ids (it was built from vectors), so texts cannot be added by id: add vectors with --base",
                    dir.display(),
                    index.len()
                );
            }
            return Ok(());
        };
        let deleted: std::collections::HashSet<u32> = index.deleted().iter().copied().collect();
        let live: std::collections::HashSet<&str> = index
            .segments()
            .iter()
            .flat_map(|s| s.ids())
            .filter(|i| !deleted.contains(i))
            .filter_map(|i| doc_ids.get(i as usize).map(String::as_str))
            .collect();
        if let Some((n, id)) = self
            .ids
            .iter()
            .enumerate()
            .find(|(_, id)| live.contains(id.as_str()))
        {
            anyhow::bail!(
                "{}: text {} has id {id:?}, which already names a row of {} (ids must be unique; delete that row first to replace it)",
                self.path.display(),
                n + 1,
                dir.display()
            );
        }
        Ok(())
    }
}

/// Loads a sentence-transformers model directory with the batch size and precision of `opts`
/// (f32 unless it says otherwise).
pub fn load_model(dir: &Path, opts: &TextOpts) -> Result<Embedder> {
    load_in(dir, opts, opts.precision.unwrap_or_default())
}

/// Loads the model to embed texts for an index that records `recorded`: in the precision it
/// records, and checked against it (weights, precision; the truncation length is taken from it).
pub fn load_model_for(dir: &Path, opts: &TextOpts, recorded: &TextModel) -> Result<Embedder> {
    let p = Embedder::recorded_precision(recorded)?;
    if let Some(asked) = opts.precision.filter(|&a| a != p) {
        anyhow::bail!(
            "--precision {asked}: the index's documents were embedded in {p}, and queries must be embedded the same way"
        );
    }
    let mut e = load_in(dir, opts, p)?;
    e.check_against(recorded)?;
    Ok(e)
}

fn load_in(dir: &Path, opts: &TextOpts, precision: rewa_embed::Precision) -> Result<Embedder> {
    let t = Instant::now();
    let mut e = Embedder::load_precision(dir, precision)
        .with_context(|| format!("loading the model {}", dir.display()))?;
    e.set_batch_size(opts.batch).context("--batch")?;
    log(&format!(
        "loaded {} ({:?}, dim {}, max_seq_len {}, {}) in {:.2}s",
        dir.display(),
        e.model_dir().arch,
        e.dim(),
        e.max_seq_len(),
        e.precision(),
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
