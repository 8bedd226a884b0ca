#!/usr/bin/env bash
# rewa on Ray vs one process (scripts/ray_scale.py): embedding with 1 and 2 workers, the build
# of 1M x 768 synthetic vectors (rewa synth --noise 0.1, generated here, never committed) into
# 1, 2 and 4 shards, and search through Ray Serve at 1, 8 and 32 clients vs `rewa serve`.
# Needs a virtualenv with the package and its ray extra (pip install "./crates/rewa-py[ray]").
# Runs inside a network namespace of its own (root: `unshare -n`), so Ray binds 127.0.0.1.
# usage: scripts/ray_scale.sh VENV WORKDIR DATA MODELS [ray_scale.py options...]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$1 W=$2 DATA=$3 MODELS=$4
shift 4
cargo build --release -q -p rewa-cli
cargo build --release -q -p rewa-serve --example load
T=$PWD/${CARGO_TARGET_DIR:-target}/release
mkdir -p "$W"
[ -f "$W/data/base.npy" ] || "$T/rewa" synth --classes 1000 --per-class 1000 --queries-per-class 1 \
    --new-classes 0 --dim 768 --noise 0.1 --seed 3 --out "$W/data"
echo "== commit: $(git rev-parse --short HEAD)"
exec unshare -n bash -c 'ip link set lo up && exec "$0" "$@"' "$VENV/bin/python" scripts/ray_scale.py \
    --work "$W" --data "$DATA" --models "$MODELS" --rewa "$T/rewa" --load "$T/examples/load" "$@"
