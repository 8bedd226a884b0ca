//! Writing an index and its documents together, in the order that keeps them agreeing after a
//! kill at any point (see the crate doc): every front end's build, add, delete and compact
//! go through these.

use crate::{Docs, Error, Record, Result};
use rewa::index::{crash_test_pause, WriteLock};
use rewa::Index;
use serde_json::{Map, Value};
use std::path::Path;

/// The documents of the index in `dir` (opened as `index`), repaired to agree with it, for a
/// writer holding the index's lock; `None` when it has none.
pub fn open_for_write(dir: &Path, index: &Index) -> Result<Option<Docs>> {
    let Some(mut d) = Docs::open(dir)? else {
        return Ok(None);
    };
    d.sync(index.next_id() as u32, index.deleted())?;
    Ok(Some(d))
}

/// Saves `index`, which gained rows `first..index.next_id()`, with `records` for them (one
/// per row, in order): the documents commit first, then the index's manifest. With no
/// records and no documents, only the index is saved; with no records and documents, the
/// rows get empty documents (every row has one). Records for an index without documents
/// create them (the earlier rows get empty ones).
pub fn save_add(
    index: &Index,
    dir: &Path,
    lock: &WriteLock,
    docs: &mut Option<Docs>,
    first: u32,
    records: Option<Vec<Record>>,
) -> Result<()> {
    let n = index.next_id() as u32 - first;
    if let Some(r) = &records {
        if r.len() != n as usize {
            return Err(Error::Invalid(format!(
                "{} records for {n} new rows (one record per row, in order)",
                r.len()
            )));
        }
    }
    match (docs.as_mut(), records) {
        (None, None) => {}
        (Some(d), records) => {
            let r = records.unwrap_or_else(|| vec![Record::default(); n as usize]);
            d.add(first, &r, index.deleted())?;
        }
        (None, Some(r)) => {
            let mut d = Docs::create(dir)?;
            let mut all = vec![Record::default(); first as usize];
            all.extend(r);
            d.add(0, &all, index.deleted())?;
            *docs = Some(d);
        }
    }
    crash_test_pause("docs");
    index.save_locked(lock)?;
    Ok(())
}

/// Saves a new index built into `dir` with `records` (one per row; `None`: no documents).
/// Any document store a replaced index left there is removed first.
pub fn save_build(
    index: &Index,
    dir: &Path,
    lock: &WriteLock,
    records: Option<Vec<Record>>,
) -> Result<Option<Docs>> {
    clear(dir)?;
    let mut docs = None;
    save_add(index, dir, lock, &mut docs, 0, records)?;
    Ok(docs)
}

/// Removes the document store of `dir` (a build replacing the index there).
pub fn clear(dir: &Path) -> Result<()> {
    let p = Docs::path(dir);
    if Docs::exists(dir) || p.join(".managed.json").is_file() {
        std::fs::remove_dir_all(&p).map_err(|source| Error::Io { path: p, source })?;
    }
    Ok(())
}

/// Saves `index` after `rows` were deleted from it: the index first (its tombstones are what
/// hides the rows), then their documents go.
pub fn save_delete(
    index: &Index,
    lock: &WriteLock,
    docs: Option<&mut Docs>,
    rows: &[u32],
) -> Result<()> {
    index.save_locked(lock)?;
    crash_test_pause("docs-delete");
    if let Some(d) = docs {
        d.delete(rows, index.deleted())?;
    }
    Ok(())
}

/// Saves `index` after a compaction (row ids do not change; the documents of deleted rows
/// went when they were deleted).
pub fn save_compact(index: &Index, lock: &WriteLock, docs: Option<&mut Docs>) -> Result<()> {
    index.save_locked(lock)?;
    if let Some(d) = docs {
        d.compacted(index.deleted())?;
    }
    Ok(())
}

/// Records from a JSON-lines file, one object per line (blank lines skipped), keeping only
/// the keys in `only` when given; a line that is not an object is an error naming it.
pub fn read_records(path: &Path, only: Option<&[String]>) -> Result<Vec<Record>> {
    use std::io::BufRead;
    let f = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| {
            Error::Invalid(format!("{} line {}: not JSON: {e}", path.display(), n + 1))
        })?;
        let Value::Object(mut m) = v else {
            return Err(Error::Invalid(format!(
                "{} line {}: expected a JSON object of fields",
                path.display(),
                n + 1
            )));
        };
        if let Some(only) = only {
            m.retain(|k, _| only.iter().any(|o| o == k));
        }
        out.push(Record::new(m));
    }
    Ok(out)
}

/// The records of a text corpus as `rewa build --text` reads it: a `.jsonl` line's fields
/// (all, or those in `only`), with BM25 text `bm25` (what was embedded); a `.txt` or `.tsv`
/// text is kept as the field `text`.
pub fn text_records(
    path: &Path,
    texts: Vec<String>,
    only: Option<&[String]>,
) -> Result<Vec<Record>> {
    let jsonl = path
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "json");
    let fields: Vec<Map<String, Value>> = if jsonl {
        read_records(path, only)?
            .into_iter()
            .map(|r| r.fields)
            .collect()
    } else {
        texts
            .iter()
            .map(|t| {
                let mut m = Map::new();
                if only.is_none_or(|o| o.iter().any(|k| k == "text")) {
                    m.insert("text".into(), Value::String(t.clone()));
                }
                m
            })
            .collect()
    };
    if fields.len() != texts.len() {
        return Err(Error::Invalid(format!(
            "{}: {} records but {} texts",
            path.display(),
            fields.len(),
            texts.len()
        )));
    }
    Ok(fields
        .into_iter()
        .zip(texts)
        .map(|(f, t)| Record {
            fields: f,
            text: Some(t),
        })
        .collect())
}
