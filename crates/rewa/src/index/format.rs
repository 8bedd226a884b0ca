//! The on-disk index: the only code that knows byte layouts, versions and checksums.
//!
//! An index is a directory:
//!
//! | file | contents |
//! |---|---|
//! | `write.lock` | the writer lock (an `flock`), holding the holder's pid |
//! | `pending.txt` | while a save runs: the files it writes and the files it will delete |
//! | `manifest.json` | `format_version`, `rewa_version`, `dim`, `metric`, `count` (live rows), `next_id`, `seed`, default `pipeline`, `generation`, the encoders' specs, and per segment its rows, first id and files (name, CRC-32, length) |
//! | `params-<gen>.safetensors` | fitted parameters of every encoder (Hadamard signs and kept coordinates, PCA mean / components / variances, sign thresholds, int8 ranges, PQ / IVF centroids, ...) |
//! | `seg<s>-codes-<i>.bin` | segment `s`, encoder `i`: header, then `rows * code_len` bytes (in list order for a partitioned encoder) |
//! | `seg<s>-lists-<i>.bin` | segment `s`, partitioned encoder `i` (`ivf<nlist>+...`): header (rows of 4 bytes, `nlist + 1 + rows` of them), then `nlist + 1` list offsets and one row number per code, u32 LE |
//! | `seg<s>-vectors.f32` | segment `s`'s float vectors (normalised for cosine) for `exact` stages: header, then `rows * 4 * dim` bytes, little-endian f32 |
//! | `seg<s>-rowids.bin` | only for a segment compacted with gaps: header, then each row's id, u32 LE, rising (otherwise row `j` has id `start + j`) |
//! | `seg<s>-docids.txt` | for an index built from text: the corpus id of each row of segment `s`, UTF-8, one per line, each line ending in `\n` |
//! | `deleted-<gen>.bin` | deleted ids still held in segments: header, then u32 LE ids, rising |
//!
//! A save writes only the segments that are new or changed since the index was opened (an
//! `add` writes one new segment), a new params file only for newly fitted encoders, and the
//! deleted ids: O(change), not O(index). Format 3 is this layout; formats 1 and 2 (one set of
//! `codes-<gen>-<i>.bin` / `vectors-<gen>.f32` / `ids-<gen>.txt` files) are still read, as one
//! segment, and the next save writes format 3 reusing their files.
//!
//! Header of `.bin` / `.f32` files (64 bytes, so payloads start 8-byte aligned in a mapping):
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `REWACODE` (codes), `REWAVECS` (vectors), `REWALIST` (lists), `REWAROWS` (row ids) or `REWADELS` (deleted ids) |
//! | 8 | 4 | format version, u32 LE |
//! | 12 | 4 | bytes per row, u32 LE |
//! | 16 | 8 | row count, u64 LE |
//! | 24 | 40 | zero |
//!
//! Safetensors names: `cs<i>.t<j>.signs` (f32), `cs<i>.t<j>.keep` (u32) for Hadamard;
//! `cs<i>.t<j>.mean`, `.components` (m x d), `.variances` for PCA; `cs<i>.t<j>.l1.weight` ...
//! `.ln2.bias` (the model's eight tensors) and `.ln_eps` for a learned model, so an index never
//! needs its model directory again; `cs<i>.q.thresholds` for sign; `cs<i>.q.lo`, `cs<i>.q.scale`
//! for int8.
//!
//! **Crash safety.** `save` writes every new data file under names that do not exist yet (a
//! new generation, new segment numbers), fsyncs them, then replaces `manifest.json` by an
//! atomic rename, fsyncs the directory, and only then deletes the files the previous manifest
//! named and the new one does not (and no other file: a folder may hold the user's own
//! files). A process killed at any moment leaves either the old manifest (whose files are
//! untouched) or the new one (whose files are complete). A new generation's file names are
//! chosen so that none exists yet: no file is ever truncated or rewritten in place, so a
//! reader's mapping never changes under it.
//!
//! **One writer.** Every write holds an exclusive `flock` on `write.lock` in the directory
//! ([`WriteLock`]), taken before the index is read for an update (`add`, `tune`) and held until
//! its manifest is replaced; the holder's pid is written into the file so a second writer can
//! name it. Readers take no lock: they see the manifest before or after a rename, never half a
//! generation.
//!
//! **No stale writer.** An index in memory remembers the directory it was opened from (or
//! last saved to) and that manifest's generation and CRC-32. A save there compares them with
//! the manifest on disk, under the lock, and refuses ([`Error::Stale`]) when another writer
//! saved in between: writing the stale copy would drop that writer's rows and deletions and
//! hand their ids out again. Writers that read under the lock (`rewa add`, the server) always
//! pass; an object read earlier (Python's `Index`) must be opened again.
//!
//! **Checks at open.** Manifest parse and version range; for every file: length, magic,
//! version, row size and count against the manifest, CRC-32 of the whole file; parameter
//! shapes against the dimensions. After `open`, scans need no checks.

use super::{Bytes, Index, Segment, TextModel};
use crate::distance::Metric;
use crate::encode::{Encoder, EncoderSpec, Tensor, TensorSource};
use crate::error::{Error, Result};
use crate::pipeline::Pipeline;
use crate::rows::Deleted;
use memmap2::Mmap;
use safetensors::tensor::TensorView;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The format version this build writes (3: segments; 2: one set of files with corpus ids and
/// a text model; 1: one set of files). Data file headers still say 1.
pub const FORMAT_VERSION: u32 = 3;
/// The version of the `.bin` / `.f32` headers.
const BASE_VERSION: u32 = 1;
/// The oldest format version this build reads.
pub const MIN_FORMAT_VERSION: u32 = 1;
const HEADER: usize = 64;
const MAGIC_CODES: &[u8; 8] = b"REWACODE";
const MAGIC_VECS: &[u8; 8] = b"REWAVECS";
const MAGIC_LISTS: &[u8; 8] = b"REWALIST";
const MAGIC_ROWS: &[u8; 8] = b"REWAROWS";
const MAGIC_DELS: &[u8; 8] = b"REWADELS";
const MANIFEST: &str = "manifest.json";
/// The writer lock's file name inside an index directory.
pub const LOCK_FILE: &str = "write.lock";
/// The files a save is writing, removed when it completes (a leftover names a dead writer's).
const PENDING: &str = "pending.txt";
/// The largest `manifest.json` read (a real one is a few KiB).
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileEntry {
    file: String,
    crc32: u32,
    bytes: u64,
}

/// What a saved value was written as, kept beside it in memory so that a later save into the
/// same directory can name the same files instead of writing them again (compared with the
/// directory's manifest, so a save elsewhere still writes everything).
#[derive(Debug)]
pub(crate) struct Written<T = SegmentEntry>(std::sync::Mutex<Option<T>>);

impl<T> Default for Written<T> {
    fn default() -> Self {
        Written(std::sync::Mutex::new(None))
    }
}
impl<T: Clone> Clone for Written<T> {
    fn clone(&self) -> Self {
        Written(std::sync::Mutex::new(self.get()))
    }
}
impl<T: Clone> Written<T> {
    pub(crate) fn get(&self) -> Option<T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn set(&self, v: T) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
    }
}

/// Where an index in memory came from: the directory it was opened from or last saved to, and
/// that directory's manifest as it was then (its generation, and the CRC-32 of its bytes, which
/// also tells apart two indexes that happen to share a generation number, e.g. one deleted
/// and rebuilt). A save into that directory compares it with the manifest on disk under the
/// writer lock: an index that moved on since is refused ([`Error::Stale`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    /// The directory, canonicalised (so `d` and `./d` are one directory).
    pub(crate) dir: PathBuf,
    pub(crate) generation: u64,
    crc32: u32,
}

/// `dir` made absolute with symlinks resolved, or as given when that fails (it does not exist).
pub(crate) fn dir_key(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// One segment in the manifest.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct SegmentEntry {
    number: u64,
    rows: usize,
    start: u32,
    /// Per encoder.
    codes: Vec<FileEntry>,
    /// Per encoder (`null` unless partitioned).
    lists: Vec<Option<FileEntry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vectors: Option<FileEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    row_ids: Option<FileEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    doc_ids: Option<FileEntry>,
}

impl SegmentEntry {
    fn files(&self) -> impl Iterator<Item = &FileEntry> {
        self.codes
            .iter()
            .chain(self.lists.iter().flatten())
            .chain(&self.vectors)
            .chain(&self.row_ids)
            .chain(&self.doc_ids)
    }
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct EncoderEntry {
    spec: EncoderSpec,
    code_len: usize,
}

/// `manifest.json` (format 3).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format_version: u32,
    rewa_version: String,
    generation: u64,
    dim: usize,
    metric: Metric,
    /// Rows held and not deleted.
    count: usize,
    next_id: usize,
    seed: u64,
    pipeline: Pipeline,
    encoders: Vec<EncoderEntry>,
    has_vectors: bool,
    params: FileEntry,
    segments: Vec<SegmentEntry>,
    /// The lowest segment number no file of this index has used.
    next_segment: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deleted: Option<FileEntry>,
    #[serde(default)]
    deleted_count: usize,
    #[serde(default)]
    has_doc_ids: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text_model: Option<TextModel>,
}

/// A format 1 or 2 code set entry.
#[derive(serde::Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct LegacyCodeEntry {
    spec: EncoderSpec,
    code_len: usize,
    #[serde(flatten)]
    data: FileEntry,
}

/// `manifest.json` of formats 1 and 2: one set of files.
#[derive(serde::Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct LegacyManifest {
    format_version: u32,
    rewa_version: String,
    generation: u64,
    dim: usize,
    metric: Metric,
    count: usize,
    seed: u64,
    pipeline: Pipeline,
    code_sets: Vec<LegacyCodeEntry>,
    vectors: Option<FileEntry>,
    params: FileEntry,
    #[serde(default)]
    ids: Option<FileEntry>,
    #[serde(default)]
    text_model: Option<TextModel>,
}

impl LegacyManifest {
    /// The same index as one segment (its files keep their names).
    fn upgrade(self) -> Manifest {
        Manifest {
            format_version: self.format_version,
            rewa_version: self.rewa_version,
            generation: self.generation,
            dim: self.dim,
            metric: self.metric,
            count: self.count,
            next_id: self.count,
            seed: self.seed,
            pipeline: self.pipeline,
            encoders: self
                .code_sets
                .iter()
                .map(|c| EncoderEntry {
                    spec: c.spec.clone(),
                    code_len: c.code_len,
                })
                .collect(),
            has_vectors: self.vectors.is_some(),
            params: self.params,
            segments: vec![SegmentEntry {
                number: 0,
                rows: self.count,
                start: 0,
                lists: self.code_sets.iter().map(|_| None).collect(),
                codes: self.code_sets.into_iter().map(|c| c.data).collect(),
                vectors: self.vectors,
                row_ids: None,
                doc_ids: self.ids.clone(),
            }],
            next_segment: 1,
            deleted: None,
            deleted_count: 0,
            has_doc_ids: self.ids.is_some(),
            text_model: self.text_model,
        }
    }
}

/// What `rewa info` shows: the manifest's facts and file sizes.
#[derive(serde::Serialize, Debug, Clone)]
pub struct IndexInfo {
    /// Format version of the files.
    pub format_version: u32,
    /// Files and their sizes in bytes.
    pub files: Vec<(String, u64)>,
    /// Total bytes on disk.
    pub disk_bytes: u64,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

fn header(magic: &[u8; 8], row: usize, count: usize) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(magic);
    h[8..12].copy_from_slice(&BASE_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(row as u32).to_le_bytes());
    h[16..24].copy_from_slice(&(count as u64).to_le_bytes());
    h
}

/// Writes `parts` to `path`, fsyncs, returns (crc32, bytes).
fn write_file(path: &Path, parts: &[&[u8]]) -> Result<(u32, u64)> {
    let err = io_err(path);
    let mut f = std::io::BufWriter::with_capacity(1 << 20, File::create(path).map_err(&err)?);
    let mut crc = crc32fast::Hasher::new();
    let mut n = 0u64;
    for p in parts {
        f.write_all(p).map_err(&err)?;
        crc.update(p);
        n += p.len() as u64;
    }
    let f = f.into_inner().map_err(|e| err(e.into_error()))?;
    f.sync_all().map_err(&err)?;
    Ok((crc.finalize(), n))
}

/// The exclusive writer lock of an index directory, released when dropped.
#[derive(Debug)]
pub struct WriteLock {
    dir: PathBuf,
    _file: File,
}

impl WriteLock {
    /// Takes the writer lock of `dir` (created if missing), waiting up to `wait` for another
    /// writer to finish; then [`Error::Locked`] names the holder's pid.
    pub fn acquire(dir: &Path, wait: std::time::Duration) -> Result<WriteLock> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        let t = std::time::Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if t.elapsed() < wait => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    // 0 when the holder has not written its pid yet
                    let pid = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                        .unwrap_or(0);
                    return Err(Error::Locked {
                        path: dir.to_path_buf(),
                        pid,
                        waited_secs: t.elapsed().as_secs(),
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
        }
        // Record the holder for the message another writer prints (the lock is the flock, not
        // this text).
        let _ = file.set_len(0);
        let _ = (&file).write_all(std::process::id().to_string().as_bytes());
        Ok(WriteLock {
            dir: dir.to_path_buf(),
            _file: file,
        })
    }
    /// [`WriteLock::acquire`] for an index that must already exist (`add`, `tune`): a
    /// mistyped path is an error, not a new folder holding a lock file.
    pub fn acquire_existing(dir: &Path, wait: std::time::Duration) -> Result<WriteLock> {
        let m = dir.join(MANIFEST);
        if !m.is_file() {
            return Err(Error::io(
                &m,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no index here (no manifest.json)",
                ),
            ));
        }
        WriteLock::acquire(dir, wait)
    }
    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Fails unless `dir` may receive a new index: missing, empty (but for the lock file), or what
/// a killed build left (which the new one replaces). An index already there, or a folder of
/// other files, is refused unless `force` (the message tells to pass `force_flag`, e.g.
/// `--force` or `force=True`); even then only files an index manifest named are ever deleted.
/// An index read from `dir` and saved back is an update, not a new index: it does not need
/// this check ([`Index::is_from`](super::Index::is_from)).
pub fn check_build_target(dir: &Path, force: bool, force_flag: &str) -> Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let others: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != LOCK_FILE)
        .collect();
    if others.is_empty() || force {
        return Ok(());
    }
    if others.iter().any(|n| n == MANIFEST) {
        let what = match read_manifest(dir) {
            Ok(m) => format!("an index of {} vectors", m.count),
            Err(_) => "an index".to_string(),
        };
        return Err(Error::InvalidInput(format!(
            "{} already holds {what}; choose another folder, or pass {force_flag} to replace it",
            dir.display()
        )));
    }
    // a killed build's leftovers: its staged files, or a document store with no index yet
    let store = dir.join("docs").join(".managed.json").is_file()
        || dir.join("docs.old").join("manifest.crc").is_file();
    if others.iter().any(|n| n == PENDING)
        || (store && others.iter().all(|n| n == "docs" || n == "docs.old"))
    {
        return Ok(());
    }
    Err(Error::InvalidInput(format!(
        "{} is not empty and holds no index ({} other files, e.g. {:?}); choose an empty or new folder, or pass {force_flag} (which never deletes files the index did not write)",
        dir.display(),
        others.len(),
        others[0]
    )))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Every encoder's tensors, named `cs<i>.<part>.<name>`.
fn params_tensors(index: &Index) -> Vec<(String, Tensor<'_>)> {
    index
        .encoders
        .iter()
        .enumerate()
        .flat_map(|(i, e)| {
            e.tensors()
                .into_iter()
                .map(move |(name, t)| (format!("cs{i}.{name}"), t))
        })
        .collect()
}

fn params_bytes(index: &Index) -> Result<Vec<u8>> {
    let tensors = params_tensors(index);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                TensorView::new(t.dtype(), t.shape.clone(), t.bytes())
                    .expect("invariant: shape matches data"),
            )
        })
        .collect();
    safetensors::serialize(views, None)
        .map_err(|e| Error::InvalidInput(format!("safetensors: {e}")))
}

/// A streaming build's float vectors, written into the index's directory as they are
/// produced (so that a build larger than memory never holds them), then renamed into their
/// segment's name by the save that names them in a manifest. Its name is recorded in
/// `pending.txt` before it is created: a build killed before its save leaves it for the next
/// save to delete, like any half-written file.
pub(crate) struct StagedVectors {
    dir: PathBuf,
    name: String,
    out: std::io::BufWriter<File>,
    crc: crc32fast::Hasher,
    bytes: u64,
    expected: u64,
}

/// Where a [`StagedVectors`] file was written, for the save that adopts it.
#[derive(Clone, Debug)]
pub(crate) struct Staged {
    pub(crate) dir: PathBuf,
    pub(crate) name: String,
    pub(crate) crc32: u32,
    pub(crate) bytes: u64,
}

/// Starts a [`StagedVectors`] file of `rows` vectors of `dim` floats in `lock`'s directory.
pub(crate) fn stage_vectors(lock: &WriteLock, dim: usize, rows: usize) -> Result<StagedVectors> {
    let dir = lock.dir();
    let mut n = 0u32;
    let name = loop {
        let name = format!("seg-staged{n}-vectors.f32");
        if dir.join(&name).symlink_metadata().is_err() {
            break name;
        }
        n += 1;
    };
    let pending = dir.join(PENDING);
    let mut record = std::fs::read_to_string(&pending).unwrap_or_default();
    if !record.is_empty() && !record.ends_with('\n') {
        record.push('\n');
    }
    record.push_str(&name);
    write_file(&pending, &[record.as_bytes()])?;
    let path = dir.join(&name);
    let f = File::create(&path).map_err(io_err(&path))?;
    let mut staged = StagedVectors {
        dir: dir.to_path_buf(),
        name,
        out: std::io::BufWriter::with_capacity(4 << 20, f),
        crc: crc32fast::Hasher::new(),
        bytes: 0,
        expected: (HEADER + rows * 4 * dim) as u64,
    };
    staged.put(&header(MAGIC_VECS, 4 * dim, rows))?;
    Ok(staged)
}

impl StagedVectors {
    /// The file being written.
    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }
    fn put(&mut self, b: &[u8]) -> Result<()> {
        let path = self.dir.join(&self.name);
        self.out.write_all(b).map_err(io_err(&path))?;
        self.crc.update(b);
        self.bytes += b.len() as u64;
        Ok(())
    }
    /// Appends rows (prepared floats).
    pub(crate) fn write(&mut self, rows: &[f32]) -> Result<()> {
        self.put(bytemuck::cast_slice(rows))
    }
    /// Flushes and fsyncs the file and maps it: the segment's vectors, and where they are.
    pub(crate) fn finish(self) -> Result<(Bytes, Staged)> {
        let path = self.dir.join(&self.name);
        if self.bytes != self.expected {
            return Err(Error::corrupt(
                &path,
                format!("staged {} bytes, expected {}", self.bytes, self.expected),
            ));
        }
        let f = self
            .out
            .into_inner()
            .map_err(|e| io_err(&path)(e.into_error()))?;
        f.sync_all().map_err(io_err(&path))?;
        let f = File::open(&path).map_err(io_err(&path))?;
        // SAFETY: as for `open_checked`: rewa never shrinks or rewrites a file it wrote (this
        // one is renamed, never rewritten); the mapping is read-only.
        let map = unsafe { Mmap::map(&f) }.map_err(io_err(&path))?;
        let len = map.len() - HEADER;
        let staged = Staged {
            dir: self.dir,
            name: self.name,
            crc32: self.crc.finalize(),
            bytes: self.bytes,
        };
        Ok((Bytes::mapped(Arc::new(map), HEADER, len), staged))
    }
}

/// The file names segment `s` of `index` would be written under.
fn segment_names(index: &Index, s: u64) -> Vec<String> {
    let mut v: Vec<String> = (0..index.encoders.len())
        .flat_map(|i| {
            [
                format!("seg{s}-codes-{i}.bin"),
                format!("seg{s}-lists-{i}.bin"),
            ]
        })
        .collect();
    v.push(format!("seg{s}-vectors.f32"));
    v.push(format!("seg{s}-rowids.bin"));
    v.push(format!("seg{s}-docids.txt"));
    v
}

fn entry(dir: &Path, name: String, parts: &[&[u8]]) -> Result<FileEntry> {
    let (crc32, bytes) = write_file(&dir.join(&name), parts)?;
    Ok(FileEntry {
        file: name,
        crc32,
        bytes,
    })
}

/// Writes segment `seg` of `index` as number `s`.
fn write_segment(dir: &Path, index: &Index, seg: &Segment, s: u64) -> Result<SegmentEntry> {
    // one data file: the 64-byte header, then `count` rows of `row` bytes
    let data = |name: String, magic: &[u8; 8], row: usize, b: &Bytes| {
        let count = b.as_slice().len() / row.max(1);
        entry(dir, name, &[&header(magic, row, count), b.as_slice()])
    };
    let mut codes = Vec::new();
    let mut lists = Vec::new();
    for (i, e) in index.encoders.iter().enumerate() {
        let name = format!("seg{s}-codes-{i}.bin");
        codes.push(data(name, MAGIC_CODES, e.code_len(), &seg.codes[i])?);
        let name = format!("seg{s}-lists-{i}.bin");
        lists.push(
            seg.lists[i]
                .as_ref()
                .map(|l| data(name, MAGIC_LISTS, 4, l))
                .transpose()?,
        );
    }
    let name = format!("seg{s}-vectors.f32");
    let staged = seg
        .staged
        .as_ref()
        .filter(|st| st.dir == dir && dir.join(&st.name).is_file());
    let vectors = match (staged, &seg.vectors) {
        // a streaming build's vectors are already in this directory: renamed, not copied
        (Some(st), Some(_)) => {
            std::fs::rename(dir.join(&st.name), dir.join(&name)).map_err(io_err(dir))?;
            sync_dir(dir)?;
            Some(FileEntry {
                file: name,
                crc32: st.crc32,
                bytes: st.bytes,
            })
        }
        (_, v) => v
            .as_ref()
            .map(|v| data(name, MAGIC_VECS, 4 * index.dim, v))
            .transpose()?,
    };
    let name = format!("seg{s}-rowids.bin");
    let row_ids = seg
        .ids
        .as_ref()
        .map(|ids| data(name, MAGIC_ROWS, 4, ids))
        .transpose()?;
    let doc_ids = match &index.doc_ids {
        Some(d) => {
            let mut text = String::new();
            for j in 0..seg.rows {
                text.push_str(&d[seg.id(j) as usize]);
                text.push('\n');
            }
            Some(entry(
                dir,
                format!("seg{s}-docids.txt"),
                &[text.as_bytes()],
            )?)
        }
        None => None,
    };
    Ok(SegmentEntry {
        number: s,
        rows: seg.rows,
        start: seg.start,
        codes,
        lists,
        vectors,
        row_ids,
        doc_ids,
    })
}

/// Saves `index` into the directory `lock` holds, crash-safely, writing only what the
/// directory's manifest does not already hold. Unless `replace`, an index read from (or last
/// saved to) this directory is refused with [`Error::Stale`] when the directory's manifest
/// is no longer the one it read: another writer saved in between, and writing this index
/// would drop that writer's rows and deletions. (An index from elsewhere replaces what the
/// directory holds: whether that is wanted is [`check_build_target`]'s question.)
pub(crate) fn save(index: &Index, lock: &WriteLock, replace: bool) -> Result<()> {
    let dir = lock.dir();
    let (old, old_crc) = match read_manifest_crc(dir) {
        Ok((m, crc)) => (Some(m), Some(crc)),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            (None, None)
        }
        Err(e) => return Err(e),
    };
    let key = dir_key(dir);
    if let (false, Some(m), Some(crc), Some(o)) = (replace, &old, old_crc, index.origin.get()) {
        if o.dir == key && o.crc32 != crc {
            return Err(Error::Stale {
                path: dir.to_path_buf(),
                read: o.generation,
                now: m.generation,
            });
        }
    }
    // A writer killed mid-save left its `pending` record: the files it was writing and the
    // ones it was to delete. Those the current manifest does not name are garbage (no reader
    // maps them), and only those go.
    let pending = dir.join(PENDING);
    let live = old.as_ref().map(files_of).unwrap_or_default();
    // (a streaming build's staged vectors, which this save is about to adopt, are kept)
    let staged: Vec<String> = index
        .segments
        .iter()
        .filter_map(|s| s.staged.as_ref())
        .filter(|st| st.dir == dir)
        .map(|st| st.name.clone())
        .collect();
    if let Ok(text) = std::fs::read_to_string(&pending) {
        for f in text.lines().filter(|f| {
            is_own_name(f) && !live.iter().any(|l| l == f) && !staged.iter().any(|s| s == f)
        }) {
            let _ = std::fs::remove_file(dir.join(f));
        }
    }
    let taken = |names: &[String]| names.iter().any(|f| dir.join(f).symlink_metadata().is_ok());
    // The next generation whose file names are all free: no existing file is overwritten.
    let mut generation = old.as_ref().map_or(0, |m| m.generation + 1);
    while taken(&[
        format!("params-{generation}.safetensors"),
        format!("deleted-{generation}.bin"),
    ]) {
        generation += 1;
    }
    // Segments the directory already holds as they are are named again, not written.
    let old_segments: &[SegmentEntry] = old.as_ref().map_or(&[], |m| &m.segments);
    let mut next_segment = old.as_ref().map_or(0, |m| m.next_segment);
    let mut plan: Vec<(Option<SegmentEntry>, u64)> = Vec::new();
    for seg in &index.segments {
        match seg.written.get().filter(|w| old_segments.contains(w)) {
            Some(w) => plan.push((Some(w), 0)),
            None => {
                while taken(&segment_names(index, next_segment)) {
                    next_segment += 1;
                }
                plan.push((None, next_segment));
                next_segment += 1;
            }
        }
    }
    let old_params = old.as_ref().map(|m| m.params.clone());
    let params_reused = index
        .params_written
        .get()
        .filter(|p| Some(p) == old_params.as_ref());
    // Record what this save is about to write and then delete, before doing either.
    let mut record: Vec<String> = plan
        .iter()
        .filter(|p| p.0.is_none())
        .flat_map(|p| segment_names(index, p.1))
        .collect();
    record.push(format!("params-{generation}.safetensors"));
    record.push(format!("deleted-{generation}.bin"));
    record.extend(staged.iter().cloned());
    record.extend(live.iter().cloned());
    write_file(&pending, &[record.join("\n").as_bytes()])?;
    let mut segments = Vec::new();
    for (seg, (reuse, s)) in index.segments.iter().zip(&plan) {
        segments.push(match reuse {
            Some(e) => e.clone(),
            None => write_segment(dir, index, seg, *s)?,
        });
    }
    let params = match params_reused {
        Some(p) => p,
        None => entry(
            dir,
            format!("params-{generation}.safetensors"),
            &[&params_bytes(index)?],
        )?,
    };
    let deleted = match index.deleted.ids() {
        [] => None,
        ids => Some(entry(
            dir,
            format!("deleted-{generation}.bin"),
            &[&header(MAGIC_DELS, 4, ids.len()), bytemuck::cast_slice(ids)],
        )?),
    };
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        rewa_version: env!("CARGO_PKG_VERSION").to_string(),
        generation,
        dim: index.dim,
        metric: index.metric,
        count: index.len(),
        next_id: index.next_id,
        seed: index.seed,
        pipeline: index.pipeline.clone(),
        encoders: index
            .encoders
            .iter()
            .map(|e| EncoderEntry {
                spec: e.spec().clone(),
                code_len: e.code_len(),
            })
            .collect(),
        has_vectors: index.has_vectors,
        params,
        segments,
        next_segment,
        deleted,
        deleted_count: index.deleted.len(),
        has_doc_ids: index.doc_ids.is_some(),
        text_model: index.text_model.clone(),
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("invariant: manifest serializes");
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    write_file(&tmp, &[&json])?;
    crash_test_pause("data");
    std::fs::rename(&tmp, dir.join(MANIFEST)).map_err(io_err(dir))?;
    sync_dir(dir)?;
    crash_test_pause("manifest");
    // The new manifest is durable: the files the old one named and this one does not are
    // garbage now. Only those are deleted; readers that mapped them keep their pages (unlink,
    // not truncate).
    let keep: Vec<String> = files_of(&manifest);
    for f in &live {
        if !keep.contains(f) && is_own_name(f) {
            let _ = std::fs::remove_file(dir.join(f));
        }
    }
    let _ = std::fs::remove_file(&pending);
    for (seg, e) in index.segments.iter().zip(&manifest.segments) {
        seg.written.set(e.clone());
    }
    index.params_written.set(manifest.params.clone());
    index.origin.set(Origin {
        dir: key,
        generation,
        crc32: crc32fast::hash(&json),
    });
    Ok(())
}

/// A plain file name (no path) of the kinds an index writes.
fn is_own_name(f: &str) -> bool {
    !f.contains('/')
        && !f.contains("..")
        && [
            "codes-", "vectors-", "params-", "ids-", "lists-", "seg", "deleted-",
        ]
        .iter()
        .any(|p| f.starts_with(p))
}

/// For crash tests: with `REWA_SAVE_PAUSE=<point>:<ms>` set, `save` announces `paused:<point>`
/// on stderr and sleeps at that point, so a test can SIGKILL the process there. Points:
/// `data` (new data files and manifest.json.tmp written, the manifest not yet replaced) and
/// `manifest` (new manifest in place, the old generation's files not yet deleted); a document
/// store beside the index names its own.
#[doc(hidden)]
pub fn crash_test_pause(point: &str) {
    let Ok(v) = std::env::var("REWA_SAVE_PAUSE") else {
        return;
    };
    if let Some((p, ms)) = v.split_once(':') {
        if p == point {
            eprintln!("paused:{point}");
            std::thread::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(0)));
        }
    }
}

fn files_of(m: &Manifest) -> Vec<String> {
    let mut v: Vec<String> = m
        .segments
        .iter()
        .flat_map(|s| s.files().map(|f| f.file.clone()))
        .collect();
    v.push(m.params.file.clone());
    v.extend(m.deleted.iter().map(|f| f.file.clone()));
    v
}

/// Fails unless `path` is a regular file (after symlinks) of at most `max` bytes; returns
/// its length. A FIFO would block a read, a device or a huge sparse file would never end.
fn check_regular(path: &Path, max: u64) -> Result<()> {
    match crate::io::unreadable_because(path, max)? {
        Some(reason) => Err(Error::corrupt(path, reason)),
        None => Ok(()),
    }
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    Ok(read_manifest_crc(dir)?.0)
}

/// [`read_manifest`], and the CRC-32 of the manifest's bytes.
fn read_manifest_crc(dir: &Path) -> Result<(Manifest, u32)> {
    let path = dir.join(MANIFEST);
    check_regular(&path, MAX_MANIFEST_BYTES)?;
    let text = std::fs::read(&path).map_err(io_err(&path))?;
    // Read the version first so that a future format gets `Incompatible`, not a parse error.
    let v: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| Error::corrupt(&path, format!("not valid JSON: {e}")))?;
    let found = v
        .get("format_version")
        .and_then(|x| x.as_u64())
        .ok_or_else(|| Error::corrupt(&path, "no format_version"))?;
    if !(MIN_FORMAT_VERSION as u64..=FORMAT_VERSION as u64).contains(&found) {
        return Err(Error::Incompatible {
            path,
            found: found.min(u32::MAX as u64) as u32,
            supported: format!("{MIN_FORMAT_VERSION}..={FORMAT_VERSION}"),
        });
    }
    let bad = |e: serde_json::Error| Error::corrupt(&path, format!("bad manifest: {e}"));
    let crc = crc32fast::hash(&text);
    if found < 3 {
        return Ok((
            serde_json::from_value::<LegacyManifest>(v)
                .map_err(bad)?
                .upgrade(),
            crc,
        ));
    }
    Ok((serde_json::from_value(v).map_err(bad)?, crc))
}

/// Maps `dir/entry.file` and checks length, header and checksum. Returns the mapping.
fn open_checked(
    dir: &Path,
    entry: &FileEntry,
    magic: Option<(&[u8; 8], usize, usize)>,
) -> Result<Arc<Mmap>> {
    let path = dir.join(&entry.file);
    if entry.file.contains('/') || entry.file.contains("..") {
        return Err(Error::corrupt(
            dir.join(MANIFEST),
            format!("file name {:?} leaves the index directory", entry.file),
        ));
    }
    check_regular(&path, entry.bytes)?;
    let f = File::open(&path).map_err(io_err(&path))?;
    // SAFETY: a mapped file that shrinks under its reader is SIGBUS, so nothing rewa does may
    // shrink or rewrite one: saves write a new generation under file names that did not exist
    // (`save` skips taken names), then rename the manifest, and only then unlink the old
    // generation (unlinking keeps a reader's pages); one writer at a time (`WriteLock`). The
    // mapping is read-only. Another program truncating the files is outside what we can guard.
    let map = unsafe { Mmap::map(&f) }.map_err(io_err(&path))?;
    let corrupt = |r: String| Error::corrupt(&path, r);
    if map.len() as u64 != entry.bytes {
        return Err(corrupt(format!(
            "length {} but the manifest says {} (truncated or extended)",
            map.len(),
            entry.bytes
        )));
    }
    if let Some((magic, row, count)) = magic {
        if map.len() < HEADER {
            return Err(corrupt("shorter than its header".into()));
        }
        if &map[..8] != magic {
            return Err(corrupt(format!(
                "bad magic {:?}",
                String::from_utf8_lossy(&map[..8])
            )));
        }
        let version = u32::from_le_bytes(map[8..12].try_into().unwrap());
        if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(Error::Incompatible {
                path,
                found: version,
                supported: format!("{MIN_FORMAT_VERSION}..={FORMAT_VERSION}"),
            });
        }
        let hrow = u32::from_le_bytes(map[12..16].try_into().unwrap()) as usize;
        let hcount = u64::from_le_bytes(map[16..24].try_into().unwrap()) as usize;
        if hrow != row || hcount != count {
            return Err(corrupt(format!(
                "header says {hcount} rows of {hrow} bytes, the manifest {count} rows of {row}"
            )));
        }
        let want = row.checked_mul(count).and_then(|b| b.checked_add(HEADER));
        if want != Some(map.len()) {
            return Err(corrupt(format!(
                "length {} != {HEADER} + {count} x {row}",
                map.len()
            )));
        }
    }
    // Float vectors past VECTORS_CRC_MAX stay on disk: reading them whole at every open (for
    // their CRC) would cost a full read of a file that a search touches a row at a time, and
    // would fill the page cache with it. Their header, length and row count are checked.
    if magic.is_some_and(|(m, _, _)| m == MAGIC_VECS) && map.len() > VECTORS_CRC_MAX {
        return Ok(Arc::new(map));
    }
    let crc = crc_of(&path, &map)?;
    if crc != entry.crc32 {
        return Err(corrupt(format!(
            "checksum mismatch (crc32 {crc:08x}, manifest {:08x})",
            entry.crc32
        )));
    }
    Ok(Arc::new(map))
}

/// The largest float-vectors file whose CRC `open` checks (1 GiB: 350,000 vectors of 768
/// dimensions); a larger one is written with its CRC but checked only by its structure.
const VECTORS_CRC_MAX: usize = 1 << 30;

/// CRC-32 of a file. A large one is read with `read` rather than through its mapping: pages
/// touched through a mapping count in the process's resident memory until unmapped, and the
/// float vectors of an index are mapped so that only the rows a rerank reads become resident.
fn crc_of(path: &Path, map: &Mmap) -> Result<u32> {
    const LARGE: usize = 16 << 20;
    if map.len() < LARGE {
        return Ok(crc32fast::hash(map));
    }
    use std::io::Read;
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut crc = crc32fast::Hasher::new();
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => crc.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    Ok(crc.finalize())
}

/// Opens the index in `dir`, checking every file once.
pub fn open(dir: &Path) -> Result<Index> {
    // A writer may replace the manifest and delete the files it named between our reading
    // it and opening them: then the new manifest names other files, and we start again.
    let mut tries = 0;
    loop {
        let (m, crc32) = read_manifest_crc(dir)?;
        match open_manifest(dir, &m) {
            Ok(index) => {
                index.origin.set(Origin {
                    dir: dir_key(dir),
                    generation: m.generation,
                    crc32,
                });
                return Ok(index);
            }
            Err(Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound
                    && tries < 5
                    && read_manifest(dir).is_ok_and(|now| now.generation != m.generation) =>
            {
                tries += 1;
            }
            other => return other,
        }
    }
}

/// The largest dimension an index may declare, and the most vectors (ids are u32).
const MAX_DIM: usize = 1 << 20;

fn open_manifest(dir: &Path, m: &Manifest) -> Result<Index> {
    let mpath = dir.join(MANIFEST);
    let corrupt = |r: String| Error::corrupt(&mpath, r);
    if m.dim == 0 || m.dim > MAX_DIM {
        return Err(corrupt(format!("dim {} is outside 1..={MAX_DIM}", m.dim)));
    }
    if m.next_id > u32::MAX as usize {
        return Err(corrupt(format!(
            "next_id {} is more than ids can name",
            m.next_id
        )));
    }
    let pmap = open_checked(dir, &m.params, None)?;
    let ppath = dir.join(&m.params.file);
    let st = safetensors::SafeTensors::deserialize(&pmap)
        .map_err(|e| Error::corrupt(&ppath, format!("safetensors: {e}")))?;
    let params = TensorSource::new(&st, &ppath);
    let mut encoders = Vec::new();
    for (i, c) in m.encoders.iter().enumerate() {
        c.spec.check(m.dim).map_err(|e| corrupt(e.to_string()))?;
        let encoder =
            Encoder::from_tensors(&c.spec, &params.part(&format!("cs{i}")), m.dim, m.metric)?;
        let want = encoder.code_len();
        if c.code_len != want {
            return Err(corrupt(format!(
                "{} codes of {} bytes, the spec needs {want}",
                c.spec, c.code_len
            )));
        }
        encoders.push(encoder);
    }
    let mut doc_ids: Option<Vec<String>> = match m.has_doc_ids {
        true => {
            // next_id comes from an unchecked manifest: an absurd one is an error, not an abort
            let mut v = Vec::new();
            v.try_reserve_exact(m.next_id).map_err(|_| {
                corrupt(format!(
                    "next_id {} is past what memory can name",
                    m.next_id
                ))
            })?;
            v.resize(m.next_id, String::new());
            Some(v)
        }
        false => None,
    };
    let mut segments = Vec::new();
    let mut next_free = 0u64; // one past the largest id of the segments so far
    let mut rows_total = 0usize;
    for se in &m.segments {
        let ne = encoders.len();
        if se.codes.len() != ne || se.lists.len() != ne {
            return Err(corrupt(format!(
                "segment {}: files for {} encoders, not {ne}",
                se.number,
                se.codes.len()
            )));
        }
        if se.vectors.is_some() != m.has_vectors || se.doc_ids.is_some() != m.has_doc_ids {
            return Err(corrupt(format!(
                "segment {}: vectors or corpus ids missing",
                se.number
            )));
        }
        let rows = se.rows;
        let mut codes = Vec::new();
        let mut lists = Vec::new();
        for (i, e) in encoders.iter().enumerate() {
            let cl = e.code_len();
            let map = open_checked(dir, &se.codes[i], Some((MAGIC_CODES, cl, rows)))?;
            let len = map.len() - HEADER;
            codes.push(Bytes::mapped(map, HEADER, len));
            lists.push(match (&se.lists[i], e.coarse()) {
                (Some(entry), Some(c)) => Some(open_lists(dir, entry, c.nlist(), rows)?),
                (None, None) => None,
                _ => {
                    return Err(corrupt(format!(
                        "segment {}: {}: lists file and partition disagree",
                        se.number,
                        e.spec()
                    )));
                }
            });
        }
        let vectors = match &se.vectors {
            Some(v) => {
                let map = open_checked(dir, v, Some((MAGIC_VECS, 4 * m.dim, rows)))?;
                // Reranks read scattered rows: without this the kernel maps the cached pages
                // around each one too (fault-around), and the whole file soon counts as
                // resident memory. Advice only: ignore a kernel that refuses it.
                let _ = map.advise(memmap2::Advice::Random);
                let len = map.len() - HEADER;
                Some(Bytes::mapped(map, HEADER, len))
            }
            None => None,
        };
        let ids = match &se.row_ids {
            Some(entry) => {
                let map = open_checked(dir, entry, Some((MAGIC_ROWS, 4, rows)))?;
                let len = map.len() - HEADER;
                let b = Bytes::mapped(map, HEADER, len);
                let v = b.as_u32();
                if v.windows(2).any(|w| w[0] >= w[1]) || v.first().is_some_and(|&f| f != se.start) {
                    return Err(Error::corrupt(
                        dir.join(&entry.file),
                        "row ids do not rise from the segment's start",
                    ));
                }
                Some(b)
            }
            None => None,
        };
        let seg = Segment {
            rows,
            start: se.start,
            ids,
            staged: None,
            layouts: codes.iter().map(|_| Default::default()).collect(),
            codes,
            lists,
            vectors,
            written: Default::default(),
        };
        let (lo, hi) = seg.id_bounds64();
        if lo < next_free || hi > m.next_id as u64 {
            return Err(corrupt(format!(
                "segment {} holds ids {lo}..{hi}, overlapping the segment before or past next_id {}",
                se.number, m.next_id
            )));
        }
        next_free = hi;
        if let (Some(entry), Some(d)) = (&se.doc_ids, doc_ids.as_mut()) {
            for (j, id) in read_ids(dir, entry, rows)?.into_iter().enumerate() {
                d[seg.id(j) as usize] = id;
            }
        }
        seg.written.set(se.clone());
        rows_total += rows;
        segments.push(seg);
    }
    let deleted = match &m.deleted {
        Some(entry) => {
            let map = open_checked(dir, entry, Some((MAGIC_DELS, 4, m.deleted_count)))?;
            let ids: Vec<u32> = bytemuck::cast_slice::<u8, u32>(&map[HEADER..]).to_vec();
            let ok = ids.windows(2).all(|w| w[0] < w[1])
                && ids
                    .iter()
                    .all(|&i| segments.iter().any(|s: &Segment| s.holds(i)));
            if !ok {
                return Err(Error::corrupt(
                    dir.join(&entry.file),
                    "deleted ids are not rising ids the segments hold",
                ));
            }
            Deleted::new(ids)
        }
        None if m.deleted_count == 0 => Deleted::default(),
        None => return Err(corrupt("deleted_count without a deleted file".into())),
    };
    if rows_total - deleted.len() != m.count {
        return Err(corrupt(format!(
            "count {} but the segments hold {rows_total} rows, {} of them deleted",
            m.count,
            deleted.len()
        )));
    }
    let index = Index {
        dim: m.dim,
        metric: m.metric,
        pipeline: m.pipeline.clone(),
        seed: m.seed,
        encoders,
        segments,
        deleted,
        next_id: m.next_id,
        has_vectors: m.has_vectors,
        doc_ids,
        text_model: m.text_model.clone(),
        params_written: Default::default(),
        origin: Default::default(),
    };
    index.params_written.set(m.params.clone());
    index
        .check_pipeline(&m.pipeline, 1)
        .map_err(|e| corrupt(format!("default pipeline: {e}")))?;
    Ok(index)
}

/// Maps and checks a segment's lists file: offsets from 0 rising to `rows`, and row numbers
/// that are each row exactly once (a damaged list must not send a rerank outside the rows).
fn open_lists(dir: &Path, entry: &FileEntry, nlist: usize, rows: usize) -> Result<Bytes> {
    let map = open_checked(dir, entry, Some((MAGIC_LISTS, 4, nlist + 1 + rows)))?;
    let path = dir.join(&entry.file);
    let len = map.len() - HEADER;
    let b = Bytes::mapped(map, HEADER, len);
    let all = b.as_u32();
    let (offsets, ids) = all.split_at(nlist + 1);
    if offsets[0] != 0 || offsets[nlist] as usize != rows || offsets.windows(2).any(|w| w[0] > w[1])
    {
        return Err(Error::corrupt(
            &path,
            "list offsets do not rise from 0 to the row count",
        ));
    }
    let mut seen = vec![false; rows];
    for &id in ids {
        match seen.get_mut(id as usize) {
            Some(s) if !*s => *s = true,
            _ => {
                return Err(Error::corrupt(
                    &path,
                    format!("row {id} is out of range or listed twice"),
                ));
            }
        }
    }
    Ok(b)
}

/// Reads and checks a corpus ids file: `count` lines, each a non-empty UTF-8 id.
fn read_ids(dir: &Path, entry: &FileEntry, count: usize) -> Result<Vec<String>> {
    let map = open_checked(dir, entry, None)?;
    let path = dir.join(&entry.file);
    let text =
        std::str::from_utf8(&map).map_err(|e| Error::corrupt(&path, format!("not UTF-8: {e}")))?;
    let Some(body) = text.strip_suffix('\n').or((count == 0).then_some(text)) else {
        return Err(Error::corrupt(&path, "does not end with a line break"));
    };
    let ids: Vec<String> = if count == 0 {
        Vec::new()
    } else {
        body.split('\n').map(str::to_owned).collect()
    };
    if ids.len() != count {
        return Err(Error::corrupt(
            &path,
            format!("{} ids for {count} rows", ids.len()),
        ));
    }
    if ids.iter().any(|i| i.is_empty() || i.contains('\r')) {
        return Err(Error::corrupt(&path, "an empty id"));
    }
    Ok(ids)
}

/// Format facts and file sizes of the index in `dir`.
pub fn info(dir: &Path) -> Result<IndexInfo> {
    let m = read_manifest(dir)?;
    let mut files = vec![(
        MANIFEST.to_string(),
        std::fs::metadata(dir.join(MANIFEST))
            .map(|x| x.len())
            .unwrap_or(0),
    )];
    files.extend(files_of(&m).into_iter().map(|f| {
        let n = std::fs::metadata(dir.join(&f))
            .map(|x| x.len())
            .unwrap_or(0);
        (f, n)
    }));
    let disk_bytes = files.iter().map(|f| f.1).sum();
    Ok(IndexInfo {
        format_version: m.format_version,
        files,
        disk_bytes,
    })
}
