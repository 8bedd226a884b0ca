//! Writing an index and its documents together, in the order that keeps them agreeing after a
//! kill at any point (see the crate doc): every front end's build, add, delete and compact
//! go through these.

use crate::{sync_dir, Docs, Error, Record, Result};
use rewa::index::{crash_test_pause, WriteLock};
use rewa::Index;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Where a build replacing an index keeps what it replaces until its manifest is in place:
/// `docs.old/manifest.crc` (the CRC-32 of the manifest the old documents went with, or
/// `none`, and whether there were documents), and `docs.old/store` (those documents).
fn old_dir(dir: &Path) -> PathBuf {
    dir.join("docs.old")
}

fn manifest_crc(dir: &Path) -> String {
    std::fs::read(dir.join("manifest.json"))
        .map(|b| format!("{:08x}", crc32fast::hash(&b)))
        .unwrap_or_else(|_| "none".into())
}

/// The state a killed rebuild left, read without changing anything.
enum Rebuild {
    /// No rebuild was interrupted.
    Clean,
    /// The old manifest is still in place; its documents are `Some(dir)` (or there were none).
    OldLive(Option<PathBuf>),
    /// The new manifest landed: `docs/` is its store; `docs.old/` only awaits removal.
    NewLive,
}

fn rebuild_state(dir: &Path) -> Rebuild {
    let old = old_dir(dir);
    if !old.is_dir() {
        return Rebuild::Clean;
    }
    let Ok(marker) = std::fs::read_to_string(old.join("manifest.crc")) else {
        // killed while writing the marker: nothing was moved yet
        return Rebuild::OldLive(Some(Docs::path(dir)));
    };
    let mut lines = marker.lines();
    let (crc, had) = (lines.next().unwrap_or(""), lines.next() == Some("store"));
    if crc != manifest_crc(dir) {
        return Rebuild::NewLive;
    }
    match (had, old.join("store").is_dir()) {
        (true, true) => Rebuild::OldLive(Some(old.join("store"))),
        (true, false) => Rebuild::OldLive(Some(Docs::path(dir))), // not moved yet
        (false, _) => Rebuild::OldLive(None),
    }
}

/// The store that goes with the manifest now in `dir`.
pub(crate) fn live_store(dir: &Path) -> Option<PathBuf> {
    match rebuild_state(dir) {
        Rebuild::Clean | Rebuild::NewLive => Some(Docs::path(dir)),
        Rebuild::OldLive(s) => s,
    }
}

/// Puts back what a killed rebuild moved (its manifest never landed) or removes what it left
/// (it did); for a writer holding the index's lock.
fn recover(dir: &Path) -> Result<()> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| Error::Io { path: p, source }
    };
    let old = old_dir(dir);
    match rebuild_state(dir) {
        Rebuild::Clean => return Ok(()),
        Rebuild::NewLive => {}
        Rebuild::OldLive(store) => {
            let docs = Docs::path(dir);
            if store.as_deref() != Some(docs.as_path()) {
                if docs.exists() {
                    std::fs::remove_dir_all(&docs).map_err(io(&docs))?;
                }
                if let Some(s) = store {
                    std::fs::rename(&s, &docs).map_err(io(&s))?;
                }
            }
        }
    }
    std::fs::remove_dir_all(&old).map_err(io(&old))?;
    sync_dir(dir)
}

/// The documents of the index in `dir` (opened as `index`), repaired to agree with it, for a
/// writer holding the index's lock; `None` when it has none.
pub fn open_for_write(dir: &Path, index: &Index) -> Result<Option<Docs>> {
    recover(dir)?;
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
    save_add_with(index, dir, docs, first, records, || index.save_locked(lock))
}

fn save_add_with(
    index: &Index,
    dir: &Path,
    docs: &mut Option<Docs>,
    first: u32,
    records: Option<Vec<Record>>,
    save_index: impl FnOnce() -> rewa::Result<()>,
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
    save_index()?;
    Ok(())
}

/// Saves a new index built into `dir` with `records` (one per row; `None`: no documents).
/// The documents of an index it replaces are kept aside (`docs.old/`, with the CRC of the
/// manifest they go with) until the new manifest is in place, so a kill at any point leaves
/// the old index with its documents or the new one with its own.
pub fn save_build(
    index: &Index,
    dir: &Path,
    lock: &WriteLock,
    records: Option<Vec<Record>>,
) -> Result<Option<Docs>> {
    save_build_with(index, dir, records, || index.save_locked(lock))
}

/// [`save_build`] with the index saved by `save_index` (under the caller's lock: Python's
/// `save(force=True)` replaces rather than saves).
pub fn save_build_with(
    index: &Index,
    dir: &Path,
    records: Option<Vec<Record>>,
    save_index: impl FnOnce() -> rewa::Result<()>,
) -> Result<Option<Docs>> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| Error::Io { path: p, source }
    };
    recover(dir)?;
    let old = old_dir(dir);
    let docs_dir = Docs::path(dir);
    let had = docs_dir.is_dir();
    std::fs::create_dir_all(&old).map_err(io(&old))?;
    let marker = format!(
        "{}\n{}\n",
        manifest_crc(dir),
        if had { "store" } else { "none" }
    );
    let mpath = old.join("manifest.crc");
    std::fs::write(&mpath, marker).map_err(io(&mpath))?;
    std::fs::File::open(&mpath)
        .and_then(|f| f.sync_all())
        .map_err(io(&mpath))?;
    sync_dir(&old)?;
    if had {
        std::fs::rename(&docs_dir, old.join("store")).map_err(io(&docs_dir))?;
        sync_dir(&old)?;
    }
    sync_dir(dir)?;
    let mut docs = None;
    save_add_with(index, dir, &mut docs, 0, records, save_index)?;
    // the new manifest is in place: what it replaced goes
    std::fs::remove_dir_all(&old).map_err(io(&old))?;
    sync_dir(dir)?;
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
