#!/usr/bin/env python3
"""FAISS anchors for the partitioned-search comparison (scripts/ann_compare.sh).

  ann_faiss.py build BASE OUTDIR [--nlist N] [--threads T] [--train ROWS] [NAME ...]
      builds HNSW32, IVF{N},PQ32 + IndexRefineFlat, IVF{N},Flat (inner product) and writes
      each to OUTDIR/<name>.faiss with its build time in OUTDIR/<name>.build.json; NAMEs pick
      among hnsw32, ivfflat, ivfpq32, ivfpq32fs (PQ{M}x4fs + IndexRefineFlat; --pqm M, default
      32, must divide the dimension: 25 for GloVe's 50) and ivfpq32sq8
      (IVF{N},PQ32 + IndexRefine with 8-bit scalar-quantized vectors: the refine that fits in
      memory when the float vectors do not). --train caps the training sample (default 256
      rows per list, FAISS's own cap).
  ann_faiss.py truth BASE QUERIES OUT.npy [K]
      exact top-K ids (inner product) of QUERIES over BASE
  ann_faiss.py search OUTDIR NAME QUERIES TRUTH.npy [--threads T] [--k K]
      loads one index and sweeps its search parameter (efSearch / nprobe / k_factor); prints one
      JSON line per setting with recall@K, QPS and the process's peak RSS. Run it once per
      index (a fresh process each), so RSS is that index's alone. TILE=T (environment) times
      T copies of the queries (recall from the first copy): 1,000 queries at 20,000 QPS last
      50 ms, too short to time. NPROBES=8,16,... and KFS=2,5,...
      (environment) set the IVF sweep's nprobes and refine k_factors.
"""
import json
import os
import resource
import sys
import time

import numpy as np

try:
    import faiss
except ImportError:
    sys.exit("needs faiss-cpu and numpy: python3 -m pip install faiss-cpu numpy")


def opt(name, default):
    if name in sys.argv:
        return type(default)(sys.argv[sys.argv.index(name) + 1])
    return default


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def recall(I, G, k):
    # the first len(G) rows: the queries (any further rows are copies, for timing)
    return float(np.mean([len(set(I[i, :k]) & set(G[i, :k])) / k for i in range(len(G))]))


def build(base_path, out, nlist, threads, train_rows):
    faiss.omp_set_num_threads(threads)
    os.makedirs(out, exist_ok=True)
    base = np.load(base_path, mmap_mode="r")
    n, d = base.shape
    ip = faiss.METRIC_INNER_PRODUCT
    names = ("hnsw32", "ivfpq32", "ivfflat", "ivfpq32fs", "ivfpq32sq8")
    which = [a for a in names if a in sys.argv[4:]] or ["ivfflat", "ivfpq32", "hnsw32"]
    for name in which:
        t = time.perf_counter()
        if name == "hnsw32":
            idx = faiss.IndexHNSWFlat(d, 32, ip)
            for s in range(0, n, 100_000):
                idx.add(np.ascontiguousarray(base[s:s + 100_000], dtype="float32"))
                print(f"{name}: {s + 100_000} added, {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
            full = idx
        else:
            spec = {"ivfpq32": f"IVF{nlist},PQ32", "ivfpq32sq8": f"IVF{nlist},PQ32",
                    "ivfpq32fs": f"IVF{nlist},PQ{opt('--pqm', 32)}x4fs"}.get(name, f"IVF{nlist},Flat")
            idx = faiss.index_factory(d, spec, ip)
            # FAISS trains its coarse quantizer on at most 256 points per list; give it that many
            rng = np.random.default_rng(1)
            rows = np.sort(rng.choice(n, size=min(n, 256 * nlist, train_rows), replace=False))
            sample = np.ascontiguousarray(base[rows], dtype="float32")
            idx.train(sample)
            if name == "ivfpq32sq8":
                full = faiss.IndexRefine(idx, faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, ip))
                full.train(sample)
            elif name.startswith("ivfpq"):
                full = faiss.IndexRefineFlat(idx)
            else:
                full = idx
            del sample
            for s in range(0, n, 100_000):
                full.add(np.ascontiguousarray(base[s:s + 100_000], dtype="float32"))
                if s % 1_000_000 == 0:
                    print(f"{name}: {s + 100_000} added, {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        secs = time.perf_counter() - t
        path = f"{out}/{name}.faiss"
        faiss.write_index(full, path)
        info = dict(name=name, spec=spec if name != "hnsw32" else "HNSW32", n=n, d=d, nlist=nlist,
                    threads=threads, build_seconds=secs,
                    disk_bytes=os.path.getsize(path), faiss=faiss.__version__)
        json.dump(info, open(f"{out}/{name}.build.json", "w"))
        print(json.dumps(info), flush=True)


def truth(base_path, q_path, out, k):
    faiss.omp_set_num_threads(2)
    base = np.load(base_path, mmap_mode="r")
    q = np.load(q_path).astype("float32")
    idx = faiss.IndexFlatIP(base.shape[1])
    for s in range(0, base.shape[0], 100_000):
        idx.add(np.ascontiguousarray(base[s:s + 100_000], dtype="float32"))
    _, G = idx.search(q, k)
    np.save(out, G.astype("int64"))


def search(out, name, q_path, gt_path, threads, k):
    faiss.omp_set_num_threads(threads)
    q = np.load(q_path).astype("float32")
    G = np.load(gt_path)
    q = np.tile(q, (int(os.environ.get("TILE", "1")), 1))
    t = time.perf_counter()
    idx = faiss.read_index(f"{out}/{name}.faiss")
    load_s = time.perf_counter() - t
    if name == "hnsw32":
        settings = [("efSearch", v) for v in (16, 18, 20, 24, 32, 64, 128, 256, 512)]
    elif name == "ivfflat":
        settings = [("nprobe", v) for v in (1, 2, 4, 8, 16, 32, 64, 128)]
    else:
        nprobes = [int(v) for v in os.environ.get("NPROBES", "8,16,32,64,128").split(",")]
        kfs = [int(v) for v in os.environ.get("KFS", "2,5,10,20").split(",")]
        settings = [(f"nprobe={p},k_factor", kf) for p in nprobes for kf in kfs]
    for label, v in settings:
        if name == "hnsw32":
            idx.hnsw.efSearch = v
        elif name == "ivfflat":
            idx.nprobe = v
        else:
            p = int(label.split("=")[1].split(",")[0])
            faiss.extract_index_ivf(idx.base_index).nprobe = p
            idx.k_factor = v
        idx.search(q[:50], k)  # warm-up
        t = time.perf_counter()
        _, I = idx.search(q, k)
        dt = time.perf_counter() - t
        print(json.dumps(dict(system="faiss", index=name, setting=f"{label}={v}", recall=recall(I, G, k),
                              qps=len(q) / dt, rss_mb=rss_mb(), load_seconds=load_s,
                              disk_bytes=os.path.getsize(f"{out}/{name}.faiss"))), flush=True)


if __name__ == "__main__":
    a = sys.argv
    if len(a) < 4:
        sys.exit(__doc__)
    if a[1] == "build":
        build(a[2], a[3], opt("--nlist", 1024), opt("--threads", 2), opt("--train", 1 << 62))
    elif a[1] == "truth":
        truth(a[2], a[3], a[4], int(a[5]) if len(a) > 5 else 10)
    elif a[1] == "search":
        search(a[2], a[3], a[4], a[5], opt("--threads", 2), opt("--k", 10))
    else:
        sys.exit(__doc__)
