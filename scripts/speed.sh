#!/usr/bin/env bash
# Side-by-side speed figures, rewa against FAISS on the same files (2 threads, top-10):
#  1. exact search, 100k x 768 synthetic (rewa synth), 1000 queries: rewa `flat` vs IndexFlatIP
#  2. Hamming scan of 256-bit codes (hadamard256+sign) over N vectors (default 1M), 1000 queries:
#     rewa's scan vs IndexBinaryFlat on the very codes rewa wrote.
# usage: scripts/speed.sh [WORKDIR] [N]     needs: pip install faiss-cpu numpy
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-${TMPDIR:-/tmp}/rewa-speed}
N=${2:-1000000}
cargo build --release -q
R=target/release/rewa
mkdir -p "$W"
[ -f "$W/s100k/base.npy" ] || $R synth --classes 1000 --per-class 100 --queries-per-class 1 --new-classes 0 --dim 768 --seed 1 --out "$W/s100k"
echo "== exact search, 100k x 768, 1000 queries, k=10"
$R eval --base "$W/s100k/base.npy" --queries "$W/s100k/queries_same.npy" --encoder flat --json | tee "$W/rewa_flat.json"
python3 scripts/faiss_speed.py flat "$W/s100k/base.npy" "$W/s100k/queries_same.npy" | tee "$W/faiss_flat.json"

C=$((N / 100))
[ -f "$W/s$N/base.npy" ] || $R synth --classes $C --per-class 100 --queries-per-class 1 --new-classes 0 --dim 768 --seed 2 --out "$W/s$N"
# Use the first 1000 queries.
python3 -c "import numpy as np; q=np.load('$W/s$N/queries_same.npy'); np.save('$W/s$N/q1000.npy', q[:1000])"
echo "== Hamming scan, $N x 256-bit codes, 1000 queries, k=10"
$R eval --base "$W/s$N/base.npy" --queries "$W/s$N/q1000.npy" --encoder hadamard256+sign --json | tee "$W/rewa_sign.json"
$R encode --base "$W/s$N/base.npy" --encoder hadamard256+sign --out "$W/codes.npy" --queries "$W/s$N/q1000.npy" --queries-out "$W/qcodes.npy"
python3 scripts/faiss_speed.py binary "$W/codes.npy" "$W/qcodes.npy" | tee "$W/faiss_sign.json"
python3 - "$W" <<'PY'
import json, sys
w = sys.argv[1]
j = lambda f: json.load(open(f'{w}/{f}'))
for what, r, f in [('exact 100k x 768', 'rewa_flat.json', 'faiss_flat.json'), ('hamming 256-bit', 'rewa_sign.json', 'faiss_sign.json')]:
    a, b = j(r), j(f)
    print(f"{what}: rewa {a['qps']:.0f} QPS, faiss {b['qps']:.0f} QPS, ratio {a['qps'] / b['qps']:.2f}")
PY
