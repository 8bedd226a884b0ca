#!/usr/bin/env python3
"""Plots scripts/attention.sh's JSON lines: fidelity against top (one panel per model and
max_seq_len, a line per code size, the exact top-k selection dashed) and one layer's cost
against length (REWA over full attention, per setting and model); prints the tables as
Markdown.

usage: attention_plot.py RESULTS.jsonl OUT_PREFIX   (writes OUT_PREFIX-fidelity.png and
OUT_PREFIX-cost.png; needs matplotlib)
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    out = sys.argv[2]
    fid = [r for r in rows if r["step"] == "fidelity"]
    panels = sorted({(r["model"], r["max_seq_len"]) for r in fid})
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
        for ax, (m, n) in zip(axes[0], panels):
            sel = [r for r in fid if r["model"] == m and r["max_seq_len"] == n]

            def line(pred, label, style):
                pts = sorted(
                    (int(r["attention"].split("top=")[1].split(",")[0]), r["cos_mean"])
                    for r in sel
                    if pred(r["attention"])
                )
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)

            for bits in (32, 64, 128):
                line(lambda a, b=bits: a.startswith(f"rewa:bits={b},") and a.count(",") == 1,
                     f"Hamming, {bits} bits", "o-")
            line(lambda a: a.endswith("score=exact"), "exact top-k (no code)", "k--")
            line(lambda a: a.startswith("rewa:bits=64,") and a.endswith(",window=4"),
                 "64 bits + window=4", "r*")
            ax.set_xscale("log", base=2)
            ax.set_xticks([8, 16, 32, 64])
            ax.set_xticklabels(["8", "16", "32", "64"])
            ax.set_xlabel("top (keys kept per query, + the first token)")
            ax.set_ylabel("mean cosine to full attention")
            ax.set_title(f"{m}, max_seq_len {n}", fontsize=9)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(f"{out}-fidelity.png", dpi=110)
    cost = [r for r in rows if r["step"] == "cost"]
    if cost:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        keys = sorted({(r["model"], r["row"]["attention"]) for r in cost})
        for m, a in keys:
            pts = sorted(
                (r["row"]["cost"]["len"], r["row"]["cost"]["rewa_seconds"] / r["row"]["cost"]["full_seconds"])
                for r in cost
                if r["model"] == m and r["row"]["attention"] == a
            )
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if "MiniLM" in m else "s--",
                    label=f"{m.split('-')[1]} {a.removeprefix('rewa:')}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("text length (word pieces)")
        ax.set_ylabel("REWA / full attention, wall time per layer")
        ax.set_title("one layer, 12 heads, one thread (below 1: REWA faster)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(f"{out}-cost.png", dpi=110)


def tables(rows):
    fid = [r for r in rows if r["step"] == "fidelity"]
    for m in sorted({r["model"] for r in fid}):
        docs = next(r["docs"] for r in fid if r["model"] == m)
        print(f"\n### {m}: mean (min) cosine to full attention, first {docs} SciFact documents\n")
        lens = sorted({r["max_seq_len"] for r in fid if r["model"] == m})
        print("| attention | " + " | ".join(f"max_seq_len {n}" for n in lens) + " |")
        print("|---|" + "---:|" * len(lens))
        seen = []
        for r in fid:
            if r["model"] == m and r["attention"] not in seen:
                seen.append(r["attention"])
        for a in seen:
            cells = []
            for n in lens:
                x = [r for r in fid if r["model"] == m and r["max_seq_len"] == n and r["attention"] == a]
                cells.append(f"{x[0]['cos_mean']:.4f} ({x[0]['cos_min']:.3f})" if x else "")
            print(f"| `{a}` | " + " | ".join(cells) + " |")
    nd = [r for r in rows if r["step"] == "ndcg"]
    if nd:
        print("\n### SciFact nDCG@10 from text (300 test queries, whole corpus)\n")
        print("| model | max_seq_len | attention | nDCG@10 |")
        print("|---|---:|---|---:|")
        for r in nd:
            print(f"| {r['model']} | {r['max_seq_len']} | `{r['attention']}` | {r['ndcg_at_10']:.4f} |")
    cost = [r for r in rows if r["step"] == "cost"]
    if cost:
        print("\n### One layer (12 heads), one thread: milliseconds, REWA / full\n")
        lens = sorted({r["row"]["cost"]["len"] for r in cost})
        print("| model | attention | " + " | ".join(str(n) for n in lens) + " |")
        print("|---|---|" + "---:|" * len(lens))
        for m, a in sorted({(r["model"], r["row"]["attention"]) for r in cost}):
            cells = []
            for n in lens:
                x = [r["row"]["cost"] for r in cost if r["model"] == m and r["row"]["attention"] == a and r["row"]["cost"]["len"] == n]
                cells.append(f"{x[0]['full_seconds']*1e3:.1f} / {x[0]['rewa_seconds']*1e3:.1f} = **{x[0]['rewa_seconds']/x[0]['full_seconds']:.2f}**" if x else "")
            print(f"| {m} | `{a}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
    tables([json.loads(l) for l in open(sys.argv[1]) if l.strip()])
