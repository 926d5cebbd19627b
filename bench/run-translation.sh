#!/usr/bin/env bash
# What translation costs: the gateway's added latency and CPU per request for each direction
# between the OpenAI and Anthropic APIs, at 1,000 requests/s against the bench mock (10 ms), each
# direction interleaved with the mock reached directly in the same `compare` (method and results:
# bench/README.md, "Translation").
#
#   bench/run-translation.sh [OUT_DIR]
#   BEFORE_BIN=/path/to/an/older/deepintshield bench/run-translation.sh
#       also compares the OpenAI passthrough hop of that build with this one (same run)
#
# Builds the release binaries, starts and stops every process on 127.0.0.1, bounds each step.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-target/bench/translation-$(date -u +%Y%m%dT%H%M%SZ)}
QUICK=${QUICK:-0}
mkdir -p "$OUT"
BIN=target/release
if [ "$QUICK" = 1 ]; then ROUNDS=1 ROUND=2s; else ROUNDS=3 ROUND=5s; fi
RATE=${RATE:-1000}

. bench/lib.sh

# start_gateway NAME BINARY CONFIG: sets GW_URL and GW_PID.
start_gateway() {
  sed "s/@MOCK_ADDR@/$MOCK_ADDR/" "$3" > "$OUT/$1.toml"
  BENCH_KEY=sk-bench "$2" --config "$OUT/$1.toml" > "$OUT/$1.gw.out" 2> "$OUT/$1.gw.err" &
  GW_PID=$!; PIDS+=("$GW_PID")
  GW_URL=$(wait_line "$OUT/$1.gw.out" 'http://127\.0\.0\.1:[0-9]+' | head -1)
}

say "build"
run cargo build --release --workspace --bins -q

"$BIN/deepintshield-mock" --threads 1 --delay-ms 10 > "$OUT/mock.out" 2>&1 &
PIDS+=("$!")
MOCK_ADDR=$(wait_line "$OUT/mock.out" '127\.0\.0\.1:[0-9]+')
start_gateway after "$BIN/deepintshield" bench/config/translation.toml
AFTER_URL=$GW_URL AFTER_PID=$GW_PID
MOCK="http://$MOCK_ADDR"
ANTHROPIC_HEADERS=(--header "x-api-key: sk-bench" --header "anthropic-version: 2023-06-01")

# compare NAME BODY PATH [EXTRA...]: the mock directly against the gateway, same body and path.
compare() {
  local name=$1 body=$2 path=$3; shift 3
  run timeout 300 "$BIN/deepintshield-load" compare \
    --target "mock=$MOCK$path" --target "gateway=$AFTER_URL$path" \
    --body "bench/bodies/$body" "$@" \
    --rate "$RATE" --rounds "$ROUNDS" --duration "$ROUND" --warmup 1s --connections 128 \
    --pid "gateway=$AFTER_PID" --json "$OUT/$name.json"
}

say "1. OpenAI client -> openai provider (passthrough)"
compare openai-passthrough openai-chat.json /v1/chat/completions
say "2. Anthropic client -> anthropic provider (passthrough)"
compare anthropic-passthrough anthropic-messages.json /v1/messages "${ANTHROPIC_HEADERS[@]}"
say "3. Anthropic client -> openai provider (translated)"
compare anthropic-to-openai anthropic-to-openai.json /v1/messages "${ANTHROPIC_HEADERS[@]}"
say "4. OpenAI client -> anthropic provider (translated)"
compare openai-to-anthropic openai-to-anthropic.json /v1/chat/completions

if [ -n "${BEFORE_BIN:-}" ]; then
  say "5. the OpenAI passthrough hop: $BEFORE_BIN against this build, interleaved"
  sed '/^\[providers\.ant/,/^$/d' \
    bench/config/translation.toml > "$OUT/before.template.toml"
  start_gateway before "$BEFORE_BIN" "$OUT/before.template.toml"
  run timeout 300 "$BIN/deepintshield-load" compare \
    --target "mock=$MOCK/v1/chat/completions" \
    --target "before=$GW_URL/v1/chat/completions" \
    --target "after=$AFTER_URL/v1/chat/completions" \
    --body bench/bodies/openai-chat.json \
    --rate "$RATE" --rounds "$ROUNDS" --duration "$ROUND" --warmup 1s --connections 128 \
    --pid "before=$GW_PID" --pid "after=$AFTER_PID" --json "$OUT/before-after.json"
fi
echo "raw outputs: $OUT"
