#!/usr/bin/env bash
# Filtered search on N synthetic 768-d vectors (the set of scripts/scale1m.sh): a keyword field
# `tag` (t0 50%, t1 10%, t2 1%, t3 0.1% of the rows, t4 the rest) and a number `num` (uniform
# 0..999,999; the range [0, 10000) is 1%), stored with `rewa build --fields`; rewa's filtered
# search against FAISS's IndexFlatIP and IVFFlat with an IDSelectorBitmap and LanceDB's
# prefiltered IVF_PQ search (scripts/filtered_anchors.py, which also writes the filtered
# ground truth), same queries, 2 threads. Quiet machine: nothing else running.
# usage: scripts/filtered1m.sh WORKDIR DATA_DIR   (DATA_DIR: base.npy and eval.npy of scale1m.sh)
#   PY=venv/bin/python (numpy, faiss-cpu, lancedb, pyarrow)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:?usage: scripts/filtered1m.sh WORKDIR DATA_DIR}
D=${2:?usage: scripts/filtered1m.sh WORKDIR DATA_DIR}
PY=${PY:-python3}
mkdir -p "$W"
cargo build --release -q -p rewa-cli
R=$PWD/target/release/rewa
$PY - "$D/base.npy" "$W" <<'PY'
import sys, numpy as np
n = np.load(sys.argv[1], mmap_mode="r").shape[0]
w = sys.argv[2]
rng = np.random.default_rng(7)
u = rng.random(n)
lab = np.full(n, 4, dtype=np.int64)
lab[u < 0.5] = 0
lab[(u >= 0.5) & (u < 0.6)] = 1
lab[(u >= 0.6) & (u < 0.61)] = 2
lab[(u >= 0.61) & (u < 0.611)] = 3
num = rng.integers(0, 1_000_000, size=n).astype(np.int64)
np.save(f"{w}/labels.npy", lab)
np.save(f"{w}/num.npy", num)
with open(f"{w}/fields.jsonl", "w") as f:
    for l, m in zip(lab.tolist(), num.tolist()):
        f.write('{"tag": "t%d", "num": %d}\n' % (l, m))
PY
P="ivf2048r/8+pq32x4:100,exact:10"
rm -rf "$W/idx"
/usr/bin/time -f '{"seconds": %e, "peak_rss_kb": %M}' -o "$W/build.time" \
  $R build --base "$D/base.npy" --fields "$W/fields.jsonl" --pipeline "$P" --out "$W/idx" --json
cat "$W/build.time"; du -sh "$W/idx/docs"
# truth and FAISS (flat and IVF) first, then LanceDB
$PY scripts/filtered_anchors.py --base "$D/base.npy" --queries "$D/eval.npy" --labels "$W/labels.npy" \
  --values 0,1,2,3 --num "$W/num.npy" --range 0,10000 --no-lance --nlist 2048 --nprobes 8,32,128,512 \
  --threads 2 --reps 1 --out-truth "$W/gt/truth" > "$W/faiss.jsonl"
$PY scripts/filtered_rewa.py --rewa "$R" --index "$W/idx" --queries "$D/eval.npy" --truth-prefix "$W/gt/truth" \
  --pipeline "$P" \
  --filter 0 '{"must": [{"key": "tag", "match": {"value": "t0"}}]}' \
  --filter 1 '{"must": [{"key": "tag", "match": {"value": "t1"}}]}' \
  --filter 2 '{"must": [{"key": "tag", "match": {"value": "t2"}}]}' \
  --filter 3 '{"must": [{"key": "tag", "match": {"value": "t3"}}]}' \
  --filter range_0_10000 '{"must": [{"key": "num", "range": {"gte": 0, "lt": 10000}}]}' > "$W/rewa.jsonl"
$PY scripts/filtered_anchors.py --base "$D/base.npy" --queries "$D/eval.npy" --labels "$W/labels.npy" \
  --values 0,1,2,3 --num "$W/num.npy" --range 0,10000 --no-faiss-ivf --lance-dir "$W/lance" \
  --lance-partitions 1024 --lance-sub-vectors 96 --lance-nprobes 16,64,256 --lance-refine 10 \
  --lance-queries 200 --lance-flat on --lance-flat-queries 50 --threads 2 > "$W/lance.jsonl"
cat "$W/rewa.jsonl" "$W/faiss.jsonl" "$W/lance.jsonl"
