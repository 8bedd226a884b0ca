#!/usr/bin/env python3
"""FAISS's codes at a given size on the same files as `rewa eval --encoder SPEC`: recall@10
against exact inner product on L2-normalised vectors (rewa's cosine), no rerank, bytes per
vector as FAISS stores them (`sa_code_size`, RaBitQ's factors included), 2 threads.
Fitted on the base (as `rewa eval` without --train); the queries are never seen by a fit.

usage: bytes_faiss.py BASE.npy QUERIES.npy SPEC [SPEC ...]
       e.g. RaBitQ RaBitQ4 OPQ32,PQ32 PQ64x4fs "PCA128,RaBitQ2"
prints one JSON object per spec."""
import json
import sys
import time

import faiss
import numpy as np

faiss.omp_set_num_threads(2)


def unit(x):
    x = np.ascontiguousarray(x, dtype="float32")
    faiss.normalize_L2(x)
    return x


base = unit(np.load(sys.argv[1]))
q = unit(np.load(sys.argv[2]))
n, d = base.shape
flat = faiss.IndexFlatIP(d)
flat.add(base)
_, G = flat.search(q, 10)
for spec in sys.argv[3:]:
    idx = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
    t = time.perf_counter()
    idx.train(base)
    fit = time.perf_counter() - t
    idx.add(base)
    t = time.perf_counter()
    _, I = idx.search(q, 10)
    dt = time.perf_counter() - t
    rec = float(np.mean([len(set(I[i]) & set(G[i])) / 10 for i in range(len(q))]))
    print(json.dumps(dict(spec=spec, bytes=int(idx.sa_code_size()), recall=round(rec, 4),
                          qps=round(len(q) / dt), fit_seconds=round(fit, 2))), flush=True)
