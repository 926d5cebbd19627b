#!/usr/bin/env bash
# Throughput of the gateway on 1, 2, 4 and 8 pinned cores against nginx on the same cores
# (method and recorded results: bench/README.md, "Scaling with cores").
#
#   bench/run-scaling.sh [OUT_DIR]      # needs 16 cores; about 2 minutes
#
# For each core count N, the gateway (then nginx, with N worker processes) runs under
# `taskset -c 0-(N-1)`; the mock runs on MOCK_CPUS and the load tool on TOOL_CPUS, so neither
# shares a core with the hop measured. Each N is one `compare` run at an offered rate above what
# any target completes: the load tool's connections stay busy, and the rate each target achieves
# (requests completed over the round and its 1 s tail; what was never sent counts as `unsent`)
# is its throughput at that concurrency. No warm-up: at this rate a warm-up's backlog would fill
# the measured round. The mock reached directly is the ceiling of the tool and the mock
# themselves; a hop that reaches it is limited by them, not by its cores. CPU per request is
# read from /proc for the gateway and for nginx (its workers included). Latencies in the output
# are those of a saturated hop (queueing in the tool) and mean nothing here.
#
# Environment (defaults for a 16-core machine):
#   CORE_COUNTS="1 2 4 8"   MOCK_CPUS=8-11 MOCK_THREADS=4   TOOL_CPUS=12-15 TOOL_THREADS=4
#   RATE=300000 CONNECTIONS=256 ROUNDS=2 ROUND=3s
#   BIN=target/release (NO_BUILD=1 uses the binaries there as they are)   NGINX=nginx
#   GATEWAY=$BIN/deepintshield (another build of the gateway to measure)
# Every process it starts listens on 127.0.0.1 only and is stopped when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-target/bench/scaling-$(date -u +%Y%m%dT%H%M%SZ)}
CORE_COUNTS=${CORE_COUNTS:-"1 2 4 8"}
MOCK_CPUS=${MOCK_CPUS:-8-11} MOCK_THREADS=${MOCK_THREADS:-4}
TOOL_CPUS=${TOOL_CPUS:-12-15} TOOL_THREADS=${TOOL_THREADS:-4}
RATE=${RATE:-300000} CONNECTIONS=${CONNECTIONS:-256}
ROUNDS=${ROUNDS:-2} ROUND=${ROUND:-3s}
BIN=${BIN:-target/release} NGINX=${NGINX:-nginx}
GATEWAY=${GATEWAY:-$BIN/deepintshield}
CONFIGS=bench/config
mkdir -p "$OUT"

. bench/lib.sh

[ "${NO_BUILD:-0}" = 1 ] || build_release

say "machine"
{
  machine_lines
  echo "cores online: $(nproc --all), this process may use: $(nproc)"
  echo "nginx: $("$NGINX" -v 2>&1)"
  echo "layout: hop on cores 0..N-1, mock on $MOCK_CPUS ($MOCK_THREADS threads), load tool on $TOOL_CPUS ($TOOL_THREADS threads)"
} | tee "$OUT/machine.txt" | tee -a "$OUT/run.log"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
command -v taskset > /dev/null || { echo "taskset (util-linux) is needed" >&2; exit 1; }

# Whether this machine enforces CPU affinity at all (a sandbox may accept taskset and ignore it):
# two processes that spin for one second on core 0 use one second of CPU between them if it does.
say "is affinity enforced? two spinners pinned to core 0 for 1 s"
python3 - <<'PY' 2>&1 | tee -a "$OUT/run.log" | tee "$OUT/affinity.txt"
import os, time
pids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        os.sched_setaffinity(0, {0})
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            pass
        os._exit(0)
    pids.append(pid)
cpu = 0.0
for pid in pids:
    _, _, ru = os.wait4(pid, 0)
    cpu += ru.ru_utime + ru.ru_stime
print(f"two spinners pinned to core 0 for 1 s used {cpu:.2f} s of CPU: affinity "
      + ("enforced" if cpu < 1.4 else "NOT enforced (the core counts below are not limits)"))
PY

say "mock (no delay) on $MOCK_CPUS"
echo "+ taskset -c $MOCK_CPUS deepintshield-mock --threads $MOCK_THREADS" >> "$OUT/run.log"
taskset -c "$MOCK_CPUS" "$BIN/deepintshield-mock" --threads "$MOCK_THREADS" > "$OUT/mock.out" 2>&1 &
MOCK_PID=$!; PIDS+=("$MOCK_PID")
MOCK_ADDR=$(wait_line "$OUT/mock.out" '127\.0\.0\.1:[0-9]+')

for N in $CORE_COUNTS; do
  CPUS=0-$((N - 1))
  say "$N core(s): gateway and nginx on cores $CPUS"
  sed "s/@MOCK_ADDR@/$MOCK_ADDR/" "$CONFIGS/scaling.toml" > "$OUT/gw-$N.toml"
  BENCH_KEY=sk-bench taskset -c "$CPUS" "$GATEWAY" --config "$OUT/gw-$N.toml" \
    > "$OUT/gw-$N.out" 2> "$OUT/gw-$N.err" &
  GW_PID=$!; PIDS+=("$GW_PID")
  GW_URL=$(wait_line "$OUT/gw-$N.out" 'http://127\.0\.0\.1:[0-9]+' | head -1)
  prefix=$(realpath "$OUT")/nginx-$N
  mkdir -p "$prefix"
  port=$(free_port)
  sed -e "s|@PREFIX@|$prefix|g" -e "s/@PORT@/$port/" -e "s/@WORKERS@/$N/" -e "s/@MOCK_ADDR@/$MOCK_ADDR/" \
    "$CONFIGS/nginx-scaling.conf.template" > "$prefix/nginx.conf"
  taskset -c "$CPUS" "$NGINX" -e "$prefix/error.log" -c "$prefix/nginx.conf" -p "$prefix" \
    > "$prefix/out" 2>&1 &
  NGINX_PID=$!; PIDS+=("$NGINX_PID")
  for _ in $(seq 50); do
    (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null && break
    sleep 0.1
  done
  echo "gateway threads: $(awk '/^Threads:/{print $2}' "/proc/$GW_PID/status"), nginx workers: $(pgrep -c -P "$NGINX_PID" || true)" \
    | tee -a "$OUT/run.log"
  run timeout 300 taskset -c "$TOOL_CPUS" "$BIN/deepintshield-load" compare \
    --target "mock=http://$MOCK_ADDR/v1/chat/completions" \
    --target "nginx=http://127.0.0.1:$port/v1/chat/completions" \
    --target "gateway=$GW_URL/v1/chat/completions" \
    --rate "$RATE" --rounds "$ROUNDS" --duration "$ROUND" --warmup 0s \
    --connections "$CONNECTIONS" --threads "$TOOL_THREADS" --timeout 1s \
    --pid "nginx=$NGINX_PID" --pid "gateway=$GW_PID" --json "$OUT/scaling-$N.json"
  stop "$GW_PID" "$NGINX_PID"
done
stop "$MOCK_PID"

say "summary: requests per second each target completed (tool and mock ceiling: mock)"
python3 - "$OUT" $CORE_COUNTS <<'PY' | tee "$OUT/summary.txt"
import json, sys
out, counts = sys.argv[1], sys.argv[2:]
print(f"{'cores':>5} {'mock/s':>10} {'nginx/s':>10} {'gateway/s':>10} {'gw/nginx':>9} "
      f"{'nginx us/req':>13} {'gw us/req':>10}")
for n in counts:
    try:
        d = json.load(open(f"{out}/scaling-{n}.json"))
    except (OSError, ValueError) as e:
        print(f"{n:>5} no result ({e})")
        continue
    t = {x["name"]: x for x in d["targets"]}
    rate = {k: v["achieved_rate"] for k, v in t.items()}
    cpu = {k: v.get("process", {}).get("cpu_us_per_request") for k, v in t.items()}
    ratio = rate["gateway"] / rate["nginx"] if rate.get("nginx") else float("nan")
    print(f"{n:>5} {rate['mock']:>10.0f} {rate['nginx']:>10.0f} {rate['gateway']:>10.0f} "
          f"{ratio:>9.2f} {cpu['nginx'] or 0:>13.1f} {cpu['gateway'] or 0:>10.1f}")
PY
echo "raw results: $OUT"
