#!/usr/bin/env bash
# A million synthetic 768-d vectors (`rewa synth --noise 0.1`, the set of scripts/ann_compare.sh)
# built by the streaming build and searched by partitioned fast-scan stages, beside ScaNN on
# the same files: synth time and peak RSS, build time and peak RSS, resident and on-disk
# bytes, recall@10 and QPS (2 threads) over sweeps, warm and with the vectors file dropped
# from the page cache (cold). Writes WORKDIR/scale.jsonl. Quiet machine: nothing else running.
# usage: scripts/scale1m.sh WORKDIR [N]
#   PY=venv/bin/python (numpy, faiss-cpu for the ground truth, scann)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:?usage: scripts/scale1m.sh WORKDIR [N]}
N=${2:-1000000}
PY=${PY:-python3}
mkdir -p "$W"
cargo build --release -q -p rewa-cli
R=$PWD/target/release/rewa
D=$W/s$N
OUT=$W/scale.jsonl
: > "$OUT"
t() { /usr/bin/time -f '{"seconds": %e, "peak_rss_kb": %M}' -o "$W/time.json" "$@"; }
if [ ! -f "$D/base.npy" ]; then
  t $R synth --classes $((N / 100)) --per-class 100 --queries-per-class 1 --new-classes 0 --dim 768 --noise 0.1 --seed 2 --out "$D"
  echo "{\"step\": \"synth $N x 768\", \"time\": $(cat "$W/time.json")}" >> "$OUT"
fi
[ -f "$D/eval.npy" ] || $PY -c "import numpy as np; q=np.load('$D/queries_same.npy'); np.save('$D/tune.npy', q[:500]); np.save('$D/eval.npy', q[500:1500])"
[ -f "$W/gt.npy" ] || $PY scripts/ann_faiss.py truth "$D/base.npy" "$D/eval.npy" "$W/gt.npy" 100
$PY -c "import numpy as np; np.save('$W/eval-timed.npy', np.tile(np.load('$D/eval.npy'), (4, 1)))"
rbuild() { # name pipeline
  rm -rf "$W/$1"
  t $R build --base "$D/base.npy" --pipeline "$2" --out "$W/$1" --json > /dev/null
  echo "{\"step\": \"build $2\", \"time\": $(cat "$W/time.json"), \"info\": $($R info --index "$W/$1" --json)}" >> "$OUT"
}
rsearch() { # name pipeline cold|warm
  if [ "$3" = cold ]; then
    $PY -c "import os; f=os.open('$W/$1/seg0-vectors.f32', os.O_RDONLY); os.posix_fadvise(f, 0, 0, os.POSIX_FADV_DONTNEED)"
  else
    $R search --index "$W/$1" --queries "$W/eval-timed.npy" --pipeline "$2" --out "$W/hits.npy" > /dev/null 2>&1
  fi
  $R search --index "$W/$1" --queries "$W/eval-timed.npy" --pipeline "$2" --out "$W/hits.npy" --json 2>/dev/null | \
    $PY -c "
import json, sys, numpy as np
r = json.loads(sys.stdin.read()); g = np.load('$W/gt.npy')[:, :10]; h = np.load('$W/hits.npy')
rec = float(np.mean([len(set(a[:10]) & set(b)) / 10 for a, b in zip(h, g)]))
m = r['memory']
print(json.dumps(dict(system='rewa', cache='$3', setting=r['pipeline'], recall=rec, qps=r['qps'],
    rss_anon_mb=(m['rss_anon_bytes'] or 0) / 2**20, rss_file_mb=(m['rss_file_bytes'] or 0) / 2**20)))" >> "$OUT"
}
rbuild fs "ivf2048r/32+pq192x4:100,exact:10"
for np_ in 8 16 32 64; do for keep in 20 50 100; do
  rsearch fs "ivf2048r/$np_+pq192x4:$keep,exact:10" warm
done; done
for np_ in 16 32; do rsearch fs "ivf2048r/$np_+pq192x4:50,exact:10" cold; done
TILE=4 $PY scripts/ann_scann.py "$D/base.npy" "$D/eval.npy" "$W/gt.npy" --leaves 2000 >> "$OUT"
# FAISS IVF2048,PQ32x4fs + IndexRefineFlat, trained on as many rows as rewa's sample; its sweep,
# then rewa's operating point paired with FAISS's setting nearest recall 0.95 (FS_SET)
$PY scripts/ann_faiss.py build "$D/base.npy" "$W/faiss" --nlist 2048 --train 262144 --pqm 32 ivfpq32fs >> "$OUT"
NPROBES=8,16,32,64 KFS=5,10,20,50 TILE=4 $PY scripts/ann_faiss.py search "$W/faiss" ivfpq32fs "$D/eval.npy" "$W/gt.npy" >> "$OUT"
TILE=4 $PY scripts/ann_pair.py "$R" "$W/fs" "ivf2048r/8+pq192x4:60,exact:10" "$W/faiss" ivfpq32fs \
  "${FS_SET:-nprobe=32,k_factor=20}" "$D/eval.npy" "$W/gt.npy" 5 >> "$OUT"
cat "$OUT"
