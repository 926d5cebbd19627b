#!/usr/bin/env bash
# Provider isolation, measured: the latency of provider b at 500 requests/s with provider a
# healthy, then while a is stalled completely (its 4 workers stuck on 30 s answers, 196 requests
# queued behind them). Method and results: bench/README.md, "Isolation". The end-to-end test
# tests/isolation.rs checks the behaviour (every b request answered, none through a's queue);
# this script measures what the stall costs b.
#
#   bench/run-isolation.sh [OUT_DIR]
#
# Builds the release binaries, starts and stops every process on 127.0.0.1, bounds each step.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-target/bench/isolation-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
BIN=${BIN:-target/release}
RATE=${RATE:-500}

. bench/lib.sh

if [ "$BIN" = target/release ]; then
  say "build"
  cargo build --release --workspace --bins -q
fi

"$BIN/deepintshield" --config bench/config/isolation.toml > "$OUT/gw.out" 2> "$OUT/gw.err" &
PIDS+=("$!")
URLS=$(wait_line "$OUT/gw.out" 'http://127\.0\.0\.1:[0-9]+' | head -2)
API=$(sed -n 1p <<<"$URLS")
ADMIN=$(sed -n 2p <<<"$URLS")
load() {
  timeout 120 "$BIN/deepintshield-load" run --url "$API/v1/chat/completions" "$@"
}

say "b alone: $RATE/s for 5 s"
load --body bench/bodies/isolation-b.json --rate "$RATE" --duration 5s --warmup 1s \
  --connections 32 --json "$OUT/healthy.json" | tee -a "$OUT/run.log"

say "a stalled: 200 requests held (4 running 30 s, 196 queued)"
load --body bench/bodies/isolation-a.json --rate 100 --duration 2s --warmup 0s \
  --connections 256 --timeout 60s > "$OUT/stall.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 200); do
  depth=$(curl -s "$ADMIN/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pools"]["a"]["queue_depth"])')
  [ "$depth" -ge 196 ] && break
  sleep 0.1
done
echo "a queue depth: $depth" | tee -a "$OUT/run.log"

say "b while a is stalled: $RATE/s for 5 s"
load --body bench/bodies/isolation-b.json --rate "$RATE" --duration 5s --warmup 1s \
  --connections 32 --json "$OUT/stalled.json" | tee -a "$OUT/run.log"

python3 - "$OUT" <<'PY' | tee -a "$OUT/run.log"
import json, sys
out = sys.argv[1]
h, s = (json.load(open(f"{out}/{n}.json")) for n in ("healthy", "stalled"))
for q in ("p50_us", "p99_us", "p999_us", "max_us"):
    print(f"b {q}: a healthy {h['latency'][q]}, a stalled {s['latency'][q]}")
print(f"b errors: a healthy {h['errors'] or 'none'}, a stalled {s['errors'] or 'none'}")
PY
