"""Compress dense embeddings into small codes and search them in stages.

Arrays are numpy: inputs are float arrays of shape (n, dim) (float32 C-contiguous arrays are
read without a copy; others are converted); searches return FAISS's (D, I).
Bad input (wrong dimension, NaN/inf, 1-D or empty arrays, malformed specs) raises ValueError.
"""

import os
from typing import Any, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str
#: The kernels chosen at run time on this CPU: "avx2" or "baseline".
SIMD: str

_Array = npt.ArrayLike
_Path = Union[str, "os.PathLike[str]"]

class Index:
    """A searchable set of vectors with a staged pipeline, saved as the directory the `rewa`
    CLI reads and writes. Searches may run from many threads at once (the GIL is released)."""

    @staticmethod
    def build(
        x: _Array,
        pipeline: str = "hadamard512+sign:2000,hadamard256+int8:200,exact:10",
        metric: str = "cosine",
        train: Optional[_Array] = None,
        seed: int = 42,
        fields: Optional[list[dict[str, Any]]] = None,
    ) -> "Index":
        """Fit every encoder the pipeline names on `train` (default `x`) and add `x`; ids are
        row numbers. metric: "cosine" (normalises), "ip" or "l2"."""
    @staticmethod
    def fit(
        train: _Array,
        pipeline: str = "hadamard512+sign:2000,hadamard256+int8:200,exact:10",
        metric: str = "cosine",
        seed: int = 42,
    ) -> "Index":
        """Fit every encoder the pipeline names on `train` and return an index holding no
        rows: the fitted parameters, to save and give to writers that each `add` their rows
        with the same encoders."""
    @staticmethod
    def open(path: _Path) -> "Index":
        """Open an index directory saved by `save` or `rewa build`."""
    def add(
        self,
        x: Optional[_Array] = None,
        *,
        texts: Optional[list[str]] = None,
        ids: Optional[list[str]] = None,
        model: Optional[_Path] = None,
        fields: Optional[list[dict[str, Any]]] = None,
    ) -> None:
        """Append rows; their ids continue from the last id given out. In memory until `save`.
        `fields`: one dict per row, stored with it (filters, get, BM25).
        For an index built from text: `texts` with their corpus `ids`, embedded with the model
        the index records (needs a wheel built with the `embed` feature)."""
    def remove_ids(self, ids: Any) -> int:
        """Delete rows by id (never returned again; other ids unchanged); returns how many."""
    def delete(
        self, *, ids: Optional[Any] = None, doc_ids: Optional[list[str]] = None
    ) -> int:
        """Delete rows by id, or by corpus id for an index built from text; returns how many."""
    def compact(self) -> None:
        """Rewrite the stored rows without the deleted ones (ids unchanged)."""
    def search(
        self,
        q: Optional[_Array] = None,
        k: int = 10,
        pipeline: Optional[str] = None,
        *,
        filter: Optional[Union[dict[str, Any], str]] = None,
        fields: Optional[list[str]] = None,
        mode: str = "dense",
        texts: Optional[list[str]] = None,
        fusion: str = "weighted:0.5",
    ) -> Any:
        """(D, I), each (nq, k), best first. D: similarity (cosine, ip; higher is better) or
        squared L2 distance (l2; lower is better); BM25 or fused score for mode "bm25" /
        "hybrid". Missing results: I = -1, D = -inf (similarity) or +inf (l2). `pipeline`
        overrides the default for this call. `filter` (Qdrant's JSON filter) keeps only the
        rows that pass it; `fields` adds F (per query, one dict per hit): (D, I, F).
        mode "bm25" searches `texts`; "hybrid" fuses the dense hits of q and BM25's of texts
        by `fusion`: "weighted:ALPHA" (min-max normalised scores) or "rrf:K"."""
    def get(self, ids: list[int], fields: Optional[list[str]] = None) -> list[Optional[dict[str, Any]]]:
        """The stored fields of each id (None: deleted, never given out, or no document)."""
    def tune(
        self,
        queries: _Array,
        target_recall: float = 0.95,
        k: int = 10,
        max_keep: Optional[int] = None,
        max_seconds: float = 300.0,
        confidence: float = 0.95,
        base: Optional[_Array] = None,
    ) -> dict[str, Any]:
        """Choose the fastest keeps (and nprobe) that reach target_recall@k on validation
        queries and make them the default pipeline. Ground truth: `base` (the vectors the
        index was built from, in id order), else its float vectors or flat codes. Keys of
        `rewa tune --json`."""
    def save(self, path: _Path, force: bool = False) -> None:
        """Save crash-safely into a directory. Back into the one it was opened from: only if
        nobody else saved there since (else RuntimeError; open it again). Any other index or
        folder of other files there is refused unless force=True, which replaces it."""
    def info(self) -> dict[str, Any]:
        """Keys of `rewa info --json`: count, dim, metric, pipeline, bytes_per_vector,
        code_sets, has_vectors."""
    def live_ids(self) -> npt.NDArray[np.int64]:
        """The ids of the rows held and not deleted, ascending."""
    def __len__(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def metric(self) -> str: ...
    @property
    def pipeline(self) -> str: ...
    @pipeline.setter
    def pipeline(self, value: str) -> None: ...
    @property
    def bytes_per_vector(self) -> int: ...
    @property
    def doc_ids(self) -> Optional[list]:
        """Corpus ids of the rows of an index built from text (`rewa build --text`), else None."""

class Encoder:
    """A fitted encoder: vectors in, codes out."""

    @staticmethod
    def fit(spec: str, x: _Array, metric: str = "cosine", seed: int = 42) -> "Encoder":
        """Fit e.g. "hadamard256+sign", "opq32+pq32" or "pca64+int8" on the rows of x."""
    def encode(self, x: _Array) -> npt.NDArray[np.uint8]:
        """Codes of shape (n, code_len)."""
    @property
    def code_len(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def spec(self) -> str: ...

def evaluate(
    base: _Array,
    queries: _Array,
    spec: str,
    k: int = 10,
    metric: str = "cosine",
    train: Optional[_Array] = None,
    seed: int = 42,
    base_labels: Optional[_Array] = None,
    query_labels: Optional[_Array] = None,
) -> dict[str, Any]:
    """Fit an encoder or pipeline on train (default base; never the queries), search the
    held-out queries, and measure recall@k against exact search, QPS and bytes per vector.
    Keys of `rewa eval --json`."""

class Embedder:
    """A sentence-transformers model directory (BERT or MPNet) run in Rust: `embed(texts)`
    gives what `SentenceTransformer(path).encode(texts)` gives. Present when the package was
    built with the `embed` feature (`hasattr(rewa, "Embedder")`)."""

    def __init__(
        self, path: Union[str, "os.PathLike[str]"], batch_size: int = 32, max_seq_len: Optional[int] = None
    ) -> None: ...
    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """float32 (len(texts), dim), one row per text in order; long texts are cut to
        max_seq_len word pieces; rows L2-normalised when the model has a Normalize module."""
    @property
    def dim(self) -> int: ...
    @property
    def max_seq_len(self) -> int: ...
