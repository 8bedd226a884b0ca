"""rewa.ray on a real Ray cluster started here: a head and 3 worker nodes of one CPU each
(`ray.cluster_utils.Cluster`), in a network namespace of this process's own with only the
loopback up, so every Ray process binds 127.0.0.1. One cluster for the module.

Needs Ray (the `ray` extra) and, for the embedding test, the MiniLM model ($REWA_MODELS);
both skip when absent unless REWA_REQUIRE_RAY=1 / REWA_REQUIRE_MODELS=1 (CI sets them)."""

import ctypes
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import rewa

ROOT = Path(__file__).resolve().parents[3]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
MINILM = "all-MiniLM-L6-v2"
# a staged pipeline (sign codes, then exact rescoring of the survivors): the shards hold the
# float vectors too, so "exact:10" searches them exactly
STAGED = "hadamard256+sign:40,exact:10"

try:
    import ray  # noqa: F401

    HAVE_RAY = True
except ImportError:
    HAVE_RAY = False

if not HAVE_RAY:
    if os.environ.get("REWA_REQUIRE_RAY") == "1":
        pytest.fail("Ray is not installed (pip install './crates/rewa-py[ray]')", pytrace=False)
    pytest.skip("Ray is not installed (the ray extra)", allow_module_level=True)

import rewa.ray  # noqa: E402
from rewa.ray._shards import MANIFEST as MANIFEST_NAME, merge  # noqa: E402


# ---------- without a cluster ----------


def test_merge_orders_by_score_then_id_and_puts_missing_last():
    D1 = np.array([[0.9, 0.5, -np.inf]], np.float32)
    I1 = np.array([[4, 7, -1]])
    D2 = np.array([[0.9, 0.6, 0.5]], np.float32)
    I2 = np.array([[2, 9, 3]])
    D, I = merge([(D1, I1), (D2, I2)], 5, "cosine")
    assert I.tolist() == [[2, 4, 9, 3, 7]]
    assert D.tolist()[0][:3] == pytest.approx([0.9, 0.9, 0.6])
    # l2: lower first; fewer hits than k pads with -1 / +inf
    D, I = merge([(np.array([[2.0, np.inf]], np.float32), np.array([[5, -1]])), (np.array([[1.0]], np.float32), np.array([[8]]))], 4, "l2")
    assert I.tolist() == [[8, 5, -1, -1]] and D[0, 2] == np.inf


def test_keys_are_checked_as_rewa_serve_checks_them():
    from starlette.requests import Request

    from rewa.ray.serve import ApiError, Ingress

    ing = object.__new__(Ingress.func_or_class)
    ing.api_key, ing.read_only_key = "write-key", "read-key"

    def status(headers, write):
        req = Request({"type": "http", "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})
        try:
            ing._key(req, write)
            return 200
        except ApiError as e:
            return e.status

    assert status({}, False) == 401
    assert status({"api-key": "nope"}, False) == 401
    assert status({"api-key": "read-key"}, False) == 200
    assert status({"api-key": "read-key"}, True) == 403
    assert status({"authorization": "Bearer write-key"}, True) == 200
    ing.api_key = ing.read_only_key = None
    assert status({}, True) == 200


def test_adds_without_ids_are_refused_with_several_ingress_replicas():
    import asyncio

    from rewa.ray.serve import ApiError, Ingress

    ing = object.__new__(Ingress.func_or_class)
    ing.ingress_replicas, ing.dim = 2, 4
    with pytest.raises(ApiError, match='send "ids"') as e:
        asyncio.run(ing._add(np.zeros((1, 4), np.float32), None))
    assert e.value.status == 400


def test_importing_rewa_does_not_import_ray():
    import sys

    r = subprocess.run(
        [sys.executable, "-c", "import sys, rewa; rewa.Index; print('ray' in sys.modules)"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


# ---------- the cluster ----------


def _only_loopback() -> bool:
    # the interfaces of this process's network namespace (not /sys/class/net: that is the
    # namespace sysfs was mounted in)
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def _isolate_network():
    """Moves this process into a new network namespace with only the loopback, up."""
    if _only_loopback():
        return
    CLONE_NEWNET = 0x40000000
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed (needs root)")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    assert _only_loopback()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    try:
        _isolate_network()
    except OSError as e:
        if os.environ.get("REWA_REQUIRE_RAY") == "1":
            raise
        pytest.skip(f"no network namespace of our own: {e}")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "object_store_memory": 96 << 20}
    c = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    for _ in range(3):
        c.add_node(**node)
    ray.init(address=c.address, logging_level="ERROR", log_to_driver=False)
    ray.data.DataContext.get_current().print_on_execution_start = False
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield c
    try:
        from ray import serve

        serve.shutdown()
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def scifact():
    d = SCIFACT / f"emb_{MINILM}"
    if not d.exists():
        pytest.fail(f"no SciFact vectors at {d}")
    docs = np.load(d / "docs.npy")
    queries = np.load(d / "queries.npy")
    return docs, queries


def test_embed_through_ray_data_equals_rewa_embed(cluster, tmp_path):
    models = os.environ.get("REWA_MODELS")
    model = Path(models) / MINILM if models else None
    if model is None or not model.exists():
        if os.environ.get("REWA_REQUIRE_MODELS") == "1":
            pytest.fail(f"no model at {model} (REWA_MODELS)")
        pytest.skip("no MiniLM model (set REWA_MODELS)")
    lines = (SCIFACT / "corpus.jsonl").read_text().splitlines()[:300]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    from test_rewa import cli

    cli("embed", "--model", model, "--input", tmp_path / "c.jsonl", "--out", tmp_path / "v.npy", cwd=tmp_path)
    want = np.load(tmp_path / "v.npy")
    recs = [json.loads(s) for s in lines]
    items = [{"id": i, "text": (r.get("title", "") + " " + r["text"]).strip()} for i, r in enumerate(recs)]
    ds = ray.data.from_items(items, override_num_blocks=6)
    rows = rewa.ray.embed(ds, model, batch_size=25).take_all()
    rows.sort(key=lambda r: r["id"])
    got = np.stack([r["vector"] for r in rows])
    assert got.dtype == np.float32 and got.shape == want.shape
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.9999, cos.min()


@pytest.fixture(scope="module")
def sharded(cluster, scifact, tmp_path_factory):
    docs, _ = scifact
    out = tmp_path_factory.mktemp("sharded") / "idx"
    ds = ray.data.from_items([{"id": i, "vector": v} for i, v in enumerate(docs)], override_num_blocks=8)
    manifest = rewa.ray.build(ds, STAGED, out, shards=3, train_sample=3000)
    return out, manifest


def test_build_writes_ordinary_shard_indexes_with_global_ids(sharded, scifact):
    out, m = sharded
    docs, _ = scifact
    assert m["pipeline"] == STAGED and m["dim"] == 384 and len(m["shards"]) == 3
    assert m["ids"]["count"] == len(docs) and m["ids"]["max"] == len(docs) - 1
    assert m["train_sample"] <= len(docs) and len(m["fitted_sha256"]) == 64
    on_disk = json.loads((out / "rewa-shards.json").read_text())
    assert on_disk["shards"] == m["shards"]
    # no staging left, every shard named by the manifest
    assert not [p for p in os.listdir(out) if p.startswith(".build-")]
    seen = []
    for s, e in enumerate(m["shards"]):
        index = rewa.Index.open(out / e["dir"])
        ids = np.array([int(x) for x in index.doc_ids])
        assert len(index) == e["count"] and (ids % 3 == s).all()
        assert (np.diff(ids) > 0).all()
        # the shard holds each row's own vector under its global id
        D, I = index.search(docs[ids[:5]], 1, "exact:1")
        assert ids[I[:, 0]].tolist() == ids[:5].tolist()
        np.testing.assert_allclose(D[:, 0], 1.0, atol=1e-5)
        seen.extend(ids.tolist())
    assert sorted(seen) == list(range(len(docs)))
    # the CLI reads a shard as any index, and names its hits by the global ids
    from test_rewa import cli

    e = m["shards"][1]
    info = json.loads(cli("info", "--index", out / e["dir"], "--json", cwd=out))
    assert info["count"] == e["count"] and info["has_doc_ids"]
    np.save(out / "q.npy", docs[[4, 7]])
    hits = cli("search", "--index", out / e["dir"], "--queries", out / "q.npy", "--k", "1", "--pipeline", "exact:1", cwd=out)
    rows = [line.split("\t") for line in hits.splitlines()[1:]]
    assert [(r[0], r[2]) for r in rows] == [("0", "4"), ("1", "7")], hits
    # fitted once: every shard holds the same parameters
    from rewa.ray._shards import params_hash

    assert params_hash(str(out / m["fitted"])) == m["fitted_sha256"]
    for e in m["shards"]:
        assert params_hash(str(out / e["dir"])) == m["fitted_sha256"]


def test_rebuild_refuses_without_force_and_replaces_with_it(cluster, tmp_path):
    x = np.random.default_rng(3).standard_normal((200, 16)).astype(np.float32)
    ds = ray.data.from_items([{"id": 1000 + i, "vector": v} for i, v in enumerate(x)])
    out = tmp_path / "idx"
    m1 = rewa.ray.build(ds, "exact:10", out, shards=2)
    with pytest.raises(FileExistsError, match="force=True"):
        rewa.ray.build(ds, "exact:10", out, shards=2)
    m2 = rewa.ray.build(ds, "exact:10", out, shards=4, force=True)
    names = set(os.listdir(out))
    assert {e["dir"] for e in m2["shards"]} <= names
    assert not ({e["dir"] for e in m1["shards"]} & names)
    local = rewa.ray.open_local(out)
    D, I = local.search(x[:3], 1)
    assert I[:, 0].tolist() == [1000, 1001, 1002]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "f").write_text("x")
    with pytest.raises(FileExistsError, match="other files"):
        rewa.ray.build(ds, "exact:10", tmp_path / "other")
    bad = ray.data.from_items([{"id": -1, "vector": x[0]}])
    with pytest.raises(Exception, match="non-negative"):
        rewa.ray.build(bad, "exact:10", tmp_path / "bad")


def test_a_writer_killed_mid_shard_is_retried_and_no_half_shard_is_named(cluster, tmp_path):
    x = np.random.default_rng(4).standard_normal((300, 16)).astype(np.float32)
    ds = ray.data.from_items([{"id": i, "vector": v} for i, v in enumerate(x)])
    out = tmp_path / "idx"
    marker = tmp_path / "crashed"
    m = rewa.ray.build(ds, "exact:10", out, shards=3, _crash_once=str(marker))
    assert marker.exists(), "the first attempt at shard 0 must have died"
    assert sorted(os.listdir(out)) == sorted([MANIFEST_NAME, m["fitted"]] + [e["dir"] for e in m["shards"]])
    assert sum(e["count"] for e in m["shards"]) == 300
    D, I = rewa.ray.open_local(out).search(x, 1)
    assert I[:, 0].tolist() == list(range(300))


# ---------- Serve ----------


@pytest.fixture(scope="module")
def served(sharded):
    from ray import serve

    import rewa.ray.serve as rs

    out, m = sharded
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # two replicas of each shard: every search and write below meets either
    serve.run(rs.app({"index": str(out), "replicas": "2", "shard_cpus": "0.5"}), name="rewa", route_prefix="/")
    return f"http://127.0.0.1:{port}", out, m


def _post(url, route, body, raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url + route, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _get(url, route):
    try:
        with urllib.request.urlopen(url + route, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _ids(results):
    return [[h["id"] for h in hits] for hits in results]


def test_exact_search_equals_one_index_over_all_vectors(served, scifact):
    url, _, _ = served
    docs, queries = scifact
    q = queries[:40]
    one = rewa.Index.build(docs, STAGED)
    D1, I1 = one.search(q, 10, "exact:10")
    client = rewa.ray.connect("rewa")
    D, I = client.search(q, 10, "exact:10")
    assert I.tolist() == I1.tolist()
    np.testing.assert_allclose(D, D1, rtol=0, atol=1e-6)
    status, body = _post(url, "/search", {"vectors": q.tolist(), "k": 10, "pipeline": "exact:10"})
    assert status == 200 and _ids(body["results"]) == I1.tolist()
    http = rewa.ray.connect(url=url)
    assert http.search(q[:5], 10, "exact:10")[1].tolist() == I1[:5].tolist()


def test_staged_recall_within_a_hundredth_of_one_index(served, scifact):
    docs, queries = scifact
    q = queries[300:]  # the train queries: held out from everything fitted here
    one = rewa.Index.build(docs, STAGED, train=docs[:3000])
    _, truth = one.search(q, 10, "exact:10")
    _, I1 = one.search(q, 10)
    _, I = rewa.ray.connect("rewa").search(q, 10)

    def recall(I):
        return np.mean([len(set(a) & set(t)) / 10 for a, t in zip(I.tolist(), truth.tolist())])

    r1, r = recall(I1), recall(I)
    assert r1 > 0.6, r1
    assert abs(r - r1) <= 0.01, (r, r1)


def test_adds_and_deletes_are_visible_to_the_next_search(served, scifact):
    url, _, _ = served
    docs, _ = scifact
    rng = np.random.default_rng(7)
    new = rng.standard_normal((4, 384)).astype(np.float32)
    status, body = _post(url, "/add", {"vectors": new[:2].tolist(), "ids": [90001, 90002]})
    assert (status, body) == (200, {"count": 2, "first_id": 90001})
    client = rewa.ray.connect("rewa")
    first = client.add(new[2:])  # no ids: the next ones after the largest given
    assert first == 90003
    for _ in range(6):  # each shard's two replicas: whichever answers has the new rows
        _, I = client.search(new, 1, "exact:1")
        assert I[:, 0].tolist() == [90001, 90002, 90003, 90004]
    # a taken id is refused and nothing is added
    status, body = _post(url, "/add", {"vectors": new[:2].tolist(), "ids": [90010, 90001]})
    assert status == 400 and "taken" in body["error"]
    assert _post(url, "/search", {"vectors": new[:1].tolist(), "k": 3})[1]["results"][0][0]["id"] == 90001
    # deletes: the new rows and an original one, never returned again
    status, body = _post(url, "/delete", {"ids": [90001, 123456]})
    assert status == 400 and "123456 was never given out" in body["error"]
    status, body = _post(url, "/delete", {"ids": [90001, 90004, 5]})
    assert status == 200 and body["deleted"] == 3
    assert body["count"] == len(docs) + 4 - 3
    _, I = client.search(np.vstack([new, docs[5:6]]), 10, "exact:10")
    assert not ({90001, 90004, 5} & set(I.ravel().tolist()))
    assert I[1, 0] == 90002 and I[2, 0] == 90003
    assert client.delete([90002]) == 1
    # the shards saved them: a reader of the directory sees the same
    local = rewa.ray.open_local(served[1])
    assert len(local) == len(docs) + 4 - 4
    _, I = local.search(new, 1, "exact:1")
    assert I[:, 0].tolist()[2] == 90003 and 90002 not in I.ravel().tolist()


def test_bad_requests_get_rewa_serves_statuses(served, scifact, tmp_path):
    from test_rewa import rewa_bin

    url, _, _ = served
    docs, _ = scifact
    single = tmp_path / "single"
    rewa.Index.build(docs[:500], STAGED).save(single)
    port = _free_port()
    proc = subprocess.Popen([rewa_bin(), "serve", "--index", single, "--addr", f"127.0.0.1:{port}"], stderr=subprocess.PIPE)
    other = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if _get(other, "/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        v = docs[0].tolist()
        cases = [
            ("/search", b"{not json"),
            ("/search", json.dumps({"vectors": [v], "bogus": 1}).encode()),
            ("/search", json.dumps({"vectors": [v, v[:5]]}).encode()),
            ("/search", json.dumps({"vectors": [v[:5]]}).encode()),
            ("/search", json.dumps({"vectors": []}).encode()),
            ("/search", json.dumps({"vectors": [v], "k": 0}).encode()),
            ("/search", json.dumps({"vectors": [v], "pipeline": "nonsense:1"}).encode()),
            ("/search", json.dumps({"k": 3}).encode()),
            ("/search", json.dumps({"vectors": [v], "texts": ["a"]}).encode()),
            ("/search", json.dumps({"vectors": [[1e39] * 384]}).encode()),
            ("/search", json.dumps({"vectors": [v], "mode": "weird"}).encode()),
            ("/add", json.dumps({"vectors": [v[:3]]}).encode()),
            ("/add", json.dumps({"vector": [v]}).encode()),
            ("/delete", json.dumps({"ids": ["x"]}).encode()),
            ("/delete", b"[]"),
            ("/delete", json.dumps({"ids": [999999]}).encode()),
        ]
        for route, raw in cases:
            a = _post(url, route, None, raw)
            b = _post(other, route, None, raw)
            assert a[0] == b[0] == 400, (route, raw[:60], a, b)
            assert a[1]["error"] and b[1]["error"]
        assert _get(url, "/nowhere")[0] == _get(other, "/nowhere")[0] == 404
        assert _get(url, "/search")[0] == _get(other, "/search")[0] == 405
    finally:
        proc.kill()
        proc.wait()
    assert _get(url, "/health") == (200, '{"status":"ok"}')
    status, info = _get(url, "/info")
    info = json.loads(info)
    assert status == 200 and info["dim"] == 384 and [s["name"] for s in info["shards"]] == ["shard-000", "shard-001", "shard-002"]
    status, metrics = _get(url, "/metrics")
    assert status == 200 and 'rewa_requests_total{route="/search",status="400"}' in metrics


def test_a_killed_shard_replica_is_replaced_and_searches_recover(served, scifact):
    from ray import serve

    docs, queries = scifact
    client = rewa.ray.connect("rewa")
    _, before = client.search(queries[:5], 10, "exact:10")

    def replicas():
        return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "#shard-001#" in a["name"])

    names = replicas()
    assert len(names) == 2, names
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    t0 = time.monotonic()
    while True:
        try:
            _, I = client.search(queries[:5], 10, "exact:10")
            ok = I.tolist() == before.tolist()
        except Exception:
            ok = False
        now = replicas()
        if ok and len(now) == 2 and names[0] not in now:
            status = serve.status().applications["rewa"].deployments["shard-001"]
            if status.replica_states.get("RUNNING") == 2:
                break
        assert time.monotonic() - t0 < 60, f"not replaced within 60 s of the kill: {now}"
        time.sleep(0.2)
    print(f"shard-001 had two running replicas again {time.monotonic() - t0:.1f} s after one was killed")
    for _ in range(4):  # and both answer
        assert client.search(queries[:5], 10, "exact:10")[1].tolist() == before.tolist()
