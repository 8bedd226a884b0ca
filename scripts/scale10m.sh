#!/usr/bin/env bash
# Ten million synthetic 768-d vectors (30.7 GB of float32, more than a 24 GiB machine's memory)
# written by `rewa synth` in chunks, built by the streaming build and searched with the float
# vectors on disk: synth and build time and peak RSS, disk and resident bytes, recall@10 and
# QPS (2 threads) warm and cold (the vectors file dropped from the page cache before the run),
# p50/p99 latency per query on one thread; then FAISS IVF{NLIST},PQ32 + an 8-bit refine (the
# refine that fits in memory) on the same files. Needs about 62 GB of free disk (the input and
# the index's copy of the vectors). Writes WORKDIR/scale10m.jsonl. Nothing else running.
# usage: scripts/scale10m.sh WORKDIR [N] [NLIST]
#   PY=venv/bin/python (numpy; faiss-cpu for the anchor)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:?usage: scripts/scale10m.sh WORKDIR [N] [NLIST]}
N=${2:-10000000}
NLIST=${3:-8192}
PY=${PY:-python3}
mkdir -p "$W"
cargo build --release -q -p rewa-cli
R=$PWD/target/release/rewa
OUT=$W/scale10m.jsonl
t() { /usr/bin/time -f '{"seconds": %e, "peak_rss_kb": %M}' -o "$W/time.json" "$@"; }
if [ ! -f "$W/d/base.npy" ]; then
  t $R synth --classes $((N / 100)) --per-class 100 --queries-per-class 1 --new-classes 0 --dim 768 --noise 0.1 --seed 2 --out "$W/d"
  echo "{\"step\": \"synth $N x 768\", \"time\": $(cat "$W/time.json")}" >> "$OUT"
fi
if [ ! -f "$W/ix/manifest.json" ]; then
  t $R build --base "$W/d/base.npy" --pipeline "ivf${NLIST}r/16+pq192x4:100,exact:10" --out "$W/ix" --json > /dev/null
  echo "{\"step\": \"build\", \"time\": $(cat "$W/time.json"), \"info\": $($R info --index "$W/ix" --json)}" >> "$OUT"
fi
# 1,000 held-out queries (never in the base); exact top-10 by one streaming pass over the input
[ -f "$W/eval.npy" ] || $PY -c "import numpy as np; np.save('$W/eval.npy', np.load('$W/d/queries_same.npy')[:1000])"
[ -f "$W/gt.npy" ] || $PY - "$W" <<'PY'
import sys, time, numpy as np
w = sys.argv[1]
b = np.load(f'{w}/d/base.npy', mmap_mode='r'); q = np.load(f'{w}/eval.npy').astype('float32')
q /= np.linalg.norm(q, axis=1, keepdims=True)
bd = np.full((len(q), 10), -np.inf, dtype='float32'); bi = np.zeros((len(q), 10), dtype='int64')
t = time.time(); C = 250_000
for s in range(0, len(b), C):
    x = np.array(b[s:s + C], dtype='float32'); x /= np.linalg.norm(x, axis=1, keepdims=True)
    sc = q @ x.T; top = np.argpartition(-sc, 10, axis=1)[:, :10]
    D = np.concatenate([bd, np.take_along_axis(sc, top, 1)], 1); I = np.concatenate([bi, top + s], 1)
    o = np.argsort(-D, axis=1, kind='stable')[:, :10]
    bd = np.take_along_axis(D, o, 1); bi = np.take_along_axis(I, o, 1)
np.save(f'{w}/gt.npy', bi); print('ground truth in', round(time.time() - t), 's', file=sys.stderr)
PY
$PY -c "import numpy as np; np.save('$W/eval-timed.npy', np.tile(np.load('$W/eval.npy'), (${TILE:-1}, 1)))"
drop() { $PY -c "import os; f=os.open('$W/ix/seg0-vectors.f32', os.O_RDONLY); os.posix_fadvise(f, 0, 0, os.POSIX_FADV_DONTNEED)"; }
rsearch() { # pipeline cold|warm [extra search args]
  local p=$1 cache=$2; shift 2
  if [ "$cache" = cold ]; then drop; else $R search --index "$W/ix" --queries "$W/eval-timed.npy" --pipeline "$p" --out "$W/hits.npy" > /dev/null 2>&1; fi
  $R search --index "$W/ix" --queries "$W/eval-timed.npy" --pipeline "$p" --out "$W/hits.npy" --json "$@" 2>/dev/null | \
    $PY -c "
import json, sys, numpy as np
r = json.loads(sys.stdin.read()); g = np.load('$W/gt.npy')[:, :10]; h = np.load('$W/hits.npy')
rec = float(np.mean([len(set(a[:10]) & set(b)) / 10 for a, b in zip(h, g)]))
m = r['memory']
print(json.dumps(dict(system='rewa', n=$N, cache='$cache', setting=r['pipeline'], args='$*', recall=rec, qps=r['qps'],
    latency_ms=r.get('latency_ms'), rss_anon_mb=(m['rss_anon_bytes'] or 0) / 2**20,
    rss_file_mb=(m['rss_file_bytes'] or 0) / 2**20)))" >> "$OUT"
}
if [ -z "${NO_SWEEP:-}" ]; then
  for np_ in 32 128 512 1024 2048; do for keep in 100 200; do
    rsearch "ivf${NLIST}r/$np_+pq192x4:$keep,exact:10" warm
  done; done
fi
# the operating point (recall@10 0.95 in the sweep): cold and warm, 2 threads and one at a time
SET=${SET:-ivf${NLIST}r/1024+pq192x4:100,exact:10}
rsearch "$SET" cold
rsearch "$SET" warm
rsearch "$SET" cold --one-at-a-time --threads 1
rsearch "$SET" warm --one-at-a-time --threads 1
# the anchor: FAISS IVF{NLIST},PQ32 with an 8-bit scalar-quantized refine, trained on the same
# number of rows as rewa's sample
if [ -z "${NO_FAISS:-}" ]; then
  $PY scripts/ann_faiss.py build "$W/d/base.npy" "$W/faiss" --nlist "$NLIST" --train 262144 ivfpq32sq8 >> "$OUT"
  NPROBES=32,128,512,1024,2048 $PY scripts/ann_faiss.py search "$W/faiss" ivfpq32sq8 "$W/eval.npy" "$W/gt.npy" >> "$OUT"
fi
cat "$OUT"
