#!/usr/bin/env bash
# Index figures at scale: build, size, open time, RSS while searching, and recall@10 / QPS of
# (a) the exact scan and (b) the cascade tuned to recall@10 >= 0.95 on separate validation
# queries, measured on other held-out queries. Synthetic 1M x 768 (default) or any N; NOISE is
# `rewa synth --noise` (0.3 = the seed's default, nearly isotropic; 0.1 = tighter classes);
# PIPE the stages the index stores (tune then picks their keeps).
# usage: scripts/index1m.sh [WORKDIR] [N] [NOISE] [PIPE]      needs: numpy (query split, recall)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-${TMPDIR:-/tmp}/rewa-index}
N=${2:-1000000}
NOISE=${3:-0.3}
PIPE=${4:-hadamard512+sign:2000,hadamard256+int8:200,exact:10}
cargo build --release -q
R=$PWD/target/release/rewa
mkdir -p "$W"
D=$W/s$N
[ -f "$D/base.npy" ] || $R synth --classes $((N / 100)) --per-class 100 --queries-per-class 1 --new-classes 0 --dim 768 --noise $NOISE --seed 2 --out "$D"
python3 -c "import numpy as np; q=np.load('$D/queries_same.npy'); np.save('$W/tune.npy', q[:500]); np.save('$W/eval.npy', q[500:1500])"
rm -rf "$W/idx"
echo "== build"
/usr/bin/time -f "build: %e s wall, %M KB max RSS" $R build --base "$D/base.npy" --pipeline $PIPE --out "$W/idx" --json
du -sh "$W/idx"
$R info --index "$W/idx" --json
echo "== tune on 500 validation queries"
$R tune --index "$W/idx" --queries "$W/tune.npy" --target-recall 0.95 --max-keep 20480 --json
echo "== search 1000 other held-out queries"
/usr/bin/time -f "exact: %e s wall, %M KB max RSS" $R search --index "$W/idx" --queries "$W/eval.npy" --pipeline exact:10 --out "$W/exact.npy" --json
/usr/bin/time -f "cascade: %e s wall, %M KB max RSS" $R search --index "$W/idx" --queries "$W/eval.npy" --out "$W/casc.npy" --json
python3 -c "
import numpy as np
e=np.load('$W/exact.npy'); c=np.load('$W/casc.npy')
print('cascade recall@10 vs exact:', np.mean([len(set(a)&set(b))/10 for a,b in zip(e,c)]))"
echo "== single-query latency (one query)"
python3 -c "import numpy as np; q=np.load('$W/eval.npy'); np.save('$W/one.npy', q[:1])"
$R search --index "$W/idx" --queries "$W/one.npy" --json
