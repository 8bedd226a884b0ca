"""The sharded index's directory and the rules every part shares (no Ray here).

A sharded index is a directory holding:

- ``rewa-shards.json``, the manifest: the pipeline, metric, dimension, the fitted parameters'
  hash, the id space and one entry per shard naming its directory;
- ``fitted/``, an index with the fitted encoders and no rows (``rewa info`` reads it);
- one ordinary rewa index per shard (``shard-000.<run>``, ...), whose rows are named by the
  user's integer ids (the index's corpus ids, so ``rewa search`` on a shard prints them).

A row with id ``i`` lives in shard ``i mod shards``: the build, adds and deletes all use
:func:`shard_of`. The manifest is written last (atomically), so a directory either has no
manifest or names shards that were completely written.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

MANIFEST = "rewa-shards.json"
FORMAT = "rewa-shards"
VERSION = 1
#: the largest id a row may have (ids are stored as int64)
MAX_ID = 2**63 - 1


def shard_of(ids: np.ndarray, shards: int) -> np.ndarray:
    """The shard that owns each id: ``id mod shards``."""
    return np.asarray(ids, dtype=np.int64) % shards


def check_ids(ids: Any, what: str = "ids") -> np.ndarray:
    """The ids as int64, refusing anything that is not a non-negative integer."""
    a = np.asarray(ids)
    if a.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence of integers, got shape {a.shape}")
    if a.size == 0:
        return a.astype(np.int64)
    if a.dtype.kind == "b" or a.dtype.kind not in "iu":
        # lists of Python ints arrive as int64; anything else (floats, strings) is refused
        raise ValueError(f"{what} must be integers (the rows' ids), got {a.dtype} values")
    if a.dtype.kind == "u" and a.max() > MAX_ID:
        raise ValueError(f"{what} must be below 2**63")
    a = a.astype(np.int64)
    if a.min() < 0:
        raise ValueError(f"{what} must be non-negative, got {int(a.min())}")
    return a


def params_hash(fitted_dir: str) -> str:
    """SHA-256 of the fitted parameters' files (``params-*.safetensors``, in name order)."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(fitted_dir)):
        if name.startswith("params-"):
            h.update(name.encode())
            with open(os.path.join(fitted_dir, name), "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: str, value: Dict[str, Any]) -> None:
    """Writes `value` as JSON to `path` crash-safely: a temporary file, fsync, rename,
    fsync of the directory."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(root: str) -> Dict[str, Any]:
    """The manifest of the sharded index at `root`, checked."""
    path = os.path.join(root, MANIFEST)
    try:
        with open(path) as f:
            m = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{root} is not a sharded rewa index (no {MANIFEST}; rewa.ray.build writes one)"
        ) from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if m.get("format") != FORMAT or m.get("version") != VERSION:
        raise ValueError(
            f"{path}: format {m.get('format')!r} version {m.get('version')!r}, "
            f"expected {FORMAT!r} version {VERSION}"
        )
    for s in m["shards"]:
        d = os.path.join(root, s["dir"])
        if not os.path.isdir(d):
            raise FileNotFoundError(f"{path} names shard {s['name']} at {d}, which is missing")
    return m


def similarity(metric: str) -> bool:
    """Whether a higher score is better (cosine, ip) rather than a lower one (l2)."""
    return metric != "l2"


def merge(
    parts: Sequence[Tuple[np.ndarray, np.ndarray]], k: int, metric: str
) -> Tuple[np.ndarray, np.ndarray]:
    """The top `k` of each query over every shard's hits: best score first, ties by id,
    missing hits (id -1) last, as one index's search orders them. `parts`: each shard's
    (D, I) of shape (nq, k_s) with global ids."""
    D = np.concatenate([np.asarray(p[0], dtype=np.float32) for p in parts], axis=1)
    ids = np.concatenate([np.asarray(p[1], dtype=np.int64) for p in parts], axis=1)
    missing = ids < 0
    primary = -D.astype(np.float64) if similarity(metric) else D.astype(np.float64)
    primary = np.where(missing, np.inf, primary)
    tie = np.where(missing, np.iinfo(np.int64).max, ids)
    order = np.lexsort((tie, primary), axis=-1)[:, :k]
    D = np.take_along_axis(D, order, axis=1)
    ids = np.take_along_axis(ids, order, axis=1)
    if D.shape[1] < k:  # fewer hits in all shards together than k
        pad = k - D.shape[1]
        fill = -np.inf if similarity(metric) else np.inf
        D = np.pad(D, ((0, 0), (0, pad)), constant_values=fill)
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    return D, ids


def global_ids(doc_ids: List[str] | None) -> np.ndarray:
    """A shard's rows' global ids (its corpus ids, which are the user's integers)."""
    if doc_ids is None:
        return np.zeros(0, dtype=np.int64)
    return np.array([int(s) for s in doc_ids], dtype=np.int64)


def shard_pipeline(pipeline: str, shards: int, k: int) -> str:
    """The pipeline each of `shards` shards runs so that together they do one index's work:
    every stage but the last keeps its share, ``ceil(keep / shards)`` (at least `k`, at most
    `keep`); the last stage, the one that returns hits, keeps its own. The merged hits then
    come from as many candidates as one index scores, and recall stays that index's (the
    candidates of a stage are the best of each shard rather than the best overall: a
    shard holding more of the overall best loses a few). A pipeline with quoted parts
    (paths) is left whole."""
    if shards == 1 or '"' in pipeline or "'" in pipeline:
        return pipeline
    stages = [p.strip() for p in pipeline.split(",")]
    out = []
    for i, st in enumerate(stages):
        head, sep, keep = st.rpartition(":")
        if i < len(stages) - 1 and sep and keep.strip().isdigit():
            n = int(keep)
            st = f"{head}:{min(n, max(-(-n // shards), k))}"
        out.append(st)
    return ",".join(out)


def to_global(I: np.ndarray, gids: np.ndarray) -> np.ndarray:
    """A shard's hits' row numbers `I` as global ids (-1 stays -1)."""
    I = np.asarray(I, dtype=np.int64)
    if gids.size == 0:
        return np.full(I.shape, -1, dtype=np.int64)
    return np.where(I >= 0, gids[np.clip(I, 0, gids.size - 1)], -1)


class LocalShards:
    """A sharded index opened in this process (no Ray): every shard searched in turn and
    the hits merged as the Serve application merges them. For checks and small jobs."""

    def __init__(self, root: str):
        import rewa

        self.root = os.path.abspath(os.fspath(root))
        self.manifest = read_manifest(self.root)
        self.metric = self.manifest["metric"]
        self.shards = [rewa.Index.open(os.path.join(self.root, s["dir"])) for s in self.manifest["shards"]]
        self.gids = [global_ids(s.doc_ids) for s in self.shards]

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards)

    def search(self, q: Any, k: int = 10, pipeline: str | None = None, split_keeps: bool = True):
        """(D, I) as ``rewa.Index.search`` gives them, I holding the global ids. Each shard
        runs :func:`shard_pipeline` of the pipeline unless `split_keeps` is False (then
        every shard keeps what one index would: more candidates, more work)."""
        p = pipeline or self.manifest["pipeline"]
        if split_keeps:
            p = shard_pipeline(p, len(self.shards), k)
        parts = []
        for index, gids in zip(self.shards, self.gids):
            D, I = index.search(q, k, p)
            parts.append((D, to_global(I, gids)))
        return merge(parts, k, self.metric)
