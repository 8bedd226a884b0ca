//! The on-disk index: the only code that knows byte layouts, versions and checksums.
//!
//! An index is a directory:
//!
//! | file | contents |
//! |---|---|
//! | `write.lock` | the writer lock (an `flock`), holding the holder's pid |
//! | `pending.txt` | while a save runs: the files it writes and the files it will delete |
//! | `manifest.json` | `format_version`, `rewa_version`, `dim`, `metric`, `count`, `seed`, default `pipeline`, `generation`, and per data file its name and CRC-32 |
//! | `codes-<gen>-<i>.bin` | codes of the pipeline's i-th encoder: header, then `count * code_len` bytes |
//! | `vectors-<gen>.f32` | optional float vectors (normalised for cosine) for `exact` stages: header, then `count * 4 * dim` bytes, little-endian f32 |
//! | `params-<gen>.safetensors` | fitted parameters (Hadamard signs and kept coordinates, PCA mean / components / variances, sign thresholds, int8 ranges) |
//! | `ids-<gen>.txt` | optional (an index built from text): the corpus id of each row, UTF-8, one per line, each line ending in `\n` |
//! | `lists-<gen>-<i>.bin` | for a partitioned encoder (`ivf<nlist>+...`): header (rows of 4 bytes, `nlist + 1 + count` of them), then `nlist + 1` list offsets and `count` ids, u32 LE; its codes file then holds the codes in list order |
//!
//! A manifest with corpus ids also records `text_model` (the model directory, the SHA-256 of
//! its weights, `max_seq_len`) and says `format_version` 2; one with a partitioned code set
//! says 3; others say 1, so older builds still read every index they could before (and
//! name the version they cannot read).
//!
//! Header of `.bin` / `.f32` files (64 bytes, so payloads start 8-byte aligned in a mapping):
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `REWACODE` (codes) or `REWAVECS` (vectors) |
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
//! **Crash safety.** `save` writes every data file under a new generation number, fsyncs them,
//! then replaces `manifest.json` by an atomic rename, fsyncs the directory, and only then deletes
//! the files the previous manifest named (and no other file: a folder may hold the user's own
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
//! **Checks at open.** Manifest parse and version range; for every file: length, magic,
//! version, row size and count against the manifest, CRC-32 of the whole file; parameter
//! shapes against the dimensions. After `open`, scans need no checks.

use super::{Bytes, CodeSet, Index, TextModel};
use crate::distance::Metric;
use crate::encode::{Encoder, EncoderSpec, Tensor, TensorSource};
use crate::error::{Error, Result};
use crate::search::Pipeline;
use memmap2::Mmap;
use safetensors::tensor::TensorView;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The newest format version this build writes (2: a manifest with corpus ids and a text
/// model; 3: a partitioned code set; data files and other manifests are still written as 1).
pub const FORMAT_VERSION: u32 = 3;
/// The version of the `.bin` / `.f32` headers and of a manifest without ids.
const BASE_VERSION: u32 = 1;
/// The oldest format version this build reads.
pub const MIN_FORMAT_VERSION: u32 = 1;
const HEADER: usize = 64;
const MAGIC_CODES: &[u8; 8] = b"REWACODE";
const MAGIC_VECS: &[u8; 8] = b"REWAVECS";
const MAGIC_LISTS: &[u8; 8] = b"REWALIST";
const MANIFEST: &str = "manifest.json";
/// The writer lock's file name inside an index directory.
pub const LOCK_FILE: &str = "write.lock";
/// The files a save is writing, removed when it completes (a leftover names a dead writer's).
const PENDING: &str = "pending.txt";
/// The largest `manifest.json` read (a real one is a few KiB).
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    file: String,
    crc32: u32,
    bytes: u64,
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct CodeEntry {
    spec: EncoderSpec,
    code_len: usize,
    #[serde(flatten)]
    data: FileEntry,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lists: Option<FileEntry>,
}

/// `manifest.json`.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format_version: u32,
    rewa_version: String,
    generation: u64,
    dim: usize,
    metric: Metric,
    count: usize,
    seed: u64,
    pipeline: Pipeline,
    code_sets: Vec<CodeEntry>,
    vectors: Option<FileEntry>,
    params: FileEntry,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ids: Option<FileEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text_model: Option<TextModel>,
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

/// Fails unless `dir` may receive a new index: missing, empty (but for the lock file), or
/// already an index, or what a killed build left (which the new one replaces). A folder of other files is refused unless
/// `force`; even then only files an index manifest named are ever deleted.
pub fn check_build_target(dir: &Path, force: bool) -> Result<()> {
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
    if others.is_empty() || force || others.iter().any(|n| n == MANIFEST || n == PENDING) {
        return Ok(());
    }
    Err(Error::InvalidInput(format!(
        "{} is not empty and holds no index ({} other files, e.g. {:?}); choose an empty or new folder, or pass --force (which never deletes files the index did not write)",
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

/// Every code set's encoder tensors, named `cs<i>.<part>.<name>`.
fn params_tensors(index: &Index) -> Vec<(String, Tensor<'_>)> {
    index
        .code_sets
        .iter()
        .enumerate()
        .flat_map(|(i, cs)| {
            cs.encoder
                .tensors()
                .into_iter()
                .map(move |(name, t)| (format!("cs{i}.{name}"), t))
        })
        .collect()
}

/// Saves `index` into the directory `lock` holds, crash-safely.
pub fn save(index: &Index, lock: &WriteLock) -> Result<()> {
    let dir = lock.dir();
    let old = match read_manifest(dir) {
        Ok(m) => Some(m),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    // A writer killed mid-save left its `pending` record: the files it was writing and the
    // ones it was to delete. Those the current manifest does not name are garbage (no reader
    // maps them), and only those go.
    let pending = dir.join(PENDING);
    if let Ok(text) = std::fs::read_to_string(&pending) {
        let live = old.as_ref().map(files_of).unwrap_or_default();
        for f in text
            .lines()
            .filter(|f| is_own_name(f) && !live.iter().any(|l| l == f))
        {
            let _ = std::fs::remove_file(dir.join(f));
        }
    }
    // The next generation whose file names are all free: no existing file is overwritten.
    let mut generation = old.as_ref().map_or(0, |m| m.generation + 1);
    while gen_files(index, generation)
        .iter()
        .any(|f| dir.join(f).symlink_metadata().is_ok())
    {
        generation += 1;
    }
    // Record what this save is about to write and then delete, before doing either.
    let mut record = gen_files(index, generation);
    record.extend(old.as_ref().map(files_of).unwrap_or_default());
    write_file(&pending, &[record.join("\n").as_bytes()])?;
    let mut code_sets = Vec::new();
    for (i, cs) in index.code_sets.iter().enumerate() {
        let name = format!("codes-{generation}-{i}.bin");
        let cl = cs.encoder.code_len();
        let (crc32, bytes) = write_file(
            &dir.join(&name),
            &[&header(MAGIC_CODES, cl, index.count), cs.codes.as_slice()],
        )?;
        let lists = match &cs.lists {
            Some(l) => {
                let name = format!("lists-{generation}-{i}.bin");
                let (crc32, bytes) = write_file(
                    &dir.join(&name),
                    &[
                        &header(MAGIC_LISTS, 4, l.as_slice().len() / 4),
                        l.as_slice(),
                    ],
                )?;
                Some(FileEntry {
                    file: name,
                    crc32,
                    bytes,
                })
            }
            None => None,
        };
        code_sets.push(CodeEntry {
            spec: cs.encoder.spec().clone(),
            code_len: cl,
            data: FileEntry {
                file: name,
                crc32,
                bytes,
            },
            lists,
        });
    }
    let vectors = match &index.vectors {
        Some(v) => {
            let name = format!("vectors-{generation}.f32");
            let (crc32, bytes) = write_file(
                &dir.join(&name),
                &[
                    &header(MAGIC_VECS, 4 * index.dim, index.count),
                    v.as_slice(),
                ],
            )?;
            Some(FileEntry {
                file: name,
                crc32,
                bytes,
            })
        }
        None => None,
    };
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
    let st = safetensors::serialize(views, None)
        .map_err(|e| Error::InvalidInput(format!("safetensors: {e}")))?;
    let pname = format!("params-{generation}.safetensors");
    let (crc32, bytes) = write_file(&dir.join(&pname), &[&st])?;
    let ids = match &index.doc_ids {
        Some(ids) => {
            let name = format!("ids-{generation}.txt");
            let mut text = String::with_capacity(ids.iter().map(|i| i.len() + 1).sum());
            for id in ids {
                text.push_str(id);
                text.push('\n');
            }
            let (crc32, bytes) = write_file(&dir.join(&name), &[text.as_bytes()])?;
            Some(FileEntry {
                file: name,
                crc32,
                bytes,
            })
        }
        None => None,
    };
    let with_text = ids.is_some() || index.text_model.is_some();
    let with_lists = code_sets.iter().any(|c| c.lists.is_some());
    let manifest = Manifest {
        format_version: if with_lists {
            3
        } else if with_text {
            2
        } else {
            BASE_VERSION
        },
        rewa_version: env!("CARGO_PKG_VERSION").to_string(),
        generation,
        dim: index.dim,
        metric: index.metric,
        count: index.count,
        seed: index.seed,
        pipeline: index.pipeline.clone(),
        code_sets,
        vectors,
        params: FileEntry {
            file: pname,
            crc32,
            bytes,
        },
        ids,
        text_model: index.text_model.clone(),
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("invariant: manifest serializes");
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    write_file(&tmp, &[&json])?;
    crash_test_pause("data");
    std::fs::rename(&tmp, dir.join(MANIFEST)).map_err(io_err(dir))?;
    sync_dir(dir)?;
    crash_test_pause("manifest");
    // The new manifest is durable: the files the old one named are garbage now. Only those
    // are deleted; readers that mapped them keep their pages (unlink, not truncate).
    let keep: Vec<String> = files_of(&manifest);
    if let Some(old) = old {
        for f in files_of(&old) {
            if !keep.contains(&f) && is_own_name(&f) {
                let _ = std::fs::remove_file(dir.join(f));
            }
        }
    }
    let _ = std::fs::remove_file(&pending);
    Ok(())
}

/// The data file names generation `g` of `index` writes.
fn gen_files(index: &Index, g: u64) -> Vec<String> {
    let mut v: Vec<String> = (0..index.code_sets.len())
        .flat_map(|i| [format!("codes-{g}-{i}.bin"), format!("lists-{g}-{i}.bin")])
        .collect();
    v.push(format!("vectors-{g}.f32"));
    v.push(format!("params-{g}.safetensors"));
    v.push(format!("ids-{g}.txt"));
    v
}

/// A plain file name (no path) of the kinds an index writes.
fn is_own_name(f: &str) -> bool {
    !f.contains('/')
        && !f.contains("..")
        && (f.starts_with("codes-")
            || f.starts_with("vectors-")
            || f.starts_with("lists-")
            || f.starts_with("params-")
            || f.starts_with("ids-"))
}

/// For crash tests: with `REWA_SAVE_PAUSE=<point>:<ms>` set, `save` announces `paused:<point>`
/// on stderr and sleeps at that point, so a test can SIGKILL the process there. Points:
/// `data` (new data files and manifest.json.tmp written, the manifest not yet replaced) and
/// `manifest` (new manifest in place, the old generation's files not yet deleted).
fn crash_test_pause(point: &str) {
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
    let mut v: Vec<String> = m.code_sets.iter().map(|c| c.data.file.clone()).collect();
    v.extend(
        m.code_sets
            .iter()
            .flat_map(|c| c.lists.iter().map(|f| f.file.clone())),
    );
    v.extend(m.vectors.iter().map(|f| f.file.clone()));
    v.push(m.params.file.clone());
    v.extend(m.ids.iter().map(|f| f.file.clone()));
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
    serde_json::from_value(v).map_err(|e| Error::corrupt(&path, format!("bad manifest: {e}")))
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
    let crc = crc32fast::hash(&map);
    if crc != entry.crc32 {
        return Err(corrupt(format!(
            "checksum mismatch (crc32 {crc:08x}, manifest {:08x})",
            entry.crc32
        )));
    }
    Ok(Arc::new(map))
}

/// Opens the index in `dir`, checking every file once.
pub fn open(dir: &Path) -> Result<Index> {
    // A writer may replace the manifest and delete the files it named between our reading
    // it and opening them: then the new manifest names other files, and we start again.
    let mut tries = 0;
    loop {
        let m = read_manifest(dir)?;
        match open_manifest(dir, &m) {
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
    if m.dim == 0 || m.dim > MAX_DIM {
        return Err(Error::corrupt(
            &mpath,
            format!("dim {} is outside 1..={MAX_DIM}", m.dim),
        ));
    }
    if m.count > u32::MAX as usize {
        return Err(Error::corrupt(
            &mpath,
            format!("count {} is more than ids can name", m.count),
        ));
    }
    let pmap = open_checked(dir, &m.params, None)?;
    let ppath = dir.join(&m.params.file);
    let st = safetensors::SafeTensors::deserialize(&pmap)
        .map_err(|e| Error::corrupt(&ppath, format!("safetensors: {e}")))?;
    let params = TensorSource::new(&st, &ppath);
    let mut code_sets = Vec::new();
    for (i, c) in m.code_sets.iter().enumerate() {
        c.spec
            .check(m.dim)
            .map_err(|e| Error::corrupt(&mpath, e.to_string()))?;
        let encoder =
            Encoder::from_tensors(&c.spec, &params.part(&format!("cs{i}")), m.dim, m.metric)?;
        let want = encoder.code_len();
        if c.code_len != want {
            return Err(Error::corrupt(
                &mpath,
                format!(
                    "{} codes of {} bytes, the spec needs {want}",
                    c.spec, c.code_len
                ),
            ));
        }
        let map = open_checked(dir, &c.data, Some((MAGIC_CODES, c.code_len, m.count)))?;
        let len = map.len() - HEADER;
        let lists = match (&c.lists, encoder.coarse()) {
            (Some(entry), Some(coarse)) => Some(open_lists(dir, entry, coarse.nlist(), m.count)?),
            (None, None) => None,
            _ => {
                return Err(Error::corrupt(
                    &mpath,
                    format!("{}: lists file and partition disagree", c.spec),
                ))
            }
        };
        code_sets.push(CodeSet {
            encoder,
            codes: Bytes::mapped(map, HEADER, len),
            lists,
        });
    }
    let vectors = match &m.vectors {
        Some(v) => {
            let map = open_checked(dir, v, Some((MAGIC_VECS, 4 * m.dim, m.count)))?;
            let len = map.len() - HEADER;
            Some(Bytes::mapped(map, HEADER, len))
        }
        None => None,
    };
    let doc_ids = match &m.ids {
        Some(entry) => Some(read_ids(dir, entry, m.count)?),
        None => None,
    };
    let index = Index {
        dim: m.dim,
        metric: m.metric,
        pipeline: m.pipeline.clone(),
        seed: m.seed,
        count: m.count,
        code_sets,
        vectors,
        doc_ids,
        text_model: m.text_model.clone(),
    };
    index
        .check_pipeline(&m.pipeline, 1)
        .map_err(|e| Error::corrupt(&mpath, format!("default pipeline: {e}")))?;
    Ok(index)
}

/// Maps and checks `lists-<gen>-<i>.bin`: offsets from 0 rising to `count`, and ids that are
/// each row exactly once (a damaged list must not send a rerank outside the rows).
fn open_lists(dir: &Path, entry: &FileEntry, nlist: usize, count: usize) -> Result<Bytes> {
    let map = open_checked(dir, entry, Some((MAGIC_LISTS, 4, nlist + 1 + count)))?;
    let path = dir.join(&entry.file);
    let len = map.len() - HEADER;
    let b = Bytes::mapped(map, HEADER, len);
    let all: &[u32] = bytemuck::cast_slice(b.as_slice());
    let (offsets, ids) = all.split_at(nlist + 1);
    if offsets[0] != 0
        || offsets[nlist] as usize != count
        || offsets.windows(2).any(|w| w[0] > w[1])
    {
        return Err(Error::corrupt(
            &path,
            "list offsets do not rise from 0 to the row count",
        ));
    }
    let mut seen = vec![false; count];
    for &id in ids {
        match seen.get_mut(id as usize) {
            Some(s) if !*s => *s = true,
            _ => {
                return Err(Error::corrupt(
                    &path,
                    format!("id {id} is out of range or listed twice"),
                ))
            }
        }
    }
    Ok(b)
}

/// Reads and checks `ids-<gen>.txt`: `count` lines, each a non-empty UTF-8 id.
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
