#!/usr/bin/env bash
# Bound-driven reranks against OPQ's fixed keep, as whole `rewa search` processes over indexes
# built once: SciFact MiniLM documents, the 1,109 queries tiled 50 times (55,450), paired A/B
# runs alternated by a paired timer (BENCH: called as `$BENCH -n 5 --vs 'B' -- A`, printing
# an `A/B wall` line with the median ratio). Also FAISS's IndexRaBitQ against rewa's rabitq1 on the same queries (in-process QPS).
#
# usage: scripts/rabitq_speed.sh WORKDIR
#   env: REWA (default target/release/rewa), PY (python with faiss-cpu, numpy),
#        BENCH (required: the paired timer), DATA (default ../shared/data/scifact/emb_all-MiniLM-L6-v2)
set -euo pipefail
W=$1
R=$(realpath "${REWA:-target/release/rewa}")
PY=${PY:-python3}
BENCH=${BENCH:?set BENCH to a paired A/B timer}
E=${DATA:-../shared/data/scifact/emb_all-MiniLM-L6-v2}
mkdir -p "$W"
$PY -c "import numpy as np; q=np.load('$E/queries.npy'); np.save('$W/q50.npy', np.tile(q, (50, 1)))"
build() { [ -d "$W/$1" ] || $R build --base "$E/docs.npy" --pipeline "$2" --out "$W/$1" >&2; }
build opq130 "opq32+pq32:130,exact:10"
build opq110 "opq32+pq32:110,exact:10"
build rb2 "rabitq2:bound=1.3,exact:10"
build pca128rb2 "pca128+rabitq2:bound,exact:10"
build rb1 "rabitq1:10"
s() { echo "$R search --index $W/$1 --queries $W/q50.npy --json"; }
pair() { echo "== $1 vs $2"; $BENCH -n 5 --timeout 300 --vs "$(s "$2")" -- $(s "$1") 2>&1 | grep -E "A/B wall"; }
pair rb2 opq130
pair rb2 opq110
pair pca128rb2 opq110
# recall of each pipeline on the (untiled) queries
for p in "opq32+pq32:130,exact:10" "opq32+pq32:110,exact:10" "rabitq2:bound=1.3,exact:10" "pca128+rabitq2:bound,exact:10"; do
  $R eval --base "$E/docs.npy" --queries "$E/queries.npy" --pipeline "$p" --json 2>/dev/null |
    $PY -c "import json,sys; r=json.load(sys.stdin); print(r['spec'], 'recall', round(r['recall_at_k'], 4), 'candidates', round(r['stage_hits'][0], 1))"
done
cat > "$W/faiss_rabitq.py" <<'PY'
import sys, time
import faiss, numpy as np
faiss.omp_set_num_threads(2)
b = np.ascontiguousarray(np.load(sys.argv[1]), dtype="float32"); faiss.normalize_L2(b)
q = np.ascontiguousarray(np.load(sys.argv[2]), dtype="float32"); faiss.normalize_L2(q)
i = faiss.index_factory(b.shape[1], "RaBitQ", faiss.METRIC_INNER_PRODUCT); i.train(b); i.add(b)
i.search(q[:100], 10)
t = time.perf_counter(); i.search(q, 10)
print("faiss RaBitQ qps", round(len(q) / (time.perf_counter() - t)))
PY
for r in 1 2 3; do
  $PY "$W/faiss_rabitq.py" "$E/docs.npy" "$W/q50.npy"
  $R search --index "$W/rb1" --queries "$W/q50.npy" --json 2>/dev/null | $PY -c "import json,sys; print('rewa rabitq1 qps', round(json.load(sys.stdin)['qps']))"
done
