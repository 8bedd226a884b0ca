#!/usr/bin/env bash
# Parity of `rewa embed` with sentence-transformers on SciFact: embeds corpus.jsonl (BEIR
# layout) and queries.jsonl (--field text) with one model, then compares every row's cosine to
# the reference vectors in ../shared/data/scifact/emb_<MODEL>/ (made by sentence-transformers)
# and checks that the ids are the reference's, in order.
# usage: scripts/embed_parity.sh MODELS_DIR [MODEL] [WORKDIR] [SETS]      needs: python3 (stdlib)
#   MODELS_DIR  as scripts/fetch-models.sh DIR lays it out
#   MODEL       all-MiniLM-L6-v2 (default) or all-mpnet-base-v2
#   WORKDIR     where the vectors go (default: target/embed-parity)
#   SETS        "docs queries" (default), or one of them
# REWA_BIN=path runs that binary instead of building the release one. A stopped run continues
# where it stopped (rewa embed --resume): MPNet over the corpus takes hours on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  sed -n '2,12p' "$0" >&2
  exit 2
fi
MODELS=$1
MODEL=${2:-all-MiniLM-L6-v2}
W=${3:-target/embed-parity}
SETS=${4:-docs queries}
if [ -z "${REWA_BIN:-}" ]; then
  cargo build --release -q -p rewa-cli
  REWA_BIN=$PWD/target/release/rewa
fi
S=$PWD/../shared/data/scifact
E=$S/emb_$MODEL
mkdir -p "$W"
for set in $SETS; do
  case $set in
    docs) input=$S/corpus.jsonl; field=(); ref=docs; ids=doc_ids.txt ;;
    queries) input=$S/queries.jsonl; field=(--field text); ref=queries; ids=query_ids.txt ;;
    *) echo "unknown set $set (docs or queries)" >&2; exit 2 ;;
  esac
  out=$W/$MODEL-$set
  echo "== $MODEL $set"
  echo "\$ rewa embed --model $MODELS/$MODEL --input $input ${field[*]} --out $out.npy --ids-out $out.ids.txt --resume --json"
  "$REWA_BIN" embed --model "$MODELS/$MODEL" --input "$input" "${field[@]}" \
    --out "$out.npy" --ids-out "$out.ids.txt" --resume --json
  cmp -s "$out.ids.txt" "$E/$ids" || { echo "ids differ from $E/$ids" >&2; exit 1; }
  python3 - "$out.npy" "$E/$ref.npy" "$input" <<'PY'
import json, math, struct, sys

def load(path):
    b = open(path, 'rb').read()
    n = struct.unpack('<H', b[8:10])[0]
    header = b[10:10 + n].decode()
    assert "'<f4'" in header and 'False' in header, header
    rows, dim = (int(x) for x in header.split('(')[1].split(')')[0].split(',')[:2])
    return rows, dim, memoryview(b)[10 + n:10 + n + 4 * rows * dim].cast('f')

n, d, got = load(sys.argv[1])
m, d2, ref = load(sys.argv[2])
assert (n, d) == (m, d2), ((n, d), (m, d2))
cos = []
for i in range(n):
    x, y = got[i * d:(i + 1) * d], ref[i * d:(i + 1) * d]
    dot = sum(p * q for p, q in zip(x, y))
    cos.append(dot / math.sqrt(sum(p * p for p in x) * sum(q * q for q in y)))
worst = min(range(n), key=cos.__getitem__)
print(f"rows {n} x {d}: cosine min {cos[worst]:.9f} (1 - min = {1 - cos[worst]:.1e}, row {worst}), "
      f"mean {sum(cos) / n:.9f}; rows below 0.9999: {sum(c < 0.9999 for c in cos)}; ids identical")
sys.exit(1 if cos[worst] < 0.9999 else 0)
PY
done
