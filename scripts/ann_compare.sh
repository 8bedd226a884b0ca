#!/usr/bin/env bash
# Partitioned search side by side with FAISS: rewa's IVF first stage (ivf<nlist>/<nprobe>) and
# its full-scan cascade against FAISS HNSW32 (efSearch sweep), IVF<nlist>,PQ32 + IndexRefineFlat
# and IVF<nlist>,Flat, on held-out queries: recall@10 vs exact, QPS (2 threads), peak RSS,
# build time and size on disk; then appending 1% to the 1M index. Writes WORKDIR/ann.jsonl
# (one JSON object per measured setting) and, with matplotlib, WORKDIR/ann.png.
# Measure on a quiet machine: nothing else running, no build.
# usage: scripts/ann_compare.sh WORKDIR [N] [NLIST]
#   PY=venv/bin/python (numpy + faiss-cpu, matplotlib for the plot; default python3)
#   DATA=DIR to use DIR/base.npy + DIR/tune.npy + DIR/eval.npy instead of synthetic data
#   TILE=T to time T copies of the queries on both sides (recall from the first copy): a small
#   query set at tens of thousands of QPS is otherwise timed over a few tens of milliseconds
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:?usage: scripts/ann_compare.sh WORKDIR [N] [NLIST]}
N=${2:-1000000}
NLIST=${3:-1024}
PY=${PY:-python3}
mkdir -p "$W"
cargo build --release -q -p rewa-cli
R=$PWD/target/release/rewa
if [ -n "${DATA:-}" ]; then
  D=$DATA
else
  D=$W/s$N
  [ -f "$D/base.npy" ] || $R synth --classes $((N / 100)) --per-class 100 --queries-per-class 1 --new-classes 0 --dim 768 --noise 0.1 --seed 2 --out "$D"
  [ -f "$D/eval.npy" ] || $PY -c "import numpy as np; q=np.load('$D/queries_same.npy'); np.save('$D/tune.npy', q[:500]); np.save('$D/eval.npy', q[500:1500])"
fi
[ -f "$W/gt.npy" ] || $PY scripts/ann_faiss.py truth "$D/base.npy" "$D/eval.npy" "$W/gt.npy" 100
export TILE=${TILE:-1}
$PY -c "import numpy as np; np.save('$W/eval-timed.npy', np.tile(np.load('$D/eval.npy'), ($TILE, 1)))"
OUT=$W/ann.jsonl
: > "$OUT"
# FAISS: build once (build times in faiss/*.build.json), then one process per index
[ -f "$W/faiss/hnsw32.faiss" ] || $PY scripts/ann_faiss.py build "$D/base.npy" "$W/faiss" hnsw32 --nlist "$NLIST"
[ -f "$W/faiss/ivfpq32.faiss" ] || $PY scripts/ann_faiss.py build "$D/base.npy" "$W/faiss" ivfpq32 --nlist "$NLIST"
[ -f "$W/faiss/ivfflat.faiss" ] || $PY scripts/ann_faiss.py build "$D/base.npy" "$W/faiss" ivfflat --nlist "$NLIST"
for name in hnsw32 ivfpq32 ivfflat; do
  $PY scripts/ann_faiss.py search "$W/faiss" $name "$D/eval.npy" "$W/gt.npy" | \
    $PY -c "
import json, sys
b = json.load(open('$W/faiss/$name.build.json'))
for l in sys.stdin:
    r = json.loads(l); r['build_seconds'] = b['build_seconds']; print(json.dumps(r))" >> "$OUT"
done
# rewa: one index per first stage; searches with other nprobe / keeps on the same index
rbuild() { # name pipeline
  [ -f "$W/$1/manifest.json" ] && return 0
  rm -rf "$W/$1"
  /usr/bin/time -f "%e" -o "$W/$1.time" $R build --base "$D/base.npy" --pipeline "$2" --out "$W/$1" --json > /dev/null
}
rsearch() { # name pipeline [label] (run twice: the first pass maps the pages, the second is measured)
  $R search --index "$W/$1" --queries "$W/eval-timed.npy" --pipeline "$2" --out "$W/hits.npy" > /dev/null 2>&1
  $R search --index "$W/$1" --queries "$W/eval-timed.npy" --pipeline "$2" --out "$W/hits.npy" --json 2>/dev/null | \
    $PY -c "
import json, sys, os, numpy as np
r = json.loads(sys.stdin.read()); g = np.load('$W/gt.npy')[:, :10]; h = np.load('$W/hits.npy')
rec = float(np.mean([len(set(a[:10]) & set(b)) / 10 for a, b in zip(h, g)]))
disk = sum(os.path.getsize(os.path.join('$W/$1', f)) for f in os.listdir('$W/$1'))
m = r['memory']
print(json.dumps(dict(system='rewa', index='${3:-$1}', setting=r['pipeline'], recall=rec, qps=r['qps'],
    rss_mb=(m['peak_rss_bytes'] or 0) / 2**20, rss_anon_mb=(m['rss_anon_bytes'] or 0) / 2**20,
    rss_file_mb=(m['rss_file_bytes'] or 0) / 2**20, disk_bytes=disk,
    build_seconds=float(open('$W/$1.time').read().split()[-1]))))" >> "$OUT"
}
rbuild sign "ivf$NLIST/32+hadamard256+sign:200,exact:10"
for np_ in 1 2 4 8 16 32 64; do for keep in 50 100 200; do
  rsearch sign "ivf$NLIST/$np_+hadamard256+sign:$keep,exact:10"
done; done
rbuild flat "ivf$NLIST/16+flat:10"
for np_ in 1 2 4 8 16 32 64 128; do rsearch flat "ivf$NLIST/$np_+flat:10"; done
rbuild scan "hadamard256+sign:200,exact:10"
for keep in 50 100 200; do rsearch scan "hadamard256+sign:$keep,exact:10"; done
# 384-bit sign codes, then int8 codes (no float vector is read) or the exact vectors
rbuild s384 "hadamard384+sign:150,int8:20,exact:10"
for keep in 50 100 150 250 400; do
  rsearch s384 "hadamard384+sign:$keep,int8:10" s384-int8
  rsearch s384 "hadamard384+sign:$keep,exact:10" s384-exact
done
# appending 1% to the partitioned index: time and bytes written, against the build
$PY -c "import numpy as np; b=np.load('$D/base.npy', mmap_mode='r'); np.save('$W/add.npy', np.asarray(b[:$((N / 100))]) * -1)"
rm -rf "$W/sign-add" && cp -r "$W/sign" "$W/sign-add"
before=$(du -sb "$W/sign-add" | cut -f1)
/usr/bin/time -f "%e" -o "$W/add.time" $R add --index "$W/sign-add" --base "$W/add.npy" --json > /dev/null
after=$(du -sb "$W/sign-add" | cut -f1)
$PY -c "
import json
print(json.dumps(dict(system='rewa', index='sign', setting='add $((N / 100)) to $N', add_seconds=float(open('$W/add.time').read().split()[-1]),
    build_seconds=float(open('$W/sign.time').read().split()[-1]), bytes_written=$after - $before, index_bytes=$before)))" >> "$OUT"
$PY scripts/ann_plot.py "$OUT" "$W/ann.png" || echo "(no plot: matplotlib missing?)"
cat "$OUT"
