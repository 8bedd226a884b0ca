//! Whole text files to vectors, and the identity of a model's weights: what a text-aware index
//! (`rewa build --model --text`, `rewa search --text`, `rewa eval --text`) is made from.

use crate::model_dir::weights_sha256;
use crate::precision::Precision;
use crate::{Embedder, Error, Result, TextField, TextReader};
use rewa::{TextModel, Vectors};
use std::path::Path;

/// The texts of a file, embedded.
#[derive(Debug, Clone)]
pub struct EmbeddedFile {
    /// Each text's id (the `_id` of a BEIR `.jsonl`, the first column of a `.tsv`, the line
    /// number of a `.txt`), in file order.
    pub ids: Vec<String>,
    /// Each text's vector, in file order.
    pub vectors: Vectors,
    /// Word pieces the model saw, after truncation, special tokens included.
    pub tokens: usize,
}

/// Fails unless `path` is a regular file (or a link to one). A text file is read twice, checked
/// before the model loads and then embedded a chunk at a time; a FIFO or a device gives its
/// bytes once, and a second open of a FIFO waits for a writer that never comes.
pub fn require_regular_file(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(Error::InvalidInput(format!(
            "{}: not a regular file (texts are read twice, checked before the model loads and then embedded, and a pipe or device can be read only once): write it to a file first",
            path.display()
        )));
    }
    Ok(())
}

/// Reads every record of `path` once (checking each line and the ids' uniqueness) and returns
/// the ids, before any model work: a bad line fails at once, not after an hour of embedding.
/// `path` must be a regular file ([`require_regular_file`]).
pub fn read_ids(path: &Path, field: &TextField) -> Result<Vec<String>> {
    require_regular_file(path)?;
    let mut ids = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for record in TextReader::open(path, field)? {
        let (id, _) = record?;
        if !seen.insert(id.clone()) {
            return Err(Error::InvalidInput(format!(
                "{}: id {id:?} names two texts (text {} and an earlier one)",
                path.display(),
                ids.len() + 1
            )));
        }
        ids.push(id);
    }
    if ids.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{} holds no texts",
            path.display()
        )));
    }
    Ok(ids)
}

/// Embeds every text of `path`, reading it a chunk of 16 batches at a time (memory holds the
/// vectors, not the corpus), calling `progress(done, total)` after each batch. Each text's
/// vector is what [`Embedder::embed`] gives it alone.
pub fn embed_file(
    embedder: &Embedder,
    path: &Path,
    field: &TextField,
    progress: impl FnMut(usize, usize),
) -> Result<EmbeddedFile> {
    embed_checked_file(embedder, path, field, read_ids(path, field)?, progress)
}

/// [`embed_file`] for a file whose `ids` [`read_ids`] already gave (the file is not read a
/// second time to check it; a file that changed since is an error).
pub fn embed_checked_file(
    embedder: &Embedder,
    path: &Path,
    field: &TextField,
    ids: Vec<String>,
    mut progress: impl FnMut(usize, usize),
) -> Result<EmbeddedFile> {
    let total = ids.len();
    let chunk = embedder.batch_size() * 16;
    let mut reader = TextReader::open(path, field)?;
    let mut flat = Vec::with_capacity(total * embedder.dim());
    let mut tokens = 0;
    let mut done = 0;
    let changed = || {
        Error::InvalidInput(format!(
            "{} changed while it was being embedded",
            path.display()
        ))
    };
    while done < total {
        let end = (done + chunk).min(total);
        let mut texts = Vec::with_capacity(end - done);
        for i in done..end {
            let (id, text) = reader.next().ok_or_else(changed)??;
            if id != ids[i] {
                return Err(changed());
            }
            texts.push(text);
        }
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mut batch_done = done;
        let e = embedder.embed_with_progress(&refs, |n| {
            batch_done += n;
            progress(batch_done, total);
        })?;
        flat.extend_from_slice(e.vectors.as_slice());
        tokens += e.tokens;
        done = end;
    }
    if reader.next().is_some() {
        return Err(changed());
    }
    let vectors = Vectors::new(embedder.dim(), flat)
        .map_err(|e| Error::InvalidInput(format!("assembling the vectors: {e}")))?;
    Ok(EmbeddedFile {
        ids,
        vectors,
        tokens,
    })
}

impl Embedder {
    /// What an index built with this model records: its directory, the SHA-256 of its
    /// weights (read and hashed now) and the truncation length in use.
    pub fn text_model(&self) -> Result<TextModel> {
        let dir = &self.model_dir().dir;
        let shown = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
        Ok(TextModel {
            dir: shown.display().to_string(),
            weights_sha256: weights_sha256(dir)?,
            max_seq_len: self.max_seq_len(),
            precision: self.precision().name().into(),
        })
    }

    /// Fails unless this model is the one `recorded` names (same weights; the truncation
    /// length is set to the recorded one): queries must be embedded as the documents were.
    pub fn check_against(&mut self, recorded: &TextModel) -> Result<()> {
        let sha = weights_sha256(&self.model_dir().dir)?;
        if sha != recorded.weights_sha256 {
            return Err(Error::InvalidInput(format!(
                "the model at {} is not the one the index was built with (weights SHA-256 {}, the index records {} from {})",
                self.model_dir().dir.display(),
                short(&sha),
                short(&recorded.weights_sha256),
                recorded.dir
            )));
        }
        if self.precision().name() != recorded.precision {
            return Err(Error::InvalidInput(format!(
                "the index's documents were embedded in {} and this model is loaded in {}: queries must be embedded as the documents were (load it with precision {})",
                recorded.precision,
                self.precision(),
                recorded.precision
            )));
        }
        self.set_max_seq_len(recorded.max_seq_len)
    }

    /// The precision `recorded` names (an index's record of its model).
    pub fn recorded_precision(recorded: &TextModel) -> Result<Precision> {
        recorded.precision.parse().map_err(|_| {
            Error::InvalidInput(format!(
                "the index records precision {:?}, which this build does not know",
                recorded.precision
            ))
        })
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}
