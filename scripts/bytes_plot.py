#!/usr/bin/env python3
"""Recall@10 (no rerank) against bytes per vector from scripts/codes_bytes.sh's JSON lines:
one line per family (the best row of the family at each size), rewa solid, FAISS dashed.
usage: bytes_plot.py OUT.png TITLE IN.jsonl"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def family(r):
    s = r["spec"]
    if r["lib"] == "faiss":
        return "FAISS RaBitQ (PCA first below 1 bit/dim)" if "RaBitQ" in s else "FAISS PQ / OPQ"
    if s.startswith("learned="):
        return "rewa learned (--qat runs; learned+opq+pq)"
    if "rabitq" in s:
        return "rewa rabitq (PCA first)"
    if "asign" in s:
        return "rewa hadamard + asign"
    return "rewa pq / opq+pq"


out, title, path = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [json.loads(l) for l in open(path) if l.strip()]
fams = {}
for r in rows:
    best = fams.setdefault(family(r), {})
    b = r["bytes"]
    if b not in best or r["recall"] > best[b]["recall"]:
        best[b] = r
fig, ax = plt.subplots(figsize=(8, 5.5))
for name, pts in sorted(fams.items()):
    xs = sorted(pts)
    ax.plot(xs, [pts[x]["recall"] for x in xs], "--" if name.startswith("FAISS") else "-",
            marker="o", label=name)
ax.set_xscale("log", base=2)
ax.set_xticks([8, 16, 32, 64])
ax.set_xticklabels(["8", "16", "32", "64"])
ax.set_xlabel("bytes per vector (as stored, factors included)")
ax.set_ylabel("recall@10 vs exact, no rerank")
ax.set_title(title)
ax.axhline(0.80, color="grey", lw=0.8, ls=":")
ax.grid(alpha=0.3)
ax.legend(fontsize=8, loc="lower right")
fig.tight_layout()
fig.savefig(out, dpi=110)
print("wrote", out)
