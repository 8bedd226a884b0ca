#!/usr/bin/env bash
# Index figures on SciFact MiniLM (5183 docs x 384): build, size, open time, RSS while
# searching, exact scan vs the cascade tuned on the 809 train queries and measured on the 300
# test queries, next to FAISS OPQ32,PQ32 (+ exact rerank of 100) on the same test queries.
# The cascade's first stage is 256 sign bits = 32 bytes, PQ32's code size.
# usage: scripts/index_scifact.sh [WORKDIR] [TARGET]     needs: numpy, faiss-cpu (comparison)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/rewa-index-scifact}
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
rm -rf "$W/idx"
echo "== build"
/usr/bin/time -f "build: %e s wall, %M KB max RSS" $R build --base "$E/docs.npy" --pipeline hadamard256+sign:1000,hadamard384+int8:100,exact:10 --out "$W/idx" --json
du -sh "$W/idx"
$R info --index "$W/idx" --json
echo "== tune on the 809 train queries, target $T"
$R tune --index "$W/idx" --queries "$W/train_q.npy" --target-recall "$T" --json
echo "== 300 test queries"
/usr/bin/time -f "exact: %e s wall, %M KB max RSS" $R search --index "$W/idx" --queries "$W/test_q.npy" --pipeline exact:10 --out "$W/exact.npy" --json
/usr/bin/time -f "cascade: %e s wall, %M KB max RSS" $R search --index "$W/idx" --queries "$W/test_q.npy" --out "$W/casc.npy" --json
for p in hadamard256+sign:100,exact:10 hadamard256+sign:200,exact:10; do
  $R search --index "$W/idx" --queries "$W/test_q.npy" --pipeline $p --out "$W/p.npy" --json
  python3 -c "
import numpy as np
e=np.load('$W/exact.npy'); c=np.load('$W/p.npy')
print('$p recall@10 vs exact:', np.mean([len(set(a)&set(b))/10 for a,b in zip(e,c)]))"
done
python3 -c "
import numpy as np
e=np.load('$W/exact.npy'); c=np.load('$W/casc.npy')
print('tuned cascade recall@10 vs exact:', np.mean([len(set(a)&set(b))/10 for a,b in zip(e,c)]))"
echo "== FAISS on the same docs and test queries"
python3 ../shared/tools/faiss_compare.py "$E/docs.npy" "$W/test_q.npy" 10 | grep -E "^n=|Flat|OPQ32|^PQ32"
