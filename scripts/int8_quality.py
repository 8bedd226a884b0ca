#!/usr/bin/env python3
"""int8 embedding quality on SciFact: per-row cosine to f32 and nDCG@10, one model per run.

    python scripts/int8_quality.py MODEL_DIR SCIFACT_DIR [--rewa BIN] [--threads 2] [--work DIR]
        [--docs N] [--out results.jsonl]

Embeds every SciFact document and query with `rewa embed --precision int8` (and, with
--f32, with `--precision f32` too), then compares each row with the f32 vectors
sentence-transformers made (SCIFACT_DIR/emb_<model>/{docs,queries}.npy, in the same row order
as corpus.jsonl and queries.jsonl): min, 0.1% quantile and mean cosine. nDCG@10 (BEIR's:
binary gains from qrels/test.tsv, exact cosine top 10) for sentence-transformers' vectors and
for rewa's. Needs numpy only.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np


def embed(rewa, model, inp, out, precision, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    r = subprocess.run(
        [rewa, "embed", "--model", model, "--input", inp, "--out", out,
         "--precision", precision, "--json"],
        env=env, check=True, capture_output=True, text=True)
    return json.loads(r.stdout)


def cosines(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def ndcg10(docs, queries, doc_ids, query_ids, qrels):
    docs = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    qpos = {q: i for i, q in enumerate(query_ids)}
    scores = []
    for q, rel in qrels.items():
        s = docs @ queries[qpos[q]]
        top = np.argsort(-s, kind="stable")[:10]
        dcg = sum(1.0 / np.log2(r + 2) for r, d in enumerate(top) if doc_ids[d] in rel)
        idcg = sum(1.0 / np.log2(r + 2) for r in range(min(10, len(rel))))
        scores.append(dcg / idcg)
    return float(np.mean(scores))


def stats(c):
    return {"min": float(c.min()), "p001": float(np.quantile(c, 0.001)), "mean": float(c.mean())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("scifact")
    ap.add_argument("--rewa", default=os.environ.get("REWA_BIN", "target/release/rewa"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=None)
    ap.add_argument("--f32", action="store_true", help="also embed with rewa in f32")
    ap.add_argument("--out", default=None, help="append a JSON row here")
    a = ap.parse_args()

    name = os.path.basename(os.path.normpath(a.model))
    emb = os.path.join(a.scifact, f"emb_{name}")
    work = a.work or tempfile.mkdtemp()
    os.makedirs(work, exist_ok=True)
    st_docs = np.load(os.path.join(emb, "docs.npy"))
    st_q = np.load(os.path.join(emb, "queries.npy"))
    doc_ids = open(os.path.join(emb, "doc_ids.txt")).read().split()
    query_ids = open(os.path.join(emb, "query_ids.txt")).read().split()
    qrels = {}
    with open(os.path.join(a.scifact, "qrels", "test.tsv")) as f:
        next(f)
        for line in f:
            q, d, s = line.split("\t")
            if int(s) > 0:
                qrels.setdefault(q, set()).add(d)
    row = {"model": name, "st_ndcg10": ndcg10(st_docs, st_q, doc_ids, query_ids, qrels)}
    for precision in (["f32"] if a.f32 else []) + ["int8"]:
        d = os.path.join(work, f"{name}-{precision}-docs.npy")
        q = os.path.join(work, f"{name}-{precision}-queries.npy")
        sd = embed(a.rewa, a.model, os.path.join(a.scifact, "corpus.jsonl"), d, precision, a.threads)
        sq = embed(a.rewa, a.model, os.path.join(a.scifact, "queries.jsonl"), q, precision, a.threads)
        vd, vq = np.load(d), np.load(q)
        assert vd.shape == st_docs.shape and vq.shape == st_q.shape
        row[precision] = {
            "docs_cosine": stats(cosines(vd, st_docs)),
            "queries_cosine": stats(cosines(vq, st_q)),
            "ndcg10": ndcg10(vd, vq, doc_ids, query_ids, qrels),
            "docs_tokens_per_s": sd["tokens"] / sd["seconds"],
        }
        print(json.dumps({precision: row[precision]}), file=sys.stderr)
    print(json.dumps(row))
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
