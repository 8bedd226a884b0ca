#!/usr/bin/env python3
"""Filtered nearest-neighbour anchors: FAISS (flat + IVF) and LanceDB (IVF_PQ + flat).

Measures QPS and recall@10 of filtered top-10 search (cosine similarity) at
several filter selectivities, for reference ("anchor") systems:

  1. faiss-flat   IndexFlatIP + IDSelectorBitmap: exact filtered search. This is
                  also the ground truth for every recall number.
  2. faiss-ivf    IndexIVFFlat (or IndexIVFPQ wrapped in IndexRefineFlat with
                  --ivf-type pq) searched with SearchParametersIVF(sel=bitmap,
                  nprobe=...), sweeping nprobe.
  3. lancedb-ivf_pq  a LanceDB table (id, vector, label and/or num) with an
                  IVF_PQ index, queried with .where(<filter>, prefilter=True),
                  sweeping nprobes x refine_factor.
  4. lancedb-flat LanceDB brute force (bypass_vector_index) with the same
                  prefilter; run only when cheap (see --lance-flat).

All vectors (base and queries) are L2-normalised by this script, so inner
product == cosine for every system. FAISS uses METRIC_INNER_PRODUCT; LanceDB
uses distance type --lance-metric (default "cosine"; "dot" also valid on
normalised data).

Filters
  --labels L.npy --values 0,1,2,3   one filter per value: rows with label == value
  --num N.npy --range lo,hi         rows with lo <= num < hi (repeatable)
Both kinds may be given together; each filter is measured separately and its
actual selectivity (fraction of matching base rows) is printed.

Timing
  FAISS: all Q queries in one search call (batch); wall time; best of --reps.
  LanceDB: there is no batch query API, so a Python loop issues ONE QUERY AT A
  TIME (records say "query_mode": "one query at a time"); a few untimed warm-up
  queries run first; best of --lance-reps loops. Each query is
  tbl.search(q).distance_type(m).where(sql, prefilter=True).nprobes(p)
  [.refine_factor(r)].limit(10).select(["id", "_distance"]).to_arrow(), so the
  time includes LanceDB's Python/Arrow per-query overhead.
  Note: in lancedb 0.40, .nprobes(p) sets minimum = maximum = p (fixed
  probing, comparable to FAISS nprobe); --lance-adaptive sets only the minimum,
  letting Lance probe further when the filter leaves fewer than k results.
  QPS = n_queries / seconds.

Threads
  --threads T (default 2) -> faiss.omp_set_num_threads(T).
  LanceDB has no thread-count API. Before importing lancedb the script sets,
  only if not already set in the environment:
    LANCE_CPU_THREADS=T     Lance's compute-pool size setting. Observed with
                            lancedb 0.40 on a 2-core machine: the number of
                            "lance-cpu" threads stayed 2 for values 1, 2 and 4,
                            so treat it as a hint, not a cap.
    TOKIO_WORKER_THREADS=T  worker count of lancedb's tokio runtime (observed:
                            changes the number of "lancedb-tokio-w" threads).
  LANCE_IO_THREADS (IO pool) is left alone unless you set it yourself. LanceDB
  also runs a Python background event-loop thread that cannot be controlled.
  The values in force are echoed in every LanceDB record ("lance_env"). Since
  the LanceDB loop is sequential, it mostly measures single-query latency;
  FAISS batch QPS uses all T threads across queries (use --faiss-single for a
  like-for-like single-query FAISS number).

Output
  One JSON object per measured point on stdout; progress on stderr. Fields:
  system, index (parameters), selectivity, filter, n_matching, nprobe,
  refine_factor, recall_at_10, qps, threads, n_queries, query_mode, ...
  recall_at_10 is averaged over queries; per query it is
  |found ∩ truth| / |truth|, where truth is the exact filtered top-10 (fewer
  than 10 when fewer rows match the filter).

  --out-truth PREFIX saves the filtered ground-truth ids for each filter as
  int64 arrays of shape (Q, 10), padded with -1:
      PREFIX_<value>.npy            for --values filters
      PREFIX_range_<lo>_<hi>.npy    for --range filters

Example (small synthetic check):
  python scripts/filtered_anchors.py \\
      --base base.npy --queries queries.npy \\
      --labels labels.npy --values 0,1,2,3 \\
      --num num.npy --range 0,1000 \\
      --nlist 128 --nprobes 4,8,16,32 \\
      --lance-partitions 64 --lance-nprobes 4,8,16 --lance-refine 0,4 \\
      --threads 2 --out-truth gt/truth > results.jsonl

Requires numpy and faiss-cpu; LanceDB parts need `pip install lancedb pyarrow`
(skipped with a warning if not importable, or disable with --no-lance).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

K = 10


# --------------------------------------------------------------------------- utils

def log(*a):
    print("[filtered_anchors]", *a, file=sys.stderr, flush=True)


def die(msg):
    log("ERROR:", msg)
    sys.exit(2)


def emit(rec):
    print(json.dumps(rec), flush=True)


def int_list(s, name):
    try:
        vals = [int(x) for x in s.split(",") if x.strip() != ""]
    except ValueError:
        die(f"{name}: expected a comma-separated list of integers, got {s!r}")
    if not vals:
        die(f"{name}: empty list")
    return vals


def num_literal(x):
    """A number as an SQL literal (int if integral-looking input, else float)."""
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return repr(float(x))


def parse_number(s, name):
    s = s.strip()
    try:
        return int(s)
    except ValueError:
        pass
    try:
        v = float(s)
    except ValueError:
        die(f"{name}: not a number: {s!r}")
    if not np.isfinite(v):
        die(f"{name}: not finite: {s!r}")
    return v


def load_npy(path, what):
    if not os.path.isfile(path):
        die(f"{what}: file not found: {path}")
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        die(f"{what}: cannot load {path}: {e}")
    return a


def as_matrix(a, what):
    if a.ndim != 2:
        die(f"{what}: expected a 2-D array (N x d), got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        die(f"{what}: empty array, shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        die(f"{what}: expected float data, got dtype {a.dtype}")
    x = np.array(a, dtype=np.float32, order="C", copy=True)  # writable copy
    if not np.isfinite(x).all():
        die(f"{what}: contains NaN or inf")
    return x


def normalise(x, what):
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    nz = int((norms[:, 0] == 0).sum())
    if nz:
        log(f"warning: {what}: {nz} zero vectors left as zero")
    norms[norms == 0] = 1.0
    x /= norms
    return x


def recall_at_k(found, truth):
    """Mean over queries of |found_i ∩ truth_i| / |truth_i| (truth -1 padded).

    Queries whose truth is empty (no matching row) are excluded; returns
    None if all are empty."""
    found = np.asarray(found)
    tot, cnt = 0.0, 0
    for f, t in zip(found, truth):
        t = t[t >= 0]
        if t.size == 0:
            continue
        f = f[f >= 0]
        tot += np.intersect1d(f, t).size / t.size
        cnt += 1
    return (tot / cnt) if cnt else None


def best_time(fn, reps):
    best, out = None, None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        best = dt if best is None or dt < best else best
    return best, out


# --------------------------------------------------------------------------- args

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring for details and an example.")
    g = p.add_argument_group("data")
    g.add_argument("--base", required=True, help="base vectors .npy, float32 N x d")
    g.add_argument("--queries", required=True, help="query vectors .npy, float32 Q x d")
    g.add_argument("--max-queries", type=int, default=0,
                   help="use only the first M queries (0 = all)")
    g.add_argument("--labels", help="keyword label .npy, N integers (one per base row)")
    g.add_argument("--values", default="0,1,2,3",
                   help="label values to filter on, comma separated (default 0,1,2,3)")
    g.add_argument("--num", help="numeric attribute .npy, N numbers (one per base row)")
    g.add_argument("--range", action="append", default=[], metavar="LO,HI",
                   help="numeric range filter lo <= num < hi; repeatable")
    g.add_argument("--out-truth", metavar="PREFIX",
                   help="save ground-truth ids (Q x 10 int64, -1 padded) as "
                        "PREFIX_<value>.npy / PREFIX_range_<lo>_<hi>.npy")

    g = p.add_argument_group("general")
    g.add_argument("--threads", type=int, default=2, help="threads (default 2)")
    g.add_argument("--reps", type=int, default=3,
                   help="FAISS timing repetitions, best taken (default 3)")
    g.add_argument("--seed", type=int, default=123)

    g = p.add_argument_group("faiss")
    g.add_argument("--no-faiss-ivf", action="store_true", help="skip the FAISS IVF sweep")
    g.add_argument("--ivf-type", choices=["flat", "pq"], default="flat",
                   help="IndexIVFFlat (default) or IndexIVFPQ + IndexRefineFlat")
    g.add_argument("--nlist", type=int, default=2048, help="IVF lists (default 2048)")
    g.add_argument("--nprobes", default="8,16,32,64,128,256",
                   help="nprobe sweep (default 8,16,32,64,128,256)")
    g.add_argument("--pq-m", type=int, default=0,
                   help="IVFPQ sub-quantizers (default d/4; d must be divisible)")
    g.add_argument("--pq-nbits", type=int, default=8)
    g.add_argument("--k-factors", default="4",
                   help="IVFPQ refine k_factor sweep (default 4)")
    g.add_argument("--train-size", type=int, default=0,
                   help="IVF training sample size (0 = all rows, faiss subsamples "
                        "to 256*nlist itself)")
    g.add_argument("--faiss-single", action="store_true",
                   help="also time FAISS IVF one query at a time (like LanceDB)")

    g = p.add_argument_group("lancedb")
    g.add_argument("--no-lance", action="store_true", help="skip LanceDB")
    g.add_argument("--lance-dir",
                   help="directory for the LanceDB database (default: a temporary "
                        "directory deleted at exit)")
    g.add_argument("--lance-reuse", action="store_true",
                   help="reuse the table in --lance-dir if it exists with the same "
                        "row count, d, columns and index parameters (the vector "
                        "data itself is NOT compared: use one dir per data set)")
    g.add_argument("--lance-partitions", type=int, default=1024,
                   help="IVF_PQ num_partitions (default 1024)")
    g.add_argument("--lance-sub-vectors", type=int, default=0,
                   help="IVF_PQ num_sub_vectors (default d/8, must divide d)")
    g.add_argument("--lance-metric", choices=["cosine", "dot"], default="cosine")
    g.add_argument("--lance-nprobes", default="8,16,32,64,128",
                   help="nprobes sweep (default 8,16,32,64,128)")
    g.add_argument("--lance-refine", default="0,4",
                   help="refine_factor sweep, 0 = no refine (default 0,4)")
    g.add_argument("--lance-adaptive", action="store_true",
                   help="set only minimum_nprobes (Lance may then probe more "
                        "partitions when the filter leaves < k results); default "
                        "sets min = max = nprobes, comparable to FAISS nprobe")
    g.add_argument("--lance-no-scalar-index", action="store_true",
                   help="do not build BITMAP (label) / BTREE (num) scalar indices")
    g.add_argument("--lance-queries", type=int, default=0,
                   help="number of queries for LanceDB loops (0 = all)")
    g.add_argument("--lance-reps", type=int, default=1,
                   help="LanceDB timing repetitions, best taken (default 1)")
    g.add_argument("--lance-warmup", type=int, default=10,
                   help="untimed warm-up queries before each LanceDB point")
    g.add_argument("--lance-flat", choices=["auto", "on", "off"], default="auto",
                   help="LanceDB flat prefiltered search: auto = only when "
                        "matching_rows * d * queries <= --lance-flat-budget")
    g.add_argument("--lance-flat-budget", type=float, default=2e10)
    g.add_argument("--lance-flat-queries", type=int, default=200,
                   help="max queries for LanceDB flat (default 200)")
    a = p.parse_args(argv)
    if a.threads < 1:
        die("--threads must be >= 1")
    if a.reps < 1 or a.lance_reps < 1:
        die("--reps/--lance-reps must be >= 1")
    if not a.labels and not a.num:
        die("give at least one filter source: --labels (with --values) and/or "
            "--num (with --range)")
    if a.num and not a.range:
        die("--num given without --range lo,hi")
    if a.range and not a.num:
        die("--range given without --num")
    return a


def validate(args, n, d):
    """Check every sweep / index parameter before doing any expensive work."""
    if not args.no_faiss_ivf:
        if args.nlist < 1 or args.nlist > n:
            die(f"--nlist {args.nlist} must be in [1, {n}] (number of base rows)")
        args._nprobes = int_list(args.nprobes, "--nprobes")
        if any(p < 1 for p in args._nprobes):
            die(f"--nprobes: values must be >= 1, got {args.nprobes}")
        if args.ivf_type == "pq":
            m = args.pq_m or max(1, d // 4)
            if d % m:
                die(f"--pq-m {m} must divide d={d}")
            args._k_factors = int_list(args.k_factors, "--k-factors")
            if any(k < 1 for k in args._k_factors):
                die("--k-factors: values must be >= 1")
        else:
            args._k_factors = [None]
    if not args.no_lance:
        if args.lance_partitions < 1 or args.lance_partitions > n:
            die(f"--lance-partitions {args.lance_partitions} must be in [1, {n}]")
        nsub = args.lance_sub_vectors or max(1, d // 8)
        if d % nsub:
            die(f"--lance-sub-vectors {nsub} must divide d={d}")
        args._lance_nprobes = int_list(args.lance_nprobes, "--lance-nprobes")
        args._lance_refine = int_list(args.lance_refine, "--lance-refine")
        if any(p < 1 for p in args._lance_nprobes):
            die("--lance-nprobes: values must be >= 1")
        if any(r < 0 for r in args._lance_refine):
            die("--lance-refine: values must be >= 0 (0 = no refine)")


# --------------------------------------------------------------------------- filters

def build_filters(args, n):
    """List of dicts: name, tag (for truth files), mask (bool N), sql."""
    filters = []
    if args.labels:
        lab = np.asarray(load_npy(args.labels, "--labels"))
        lab = lab.reshape(-1) if lab.ndim == 2 and 1 in lab.shape else lab
        if lab.ndim != 1 or lab.shape[0] != n:
            die(f"--labels: expected shape ({n},), got {lab.shape}")
        if not np.issubdtype(lab.dtype, np.integer):
            if np.issubdtype(lab.dtype, np.floating) and np.all(lab == np.round(lab)):
                log("warning: --labels is float with integral values; casting to int64")
            else:
                die(f"--labels: expected integers, got dtype {lab.dtype}")
        lab = np.ascontiguousarray(lab, dtype=np.int64)
        args._label_col = lab
        for v in int_list(args.values, "--values"):
            filters.append(dict(name=f"label == {v}", tag=str(v),
                                mask=(lab == v), sql=f"label = {v}", kind="label"))
    else:
        args._label_col = None
    if args.num:
        num = np.asarray(load_npy(args.num, "--num"))
        num = num.reshape(-1) if num.ndim == 2 and 1 in num.shape else num
        if num.ndim != 1 or num.shape[0] != n:
            die(f"--num: expected shape ({n},), got {num.shape}")
        if np.issubdtype(num.dtype, np.integer):
            num = np.ascontiguousarray(num, dtype=np.int64)
        elif np.issubdtype(num.dtype, np.floating):
            num = np.ascontiguousarray(num, dtype=np.float64)
            if not np.isfinite(num).all():
                die("--num: contains NaN or inf")
        else:
            die(f"--num: expected numbers, got dtype {num.dtype}")
        args._num_col = num
        for r in args.range:
            parts = r.split(",")
            if len(parts) != 2:
                die(f"--range: expected lo,hi, got {r!r}")
            lo = parse_number(parts[0], "--range lo")
            hi = parse_number(parts[1], "--range hi")
            if not lo < hi:
                die(f"--range: need lo < hi, got {r!r}")
            filters.append(dict(
                name=f"{num_literal(lo)} <= num < {num_literal(hi)}",
                tag=f"range_{parts[0].strip()}_{parts[1].strip()}",
                mask=(num >= lo) & (num < hi),
                sql=f"num >= {num_literal(lo)} AND num < {num_literal(hi)}",
                kind="range"))
    else:
        args._num_col = None
    for f in filters:
        f["n_match"] = int(f["mask"].sum())
        f["selectivity"] = f["n_match"] / n
    return filters


# --------------------------------------------------------------------------- faiss

def make_selector(faiss, mask):
    """IDSelectorBitmap over a bool mask; returns (selector, bitmap) -- keep both
    alive for as long as the selector is used."""
    bitmap = np.packbits(mask.astype(np.uint8), bitorder="little")
    bitmap = np.ascontiguousarray(bitmap)
    sel = faiss.IDSelectorBitmap(mask.shape[0], faiss.swig_ptr(bitmap))
    return sel, bitmap


def build_faiss_ivf(faiss, args, xb):
    n, d = xb.shape
    nlist = args.nlist
    if nlist < 1:
        die("--nlist must be >= 1")
    if n < nlist:
        die(f"--nlist {nlist} > number of base rows {n}")
    if n < 39 * nlist:
        log(f"warning: only {n} rows for nlist={nlist} (< 39 per list); "
            "clustering will be poor — consider a smaller --nlist")
    quantizer = faiss.IndexFlatIP(d)
    params = dict(type="IVFFlat" if args.ivf_type == "flat" else "IVFPQ+RefineFlat",
                  nlist=nlist, metric="IP (normalised = cosine)")
    if args.ivf_type == "flat":
        ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index = ivf
    else:
        m = args.pq_m or max(1, d // 4)
        if d % m:
            die(f"--pq-m {m} must divide d={d}")
        ivf = faiss.IndexIVFPQ(quantizer, d, nlist, m, args.pq_nbits,
                               faiss.METRIC_INNER_PRODUCT)
        index = faiss.IndexRefineFlat(ivf)
        params.update(pq_m=m, pq_nbits=args.pq_nbits)
    if args.train_size and args.train_size < n:
        rng = np.random.default_rng(args.seed)
        idx = np.sort(rng.choice(n, args.train_size, replace=False))
        xt = xb[idx]
    else:
        xt = xb
    params["train_size"] = int(xt.shape[0])
    t0 = time.perf_counter()
    index.train(xt)
    index.add(xb)
    params["build_s"] = round(time.perf_counter() - t0, 3)
    log(f"faiss {params['type']} built in {params['build_s']} s")
    # keep the quantizer alive (SWIG does not own it)
    return index, ivf, quantizer, params


def save_truth(args, f, gt):
    if not args.out_truth:
        return
    path = f"{args.out_truth}_{f['tag']}.npy"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.save(path, gt.astype(np.int64))
    log(f"  truth saved: {path}")


def run_faiss(args, xb, xq, filters):
    import faiss
    faiss.omp_set_num_threads(args.threads)
    nq = xq.shape[0]
    log(f"faiss {faiss.__version__}, omp threads = {args.threads}")

    flat = faiss.IndexFlatIP(xb.shape[1])
    flat.add(xb)
    truths = {}
    ivf_bundle = None
    if not args.no_faiss_ivf:
        ivf_bundle = build_faiss_ivf(faiss, args, xb)
        nprobes, kfs = args._nprobes, args._k_factors

    for f in filters:
        base_rec = dict(selectivity=f["selectivity"], filter=f["name"],
                        n_matching=f["n_match"], threads=args.threads,
                        n_queries=nq, k=K)
        log(f"filter {f['name']}: {f['n_match']} / {xb.shape[0]} rows match "
            f"(selectivity {f['selectivity']:.6f})")
        if f["n_match"] == 0:
            log("  no matching rows: skipped (recall undefined)")
            gt = np.full((nq, K), -1, dtype=np.int64)
            truths[f["tag"]] = gt
            emit(dict(system="faiss-flat", index=None, nprobe=None, refine_factor=None,
                      recall_at_10=None, qps=None, seconds=None, query_mode="batch",
                      note="skipped: no base row matches the filter", **base_rec))
            save_truth(args, f, gt)
            continue
        sel, bitmap = make_selector(faiss, f["mask"])

        # 1. exact filtered search = ground truth
        sp = faiss.SearchParameters()
        sp.sel = sel
        secs, (_, gt) = best_time(lambda: flat.search(xq, K, params=sp), args.reps)
        gt = gt.astype(np.int64)
        truths[f["tag"]] = gt
        emit(dict(system="faiss-flat", index=dict(type="IndexFlatIP + IDSelectorBitmap",
                                                  metric="IP (normalised = cosine)"),
                  nprobe=None, refine_factor=None, recall_at_10=1.0,
                  qps=nq / secs, seconds=secs, query_mode="batch",
                  note="exact; ground truth", **base_rec))
        save_truth(args, f, gt)

        # 2. IVF sweep
        if ivf_bundle is None:
            continue
        index, ivf, _q, iparams = ivf_bundle
        for kf in kfs:
            for nprobe in nprobes:
                ivp = faiss.SearchParametersIVF(sel=sel, nprobe=min(nprobe, iparams["nlist"]))
                if kf is None:
                    params = ivp
                else:
                    params = faiss.IndexRefineSearchParameters(
                        k_factor=float(kf), base_index_params=ivp)
                secs, (_, ids) = best_time(
                    lambda: index.search(xq, K, params=params), args.reps)
                rec = recall_at_k(ids, gt)
                emit(dict(system="faiss-ivf", index=iparams, nprobe=nprobe,
                          refine_factor=kf, recall_at_10=rec, qps=nq / secs,
                          seconds=secs, query_mode="batch", **base_rec))
                log(f"  faiss-ivf nprobe={nprobe} kf={kf}: recall {rec:.4f} "
                    f"qps {nq / secs:.1f}")
                if args.faiss_single:
                    def loop():
                        out = np.empty((nq, K), dtype=np.int64)
                        for i in range(nq):
                            out[i] = index.search(xq[i:i + 1], K, params=params)[1][0]
                        return out
                    secs1, ids1 = best_time(loop, 1)
                    emit(dict(system="faiss-ivf", index=iparams, nprobe=nprobe,
                              refine_factor=kf, recall_at_10=recall_at_k(ids1, gt),
                              qps=nq / secs1, seconds=secs1,
                              query_mode="one query at a time", **base_rec))
        del sel, bitmap
    return truths


# --------------------------------------------------------------------------- lancedb

LANCE_ENV_KEYS = ("LANCE_CPU_THREADS", "LANCE_IO_THREADS", "TOKIO_WORKER_THREADS",
                  "LANCE_IO_CORE_RESERVATION")


def set_lance_env(threads):
    """Must run before lancedb is imported (its runtimes read these at start)."""
    for key in ("LANCE_CPU_THREADS", "TOKIO_WORKER_THREADS"):
        if key not in os.environ:
            os.environ[key] = str(threads)


def lance_env():
    return {k: os.environ.get(k) for k in LANCE_ENV_KEYS if os.environ.get(k) is not None}


def build_lance_table(args, xb, lancedb, pa):
    n, d = xb.shape
    nparts = args.lance_partitions
    nsub = args.lance_sub_vectors or max(1, d // 8)
    if d % nsub:
        die(f"--lance-sub-vectors {nsub} must divide d={d}")
    if nparts < 1 or nparts > n:
        die(f"--lance-partitions {nparts} must be in [1, {n}]")
    if n < 39 * nparts:
        log(f"warning: only {n} rows for {nparts} Lance partitions; "
            "consider a smaller --lance-partitions")
    iparams = dict(type="IVF_PQ", num_partitions=nparts, num_sub_vectors=nsub,
                   num_bits=8, metric=args.lance_metric,
                   scalar_index=not args.lance_no_scalar_index)

    tmp = None
    if args.lance_dir:
        root = args.lance_dir
        os.makedirs(root, exist_ok=True)
    else:
        tmp = root = tempfile.mkdtemp(prefix="filtered_anchors_lance_")
    db = lancedb.connect(root)
    name = "vectors"
    meta_path = os.path.join(root, "filtered_anchors_meta.json")
    want_meta = dict(n=n, d=d, index=dict(iparams),
                     has_label=args._label_col is not None,
                     has_num=args._num_col is not None)
    if args.lance_reuse and os.path.isfile(meta_path):
        try:
            with open(meta_path) as fh:
                meta = json.load(fh)
            if meta.get("params") == want_meta:
                tbl = db.open_table(name)
                if tbl.count_rows() == n:
                    log(f"lancedb: reusing table in {root}")
                    iparams["build_s"] = meta.get("build_s")
                    iparams["reused"] = True
                    return db, tbl, iparams, tmp
            log("lancedb: existing table differs (rows or parameters); rebuilding")
        except Exception as e:  # noqa: BLE001
            log(f"lancedb: cannot reuse ({e}); rebuilding")

    cols = {
        "id": pa.array(np.arange(n, dtype=np.int64)),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(xb.reshape(-1)), d),
    }
    if args._label_col is not None:
        cols["label"] = pa.array(args._label_col)
    if args._num_col is not None:
        cols["num"] = pa.array(args._num_col)
    table = pa.table(cols)
    t0 = time.perf_counter()
    tbl = db.create_table(name, data=table, mode="overwrite")
    t_ingest = time.perf_counter() - t0
    log(f"lancedb: table written ({n} rows) in {t_ingest:.2f} s; building IVF_PQ "
        f"(partitions={nparts}, sub_vectors={nsub}, metric={args.lance_metric})")
    t0 = time.perf_counter()
    try:  # unified index API (lancedb >= 0.25)
        from lancedb.index import BTree, Bitmap, IvfPq
        new_api = True
    except ImportError:
        new_api = False
    if new_api:
        tbl.create_index("vector", replace=True,
                         config=IvfPq(distance_type=args.lance_metric,
                                      num_partitions=nparts, num_sub_vectors=nsub))
    else:
        tbl.create_index(metric=args.lance_metric, num_partitions=nparts,
                         num_sub_vectors=nsub, vector_column_name="vector",
                         index_type="IVF_PQ", replace=True)
    t_index = time.perf_counter() - t0
    t_scalar = 0.0
    if not args.lance_no_scalar_index:
        t0 = time.perf_counter()
        for col, present, kind in (("label", args._label_col is not None, "BITMAP"),
                                   ("num", args._num_col is not None, "BTREE")):
            if not present:
                continue
            if new_api:
                tbl.create_index(col, replace=True,
                                 config=Bitmap() if kind == "BITMAP" else BTree())
            else:
                tbl.create_scalar_index(col, index_type=kind, replace=True)
        t_scalar = time.perf_counter() - t0
    iparams["build_s"] = round(t_index, 3)
    iparams["ingest_s"] = round(t_ingest, 3)
    iparams["scalar_index_s"] = round(t_scalar, 3)
    log(f"lancedb: IVF_PQ built in {t_index:.2f} s, scalar indices {t_scalar:.2f} s")
    with open(meta_path, "w") as fh:
        json.dump(dict(params=want_meta, build_s=iparams["build_s"]), fh)
    return db, tbl, iparams, tmp


def lance_loop(tbl, xq, make_query, warmup, reps):
    """Single-query loop; returns (best seconds, ids Q x K)."""
    nq = xq.shape[0]
    for i in range(min(warmup, nq)):
        make_query(xq[i]).to_arrow()

    def loop():
        out = np.full((nq, K), -1, dtype=np.int64)
        for i in range(nq):
            res = make_query(xq[i]).to_arrow()
            ids = res.column("id").to_numpy()
            out[i, :len(ids)] = ids[:K]
        return out
    return best_time(loop, reps)


def run_lance(args, xb, xq, filters, truths):
    try:
        import lancedb
        import pyarrow as pa
    except Exception as e:  # noqa: BLE001
        log(f"warning: lancedb/pyarrow not importable ({e}); LanceDB skipped")
        return
    log(f"lancedb {lancedb.__version__}, pyarrow {pa.__version__}, env {lance_env()}")
    nq_all = xq.shape[0]
    nq = min(args.lance_queries, nq_all) if args.lance_queries else nq_all
    xq = xq[:nq]
    db, tbl, iparams, tmp = build_lance_table(args, xb, lancedb, pa)
    nprobes, refines = args._lance_nprobes, args._lance_refine
    env = lance_env()
    d = xb.shape[1]
    try:
        for f in filters:
            if f["n_match"] == 0:
                continue
            gt = truths[f["tag"]][:nq]
            base_rec = dict(selectivity=f["selectivity"], filter=f["name"],
                            n_matching=f["n_match"], threads=args.threads,
                            n_queries=nq, k=K, query_mode="one query at a time",
                            lance_env=env, where=f["sql"], prefilter=True)
            log(f"lancedb filter {f['name']} (where \"{f['sql']}\")")
            for rf in refines:
                for nprobe in nprobes:
                    # "_distance" is selected explicitly: leaving it out makes
                    # Lance log a deprecation warning on every query.
                    def make_query(q, nprobe=nprobe, rf=rf, sql=f["sql"]):
                        b = (tbl.search(q, vector_column_name="vector")
                             .distance_type(args.lance_metric)
                             .where(sql, prefilter=True)
                             .limit(K).select(["id", "_distance"]))
                        if args.lance_adaptive:
                            b = b.minimum_nprobes(nprobe)
                        else:
                            b = b.nprobes(nprobe)
                        if rf > 0:
                            b = b.refine_factor(rf)
                        return b
                    secs, ids = lance_loop(tbl, xq, make_query, args.lance_warmup,
                                           args.lance_reps)
                    rec = recall_at_k(ids, gt)
                    emit(dict(system="lancedb-ivf_pq", index=iparams, nprobe=nprobe,
                              refine_factor=(rf or None), recall_at_10=rec,
                              qps=nq / secs, seconds=secs,
                              adaptive_nprobes=args.lance_adaptive, **base_rec))
                    log(f"  lancedb nprobes={nprobe} refine={rf}: recall "
                        f"{rec if rec is None else round(rec, 4)} qps {nq / secs:.1f}")

            # flat prefiltered (brute force over matching rows)
            nfq = min(nq, args.lance_flat_queries)
            cost = f["n_match"] * d * nfq
            run_flat = (args.lance_flat == "on" or
                        (args.lance_flat == "auto" and cost <= args.lance_flat_budget))
            if not run_flat:
                if args.lance_flat == "off":
                    log("  lancedb flat skipped (--lance-flat off)")
                else:
                    log(f"  lancedb flat skipped (est. cost {cost:.2g} > "
                        f"--lance-flat-budget {args.lance_flat_budget:.2g}; "
                        "use --lance-flat on)")
                continue

            def make_flat(q, sql=f["sql"]):
                return (tbl.search(q, vector_column_name="vector")
                        .distance_type(args.lance_metric)
                        .where(sql, prefilter=True).bypass_vector_index()
                        .limit(K).select(["id", "_distance"]))
            secs, ids = lance_loop(tbl, xq[:nfq], make_flat, min(args.lance_warmup, 3),
                                   args.lance_reps)
            rec = recall_at_k(ids, gt[:nfq])
            rec_base = dict(base_rec, n_queries=nfq)
            emit(dict(system="lancedb-flat", index=dict(type="none (bypass_vector_index)",
                                                        metric=args.lance_metric,
                                                        scalar_index=iparams["scalar_index"]),
                      nprobe=None, refine_factor=None, recall_at_10=rec,
                      qps=nfq / secs, seconds=secs, **rec_base))
            log(f"  lancedb flat: recall {rec if rec is None else round(rec, 4)} "
                f"qps {nfq / secs:.1f}")
    finally:
        del tbl, db
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    if not args.no_lance:
        set_lance_env(args.threads)   # before any lancedb import

    xb = as_matrix(load_npy(args.base, "--base"), "--base")
    xq = as_matrix(load_npy(args.queries, "--queries"), "--queries")
    if xb.shape[1] != xq.shape[1]:
        die(f"dimension mismatch: base d={xb.shape[1]}, queries d={xq.shape[1]}")
    if args.max_queries:
        xq = np.ascontiguousarray(xq[:args.max_queries])
    if xb.shape[0] < K:
        die(f"need at least {K} base rows, got {xb.shape[0]}")
    xb = normalise(xb, "base")
    xq = normalise(xq, "queries")
    log(f"base {xb.shape}, queries {xq.shape}, threads {args.threads}")

    validate(args, xb.shape[0], xb.shape[1])
    filters = build_filters(args, xb.shape[0])
    truths = run_faiss(args, xb, xq, filters)
    if not args.no_lance:
        run_lance(args, xb, xq, filters, truths)
    log("done")


if __name__ == "__main__":
    main()
