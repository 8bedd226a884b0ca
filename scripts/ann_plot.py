#!/usr/bin/env python3
"""Recall@10 vs QPS from scripts/ann_compare.sh's JSON lines: the best QPS reached at each
recall (the Pareto front) per index. usage: ann_plot.py ann.jsonl out.png [title]"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = [r for r in rows if "recall" in r]
labels = {
    ("faiss", "hnsw32"): "FAISS HNSW32 (efSearch)",
    ("faiss", "ivfpq32"): "FAISS IVF,PQ32 + refine",
    ("faiss", "ivfflat"): "FAISS IVF,Flat",
    ("faiss", "ivfpq32fs"): "FAISS IVF,PQx4fs + refine (nprobe, k_factor)",
    ("rewa", "sign"): "rewa ivf+hadamard256+sign, exact rerank",
    ("rewa", "flat"): "rewa ivf+flat",
    ("rewa", "scan"): "rewa full scan sign, exact rerank",
    ("rewa", "s384-int8"): "rewa hadamard384+sign, int8 rerank",
    ("rewa", "s384-exact"): "rewa hadamard384+sign, exact rerank",
}
# any other (system, index) pair, e.g. ScaNN's or this session's rewa indexes, under its own name
for r in rows:
    labels.setdefault((r["system"], r["index"]), f"{r['system']} {r['index']}")
fig, ax = plt.subplots(figsize=(8, 5.5))
for key, label in labels.items():
    pts = sorted((r["recall"], r["qps"]) for r in rows if (r["system"], r["index"]) == key)
    if not pts:
        continue
    front = []
    for rec, qps in sorted(pts, key=lambda p: -p[0]):
        if not front or qps > front[-1][1]:
            front.append((rec, qps))
    front.sort()
    mine = [r for r in rows if (r["system"], r["index"]) == key]
    rss = max(r["rss_mb"] for r in mine)
    mem = f"peak RSS {rss:.0f} MB"
    if key[0] == "rewa" and any("rss_anon_mb" in r for r in mine):
        mem += f", anon {max(r.get('rss_anon_mb', 0) for r in mine):.0f}"
    ax.plot([p[0] for p in front], [p[1] for p in front], "o-" if key[0] == "rewa" else "s--",
            label=f"{label} ({mem})")
ax.set_xlabel("recall@10 (held-out queries vs exact)")
ax.set_ylabel("queries per second (2 threads)")
ax.set_yscale("log")
ax.axvline(0.95, color="grey", lw=0.8, ls=":")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
ax.set_title(sys.argv[3] if len(sys.argv) > 3 else "1M x 768 synthetic (noise 0.1), k = 10")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
print("wrote", sys.argv[2])
