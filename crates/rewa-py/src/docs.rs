//! The documents of a Python `Index`: those saved in its directory, and the records of the
//! rows added since (indexed in memory, written to the directory by `save`, documents first
//! and then the index, as every front end writes them).

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use rewa_docs::{Docs, Record};
use serde_json::{Map, Value};
use std::path::Path;

/// The error as the Python exception a caller expects: a bad filter or record is a
/// ValueError with the library's words.
pub(crate) fn to_py(e: rewa_docs::Error) -> PyErr {
    match e {
        rewa_docs::Error::Filter(_) | rewa_docs::Error::Invalid(_) => {
            PyValueError::new_err(e.to_string())
        }
        rewa_docs::Error::Rewa(r) => crate::to_py(r),
        _ => PyRuntimeError::new_err(e.to_string()),
    }
}

impl crate::ToPy for rewa_docs::Error {
    fn to_py(self) -> PyErr {
        to_py(self)
    }
}

/// Saved documents and the records of rows `first..` added since.
#[derive(Default)]
pub(crate) struct PyDocs {
    saved: Option<Docs>,
    first: u32,
    pending: Vec<Record>,
    ram: Option<Docs>,
    /// Rows a compaction removed since the last save: their documents go at the next save.
    dropped: Vec<u32>,
}

impl PyDocs {
    /// The documents of the index saved in `dir` (opened as an index whose next id is
    /// `next_id`).
    pub fn open(dir: &Path, index: &rewa::Index) -> Result<PyDocs, rewa_docs::Error> {
        let next_id = index.next_id() as u32;
        let mut saved = Docs::open(dir)?;
        // documents ahead of the manifest (a writer killed between its two commits): repaired
        // now if no writer holds the index, else at this index's save; this index's own rows
        // from `next_id` on are never read from them
        if saved.as_ref().is_some_and(|d| d.next_id() > next_id) {
            if let Ok(_lock) =
                rewa::index::WriteLock::acquire_existing(dir, std::time::Duration::ZERO)
            {
                saved = rewa_docs::open_for_write(dir, index)?;
            }
        }
        Ok(PyDocs {
            saved,
            first: next_id,
            pending: Vec::new(),
            ram: None,
            dropped: Vec::new(),
        })
    }

    /// Rows a compaction is about to remove (the index's deleted ids).
    pub fn dropped(&mut self, rows: &[u32]) {
        self.dropped.extend_from_slice(rows);
    }

    /// Whether the index has documents (saved, or records waiting for `save`).
    pub fn any(&self) -> bool {
        self.saved.is_some() || self.ram.is_some()
    }

    /// Records for rows `from..from + n` just added (`None`: empty ones, when the index has
    /// documents; nothing otherwise). Rows before them without records get empty ones.
    pub fn added(
        &mut self,
        from: u32,
        n: usize,
        fields: Option<Vec<Map<String, Value>>>,
    ) -> Result<(), rewa_docs::Error> {
        if fields.is_none() && !self.any() {
            self.first = from + n as u32;
            return Ok(());
        }
        if self.saved.is_none() && self.ram.is_none() {
            // the first records: rows before them get empty documents
            self.first = 0;
            self.pending = vec![Record::default(); from as usize];
            let mut ram = Docs::create_in_ram();
            ram.add(0, &self.pending, &[])?;
            self.ram = Some(ram);
        }
        let ram = self
            .ram
            .get_or_insert_with(|| Docs::create_in_ram_at(self.first));
        let recs: Vec<Record> = match fields {
            Some(f) => f.into_iter().map(Record::new).collect(),
            None => vec![Record::default(); n],
        };
        ram.add(from, &recs, &[])?;
        self.pending.extend(recs);
        Ok(())
    }

    /// The stores to search.
    pub fn stores(&self) -> Vec<&Docs> {
        self.saved.iter().chain(self.ram.iter()).collect()
    }

    /// The fields of `rows` (`None` for rows without a document), all or those in `only`.
    pub fn get(
        &self,
        rows: &[u32],
        only: Option<&[String]>,
    ) -> Result<Vec<Option<Map<String, Value>>>, rewa_docs::Error> {
        let mut out = Vec::with_capacity(rows.len());
        for &r in rows {
            let store = if r >= self.first {
                self.ram.as_ref()
            } else {
                self.saved.as_ref()
            };
            out.push(match store {
                Some(d) => d.get(&[r], only)?.pop().flatten(),
                None => None,
            });
        }
        Ok(out)
    }

    /// Writes the documents for `index`, saved into `dir` under `lock` by `save_index` (which
    /// runs between the documents' commit and the removal of deleted rows' documents).
    /// `same_dir`: `dir` is where the saved documents live; else every record is written
    /// there anew.
    pub fn save(
        &mut self,
        index: &rewa::Index,
        dir: &Path,
        same_dir: bool,
        save_index: impl FnOnce() -> rewa::Result<()>,
    ) -> Result<(), rewa_docs::Error> {
        if !self.any() {
            if same_dir {
                save_index()?;
            } else {
                // replacing whatever was there, its documents kept aside until the manifest lands
                rewa_docs::save_build_with(index, dir, None, save_index)?;
            }
            return Ok(());
        }
        if !(same_dir && self.saved.is_some()) {
            // a new directory (or none saved yet): every row's record, written as a build
            let mut all: Vec<Record> = Vec::with_capacity(index.next_id());
            if let Some(s) = &self.saved {
                let rows: Vec<u32> = (0..self.first).collect();
                for f in s.get(&rows, None)? {
                    all.push(Record::new(f.unwrap_or_default()));
                }
            } else {
                all.resize(self.first as usize, Record::default());
            }
            all.extend(self.pending.iter().cloned());
            let mut d = rewa_docs::save_build_with(index, dir, Some(all), save_index)?
                .expect("records were given");
            d.sync(index.next_id() as u32, index.deleted())?;
            if !self.dropped.is_empty() {
                d.delete(&std::mem::take(&mut self.dropped), index.deleted())?;
            }
            self.first = index.next_id() as u32;
            self.pending.clear();
            self.ram = None;
            self.saved = Some(d);
            return Ok(());
        }
        let mut docs = self.saved.take().expect("checked above");
        docs.reload()?;
        if docs.next_id() > self.first {
            // rows a killed writer left beyond the manifest this index was read from (under
            // the lock the caller holds)
            // (no deletes here: this index's own deletes are not saved yet, and their
            // documents go only after the manifest holds them)
            if let Err(e) = docs.sync(self.first, &[]) {
                self.saved = Some(docs);
                return Err(e);
            }
        }
        // rows added since the documents were saved (documents first, then the index)
        if !self.pending.is_empty() {
            if docs.next_id() != self.first {
                let e = rewa_docs::Error::Invalid(format!(
                    "{}: its documents end at row {}, this index's saved rows at {}: another writer changed it; open it again",
                    dir.display(),
                    docs.next_id(),
                    self.first
                ));
                self.saved = Some(docs);
                return Err(e);
            }
            if let Err(e) = docs.add(self.first, &self.pending, &[]) {
                self.saved = Some(docs);
                return Err(e);
            }
        }
        if docs.next_id() != index.next_id() as u32 {
            let e = rewa_docs::Error::Invalid(format!(
                "{}: documents for rows up to {}, the index holds rows up to {}: not saved",
                dir.display(),
                docs.next_id(),
                index.next_id()
            ));
            self.saved = Some(docs);
            return Err(e);
        }
        rewa::index::crash_test_pause("docs");
        if let Err(e) = save_index() {
            // the documents ran ahead of the index: hidden from readers, repaired by the
            // next writer
            self.saved = Some(docs);
            return Err(e.into());
        }
        // deleted rows' documents go after the index saved its tombstones, and those of rows a
        // compaction removed (the index no longer lists them as deleted)
        docs.sync(index.next_id() as u32, index.deleted())?;
        if !self.dropped.is_empty() {
            docs.delete(&std::mem::take(&mut self.dropped), index.deleted())?;
        }
        self.first = index.next_id() as u32;
        self.pending.clear();
        self.ram = None;
        self.saved = Some(docs);
        Ok(())
    }
}
