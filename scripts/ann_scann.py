#!/usr/bin/env python3
"""ScaNN anchor for the partitioned-search comparisons (scripts/scale_compare.sh).

  ann_scann.py BASE QUERIES TRUTH.npy [--leaves 2000] [--threads 2] [--k 10]
      builds ScaNN (dot product: the inputs are unit vectors for cosine) with `--leaves`
      partitions, anisotropic hashing of 2 dims per 4-bit code and an exact reorder, as
      ScaNN's README configures it; then sweeps leaves searched and the reorder depth, one
      JSON line per setting: recall@K against TRUTH, QPS (search_batched_parallel on
      `--threads` threads), peak RSS, build seconds. TILE=T (environment) times T copies of
      the queries (recall from the first copy).
"""
import json
import os
import resource
import sys
import time

import numpy as np

try:
    import scann
except ImportError:
    sys.exit("needs scann and numpy: python3 -m pip install scann numpy")


def opt(name, default):
    if name in sys.argv:
        return type(default)(sys.argv[sys.argv.index(name) + 1])
    return default


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    base = np.load(sys.argv[1], mmap_mode="r")
    q = np.load(sys.argv[2]).astype("float32")
    G = np.load(sys.argv[3])
    leaves, threads, k = opt("--leaves", 2000), opt("--threads", 2), opt("--k", 10)
    nq = len(q)
    q = np.tile(q, (int(os.environ.get("TILE", "1")), 1))
    t = time.perf_counter()
    searcher = (
        scann.scann_ops_pybind.builder(np.ascontiguousarray(base, dtype="float32"), k, "dot_product")
        .tree(num_leaves=leaves, num_leaves_to_search=min(120, leaves),
              training_sample_size=min(len(base), 250_000))
        .score_ah(2, anisotropic_quantization_threshold=0.2)
        .reorder(150)
        .set_n_training_threads(threads)
        .build()
    )
    build_s = time.perf_counter() - t
    searcher.set_num_threads(threads)
    for leaves_s in (10, 20, 30, 40, 60, 80, 120, 160, 240):
        if leaves_s > leaves:
            continue
        for reorder in (30, 50, 100, 150, 250):
            searcher.search_batched_parallel(q[:200], k, reorder, leaves_s)  # warm-up
            t = time.perf_counter()
            I, _ = searcher.search_batched_parallel(q, k, reorder, leaves_s)
            dt = time.perf_counter() - t
            I = np.asarray(I)
            rec = float(np.mean([len(set(I[i, :k]) & set(G[i, :k])) / k for i in range(nq)]))
            print(json.dumps(dict(system="scann", index=f"scann{leaves}",
                                  setting=f"leaves={leaves_s},reorder={reorder}", recall=rec,
                                  qps=len(q) / dt, build_seconds=build_s,
                                  rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                  scann=getattr(scann, "__version__", "1.4.2"))), flush=True)


if __name__ == "__main__":
    main()
