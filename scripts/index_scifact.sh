#!/usr/bin/env bash
# Index figures on SciFact MiniLM (5183 docs x 384): build, size, open time, RSS while
# searching, exact scan vs the cascade tuned on the 809 train queries and measured on the 300
# test queries, next to FAISS OPQ32,PQ32 (+ exact rerank of 100) on the same test queries.
# The default cascade's first stage is opq32+pq32: 32 bytes, FAISS OPQ32,PQ32's code size.
# usage: scripts/index_scifact.sh [WORKDIR] [TARGET] [PIPELINE]   (EXTRA='pipe1 pipe2' adds rows)     needs: numpy, faiss-cpu (comparison)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-${TMPDIR:-/tmp}/rewa-index-scifact}
T=${2:-0.99}
cargo build --release -q
R=$PWD/target/release/rewa
S=$PWD/../shared/data/scifact
E=$S/emb_all-MiniLM-L6-v2
mkdir -p "$W"
python3 - "$E" "$S" "$W" <<'PY'
import numpy as np, sys
e, s, w = sys.argv[1:4]
q = np.load(f'{e}/queries.npy'); ids = [l.strip() for l in open(f'{e}/query_ids.txt')]
def qids(f):
    return sorted({l.split('\t')[0] for l in list(open(f))[1:]})
pos = {x: i for i, x in enumerate(ids)}
np.save(f'{w}/train_q.npy', q[[pos[x] for x in qids(f'{s}/qrels/train.tsv')]])
np.save(f'{w}/test_q.npy', q[[pos[x] for x in qids(f'{s}/qrels/test.tsv')]])
PY
P=${3:-opq32+pq32:200,exact:10}
python3 -c "
import numpy as np
q=np.load('$W/test_q.npy'); np.save('$W/test_q10.npy', np.concatenate([q]*10))"
rm -rf "$W/idx"
echo "== build $P"
/usr/bin/time -f "build: %e s wall, %M KB max RSS" $R build --base "$E/docs.npy" --pipeline "$P" --out "$W/idx" --json
du -sh "$W/idx"
$R info --index "$W/idx" --json
echo "== tune on the 809 train queries, target $T"
$R tune --index "$W/idx" --queries "$W/train_q.npy" --target-recall "$T" --json
echo "== 300 test queries (timed on the 300 repeated 10 times: 3000 searches)"
recall() {
  python3 -c "
import numpy as np
e=np.load('$W/exact.npy'); c=np.load('$W/p.npy')
print('$1 recall@10 vs exact:', np.mean([len(set(a)&set(b))/10 for a,b in zip(e,c)]))"
}
/usr/bin/time -f "exact: %e s wall, %M KB max RSS" $R search --index "$W/idx" --queries "$W/test_q10.npy" --pipeline exact:10 --out "$W/exact.npy" --json
/usr/bin/time -f "cascade: %e s wall, %M KB max RSS" $R search --index "$W/idx" --queries "$W/test_q10.npy" --out "$W/p.npy" --json
recall "tuned cascade"
for p in ${EXTRA:-}; do
  $R search --index "$W/idx" --queries "$W/test_q10.npy" --pipeline $p --out "$W/p.npy" --json
  recall "$p"
done
echo "== FAISS on the same docs and the same 3000 test searches"
python3 ../shared/tools/faiss_compare.py "$E/docs.npy" "$W/test_q10.npy" 10 2>/dev/null | grep -E "^n=|Flat|OPQ32|^PQ32"
echo "== rewa again (paired with the FAISS run above)"
$R search --index "$W/idx" --queries "$W/test_q10.npy" --json
$R search --index "$W/idx" --queries "$W/test_q10.npy" --pipeline exact:10 --json
