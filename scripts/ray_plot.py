"""QPS and p99 latency against clients, `rewa serve` beside Ray Serve over 1, 2 and 4 shards,
from scripts/ray_scale.py's rows (the ones with a serving pipeline).
usage: python scripts/ray_plot.py ROWS.jsonl OUT.png"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

rows = [json.loads(line) for line in open(sys.argv[1])]
rows = [r for r in rows if r["part"] == "serve" and r.get("pipeline")]
sides = sorted({r["side"] for r in rows}, key=lambda s: (not s.startswith("rewa"), s))
fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
for side in sides:
    rs = sorted((r for r in rows if r["side"] == side), key=lambda r: r["clients"])
    c = [r["clients"] for r in rs]
    a.plot(c, [r["qps"] for r in rs], marker="o", label=side)
    b.plot(c, [r["p99_ms"] for r in rs], marker="o", label=side)
for ax, what in ((a, "queries per second"), (b, "p99 latency, ms")):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("closed-loop clients (one query per request)")
    ax.set_ylabel(what)
    ax.grid(alpha=0.3)
b.set_yscale("log")
a.legend(fontsize=8)
fig.suptitle(f"1M x 768, {rows[0]['pipeline']}, one 2-core machine", fontsize=10)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
