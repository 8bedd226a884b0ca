#!/usr/bin/env python3
"""FAISS's product quantizers on the same files as `rewa eval --pipeline pq32:10` and
`pq64x4:10`: recall@10 (vs exact inner product) and QPS, 2 threads, full scan, no rerank.
usage: fastscan_faiss.py BASE.npy QUERIES.npy [SPEC ...]   (default PQ32 PQ64x4fs PQ32x4fs)"""
import json
import sys
import time

import faiss
import numpy as np

faiss.omp_set_num_threads(2)
base = np.load(sys.argv[1], mmap_mode="r")
q = np.load(sys.argv[2]).astype("float32")
n, d = base.shape
flat = faiss.IndexFlatIP(d)
for s in range(0, n, 100_000):
    flat.add(np.ascontiguousarray(base[s:s + 100_000], dtype="float32"))
_, G = flat.search(q, 10)
del flat
rng = np.random.default_rng(1)
train = np.ascontiguousarray(base[np.sort(rng.choice(n, size=min(n, 65536), replace=False))], dtype="float32")
for spec in sys.argv[3:] or ["PQ32", "PQ64x4fs", "PQ32x4fs"]:
    idx = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
    t = time.perf_counter(); idx.train(train); fit = time.perf_counter() - t
    for s in range(0, n, 100_000):
        idx.add(np.ascontiguousarray(base[s:s + 100_000], dtype="float32"))
    idx.search(q[:20], 10)
    t = time.perf_counter(); _, I = idx.search(q, 10); dt = time.perf_counter() - t
    rec = float(np.mean([len(set(I[i]) & set(G[i])) / 10 for i in range(len(q))]))
    print(json.dumps(dict(spec=spec, recall=rec, qps=len(q) / dt, fit_seconds=fit)), flush=True)
