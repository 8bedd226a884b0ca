#!/usr/bin/env python3
"""FAISS codes of 32 bytes fitted on the documents themselves or on other vectors, recall@10
of held-out queries against exact search (the check behind results/2026-11-28-codes-32b.md).

usage: faiss_additive.py EMB_DIR OTHER.npy [NAME ...]
  EMB_DIR: docs.npy + queries.npy (e.g. ../shared/data/scifact/emb_all-MiniLM-L6-v2)
  OTHER.npy: vectors of the same model that are not the documents (e.g. the SciFact
  sentences, scripts/scifact_sentences.py + rewa embed)
  NAME: RQ<beam> (residual quantizer, 32 codebooks x 8 bits, decoded distances) or a FAISS
  factory string (inner product), e.g. OPQ32,PQ32. Default: RQ1 OPQ32,PQ32.
Each line: the code, what it was fitted on, recall@10, codebook bytes, seconds."""
import sys
import time

import faiss
import numpy as np

if len(sys.argv) < 3:
    sys.exit(__doc__)
faiss.omp_set_num_threads(2)
emb, other = sys.argv[1], sys.argv[2]
names = sys.argv[3:] or ["RQ1", "OPQ32,PQ32"]
x = np.load(f"{emb}/docs.npy").astype("float32")
q = np.load(f"{emb}/queries.npy").astype("float32")
tr = np.load(other).astype("float32")
for a in (x, q, tr):
    a /= np.linalg.norm(a, axis=1, keepdims=True)
d = x.shape[1]
flat = faiss.IndexFlatIP(d)
flat.add(x)
_, G = flat.search(q, 10)


def recall(I):
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, G)]))


for name in names:
    for fit in ("documents", "other"):
        t = time.time()
        if name.startswith("RQ"):
            idx = faiss.IndexResidualQuantizer(d, 32, 8, faiss.METRIC_L2,
                                               faiss.AdditiveQuantizer.ST_decompress)
            idx.rq.max_beam_size = int(name[2:] or 1)
            book = 32 * 256 * d * 4
        else:
            idx = faiss.index_factory(d, name, faiss.METRIC_INNER_PRODUCT)
            book = None
        idx.train(x if fit == "documents" else tr)
        idx.add(x)
        _, I = idx.search(q, 10)
        books = f"codebooks {book} B" if book else "codebooks (FAISS's)"
        print(f"{name}\tfit on {fit}\trecall@10 {recall(I):.4f}\tcode {idx.sa_code_size()} B"
              f"\t{books}\t{time.time() - t:.1f}s", flush=True)
