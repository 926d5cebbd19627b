#!/usr/bin/env python3
"""The bar of bench/README.md against the raw results of one bench/run-standard.sh run.

Usage: bench/summary.py OUT_DIR   (reads the JSON and text files the script wrote there)
"""
import json
import os
import re
import sys

MIB = 1024  # kB per MiB
# Events of one stream of step 5: 16 content chunks, the finish chunk, the usage chunk, [DONE].
STREAM_EVENTS = 19


def load(out, name):
    path = os.path.join(out, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def kv(out, name):
    path = os.path.join(out, name)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", f.read())}


def errors(r):
    return sum(v for k, v in (r.get("errors") or {}).items() if k != "connect")


def fmt_errors(r):
    return " ".join(f"{k}={v}" for k, v in sorted((r.get("errors") or {}).items())) or "none"


def smaps_rows(row, out, name, when):
    """The lines of bench/lib.sh's smaps_report in NAME as rows: where the resident memory was."""
    try:
        lines = open(os.path.join(out, name)).read().splitlines()
    except OSError:
        return
    for line in lines:
        what, _, measured = line.partition(": ")
        if measured:
            row(f"  {what} ({when})", measured, "(README)", None)


def main(out):
    rows = []

    def row(item, measured, bar, ok):
        rows.append((item, measured, bar, "met" if ok else "MISSED" if ok is False else "n/a"))

    t = load(out, "tool-50k.json")
    if t:
        rate, errs = t["achieved_rate"], errors(t)
        row("load tool, one core, vs mock on one core", f"{rate:.0f}/s, {errs} errors, p99 {t['latency']['p99_us']} us",
            ">= 50,000/s", rate >= 49_500 and errs == 0)

    idle = kv(out, "idle-rss.txt")
    if idle:
        rss = idle["rss_kb"] / MIB
        row("gateway idle RSS, default config", f"{rss:.1f} MiB", "<= 20 MiB", rss <= 20)

    for rate in (1000, 5000):
        c = load(out, f"overhead-{rate}.json")
        if not c:
            continue
        by_name = {t["name"]: t for t in c["targets"]}
        gw = by_name["gateway"]
        a, cpu = gw["added"], gw.get("process", {}).get("cpu_us_per_request")
        errs = sum(errors(t) for t in c["targets"] if t["name"] != "nginx")
        if "nginx" in by_name:
            bar_p50 = by_name["nginx"]["added"]["p50_us"] + 30
            row(f"added p50 at {rate:,}/s (p99 / p99.9)",
                f"{a['p50_us']:+} us ({a['p99_us']:+} / {a['p999_us']:+} us), {errs} errors",
                f"<= nginx's p50 + 30 = {bar_p50:+} us", a["p50_us"] <= bar_p50 and errs == 0)
        else:
            row(f"added p50 at {rate:,}/s (p99 / p99.9)",
                f"{a['p50_us']:+} us ({a['p99_us']:+} / {a['p999_us']:+} us), {errs} errors",
                "nginx's p50 + 30 us (nginx not installed)", None)
        if cpu is not None:
            row(f"gateway CPU per request at {rate:,}/s", f"{cpu} us",
                "<= 40 us" if rate == 5000 else "(reference)", cpu <= 40 if rate == 5000 else None)
        if "mock-again" in by_name:
            n = by_name["mock-again"]["added"]
            row(f"  noise floor at {rate:,}/s (mock vs itself)",
                f"{n['p50_us']:+} / {n['p99_us']:+} / {n['p999_us']:+} us", "(resolution)", None)
        if "nginx" in by_name:
            n = by_name["nginx"]["added"]
            row(f"  reference: nginx as a bare proxy at {rate:,}/s",
                f"{n['p50_us']:+} / {n['p99_us']:+} / {n['p999_us']:+} us, {errors(by_name['nginx'])} errors",
                "(reference)", None)

    s = load(out, "sweep.json")
    if s:
        best = {h["target"]: h["highest_rate"] for h in s["highest"]}
        g = best.get("gateway")
        row("highest rate with p99 added < 1 ms", f"{g:.0f}/s" if g else "none (failed the first step)",
            ">= 15,000/s", bool(g) and g >= 15_000)

    st = load(out, "stream-1000.json")
    if st:
        gw = st["targets"][1]
        errs = errors(gw)
        a = gw.get("added_ttft", {})
        if errs and gw["ok"] == 0:
            row("streaming 1,000/s x 16 chunks, TTFT p99 added", f"no stream from the gateway: {fmt_errors(gw)}",
                "<= 150 us", False)
        else:
            row("streaming 1,000/s x 16 chunks, TTFT p99 added",
                f"{a.get('p99_us', 0):+} us (p50 {a.get('p50_us', 0):+}), {errs} errors", "<= 150 us",
                a.get("p99_us", 10**9) <= 150 and errs == 0)
            cpu = gw.get("process", {}).get("cpu_us_per_request")
            if cpu is not None:
                # 16 content chunks, the finish chunk, the usage chunk and [DONE].
                per = cpu / STREAM_EVENTS
                row("gateway CPU per stream event", f"{per:.1f} us ({cpu} us per stream of {STREAM_EVENTS})",
                    "<= 10 us", per <= 10)

    b = load(out, "bifrost.json")
    if b:
        rss = kv(out, "bifrost-rss.txt")
        peak = rss.get("peak_rss_kb", 0) / MIB
        errs = errors(b)
        row("Bifrost shape: 5,000/s, 1.5 s upstream, all succeed",
            f"{b['ok']} of {b['requests']} ok, errors: {fmt_errors(b)}", "every request",
            errs == 0 and b["ok"] == b["requests"])
        crashed = rss.get("alive", 1) == 0
        note = " (then the gateway died: see bifrost.gw.err)" if crashed else ""
        row("Bifrost shape: gateway peak RSS", f"{peak:.0f} MiB{note}", "<= 400 MiB",
            0 < peak <= 400 and not crashed)
        if rss.get("idle_rss_kb") and rss.get("in_flight"):
            per = (rss["peak_rss_kb"] - rss["idle_rss_kb"]) / rss["in_flight"]
            row("  memory per call in flight ((peak - before) / 7,500)", f"{per:.0f} KiB", "(README)", None)
        smaps_rows(row, out, "bifrost-smaps.txt", "halfway")

    s = load(out, "streams.json")
    if s:
        rss = kv(out, "streams-rss.txt")
        peak = rss.get("peak_rss_kb", 0) / MIB
        errs = errors(s)
        n = rss.get("in_flight", 0)
        row(f"{n:,} streams held open at once, one event per second: all complete",
            f"{s['ok']} of {s['requests']} ok, errors: {fmt_errors(s)}", "every stream",
            errs == 0 and s["ok"] == s["requests"])
        per = (rss.get("peak_rss_kb", 0) - rss.get("idle_rss_kb", 0)) / max(n, 1)
        row("  gateway peak RSS (threads at the peak)",
            f"{peak:.0f} MiB ({rss.get('peak_threads', 0)} threads; {per:.0f} KiB per stream)",
            "<= 600 MiB", 0 < peak <= 600 and rss.get("alive", 1) == 1)
        smaps_rows(row, out, "streams-smaps.txt", "all open")

    burst = load(out, "burst.json")
    if burst:
        ttft = burst.get("ttft") or {}
        stats = load(out, "burst-stats.json") or {}
        events = ((stats.get("pools") or {}).get("up") or {}).get("supervisor", {}).get("scaling_events", [])
        grown = " -> ".join([str(events[0]["from"])] + [str(e["to"]) for e in events]) if events else "none"
        row("scale-up: burst of 2,000 streams on 8 workers, TTFT p50 / p99 / max (mock: 10 ms)",
            f"{ttft.get('p50_us', 0) / 1000:.1f} / {ttft.get('p99_us', 0) / 1000:.1f} / "
            f"{ttft.get('max_us', 0) / 1000:.1f} ms, {burst['ok']} of {burst['requests']} ok; pool {grown}",
            "(reaction time)", None)

    width = [max(len(r[i]) for r in rows) for i in range(3)] if rows else [0, 0, 0]
    print(f"{'item':<{width[0]}}  {'measured':<{width[1]}}  {'bar':<{width[2]}}  verdict")
    for r in rows:
        print(f"{r[0]:<{width[0]}}  {r[1]:<{width[1]}}  {r[2]:<{width[2]}}  {r[3]}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
