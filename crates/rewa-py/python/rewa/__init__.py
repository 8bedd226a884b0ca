"""Compress dense embeddings into small codes and search them in stages.

Arrays are numpy: inputs are float arrays of shape (n, dim) (float32 C-contiguous arrays are
read without a copy; others are converted); searches return FAISS's (D, I). Bad input (wrong
dimension, NaN/inf, 1-D or empty arrays, malformed specs) raises ValueError.

`rewa.ray` (the `ray` extra) runs the same work on a Ray cluster; importing `rewa` alone never
imports Ray.
"""

from . import _rewa
from ._rewa import *  # noqa: F401,F403  (Index, Encoder, evaluate, Embedder)
from ._rewa import SIMD, __version__  # noqa: F401


def __getattr__(name):
    # the compiled module's own hook: `rewa.Embedder` in a wheel built without `embed` says
    # how to get it; private helpers (`_panic_for_test`) are reached the same way
    return getattr(_rewa, name)
