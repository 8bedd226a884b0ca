#!/usr/bin/env python3
"""`rewa embed` against sentence-transformers (torch, fp32) on the same texts, in one run.

    python scripts/embed_speed.py MODEL_DIR CORPUS.jsonl [--docs N] [--threads 2] [--repeat 3] [--rewa BIN]

Needs a virtualenv with sentence-transformers (and torch). Both embed the first N texts of
CORPUS (BEIR layout: (title + " " + text).strip()) with batch 32 and the model's
max_seq_length; each side is timed `--repeat` times, alternating, model load excluded, and
the best time is reported. Tokens are word pieces after truncation, special tokens included
(what `rewa embed --json` counts). The vectors of both are compared (min cosine).
Prints a Markdown table row per side and the ratio.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("corpus")
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rewa", default=os.environ.get("REWA_BIN", "target/release/rewa"))
    a = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(a.threads)
    lines = []
    with open(a.corpus, encoding="utf-8") as f:
        for line in f:
            lines.append(line)
            if len(lines) == a.docs:
                break
    docs = [json.loads(l) for l in lines]
    texts = [(d.get("title", "") + " " + d.get("text", "")).strip() for d in docs]

    st = SentenceTransformer(a.model, device="cpu")
    tok = st.tokenizer(texts, truncation=True, max_length=st.max_seq_length)["input_ids"]
    st_tokens = sum(len(t) for t in tok)
    st.encode(texts[:32], batch_size=a.batch)  # warm-up

    work = tempfile.mkdtemp()
    subset = os.path.join(work, "texts.jsonl")
    with open(subset, "w", encoding="utf-8") as f:
        f.writelines(lines)
    out = os.path.join(work, "v.npy")
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), CANDLE_NUM_THREADS=str(a.threads))

    st_best, rw_best, rw = float("inf"), float("inf"), None
    for _ in range(a.repeat):
        t = time.perf_counter()
        ref = st.encode(texts, batch_size=a.batch, convert_to_numpy=True)
        st_best = min(st_best, time.perf_counter() - t)
        r = subprocess.run(
            [a.rewa, "embed", "--model", a.model, "--input", subset, "--out", out, "--json",
             "--batch", str(a.batch)],
            capture_output=True, text=True, env=env, check=True)
        rw = json.loads(r.stdout)
        rw_best = min(rw_best, rw["seconds"])
    v = np.load(out)
    cos = (v * ref).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(ref, axis=1)
    assert rw["tokens"] == st_tokens, (rw["tokens"], st_tokens)

    name = os.path.basename(os.path.normpath(a.model))
    print(f"model {name}, {len(texts)} texts, {st_tokens} word pieces, {a.threads} threads, "
          f"batch {a.batch}, best of {a.repeat}; torch {torch.__version__}; min cosine {cos.min():.7f}")
    print("| side | seconds | tokens/s | texts/s |")
    print("|---|---:|---:|---:|")
    for side, s in (("sentence-transformers", st_best), ("rewa embed", rw_best)):
        print(f"| {side} | {s:.2f} | {st_tokens / s:,.0f} | {len(texts) / s:,.1f} |")
    print(f"rewa / sentence-transformers: {st_best / rw_best:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
