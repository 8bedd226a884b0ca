#!/usr/bin/env python3
"""FAISS timings on the same files rewa reads, 2 threads, top-10.
usage: faiss_speed.py flat BASE.npy QUERIES.npy       IndexFlatIP on float32 vectors
       faiss_speed.py binary CODES.npy QCODES.npy     IndexBinaryFlat on uint8 packed codes
Prints one JSON object: {"method", "n", "n_queries", "qps", "seconds"}."""
import json, sys, time
import numpy as np
import faiss

faiss.omp_set_num_threads(2)
mode, base_p, q_p = sys.argv[1:4]
base, qs = np.load(base_p), np.load(q_p)
if mode == 'flat':
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(np.ascontiguousarray(base, dtype='float32'))
    qs = np.ascontiguousarray(qs, dtype='float32')
elif mode == 'binary':
    index = faiss.IndexBinaryFlat(base.shape[1] * 8)
    index.add(np.ascontiguousarray(base, dtype='uint8'))
    qs = np.ascontiguousarray(qs, dtype='uint8')
else:
    sys.exit(__doc__)
index.search(qs[:10], 10)  # warm-up
t = time.perf_counter()
_, ids = index.search(qs, 10)
dt = time.perf_counter() - t
print(json.dumps(dict(method='faiss ' + type(index).__name__, n=int(base.shape[0]), n_queries=int(qs.shape[0]),
                      qps=qs.shape[0] / dt, seconds=dt)))
