#!/usr/bin/env python3
"""The Python package's search speed: against the CLI on the same index directory (what the
binding adds), and beside FAISS's Python indexes on the same vectors. Cosine (inputs
normalised), k = 10, both libraries on the same number of threads; every timing is the best
of REPEAT runs of the whole query batch, loading excluded. Run on a quiet machine (no build).

usage: python_speed.py BASE.npy QUERIES.npy WORKDIR [--rewa BIN] [--threads 2] [--repeat 5]
needs: the rewa package, numpy, faiss-cpu. Prints a Markdown table and one JSON line."""
import argparse
import json
import os
import subprocess
import time

import numpy as np

import rewa

ap = argparse.ArgumentParser()
ap.add_argument("base")
ap.add_argument("queries")
ap.add_argument("workdir")
ap.add_argument("--rewa", default="target/release/rewa")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--repeat", type=int, default=5)
a = ap.parse_args()

os.environ.setdefault("RAYON_NUM_THREADS", str(a.threads))
import faiss  # noqa: E402  (after the thread settings)

faiss.omp_set_num_threads(a.threads)
base = np.load(a.base).astype(np.float32)
queries = np.load(a.queries).astype(np.float32)
base /= np.linalg.norm(base, axis=1, keepdims=True)
queries /= np.linalg.norm(queries, axis=1, keepdims=True)
nq, k = len(queries), 10
os.makedirs(a.workdir, exist_ok=True)
qpath = os.path.join(a.workdir, "queries.npy")
np.save(qpath, queries)
truth = np.argsort(-(queries @ base.T), axis=1)[:, :k]


def recall(ids):
    return float(np.mean([len(set(r) & set(t)) / k for r, t in zip(ids, truth)]))


def best(fn):
    fn()  # warm-up
    times = []
    for _ in range(a.repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


rows = []
PIPES = ["exact:10", "opq32+pq32:10", "opq32+pq32:100,exact:10",
         "hadamard512+sign:2000,hadamard256+int8:200,exact:10"]
idx_dir = os.path.join(a.workdir, "idx")
index = rewa.Index.build(base, "hadamard512+sign:2000,hadamard256+int8:200,opq32+pq32:100,exact:10")
index.save(idx_dir, force=True)
index = rewa.Index.open(idx_dir)  # memory-mapped, as the CLI searches it
for pipe in PIPES:
    secs, (_, ids) = best(lambda: index.search(queries, k=k, pipeline=pipe))
    cli = []
    for _ in range(a.repeat):
        out = subprocess.run([a.rewa, "search", "--index", idx_dir, "--queries", qpath, "--k", str(k),
                              "--pipeline", pipe, "--threads", str(a.threads), "--json"],
                             capture_output=True, text=True, check=True).stdout
        cli.append(json.loads(out)["seconds"])
    rows.append(dict(method=f"rewa python {pipe}", qps=nq / secs, recall=recall(ids),
                     cli_qps=nq / min(cli), overhead=min(cli) and secs / min(cli) - 1))

d = base.shape[1]
flat = faiss.IndexFlatIP(d)
flat.add(base)
secs, (_, ids) = best(lambda: flat.search(queries, k))
rows.append(dict(method="faiss python IndexFlatIP", qps=nq / secs, recall=recall(ids)))
pq = faiss.index_factory(d, "OPQ32,PQ32", faiss.METRIC_INNER_PRODUCT)
pq.train(base)
refine = faiss.IndexRefineFlat(pq)  # adds to both the PQ index and its float store
refine.k_factor = 10
refine.add(base)
secs, (_, ids) = best(lambda: pq.search(queries, k))
rows.append(dict(method="faiss python OPQ32,PQ32", qps=nq / secs, recall=recall(ids)))
secs, (_, ids) = best(lambda: refine.search(queries, k))
rows.append(dict(method="faiss python OPQ32,PQ32 + RefineFlat (k_factor 10)", qps=nq / secs,
                 recall=recall(ids)))

print(f"{len(base)} x {d} base, {nq} queries, k = {k}, {a.threads} threads, best of {a.repeat}\n")
print("| method | recall@10 | QPS | CLI QPS, same index | Python vs CLI time |")
print("|---|---:|---:|---:|---:|")
for r in rows:
    extra = (f"{r['cli_qps']:.0f} | {100 * r['overhead']:+.1f}%" if "cli_qps" in r else " | ")
    print(f"| {r['method']} | {r['recall']:.4f} | {r['qps']:.0f} | {extra} |")
print(json.dumps(dict(n=len(base), dim=d, n_queries=nq, threads=a.threads, rows=rows)))
