//! What the handlers share: the served index (kept as fresh as the directory), the in-flight
//! slots, and the two flows that write the index, add and delete.
//!
//! **Freshness.** Other processes write the same directory (`rewa add`, `rewa delete`,
//! `rewa tune`). Every save replaces `manifest.json` by renaming a new file over it, so the
//! directory moved on exactly when the inode `manifest.json` names is not the one the served
//! index was opened from. Each request compares the two (one `stat`, about a microsecond) and,
//! when they differ, reopens the index before answering: an answer never predates a write
//! that returned before the request arrived. On Unix the server keeps the manifest it opened
//! open, so its inode cannot be reused by a later manifest; elsewhere the length and
//! modification time stand in for it.

use crate::api::{self, AddResponse, ApiError};
use crate::auth::Keys;
use crate::metrics::Metrics;
use rewa::index::WriteLock;
use rewa::Index;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Everything the handlers share.
pub(crate) struct AppState {
    pub dir: PathBuf,
    /// The index searches start from, and the manifest it was opened from.
    served: RwLock<Served>,
    /// Held while the served index is replaced (a reload or a write's result), so two
    /// replacements cannot interleave.
    swap: Mutex<()>,
    pub pool: rayon::ThreadPool,
    /// Held by the add or delete that is saving; the others queue here, not on the
    /// directory's file lock.
    writer: Mutex<()>,
    /// Adds waiting for the next save.
    queue: Mutex<Vec<Waiting>>,
    wait_lock: Duration,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    pub max_inflight: usize,
    inflight: AtomicUsize,
    shutting_down: AtomicBool,
    pub metrics: Metrics,
    /// The model `{"texts": [..]}` searches and adds are embedded with, if the server has one.
    pub embedder: Option<Arc<rewa_embed::Embedder>>,
    pub keys: Keys,
}

/// The served index, its documents, and the manifest it was read from.
struct Served {
    index: Arc<Index>,
    docs: Option<Arc<rewa_docs::Docs>>,
    manifest: Manifest,
}

fn open_docs(dir: &Path) -> Result<Option<Arc<rewa_docs::Docs>>, ApiError> {
    Ok(rewa_docs::Docs::open(dir)?.map(Arc::new))
}

impl AppState {
    pub fn new(
        config: &crate::Config,
        (index, manifest): (Index, Manifest),
        pool: rayon::ThreadPool,
        embedder: Option<Arc<rewa_embed::Embedder>>,
    ) -> Self {
        let docs = open_docs(&config.index).unwrap_or_else(|e| {
            eprintln!(
                "[rewa] the documents of {} do not open: {}",
                config.index.display(),
                e.message
            );
            None
        });
        AppState {
            dir: config.index.clone(),
            served: RwLock::new(Served {
                index: Arc::new(index),
                docs,
                manifest,
            }),
            swap: Mutex::new(()),
            pool,
            writer: Mutex::new(()),
            queue: Mutex::new(Vec::new()),
            wait_lock: config.wait_lock,
            max_body_bytes: config.max_body_bytes,
            body_timeout: config.body_timeout,
            max_inflight: config.max_inflight,
            inflight: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
            metrics: Metrics::default(),
            embedder,
            keys: Keys::new(config.api_key.as_deref(), config.read_only_key.as_deref()),
        }
    }

    /// The index as last opened or written by this server (no freshness check).
    pub fn current(&self) -> Arc<Index> {
        read(&self.served).index.clone()
    }

    /// The index as the directory holds it now: the served one if no other process saved
    /// since it was opened, else the directory reopened (and served from then on). Blocking:
    /// call off the async threads.
    pub fn fresh(&self) -> Result<Arc<Index>, ApiError> {
        Ok(self.fresh_with_docs()?.0)
    }

    /// [`AppState::fresh`], with the index's documents (opened with it).
    pub fn fresh_with_docs(&self) -> Result<(Arc<Index>, Option<Arc<rewa_docs::Docs>>), ApiError> {
        let now = Manifest::stat(&self.dir)?;
        {
            let s = read(&self.served);
            if s.manifest.is(&now) {
                return Ok((s.index.clone(), s.docs.clone()));
            }
        }
        let _swap = lock(&self.swap);
        // Another request may have reloaded while this one waited.
        let now = Manifest::stat(&self.dir)?;
        {
            let s = read(&self.served);
            if s.manifest.is(&now) {
                return Ok((s.index.clone(), s.docs.clone()));
            }
        }
        // The manifest before the index: should a save land in between, the index is newer
        // than the manifest recorded, and the next request reloads once more (never the
        // other way round, which would serve a stale index).
        let manifest = Manifest::open(&self.dir)?;
        let index = Arc::new(Index::open(&self.dir)?);
        index.warm(None)?;
        // after the index: documents may run ahead of it, never behind (readers hide the rest)
        let docs = open_docs(&self.dir)?;
        *write(&self.served) = Served {
            index: index.clone(),
            docs: docs.clone(),
            manifest,
        };
        self.metrics.reloaded();
        Ok((index, docs))
    }

    /// Serves `index`, just saved by this server under the writer lock `wlock` (so the
    /// manifest now in the directory is its own).
    fn serve_saved(
        &self,
        index: Index,
        docs: Option<rewa_docs::Docs>,
        wlock: &WriteLock,
    ) -> Result<(), ApiError> {
        let manifest = Manifest::open(wlock.dir())?;
        let _swap = lock(&self.swap);
        let old = std::mem::replace(
            &mut *write(&self.served),
            Served {
                index: Arc::new(index),
                docs: docs.map(Arc::new),
                manifest,
            },
        );
        drop(old); // freed (if no search holds it) after the lock is released
        Ok(())
    }

    /// A slot among `max_inflight`, or a 429 answer.
    pub fn enter(&self) -> Result<Slot<'_>, ApiError> {
        Slot::take(&self.inflight, self.max_inflight).ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many requests in flight (the limit is {}); retry later",
                    self.max_inflight
                ),
            )
        })
    }
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Appends the body's vectors (or texts, embedded with the server's model) and saves;
    /// returns only once they are durable. Runs on a blocking thread.
    ///
    /// Group commit: a save writes the added rows as a new segment (small segments are merged
    /// as they accumulate), so the adds that queue while one save runs are saved together by
    /// the next, as one segment: the first of them to take the writer mutex appends them all
    /// in arrival order, saves once, and answers each (ids in arrival order). Every answer
    /// still waits for the save that holds its vectors.
    pub fn add(&self, body: &[u8]) -> Result<AddResponse, ApiError> {
        let req: api::AddRequest = api::parse(body)?;
        let index = self.fresh()?;
        let named = index.doc_ids().is_some();
        let n_in = req
            .vectors
            .as_ref()
            .map(|v| v.len())
            .or(req.texts.as_ref().map(Vec::len));
        if let (Some(f), Some(n)) = (&req.fields, n_in) {
            if f.len() != n {
                return Err(ApiError::bad_request(format!(
                    "{} \"fields\" objects for {n} rows (one per vector or text)",
                    f.len()
                )));
            }
        }
        if let Some(f) = &req.fields {
            // a bad record is refused before queueing: it cannot fail the group it would join
            rewa_docs::check_records(f)?;
        }
        // texts are stored as {"text": ..} only in an index that keeps documents
        let texts_kept = req
            .texts
            .clone()
            .filter(|_| rewa_docs::Docs::exists(&self.dir));
        // The input checks before queueing (and before embedding): a bad request costs no
        // writer time and cannot fail the group it would have joined.
        let (vectors, ids) = match (req.vectors, req.texts) {
            (Some(v), None) => {
                if req.ids.is_some() {
                    return Err(ApiError::bad_request(
                        "\"ids\" name texts: send them with \"texts\", not \"vectors\"",
                    ));
                }
                if named {
                    return Err(ApiError::bad_request(
                        "this index names its rows by corpus ids (it was built from text): send {\"texts\": [..], \"ids\": [..]}",
                    ));
                }
                (v.into_vectors()?, None)
            }
            (None, Some(texts)) => {
                let Some(e) = &self.embedder else {
                    return Err(ApiError::bad_request(
                        "\"texts\" needs a server started with --model DIR (or an index built from text); send \"vectors\"",
                    ));
                };
                check_texts(&texts)?;
                match &req.ids {
                    Some(ids) if ids.len() != texts.len() => {
                        return Err(ApiError::bad_request(format!(
                            "{} ids for {} texts",
                            ids.len(),
                            texts.len()
                        )))
                    }
                    None if named => {
                        return Err(ApiError::bad_request(
                            "this index names its rows by corpus ids: send \"ids\" with the texts",
                        ))
                    }
                    Some(ids) => {
                        // A held or malformed id is refused before the embedding work (the
                        // save checks again, against the directory as it is then).
                        index.check_new_doc_ids(ids, texts.len())?;
                    }
                    None => {}
                }
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                (e.embed(&refs)?, req.ids)
            }
            _ => {
                return Err(ApiError::bad_request(
                    "give exactly one of \"vectors\" and \"texts\"",
                ))
            }
        };
        if vectors.dim() != index.dim() {
            return Err(rewa::Error::DimMismatch {
                expected: index.dim(),
                got: vectors.dim(),
            }
            .into());
        }
        vectors.view().check_finite()?;
        drop(index);
        let (answer, rx) = mpsc::channel();
        // what the documents store: the given fields, else a text as {"text": ..}
        let records = match (req.fields, texts_kept) {
            (Some(f), texts) => Some(
                f.into_iter()
                    .enumerate()
                    .map(|(i, m)| rewa_docs::Record {
                        fields: m,
                        text: texts.as_ref().map(|t| t[i].clone()),
                    })
                    .collect(),
            ),
            (None, Some(texts)) => Some(
                texts
                    .into_iter()
                    .map(|t| {
                        let mut m = serde_json::Map::new();
                        m.insert("text".into(), serde_json::Value::String(t.clone()));
                        rewa_docs::Record {
                            fields: m,
                            text: Some(t),
                        }
                    })
                    .collect(),
            ),
            (None, None) => None,
        };
        lock(&self.queue).push(Waiting {
            vectors,
            ids,
            records,
            answer,
        });
        let _writer = lock(&self.writer);
        match rx.try_recv() {
            Ok(done) => return done, // the save before held ours
            Err(TryRecvError::Disconnected) => {
                return Err(ApiError::internal("the save holding this add failed"))
            }
            Err(TryRecvError::Empty) => {}
        }
        let group = std::mem::take(&mut *lock(&self.queue));
        self.save_group(group);
        // invariant: our own entry was in the group just answered
        rx.recv()
            .unwrap_or_else(|_| Err(ApiError::internal("this add was lost")))
    }

    /// Deletes the body's ids (row ids, or corpus ids for an index built from text) and saves
    /// (only the list of deleted ids is written); returns once durable. Runs on a blocking
    /// thread, under the writer mutex.
    pub fn delete(&self, body: &[u8]) -> Result<api::DeleteResponse, ApiError> {
        let req: api::DeleteRequest = api::parse(body)?;
        let _writer = lock(&self.writer);
        let wlock = WriteLock::acquire_existing(&self.dir, self.wait_lock)?;
        // Always from disk, under the lock: another process may have written since.
        let mut index = Index::open(&self.dir)?;
        let mut docs = rewa_docs::open_for_write(&self.dir, &index)?;
        let before: std::collections::HashSet<u32> = index.deleted().iter().copied().collect();
        let deleted = match (&req.ids, &req.doc_ids) {
            (Some(ids), None) => index.delete(ids)?,
            (None, Some(doc_ids)) => index.delete_doc_ids(doc_ids)?,
            _ => {
                return Err(ApiError::bad_request(
                    "give exactly one of \"ids\" (row ids) and \"doc_ids\" (corpus ids)",
                ))
            }
        };
        if deleted > 0 {
            let rows: Vec<u32> = index
                .deleted()
                .iter()
                .copied()
                .filter(|i| !before.contains(i))
                .collect();
            rewa_docs::save_delete(&index, &wlock, docs.as_mut(), &rows)?;
            self.metrics.saved();
        }
        let count = index.len();
        self.serve_saved(index, docs, &wlock)?;
        Ok(api::DeleteResponse { deleted, count })
    }

    /// Appends every waiting add and saves once, then answers each in order. An add the
    /// index refuses (a corpus id it already holds) is answered with its error alone; the
    /// others are saved.
    fn save_group(&self, mut group: Vec<Waiting>) {
        let answers = match self.append_and_save(&mut group) {
            Ok(answers) => answers,
            Err(e) => group.iter().map(|_| Err(e.clone())).collect(),
        };
        for (w, a) in group.into_iter().zip(answers) {
            let _ = w.answer.send(a);
        }
    }

    fn append_and_save(
        &self,
        group: &mut [Waiting],
    ) -> Result<Vec<Result<AddResponse, ApiError>>, ApiError> {
        let wlock = WriteLock::acquire_existing(&self.dir, self.wait_lock)?;
        // Always from disk, under the lock: another process (`rewa add`, `rewa tune`) may
        // have written since, and its rows and ids must stay.
        let mut index = Index::open(&self.dir)?;
        let mut docs = rewa_docs::open_for_write(&self.dir, &index)?;
        let first = index.next_id() as u32;
        // one record per row added, when any add of the group brings some
        let any_records = group.iter().any(|w| w.records.is_some());
        let mut records: Vec<rewa_docs::Record> = Vec::new();
        let mut firsts = Vec::with_capacity(group.len());
        for w in group {
            let first_id = index.next_id();
            let vectors = std::mem::replace(&mut w.vectors, rewa::Vectors::empty(index.dim()));
            let ids = w.ids.take();
            let added = index
                .metric()
                .prepare_owned(vectors)
                .and_then(|data| match ids {
                    Some(ids) => index.add_with_ids(&data, ids, &mut |_, _| {}),
                    None => index.add_prepared(&data, &mut |_, _| {}),
                });
            if added.is_ok() {
                let n = index.next_id() - first_id;
                match w.records.take() {
                    Some(r) => records.extend(r),
                    None => records.extend((0..n).map(|_| rewa_docs::Record::default())),
                }
            }
            firsts.push(added.map(|()| first_id).map_err(ApiError::from));
        }
        if firsts.iter().any(Result::is_ok) {
            let records = (any_records || docs.is_some()).then_some(records);
            rewa_docs::save_add(&index, &self.dir, &wlock, &mut docs, first, records)?;
            self.metrics.saved();
        }
        let count = index.len();
        self.serve_saved(index, docs, &wlock)?;
        Ok(firsts
            .into_iter()
            .map(|r| r.map(|first_id| AddResponse { count, first_id }))
            .collect())
    }
}

/// The checks texts pass before they are embedded (for searches and adds).
pub(crate) fn check_texts(texts: &[String]) -> Result<(), ApiError> {
    if texts.is_empty() {
        return Err(ApiError::bad_request("\"texts\" holds zero texts"));
    }
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        return Err(ApiError::bad_request(format!("text {i} is empty")));
    }
    Ok(())
}

/// An add waiting for the save that will hold it.
struct Waiting {
    vectors: rewa::Vectors,
    /// Corpus ids, for texts.
    ids: Option<Vec<String>>,
    /// What the documents store for these rows.
    records: Option<Vec<rewa_docs::Record>>,
    answer: mpsc::Sender<Result<AddResponse, ApiError>>,
}

/// Which `manifest.json` an index was opened from.
pub(crate) struct Manifest {
    /// Held open so that its inode is not reused by a later manifest (Unix).
    #[cfg(unix)]
    _file: File,
    key: Key,
}

#[cfg(unix)]
type Key = (u64, u64); // device, inode
#[cfg(not(unix))]
type Key = (u64, Option<std::time::SystemTime>); // length, modification time

fn key_of(m: &std::fs::Metadata) -> Key {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        (m.dev(), m.ino())
    }
    #[cfg(not(unix))]
    {
        (m.len(), m.modified().ok())
    }
}

impl Manifest {
    fn path(dir: &Path) -> PathBuf {
        dir.join("manifest.json")
    }
    /// The manifest now in `dir`; open this before the index.
    pub fn open(dir: &Path) -> Result<Manifest, rewa::Error> {
        let path = Manifest::path(dir);
        let io = |source| rewa::Error::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        let key = key_of(&file.metadata().map_err(io)?);
        #[cfg(not(unix))]
        drop(file);
        Ok(Manifest {
            #[cfg(unix)]
            _file: file,
            key,
        })
    }
    /// The key of the manifest now in `dir`.
    fn stat(dir: &Path) -> Result<Key, ApiError> {
        let path = Manifest::path(dir);
        let m = std::fs::metadata(&path).map_err(|e| {
            ApiError::internal(format!(
                "the index directory {} no longer holds an index: {e}",
                dir.display()
            ))
        })?;
        Ok(key_of(&m))
    }
    fn is(&self, key: &Key) -> bool {
        self.key == *key
    }
}

/// One in-flight slot, given back when dropped (also when the client goes away and the
/// handler's future is dropped).
pub(crate) struct Slot<'a>(&'a AtomicUsize);

impl<'a> Slot<'a> {
    /// Takes a slot unless `max` are taken.
    pub fn take(count: &'a AtomicUsize, max: usize) -> Option<Slot<'a>> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(count))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A mutex's guard; a panic elsewhere while it was held leaves data that is still whole
/// (a queue, or nothing), so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_limited_and_given_back() {
        let n = AtomicUsize::new(0);
        let a = Slot::take(&n, 2).unwrap();
        let b = Slot::take(&n, 2).unwrap();
        assert!(Slot::take(&n, 2).is_none());
        drop(a);
        let _c = Slot::take(&n, 2).unwrap();
        drop(b);
        assert_eq!(n.load(Ordering::Acquire), 1);
    }

    #[cfg(unix)]
    #[test]
    fn a_replaced_manifest_is_noticed_even_at_the_same_length() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::write(d.join("manifest.json"), "{\"generation\": 1}").unwrap();
        let m = Manifest::open(d).unwrap();
        assert!(m.is(&Manifest::stat(d).unwrap()));
        // a save: a new file renamed over the old one, same length
        std::fs::write(d.join("manifest.json.tmp"), "{\"generation\": 2}").unwrap();
        std::fs::rename(d.join("manifest.json.tmp"), d.join("manifest.json")).unwrap();
        assert!(!m.is(&Manifest::stat(d).unwrap()));
    }
}
