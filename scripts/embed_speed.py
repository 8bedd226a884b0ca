#!/usr/bin/env python3
"""Embedding speed, side by side: sentence-transformers (torch fp32), ONNX Runtime fp32 and int8,
`rewa embed` in f32 and int8, on the same texts, same threads, batch 32.

    python scripts/embed_speed.py MODEL_DIR CORPUS.jsonl [--docs 1000] [--threads 1,2]
        [--repeat 3] [--sides st,ort-fp32,ort-int8,ort-int8pc,rewa-f32,rewa-int8] [--rewa BIN]
        [--work DIR] [--out rows.jsonl]

Needs a virtualenv with sentence-transformers (torch), onnxruntime, onnx and onnxscript. The
ONNX model is exported from the same weights with `torch.onnx.export` (the transformer; mean
pooling and normalisation in numpy, as sentence-transformers does them) and quantized with
`onnxruntime.quantization.quantize_dynamic` into --work: `ort-int8` with its defaults (one
scale per weight tensor), `ort-int8pc` with `per_channel=True` (one per output channel, as rewa).

Every side runs in its own process (so peak memory is its own: ru_maxrss of that process),
loads its model, embeds the first N texts of CORPUS (BEIR layout: (title + " " +
text).strip()) once to warm up, then once timed; the sides alternate, --repeat rounds, and
the best time of each is kept. ONNX Runtime gets the texts sorted by length and padded per
batch, as sentence-transformers does. Tokens are word pieces after truncation, special tokens
included (what `rewa embed --json` counts). Each side's vectors are compared with
sentence-transformers' (min and mean cosine). Prints a Markdown table per thread count.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

SIDES = ["st", "ort-fp32", "ort-int8", "ort-int8pc", "rewa-f32", "rewa-int8"]


def read_texts(corpus, n):
    lines = []
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            lines.append(line)
            if len(lines) == n:
                break
    docs = [json.loads(l) for l in lines]
    return lines, [(d.get("title", "") + " " + d.get("text", "")).strip() for d in docs]


def export_onnx(model_dir, work):
    """model.onnx (fp32), model-int8.onnx (quantize_dynamic's defaults: one scale per weight
    tensor) and model-int8pc.onnx (per_channel=True, as rewa quantizes) in work, made once."""
    fp32 = os.path.join(work, "model.onnx")
    int8 = os.path.join(work, "model-int8.onnx")
    int8pc = os.path.join(work, "model-int8pc.onnx")
    if not os.path.exists(fp32):
        import torch
        from transformers import AutoModel, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        m = AutoModel.from_pretrained(model_dir).eval()
        enc = tok(["a b c", "d e f g h"], padding=True, return_tensors="pt")
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]
        axes = {n: {0: "batch", 1: "seq"} for n in names}
        axes["last_hidden_state"] = {0: "batch", 1: "seq"}

        class Wrap(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, *args):
                return self.m(**dict(zip(names, args))).last_hidden_state

        torch.onnx.export(Wrap(m), tuple(enc[n] for n in names), fp32, input_names=names,
                          output_names=["last_hidden_state"], dynamic_axes=axes,
                          opset_version=17, dynamo=False)
    if not os.path.exists(int8):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
    if not os.path.exists(int8pc):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(fp32, int8pc, weight_type=QuantType.QInt8, per_channel=True)
    return fp32, int8, int8pc


def worker(a):
    """One side in this process: prints {seconds, tokens, maxrss_kb} and writes the vectors."""
    lines, texts = read_texts(a.corpus, a.docs)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.worker == "st":
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(a.threads)
        st = SentenceTransformer(a.model, device="cpu")
        st.encode(texts[:64], batch_size=a.batch)
        t = time.perf_counter()
        v = st.encode(texts, batch_size=a.batch, convert_to_numpy=True)
        secs = time.perf_counter() - t
        tokens = sum(len(x) for x in st.tokenizer(texts, truncation=True,
                                                    max_length=st.max_seq_length)["input_ids"])
    else:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        paths = export_onnx(a.model, a.work)
        path = {"ort-fp32": paths[0], "ort-int8": paths[1], "ort-int8pc": paths[2]}[a.worker]
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        # the tokenizers package alone (not transformers, which would load torch and count
        # in this side's memory): truncation to max_seq_length, padding to the batch's longest
        max_len = json.load(open(os.path.join(a.model, "sentence_bert_config.json")))[
            "max_seq_length"]
        pad = json.load(open(os.path.join(a.model, "config.json"))).get("pad_token_id", 0)
        tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
        tok.no_padding()
        tok.enable_truncation(max_len)
        counted = [len(e.ids) for e in tok.encode_batch(texts)]
        tok.enable_padding(pad_id=pad)

        def run(batch_texts):
            order = np.argsort([-len(x) for x in batch_texts], kind="stable")
            out = np.zeros((len(batch_texts), 0), np.float32)
            rows = [None] * len(batch_texts)
            for s in range(0, len(order), a.batch):
                idx = order[s:s + a.batch]
                encs = tok.encode_batch([batch_texts[i] for i in idx])
                enc = {"input_ids": np.array([e.ids for e in encs], np.int64),
                       "attention_mask": np.array([e.attention_mask for e in encs], np.int64),
                       "token_type_ids": np.array([e.type_ids for e in encs], np.int64)}
                h = sess.run(None, {n: enc[n] for n in names})[0]
                m = enc["attention_mask"][..., None].astype(np.float32)
                p = (h * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
                p /= np.clip(np.linalg.norm(p, axis=1, keepdims=True), 1e-12, None)
                for i, r in zip(idx, p):
                    rows[i] = r
            return np.stack(rows) if rows else out

        run(texts[:64])
        t = time.perf_counter()
        v = run(texts)
        secs = time.perf_counter() - t
        tokens = sum(counted)
    np.save(a.vec_out, v.astype(np.float32))
    print(json.dumps({"seconds": secs, "tokens": tokens}))


def run_side(a, side, threads, subset, vec_out):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    if side.startswith("rewa"):
        cmd = [a.rewa, "embed", "--model", a.model, "--input", subset, "--out", vec_out,
               "--json", "--batch", str(a.batch), "--precision", side.split("-")[1]]
    else:
        cmd = [sys.executable, __file__, a.model, a.corpus, "--worker", side, "--docs",
               str(a.docs), "--batch", str(a.batch), "--work", a.work, "--vec-out", vec_out,
               "--threads", str(threads)]
    # a meter process between: its children's peak RSS is this side's alone
    meter = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
             "print('maxrss_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
             "file=sys.stderr); sys.exit(r.returncode)")
    p = subprocess.run([sys.executable, "-c", meter] + cmd, env=env, capture_output=True,
                       text=True)
    if p.returncode != 0:
        raise SystemExit(f"{side} failed:\n{p.stderr[-3000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["maxrss_kb"] = int(p.stderr.strip().splitlines()[-1].split()[-1])
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("corpus")
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--rewa", default=os.environ.get("REWA_BIN", "target/release/rewa"))
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--vec-out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.work = a.work or tempfile.mkdtemp()
    os.makedirs(a.work, exist_ok=True)
    if a.worker:
        a.threads = int(a.threads)
        return worker(a)

    sides = a.sides.split(",")
    if any(s.startswith("ort") for s in sides):
        export_onnx(a.model, a.work)
    lines, texts = read_texts(a.corpus, a.docs)
    subset = os.path.join(a.work, "texts.jsonl")
    with open(subset, "w", encoding="utf-8") as f:
        f.writelines(lines)
    name = os.path.basename(os.path.normpath(a.model))
    for threads in [int(t) for t in a.threads.split(",")]:
        best = {s: None for s in sides}
        peak = {s: 0 for s in sides}
        for _ in range(a.repeat):
            for s in sides:
                r = run_side(a, s, threads, subset, os.path.join(a.work, f"{s}.npy"))
                if best[s] is None or r["seconds"] < best[s]["seconds"]:
                    best[s] = r
                peak[s] = max(peak[s], r.get("maxrss_kb", 0))
        ref = np.load(os.path.join(a.work, "st.npy")) if "st" in sides else None
        print(f"\nmodel {name}, {len(texts)} texts, {threads} thread(s), batch {a.batch}, "
              f"best of {a.repeat} alternating rounds")
        print("| side | seconds | tokens/s | vs sentence-transformers | min cosine to ST | "
              "mean cosine to ST | peak RSS MB |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for s in sides:
            r = best[s]
            v = np.load(os.path.join(a.work, f"{s}.npy"))
            cmin = cmean = float("nan")
            if ref is not None:
                c = (v * ref).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(ref, axis=1)
                cmin, cmean = float(c.min()), float(c.mean())
            ratio = best["st"]["seconds"] / r["seconds"] if "st" in sides else float("nan")
            print(f"| {s} | {r['seconds']:.2f} | {r['tokens'] / r['seconds']:,.0f} | "
                  f"{ratio:.2f}x | {cmin:.5f} | {cmean:.6f} | {peak[s] / 1024:.0f} |")
            if a.out:
                with open(a.out, "a") as f:
                    f.write(json.dumps({"model": name, "threads": threads, "side": s,
                                        "docs": len(texts), "batch": a.batch,
                                        "seconds": r["seconds"], "tokens": r["tokens"],
                                        "min_cos_st": cmin, "mean_cos_st": cmean,
                                        "peak_rss_mb": peak[s] / 1024}) + "\n")


if __name__ == "__main__":
    sys.exit(main())
