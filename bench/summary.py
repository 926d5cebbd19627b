#!/usr/bin/env python3
"""The bar of bench/README.md against the raw results of one bench/run-standard.sh run.

Usage: bench/summary.py OUT_DIR   (reads the JSON and text files the script wrote there)
"""
import json
import os
import re
import sys

MIB = 1024  # kB per MiB


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
        row(f"added latency at {rate:,}/s, p50 / p99 / p99.9",
            f"{a['p50_us']:+} / {a['p99_us']:+} / {a['p999_us']:+} us, {errs} errors, {cpu} us CPU/req",
            "p50 <= 30, p99 <= 150 us", a["p50_us"] <= 30 and a["p99_us"] <= 150 and errs == 0)
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
            "aim >= 20,000/s", bool(g) and g >= 20_000)

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
        row("Bifrost shape: gateway peak RSS", f"{peak:.0f} MiB{note}", "< 250 MiB",
            0 < peak < 250 and not crashed)

    width = [max(len(r[i]) for r in rows) for i in range(3)] if rows else [0, 0, 0]
    print(f"{'item':<{width[0]}}  {'measured':<{width[1]}}  {'bar':<{width[2]}}  verdict")
    for r in rows:
        print(f"{r[0]:<{width[0]}}  {r[1]:<{width[1]}}  {r[2]:<{width[2]}}  {r[3]}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
