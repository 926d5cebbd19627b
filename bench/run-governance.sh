#!/usr/bin/env bash
# The cost of governance and the accuracy of its rate limits (method and recorded results:
# bench/README.md, "Governance").
#
#   bench/run-governance.sh [OUT_DIR]      # about 9 minutes on a 2-core machine
#   QUICK=1 bench/run-governance.sh        # the same steps, shortened (a smoke test)
#
# 1. Added latency with governance on (the ledger and governance plugins, two virtual keys whose
#    limits and budgets do not bind, each on half the connections), and with governance alone
#    (no ledger), against the same gateway config with governance off, in one interleaved
#    `compare` run, at 1,000 and 5,000 requests/s (mock delay 10 ms); then each gateway's CPU by
#    thread.
# 2. Rate limits held: a million requests over two keys (60,000 and 30,000 a minute) offered at
#    5,000/s (2,500/s each); the requests each key was admitted, from the ledger, against the
#    GCRA bound limit + limit x t / 60 s over the run's span t.
# Everything runs on 127.0.0.1, each step bounded by `timeout`; raw outputs go to OUT_DIR
# (default target/bench/governance-<UTC time>).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-target/bench/governance-$(date -u +%Y%m%dT%H%M%SZ)}
QUICK=${QUICK:-0}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
BIN=target/release

if [ "$QUICK" = 1 ]; then
  ROUNDS=1 ROUND=2s WARM=1s LIMIT_S=20
else
  ROUNDS=5 ROUND=5s WARM=1s LIMIT_S=200
fi
ADMIN_TOKEN=bench-admin-token

. bench/lib.sh

start_mock() {
  local name=$1; shift
  "$BIN/deepintshield-mock" "$@" > "$OUT/$name.mock.out" 2>&1 &
  MOCK_PID=$!; PIDS+=("$MOCK_PID")
  MOCK_ADDR=$(wait_line "$OUT/$name.mock.out" '127\.0\.0\.1:[0-9]+')
}
# start_gateway NAME CONFIG: sets GW_URL, GW_ADMIN and GW_PID.
start_gateway() {
  local name=$1 config=$2
  BENCH_KEY=sk-bench GOV_ADMIN=$ADMIN_TOKEN "$BIN/deepintshield" --config "$config" \
    > "$OUT/$name.gw.out" 2> "$OUT/$name.gw.err" &
  GW_PID=$!; PIDS+=("$GW_PID")
  local urls
  urls=$(wait_line "$OUT/$name.gw.out" 'http://127\.0\.0\.1:[0-9]+' | head -2)
  GW_URL=$(echo "$urls" | sed -n 1p)
  GW_ADMIN=$(echo "$urls" | sed -n 2p)
}
# governed_config TEMPLATE DB OUT: TEMPLATE with the mock's address, the ledger and governance
# plugins over DB, an admin token, and a price for every model of `up`.
governed_config() {
  sed "s/@MOCK_ADDR@/$MOCK_ADDR/" "$1" \
    | sed 's/^auth = "off"$/admin_token = "env:GOV_ADMIN"/' > "$3"
  printf '[[price]]\nproviders = ["up"]\nmodels = ["*"]\ninput = 2.5\noutput = 10\n' > "$OUT/prices.toml"
  cat >> "$3" <<EOF

[plugins]
order = ["ledger", "governance"]

[store]
path = "$2"

[prices]
path = "$OUT/prices.toml"
EOF
}
# key NAME OPTIONS...: create a key in $DB with the CLI; prints the key (its first line).
key() {
  local name=$1 out; shift
  out=$("$BIN/deepintshield" keys create --db "$DB" --name "$name" "$@")
  echo "${out%%$'\n'*}"
}
# threads_cpu PID: CPU seconds of each thread of PID, by thread name, busiest first.
threads_cpu() {
  local t
  for t in /proc/"$1"/task/*; do
    awk -v tck="$(getconf CLK_TCK)" '{sub(/^[0-9]+ \(/, ""); n=$0; sub(/\).*/, "", n); sub(/^[^)]*\) /, "");
      printf "%s %.2f\n", n, ($12 + $13) / tck}' "$t/stat"
  done | awk '{c[$1] += $2} END {for (n in c) printf "  %-20s %.2f s\n", n, c[n]}' | sort -k2 -nr
}

build_release
{
  machine_lines
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/machine.txt" | tee -a "$OUT/run.log"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

say "1. added latency: governance on (two keys, limits that do not bind) against off"
start_mock overhead --threads 1 --delay-ms 10
DB=$OUT/overhead.db
rm -f "$DB"*
sed "s/@MOCK_ADDR@/$MOCK_ADDR/" bench/config/overhead.toml > "$OUT/off.toml"
governed_config bench/config/overhead.toml "$DB" "$OUT/on.toml"
# The same without the ledger: what governance alone costs.
sed 's/^order = \["ledger", "governance"\]$/order = ["governance"]/' "$OUT/on.toml" > "$OUT/gov-only.toml"
KEY_A=$(key bench-a --rpm 100000000 --tpm 1000000000 --budget-usd 1000000/month)
KEY_B=$(key bench-b --rpm 100000000 --tpm 1000000000 --budget-usd 1000000/month)
start_gateway off "$OUT/off.toml"; OFF_URL=$GW_URL; OFF_PID=$GW_PID
start_gateway on "$OUT/on.toml"; ON_URL=$GW_URL; ON_PID=$GW_PID; ON_ADMIN=$GW_ADMIN
start_gateway gov-only "$OUT/gov-only.toml"; ONLY_URL=$GW_URL; ONLY_PID=$GW_PID
for RATE in 1000 5000; do
  run timeout 300 "$BIN/deepintshield-load" compare \
    --target "mock=http://$MOCK_ADDR/v1/chat/completions" \
    --target "governance-off=$OFF_URL/v1/chat/completions" \
    --target "governance-on=$ON_URL/v1/chat/completions" \
    --target "no-ledger=$ONLY_URL/v1/chat/completions" \
    --header "authorization: Bearer $KEY_A" --alt-header "authorization: Bearer $KEY_B" \
    --rate "$RATE" --rounds "$ROUNDS" --duration "$ROUND" --warmup "$WARM" --connections 128 \
    --pid "governance-off=$OFF_PID" --pid "governance-on=$ON_PID" --pid "no-ledger=$ONLY_PID" \
    --json "$OUT/overhead-$RATE.json"
done
curl -s "$ON_ADMIN/stats" > "$OUT/on.stats.json"
curl -s -H "authorization: Bearer $ADMIN_TOKEN" "$ON_ADMIN/admin/usage?group_by=key" > "$OUT/on.usage.json"
for g in "off $OFF_PID" "on $ON_PID" "no-ledger $ONLY_PID"; do
  set -- $g
  echo "CPU by thread, governance $1:"
  threads_cpu "$2"
done | tee "$OUT/threads-cpu.txt" | tee -a "$OUT/run.log"
stop "$OFF_PID" "$ON_PID" "$ONLY_PID" "$MOCK_PID"

say "2. rate limits: a million requests over two keys (60,000/min and 30,000/min) at 5,000/s"
start_mock limits --threads 1
DB=$OUT/limits.db
rm -f "$DB"*
governed_config bench/config/overhead.toml "$DB" "$OUT/limits.toml"
KEY_A=$(key limit-a --rpm 60000)
KEY_B=$(key limit-b --rpm 30000)
start_gateway limits "$OUT/limits.toml"
run timeout $((LIMIT_S + 120)) "$BIN/deepintshield-load" run \
  --url "$GW_URL/v1/chat/completions" \
  --header "authorization: Bearer $KEY_A" --alt-header "authorization: Bearer $KEY_B" \
  --rate 5000 --duration "${LIMIT_S}s" --warmup 0s --connections 128 --json "$OUT/limits.json"
curl -s -H "authorization: Bearer $ADMIN_TOKEN" "$GW_ADMIN/admin/usage?group_by=key" > "$OUT/limits.usage.json"
stop "$GW_PID" "$MOCK_PID"

say "summary"
python3 - "$OUT" <<'PY' | tee "$OUT/summary.txt" | tee -a "$OUT/run.log"
import json, sqlite3, sys
out = sys.argv[1]
print("added latency of governance (on minus off, same interleaved run), microseconds:")
for rate in (1000, 5000):
    try:
        targets = {t["name"]: t for t in json.load(open(f"{out}/overhead-{rate}.json"))["targets"]}
    except (OSError, ValueError, KeyError):
        print(f"  {rate}/s: no result")
        continue
    off = targets["governance-off"]
    cpu = lambda t: t.get("process", {}).get("cpu_us_per_request")
    print(f"  {rate}/s, governance off: added p50 {off['added']['p50_us']:+} p99"
          f" {off['added']['p99_us']:+} over the mock, cpu us/req {cpu(off)}")
    for name in ("governance-on", "no-ledger"):
        on = targets[name]
        diff = {q: on["added"][f"{q}_us"] - off["added"][f"{q}_us"] for q in ("p50", "p90", "p99")}
        print(f"    {name}: p50 {diff['p50']:+} p90 {diff['p90']:+} p99 {diff['p99']:+};"
              f" cpu us/req {cpu(on)} ({cpu(on) - cpu(off):+.1f});"
              f" errors {sum(on['errors'].values())}")
print("rate limits held (admitted against limit + limit x t / 60 s, t from the ledger):")
db = sqlite3.connect(f"{out}/limits.db")
rows = db.execute(
    "SELECT k.name, k.rpm, MIN(u.ts_ms), MAX(u.ts_ms), SUM(u.status < 400), COUNT(*) "
    "FROM usage u JOIN keys k ON k.id = u.key_id GROUP BY k.id ORDER BY k.name").fetchall()
for name, rpm, first, last, admitted, total in rows:
    span_s = (last - first) / 1000
    bound = rpm + rpm * span_s / 60
    print(f"  {name}: limit {rpm}/min, {total} requests over {span_s:.1f} s, admitted {admitted},"
          f" bound {bound:.0f}: {100 * (admitted - bound) / bound:+.3f} %")
PY
echo "raw results: $OUT"
