"""Documents from Python: fields stored with rows and returned by search and get, filters
(Qdrant's JSON, as a dict or text) giving the best k of the matching rows, BM25 and hybrid,
bad filters as ValueError naming the problem, and documents saved with the index (read by
the CLI) and kept in step with adds and deletes."""

import json

import numpy as np
import pytest

import rewa
from test_rewa import cli, clusters


def fields_for(n, first=0):
    return [
        {"n": i, "k": "ab"[i % 2], "tags": ["x"] if i % 3 == 0 else [], "text": f"row {i} word{i % 10}"}
        for i in range(first, first + n)
    ]


def brute(x, q, rows, k):
    """Cosine top k of `rows` (ids) of x for each query."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    s = qn @ xn[rows].T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.asarray(rows)[order]


def test_filter_fields_get_and_bm25():
    x, q = clusters(2000, 20, 32, seed=3)
    idx = rewa.Index.build(x, pipeline="exact:10", fields=fields_for(2000))
    f = {"must": [{"key": "k", "match": {"value": "b"}}, {"key": "n", "range": {"lt": 700}}],
         "must_not": [{"key": "tags", "match": {"value": "x"}}]}
    rows = [i for i in range(2000) if i % 2 == 1 and i < 700 and i % 3 != 0]
    D, I, F = idx.search(q, k=10, filter=f, fields=["n"])
    assert I.shape == (20, 10) and len(F) == 20
    np.testing.assert_array_equal(I, brute(x, q, rows, 10))
    assert all(h == {"n": int(i)} for fs, ids in zip(F, I) for h, i in zip(fs, ids))
    # the same filter as JSON text; a filter matching fewer than k rows pads with -1
    D2, I2 = idx.search(q, k=10, filter=json.dumps(f))
    np.testing.assert_array_equal(I2, I)
    _, I3 = idx.search(q, k=10, filter={"must": [{"key": "n", "match": {"any": [5, 7]}}]})
    assert sorted(I3[0][:2]) == [5, 7] and (I3[:, 2:] == -1).all()
    assert idx.get([3, 1999, 5000], fields=["k"]) == [{"k": "b"}, {"k": "b"}, None]
    assert idx.get([4]) == [fields_for(1, 4)[0]]
    # BM25 needs no query vectors; hybrid fuses both
    _, I, F = idx.search(k=3, mode="bm25", texts=["row 42 word2"], fields=["*"])
    assert I[0][0] == 42 and F[0][0]["text"] == "row 42 word2"
    _, I = idx.search(q[:2], k=5, mode="hybrid", texts=["row 1", "row 2"])
    assert I.shape == (2, 5) and (I >= 0).all()


@pytest.mark.parametrize(
    "f, needle",
    [
        ({"must": [{"key": "colour", "match": {"value": "red"}}]}, 'unknown field "colour"'),
        ({"must": [{"key": "n", "match": {"value": "x"}}]}, 'field "n" holds numbers'),
        ({"must": [{"key": "k", "range": {"gt": 1}}]}, 'range on field "k"'),
        ({"must": [{"key": "n", "geo": {}}]}, 'unsupported condition "geo"'),
        ('{"must": [', "not JSON"),
    ],
)
def test_bad_filters_raise_value_error(f, needle):
    x, q = clusters(200, 2, 8, seed=1)
    idx = rewa.Index.build(x, pipeline="exact:10", fields=fields_for(200))
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        idx.search(q, k=3, filter=f)


def test_bad_fields_and_modes_raise_value_error():
    x, q = clusters(100, 2, 8, seed=1)
    with pytest.raises(ValueError, match="3 fields for 100 rows"):
        rewa.Index.build(x, pipeline="exact:10", fields=fields_for(3))
    with pytest.raises(ValueError, match="not a dict"):
        rewa.Index.build(x, pipeline="exact:10", fields=[1] * 100)
    idx = rewa.Index.build(x, pipeline="exact:10")
    with pytest.raises(ValueError, match="needs stored documents"):
        idx.search(q, k=3, filter={"must": [{"key": "n", "match": {"value": 1}}]})
    with pytest.raises(ValueError, match="unknown mode"):
        idx.search(q, k=3, mode="fuzzy")


def test_documents_are_saved_with_the_index_and_follow_adds_and_deletes(tmp_path):
    x, q = clusters(1000, 5, 16, seed=2)
    idx = rewa.Index.build(x[:600], pipeline="hadamard64+sign:200,exact:10", fields=fields_for(600))
    idx.save(tmp_path / "idx")
    back = rewa.Index.open(tmp_path / "idx")
    assert back.get([599]) == [fields_for(1, 599)[0]]
    # added rows are filterable before and after save; deleted ones vanish
    back.add(x[600:], fields=fields_for(400, 600))
    big = {"must": [{"key": "n", "range": {"gte": 600}}]}
    _, I = back.search(q, k=5, filter=big)
    assert (I >= 600).all()
    back.delete(ids=[601, 3])
    assert back.get([601, 3, 602]) == [None, None, fields_for(1, 602)[0]]
    back.save(tmp_path / "idx")
    # the CLI reads the same documents
    tsv = cli("search", "--index", "idx", "--text", "row 602", "--mode", "bm25", "--k", "1",
              "--show", "n", cwd=tmp_path)
    row = tsv.splitlines()[1].split("\t")
    assert row[2] == "602" and json.loads(row[4]) == {"n": 602}
    again = rewa.Index.open(tmp_path / "idx")
    assert again.get([601, 3, 999]) == [None, None, fields_for(1, 999)[0]]
    _, I = again.search(q, k=10, filter={"must": [{"key": "n", "match": {"any": [3, 601, 604]}}]})
    assert sorted(i for i in I[0] if i >= 0) == [604]
    # saved elsewhere: every row's document goes with it
    again.save(tmp_path / "copy")
    assert rewa.Index.open(tmp_path / "copy").get([0, 999]) == [fields_for(1)[0], fields_for(1, 999)[0]]


def test_compacted_rows_stay_gone_and_bad_records_add_nothing(tmp_path):
    x, q = clusters(300, 3, 8, seed=5)
    idx = rewa.Index.build(x, pipeline="exact:10", fields=fields_for(300))
    idx.delete(ids=[42])
    idx.compact()
    _, I = idx.search(k=5, mode="bm25", texts=["row 42 word2"])
    assert 42 not in I[0]
    assert idx.get([42]) == [None]
    with pytest.raises(ValueError, match="record 1"):
        idx.add(x[:1], fields=[{"a.b": 1}])
    assert len(idx) == 299
    idx.add(x[:1], fields=[{"n": 300}])
    idx.save(tmp_path / "i")
    back = rewa.Index.open(tmp_path / "i")
    assert back.get([42, 300]) == [None, {"n": 300}]
    _, I = back.search(k=5, mode="bm25", texts=["row 42 word2"])
    assert 42 not in I[0]


def test_a_store_a_killed_writer_left_ahead_is_repaired(tmp_path):
    import subprocess
    from test_rewa import rewa_bin
    x, q = clusters(400, 3, 8, seed=6)
    np.save(tmp_path / "a.npy", x[:300])
    np.save(tmp_path / "b.npy", x[300:])
    for name, first, n in (("fa.jsonl", 0, 300), ("fb.jsonl", 300, 100)):
        (tmp_path / name).write_text("".join(json.dumps(f) + "\n" for f in fields_for(n, first)))
    cli("build", "--base", "a.npy", "--fields", "fa.jsonl", "--pipeline", "exact:10", "--out", "idx", cwd=tmp_path)
    # an add killed after its documents' commit, before its manifest
    p = subprocess.Popen([rewa_bin(), "add", "--index", "idx", "--base", "b.npy", "--fields", "fb.jsonl"],
                         cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                         env={**__import__("os").environ, "REWA_SAVE_PAUSE": "docs:60000"})
    for line in p.stderr:
        if "paused:docs" in line:
            break
    p.kill()
    p.wait()
    idx = rewa.Index.open(tmp_path / "idx")
    assert len(idx) == 300 and idx.get([350]) == [None]
    mine = [{"n": 1000 + i, "k": "z"} for i in range(50)]
    idx.add(x[300:350], fields=mine)
    _, I = idx.search(q, k=10, filter={"must": [{"key": "k", "match": {"value": "z"}}]})
    assert ((I >= 300) & (I < 350)).all()
    idx.save(tmp_path / "idx")
    back = rewa.Index.open(tmp_path / "idx")
    assert back.get([300, 349, 350]) == [mine[0], mine[49], None]
