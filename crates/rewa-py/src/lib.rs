//! `rewa` for Python: numpy arrays in, FAISS-shaped results out.
//!
//! This crate only converts: arrays to the library's vectors, errors to Python exceptions,
//! reports to dicts. Every flow (fitting, search, tuning, evaluation, the on-disk format) is
//! the `rewa` library's, so an index saved here is the same directory the CLI reads.
//!
//! Three rules hold for every function:
//! - the GIL is released while the library works (`Python::detach`), so Python threads run
//!   searches in parallel;
//! - a Rust panic never reaches Python as `PanicException`: it is caught and raised as
//!   `RuntimeError` naming it a bug;
//! - bad input raises `ValueError` with the library's message (the CLI's words).

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::{
    PyFileNotFoundError, PyMemoryError, PyNotImplementedError, PyOSError, PyRuntimeError,
    PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use rewa::eval::{evaluate as eval_pipeline, EvalInput, Labels};
use rewa::{EncoderSpec, Metric, Pipeline, SearchParams, TuneOptions, VectorsRef};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::RwLock;

mod docs;
#[cfg(feature = "embed")]
mod embed;

/// An error that has a Python exception a caller would expect.
trait ToPy {
    fn to_py(self) -> PyErr;
}

impl ToPy for rewa::Error {
    fn to_py(self) -> PyErr {
        to_py(self)
    }
}

/// The library's error as the Python exception a caller would expect.
fn to_py(e: rewa::Error) -> PyErr {
    use rewa::Error as E;
    let msg = e.to_string();
    match &e {
        E::DimMismatch { .. } | E::InvalidInput(_) | E::Corrupt { .. } | E::Incompatible { .. } => {
            PyValueError::new_err(msg)
        }
        E::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(msg)
        }
        E::Io { .. } | E::Locked { .. } => PyOSError::new_err(msg),
        E::Stale { .. } => PyRuntimeError::new_err(format!(
            "{msg} (rewa.Index.open(path) reads it again; save(path, force=True) replaces it with this one instead)"
        )),
        E::Unsupported(_) => PyNotImplementedError::new_err(msg),
    }
}

/// Runs `f` with the GIL released, turning a library error into its exception and a panic
/// into `RuntimeError` (never `PanicException`).
fn detached<T: Send>(py: Python<'_>, f: impl FnOnce() -> rewa::Result<T> + Send) -> PyResult<T> {
    detached_as(py, f)
}

/// [`detached`] for any error with a Python exception (the embedder's, too).
fn detached_as<T: Send, E: ToPy + Send>(
    py: Python<'_>,
    f: impl FnOnce() -> Result<T, E> + Send,
) -> PyResult<T> {
    let r = py.detach(|| std::panic::catch_unwind(AssertUnwindSafe(f)));
    match r {
        Ok(r) => r.map_err(ToPy::to_py),
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(PyRuntimeError::new_err(format!(
                "internal error in rewa (a bug; please report it): {what}"
            )))
        }
    }
}

fn parse<T: std::str::FromStr<Err = rewa::Error>>(s: &str) -> PyResult<T> {
    s.parse().map_err(to_py)
}

/// A float32 C-contiguous (n, d) view of `obj`: the array itself when it already is one (no
/// copy), else numpy's conversion of it (float64, non-contiguous, lists).
fn matrix<'py>(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<PyReadonlyArray2<'py, f32>> {
    let py = obj.py();
    let np = py.import("numpy")?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("dtype", np.getattr("float32")?)?;
    let arr = np
        .call_method("ascontiguousarray", (obj,), Some(&kwargs))
        .map_err(|e| {
            PyValueError::new_err(format!(
                "{what} must be a 2-D float array (n, dim): {}",
                e.value(py)
            ))
        })?;
    let ndim: usize = arr.getattr("ndim")?.extract()?;
    let shape: Vec<usize> = arr.getattr("shape")?.extract()?;
    if ndim != 2 {
        return Err(PyValueError::new_err(format!(
            "{what} must be a 2-D array (n, dim), got {ndim}-D with shape {shape:?}{}",
            if ndim == 1 {
                "; for one vector pass v.reshape(1, -1)"
            } else {
                ""
            }
        )));
    }
    if shape[0] == 0 || shape[1] == 0 {
        return Err(PyValueError::new_err(format!(
            "{what} is empty (shape {shape:?}): give at least one vector of at least one dimension"
        )));
    }
    arr.extract()
}

/// The rows of a checked array as the library's borrowed vectors.
fn rows<'a>(a: &'a PyReadonlyArray2<'_, f32>) -> PyResult<VectorsRef<'a>> {
    let dim = a.shape()[1];
    let data = a
        .as_slice()
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    VectorsRef::new(dim, data).map_err(to_py)
}

fn labels_of(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<i64>> {
    let np = obj.py().import("numpy")?;
    let arr = np.call_method1("asarray", (obj,))?;
    let ndim: usize = arr.getattr("ndim")?.extract()?;
    if ndim != 1 {
        return Err(PyValueError::new_err(format!(
            "{what} must be a 1-D array of integer labels, got {ndim}-D"
        )));
    }
    let kind: String = arr.getattr("dtype")?.getattr("kind")?.extract()?;
    if !matches!(kind.as_str(), "i" | "u" | "b") {
        return Err(PyValueError::new_err(format!(
            "{what} must hold integers, got dtype kind {kind:?}"
        )));
    }
    arr.call_method1("astype", ("int64",))?
        .call_method0("tolist")?
        .extract()
}

/// A JSON-serialisable report as a Python dict (the same keys as the CLI's `--json`).
fn to_dict<'py>(py: Python<'py>, v: &impl serde::Serialize) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(v).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    py.import("json")?.call_method1("loads", (text,))
}

/// FAISS's answer to a search: (D, I).
type Answer<'py> = (Bound<'py, PyArray2<f32>>, Bound<'py, PyArray2<i64>>);

/// Scores as FAISS gives them (similarity best first; squared L2 smallest first) and ids,
/// `k` columns, padded with id -1 and score -inf (similarity) or +inf (L2).
fn faiss_shape<'py>(
    py: Python<'py>,
    hits: Vec<Vec<rewa::Hit>>,
    k: usize,
    metric: Metric,
) -> PyResult<Answer<'py>> {
    let nq = hits.len();
    let pad = if metric.is_similarity() {
        f32::NEG_INFINITY
    } else {
        f32::INFINITY
    };
    // (nq, k) arrays even when k is far beyond the index size, as FAISS returns them: an
    // absurd k must raise MemoryError, not abort the process.
    let cells = nq.checked_mul(k).filter(|&c| c <= isize::MAX as usize / 8);
    let alloc = |c: usize| {
        let (mut d, mut i) = (Vec::new(), Vec::new());
        d.try_reserve_exact(c).ok()?;
        i.try_reserve_exact(c).ok()?;
        d.resize(c, pad);
        i.resize(c, -1i64);
        Some((d, i))
    };
    let Some((mut d, mut ids)) = cells.and_then(alloc) else {
        return Err(PyMemoryError::new_err(format!(
            "{nq} queries x k = {k} results do not fit in memory; ask for fewer neighbours"
        )));
    };
    for (q, hs) in hits.iter().enumerate() {
        for (r, h) in hs.iter().take(k).enumerate() {
            d[q * k + r] = metric.score(h.distance);
            ids[q * k + r] = h.id as i64;
        }
    }
    Ok((array2(py, nq, k, d)?, array2(py, nq, k, ids)?))
}

/// A row-major buffer as a numpy array of shape (rows, cols).
fn array2<T: numpy::Element>(
    py: Python<'_>,
    rows: usize,
    cols: usize,
    v: Vec<T>,
) -> PyResult<Bound<'_, PyArray2<T>>> {
    let a = Array2::from_shape_vec((rows, cols), v)
        .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok(a.into_pyarray(py))
}

/// Fails unless `v` (named `what`) has the dimension of `base`, naming both.
fn same_dim(
    what: &str,
    v: VectorsRef<'_>,
    base_what: &str,
    base: VectorsRef<'_>,
) -> rewa::Result<()> {
    if v.dim() != base.dim() {
        return Err(rewa::Error::InvalidInput(format!(
            "{what} has dimension {}, but {base_what} has {}",
            v.dim(),
            base.dim()
        )));
    }
    Ok(())
}

/// A searchable set of vectors with a staged pipeline, saved as the directory the `rewa` CLI
/// reads and writes.
///
/// Build one with `Index.build(x, pipeline)` or `Index.open(path)`. Searches may run from
/// many Python threads at once (the GIL is released); `add` waits for running searches.
#[pyclass(module = "rewa", name = "Index", frozen)]
struct PyIndex {
    inner: RwLock<rewa::Index>,
    docs: std::sync::Mutex<docs::PyDocs>,
}

impl PyIndex {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, rewa::Index> {
        // A panic while holding the lock is caught and reported; the index it guards is
        // only replaced whole, so a poisoned lock still holds a consistent index.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, rewa::Index> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }
    fn docs(&self) -> std::sync::MutexGuard<'_, docs::PyDocs> {
        self.docs.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn new(index: rewa::Index, docs: docs::PyDocs) -> PyIndex {
        PyIndex {
            inner: RwLock::new(index),
            docs: std::sync::Mutex::new(docs),
        }
    }
}

/// A list of dicts (one per row), as JSON objects.
fn records(
    py: Python<'_>,
    fields: &Bound<'_, PyAny>,
) -> PyResult<Vec<serde_json::Map<String, serde_json::Value>>> {
    let text: String = py
        .import("json")?
        .call_method1("dumps", (fields,))
        .map_err(|e| {
            PyValueError::new_err(format!(
                "fields must be a list of dicts of JSON values: {e}"
            ))
        })?
        .extract()?;
    let v: Vec<serde_json::Value> = serde_json::from_str(&text)
        .map_err(|_| PyValueError::new_err("fields must be a list of dicts, one per row"))?;
    v.into_iter()
        .enumerate()
        .map(|(i, x)| match x {
            serde_json::Value::Object(m) => Ok(m),
            other => Err(PyValueError::new_err(format!(
                "fields[{i}] is not a dict: {other}"
            ))),
        })
        .collect()
}

/// A filter given as a dict or as JSON text.
fn filter_of(py: Python<'_>, f: &Bound<'_, PyAny>) -> PyResult<rewa_docs::Filter> {
    let text: String = match f.extract::<String>() {
        Ok(s) => s,
        Err(_) => py.import("json")?.call_method1("dumps", (f,))?.extract()?,
    };
    text.parse().map_err(docs::to_py)
}

/// JSON objects as Python dicts (None where absent).
fn dicts<'py>(py: Python<'py>, v: &impl serde::Serialize) -> PyResult<Bound<'py, PyAny>> {
    to_dict(py, v)
}

impl PyIndex {
    fn add_rows(
        &self,
        py: Python<'_>,
        x: Option<&Bound<'_, PyAny>>,
        texts: Option<Vec<String>>,
        ids: Option<Vec<String>>,
        model: Option<PathBuf>,
    ) -> PyResult<()> {
        match (x, texts, ids) {
            (Some(x), None, ids) => {
                if model.is_some() {
                    return Err(PyValueError::new_err("model is for texts, not vectors"));
                }
                let x = matrix(x, "x")?;
                let xv = rows(&x)?;
                detached(py, || {
                    let mut index = self.write();
                    match ids {
                        None => index.add(xv),
                        Some(ids) => {
                            let p = index.metric().prepare(xv)?;
                            index.check_new_doc_ids(&ids, p.len())?;
                            index.add_with_ids(&p, ids, &mut |_, _| {})
                        }
                    }
                })
            }
            (None, Some(texts), Some(ids)) => self.add_texts(py, texts, ids, model),
            (None, Some(_), None) => Err(PyValueError::new_err(
                "texts need their corpus ids: add(texts=[...], ids=[...])",
            )),
            (Some(_), Some(_), _) => {
                Err(PyValueError::new_err("give vectors x or texts, not both"))
            }
            (None, None, _) => Err(PyValueError::new_err(
                "give vectors x (an array (n, dim)), or texts with their ids",
            )),
        }
    }

    /// `add(texts=..., ids=...)`: embeds with the model the index records and adds with the
    /// corpus ids (checked before anything is embedded).
    #[cfg(feature = "embed")]
    fn add_texts(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        ids: Vec<String>,
        model: Option<PathBuf>,
    ) -> PyResult<()> {
        let (recorded, metric, dim) = {
            let index = self.read();
            index.check_new_doc_ids(&ids, texts.len()).map_err(to_py)?;
            (index.text_model().cloned(), index.metric(), index.dim())
        };
        let dir = match (&model, &recorded) {
            (Some(m), _) => m.clone(),
            (None, Some(r)) => PathBuf::from(&r.dir),
            (None, None) => {
                return Err(PyValueError::new_err(
                    "this index records no text model (it was built from vectors): pass model=DIR, or add vectors",
                ))
            }
        };
        let vectors = embed::embed_for_index(py, &dir, recorded.as_ref(), dim, &texts)?;
        detached(py, || {
            let p = metric.prepare_owned(vectors)?;
            self.write().add_with_ids(&p, ids, &mut |_, _| {})
        })
    }

    #[cfg(not(feature = "embed"))]
    fn add_texts(
        &self,
        _py: Python<'_>,
        _texts: Vec<String>,
        _ids: Vec<String>,
        _model: Option<PathBuf>,
    ) -> PyResult<()> {
        Err(PyNotImplementedError::new_err(format!(
            "adding texts embeds them: {EMBED_HINT}"
        )))
    }
}

#[pymethods]
impl PyIndex {
    /// Index.build(x, pipeline="hadamard512+sign:2000,hadamard256+int8:200,exact:10",
    ///             metric="cosine", train=None, seed=42) -> Index
    ///
    /// Fits every encoder the pipeline names on `train` (default: `x`), encodes `x` (float
    /// array of shape (n, d)), and stores float vectors when the pipeline has an `exact`
    /// stage. Ids are row numbers: 0 .. n-1. `metric` is "cosine" (inputs are normalised),
    /// "ip" or "l2". `fields`: one dict per row (strings, numbers, booleans, lists, nested
    /// dicts), stored with it: `search(..., fields=[..])` and `get` return them, `filter`
    /// selects by them, `mode="bm25"` searches their `title` and `text` (or every string).
    #[staticmethod]
    #[pyo3(signature = (x, pipeline="hadamard512+sign:2000,hadamard256+int8:200,exact:10", metric="cosine", train=None, seed=42, fields=None))]
    fn build(
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        pipeline: &str,
        metric: &str,
        train: Option<&Bound<'_, PyAny>>,
        seed: u64,
        fields: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyIndex> {
        let spec = rewa::IndexSpec {
            metric: parse(metric)?,
            pipeline: parse(pipeline)?,
            seed,
        };
        let x = matrix(x, "x")?;
        let train = train.map(|t| matrix(t, "train")).transpose()?;
        let (xv, tv) = (rows(&x)?, train.as_ref().map(rows).transpose()?);
        let fields = fields.map(|f| records(py, f)).transpose()?;
        if let Some(f) = &fields {
            if f.len() != xv.len() {
                return Err(PyValueError::new_err(format!(
                    "{} fields for {} rows of x (one dict per row)",
                    f.len(),
                    xv.len()
                )));
            }
        }
        let index = detached(py, || {
            let data = spec.metric.prepare(xv)?;
            let fitted = match tv {
                Some(t) => {
                    same_dim("train", t, "x", xv)?;
                    rewa::Index::fit_prepared(&spec, &spec.metric.prepare(t)?)
                }
                None => rewa::Index::fit_prepared(&spec, &data),
            };
            let mut index = fitted?;
            index.add_prepared(&data, &mut |_, _| {})?;
            Ok(index)
        })?;
        let mut d = docs::PyDocs::default();
        let n = index.next_id();
        detached_as(py, || d.added(0, n, fields))?;
        Ok(PyIndex::new(index, d))
    }

    /// Index.fit(train, pipeline=..., metric="cosine", seed=42) -> Index
    ///
    /// Fits every encoder the pipeline names on the rows of `train` and returns an index
    /// holding no rows: the fitted parameters alone, to save and hand to many writers that
    /// each `add` their own rows with the same encoders (a sharded build fits once).
    #[staticmethod]
    #[pyo3(signature = (train, pipeline="hadamard512+sign:2000,hadamard256+int8:200,exact:10", metric="cosine", seed=42))]
    fn fit(
        py: Python<'_>,
        train: &Bound<'_, PyAny>,
        pipeline: &str,
        metric: &str,
        seed: u64,
    ) -> PyResult<PyIndex> {
        let spec = rewa::IndexSpec {
            metric: parse(metric)?,
            pipeline: parse(pipeline)?,
            seed,
        };
        let train = matrix(train, "train")?;
        let tv = rows(&train)?;
        let index = detached(py, || rewa::Index::fit(&spec, tv))?;
        Ok(PyIndex::new(index, docs::PyDocs::default()))
    }

    /// Index.open(path) -> Index
    ///
    /// Opens an index directory saved by `Index.save` or the `rewa build` command,
    /// memory-mapping its files and checking every checksum once.
    #[staticmethod]
    fn open(py: Python<'_>, path: PathBuf) -> PyResult<PyIndex> {
        let index = detached(py, || rewa::Index::open(&path))?;
        let d = detached_as(py, || docs::PyDocs::open(&path, &index))?;
        Ok(PyIndex::new(index, d))
    }

    /// index.add(x=None, *, texts=None, ids=None, model=None) -> None
    ///
    /// Encodes and appends the rows of `x` (float array (n, dim)); their ids continue from
    /// the last id given out (`len(index)` while nothing was deleted). In memory only until
    /// `save`, which then writes only the new rows.
    ///
    /// For an index built from text (`rewa build --text`), give `texts` and their corpus
    /// `ids` (new to the index) instead: they are embedded with the model the index records
    /// (or `model`, a directory holding the same weights) and keep their ids, as
    /// `rewa add --text` does. This needs a wheel built with the `embed` feature. Vectors
    /// `x` with `ids` add rows named by those corpus ids.
    #[pyo3(signature = (x=None, *, texts=None, ids=None, model=None, fields=None))]
    fn add(
        &self,
        py: Python<'_>,
        x: Option<&Bound<'_, PyAny>>,
        texts: Option<Vec<String>>,
        ids: Option<Vec<String>>,
        model: Option<PathBuf>,
        fields: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let mut fields = fields.map(|f| records(py, f)).transpose()?;
        let n = x
            .map(|x| x.len())
            .transpose()?
            .or(texts.as_ref().map(Vec::len));
        if let (Some(f), Some(n)) = (&fields, n) {
            if f.len() != n {
                return Err(PyValueError::new_err(format!(
                    "{} fields for {n} rows (one dict per row)",
                    f.len()
                )));
            }
        }
        // texts without fields are stored as {"text": ..} in an index with documents
        if let (None, Some(t)) = (&fields, &texts) {
            if self.docs().any() {
                fields = Some(
                    t.iter()
                        .map(|x| {
                            let mut m = serde_json::Map::new();
                            m.insert("text".into(), serde_json::Value::String(x.clone()));
                            m
                        })
                        .collect(),
                );
            }
        }
        // the records checked before any row is added; the documents held across the add,
        // so that two threads' adds cannot swap their records
        if let Some(f) = &fields {
            rewa_docs::check_records(f).map_err(docs::to_py)?;
        }
        let mut guard = self.docs();
        let d: &mut docs::PyDocs = &mut guard;
        let from = self.read().next_id();
        self.add_rows(py, x, texts, ids, model)?;
        let added = self.read().next_id() - from;
        detached_as(py, || d.added(from as u32, added, fields))
    }

    /// index.get(ids, fields=None) -> list
    ///
    /// The stored fields of each id (a dict; all of them, or those named in `fields`), None
    /// for an id without a document (deleted, or never given out).
    #[pyo3(signature = (ids, fields=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        ids: Vec<i64>,
        fields: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (live, next) = {
            let i = self.read();
            let live: std::collections::HashSet<u32> = ids
                .iter()
                .filter(|&&r| (0..i.next_id() as i64).contains(&r))
                .map(|&r| r as u32)
                .filter(|&r| i.is_live(r))
                .collect();
            (live, i.next_id() as i64)
        };
        let rows: Vec<u32> = ids
            .iter()
            .map(|&i| {
                if (0..next).contains(&i) {
                    i as u32
                } else {
                    u32::MAX
                }
            })
            .collect();
        let got = detached_as(py, || self.docs().get(&rows, fields.as_deref()))?;
        let got: Vec<Option<serde_json::Map<String, serde_json::Value>>> = got
            .into_iter()
            .zip(&rows)
            .map(|(g, r)| if live.contains(r) { g } else { None })
            .collect();
        dicts(py, &got)
    }
    /// index.delete(*, ids=None, doc_ids=None) -> int
    ///
    /// Deletes rows by id (`ids`, as `remove_ids`) or, for an index built from text, by
    /// corpus id (`doc_ids`, a list of strings). Returns how many rows were newly deleted;
    /// an id never given out, or an unknown corpus id, raises ValueError and nothing is
    /// deleted.
    #[pyo3(signature = (*, ids=None, doc_ids=None))]
    fn delete(
        &self,
        py: Python<'_>,
        ids: Option<Vec<i64>>,
        doc_ids: Option<Vec<String>>,
    ) -> PyResult<usize> {
        match (ids, doc_ids) {
            (Some(ids), None) => self.remove_ids(py, ids),
            (None, Some(d)) => detached(py, || self.write().delete_doc_ids(&d)),
            _ => Err(PyValueError::new_err("give ids or doc_ids (one of them)")),
        }
    }

    /// index.search(q=None, k=10, pipeline=None, *, filter=None, fields=None, mode="dense",
    ///              texts=None, fusion="weighted:0.5") -> (D, I) or (D, I, F)
    ///
    /// Searches each row of `q` (float array (nq, dim)) and returns two arrays of shape
    /// (nq, k), best first, as FAISS does:
    ///
    /// - D (float32): the score: similarity (higher is better) for "cosine" and "ip",
    ///   squared L2 distance (lower is better) for "l2"; for mode "bm25" the BM25 score and
    ///   for "hybrid" the fused score (higher is better);
    /// - I (int64): the ids (row numbers in insertion order).
    ///
    /// Where fewer than k vectors are found (k > len(index), or fewer rows pass `filter`), I
    /// is -1 and D is -inf (similarity) or +inf (l2). `pipeline` overrides the index's
    /// default pipeline for this call (same encoders, other keeps, e.g.
    /// "hadamard512+sign:4000,exact:100" for k=100); its last stage must keep at least k.
    ///
    /// With stored fields: `filter` (a dict or JSON text, Qdrant's filter: {"must": [{"key":
    /// "year", "range": {"gte": 2020}}], "should": [..], "must_not": [..]}) keeps only the
    /// rows that pass it (the best k of them); `fields` (a list of names, or ["*"]) adds F,
    /// a list per query of one dict per hit; `mode` "bm25" searches `texts` (one per query)
    /// over the stored text, "hybrid" fuses the dense hits of `q` with the BM25 hits of
    /// `texts`: `fusion` "weighted:ALPHA" (ALPHA x dense + (1 - ALPHA) x BM25, each list's
    /// scores min-max normalised) or "rrf:K" (reciprocal rank, sum of 1 / (K + rank)).
    #[pyo3(signature = (q=None, k=10, pipeline=None, *, filter=None, fields=None, mode="dense", texts=None, fusion="weighted:0.5"))]
    #[allow(clippy::too_many_arguments)]
    fn search<'py>(
        &self,
        py: Python<'py>,
        q: Option<&Bound<'py, PyAny>>,
        k: usize,
        pipeline: Option<&str>,
        filter: Option<&Bound<'py, PyAny>>,
        fields: Option<Vec<String>>,
        mode: &str,
        texts: Option<Vec<String>>,
        fusion: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let fusion: rewa_docs::Fusion = fusion.parse().map_err(docs::to_py)?;
        let mode: rewa_docs::Mode = mode.parse().map_err(docs::to_py)?;
        let pipeline: Option<Pipeline> = pipeline.map(parse).transpose()?;
        let filter = filter.map(|f| filter_of(py, f)).transpose()?;
        let q = q.map(|q| matrix(q, "q")).transpose()?;
        let qv = q.as_ref().map(rows).transpose()?;
        let plain = mode == rewa_docs::Mode::Dense && filter.is_none() && fields.is_none();
        let (hits, metric) = if plain {
            let Some(qv) = qv else {
                return Err(PyValueError::new_err(
                    "give q: the query vectors (an array (nq, dim))",
                ));
            };
            let params = SearchParams {
                k,
                pipeline,
                filter: None,
            };
            detached(py, || {
                let index = self.read();
                Ok((index.search_batch(qv, &params)?, index.metric()))
            })?
        } else {
            detached_as(py, || {
                let d = self.docs();
                let index = self.read();
                let prepared = qv.map(|v| index.metric().prepare(v)).transpose()?;
                let hits = rewa_docs::search_stores(
                    &index,
                    &d.stores(),
                    &rewa_docs::Query {
                        k,
                        mode,
                        pipeline,
                        filter: filter.as_ref(),
                        vectors: prepared.as_ref(),
                        texts: texts.as_deref(),
                        fusion,
                    },
                )?;
                // BM25 and fused scores: higher is better, as a similarity's
                let metric = if mode == rewa_docs::Mode::Dense {
                    index.metric()
                } else {
                    Metric::Ip
                };
                Ok::<_, rewa_docs::Error>((hits, metric))
            })?
        };
        let shown = match &fields {
            Some(f) => {
                let only = (!f.iter().any(|x| x == "*")).then(|| f.clone());
                let d = self.docs();
                let out: Vec<Vec<Option<serde_json::Map<String, serde_json::Value>>>> = hits
                    .iter()
                    .map(|hs| {
                        let rows: Vec<u32> = hs.iter().map(|h| h.id).collect();
                        d.get(&rows, only.as_deref())
                    })
                    .collect::<Result<_, _>>()
                    .map_err(docs::to_py)?;
                Some(out)
            }
            None => None,
        };
        let (dd, ii) = faiss_shape(py, hits, k, metric)?;
        match shown {
            Some(f) => Ok((dd, ii, dicts(py, &f)?).into_pyobject(py)?.into_any()),
            None => Ok((dd, ii).into_pyobject(py)?.into_any()),
        }
    }

    /// index.tune(queries, target_recall=0.95, k=10, max_keep=None, max_seconds=300.0,
    ///            confidence=0.95, base=None) -> dict
    ///
    /// Measures the pipeline's keeps (and the lists a partitioned first stage probes) on
    /// `queries` (validation queries, not the ones you will report on) against exact search,
    /// and makes the fastest setting that reaches `target_recall` at k the default pipeline
    /// (in memory; `save` stores it). A setting reaches it when the one-sided lower
    /// `confidence` bound of its recall does (0: the mean recall itself). Exact search runs
    /// over `base` if given (every vector the index gave an id, in id order), else over the
    /// index's float vectors or flat codes; an index with neither needs `base`. Returns the
    /// report with the keys of `rewa tune --json`: pipeline, recall_at_k, recall_lower,
    /// confidence, qps, target_met, timed_out, seconds, curve.
    #[pyo3(signature = (queries, target_recall=0.95, k=10, max_keep=None, max_seconds=300.0, confidence=0.95, base=None))]
    #[allow(clippy::too_many_arguments)]
    fn tune<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyAny>,
        target_recall: f64,
        k: usize,
        max_keep: Option<usize>,
        max_seconds: f64,
        confidence: f64,
        base: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let q = matrix(queries, "queries")?;
        let qv = rows(&q)?;
        let b = base.map(|b| matrix(b, "base")).transpose()?;
        let bv = b.as_ref().map(rows).transpose()?;
        let opts = TuneOptions {
            k,
            target_recall,
            max_keep,
            max_seconds,
            confidence,
        };
        let report = detached(py, || {
            let report = {
                let index = self.read();
                let prepared = index.metric().prepare(qv)?;
                let base = bv.map(|b| index.metric().prepare(b)).transpose()?;
                let data = rewa::tune::TuneData {
                    queries: &prepared,
                    base: base.as_ref(),
                };
                rewa::tune::tune_on(&index, data, &opts, &mut |_| {})?
            };
            self.write().set_pipeline(report.chosen().clone())?;
            Ok(report)
        })?;
        to_dict(py, &report)
    }

    /// index.save(path, force=False) -> None
    ///
    /// Saves into the directory `path` (created if missing) crash-safely. Saving back into
    /// the directory this index was opened from (or last saved to) writes only what changed,
    /// and only if nobody else wrote it since: if `rewa add`, a server or another `Index`
    /// saved there in between, this raises RuntimeError and writes nothing (saving would
    /// drop their rows and deletions); open it again and re-apply the changes. Any other
    /// directory holding an index, or other files, is refused unless `force=True`, which
    /// replaces the index there (files an index did not write are never deleted). A second
    /// writer of the same directory at the same time is refused (OSError).
    #[pyo3(signature = (path, force=false))]
    fn save(&self, py: Python<'_>, path: PathBuf, force: bool) -> PyResult<()> {
        detached_as(py, || {
            let mut d = self.docs();
            let lock = rewa::index::WriteLock::acquire(&path, std::time::Duration::ZERO)?;
            let index = self.read();
            let same = index.is_from(&path);
            if !force && !same {
                rewa::index::check_build_target(&path, false, "force=True")?;
            }
            // documents first, then the index (see rewa_docs)
            d.save(&index, &path, same && !force, || {
                if force {
                    index.replace_locked(&lock)
                } else {
                    index.save_locked(&lock)
                }
            })
        })
    }

    /// index.remove_ids(ids) -> int
    ///
    /// Deletes the rows with these ids (a list or 1-D integer array), as FAISS's `remove_ids`
    /// but without renumbering: searches never return them again and every other id stays
    /// what it was. Returns how many were deleted (ids already deleted count 0); an id never
    /// given out raises ValueError and nothing is deleted. The rows stay stored until
    /// `compact()`; `save` then writes only the list of deleted ids.
    fn remove_ids(&self, py: Python<'_>, ids: Vec<i64>) -> PyResult<usize> {
        let ids: Vec<u32> = ids
            .into_iter()
            .map(|i| {
                u32::try_from(i).map_err(|_| {
                    PyValueError::new_err(format!("id {i} is not a valid id (0 to 2^32-1)"))
                })
            })
            .collect::<PyResult<_>>()?;
        detached(py, || self.write().delete(&ids))
    }

    /// index.compact() -> None
    ///
    /// Rewrites the stored rows into one segment without the deleted ones (ids unchanged).
    fn compact(&self, py: Python<'_>) -> PyResult<()> {
        let mut guard = self.docs();
        let d: &mut docs::PyDocs = &mut guard;
        detached(py, || {
            let mut index = self.write();
            // the documents of the rows compaction removes go at the next save
            d.dropped(index.deleted());
            index.compact();
            Ok::<(), rewa::Error>(())
        })
    }

    /// index.info() -> dict: the keys of `rewa info --json` (without the file list of a
    /// saved index): count, dim, metric, pipeline, bytes_per_vector, code_sets, has_vectors,
    /// segments, deleted, next_id.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let s = self.read().summary(None).map_err(to_py)?;
        to_dict(py, &s)
    }

    fn __len__(&self) -> usize {
        self.read().len()
    }

    /// index.live_ids() -> int64 array
    ///
    /// The ids of the rows held and not deleted, ascending (`len(index)` of them).
    fn live_ids<'py>(&self, py: Python<'py>) -> Bound<'py, numpy::PyArray1<i64>> {
        let ids: Vec<i64> = self.read().live_ids().map(i64::from).collect();
        ids.into_pyarray(py)
    }

    /// The vector dimension.
    #[getter]
    fn dim(&self) -> usize {
        self.read().dim()
    }

    /// "cosine", "ip" or "l2".
    #[getter]
    fn metric(&self) -> String {
        self.read().metric().to_string()
    }

    /// For an index built from text (`rewa build --text`): the corpus id of each row, so
    /// `index.doc_ids[I[q, r]]` names a hit; else None.
    #[getter]
    fn doc_ids(&self) -> Option<Vec<String>> {
        self.read().doc_ids().map(<[String]>::to_vec)
    }

    /// The default search pipeline, as a string; assign a string to change it (it may only
    /// use the encoders the index holds).
    #[getter]
    fn pipeline(&self) -> String {
        self.read().pipeline().to_string()
    }

    #[setter(pipeline)]
    fn set_pipeline(&self, p: &str) -> PyResult<()> {
        let p: Pipeline = parse(p)?;
        self.write().set_pipeline(p).map_err(to_py)
    }

    /// Bytes stored per vector (codes and float vectors).
    #[getter]
    fn bytes_per_vector(&self) -> usize {
        self.read().bytes_per_vector()
    }

    fn __repr__(&self) -> String {
        let i = self.read();
        format!(
            "rewa.Index(len={}, dim={}, metric='{}', pipeline='{}')",
            i.len(),
            i.dim(),
            i.metric(),
            i.pipeline()
        )
    }
}

/// A fitted encoder: vectors in, codes out.
#[pyclass(module = "rewa", name = "Encoder", frozen)]
struct PyEncoder {
    inner: rewa::Encoder,
    metric: Metric,
}

#[pymethods]
impl PyEncoder {
    /// Encoder.fit(spec, x, metric="cosine", seed=42) -> Encoder
    ///
    /// Fits the encoder `spec` (e.g. "hadamard256+sign", "opq32+pq32", "pca64+int8") on the
    /// rows of `x` (float array (n, d); normalised first for "cosine").
    #[staticmethod]
    #[pyo3(signature = (spec, x, metric="cosine", seed=42))]
    fn fit(
        py: Python<'_>,
        spec: &str,
        x: &Bound<'_, PyAny>,
        metric: &str,
        seed: u64,
    ) -> PyResult<PyEncoder> {
        let spec: EncoderSpec = parse(spec)?;
        let metric: Metric = parse(metric)?;
        let x = matrix(x, "x")?;
        let xv = rows(&x)?;
        let inner = detached(py, || {
            let p = metric.prepare(xv)?;
            rewa::Encoder::fit(&spec, p.view(), metric, seed)
        })?;
        Ok(PyEncoder { inner, metric })
    }

    /// encoder.encode(x) -> uint8 array of shape (n, code_len)
    ///
    /// The codes as the index stores them (sign bits packed little-endian into u64 words;
    /// for a `flat` quantizer, float32 bytes: `codes.view(numpy.float32)` reads them).
    fn encode<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<u8>>> {
        let x = matrix(x, "x")?;
        let xv = rows(&x)?;
        let n = xv.len();
        let codes = detached(py, || {
            let p = self.metric.prepare(xv)?;
            self.inner.encode_batch(p.view())
        })?;
        array2(py, n, self.inner.code_len(), codes)
    }

    /// Bytes per code.
    #[getter]
    fn code_len(&self) -> usize {
        self.inner.code_len()
    }

    /// The input dimension.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    /// The spec string.
    #[getter]
    fn spec(&self) -> String {
        self.inner.spec().to_string()
    }

    fn __repr__(&self) -> String {
        format!(
            "rewa.Encoder('{}', dim={}, code_len={})",
            self.inner.spec(),
            self.inner.dim(),
            self.inner.code_len()
        )
    }
}

/// evaluate(base, queries, spec, k=10, metric="cosine", train=None, seed=42,
///          base_labels=None, query_labels=None) -> dict
///
/// Fits `spec` (one encoder, e.g. "hadamard256+sign", scanned over everything, or a
/// pipeline, e.g. "hadamard512+sign:1000,exact:10") on `train` (default: `base`; never the
/// queries), searches the held-out `queries` and measures recall@k against exact search, QPS
/// and bytes per vector. Returns the keys of `rewa eval --json`.
#[pyfunction]
#[pyo3(signature = (base, queries, spec, k=10, metric="cosine", train=None, seed=42, base_labels=None, query_labels=None))]
#[allow(clippy::too_many_arguments)]
fn evaluate<'py>(
    py: Python<'py>,
    base: &Bound<'py, PyAny>,
    queries: &Bound<'py, PyAny>,
    spec: &str,
    k: usize,
    metric: &str,
    train: Option<&Bound<'py, PyAny>>,
    seed: u64,
    base_labels: Option<&Bound<'py, PyAny>>,
    query_labels: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let metric: Metric = parse(metric)?;
    let pipeline = match spec.parse::<EncoderSpec>() {
        Ok(e) => Pipeline::single(e, k),
        Err(_) => parse::<Pipeline>(spec)?,
    };
    let labels = match (base_labels, query_labels) {
        (Some(b), Some(q)) => Some((labels_of(b, "base_labels")?, labels_of(q, "query_labels")?)),
        (None, None) => None,
        _ => {
            return Err(PyValueError::new_err(
                "give both base_labels and query_labels, or neither",
            ))
        }
    };
    let (b, q) = (matrix(base, "base")?, matrix(queries, "queries")?);
    let t = train.map(|t| matrix(t, "train")).transpose()?;
    let (bv, qv, tv) = (rows(&b)?, rows(&q)?, t.as_ref().map(rows).transpose()?);
    let report = detached(py, || {
        same_dim("queries", qv, "base", bv)?;
        if let Some(t) = tv {
            same_dim("train", t, "base", bv)?;
        }
        let base = metric.prepare(bv)?;
        let queries = metric.prepare(qv)?;
        let train = tv.map(|t| metric.prepare(t)).transpose()?;
        let inp = EvalInput {
            base: &base,
            queries: &queries,
            train: train.as_ref(),
            k,
            seed,
            labels: labels.as_ref().map(|(b, q)| Labels {
                base: b,
                queries: q,
            }),
            qrels: None,
            queries_are_base: false,
            truth: None,
        };
        eval_pipeline(&pipeline, spec, &inp)
    })?;
    to_dict(py, &report)
}

/// How to get a wheel with text embedding.
#[cfg(not(feature = "embed"))]
const EMBED_HINT: &str = "this rewa was built without the `embed` feature; reinstall it with it: MATURIN_PEP517_ARGS=\"--features embed\" pip install ./crates/rewa-py (a longer build: candle and tokenizers)";

/// The module's attribute hook (PEP 562): `rewa.Embedder` in a wheel built without `embed`
/// says how to get it instead of a bare AttributeError.
#[cfg(not(feature = "embed"))]
#[pyfunction]
fn __getattr__(name: &str) -> PyResult<Py<PyAny>> {
    use pyo3::exceptions::PyAttributeError;
    if name == "Embedder" {
        return Err(PyAttributeError::new_err(format!(
            "module 'rewa' has no attribute 'Embedder': {EMBED_HINT}"
        )));
    }
    Err(PyAttributeError::new_err(format!(
        "module 'rewa' has no attribute '{name}'"
    )))
}

/// Panics inside the library's guard: the test that a panic reaches Python as RuntimeError,
/// never as pyo3's PanicException.
#[pyfunction]
fn _panic_for_test(py: Python<'_>) -> PyResult<()> {
    detached(py, || -> rewa::Result<()> {
        panic!("deliberate test panic")
    })
}

/// Compress dense embeddings into small codes and search them in stages.
///
/// `Index.build(x, pipeline)` / `Index.open(path)`, then `index.search(q, k)` returns FAISS's
/// (D, I); `evaluate(...)` measures an encoder or pipeline on held-out queries;
/// `Encoder.fit(spec, x).encode(x)` gives the codes. Spec strings are the CLI's (see
/// `rewa --help`).
#[pymodule(name = "_rewa")]
fn rewa_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyIndex>()?;
    m.add_class::<PyEncoder>()?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_for_test, m)?)?;
    #[cfg(feature = "embed")]
    m.add_class::<embed::PyEmbedder>()?;
    #[cfg(not(feature = "embed"))]
    m.add_function(wrap_pyfunction!(__getattr__, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "SIMD",
        if rewa::simd::avx2() {
            "avx2"
        } else {
            "baseline"
        },
    )?;
    Ok(())
}
