#!/usr/bin/env python3
"""One rewa setting and one ScaNN setting timed alternately in one run (median of R rounds),
so that both see the same machine: rewa through `rewa search --json` (its in-process QPS; the
index stays in the page cache between rounds), ScaNN in this process, built once before the
rounds (search_batched_parallel on 2 threads). Prints one JSON line with both medians,
recalls and the ratio.
usage: pair_scann.py REWA_BIN REWA_INDEX REWA_PIPELINE BASE.npy LEAVES LEAVES_SEARCHED REORDER QUERIES GT.npy [ROUNDS]
  TILE=T (environment): time T copies of the queries (recall from the first copy)"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import scann

rb, ridx, rpipe, base_path, leaves, searched, reorder, qpath, gtpath = sys.argv[1:10]
leaves, searched, reorder = int(leaves), int(searched), int(reorder)
rounds = int(sys.argv[10]) if len(sys.argv) > 10 else 5
q = np.load(qpath).astype("float32")
G = np.load(gtpath)[:, :10]
nq = len(q)
tile = int(os.environ.get("TILE", "1"))
if tile > 1:
    q = np.tile(q, (tile, 1))
    qpath = tempfile.mktemp(suffix=".npy")
    np.save(qpath, q)
base = np.load(base_path, mmap_mode="r")
searcher = (
    scann.scann_ops_pybind.builder(np.ascontiguousarray(base, dtype="float32"), 10, "dot_product")
    .tree(num_leaves=leaves, num_leaves_to_search=searched, training_sample_size=min(len(base), 250_000))
    .score_ah(2, anisotropic_quantization_threshold=0.2)
    .reorder(reorder)
    .set_n_training_threads(2)
    .build()
)
searcher.set_num_threads(2)


def recall(I):
    return float(np.mean([len(set(a[:10]) & set(b)) / 10 for a, b in zip(I[:nq], G)]))


out = tempfile.mktemp(suffix=".npy")
rq, sq = [], []
searcher.search_batched_parallel(q[:200], 10, reorder, searched)
for _ in range(rounds):
    r = json.loads(subprocess.run([rb, "search", "--index", ridx, "--queries", qpath, "--pipeline", rpipe,
                                   "--out", out, "--json"], capture_output=True, text=True, check=True).stdout)
    rq.append(r["qps"])
    t = time.perf_counter()
    I, _ = searcher.search_batched_parallel(q, 10, reorder, searched)
    sq.append(len(q) / (time.perf_counter() - t))
rr, sr = recall(np.load(out)), recall(np.asarray(I))
print(json.dumps(dict(rewa=rpipe, rewa_recall=rr, rewa_qps=statistics.median(rq),
                      scann=f"leaves={leaves},searched={searched},reorder={reorder}", scann_recall=sr,
                      scann_qps=statistics.median(sq), ratio=statistics.median(rq) / statistics.median(sq),
                      rounds=rounds, tile=tile, rewa_all=[round(x) for x in rq], scann_all=[round(x) for x in sq])))
