//! The on-disk index: the only code that knows byte layouts, versions and checksums.
//!
//! An index is a directory:
//!
//! | file | contents |
//! |---|---|
//! | `manifest.json` | `format_version`, `rewa_version`, `dim`, `metric`, `count`, `seed`, default `pipeline`, `generation`, and per data file its name and CRC-32 |
//! | `codes-<gen>-<i>.bin` | codes of the pipeline's i-th encoder: header, then `count * code_len` bytes |
//! | `vectors-<gen>.f32` | optional float vectors (normalised for cosine) for `exact` stages: header, then `count * 4 * dim` bytes, little-endian f32 |
//! | `params-<gen>.safetensors` | fitted parameters (Hadamard signs and kept coordinates, PCA mean / components / variances, sign thresholds, int8 ranges) |
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
//! the previous generation's files. A process killed at any moment leaves either the old
//! manifest (whose files are untouched) or the new one (whose files are complete).
//!
//! **Checks at open.** Manifest parse and version range; for every file: length, magic,
//! version, row size and count against the manifest, CRC-32 of the whole file; parameter
//! shapes against the dimensions. After `open`, scans need no checks.

use super::{Bytes, CodeSet, Index};
use crate::distance::Metric;
use crate::encode::{
    AnyQuantizer, AnyTransform, Encoder, EncoderSpec, FlatQuantizer, HadamardTransform,
    Int8Quantizer, LearnedTransform, OpqTransform, PcaTransform, PqQuantizer, QuantizerSpec,
    SignAsymQuantizer, SignQuantizer, TransformSpec, PQ_CENTROIDS, TENSOR_NAMES,
};
use crate::error::{Error, Result};
use crate::search::Pipeline;
use memmap2::Mmap;
use safetensors::tensor::{Dtype, TensorView};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The format version this build writes.
pub const FORMAT_VERSION: u32 = 1;
/// The oldest format version this build reads.
pub const MIN_FORMAT_VERSION: u32 = 1;
const HEADER: usize = 64;
const MAGIC_CODES: &[u8; 8] = b"REWACODE";
const MAGIC_VECS: &[u8; 8] = b"REWAVECS";
const MANIFEST: &str = "manifest.json";

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
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
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

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn f32_bytes(v: &[f32]) -> &[u8] {
    crate::io::as_bytes(v)
}

fn params_tensors(index: &Index) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    let mut t = Vec::new();
    let mut f = |name: String, shape: Vec<usize>, v: &[f32]| {
        t.push((name, Dtype::F32, shape, f32_bytes(v).to_vec()))
    };
    let mut keeps = Vec::new();
    for (i, cs) in index.code_sets.iter().enumerate() {
        for (j, tr) in cs.encoder.transforms().iter().enumerate() {
            let p = format!("cs{i}.t{j}");
            match tr {
                AnyTransform::Hadamard(h) => {
                    f(format!("{p}.signs"), vec![h.signs().len()], h.signs());
                    keeps.push((format!("{p}.keep"), h.keep().to_vec()));
                }
                AnyTransform::Opq(o) => {
                    f(
                        format!("{p}.rotation"),
                        vec![tr.dim_in(), tr.dim_in()],
                        o.rotation(),
                    );
                }
                AnyTransform::Learned(l) => {
                    for (name, shape, v) in l.tensors() {
                        f(format!("{p}.{name}"), shape, v);
                    }
                    f(format!("{p}.ln_eps"), vec![1], &[l.eps()]);
                }
                AnyTransform::Pca(pc) => {
                    f(format!("{p}.mean"), vec![pc.mean().len()], pc.mean());
                    f(
                        format!("{p}.components"),
                        vec![pc.variances().len(), pc.dim_in_()],
                        pc.components(),
                    );
                    f(
                        format!("{p}.variances"),
                        vec![pc.variances().len()],
                        pc.variances(),
                    );
                }
            }
        }
        match cs.encoder.quantizer() {
            AnyQuantizer::Flat(_) => {}
            AnyQuantizer::Sign(s) => f(
                format!("cs{i}.q.thresholds"),
                vec![s.thresholds().len()],
                s.thresholds(),
            ),
            AnyQuantizer::SignAsym(s) => f(
                format!("cs{i}.q.thresholds"),
                vec![s.thresholds().len()],
                s.thresholds(),
            ),
            AnyQuantizer::Pq(q) => f(
                format!("cs{i}.q.centroids"),
                vec![PQ_CENTROIDS, q.dim()],
                q.centroids(),
            ),
            AnyQuantizer::Int8(q) => {
                f(format!("cs{i}.q.lo"), vec![q.lo().len()], q.lo());
                f(format!("cs{i}.q.scale"), vec![q.scale().len()], q.scale());
            }
        }
    }
    for (name, k) in keeps {
        t.push((
            name,
            Dtype::U32,
            vec![k.len()],
            crate::io::as_bytes(&k).to_vec(),
        ));
    }
    t
}

impl PcaTransform {
    fn dim_in_(&self) -> usize {
        self.dim_in
    }
}

/// Saves `index` into `dir` (created if missing), crash-safely.
pub fn save(index: &Index, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let old = read_manifest(dir).ok();
    let generation = old.as_ref().map_or(0, |m| m.generation + 1);
    let mut code_sets = Vec::new();
    for (i, cs) in index.code_sets.iter().enumerate() {
        let name = format!("codes-{generation}-{i}.bin");
        let cl = cs.encoder.code_len();
        let (crc32, bytes) = write_file(
            &dir.join(&name),
            &[&header(MAGIC_CODES, cl, index.count), cs.codes.as_slice()],
        )?;
        code_sets.push(CodeEntry {
            spec: cs.encoder.spec().clone(),
            code_len: cl,
            data: FileEntry {
                file: name,
                crc32,
                bytes,
            },
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
        .map(|(n, dt, shape, data)| {
            (
                n.clone(),
                TensorView::new(*dt, shape.clone(), data).expect("invariant: shape matches data"),
            )
        })
        .collect();
    let st = safetensors::serialize(views, None)
        .map_err(|e| Error::InvalidInput(format!("safetensors: {e}")))?;
    let pname = format!("params-{generation}.safetensors");
    let (crc32, bytes) = write_file(&dir.join(&pname), &[&st])?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
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
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("invariant: manifest serializes");
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    write_file(&tmp, &[&json])?;
    crash_test_pause("data");
    std::fs::rename(&tmp, dir.join(MANIFEST)).map_err(io_err(dir))?;
    sync_dir(dir)?;
    crash_test_pause("manifest");
    // The new manifest is durable: files of other generations are garbage now.
    let keep: Vec<String> = files_of(&manifest);
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            let ours =
                n.starts_with("codes-") || n.starts_with("vectors-") || n.starts_with("params-");
            if ours && !keep.contains(&n) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
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
    v.extend(m.vectors.iter().map(|f| f.file.clone()));
    v.push(m.params.file.clone());
    v
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
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
    let f = File::open(&path).map_err(io_err(&path))?;
    // SAFETY: the index's files are written once and never modified in place (saves write a
    // new generation); the mapping is read-only.
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
        if map.len() != HEADER + row * count {
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

struct Params<'a> {
    st: safetensors::SafeTensors<'a>,
    path: PathBuf,
}

impl Params<'_> {
    fn get<T: crate::io::bytes::Pod + Default>(
        &self,
        name: &str,
        dtype: Dtype,
        len: usize,
    ) -> Result<Vec<T>> {
        let t = self
            .st
            .tensor(name)
            .map_err(|_| Error::corrupt(&self.path, format!("missing tensor {name}")))?;
        let n: usize = t.shape().iter().product();
        if t.dtype() != dtype || n != len {
            return Err(Error::corrupt(
                &self.path,
                format!(
                    "tensor {name}: {:?} {:?}, expected {dtype:?} of {len}",
                    t.dtype(),
                    t.shape()
                ),
            ));
        }
        let mut v = vec![T::default(); n];
        crate::io::fill_from_bytes(&mut v, t.data());
        Ok(v)
    }
}

/// A learned transform's dims come from its tensors' shapes: `l1.weight` is `h x d`,
/// `l2.weight` is `m x h`.
fn load_learned(p: &Params, pre: &str, d: usize) -> Result<LearnedTransform> {
    let shape = |name: &str| -> Result<Vec<usize>> {
        let full = format!("{pre}.{name}");
        p.st.tensor(&full)
            .map(|t| t.shape().to_vec())
            .map_err(|_| Error::corrupt(&p.path, format!("missing tensor {full}")))
    };
    let (s1, s2) = (shape("l1.weight")?, shape("l2.weight")?);
    if s1.len() != 2 || s2.len() != 2 || s1[1] != d || s2[1] != s1[0] {
        return Err(Error::corrupt(
            &p.path,
            format!("{pre}: weight shapes {s1:?} and {s2:?} do not chain from dimension {d}"),
        ));
    }
    let (h, m) = (s1[0], s2[0]);
    let shapes = LearnedTransform::shapes(d, h, m);
    let mut t: [Vec<f32>; 8] = Default::default();
    for (i, (name, shape)) in TENSOR_NAMES.iter().zip(&shapes).enumerate() {
        t[i] = p.get::<f32>(&format!("{pre}.{name}"), Dtype::F32, shape.iter().product())?;
    }
    let eps = p.get::<f32>(&format!("{pre}.ln_eps"), Dtype::F32, 1)?[0];
    LearnedTransform::from_tensors(d, h, m, eps, t)
        .map_err(|e| Error::corrupt(&p.path, format!("{pre}: {e}")))
}

fn load_encoder(
    p: &Params,
    i: usize,
    spec: &EncoderSpec,
    dim: usize,
    metric: Metric,
) -> Result<Encoder> {
    let mut transforms = Vec::new();
    let mut d = dim;
    for (j, t) in spec.transforms.iter().enumerate() {
        let pre = format!("cs{i}.t{j}");
        let tr: AnyTransform = match *t {
            TransformSpec::Hadamard { m } => {
                let blocks = m.div_ceil(d.next_power_of_two());
                let signs = p.get::<f32>(
                    &format!("{pre}.signs"),
                    Dtype::F32,
                    blocks * d.next_power_of_two(),
                )?;
                let keep = p.get::<u32>(&format!("{pre}.keep"), Dtype::U32, m)?;
                HadamardTransform::from_parts(d, signs, keep)
                    .map_err(|e| Error::corrupt(&p.path, format!("{pre}: {e}")))?
                    .into()
            }
            TransformSpec::Pca { m } => {
                let mean = p.get::<f32>(&format!("{pre}.mean"), Dtype::F32, d)?;
                let comp = p.get::<f32>(&format!("{pre}.components"), Dtype::F32, m * d)?;
                let var = p.get::<f32>(&format!("{pre}.variances"), Dtype::F32, m)?;
                PcaTransform::from_parts(d, mean, comp, var)?.into()
            }
            TransformSpec::Opq { m } => {
                let rot = p.get::<f32>(&format!("{pre}.rotation"), Dtype::F32, d * d)?;
                OpqTransform::from_parts(d, m, rot)
                    .map_err(|e| Error::corrupt(&p.path, format!("{pre}: {e}")))?
                    .into()
            }
            TransformSpec::Learned { .. } => load_learned(p, &pre, d)?.into(),
        };
        d = tr.dim_out();
        transforms.push(tr);
    }
    let q: AnyQuantizer = match spec.quantizer {
        QuantizerSpec::Flat => FlatQuantizer::new(d, metric).into(),
        QuantizerSpec::Sign => {
            SignQuantizer::from_thresholds(p.get(&format!("cs{i}.q.thresholds"), Dtype::F32, d)?)
                .into()
        }
        QuantizerSpec::SignAsym => SignAsymQuantizer::new(
            SignQuantizer::from_thresholds(p.get(&format!("cs{i}.q.thresholds"), Dtype::F32, d)?),
            metric,
        )
        .into(),
        QuantizerSpec::Pq { m } => PqQuantizer::from_parts(
            d,
            m,
            p.get(&format!("cs{i}.q.centroids"), Dtype::F32, PQ_CENTROIDS * d)?,
            metric,
        )
        .map_err(|e| Error::corrupt(&p.path, format!("cs{i}.q: {e}")))?
        .into(),
        QuantizerSpec::Int8 => Int8Quantizer::from_parts(
            p.get(&format!("cs{i}.q.lo"), Dtype::F32, d)?,
            p.get(&format!("cs{i}.q.scale"), Dtype::F32, d)?,
            metric,
        )
        .into(),
    };
    Encoder::from_parts(spec.clone(), dim, transforms, q)
}

/// Opens the index in `dir`, checking every file once.
pub fn open(dir: &Path) -> Result<Index> {
    let m = read_manifest(dir)?;
    let mpath = dir.join(MANIFEST);
    if m.dim == 0 {
        return Err(Error::corrupt(&mpath, "dim is 0"));
    }
    let pmap = open_checked(dir, &m.params, None)?;
    let ppath = dir.join(&m.params.file);
    let st = safetensors::SafeTensors::deserialize(&pmap)
        .map_err(|e| Error::corrupt(&ppath, format!("safetensors: {e}")))?;
    let params = Params { st, path: ppath };
    let mut code_sets = Vec::new();
    for (i, c) in m.code_sets.iter().enumerate() {
        c.spec
            .check(m.dim)
            .map_err(|e| Error::corrupt(&mpath, e.to_string()))?;
        let encoder = load_encoder(&params, i, &c.spec, m.dim, m.metric)?;
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
        code_sets.push(CodeSet {
            encoder,
            codes: Bytes::mapped(map, HEADER, len),
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
    let index = Index {
        dim: m.dim,
        metric: m.metric,
        pipeline: m.pipeline.clone(),
        seed: m.seed,
        count: m.count,
        code_sets,
        vectors,
    };
    index
        .check_pipeline(&m.pipeline, 1)
        .map_err(|e| Error::corrupt(&mpath, format!("default pipeline: {e}")))?;
    Ok(index)
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
