#!/usr/bin/env bash
# Figures for the learned encoder, every one on data held out from training:
#  1. seed reproduction on `rewa synth` (50 classes x 100, d 768, m 256): recall@10 vs exact
#     for the training vectors, held-out same-class queries, held-out new classes;
#  2. SciFact MiniLM: trained on the corpus + the 809 train queries, measured on the 300 test
#     queries (recall@10 vs exact, nDCG@10 with qrels/test.tsv) against pca and hadamard at
#     m = 32, 64, 128 floats and at 32 bytes (+sign on 256 dims, +int8 on 32 dims, +opq32+pq32); learned
#     models start random (sf<m>) or from the PCA projection (sfpca<m>, --init pca);
#  3. training speed, 100k x 768 (rewa synth --classes 1000), 10 epochs, labels.
# "train recall@10" uses the first 1000 training vectors as queries with their own row left
# out of both rankings (a query that is a base row finds itself in any code: a free hit).
# usage: scripts/learned.sh [WORKDIR] [SECTIONS]    needs: numpy     (SECTIONS e.g. 13; all: 123)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-${TMPDIR:-/tmp}/rewa-learned}
SECTIONS=${2:-123}
cargo build --release -q
R=$PWD/target/release/rewa
S=$PWD/../shared/data/scifact
E=$S/emb_all-MiniLM-L6-v2
mkdir -p "$W"
row() { # name json
  python3 -c "import json,sys; d=json.loads(sys.argv[2]); print(f\"| {sys.argv[1]} | {d['bytes_per_vector']} | {d['recall_at_k']:.3f} | {d.get('ndcg_at_10') if d.get('ndcg_at_10') is None else round(d['ndcg_at_10'],3)} |\")" "$1" "$2"
}

self_recall() { # base codes.npy -> recall@10 of base rows as queries, own row excluded
  python3 - "$1" "$2" <<'PY'
import numpy as np, sys
x = np.load(sys.argv[1]).astype('float32'); z = np.load(sys.argv[2]).astype('float32')
x /= np.linalg.norm(x, axis=1, keepdims=True)
def top(a, q):
    s = q @ a.T
    s[np.arange(len(q)), np.arange(len(q))] = -np.inf
    return np.argsort(-s, axis=1)[:, :10]
t, r = top(x, x[:1000]), top(z, z[:1000])
print(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(t, r)]))
PY
}

if [[ $SECTIONS == *1* ]]; then
echo "## 1. seed reproduction (rewa synth defaults, m = 256)"
[ -f "$W/synth/base.npy" ] || $R synth --out "$W/synth"
$R train --force --base "$W/synth/base.npy" --dim 256 --out "$W/synth-learned256" 2>&1 | grep -E "best epoch"
$R train --force --base "$W/synth/base.npy" --dim 256 --labels "$W/synth/labels.npy" --out "$W/synth-labels256" 2>&1 | grep -E "best epoch"
for a in 0.03 0.05; do
  $R train --force --base "$W/synth/base.npy" --dim 256 --augment $a --out "$W/synth-aug$a" 2>&1 | grep -E "best epoch"
done
echo "| encoder | bytes | train recall@10 | held-out same-class | held-out new classes | gap |"
echo "|---|---:|---:|---:|---:|---:|"
for enc in "learned=$W/synth-learned256" "learned=$W/synth-aug0.03" "learned=$W/synth-aug0.05" "learned=$W/synth-labels256" hadamard256 pca256 flat; do
  $R encode --base "$W/synth/base.npy" --encoder "$enc" --out "$W/z.npy" 2>/dev/null
  a=$(self_recall "$W/synth/base.npy" "$W/z.npy")
  b=$($R eval --base "$W/synth/base.npy" --queries "$W/synth/queries_same.npy" --encoder "$enc" --json 2>/dev/null)
  c=$($R eval --base "$W/synth/base_new.npy" --train "$W/synth/base.npy" --queries "$W/synth/queries_new.npy" --encoder "$enc" --json 2>/dev/null)
  python3 -c "import json,sys; a=float(sys.argv[2]); b,c=[json.loads(x) for x in sys.argv[3:5]]; r=lambda d: d['recall_at_k']; print(f\"| {sys.argv[1]} | {b['bytes_per_vector']} | {a:.3f} | {r(b):.3f} | {r(c):.3f} | {a-r(b):+.3f} |\")" "${enc/$W\//}" "$a" "$b" "$c"
done
fi

if [[ $SECTIONS == *2* ]]; then
echo "## 2. SciFact MiniLM, 300 test queries"
python3 - "$E" "$S" "$W" <<'PY'
import numpy as np, sys
e, s, w = sys.argv[1:4]
q = np.load(f'{e}/queries.npy'); ids = [l.strip() for l in open(f'{e}/query_ids.txt')]
def rows(f):
    r = {l.split('\t')[0] for l in open(f).read().splitlines()[1:] if l.strip()}
    return [i for i, x in enumerate(ids) if x in r]
te, tr = rows(f'{s}/qrels/test.tsv'), rows(f'{s}/qrels/train.tsv')
assert not set(te) & set(tr)
np.save(f'{w}/test_q.npy', q[te]); open(f'{w}/test_q_ids.txt', 'w').write(''.join(ids[i] + '\n' for i in te))
np.save(f'{w}/docs_trainq.npy', np.concatenate([np.load(f'{e}/docs.npy'), q[tr]]))
PY
ev() { $R eval --base "$E/docs.npy" --queries "$W/test_q.npy" --qrels "$S/qrels/test.tsv" --doc-ids "$E/doc_ids.txt" --query-ids "$W/test_q_ids.txt" --encoder "$1" --json 2>/dev/null; }
echo "| encoder | bytes | recall@10 | nDCG@10 |"
echo "|---|---:|---:|---:|"
for m in 32 64 128; do
  h=$(( 2 * m > 512 ? 2 * m : 512 ))
  $R train --force --base "$W/docs_trainq.npy" --dim $m --hidden $h --out "$W/sf$m" 2>&1 | grep -E "best epoch" >&2
  $R train --force --base "$W/docs_trainq.npy" --dim $m --hidden $h --init pca --out "$W/sfpca$m" 2>&1 | grep -E "best epoch" >&2
  for enc in "learned=$W/sf$m" "learned=$W/sfpca$m" pca$m hadamard$m; do row "${enc/$W\//}" "$(ev "$enc")"; done
done
$R train --force --base "$W/docs_trainq.npy" --dim 256 --hidden 512 --qat sign --out "$W/sf256sign" 2>&1 | grep -E "best epoch" >&2
for enc in "learned=$W/sf256sign+sign" pca256+sign hadamard256+sign "learned=$W/sf32+int8" pca32+int8 hadamard32+int8; do row "${enc/$W\//}" "$(ev "$enc")"; done
echo "32 bytes as product-quantization codes (opq32+pq32 after the learned or PCA projection, or on the raw 384 dims):"
for enc in "learned=$W/sf128+opq32+pq32" "learned=$W/sfpca128+opq32+pq32" pca128+opq32+pq32 opq32+pq32 pq32; do row "${enc/$W\//}" "$(ev "$enc")"; done
row flat "$(ev flat)"
fi

if [[ $SECTIONS == *3* ]]; then
echo "## 3. training speed, 100k x 768, 10 epochs, labels, m 256"
[ -f "$W/s100k/base.npy" ] || $R synth --classes 1000 --per-class 100 --queries-per-class 1 --new-classes 0 --out "$W/s100k"
/usr/bin/time -f "%e s wall, %M KB max RSS" $R train --force --base "$W/s100k/base.npy" --labels "$W/s100k/labels.npy" --dim 256 --epochs 10 --patience 10 --out "$W/s100k-learned" --json 2>&1 | grep -E "best epoch|wall|seconds_per_epoch" | sed 's/^{.*"seconds_per_epoch":\([0-9.]*\).*/seconds per epoch (training only): \1/'
fi
