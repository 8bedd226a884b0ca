#!/usr/bin/env bash
# REWA attention inside the embedding models, measured (held-out texts only): one JSON line per
# figure into OUT.jsonl.
#   cost      one layer of full vs REWA attention at lengths 128..4096 (`rewa attention cost`)
#   fit       key projections per model, fitted on the 809 SciFact *train* queries only
#   fidelity  cosine of each document's vector with REWA attention to its full-attention
#             vector, on the first DOCS SciFact documents (never fitted on), for
#             top x bits x max_seq_len, the exact top-k selection beside it
#   ndcg      SciFact nDCG@10 from text (whole corpus, the 300 test queries) for a few settings
#   time      whole `rewa embed` runs, REWA against full attention, paired by BENCH (a paired
#             A/B timer called as `$BENCH -n 3 --timeout 900 --vs 'B' -- A`), at 256 and 512
# usage: scripts/attention.sh MODELS WORKDIR OUT [STEPS]
#   MODELS  as scripts/fetch-models.sh lays it out;  STEPS: "cost fit fidelity ndcg" (default)
# env: PY (python with numpy, default python3), REWA_BIN (default: the release build),
#      DOCS (default 200 MiniLM / 100 MPNet), TIME_MODELS / TIME_SPECS (the time step's),
#      FID_MODELS / FID_SETTINGS (the fidelity step's
#      models and specs instead of the grid), NDCG_MODELS (default: both), NDCG_<MiniLM|MPNet>
#      (the "max_seq_len attention" settings of the ndcg step; MPNet's default is one setting:
#      its whole corpus takes about half an hour per run on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 3 ]; then
  sed -n '2,14p' "$0" >&2
  exit 2
fi
MODELS=$1 W=$2 OUT=$3
STEPS=${4:-cost fit fidelity ndcg}
PY=${PY:-python3}
if [ -z "${REWA_BIN:-}" ]; then
  cargo build --release -q -p rewa-cli
  REWA_BIN=$PWD/target/release/rewa
fi
R=$REWA_BIN
S=$PWD/../shared/data/scifact
mkdir -p "$W"
touch "$OUT.jsonl"
emit() { echo "$1" | tee -a "$OUT.jsonl"; }

# train / test queries as separate files (ids from the qrels)
"$PY" - "$S" "$W" <<'PY'
import json, sys
s, w = sys.argv[1], sys.argv[2]
for split in ("train", "test"):
    ids = {l.split("\t")[0] for l in open(f"{s}/qrels/{split}.tsv").read().splitlines()[1:]}
    with open(f"{w}/{split}_queries.jsonl", "w") as f:
        for line in open(f"{s}/queries.jsonl"):
            if json.loads(line)["_id"] in ids:
                f.write(line)
PY

cosines() {  # full.npy other.npy -> mean min
  "$PY" -c "
import numpy as np, sys
a, b = np.load(sys.argv[1]).astype(np.float64), np.load(sys.argv[2]).astype(np.float64)
c = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
print(f'{c.mean():.5f} {c.min():.5f}')" "$1" "$2"
}

for step in $STEPS; do
case $step in
cost)
  for shape in "12 32 all-MiniLM-L6-v2" "12 64 all-mpnet-base-v2"; do
    set -- $shape
    for att in rewa:bits=64,top=32 rewa:bits=128,top=32 rewa:bits=32,top=16 rewa:bits=64,top=32,score=asym; do
      "$R" attention cost --attention "$att" --heads "$1" --head-dim "$2" \
        --lengths 128,256,512,1024,2048,4096 --reps 5 --json |
        while read -r line; do emit "{\"step\":\"cost\",\"model\":\"$3\",\"row\":$line}"; done
    done
  done
  ;;
fit)
  for m in all-MiniLM-L6-v2 all-mpnet-base-v2; do
    j=$("$R" attention fit --model "$MODELS/$m" --input "$W/train_queries.jsonl" --field text --out "$W/$m-keys.safetensors" --json)
    emit "{\"step\":\"fit\",\"model\":\"$m\",\"fit\":${j//$W\//WORKDIR/}}"
  done
  ;;
fidelity)
  for m in ${FID_MODELS:-all-MiniLM-L6-v2 all-mpnet-base-v2}; do
    case $m in all-MiniLM-L6-v2) n=${DOCS:-200} ;; *) n=${DOCS:-100} ;; esac
    head -n "$n" "$S/corpus.jsonl" > "$W/docs$n.jsonl"
    for len in 256 512; do
      f=$W/$m-$len-full.npy
      [ -f "$f" ] || "$R" embed --model "$MODELS/$m" --input "$W/docs$n.jsonl" --max-seq-len $len --out "$f" --json >/dev/null 2>&1
      settings=()
      # the whole grid for MiniLM; MPNet (five times the work per text) all tops at 64 bits
      # and the 32- and 128-bit codes at top 32
      case $m in all-MiniLM-L6-v2) codes="32 64 128" ;; *) codes=64 ;; esac
      for top in 8 16 32 64; do
        for bits in $codes; do settings+=("rewa:bits=$bits,top=$top"); done
        settings+=("rewa:bits=64,top=$top,score=exact")
      done
      [ "$codes" = 64 ] && settings+=("rewa:bits=32,top=32" "rewa:bits=128,top=32")
      for bits in $codes; do
        settings+=("rewa:bits=$bits,top=32,score=asym" "rewa:bits=$bits,top=32,keys=$W/$m-keys.safetensors")
      done
      settings+=("rewa:bits=64,top=32,window=4")
      # FID_SETTINGS (space-separated specs) replaces the grid
      [ -n "${FID_SETTINGS:-}" ] && read -r -a settings <<<"$FID_SETTINGS"
      for att in "${settings[@]}"; do
        j=$("$R" embed --model "$MODELS/$m" --input "$W/docs$n.jsonl" --max-seq-len $len --attention "$att" --out "$W/r.npy" --json 2>/dev/null)
        read -r mean min <<<"$(cosines "$f" "$W/r.npy")"
        emit "{\"step\":\"fidelity\",\"model\":\"$m\",\"docs\":$n,\"max_seq_len\":$len,\"attention\":\"${att/keys=$W\//keys=}\",\"cos_mean\":$mean,\"cos_min\":$min,\"embed\":$j}"
      done
    done
  done
  ;;
ndcg)
  for m in ${NDCG_MODELS:-all-MiniLM-L6-v2 all-mpnet-base-v2}; do
    # full attention at the model's own max_seq_len: the shared reference vectors
    E=$S/emb_$m
    je=$("$R" eval --base "$E/docs.npy" --queries "$E/queries.npy" --qrels "$S/qrels/test.tsv" --doc-ids "$E/doc_ids.txt" --query-ids "$E/query_ids.txt" --encoder flat --json 2>/dev/null)
    ndcg=$(echo "$je" | "$PY" -c "import json,sys; print(json.load(sys.stdin)['ndcg_at_10'])")
    emit "{\"step\":\"ndcg\",\"model\":\"$m\",\"max_seq_len\":\"default\",\"attention\":\"full (reference vectors)\",\"ndcg_at_10\":$ndcg}"
    case $m in
      all-MiniLM-L6-v2) specs=${NDCG_MiniLM:-"256:full 256:rewa:bits=64,top=8 256:rewa:bits=64,top=16 256:rewa:bits=64,top=32 256:rewa:bits=64,top=64 512:full 512:rewa:bits=64,top=32 512:rewa:bits=64,top=64"} ;;
      *) specs=${NDCG_MPNet:-"384:rewa:bits=64,top=64"} ;;
    esac
    for spec in $specs; do
      len=${spec%%:*} att=${spec#*:} tag=$W/nd-$m-${spec//[:=,]/_}
      jd=$("$R" embed --model "$MODELS/$m" --input "$S/corpus.jsonl" --max-seq-len "$len" --attention "$att" --out "$tag-docs.npy" --ids-out "$tag-docs.ids" --resume --json 2>/dev/null)
      "$R" embed --model "$MODELS/$m" --input "$W/test_queries.jsonl" --field text --max-seq-len "$len" --attention "$att" --out "$tag-q.npy" --ids-out "$tag-q.ids" --json >/dev/null 2>&1
      je=$("$R" eval --base "$tag-docs.npy" --queries "$tag-q.npy" --qrels "$S/qrels/test.tsv" --doc-ids "$tag-docs.ids" --query-ids "$tag-q.ids" --encoder flat --json 2>/dev/null)
      ndcg=$(echo "$je" | "$PY" -c "import json,sys; print(json.load(sys.stdin)['ndcg_at_10'])")
      emit "{\"step\":\"ndcg\",\"model\":\"$m\",\"max_seq_len\":$len,\"attention\":\"$att\",\"ndcg_at_10\":$ndcg,\"embed_docs\":$jd}"
    done
  done
  ;;
time)
  BENCH=${BENCH:?set BENCH to a paired A/B timer for the time step}
  for m in ${TIME_MODELS:-all-MiniLM-L6-v2 all-mpnet-base-v2}; do
    case $m in all-MiniLM-L6-v2) n=${DOCS:-200} ;; *) n=${DOCS:-100} ;; esac
    head -n "$n" "$S/corpus.jsonl" > "$W/docs$n.jsonl"
    for len in 256 512; do
      for att in ${TIME_SPECS:-rewa:bits=64,top=32 rewa:bits=32,top=16}; do
        base="$R embed --model $MODELS/$m --input $W/docs$n.jsonl --max-seq-len $len"
        echo "== $m max_seq_len $len: $att vs full" | tee -a "$OUT.time.txt"
        $BENCH -n 3 --timeout 900 --vs "$base --out $W/tf.npy" -- $base --attention "$att" --out "$W/ta.npy" 2>&1 | grep -E "A/B|wall" | tee -a "$OUT.time.txt"
      done
    done
  done
  ;;
*) echo "unknown step $step" >&2; exit 2 ;;
esac
done
