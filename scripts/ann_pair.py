#!/usr/bin/env python3
"""One rewa setting and one FAISS setting timed alternately in one run (median of R rounds),
so that both see the same machine: rewa through `rewa search --json` (its in-process QPS; the
index stays in the page cache between rounds), FAISS in this process with its index loaded
once. Prints one JSON line with both medians, recalls and the ratio.
usage: ann_pair.py REWA_BIN REWA_INDEX REWA_PIPELINE FAISS_DIR FAISS_NAME FAISS_SETTING QUERIES GT.npy [ROUNDS]
  FAISS_SETTING: efSearch=N (hnsw32), nprobe=N (ivfflat) or nprobe=N,k_factor=K (ivfpq32)
  TILE=T (environment): time T copies of the queries (recall from the first copy), so that a
  round of a small query set lasts long enough to time"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import faiss
import numpy as np

rb, ridx, rpipe, fdir, fname, fset, qpath, gtpath = sys.argv[1:9]
rounds = int(sys.argv[9]) if len(sys.argv) > 9 else 5
faiss.omp_set_num_threads(2)
q = np.load(qpath).astype("float32")
G = np.load(gtpath)[:, :10]
nq = len(q)
tile = int(os.environ.get("TILE", "1"))
if tile > 1:
    q = np.tile(q, (tile, 1))
    qpath = tempfile.mktemp(suffix=".npy")
    np.save(qpath, q)
idx = faiss.read_index(f"{fdir}/{fname}.faiss")
kv = dict(p.split("=") for p in fset.split(","))
if "efSearch" in kv:
    idx.hnsw.efSearch = int(kv["efSearch"])
elif "k_factor" in kv:
    faiss.extract_index_ivf(idx.base_index).nprobe = int(kv["nprobe"])
    idx.k_factor = int(kv["k_factor"])
else:
    idx.nprobe = int(kv["nprobe"])


def recall(I):
    return float(np.mean([len(set(a[:10]) & set(b)) / 10 for a, b in zip(I[:nq], G)]))


out = tempfile.mktemp(suffix=".npy")
rq, fq = [], []
idx.search(q[:50], 10)
for _ in range(rounds):
    r = json.loads(subprocess.run([rb, "search", "--index", ridx, "--queries", qpath, "--pipeline", rpipe,
                                   "--out", out, "--json"], capture_output=True, text=True, check=True).stdout)
    rq.append(r["qps"])
    t = time.perf_counter()
    _, I = idx.search(q, 10)
    fq.append(len(q) / (time.perf_counter() - t))
rr, fr = recall(np.load(out)), recall(I)
print(json.dumps(dict(rewa=rpipe, rewa_recall=rr, rewa_qps=statistics.median(rq), faiss=f"{fname} {fset}",
                      faiss_recall=fr, faiss_qps=statistics.median(fq), ratio=statistics.median(rq) / statistics.median(fq),
                      rounds=rounds, tile=tile, rewa_all=[round(x) for x in rq], faiss_all=[round(x) for x in fq])))
