#!/usr/bin/env bash
# Paired speed of two rewa binaries on the same files: the portable build (baseline x86-64
# with AVX2/FMA twins chosen at run time) against a build for the host CPU
# (RUSTFLAGS="-C target-cpu=native"), or any two builds. Runs A and B in turn, RUNS times
# each, and prints each search's median wall seconds and the median of the pairwise ratios
# B/A. Also checks that B with REWA_NO_AVX2=1 (the baseline kernels) prints exactly what B
# prints, and that A and B return the same ids.
# usage: scripts/portable_speed.sh OLD_BINARY NEW_BINARY [WORKDIR] [N] [RUNS]
set -euo pipefail
A=$1; B=$2; W=${3:-${TMPDIR:-/tmp}/rewa-portable}; N=${4:-1000000}; RUNS=${5:-7}
mkdir -p "$W"
C=$((N / 100))
[ -f "$W/s$N/base.npy" ] || "$A" synth --classes $C --per-class 100 --queries-per-class 1 --new-classes 0 --dim 768 --noise 0.1 --seed 2 --out "$W/s$N" 2>/dev/null
# The first 1000 and 10 held-out queries (a float32 .npy sliced without numpy).
python3 - "$W/s$N/queries_same.npy" "$W" <<'PY'
import ast, struct, sys
src, w = sys.argv[1], sys.argv[2]
b = open(src, 'rb').read()
hl = struct.unpack('<H', b[8:10])[0]
h = ast.literal_eval(b[10:10 + hl].decode())
rows, dim = h['shape']
body = b[10 + hl:]
for n in (1000, 10):
    hd = str({'descr': h['descr'], 'fortran_order': False, 'shape': (n, dim)}).encode()
    hd += b' ' * ((64 - (10 + len(hd) + 1) % 64) % 64) + b'\n'
    open(f'{w}/q{n}.npy', 'wb').write(b'\x93NUMPY\x01\x00' + struct.pack('<H', len(hd)) + hd + body[:n * dim * 4])
PY
P="hadamard256+sign:1000,hadamard256+asign:500,hadamard256+int8:200,pq32:100,exact:10"
[ -f "$W/idx/manifest.json" ] || "$A" build --base "$W/s$N/base.npy" --pipeline "$P" --out "$W/idx" 2>/dev/null
echo "| search (queries) | A median s | B median s | B/A median (min-max) | results |"
echo "|---|---:|---:|---:|---|"
time_one() { /usr/bin/time -f %e "$@" 2>&1 >/dev/null | tail -1; }
for spec in "exact:10 q10" "hadamard256+sign:10 q1000" "hadamard256+asign:10 q1000" "hadamard256+int8:10 q1000" "pq32:10 q1000" "hadamard256+sign:1000,exact:10 q1000"; do
  set -- $spec
  args=(search --index "$W/idx" --queries "$W/$2.npy" --pipeline "$1")
  "$A" "${args[@]}" --out "$W/a.tsv" 2>/dev/null; "$B" "${args[@]}" --out "$W/b.tsv" 2>/dev/null
  REWA_NO_AVX2=1 "$B" "${args[@]}" --out "$W/c.tsv" 2>/dev/null
  # B and B without AVX2 must print the same bytes; A (another build) the same ids, and
  # scores that may differ in the last digits where the compiler summed in another order.
  same=$(cmp -s "$W/b.tsv" "$W/c.tsv" && echo "B = B baseline" || echo "B != B baseline")
  if cmp -s "$W/a.tsv" "$W/b.tsv"; then same="$same; A = B"
  elif cmp -s <(cut -f1-3 "$W/a.tsv") <(cut -f1-3 "$W/b.tsv"); then same="$same; A, B same ids"
  else same="$same; A, B DIFFERENT ids"; fi
  ta=(); tb=()
  for _ in $(seq "$RUNS"); do
    ta+=("$(time_one "$A" "${args[@]}" --out "$W/out.npy")")
    tb+=("$(time_one "$B" "${args[@]}" --out "$W/out.npy")")
  done
  python3 - "$1 ($2)" "$same" "${ta[*]}" "${tb[*]}" <<'PY'
import statistics as st, sys
what, same, a, b = sys.argv[1], sys.argv[2], [float(x) for x in sys.argv[3].split()], [float(x) for x in sys.argv[4].split()]
r = [y / x for x, y in zip(a, b)]
print(f"| `{what}` | {st.median(a):.3f} | {st.median(b):.3f} | {st.median(r):.3f} ({min(r):.2f}-{max(r):.2f}) | {same} |")
PY
done
