"""rewa on a Ray cluster: Ray Data embeds a corpus and builds a sharded index, Ray Serve
serves it (`rewa.ray.serve`).

Ray does the distributing (scheduling, retries, placement, HTTP); rewa's Rust code does the
work inside Ray's workers, with the GIL released:

- :func:`embed`: a Ray Dataset of texts -> the same Dataset with a float32 vector column, by
  ``map_batches`` over an actor pool of ``rewa.Embedder`` (each actor loads the model once);
- :func:`build`: a Dataset of ids and vectors (or texts) -> a directory of shard indexes and
  a manifest: the encoders fitted once on a sample (one task), every shard written in
  parallel with those parameters;
- :func:`connect`: a client of a running ``rewa.ray.serve`` application, with
  ``search(q, k) -> (D, I)`` as ``rewa.Index`` has.

Every node must read the same paths (the model directory, the output directory): a shared
file system. Needs the ``ray`` extra: ``pip install "./crates/rewa-py[ray]"``.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from typing import Any, Dict, Optional

import numpy as np

try:
    import ray
    import ray.data
except ImportError as e:  # pragma: no cover - the extra's own message
    raise ImportError(
        'rewa.ray needs Ray: pip install "rewa[ray]" (from a checkout: '
        'pip install "./crates/rewa-py[ray]")'
    ) from e

import rewa

from ._shards import (
    FORMAT,
    MANIFEST,
    VERSION,
    LocalShards,
    check_ids,
    merge,
    params_hash,
    read_manifest,
    shard_of,
    write_json_atomic,
)

__all__ = ["embed", "build", "connect", "open_local", "ShardedClient", "merge", "shard_of"]

_SHARD_KEY = "__rewa_shard"


def _threads_env(num_cpus: float) -> Dict[str, Any]:
    # rewa's kernels use a rayon pool sized to the machine unless told: hold each worker to
    # the CPUs Ray gave it, as Ray holds OpenMP (OMP_NUM_THREADS)
    return {"env_vars": {"RAYON_NUM_THREADS": str(max(1, int(num_cpus)))}}


def _embedder_class():
    try:
        return rewa.Embedder
    except AttributeError as e:
        raise RuntimeError(str(e)) from None


class _Embed:
    """One actor of the embedding pool: loads the model once, embeds batch after batch."""

    def __init__(self, model_dir: str, column: str, output_column: str, precision: str, model_batch_size: int):
        self.embedder = _embedder_class()(model_dir, batch_size=model_batch_size, precision=precision)
        self.column = column
        self.output_column = output_column

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        if self.column not in batch:
            raise ValueError(f"no column {self.column!r} to embed (columns: {sorted(batch)})")
        texts = [str(t) for t in batch[self.column]]
        batch[self.output_column] = self.embedder.embed(texts)
        return batch


def embed(
    ds: "ray.data.Dataset",
    model_dir: "str | os.PathLike[str]",
    column: str = "text",
    batch_size: int = 64,
    *,
    output_column: str = "vector",
    precision: str = "f32",
    concurrency: Optional[int] = None,
    num_cpus: float = 1,
    model_batch_size: int = 32,
) -> "ray.data.Dataset":
    """`ds` with a float32 column `output_column` (one vector per row) holding the embedding
    of `column`, the vectors ``rewa embed`` gives for the same texts.

    Runs ``ds.map_batches`` over a pool of `concurrency` actors (default: one per `num_cpus`
    CPUs in the cluster), each holding one ``rewa.Embedder(model_dir, precision=...)``;
    `batch_size` rows per call. The texts are read (materialised) first; the embedding is
    lazy, as Ray Data is: it runs when the dataset is consumed. `model_dir` must be readable
    at the same path on every node.
    """
    model_dir = os.path.abspath(os.fspath(model_dir))
    _embedder_class()  # a wheel without the embed feature fails here, not in every actor
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if concurrency is None:
        cpus = ray.cluster_resources().get("CPU", 1) if ray.is_initialized() else os.cpu_count() or 1
        concurrency = max(1, int(cpus // num_cpus))
    # the texts read first, in blocks of a few batches: a corpus read from one file is one
    # block, which a single actor would embed alone, and a pool holding every CPU would
    # starve the tasks still reading (a deadlock on a small cluster)
    ds = ds.repartition(target_num_rows_per_block=4 * batch_size).materialize()
    return ds.map_batches(
        _Embed,
        fn_constructor_kwargs={
            "model_dir": model_dir,
            "column": column,
            "output_column": output_column,
            "precision": precision,
            "model_batch_size": model_batch_size,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus,
        runtime_env=_threads_env(num_cpus),
    )


def _assign(batch: Dict[str, np.ndarray], shards: int, id_column: str, vector_column: str) -> Dict[str, np.ndarray]:
    for c in (id_column, vector_column):
        if c not in batch:
            raise ValueError(f"no column {c!r} (columns: {sorted(batch)})")
    ids = check_ids(batch[id_column], f"column {id_column!r}")
    return {
        id_column: ids,
        vector_column: _matrix(batch[vector_column], vector_column),
        _SHARD_KEY: shard_of(ids, shards),
    }


def _matrix(v: Any, column: str) -> np.ndarray:
    """A batch's vector column as float32 (n, dim)."""
    if isinstance(v, np.ndarray) and v.dtype != object:
        a = v
    else:  # ragged or object columns: rows one by one
        a = np.stack([np.asarray(r, dtype=np.float32) for r in v])
    if a.ndim != 2:
        raise ValueError(f"column {column!r} must hold one vector per row, got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


@ray.remote(num_cpus=1)
def _fit(sample: np.ndarray, pipeline: str, metric: str, seed: int, path: str) -> str:
    """The one fitting task: fits every encoder of `pipeline` on `sample`, saves the fitted
    index (no rows) at `path` and returns its parameters' hash."""
    index = rewa.Index.fit(sample, pipeline, metric, seed)
    index.save(path, force=True)
    return params_hash(path)


@ray.remote
def _split(block: Any, shards: int, id_column: str, vector_column: str):
    """One block's rows, one part per shard (a dict of its ids and vectors)."""
    from ray.data.block import BlockAccessor

    b = BlockAccessor.for_block(block).to_batch_format("numpy")
    key = np.asarray(b[_SHARD_KEY])
    ids, x = np.asarray(b[id_column]), _matrix(b[vector_column], vector_column)
    parts = []
    for s in range(shards):
        m = key == s
        parts.append({"id": ids[m], "vector": x[m]})
    return tuple(parts) if shards > 1 else parts[0]


#: rows per add while a shard is written
_CHUNK = 131_072


@ray.remote(max_retries=3)
def _write_shard(
    s: int, part_refs: list, fitted: str, staging: str, crash_once: Optional[str] = None
) -> Dict[str, Any]:
    """One shard: its parts (zero-copy views of the object store) added to a copy of the
    fitted index in ascending id order, a chunk at a time, and saved to a directory of this
    attempt's own, so a retried task never meets a half-written one (the driver names the
    finished ones in the manifest). Ray re-runs it if its worker dies."""
    parts = [p for p in ray.get(list(part_refs)) if len(p["id"])]
    index = rewa.Index.open(fitted)
    n = sum(len(p["id"]) for p in parts)
    ids = np.concatenate([p["id"] for p in parts]) if parts else np.zeros(0, np.int64)
    order = np.argsort(ids, kind="stable")
    same = np.diff(ids[order]) == 0
    if same.any():
        raise ValueError(f"id {int(ids[order][1:][same][0])} names two rows (ids must be unique)")
    sizes = [len(p["id"]) for p in parts]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    part_of = np.repeat(np.arange(len(parts)), sizes)
    for i in range(0, n, _CHUNK):
        sel = order[i : i + _CHUNK]
        x = np.empty((len(sel), index.dim), dtype=np.float32)
        po = part_of[sel]
        for p in np.unique(po):
            m = po == p
            x[m] = parts[p]["vector"][sel[m] - offsets[p]]
        index.add(x, ids=[str(int(v)) for v in ids[sel]])
    path = os.path.join(staging, f"shard-{s:03d}.{uuid.uuid4().hex[:12]}")
    if crash_once is not None and s == 0 and not os.path.exists(crash_once):
        # the tests' fault: the worker dies with half the shard's files written
        open(crash_once, "w").close()
        index.save(path)
        os.remove(os.path.join(path, "manifest.json"))
        os._exit(1)
    index.save(path)
    out = {"shard": s, "path": path, "count": n}
    if n:
        out.update(min_id=int(ids[order[0]]), max_id=int(ids[order[-1]]))
    return out


def build(
    ds: "ray.data.Dataset",
    pipeline: str,
    out_dir: "str | os.PathLike[str]",
    shards: int = 1,
    vector_column: str = "vector",
    id_column: str = "id",
    *,
    metric: str = "cosine",
    seed: int = 42,
    train_sample: int = 100_000,
    model_dir: "str | os.PathLike[str] | None" = None,
    text_column: str = "text",
    precision: str = "f32",
    embed_batch_size: int = 64,
    force: bool = False,
    writer_cpus: float = 1,
    _crash_once: Optional[str] = None,
) -> Dict[str, Any]:
    """Builds a sharded index of the rows of `ds` under `out_dir` and returns its manifest.

    Rows have an integer id (`id_column`: the user's ids, unique, non-negative; hits return
    them) and a vector (`vector_column`), or, with `model_dir`, a text (`text_column`)
    embedded first by :func:`embed` in the same pipeline. The pipeline's encoders are
    fitted once, in one task, on a seeded sample of `train_sample` rows; every shard is
    then written in parallel with those parameters: row ``id`` goes to shard
    ``id mod shards``. Each shard is an ordinary rewa index (``rewa info``, ``rewa search``
    and ``rewa.Index.open`` read it; its rows' corpus ids are the global ids). The manifest
    ``rewa-shards.json`` is written last: until it lands the directory names no shard, and
    a failed, retried task's files are never named. An `out_dir` holding anything else is
    refused unless `force` (which replaces a previous sharded index there). Each shard's
    writer is one task holding `writer_cpus` CPUs (its encoding runs on that many threads):
    with fewer shards than CPUs, give each writer more.
    """
    if shards < 1:
        raise ValueError("shards must be at least 1")
    root = os.path.abspath(os.fspath(out_dir))
    old = _check_target(root, force)
    run = uuid.uuid4().hex[:8]
    staging = os.path.join(root, f".build-{run}")
    t0 = time.perf_counter()
    if model_dir is not None:
        ds = embed(ds, model_dir, text_column, embed_batch_size, output_column=vector_column, precision=precision)
    ds = ds.map_batches(
        _assign,
        fn_kwargs={"shards": shards, "id_column": id_column, "vector_column": vector_column},
        batch_format="numpy",
    ).materialize()
    n = ds.count()
    if n == 0:
        raise ValueError("the dataset holds no rows")
    os.makedirs(staging)
    try:
        frac = min(1.0, train_sample / n)
        sample_ds = ds if frac >= 1.0 else ds.random_sample(frac, seed=seed)
        parts = [b[vector_column] for b in sample_ds.select_columns([vector_column]).iter_batches(batch_format="numpy", batch_size=None)]
        sample = np.concatenate([_matrix(p, vector_column) for p in parts if len(p)])
        fitted = os.path.join(staging, "fitted")
        digest = ray.get(_fit.remote(ray.put(sample), pipeline, metric, seed, fitted))
        t_fit = time.perf_counter()
        # each block split into one part per shard (one task per block), then one writer
        # task per shard over its parts: the rows cross the object store once
        split = [_split.options(num_returns=shards).remote(b, shards, id_column, vector_column) for b in ds.to_arrow_refs()]
        split = [p if shards > 1 else [p] for p in split]
        ray.wait([r for p in split for r in p], num_returns=len(split) * shards, fetch_local=False)
        ds = sample_ds = None  # the blocks, once split
        written = ray.get(
            [
                _write_shard.options(num_cpus=writer_cpus, runtime_env=_threads_env(writer_cpus)).remote(
                    s, [p[s] for p in split], fitted, staging, _crash_once
                )
                for s in range(shards)
            ]
        )
        info = rewa.Index.open(fitted).info()
        entries = []
        for r in written:
            name = f"shard-{r['shard']:03d}"
            dest = f"{name}.{run}"
            os.rename(r["path"], os.path.join(root, dest))
            e = {"name": name, "dir": dest, "count": r["count"]}
            if r["count"]:
                e.update(min_id=r["min_id"], max_id=r["max_id"])
            entries.append(e)
        fitted_dest = f"fitted.{run}"
        os.rename(fitted, os.path.join(root, fitted_dest))
        total = sum(e["count"] for e in entries)
        if total != n:
            raise RuntimeError(f"the shards hold {total} rows, the dataset {n}")
        max_id = max((e["max_id"] for e in entries if e["count"]), default=-1)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "pipeline": pipeline,
            "metric": info["metric"],
            "dim": info["dim"],
            "seed": seed,
            "fitted": fitted_dest,
            "fitted_sha256": digest,
            "train_sample": int(len(sample)),
            "ids": {"kind": "int64", "count": n, "min": min((e["min_id"] for e in entries if e["count"]), default=-1), "max": max_id, "shard": "id mod shards"},
            "shards": entries,
            "text_model": None if model_dir is None else {"dir": os.path.abspath(os.fspath(model_dir)), "precision": precision},
            "rewa_version": rewa.__version__,
            "seconds": {"fit": round(t_fit - t0, 3), "total": round(time.perf_counter() - t0, 3)},
        }
        write_json_atomic(os.path.join(root, MANIFEST), manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for d in old:  # the replaced index's shards, once the new manifest names others
        shutil.rmtree(os.path.join(root, d), ignore_errors=True)
    return manifest


def _check_target(root: str, force: bool) -> list:
    """Refuses a directory holding anything but a sharded index (or that one without
    `force`); returns the directories a previous index there used (removed after the new
    manifest lands)."""
    if not os.path.exists(root):
        os.makedirs(root)
        return []
    names = [n for n in os.listdir(root) if not n.startswith(".build-")]
    if not names:
        return []
    if MANIFEST not in names:
        raise FileExistsError(f"{root} holds other files; build into an empty or new directory")
    if not force:
        raise FileExistsError(f"{root} already holds a sharded index; force=True replaces it")
    m = read_manifest(root)
    return [s["dir"] for s in m["shards"]] + ([m["fitted"]] if m.get("fitted") else [])


def open_local(root: "str | os.PathLike[str]") -> LocalShards:
    """The sharded index at `root` opened in this process (no Ray needed): every shard
    searched in turn, hits merged as the Serve application merges them."""
    return LocalShards(root)


class ShardedClient:
    """A client of a running ``rewa.ray.serve`` application, through its Serve handle (from
    a process connected to the cluster) or over HTTP (`url`)."""

    def __init__(self, handle: Any = None, url: Optional[str] = None, api_key: Optional[str] = None):
        if (handle is None) == (url is None):
            raise ValueError("give a Serve handle or a url")
        self._handle = handle
        self._url = url.rstrip("/") if url else None
        self._key = api_key
        self._metric: Optional[str] = None

    def _post(self, route: str, body: Dict[str, Any]) -> Dict[str, Any]:
        import json
        import urllib.error
        import urllib.request

        req = urllib.request.Request(
            self._url + route,
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json", **({"api-key": self._key} if self._key else {})},
        )
        try:
            with urllib.request.urlopen(req) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            msg = e.read().decode(errors="replace")
            try:
                msg = json.loads(msg)["error"]
            except Exception:
                pass
            raise (ValueError if e.code == 400 else RuntimeError)(f"{route}: {e.code}: {msg}") from None

    def search(self, q: Any, k: int = 10, pipeline: Optional[str] = None):
        """(D, I), each (nq, k), best first, I the global ids (-1: no hit), as
        ``rewa.Index.search`` returns them."""
        q = np.ascontiguousarray(q, dtype=np.float32)
        if q.ndim != 2:
            raise ValueError(f"q must be a 2-D array (n, dim), got shape {q.shape}")
        if self._handle is not None:
            return self._handle.search_arrays.remote(q, k, pipeline).result()
        body: Dict[str, Any] = {"vectors": q.tolist(), "k": k}
        if pipeline:
            body["pipeline"] = pipeline
        res = self._post("/search", body)["results"]
        if self._metric is None:
            self._metric = self.info()["metric"]
        return _arrays(res, k, -np.inf if self._metric != "l2" else np.inf)

    def add(self, x: Any, ids: Any = None) -> int:
        """Adds rows (ids: the global ids, new; default: the next ones); returns the first id."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._handle is not None:
            return self._handle.add_arrays.remote(x, None if ids is None else check_ids(ids)).result()
        body: Dict[str, Any] = {"vectors": x.tolist()}
        if ids is not None:
            body["ids"] = [int(i) for i in check_ids(ids)]
        return self._post("/add", body)["first_id"]

    def delete(self, ids: Any) -> int:
        """Deletes rows by global id; returns how many were newly deleted."""
        ids = check_ids(ids)
        if self._handle is not None:
            return self._handle.delete_ids.remote(ids).result()
        return self._post("/delete", {"ids": [int(i) for i in ids]})["deleted"]

    def info(self) -> Dict[str, Any]:
        if self._handle is not None:
            return self._handle.info.remote().result()
        import json
        import urllib.request

        req = urllib.request.Request(self._url + "/info", headers={"api-key": self._key} if self._key else {})
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read())


def _arrays(results: list, k: int, fill: float):
    n = len(results)
    D = np.full((n, k), fill, dtype=np.float32)
    ids = np.full((n, k), -1, dtype=np.int64)
    for i, hits in enumerate(results):
        for j, h in enumerate(hits[:k]):
            D[i, j] = h["score"]
            ids[i, j] = h["id"]
    return D, ids


def connect(app: str = "default", *, url: Optional[str] = None, api_key: Optional[str] = None) -> ShardedClient:
    """A client of the ``rewa.ray.serve`` application named `app` (through its Serve handle:
    call from a process connected to the cluster), or of its HTTP address `url`."""
    if url is not None:
        return ShardedClient(url=url, api_key=api_key)
    from ray import serve

    return ShardedClient(handle=serve.get_app_handle(app))
