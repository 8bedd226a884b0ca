"""A sharded rewa index on Ray Serve: one deployment per shard (``shard-000``, ...; its
replicas share the shard's files) and an ingress answering ``rewa serve``'s HTTP API.

    serve run rewa.ray.serve:app index=DIR replicas=2
    serve.run(rewa.ray.serve.app({"index": DIR}))        # from Python

Arguments (strings from the command line): ``index`` (the directory ``rewa.ray.build``
wrote; required), ``replicas`` (per shard, default 1), ``shard_cpus`` (CPUs each shard
replica holds, default 1), ``api_key`` / ``read_only_key`` (as ``rewa serve``'s keys),
``model`` (a model directory for ``"texts"``; default the one the build recorded),
``ingress_replicas`` (default 1: the ingress parses, fans out and merges, and its CPU per
search grows with the shards; with more than one, adds must name their ids),
``pipeline`` (the searches' default pipeline, same encoders, other keeps; default the
build's),
``split_keeps`` (default true: each shard keeps its share of every stage's candidates, so
the shards together score what one index scores and recall stays one index's; false: each
keeps them all, more recall for more work).

Routes: ``GET /health``, ``GET /info``, ``POST /search`` (``{"vectors": [[..]], "k"}`` or
``{"texts": [..]}``), ``POST /add`` (``{"vectors", "ids"?}``: ids are the global integer ids,
default the next ones), ``POST /delete`` (``{"ids": [..]}``), ``GET /metrics``. A search
fans out to every shard at once and merges their top k by score, ties by id. An add goes
to the shards owning its ids (``id mod shards``), a delete to the owners; both answer once
every shard involved saved them (each shard's save is crash-safe).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import os
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

import rewa

from ._shards import check_ids, global_ids, merge, read_manifest, shard_of, shard_pipeline, to_global

#: The body size past which a request gets 413 (as `rewa serve`'s default limit).
MAX_BODY = 64 << 20


def _retry_write(fn, attempts: int = 200):
    """Runs a write (open, change, save) until no other writer is in the way: another
    replica holding the shard's writer lock (OSError) or having saved since (RuntimeError:
    stale) makes it wait a moment and start again from the saved state."""
    for i in range(attempts):
        try:
            return fn()
        except (OSError, RuntimeError) as e:
            if isinstance(e, FileNotFoundError) or i == attempts - 1:
                raise
            msg = str(e)
            if "lock" not in msg and "open it again" not in msg and "saved" not in msg:
                raise
            time.sleep(0.05)


class ShardReplica:
    """One replica of one shard: its index opened (files mapped), searched on threads
    (the GIL is released), reopened when another replica saved a change."""

    def __init__(self, root: str, entry: Dict[str, Any]):
        self.name = entry["name"]
        self.path = os.path.join(root, entry["dir"])
        self._write = threading.Lock()
        self._reopen = threading.Lock()
        self._state = self._load()

    def _stamp(self) -> Tuple[int, int, int]:
        st = os.stat(os.path.join(self.path, "manifest.json"))
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _load(self):
        stamp = self._stamp()
        index = rewa.Index.open(self.path)
        return index, global_ids(index.doc_ids), stamp

    def _fresh(self):
        state = self._state
        if self._stamp() != state[2]:
            with self._reopen:
                if self._stamp() != self._state[2]:
                    self._state = self._load()
                state = self._state
        return state

    def search_sync(self, q: np.ndarray, k: int, pipeline: Optional[str], flt: Any, fields: Optional[List[str]]):
        index, gids, _ = self._fresh()
        t = time.perf_counter()
        if fields is not None:
            D, I, F = index.search(q, k, pipeline, filter=flt, fields=fields)
        else:
            D, I = index.search(q, k, pipeline, filter=flt)
            F = None
        return D, to_global(I, gids), F, time.perf_counter() - t

    def live(self, ids: np.ndarray) -> np.ndarray:
        """Which of `ids` this shard holds (not deleted)."""
        index, gids, _ = self._fresh()
        if gids.size == 0 or ids.size == 0:
            return np.zeros(ids.shape, dtype=bool)
        return np.isin(ids, gids[index.live_ids()])

    def known(self, ids: np.ndarray) -> np.ndarray:
        """Which of `ids` this shard ever held (deleted ones too, until a compaction)."""
        _, gids, _ = self._fresh()
        return np.isin(ids, gids)

    def _write_and_serve(self, change) -> Any:
        """Opens the shard, applies `change(index)` (which saves it, or not when nothing
        changed), again from the saved state while another writer is in the way, and serves
        the result; returns what `change` returned."""

        def write():
            w = rewa.Index.open(self.path)
            return w, change(w)

        with self._write:
            w, out = _retry_write(write)
            with self._reopen:
                self._state = (w, global_ids(w.doc_ids), self._stamp())
        return out

    def add_sync(self, x: np.ndarray, ids: np.ndarray) -> int:
        def add(w):
            w.add(x, ids=[str(int(i)) for i in ids])
            w.save(self.path)
            return len(ids)

        return self._write_and_serve(add)

    def delete_sync(self, ids: np.ndarray) -> int:
        def delete(w):
            known = set(w.doc_ids or [])
            wanted = [str(int(i)) for i in ids if str(int(i)) in known]
            n = w.delete(doc_ids=wanted) if wanted else 0
            if n:
                w.save(self.path)
            return n

        return self._write_and_serve(delete)

    def stats(self) -> Dict[str, Any]:
        index, gids, _ = self._fresh()
        return {"name": self.name, "count": len(index), "max_id": int(gids.max()) if gids.size else -1}


@serve.deployment(max_ongoing_requests=64)
class Shard:
    """A shard's deployment: :class:`ShardReplica` behind async methods (each on a thread)."""

    def __init__(self, root: str, entry: Dict[str, Any]):
        self.r = ShardReplica(root, entry)

    async def search(self, q, k, pipeline=None, flt=None, fields=None):
        return await asyncio.to_thread(self.r.search_sync, q, k, pipeline, flt, fields)

    async def live(self, ids):
        return await asyncio.to_thread(self.r.live, ids)

    async def known(self, ids):
        return await asyncio.to_thread(self.r.known, ids)

    async def add(self, x, ids):
        return await asyncio.to_thread(self.r.add_sync, x, ids)

    async def delete(self, ids):
        return await asyncio.to_thread(self.r.delete_sync, ids)

    async def stats(self):
        return await asyncio.to_thread(self.r.stats)


class ApiError(Exception):
    """An answer `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _bad(message: str) -> ApiError:
    return ApiError(400, message)


def _cause(e: BaseException) -> BaseException:
    """The exception a shard raised, out of Ray's wrapper."""
    return getattr(e, "cause", None) or e


def _library_error(e: BaseException) -> ApiError:
    c = _cause(e)
    if isinstance(c, ValueError):
        return _bad(str(c))
    return ApiError(500, f"{type(c).__name__}: {c}")


def _object(body: bytes, allowed: Tuple[str, ...]) -> Dict[str, Any]:
    try:
        v = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad(f"bad JSON body: {e}") from None
    if not isinstance(v, dict):
        raise _bad("bad JSON body: expected a JSON object")
    for key in v:
        if key not in allowed:
            raise _bad(f"bad JSON body: unknown field `{key}`, expected one of {', '.join(f'`{a}`' for a in allowed)}")
    return v


def _vectors(v: Any, dim: int) -> np.ndarray:
    if not isinstance(v, list):
        raise _bad('bad JSON body: "vectors" must be an array of vectors, each an array of numbers')
    if not v:
        raise _bad('invalid input: "vectors" holds zero vectors')
    n0 = None
    for i, row in enumerate(v):
        if not isinstance(row, list) or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in row):
            raise _bad(f'bad JSON body: vector {i} must be an array of numbers')
        if n0 is None:
            n0 = len(row)
        elif len(row) != n0:
            raise _bad(f"bad JSON body: vector {i}: dimension mismatch: expected {n0}, got {len(row)}")
    if n0 == 0:
        raise _bad("invalid input: dimension must be at least 1")
    with np.errstate(over="ignore"):
        x = np.asarray(v, dtype=np.float32)
    if x.shape[1] != dim:
        raise _bad(f"dimension mismatch: expected {dim}, got {x.shape[1]}")
    if not np.isfinite(x).all():
        r, c = np.argwhere(~np.isfinite(x))[0]
        raise _bad(f"invalid input: vector {r} holds a non-finite value at {c} (NaN or infinity)")
    return x


def _texts(t: Any) -> List[str]:
    if not isinstance(t, list) or not all(isinstance(s, str) for s in t):
        raise _bad('bad JSON body: "texts" must be an array of strings')
    if not t:
        raise _bad('invalid input: "texts" holds zero texts')
    return t


class Metrics:
    """Counters behind ``GET /metrics`` (Prometheus text)."""

    def __init__(self):
        self.requests: Dict[Tuple[str, int], int] = {}
        self.seconds: Dict[str, List[float]] = {}
        # a search's time, split: the slowest shard's own search, the fan-out beyond it
        # (Ray's hops, serialisation, queueing), the merge
        self.split = {"slowest_shard": 0.0, "transport": 0.0, "merge": 0.0}
        self.searches = 0

    def record(self, route: str, status: int, seconds: float):
        self.requests[(route, status)] = self.requests.get((route, status), 0) + 1
        s = self.seconds.setdefault(route, [0.0, 0])
        s[0] += seconds
        s[1] += 1

    def text(self, count: int) -> str:
        out = ["# TYPE rewa_requests_total counter"]
        for (route, status), n in sorted(self.requests.items()):
            out.append(f'rewa_requests_total{{route="{route}",status="{status}"}} {n}')
        out.append("# TYPE rewa_request_seconds summary")
        for route, (s, n) in sorted(self.seconds.items()):
            out.append(f'rewa_request_seconds_sum{{route="{route}"}} {s:.6f}')
            out.append(f'rewa_request_seconds_count{{route="{route}"}} {n}')
        out.append("# TYPE rewa_search_split_seconds_total counter")
        for part, s in self.split.items():
            out.append(f'rewa_search_split_seconds_total{{part="{part}"}} {s:.6f}')
        out.append(f"rewa_searches_total {self.searches}")
        out.append("# TYPE rewa_index_vectors gauge")
        out.append(f"rewa_index_vectors {count}")
        return "\n".join(out) + "\n"


@serve.deployment(max_ongoing_requests=256)
class Ingress:
    """The HTTP front: parses, checks, fans out to the shards, merges, answers."""

    def __init__(self, root: str, options: Dict[str, Any], *shards):
        self.root = root
        self.manifest = read_manifest(root)
        self.shards = list(shards)
        self.metric = self.manifest["metric"]
        self.dim = int(self.manifest["dim"])
        self.api_key = options.get("api_key")
        self.read_only_key = options.get("read_only_key")
        model = options.get("model") or (self.manifest.get("text_model") or {}).get("dir")
        self.model = model
        self.precision = (self.manifest.get("text_model") or {}).get("precision", "f32")
        self._embedder = None
        self._ids_lock = asyncio.Lock()
        self._next_id: Optional[int] = None
        # the default pipeline: the app's `pipeline` argument, else the build's
        self.pipeline = options.get("pipeline") or self.manifest["pipeline"]
        self.bytes_per_vector = rewa.Index.open(os.path.join(root, self.manifest["fitted"])).bytes_per_vector
        self.metrics = Metrics()
        self.ingress_replicas = int(options.get("ingress_replicas", 1))
        self.split_keeps = str(options.get("split_keeps", "true")).lower() not in ("false", "0", "no")

    # ----- the handle API (rewa.ray.connect) -----

    async def search_arrays(self, q: np.ndarray, k: int = 10, pipeline: Optional[str] = None):
        D, ids, _ = await self._search(np.ascontiguousarray(q, dtype=np.float32), k, pipeline, None, None)
        return D, ids

    async def add_arrays(self, x: np.ndarray, ids: Optional[np.ndarray] = None) -> int:
        return await self._add(np.ascontiguousarray(x, dtype=np.float32), ids)

    async def delete_ids(self, ids: np.ndarray) -> int:
        return (await self._delete(check_ids(ids)))[0]

    async def info(self) -> Dict[str, Any]:
        stats = await asyncio.gather(*[s.stats.remote() for s in self.shards])
        m = self.manifest
        return {
            "count": sum(s["count"] for s in stats),
            "dim": self.dim,
            "metric": self.metric,
            "pipeline": self.pipeline,
            "bytes_per_vector": self.bytes_per_vector,
            "shards": [{"name": e["name"], "dir": e["dir"], "count": s["count"]} for e, s in zip(m["shards"], stats)],
            "fitted_sha256": m["fitted_sha256"],
            "ids": m["ids"],
            "text_model": m.get("text_model"),
        }

    # ----- the work -----

    async def _search(self, q, k, pipeline, flt, fields):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise _bad(f"invalid input: k must be a positive integer, got {k!r}")
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise _bad(f"dimension mismatch: expected {self.dim}, got {q.shape[-1]}")
        p = pipeline or self.pipeline
        if self.split_keeps:
            p = shard_pipeline(p, len(self.shards), k)
        t0 = time.perf_counter()
        try:
            parts = await asyncio.gather(*[s.search.remote(q, k, p, flt, fields) for s in self.shards])
        except Exception as e:
            raise _library_error(e) from None
        t1 = time.perf_counter()
        D, ids = merge([(p[0], p[1]) for p in parts], k, self.metric)
        F = None
        if fields is not None:
            # each hit's fields, found again by id among the shards' answers
            by_id = [{} for _ in range(q.shape[0])]
            for p in parts:
                for i, (row_ids, row_f) in enumerate(zip(p[1], p[2])):
                    for g, f in zip(row_ids, row_f):
                        by_id[i][int(g)] = f
            F = [[by_id[i].get(int(g)) for g in ids[i] if g >= 0] for i in range(q.shape[0])]
        t2 = time.perf_counter()
        m = self.metrics
        slowest = max(p[3] for p in parts)
        m.split["slowest_shard"] += slowest
        m.split["transport"] += max(0.0, (t1 - t0) - slowest)
        m.split["merge"] += t2 - t1
        m.searches += 1
        return D, ids, F

    async def _embed(self, texts: List[str]) -> np.ndarray:
        if self.model is None:
            raise _bad('"texts" needs an index built from text (or the app started with model=DIR); send "vectors"')
        if self._embedder is None:
            try:
                cls = rewa.Embedder
            except AttributeError as e:
                raise ApiError(500, str(e)) from None
            self._embedder = await asyncio.to_thread(cls, self.model, precision=self.precision)
        return await asyncio.to_thread(self._embedder.embed, texts)

    async def _add(self, x: np.ndarray, ids: Any) -> int:
        n = x.shape[0]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise _bad(f"dimension mismatch: expected {self.dim}, got {x.shape[-1]}")
        if ids is None and self.ingress_replicas > 1:
            raise _bad('invalid input: with several ingress replicas, adds name their rows: send "ids"')
        S = len(self.shards)
        async with self._ids_lock:
            if self._next_id is None:
                stats = await asyncio.gather(*[s.stats.remote() for s in self.shards])
                self._next_id = max([self.manifest["ids"]["max"]] + [s["max_id"] for s in stats]) + 1
            if ids is None:
                ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
            else:
                try:
                    ids = check_ids(ids)
                except ValueError as e:
                    raise _bad(f"invalid input: {e}") from None
                if ids.size != n:
                    raise _bad(f"invalid input: {ids.size} ids for {n} vectors")
                if np.unique(ids).size != n:
                    raise _bad("invalid input: an id names two rows (ids must be unique)")
            owner = shard_of(ids, S)
            groups = [(s, np.nonzero(owner == s)[0]) for s in range(S)]
            groups = [(s, rows) for s, rows in groups if rows.size]
            # every id checked new before any shard adds, so a refused add adds nothing
            live = await asyncio.gather(*[self.shards[s].live.remote(ids[rows]) for s, rows in groups])
            taken = [int(i) for (s, rows), hit in zip(groups, live) for i in ids[rows][hit]]
            if taken:
                raise _bad(f"invalid input: id {taken[0]} is taken ({len(taken)} of the ids are)")
            try:
                await asyncio.gather(*[self.shards[s].add.remote(x[rows], ids[rows]) for s, rows in groups])
            except Exception as e:
                raise _library_error(e) from None
            self._next_id = max(self._next_id, int(ids.max()) + 1)
        return int(ids[0])

    async def _delete(self, ids: np.ndarray) -> Tuple[int, int]:
        S = len(self.shards)
        owner = shard_of(ids, S)
        groups = [(s, ids[owner == s]) for s in range(S)]
        groups = [(s, g) for s, g in groups if g.size]
        # as one index: an id never given out is refused, and then nothing is deleted
        known = await asyncio.gather(*[self.shards[s].known.remote(g) for s, g in groups])
        unknown = [int(i) for (s, g), k in zip(groups, known) for i in g[~k]]
        if unknown:
            raise _bad(f"invalid input: id {unknown[0]} was never given out ({len(unknown)} of the ids were not)")
        try:
            done = await asyncio.gather(*[self.shards[s].delete.remote(g) for s, g in groups])
        except Exception as e:
            raise _library_error(e) from None
        stats = await asyncio.gather(*[s.stats.remote() for s in self.shards])
        return sum(done), sum(s["count"] for s in stats)

    # ----- HTTP -----

    def _key(self, request: Request, write: bool) -> None:
        if not self.api_key and not self.read_only_key:
            return
        given = request.headers.get("api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        ok = lambda k: k is not None and given is not None and hmac.compare_digest(k.encode(), given.encode())  # noqa: E731
        if ok(self.api_key):
            return
        if ok(self.read_only_key):
            if write:
                raise ApiError(403, "the read-only key may not change the index")
            return
        raise ApiError(401, "missing or wrong API key (an `api-key` header or `Authorization: Bearer`)")

    async def __call__(self, request: Request) -> Response:
        t0 = time.perf_counter()
        path = request.url.path
        root = request.scope.get("root_path", "")  # the application's route prefix
        if root and path.startswith(root):
            path = path[len(root):]
        path = path.rstrip("/") or "/"
        routes = {"/health": "GET", "/info": "GET", "/metrics": "GET", "/search": "POST", "/add": "POST", "/delete": "POST"}
        try:
            if path not in routes:
                raise ApiError(404, f"no route {path} (routes: {', '.join(routes)})")
            if request.method != routes[path]:
                raise ApiError(405, f"{path} takes {routes[path]}, not {request.method}")
            if path != "/health":
                self._key(request, write=path in ("/add", "/delete"))
            resp = await self._route(path, request, t0)
        except ApiError as e:
            resp = JSONResponse({"error": e.message}, status_code=e.status)
        except Exception as e:  # a bug: 500 with its words, never a dropped connection
            resp = JSONResponse({"error": f"internal error: {type(e).__name__}: {e}"}, status_code=500)
        if path in routes:
            self.metrics.record(path, resp.status_code, time.perf_counter() - t0)
        return resp

    async def _body(self, request: Request, allowed: Tuple[str, ...]) -> Dict[str, Any]:
        body = await request.body()
        if len(body) > MAX_BODY:
            raise ApiError(413, f"body of {len(body)} bytes is over the limit of {MAX_BODY}")
        return _object(body, allowed)

    async def _route(self, path: str, request: Request, t0: float) -> Response:
        if path == "/health":
            return JSONResponse({"status": "ok"})
        if path == "/info":
            return JSONResponse(await self.info())
        if path == "/metrics":
            stats = await asyncio.gather(*[s.stats.remote() for s in self.shards])
            return PlainTextResponse(self.metrics.text(sum(s["count"] for s in stats)))
        if path == "/search":
            req = await self._body(request, ("vectors", "texts", "k", "pipeline", "filter", "mode", "fusion", "fields"))
            mode = req.get("mode") or "dense"
            if mode not in ("dense", "bm25", "hybrid"):
                raise _bad(f"invalid input: unknown mode {mode!r} (dense, bm25 or hybrid)")
            if mode != "dense":
                raise _bad(f"mode {mode!r} is not served by a sharded index (BM25 statistics are per shard); use \"dense\"")
            if ("vectors" in req) == ("texts" in req):
                raise _bad('give exactly one of "vectors" and "texts"')
            k = req.get("k", 10)
            pipeline = req.get("pipeline")
            if pipeline is not None and not isinstance(pipeline, str):
                raise _bad('bad JSON body: "pipeline" must be a string')
            fields = req.get("fields")
            if fields is not None and not (isinstance(fields, list) and all(isinstance(f, str) for f in fields)):
                raise _bad('bad JSON body: "fields" must be an array of strings')
            q = _vectors(req["vectors"], self.dim) if "vectors" in req else await self._embed(_texts(req["texts"]))
            D, ids, F = await self._search(q, k, pipeline, req.get("filter"), fields)
            results = []
            for i in range(D.shape[0]):
                hits = []
                for j in range(D.shape[1]):
                    if ids[i, j] < 0:
                        break
                    h = {"id": int(ids[i, j]), "score": float(D[i, j])}
                    if F is not None:
                        h["fields"] = F[i][j]
                    hits.append(h)
                results.append(hits)
            return JSONResponse({"results": results, "took_ms": (time.perf_counter() - t0) * 1e3})
        if path == "/add":
            req = await self._body(request, ("vectors", "texts", "ids", "fields"))
            if "fields" in req:
                raise _bad('"fields" is not stored by a sharded index yet')
            if ("vectors" in req) == ("texts" in req):
                raise _bad('give exactly one of "vectors" and "texts"')
            x = _vectors(req["vectors"], self.dim) if "vectors" in req else await self._embed(_texts(req["texts"]))
            ids = req.get("ids")
            if ids is not None and not (isinstance(ids, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
                raise _bad('bad JSON body: "ids" must be an array of integers (the rows\' global ids)')
            first = await self._add(x, None if ids is None else np.array(ids, dtype=np.int64))
            return JSONResponse({"count": int(x.shape[0]), "first_id": first})
        # /delete
        req = await self._body(request, ("ids", "doc_ids"))
        if "doc_ids" in req:
            raise _bad('a sharded index names rows by integer ids: send "ids"')
        ids = req.get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise _bad('bad JSON body: "ids" must be an array of non-negative integers')
        deleted, count = await self._delete(np.array(ids, dtype=np.int64))
        return JSONResponse({"deleted": deleted, "count": count})


def app(args: Dict[str, str]) -> "serve.Application":
    """The Serve application of the sharded index ``args["index"]`` (see the module's help)."""
    if "index" not in args:
        raise ValueError("give index=DIR: the directory rewa.ray.build wrote")
    root = os.path.abspath(args["index"])
    m = read_manifest(root)
    replicas = int(args.get("replicas", 1))
    cpus = float(args.get("shard_cpus", 1))
    if replicas < 1 or not math.isfinite(cpus) or cpus <= 0:
        raise ValueError("replicas must be at least 1 and shard_cpus above 0")
    threads = max(1, int(cpus))
    shards = [
        Shard.options(
            name=e["name"],
            num_replicas=replicas,
            ray_actor_options={"num_cpus": cpus, "runtime_env": {"env_vars": {"RAYON_NUM_THREADS": str(threads)}}},
        ).bind(root, e)
        for e in m["shards"]
    ]
    ingress = int(args.get("ingress_replicas", 1))
    if ingress < 1:
        raise ValueError("ingress_replicas must be at least 1")
    options = {k: args[k] for k in ("api_key", "read_only_key", "model", "split_keeps", "pipeline", "ingress_replicas") if args.get(k)}
    return Ingress.options(name="ingress", num_replicas=ingress, ray_actor_options={"num_cpus": 0}).bind(root, options, *shards)
