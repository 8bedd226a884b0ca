#!/usr/bin/env bash
# Recall@10 against exact search (no rerank) at 8, 16, 32 and 64 bytes per vector, rewa's codes
# next to FAISS's on the same files, SciFact sentence-transformers embeddings: base = the
# 5,183 documents (every fit, learned models included, sees only them), queries = all 1,109
# SciFact queries, never fitted on. Bytes are what each library stores per vector (RaBitQ
# factors included). Learned models are trained here with the quantizer in the loop
# (`rewa train --qat ...`, --init pca).
#
# usage: scripts/codes_bytes.sh EMB_DIR WORKDIR OUT.jsonl
#   EMB_DIR: e.g. ../shared/data/scifact/emb_all-MiniLM-L6-v2 (docs.npy, queries.npy)
#   env: REWA (default target/release/rewa), PY (a python with faiss-cpu and numpy)
set -euo pipefail
E=$1 W=$2 OUT=$3
R=${REWA:-target/release/rewa}
PY=${PY:-python3}
mkdir -p "$W"
D=$($PY -c "import numpy as np; print(np.load('$E/docs.npy', mmap_mode='r').shape[1])")
: > "$OUT"
train() { # dim qat name
  [ -f "$W/$3/model.safetensors" ] || $R train --force --base "$E/docs.npy" --dim "$1" --init pca ${2:+--qat $2} --out "$W/$3" 2>&1 | grep "best epoch" >&2
}
row() { # spec
  flag=--encoder; [[ $1 == *:* ]] && flag=--pipeline
  $R eval --base "$E/docs.npy" --queries "$E/queries.npy" $flag "$1" --json 2>/dev/null |
    $PY -c "import json,sys; r=json.load(sys.stdin); print(json.dumps(dict(lib='rewa', spec=r['spec'].replace('$W/',''), bytes=r['bytes_per_vector'], recall=round(r['recall_at_k'],4), reranked=r['stage_hits'][0] if len(r['stage_hits'])>1 else None, qps=round(r['qps']))))" | tee -a "$OUT"
}
# learned encoders trained for their codes
train 64 asign l64asign; train 128 asign l128asign; train 256 asign l256asign
train 64 rabitq1 l64rabitq1; train 192 rabitq1 l192rabitq1; train 128 rabitq2 l128rabitq2
train 128 pq32 l128pq32; train 128 "" l128
for s in pq8 opq8+pq8 hadamard64+asign "learned=$W/l64asign+asign" \
         pq16 opq16+pq16 hadamard128+asign "learned=$W/l128asign+asign" pca64+rabitq1 "learned=$W/l64rabitq1+rabitq1" \
         pq32 opq32+pq32 hadamard256+asign "learned=$W/l256asign+asign" pca192+rabitq1 pca96+rabitq2 \
         "learned=$W/l192rabitq1+rabitq1" "learned=$W/l128pq32+pq32" "learned=$W/l128+opq32+pq32" \
         pq64 opq64+pq64 pca112+rabitq4 "learned=$W/l128rabitq2+rabitq2" \
         opq8+pq8s2 opq16+pq16s2 opq32+pq32s4 opq64+pq64s4 "learned=$W/l128+opq32+pq32s4" ; do
  row "$s"
done
[ "$D" -le 448 ] && row rabitq1   # 48 + 8 = 56 bytes at 384 dims
# FAISS at the same sizes (its RaBitQ: 1 bit per dimension + 8 bytes of factors)
if [ "$D" -le 448 ]; then RB64=RaBitQ; else RB64=PCA448,RaBitQ; fi
$PY "$(dirname "$0")/bytes_faiss.py" "$E/docs.npy" "$E/queries.npy" \
  PQ8 OPQ8,PQ8 PQ16 OPQ16,PQ16 PQ32 OPQ32,PQ32 PQ64 OPQ64,PQ64 \
  PCA64,RaBitQ PCA192,RaBitQ $RB64 2>/dev/null |
  $PY -c "
import json,sys
for l in sys.stdin:
    r=json.loads(l); r['lib']='faiss'; print(json.dumps(r))" | tee -a "$OUT"
