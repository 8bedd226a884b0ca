#!/usr/bin/env python3
"""rewa's filtered search beside the anchors of scripts/filtered_anchors.py: for each filter,
`rewa search --filter` over an index built with `--fields`, recall@10 against the filtered
ground truth filtered_anchors.py wrote (--out-truth), and QPS (best of --reps runs, all
queries in one call, the filter's row set found once per call and timed apart).

usage: filtered_rewa.py --rewa target/release/rewa --index IDX --queries Q.npy \
          --truth-prefix gt/truth --pipeline "ivf2048r/8+pq32x4:100,exact:10" \
          --filter 0 '{"must": [{"key": "tag", "match": {"value": "t0"}}]}' ...
Each --filter takes the truth file's suffix (a label value, or range_LO_HI) and the filter.
One JSON line per filter on stdout.
"""
import argparse, json, subprocess, sys, tempfile, os
import numpy as np


def recall(hits, truth):
    got, n = 0.0, 0
    for h, t in zip(hits, truth):
        t = set(int(x) for x in t if x >= 0)
        if not t:
            continue
        got += len(t & set(int(x) for x in h[:10] if x >= 0)) / len(t)
        n += 1
    return got / max(n, 1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rewa", required=True)
    p.add_argument("--index", required=True)
    p.add_argument("--queries", required=True)
    p.add_argument("--truth-prefix", required=True)
    p.add_argument("--pipeline", action="append", required=True)
    p.add_argument("--filter", nargs=2, action="append", required=True, metavar=("SUFFIX", "JSON"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "hits.npy")
        for suffix, f in a.filter:
            truth = np.load(f"{a.truth_prefix}_{suffix}.npy")
            for pipe in a.pipeline:
                best = None
                for _ in range(a.reps):
                    r = subprocess.run([a.rewa, "search", "--index", a.index, "--queries", a.queries,
                                        "--k", "10", "--pipeline", pipe, "--filter", f,
                                        "--threads", str(a.threads), "--out", out, "--json"],
                                       capture_output=True, text=True)
                    if r.returncode != 0:
                        sys.exit(r.stderr)
                    j = json.loads(r.stdout)
                    if best is None or j["qps"] > best["qps"]:
                        best = j
                hits = np.load(out)
                print(json.dumps({"system": "rewa", "pipeline": pipe, "filter": f, "suffix": suffix,
                                  "rows": best.get("filter", {}).get("rows"),
                                  "filter_seconds": best.get("filter", {}).get("seconds"),
                                  "recall_at_10": recall(hits, truth), "qps": best["qps"],
                                  "threads": a.threads, "n_queries": best["n_queries"]}), flush=True)


if __name__ == "__main__":
    main()
