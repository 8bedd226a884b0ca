#!/usr/bin/env bash
# Load test of `rewa serve` on loopback: a 100k x 768 synthetic index (rewa synth --noise 0.1,
# generated here, never committed), the default pipeline, then 1, 8 and 64 closed-loop clients
# for SECS seconds each: ~95% searches (1 query, k=10), ~5% adds (10 vectors). Prints each
# run's QPS, p50/p99 latency and status counts (crates/rewa-serve/examples/load.rs), and the
# server's resident memory (VmRSS, and VmHWM = peak) and index size after start and after each
# run; then two runs of searches only (SEARCH_ONLY clients, no adds: the index stops growing)
# to show memory stays flat as requests go on.
# usage: scripts/serve_load.sh [WORKDIR] [SECS] [CLIENTS...]     (WORKDIR default: a new temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-$(mktemp -d)}
SECS=${2:-20}
shift $(( $# > 2 ? 2 : $# ))
CLIENTS=${*:-1 8 64}
SEARCH_ONLY=${SEARCH_ONLY:-64}
# two commands: `--example` would narrow the first to the example alone, leaving a stale `rewa`
cargo build --release -q -p rewa-cli
cargo build --release -q -p rewa-serve --example load
T=${CARGO_TARGET_DIR:-target}/release
R=$T/rewa
mkdir -p "$W"
[ -f "$W/data/base.npy" ] || $R synth --classes 100 --per-class 1000 --queries-per-class 10 --new-classes 0 \
    --dim 768 --noise 0.1 --seed 3 --out "$W/data"
rm -rf "$W/idx"
$R build --base "$W/data/base.npy" --out "$W/idx" --json
$R info --index "$W/idx"
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "== commit: $(git rev-parse --short HEAD)"
$R serve --index "$W/idx" --addr 127.0.0.1:0 2> "$W/serve.log" &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 600); do grep -q "listening on" "$W/serve.log" && break; sleep 0.1; done
ADDR=$(grep -o 'http://[0-9.:]*' "$W/serve.log" | head -1 | cut -d/ -f3)
mem() {
    echo "server memory ($1): $(grep -E 'VmRSS|VmHWM' /proc/$PID/status | tr -s ' \t' ' ' | tr '\n' ' ')" \
        "$(curl -s "http://$ADDR/metrics" | grep '^rewa_index_vectors')"
}
mem "after start"
for C in $CLIENTS; do
    echo "== $C clients, $SECS s"
    "$T/examples/load" --addr "$ADDR" --queries "$W/data/queries_same.npy" --clients "$C" --seconds "$SECS"
    mem "after $C clients"
done
for RUN in 1 2; do
    echo "== $SEARCH_ONLY clients, searches only, $SECS s (run $RUN)"
    "$T/examples/load" --addr "$ADDR" --queries "$W/data/queries_same.npy" --clients "$SEARCH_ONLY" \
        --seconds "$SECS" --add-percent 0
    mem "after searches only, run $RUN"
done
curl -s "http://$ADDR/metrics" | grep -E '^rewa_(index_vectors|index_saves_total|http_requests_total)' || true
kill -TERM $PID
RC=0; wait $PID || RC=$?
echo "server exit: $RC"
cat "$W/serve.log"
