#!/usr/bin/env bash
# The standard DeepIntShield benchmark suite (method, bar and recorded results: bench/README.md).
#
#   bench/run-standard.sh [OUT_DIR]        # about 11 minutes on a 2-core machine
#   QUICK=1 bench/run-standard.sh          # the same steps, shortened (a smoke test, ~2 minutes)
#
# Builds the release binaries, then starts and stops every process it needs, on 127.0.0.1 only,
# each step bounded by `timeout`. Raw outputs (tables, JSON) go to OUT_DIR (default
# target/bench/<UTC time>); the last step prints the bar and what was measured against it.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-target/bench/$(date -u +%Y%m%dT%H%M%SZ)}
QUICK=${QUICK:-0}
mkdir -p "$OUT"
BIN=target/release
CONFIGS=bench/config

if [ "$QUICK" = 1 ]; then
  ROUNDS=1 ROUND=2s WARM=1s SWEEP_STEP_S=2s BIFROST_S=10 TOOL_S=2s STREAMS_N=2000 STREAMS_S=10
else
  ROUNDS=3 ROUND=5s WARM=1s SWEEP_STEP_S=4s BIFROST_S=60 TOOL_S=5s STREAMS_N=10000 STREAMS_S=60
fi

. bench/lib.sh

# start_mock NAME [ARGS...]: sets MOCK_ADDR and MOCK_PID.
start_mock() {
  local name=$1; shift
  echo "+ deepintshield-mock $*" >> "$OUT/run.log"
  "$BIN/deepintshield-mock" "$@" > "$OUT/$name.mock.out" 2>&1 &
  MOCK_PID=$!; PIDS+=("$MOCK_PID")
  MOCK_ADDR=$(wait_line "$OUT/$name.mock.out" '127\.0\.0\.1:[0-9]+')
}

# start_gateway NAME CONFIG_TEMPLATE: sets GW_URL (API) and GW_PID.
start_gateway() {
  local name=$1 template=$2
  sed "s/@MOCK_ADDR@/$MOCK_ADDR/" "$template" > "$OUT/$name.toml"
  echo "+ deepintshield --config $OUT/$name.toml   (from $template)" >> "$OUT/run.log"
  BENCH_KEY=sk-bench "$BIN/deepintshield" --config "$OUT/$name.toml" \
    > "$OUT/$name.gw.out" 2> "$OUT/$name.gw.err" &
  GW_PID=$!; PIDS+=("$GW_PID")
  GW_URL=$(wait_line "$OUT/$name.gw.out" 'http://127\.0\.0\.1:[0-9]+' | head -1)
}

# start_nginx: nginx as a bare reverse proxy to MOCK_ADDR (the reference hop), when nginx is
# installed; sets NGINX_TARGET to a --target argument (empty without nginx) and NGINX_PID.
start_nginx() {
  NGINX_TARGET=() NGINX_PID=
  command -v nginx > /dev/null || { echo "(nginx not installed: no reference hop)" | tee -a "$OUT/run.log"; return 0; }
  local prefix port
  prefix=$(realpath "$OUT")/nginx
  mkdir -p "$prefix"
  port=$(free_port)
  sed -e "s|@PREFIX@|$prefix|g" -e "s/@PORT@/$port/" -e "s/@MOCK_ADDR@/$MOCK_ADDR/" \
    "$CONFIGS/nginx.conf.template" > "$prefix/nginx.conf"
  echo "+ nginx -c $prefix/nginx.conf   ($(nginx -v 2>&1))" >> "$OUT/run.log"
  nginx -e "$prefix/error.log" -c "$prefix/nginx.conf" -p "$prefix" > "$prefix/out" 2>&1 &
  NGINX_PID=$!; PIDS+=("$NGINX_PID")
  local i
  for i in $(seq 50); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.1
  done
  NGINX_TARGET=(--target "nginx=http://127.0.0.1:$port/v1/chat/completions")
}

# memory PID: "rss_kb peak_rss_kb" from /proc.
memory() { awk '/^VmRSS:/{r=$2} /^VmHWM:/{h=$2} END{print r, h}' "/proc/$1/status"; }

build_release

say "machine"
{
  machine_lines
  echo "memory: $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "rustc: $(rustc --version)"
} | tee "$OUT/machine.txt" | tee -a "$OUT/run.log"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

say "1. the load tool: 50,000 requests/s from one core (tool on core 0, mock on core 1, zero delay)"
start_mock tool --threads 1
echo "+ taskset -a -cp 1 $MOCK_PID   (every thread of the mock on core 1)" >> "$OUT/run.log"
taskset -a -cp 1 "$MOCK_PID" > /dev/null
run timeout 60 taskset -c 0 "$BIN/deepintshield-load" run \
  --url "http://$MOCK_ADDR/v1/chat/completions" --rate 50000 --duration "$TOOL_S" --warmup 1s \
  --connections 64 --json "$OUT/tool-50k.json"
curl -s "http://$MOCK_ADDR/mock/stats" > "$OUT/tool-50k.mock-stats.json" || true
stop "$MOCK_PID"

say "2. idle RSS of the gateway with the default config (listen ports set to 0)"
MOCK_ADDR=unused
sed -E 's/^(listen|admin_listen) = .*/\1 = "127.0.0.1:0"/' config/deepintshield.toml > "$OUT/default.template.toml"
start_gateway default "$OUT/default.template.toml"
sleep 3
read -r RSS HWM <<< "$(memory "$GW_PID")"
echo "idle gateway, default config: rss_kb=$RSS peak_rss_kb=$HWM threads=$(awk '/^Threads:/{print $2}' "/proc/$GW_PID/status")" \
  | tee -a "$OUT/run.log" | tee "$OUT/idle-rss.txt"
stop "$GW_PID"

say "3. added latency at 1,000 and 5,000 requests/s (mock delay 10 ms, gateway -> mock over HTTP)"
# mock-again is the mock itself a second time: its "added latency" is the noise floor of the
# measurement (what an ideal, zero-cost proxy would show on this machine); nginx, when installed,
# is the reference of a bare event-loop proxy hop.
start_mock overhead --threads 1 --delay-ms 10
start_gateway overhead "$CONFIGS/overhead.toml"
start_nginx
for RATE in 1000 5000; do
  run timeout 300 "$BIN/deepintshield-load" compare \
    --target "mock=http://$MOCK_ADDR/v1/chat/completions" \
    --target "mock-again=http://$MOCK_ADDR/v1/chat/completions" \
    "${NGINX_TARGET[@]}" \
    --target "gateway=$GW_URL/v1/chat/completions" \
    --rate "$RATE" --rounds "$ROUNDS" --duration "$ROUND" --warmup "$WARM" --connections 128 \
    --pid "gateway=$GW_PID" --json "$OUT/overhead-$RATE.json"
done
stop "$GW_PID" ${NGINX_PID:+"$NGINX_PID"}

say "4. highest rate with p99 added under 1 ms (sweep, mock delay 10 ms)"
start_gateway throughput "$CONFIGS/throughput.toml"
run timeout 600 "$BIN/deepintshield-load" sweep \
  --target "mock=http://$MOCK_ADDR/v1/chat/completions" \
  --target "gateway=$GW_URL/v1/chat/completions" \
  --from 2500 --to 40000 --step 2500 --p99-max-us 1000 \
  --duration "$SWEEP_STEP_S" --warmup "$WARM" --connections 1024 --timeout 10s \
  --gateway-pid "$GW_PID" --json "$OUT/sweep.json"
stop "$GW_PID" "$MOCK_PID"

say "5. streaming: 1,000 streams/s of 16 chunks (mock: 10 ms to first token, 5 ms between chunks)"
start_mock stream --threads 1 --delay-ms 10 --stream-chunks 16 --chunk-delay-ms 5
start_gateway stream "$CONFIGS/overhead.toml"
run timeout 300 "$BIN/deepintshield-load" compare --stream \
  --target "mock=http://$MOCK_ADDR/v1/chat/completions" \
  --target "gateway=$GW_URL/v1/chat/completions" \
  --rate 1000 --rounds "$ROUNDS" --duration "$ROUND" --warmup "$WARM" --connections 256 \
  --gateway-pid "$GW_PID" --json "$OUT/stream-1000.json"
stop "$GW_PID" "$MOCK_PID"

say "6. Bifrost's shape: 5,000 requests/s for ${BIFROST_S} s, upstream latency 1.5 s (~7,500 in flight)"
start_mock bifrost --threads 1 --delay-ms 1500
start_gateway bifrost "$CONFIGS/bifrost.toml"
sleep 1
read -r RSS HWM <<< "$(memory "$GW_PID")"
echo "gateway before the run: rss_kb=$RSS peak_rss_kb=$HWM" | tee -a "$OUT/run.log"
# The peak resident set, sampled every second (it survives the gateway if the gateway dies).
( while kill -0 "$GW_PID" 2>/dev/null; do
    awk '/^VmHWM:/{print $2}' "/proc/$GW_PID/status" 2>/dev/null || true
    sleep 1
  done ) > "$OUT/bifrost-hwm.samples" &
SAMPLER=$!; PIDS+=("$SAMPLER")
# Where the memory of the calls in flight is, halfway through (bench/config/bifrost.toml's stacks).
( sleep $((BIFROST_S / 2)); smaps_report "$GW_PID" 256 64 > "$OUT/bifrost-smaps.txt" ) &
PIDS+=("$!")
run timeout $((BIFROST_S + 90)) "$BIN/deepintshield-load" run \
  --url "$GW_URL/v1/chat/completions" --rate 5000 --duration "${BIFROST_S}s" --warmup 0s \
  --connections 8500 --timeout 20s --json "$OUT/bifrost.json"
ALIVE=0; kill -0 "$GW_PID" 2>/dev/null && ALIVE=1
[ "$ALIVE" = 1 ] && awk '/^VmHWM:/{print $2}' "/proc/$GW_PID/status" >> "$OUT/bifrost-hwm.samples"
PEAK=$(sort -n "$OUT/bifrost-hwm.samples" | tail -1)
echo "gateway after the run: alive=$ALIVE peak_rss_kb=${PEAK:-0} idle_rss_kb=$RSS in_flight=7500" | tee -a "$OUT/run.log" | tee "$OUT/bifrost-rss.txt"
echo "halfway through the run:" | tee -a "$OUT/run.log"
tee -a "$OUT/run.log" < "$OUT/bifrost-smaps.txt" || true
[ "$ALIVE" = 1 ] || grep -m3 -E 'panicked|fatal|error' "$OUT/bifrost.gw.err" | tee -a "$OUT/run.log" || true
stop "$GW_PID" "$MOCK_PID" "$SAMPLER"

say "7. long streams: $STREAMS_N streams held open for $STREAMS_S s at once, one event per second each"
# The mock answers each stream with STREAMS_S chunks a second apart; the streams arrive within 5 s
# and are all open together for most of the run. The pool starts at workers_min = 8 and grows
# with them (config/streams.toml).
start_mock streams --threads 1 --delay-ms 10 --stream-chunks "$STREAMS_S" --chunk-delay-ms 1000
start_gateway streams "$CONFIGS/streams.toml"
sleep 1
read -r RSS HWM <<< "$(memory "$GW_PID")"
( while kill -0 "$GW_PID" 2>/dev/null; do
    awk '/^VmHWM:/{h=$2} /^Threads:/{t=$2} END{print h, t}' "/proc/$GW_PID/status" 2>/dev/null || true
    sleep 1
  done ) > "$OUT/streams-hwm.samples" &
SAMPLER=$!; PIDS+=("$SAMPLER")
# Where their memory is once all have arrived (bench/config/streams.toml's stacks).
( sleep $((STREAMS_S / 2 + 5)); smaps_report "$GW_PID" 256 64 > "$OUT/streams-smaps.txt" ) &
PIDS+=("$!")
run timeout $((STREAMS_S + 120)) "$BIN/deepintshield-load" run --stream \
  --url "$GW_URL/v1/chat/completions" --rate $((STREAMS_N / 5)) --duration 5s --warmup 0s \
  --connections $((STREAMS_N + 500)) --timeout $((STREAMS_S + 60))s --json "$OUT/streams.json"
ALIVE=0; kill -0 "$GW_PID" 2>/dev/null && ALIVE=1
PEAK=$(sort -n "$OUT/streams-hwm.samples" | tail -1 | cut -d' ' -f1)
THREADS=$(sort -n -k2 "$OUT/streams-hwm.samples" | tail -1 | cut -d' ' -f2)
echo "gateway: alive=$ALIVE idle_rss_kb=$RSS peak_rss_kb=${PEAK:-0} peak_threads=${THREADS:-0} in_flight=$STREAMS_N" \
  | tee -a "$OUT/run.log" | tee "$OUT/streams-rss.txt"
echo "with all streams open:" | tee -a "$OUT/run.log"
tee -a "$OUT/run.log" < "$OUT/streams-smaps.txt" || true
stop "$GW_PID" "$MOCK_PID" "$SAMPLER"

say "8. scale-up reaction: a burst of 2,000 streams (10 s each) on a pool at workers_min = 8"
# Time to first token of a burst that needs 250 times the pool's idle size, against the mock's
# own 10 ms: what growing the pool on demand costs the first tokens. The pool's scaling events
# (from /stats) show how it grew.
start_mock burst --threads 1 --delay-ms 10 --stream-chunks 10 --chunk-delay-ms 1000
start_gateway burst "$CONFIGS/streams.toml"
ADMIN_URL=$(wait_line "$OUT/burst.gw.out" 'http://127\.0\.0\.1:[0-9]+' | tail -1)
run timeout 120 "$BIN/deepintshield-load" run --stream \
  --url "$GW_URL/v1/chat/completions" --rate 4000 --duration 500ms --warmup 0s \
  --connections 2500 --timeout 60s --json "$OUT/burst.json"
curl -s "$ADMIN_URL/stats" > "$OUT/burst-stats.json" || true
stop "$GW_PID" "$MOCK_PID"

say "summary (the bar: bench/README.md)"
python3 bench/summary.py "$OUT" | tee "$OUT/summary.txt"
echo "raw results: $OUT"
