# Helpers shared by the bench/run-*.sh scripts (sourced after they `cd` to the repository root
# and set OUT, the folder of their raw results).
#
# Every process a script starts goes into PIDS (or is ended with `stop`); all of them are ended
# when the script exits, however it exits.

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# say TEXT: a step's heading, printed and logged.
say() { printf '\n== %s\n' "$*" | tee -a "$OUT/run.log"; }

# run COMMAND...: echo a command, run it, keep its output in the log; a failed step is reported,
# not fatal.
run() {
  echo "+ $*" | tee -a "$OUT/run.log"
  "$@" 2>&1 | tee -a "$OUT/run.log" || echo "(step failed: exit $?)" | tee -a "$OUT/run.log"
}

# wait_line FILE REGEX: the first match in FILE within 30 s (a process prints it on start).
wait_line() {
  local i
  for i in $(seq 300); do
    if grep -m1 -oE "$2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "no '$2' in $1 after 30 s" >&2
  cat "$1" >&2
  return 1
}

# stop PID...: end processes the script started, and forget them (a PID is not reused by
# mistake: the gateway creates thousands of threads, which wraps PIDs quickly).
stop() {
  local p q keep
  for p in "$@"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    keep=()
    for q in "${PIDS[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
    PIDS=("${keep[@]}")
  done
}

# free_port: a TCP port free on 127.0.0.1 now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# build_release: the gateway and the bench binaries, release profile.
build_release() {
  say "build"
  run cargo build --release -p deepintshield-bench --bins
  run cargo build --release --bin deepintshield
}

# machine_lines: the date, commit, kernel and processor of this run (a script adds its own lines).
machine_lines() {
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' (gateway sources modified)')"
  echo "kernel: $(uname -sr)"
  lscpu 2>/dev/null | grep -E '^(Model name|CPU\(s\)|Thread|Core|Socket|Hypervisor|L3)' || true
}

# smaps_report PID WORKER_STACK_KB COROUTINE_STACK_KB: where a process's resident memory is, from
# /proc/PID/smaps: the pool workers' thread stacks (mappings of WORKER_STACK_KB, with how many
# have how many KiB resident), the connections' coroutine stacks (mappings of
# COROUTINE_STACK_KB) and the rest (heap, allocator arenas, the binary).
smaps_report() {
  python3 - "$@" <<'PY'
import collections, sys
pid, worker_kb, co_kb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
kinds = {"worker": collections.Counter(), "coroutine": collections.Counter(), "rest": collections.Counter()}
size = 0
try:
    for line in open(f"/proc/{pid}/smaps"):
        field = line.split()
        if "-" in field[0] and not field[0].endswith(":"):
            lo, hi = field[0].split("-")
            size = (int(hi, 16) - int(lo, 16)) // 1024
        elif field[0] == "Rss:":
            kind = "worker" if size == worker_kb else "coroutine" if size == co_kb else "rest"
            kinds[kind][int(field[1])] += 1
except OSError as e:
    sys.exit(f"smaps of {pid}: {e}")
mib = lambda c: sum(k * n for k, n in c.items()) / 1024
w, c = kinds["worker"], kinds["coroutine"]
hist = ", ".join(f"{n} x {k} KiB" for k, n in sorted(w.items()))
print(f"thread stacks of {worker_kb} KiB (pool workers): {sum(w.values())}, {mib(w):.1f} MiB resident ({hist})")
print(f"coroutine stacks of {co_kb} KiB: {sum(c.values())}, {mib(c):.1f} MiB resident")
print(f"the rest: {mib(kinds['rest']):.1f} MiB resident")
PY
}
