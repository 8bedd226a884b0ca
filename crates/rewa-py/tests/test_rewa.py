"""The Python package's contract: FAISS's shapes, the CLI's directory format and words, every
bad input, threads. The CLI round trips need the `rewa` binary: $REWA_BIN, else the
workspace's target/release or target/debug build (the test fails if none is found)."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import rewa

ROOT = Path(__file__).resolve().parents[3]


def rewa_bin():
    env = os.environ.get("REWA_BIN")
    if env:
        return env
    for p in (ROOT / "target/release/rewa", ROOT / "target/debug/rewa"):
        if p.exists():
            return str(p)
    pytest.fail("no rewa binary: build it (cargo build --release) or set REWA_BIN")


def cli(*args, cwd):
    r = subprocess.run([rewa_bin(), *map(str, args)], cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def clusters(n, nq, dim, seed):
    """n base vectors and nq held-out queries drawn around 20 shared centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim)).astype(np.float32) * 3
    def draw(m):
        return (centres[rng.integers(0, 20, m)] + rng.standard_normal((m, dim))).astype(np.float32)
    return draw(n), draw(nq)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    return clusters(3000, 50, 64, seed=1)


def test_exact_pipeline_equals_brute_force_in_faiss_shapes(data):
    x, q = data
    for metric in ("cosine", "ip", "l2"):
        index = rewa.Index.build(x, "exact:10", metric=metric)
        D, I = index.search(q, k=10)
        assert D.dtype == np.float32 and I.dtype == np.int64
        assert D.shape == I.shape == (len(q), 10)
        if metric == "cosine":
            s = unit(q) @ unit(x).T
            truth = np.argsort(-s, axis=1, kind="stable")[:, :10]
            want = np.take_along_axis(s, truth, 1)
        elif metric == "ip":
            s = q @ x.T
            truth = np.argsort(-s, axis=1, kind="stable")[:, :10]
            want = np.take_along_axis(s, truth, 1)
        else:
            s = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
            truth = np.argsort(s, axis=1, kind="stable")[:, :10]
            want = np.take_along_axis(s, truth, 1)
        assert (I == truth).mean() > 0.99, metric  # ties may order differently
        np.testing.assert_allclose(D, want, rtol=1e-4, atol=1e-3)
        # best first: similarity falls, L2 distance rises
        if metric == "l2":
            assert (np.diff(D, axis=1) >= 0).all()
        else:
            assert (np.diff(D, axis=1) <= 0).all()


def test_fewer_than_k_results_pad_with_minus_one():
    x, q = clusters(5, 3, 16, seed=2)
    for metric, pad in (("cosine", -np.inf), ("l2", np.inf)):
        index = rewa.Index.build(x, "exact:8", metric=metric)
        D, I = index.search(q, k=8)
        assert D.shape == (3, 8)
        assert (I[:, 5:] == -1).all() and (D[:, 5:] == pad).all()
        assert sorted(I[0, :5]) == [0, 1, 2, 3, 4]


def test_staged_search_recall_and_metadata(data):
    x, q = data
    index = rewa.Index.build(x, "hadamard256+sign:300,exact:10")
    assert (len(index), index.dim, index.metric) == (3000, 64, "cosine")
    assert index.pipeline == "hadamard256+sign:300,exact:10"
    assert index.bytes_per_vector == 32 + 4 * 64
    _, I = index.search(q, k=10)
    truth = np.argsort(-(unit(q) @ unit(x).T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, truth)])
    assert recall > 0.9, recall
    info = index.info()
    assert info["count"] == 3000 and info["code_sets"] == ["hadamard256+sign (32 B)"]


def test_add_continues_ids_and_finds_the_new_vectors(data):
    x, _ = data
    index = rewa.Index.build(x[:1000], "hadamard128+sign:100,exact:5")
    index.add(x[1000:1500])
    assert len(index) == 1500
    _, I = index.search(x[1200:1210], k=1)
    assert I[:, 0].tolist() == list(range(1200, 1210))


def test_removed_ids_never_come_back_and_compact_keeps_ids(tmp_path, data):
    x, q = data
    index = rewa.Index.build(x[:1000], "ivf16/16+hadamard128+sign:200,exact:10", metric="l2")
    _, before = index.search(q, k=10)
    gone = np.unique(before[:, :3])
    assert index.remove_ids(gone) == len(gone)
    assert index.remove_ids(gone.tolist()) == 0
    assert len(index) == 1000 - len(gone)
    with pytest.raises(ValueError, match="never given out"):
        index.remove_ids([5, 1000])
    with pytest.raises(ValueError, match="not a valid id"):
        index.remove_ids([-1])
    assert not np.isin(index.search(q, k=10)[1], gone).any()
    every = "ivf16/16+hadamard128+sign:1000,exact:10"  # every list, every row reranked
    D, I = index.search(q, k=10, pipeline=every)
    # the exact answer is the old one without the removed rows
    _, wide = rewa.Index.build(x[:1000], "exact:40", metric="l2").search(q, k=40)
    want = [[i for i in row if i not in set(gone.tolist())][:10] for row in wide]
    assert I.tolist() == want
    index.save(tmp_path / "idx")
    opened = rewa.Index.open(tmp_path / "idx")
    assert opened.info()["deleted"] == len(gone)
    opened.compact()
    assert opened.info()["deleted"] == 0 and opened.info()["segments"] == 1
    assert opened.search(q, k=10, pipeline=every)[1].tolist() == want
    opened.add(x[1000:1010])
    assert opened.info()["next_id"] == 1010
    assert opened.search(x[1005:1006], k=1)[1][0, 0] == 1005


def test_float64_lists_and_non_contiguous_inputs_equal_float32(data):
    x, q = data
    index = rewa.Index.build(x, "hadamard256+sign:200,exact:10")
    want = index.search(q, k=10)
    wide = np.zeros((len(q), 128), dtype=np.float32)
    wide[:, ::2] = q  # a strided view of the queries
    for form in (q.astype(np.float64), q.tolist(), wide[:, ::2], np.asfortranarray(q)):
        D, I = index.search(form, k=10)
        np.testing.assert_array_equal(I, want[1])
        np.testing.assert_allclose(D, want[0], rtol=1e-6)


def test_bad_inputs_raise_value_error_with_the_library_words(data):
    x, q = data
    index = rewa.Index.build(x, "hadamard128+sign:100,exact:10")
    cases = [
        (q[0], "2-D"),
        (np.zeros((0, 64), np.float32), "empty"),
        (np.zeros((3, 32), np.float32), "dimension mismatch: expected 64, got 32"),
        (np.full((2, 64), np.nan, np.float32), "NaN"),
        (np.full((2, 64), np.inf, np.float32), "infinity"),
        (np.zeros((2, 3, 64), np.float32), "2-D"),
        ([["a"] * 64], "2-D float array"),
    ]
    for bad, words in cases:
        with pytest.raises(ValueError, match=words):
            index.search(bad)
        with pytest.raises(ValueError, match=words):
            index.add(bad)
    with pytest.raises(ValueError, match="k must be at least 1"):
        index.search(q, k=0)
    with pytest.raises(ValueError, match="fewer than k = 50"):
        index.search(q, k=50)
    with pytest.raises(ValueError, match="metric"):
        rewa.Index.build(x, "exact:10", metric="hamming")
    with pytest.raises(ValueError):
        rewa.Index.build(x, "hadamard128+nonsense:10")
    with pytest.raises(ValueError, match="2-D"):
        rewa.Index.build(x[0], "exact:10")
    with pytest.raises(ValueError, match="NaN"):
        rewa.Index.build(np.full((10, 8), np.nan), "exact:10")
    with pytest.raises(ValueError, match="train has dimension 32, but x has 64"):
        rewa.Index.build(x, "hadamard128+sign:100,exact:10", train=x[:, :32])
    with pytest.raises(ValueError, match="no codes for hadamard64"):
        index.search(q, pipeline="hadamard64+sign:100,exact:10")
    with pytest.raises(ValueError):
        index.pipeline = "hadamard64+sign:100,exact:10"
    assert index.pipeline == "hadamard128+sign:100,exact:10"
    assert len(index) == 3000  # failed adds added nothing


def test_files_errors(tmp_path, data):
    x, _ = data
    with pytest.raises(FileNotFoundError):
        rewa.Index.open(tmp_path / "missing")
    index = rewa.Index.build(x[:100], "hadamard64+sign:50,exact:10")
    index.save(tmp_path / "idx")
    manifest = tmp_path / "idx" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"dim": 64', '"dim": 65'))
    with pytest.raises(ValueError):
        rewa.Index.open(tmp_path / "idx")
    # a folder of the user's files is refused, and nothing in it is touched
    own = tmp_path / "mine"
    own.mkdir()
    (own / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty and holds no index"):
        index.save(own)
    index.save(own, force=True)
    assert (own / "notes.txt").read_text() == "keep me"
    assert len(rewa.Index.open(own)) == 100


def test_a_panic_is_a_runtime_error_not_a_panic_exception():
    with pytest.raises(RuntimeError, match="internal error in rewa") as e:
        rewa._panic_for_test()
    assert type(e.value) is RuntimeError


def test_python_index_opens_in_the_cli_with_identical_ids(tmp_path, data):
    x, q = data
    index = rewa.Index.build(x, "hadamard256+sign:200,hadamard128+int8:50,exact:10")
    index.add(q[:10] * 0.5)
    index.save(tmp_path / "idx")
    np.save(tmp_path / "q.npy", q)
    cli("search", "--index", "idx", "--queries", "q.npy", "--k", "10", "--out", "ids.npy", cwd=tmp_path)
    _, I = index.search(q, k=10)
    np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), I)
    info = json.loads(cli("info", "--index", "idx", "--json", cwd=tmp_path))
    assert {k: info[k] for k in index.info()} == index.info()


def test_cli_index_opens_in_python_with_identical_ids_and_scores(tmp_path, data):
    x, q = data
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "q.npy", q)
    cli("build", "--base", "x.npy", "--pipeline", "opq16+pq16:100,exact:10", "--metric", "ip",
        "--out", "idx", cwd=tmp_path)
    tsv = cli("search", "--index", "idx", "--queries", "q.npy", cwd=tmp_path)
    rows = [line.split("\t") for line in tsv.strip().splitlines()[1:]]
    index = rewa.Index.open(tmp_path / "idx")
    assert index.metric == "ip" and len(index) == 3000
    D, I = index.search(q, k=10)
    cli_ids = np.array([int(r[2]) for r in rows]).reshape(len(q), 10)
    cli_scores = np.array([float(r[3]) for r in rows]).reshape(len(q), 10)
    np.testing.assert_array_equal(cli_ids, I)
    np.testing.assert_allclose(cli_scores, D, rtol=1e-6)
    # tune, save, and the CLI sees the tuned pipeline
    report = index.tune(q[:25], target_recall=0.9)
    assert set(report) == {"pipeline", "recall_at_k", "recall_lower", "confidence", "qps", "target_met",
                           "timed_out", "seconds", "curve"}
    assert report["confidence"] == 0.95 and report["recall_lower"] <= report["recall_at_k"]
    assert index.pipeline == report["pipeline"]
    index.save(tmp_path / "idx")
    assert json.loads(cli("info", "--index", "idx", "--json", cwd=tmp_path))["pipeline"] == report["pipeline"]


def test_evaluate_and_encode_match_the_cli(tmp_path, data):
    x, q = data
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "q.npy", q)
    mine = rewa.evaluate(x, q, "hadamard256+sign", k=10)
    theirs = json.loads(cli("eval", "--base", "x.npy", "--queries", "q.npy",
                            "--encoder", "hadamard256+sign", "--json", cwd=tmp_path))
    assert set(mine) == set(theirs)
    for key in ("spec", "recall_at_k", "bytes_per_vector", "n_base", "n_queries", "k"):
        assert mine[key] == theirs[key], key
    piped = rewa.evaluate(x, q, "hadamard256+sign:200,exact:10", k=10)
    assert piped["recall_at_k"] > mine["recall_at_k"]
    for spec in ("hadamard256+sign", "opq16+pq16", "pca32+int8"):
        enc = rewa.Encoder.fit(spec, x)
        codes = enc.encode(x)
        assert codes.dtype == np.uint8 and codes.shape == (3000, enc.code_len)
        cli("encode", "--base", "x.npy", "--encoder", spec, "--out", "c.npy", cwd=tmp_path)
        np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), codes)


def test_threads_search_in_parallel_with_the_same_results(data):
    x, q = data
    index = rewa.Index.build(x, "hadamard256+sign:300,hadamard128+int8:50,exact:10")
    want = index.search(q, k=10)
    got = [None] * 8
    errors = []

    def run(i):
        try:
            for _ in range(5):
                got[i] = index.search(q, k=10)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    # an add from another thread while the searches run: they see the index before or after
    adder = threading.Thread(target=index.add, args=(q * 0.25,))
    adder.start()
    for t in threads + [adder]:
        t.join()
    assert not errors
    assert len(index) == 3000 + len(q)
    for D, I in got:
        # queries scaled by 0.25 are the same direction under cosine: an added copy may now
        # rank first, so compare only the hits that are base rows
        for row_got, row_want in zip(I, want[1]):
            base_hits = [i for i in row_got if i < 3000]
            assert base_hits == list(row_want[: len(base_hits)])


def test_the_readme_example_runs(tmp_path):
    data = ROOT / "../shared/data/scifact/emb_all-MiniLM-L6-v2"
    if not data.exists():
        pytest.skip("SciFact embeddings not beside the repository")
    script = (ROOT / "crates/rewa-py/examples/scifact.py").read_text()
    assert script.count('"scifact-py.idx"') == 2
    script = script.replace('"scifact-py.idx"', repr(str(tmp_path / "scifact-py.idx")))
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    recall = float(r.stdout.strip().splitlines()[-1])
    assert 0.70 < recall < 0.76, recall  # FAISS OPQ32,PQ32 on the same vectors: 0.728


def test_the_gil_is_released_while_searching():
    # While a long search runs in one thread, another Python thread keeps running: with the
    # GIL held for the call, no timestamp could fall inside the search.
    x, q = clusters(20000, 1000, 128, seed=3)
    index = rewa.Index.build(x, "exact:10", metric="ip")
    span = {}

    def search():
        span["start"] = time.perf_counter()
        index.search(q, k=10)
        span["end"] = time.perf_counter()

    t = threading.Thread(target=search)
    stamps = []
    t.start()
    while t.is_alive():
        stamps.append(time.perf_counter())
        time.sleep(0.001)
    t.join()
    start, end = span["start"], span["end"]
    assert end - start > 0.02, "the search must be long enough to observe"
    lo, hi = start + 0.25 * (end - start), start + 0.75 * (end - start)
    inside = [s for s in stamps if lo < s < hi]
    assert len(inside) >= 3, (end - start, len(stamps))


def test_absurd_k_raises_instead_of_aborting():
    x, q = clusters(100, 2, 8, seed=4)
    index = rewa.Index.build(x, "exact:10")
    with pytest.raises(MemoryError, match="do not fit in memory"):
        index.search(q, k=10**12, pipeline="exact:1000000000000")
    with pytest.raises(OverflowError):
        index.search(q, k=-1)
    D, I = index.search(q, k=1000, pipeline="exact:1000")
    assert I.shape == (2, 1000) and (I[:, 100:] == -1).all()


def minilm():
    """The MiniLM model directory (scripts/fetch-models.sh; $REWA_MODELS), or skip; with
    REWA_REQUIRE_MODELS=1 a missing model fails."""
    root = Path(os.environ.get("REWA_MODELS", ROOT.parent / "models"))
    d = root / "all-MiniLM-L6-v2"
    if not (d / "model.safetensors").is_file():
        if os.environ.get("REWA_REQUIRE_MODELS") == "1":
            pytest.fail(f"REWA_REQUIRE_MODELS=1 but no model at {d}")
        pytest.skip(f"no model at {d} (scripts/fetch-models.sh DIR, then REWA_MODELS=DIR)")
    return d


@pytest.mark.skipif(not hasattr(rewa, "Embedder"), reason="built without the embed feature")
def test_embedder_gives_sentence_transformers_vectors_and_the_cli_s(tmp_path):
    model = minilm()
    scifact = ROOT.parent / "shared/data/scifact"
    lines = (scifact / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:24]
    docs = [json.loads(l) for l in lines]
    texts = [(d.get("title", "") + " " + d["text"]).strip() for d in docs]
    e = rewa.Embedder(str(model), batch_size=5)
    assert (e.dim, e.max_seq_len) == (384, 256)
    v = e.embed(texts)
    assert v.dtype == np.float32 and v.shape == (24, 384)
    # sentence-transformers' own vectors of the same documents (shared data, made in Python)
    ref = np.load(scifact / "emb_all-MiniLM-L6-v2/docs.npy")[:24]
    cos = (v * ref).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.9999, cos.min()
    # a text alone equals the text in a batch; the CLI writes the same vectors
    assert np.allclose(e.embed([texts[7]])[0], v[7], atol=1e-5)
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cli("embed", "--model", model, "--input", "c.jsonl", "--out", "c.npy", cwd=tmp_path)
    assert np.allclose(np.load(tmp_path / "c.npy"), v, atol=1e-5)
    # a shorter truncation changes long texts only
    short = rewa.Embedder(model, max_seq_len=16).embed(texts[:2])
    assert not np.allclose(short, v[:2], atol=1e-3)
    assert e.embed([]).shape == (0, 384)


@pytest.mark.skipif(not hasattr(rewa, "Embedder"), reason="built without the embed feature")
def test_embedder_errors():
    with pytest.raises(FileNotFoundError, match="modules.json"):
        rewa.Embedder("no-such-model")
    with pytest.raises(TypeError):
        rewa.Embedder(str(minilm())).embed("a bare string, not a list")
    with pytest.raises(ValueError, match="max_seq_len 100000"):
        rewa.Embedder(str(minilm()), max_seq_len=100000)


def test_an_index_built_from_text_names_its_rows(tmp_path):
    model = minilm()
    (tmp_path / "c.jsonl").write_text(
        '{"_id": "cat", "text": "The cat sat on the mat."}\n'
        '{"_id": "vaccine", "text": "A new vaccine reduces infection rates in older adults."}\n',
        encoding="utf-8",
    )
    cli("build", "--text", "c.jsonl", "--model", model, "--pipeline", "exact:2", "--out", "idx",
        cwd=tmp_path)
    index = rewa.Index.open(str(tmp_path / "idx"))
    assert index.doc_ids == ["cat", "vaccine"]
    assert index.info()["text_model"]["max_seq_len"] == 256
    with pytest.raises(ValueError, match="corpus ids"):
        index.add(np.ones((1, 384), dtype=np.float32))
    assert rewa.Index.build(np.eye(4, dtype=np.float32), "exact:2").doc_ids is None


def test_a_stale_save_is_refused_and_loses_no_acknowledged_write(tmp_path, data):
    """An Index opened before `rewa add` and `rewa delete` saved the directory used to write
    its own state over theirs: the added rows vanished, their ids were handed out again and
    the deleted row came back."""
    x, q = data
    d = tmp_path / "d"
    rewa.Index.build(x[:200], "hadamard64+sign:50,exact:10", metric="l2").save(d)
    ix = rewa.Index.open(d)
    np.save(tmp_path / "more.npy", q[:5])
    cli("add", "--index", "d", "--base", "more.npy", cwd=tmp_path)  # ids 200..204
    (tmp_path / "del.txt").write_text("3\n")
    cli("delete", "--index", "d", "--ids", "del.txt", cwd=tmp_path)
    manifest = (d / "manifest.json").read_bytes()
    ix.add(q[5:6])
    with pytest.raises(RuntimeError, match=r"the index changed since it was read \(generation 0, now 2\): "
                                           r"open it again and re-apply your changes"):
        ix.save(d)
    with pytest.raises(RuntimeError, match="force=True"):
        ix.save(str(d) + "/.")
    assert (d / "manifest.json").read_bytes() == manifest
    # opened again and re-applied, the save goes through; every id names one vector
    ix = rewa.Index.open(d)
    ix.add(q[5:6])
    ix.save(d)
    again = rewa.Index.open(d)
    assert len(again) == 205 and again.info()["next_id"] == 206 and again.info()["deleted"] == 1
    _, I = again.search(q[:6], k=1, pipeline="exact:1")
    assert I[:, 0].tolist() == [200, 201, 202, 203, 204, 205]
    _, I = again.search(x[3:4], k=205, pipeline="exact:205")
    assert 3 not in I
    # another index is not saved over it without force=True
    other = rewa.Index.build(x[:50], "exact:10")
    with pytest.raises(ValueError, match="already holds an index of 205 vectors; choose another "
                                         "folder, or pass force=True to replace it"):
        other.save(d)
    assert len(rewa.Index.open(d)) == 205
    other.save(d, force=True)
    assert len(rewa.Index.open(d)) == 50


def test_tune_takes_ground_truth_from_flat_codes_or_the_base(data):
    x, q = data
    ivf = rewa.Index.build(x, "ivf32/1+flat:10", metric="l2")
    r = ivf.tune(q, target_recall=0.9)
    assert r["target_met"] and ivf.pipeline.startswith("ivf32/") and ivf.pipeline != "ivf32/1+flat:10"
    codes = rewa.Index.build(x, "ivf32/1+int8:10", metric="l2")
    with pytest.raises(ValueError, match=r"neither float vectors nor flat codes: give the vectors it was "
                                         r"built from \(--base FILE; base= in Python\)"):
        codes.tune(q)
    with pytest.raises(ValueError, match="the base holds 10 vectors"):
        codes.tune(q, base=x[:10])
    r = codes.tune(q, target_recall=0.8, confidence=0.0, base=x)
    assert r["target_met"] and codes.pipeline == r["pipeline"]


@pytest.mark.skipif(hasattr(rewa, "Embedder"), reason="built with the embed feature")
def test_a_wheel_without_embed_says_how_to_get_the_embedder():
    with pytest.raises(AttributeError, match=r'no attribute \'Embedder\': .*'
                                             r'MATURIN_PEP517_ARGS="--features embed" pip install'):
        rewa.Embedder
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        rewa.nothing
    index = rewa.Index.build(np.eye(4, dtype=np.float32), "exact:2")
    with pytest.raises(NotImplementedError, match="--features embed"):
        index.add(texts=["a"], ids=["a"])


def test_rows_named_by_corpus_ids_are_added_and_deleted_by_them():
    index = rewa.Index.build(np.eye(4, dtype=np.float32)[:1], "exact:1")
    # an index of bare rows takes no corpus ids
    with pytest.raises(ValueError, match="have no corpus ids"):
        index.add(np.eye(4, dtype=np.float32)[1:2], ids=["b"])
    with pytest.raises(ValueError, match="give ids or doc_ids"):
        index.delete()
    with pytest.raises(ValueError, match="no corpus ids"):
        index.delete(doc_ids=["a"])
    assert index.delete(ids=[0]) == 1


@pytest.mark.skipif(not hasattr(rewa, "Embedder"), reason="built without the embed feature")
def test_texts_are_added_and_deleted_by_corpus_id(tmp_path):
    # rewa-embed's tiny BERT fixture (seeded random weights): any model embeds a text as itself
    model = ROOT / "crates/rewa-embed/tests/fixtures/tiny-bert"
    (tmp_path / "c.jsonl").write_text(
        '{"_id": "cat", "text": "The cat sat on the mat."}\n'
        '{"_id": "vaccine", "text": "A new vaccine reduces infection rates in older adults."}\n',
        encoding="utf-8",
    )
    cli("build", "--text", "c.jsonl", "--model", model, "--pipeline", "exact:2", "--out", "idx",
        cwd=tmp_path)
    index = rewa.Index.open(str(tmp_path / "idx"))
    with pytest.raises(ValueError, match='id "cat" names two rows'):
        index.add(texts=["A cat again."], ids=["cat"])
    with pytest.raises(ValueError, match="texts need their corpus ids"):
        index.add(texts=["A dog barks at night."])
    index.add(texts=["A dog barks at night."], ids=["dog"])
    assert index.doc_ids == ["cat", "vaccine", "dog"]
    dog = rewa.Embedder(str(model)).embed(["A dog barks at night."])
    _, I = index.search(dog, k=1)
    assert index.doc_ids[I[0, 0]] == "dog"
    assert index.delete(doc_ids=["cat"]) == 1
    with pytest.raises(ValueError, match='no row has corpus id "cat"'):
        index.delete(doc_ids=["cat"])
    index.save(tmp_path / "idx")
    tsv = cli("search", "--index", "idx", "--text", "a cat on a mat", "--k", "2", cwd=tmp_path)
    assert {line.split("\t")[2] for line in tsv.strip().splitlines()[1:]} == {"vaccine", "dog"}


@pytest.mark.skipif(not hasattr(rewa, "Embedder"), reason="built without the embed feature")
def test_embedder_int8_is_close_to_f32_and_matches_the_cli(tmp_path):
    model = minilm()
    scifact = ROOT.parent / "shared/data/scifact"
    lines = (scifact / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:12]
    docs = [json.loads(l) for l in lines]
    texts = [(d.get("title", "") + " " + d["text"]).strip() for d in docs]
    e = rewa.Embedder(str(model), precision="int8")
    assert e.precision == "int8" and rewa.Embedder(str(model)).precision == "f32"
    assert "precision='int8'" in repr(e) or 'precision="int8"' in repr(e)
    v = e.embed(texts)
    ref = np.load(scifact / "emb_all-MiniLM-L6-v2/docs.npy")[:12]
    cos = (v * ref).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.997 and cos.max() < 1.0 - 1e-7, cos
    # batch-independent to the bit, and the CLI's int8 vectors are these
    assert np.array_equal(e.embed([texts[5]])[0], v[5])
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cli("embed", "--model", model, "--input", "c.jsonl", "--out", "c.npy", "--precision", "int8",
        cwd=tmp_path)
    assert np.array_equal(np.load(tmp_path / "c.npy"), v)
    with pytest.raises(ValueError, match="f32 or int8"):
        rewa.Embedder(str(model), precision="int4")
    # an index built in int8 embeds its text queries in int8
    cli("build", "--text", "c.jsonl", "--model", model, "--precision", "int8", "--pipeline",
        "exact:3", "--out", "idx", cwd=tmp_path)
    index = rewa.Index.open(str(tmp_path / "idx"))
    assert index.info()["text_model"]["precision"] == "int8"
    # texts added to it are embedded in int8 too: the int8 vector of the text finds itself at
    # similarity 1, its f32 vector does not
    index.add(texts=["A dog barks at night."], ids=["dog"])
    D, I = index.search(e.embed(["A dog barks at night."]), k=1)
    assert index.doc_ids[I[0, 0]] == "dog" and D[0, 0] > 1 - 1e-6, D
    D32, _ = index.search(rewa.Embedder(str(model)).embed(["A dog barks at night."]), k=1)
    assert D32[0, 0] < 1 - 1e-5, D32


def test_fit_gives_an_empty_index_whose_writers_share_its_encoders(data, tmp_path):
    x, q = data
    fitted = rewa.Index.fit(x, "hadamard128+sign:100,exact:10")
    assert len(fitted) == 0 and fitted.info()["count"] == 0
    fitted.save(tmp_path / "fitted")
    # two writers add their halves to copies of it: the same parameters, and together the
    # exact hits of one index over both halves
    a = rewa.Index.open(tmp_path / "fitted")
    a.add(x[:1500])
    a.save(tmp_path / "a")
    b = rewa.Index.open(tmp_path / "fitted")
    b.add(x[1500:])
    b.save(tmp_path / "b")
    params = sorted(p.name for p in (tmp_path / "fitted").glob("params-*"))
    assert params
    for name in params:
        want = (tmp_path / "fitted" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() == want == (tmp_path / "b" / name).read_bytes()
    whole = rewa.Index.build(x, "hadamard128+sign:100,exact:10")
    D, I = whole.search(q, 5, "exact:5")
    Da, Ia = a.search(q, 5, "exact:5")
    Db, Ib = b.search(q, 5, "exact:5")
    both_d, both_i = np.concatenate([Da, Db], 1), np.concatenate([Ia, Ib + 1500], 1)
    best = np.argsort(-both_d, axis=1, kind="stable")[:, :5]
    assert np.take_along_axis(both_i, best, 1).tolist() == I.tolist()
    with pytest.raises(ValueError, match="train is empty"):
        rewa.Index.fit(np.zeros((0, 8), np.float32))
    assert whole.live_ids().tolist() == list(range(3000))
    whole.remove_ids([3, 5])
    live = whole.live_ids()
    assert live.dtype == np.int64 and len(live) == 2998 and 3 not in live and 5 not in live
