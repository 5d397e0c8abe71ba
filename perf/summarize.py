#!/usr/bin/env python3
"""Summarises perf/compare.sh results: medians per test and server, and wshub's ratios.

Reads DIR/<test>.<server>.<run>.json (one loadgen --json document each) and prints a
Markdown table. Usage: summarize.py DIR [--servers wshub,bun,tungstenite] [--meta k=v ...]
"""
import argparse
import glob
import json
import os
import statistics


def load(directory):
    runs = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        name = os.path.basename(path)[: -len(".json")]
        parts = name.split(".")
        if len(parts) != 3:
            continue
        test, server, _ = parts
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue
        runs.setdefault((test, server), []).append(doc)
    return runs


QUIET = 0.1  # cores of other processes' user time above which a run counts as disturbed


def quiet(doc):
    return all(p["loadgen"].get("other_user_cpu", 0) <= QUIET for p in doc["phases"])


def pick(docs):
    """The runs on a quiet machine when there are any, else all of them."""
    calm = [d for d in docs if quiet(d)]
    return calm or docs


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, kind):
    if v is None:
        return "–"
    if kind == "rate":
        return f"{v / 1e6:.2f} M/s" if v >= 0.995e6 else f"{v / 1e3:.0f} k/s"
    if kind == "us":
        return f"{v:.3f} µs"
    if kind == "lat":
        return f"{v:,.0f} µs" if v >= 100 else f"{v:.1f} µs"
    if kind == "bytes":
        return f"{v:,.0f} B"
    if kind == "mib":
        return f"{v:.1f} MiB"
    if kind == "pct":
        return f"{v * 100:+.1f} %"
    if kind == "x":
        return f"{v:.2f}×"
    return f"{v:.3g}"


# (test, label, kind, extractor over one document, higher_is_better)
def phase(i):
    return lambda d: d["phases"][i] if len(d["phases"]) > i else None


def server_field(i, key):
    def get(d):
        p = phase(i)(d)
        return p["server"][key] if p and p.get("server") else None
    return get


def field(i, *path):
    def get(d):
        v = phase(i)(d)
        for k in path:
            if v is None:
                return None
            v = v.get(k)
        return v
    return get


ROWS = [
    ("chat_max", "chat, 32 clients, max: deliveries/s", "rate", field(0, "deliveries_per_s"), True),
    ("chat_max", "  server µs per delivery", "us", server_field(0, "cpu_us_per_delivery"), False),
    ("chat_max", "  TCP segments per delivery (machine)", "num", field(0, "tcp_segments_per_delivery"), False),
    ("fanout_max", "fan-out, 256 subscribers, max: deliveries/s", "rate", field(0, "deliveries_per_s"), True),
    ("fanout_max", "  server µs per delivery", "us", server_field(0, "cpu_us_per_delivery"), False),
    ("fanout_max", "  TCP segments per delivery (machine)", "num", field(0, "tcp_segments_per_delivery"), False),
    ("chat_fixed", "chat 32, fixed load: server µs per delivery", "us", server_field(0, "cpu_us_per_delivery"), False),
    ("chat_fixed", "  delivered", "rate", field(0, "deliveries_per_s"), True),
    ("chat_fixed", "  p50 latency", "lat", field(0, "latency_us", "p50"), False),
    ("chat_fixed", "  p99 latency", "lat", field(0, "latency_us", "p99"), False),
    ("chat_fixed", "  p99.9 latency", "lat", field(0, "latency_us", "p999"), False),
    ("chat_fixed", "  TCP segments per delivery (machine)", "num", field(0, "tcp_segments_per_delivery"), False),
    ("chat_fixed", "  syscw per delivery", "num", server_field(0, "syscw_per_delivery"), False),
    ("fanout_fixed", "fan-out 256, fixed load: server µs per delivery", "us", server_field(0, "cpu_us_per_delivery"), False),
    ("fanout_fixed", "  delivered", "rate", field(0, "deliveries_per_s"), True),
    ("fanout_fixed", "  p50 latency", "lat", field(0, "latency_us", "p50"), False),
    ("fanout_fixed", "  p99 latency", "lat", field(0, "latency_us", "p99"), False),
    ("fanout_fixed", "  p99.9 latency", "lat", field(0, "latency_us", "p999"), False),
    ("fanout_fixed", "  TCP segments per delivery (machine)", "num", field(0, "tcp_segments_per_delivery"), False),
    ("fanout_fixed", "  syscw per delivery", "num", server_field(0, "syscw_per_delivery"), False),
    ("idle_10k", "idle, 10k connections: server RSS per connection", "bytes", field(0, "idle", "bytes_per_connection"), False),
    ("slow_0", "slow test, 0 % slow: healthy p99", "lat", field(0, "latency_us", "p99"), False),
    ("slow_1", "slow test, 1 % never read: healthy p99", "lat", field(0, "latency_us", "p99"), False),
    ("slow_1", "  server RSS max", "mib", lambda d: (server_field(0, "rss_kib_max")(d) or 0) / 1024, False),
    ("hot_10k", "hot, 1 channel × 10k: server µs per delivery", "us", server_field(0, "cpu_us_per_delivery"), False),
    ("hot_10k", "  10 channels × 1k: server µs per delivery", "us", server_field(1, "cpu_us_per_delivery"), False),
    ("hot_10k", "  1 × 10k p99 latency", "lat", field(0, "latency_us", "p99"), False),
    ("hot_10k", "  10 × 1k p99 latency", "lat", field(1, "latency_us", "p99"), False),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--servers", default="wshub,bun,tungstenite")
    ap.add_argument("--meta", action="append", default=[])
    args = ap.parse_args()
    servers = args.servers.split(",")
    runs = load(args.dir)
    for m in args.meta:
        k, _, v = m.partition("=")
        print(f"- {k}: {v}")
    print()
    # wshub and its variants (such as wshub-delay), each compared with every peer.
    ours = [s for s in servers if s.startswith("wshub")]
    pairs = [(o, p) for o in ours for p in servers if not p.startswith("wshub")]
    head = ["test / metric (median)"] + servers + [f"{o}/{p}" for o, p in pairs]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for test, label, kind, get, _ in ROWS:
        vals = {}
        for s in servers:
            docs = pick(runs.get((test, s), []))
            vals[s] = med([get(d) for d in docs]) if docs else None
        if all(v is None for v in vals.values()):
            continue
        n = "/".join(
            f"{len(pick(runs.get((test, s), [])))}" for s in servers
        )
        cells = [f"{label} (n={n})" if not label.startswith("  ") else label.strip()]
        cells += [fmt(vals[s], kind) for s in servers]
        for o, p in pairs:
            a, b = vals.get(o), vals.get(p)
            cells.append(fmt(a / b, "x") if a is not None and b else "–")
        print("| " + " | ".join(cells) + " |")
    # Derived figures.
    print()
    for s in servers:
        p0 = med([field(0, "latency_us", "p99")(d) for d in pick(runs.get(("slow_0", s), []))])
        p1 = med([field(0, "latency_us", "p99")(d) for d in pick(runs.get(("slow_1", s), []))])
        if p0 and p1:
            print(f"- {s}: healthy p99 with 1 % slow clients vs none: {fmt(p1 / p0 - 1, 'pct')}")
        h = med([server_field(0, "cpu_us_per_delivery")(d) for d in pick(runs.get(("hot_10k", s), []))])
        sp = med([server_field(1, "cpu_us_per_delivery")(d) for d in pick(runs.get(("hot_10k", s), []))])
        if h and sp:
            print(f"- {s}: hot channel cost (1 × 10k vs 10 × 1k, CPU per delivery): {fmt(h / sp, 'x')}")
    notes = []
    for (test, s), docs in sorted(runs.items()):
        n = len(docs)
        calm = sum(1 for d in docs if quiet(d))
        used = pick(docs)
        sat = sum(1 for d in used if any(p["loadgen"]["saturated"] for p in d["phases"]))
        skipped = sum(1 for d in used if any(p["loss"]["skipped"] for p in d["phases"]))
        lost = sum(1 for d in used if any(p["loss"]["lost"] for p in d["phases"]))
        errors = sum(1 for d in used if any(p["errors"] for p in d["phases"]))
        if calm < n:
            notes.append(f"{test}/{s}: {n - calm} of {n} runs had other processes using CPU"
                         + (" (left out of the medians)" if calm else " (no quiet run: medians over disturbed runs)"))
        if sat:
            notes.append(f"{test}/{s}: load generator core saturated in {sat} of {len(used)} runs (the figure is a floor)")
        if skipped:
            notes.append(f"{test}/{s}: offered load not sustained in {skipped} of {len(used)} runs (skipped sends)")
        if lost and not test.startswith("slow"):
            notes.append(f"{test}/{s}: messages missing after the drain in {lost} of {len(used)} runs")
        if errors:
            notes.append(f"{test}/{s}: error frames in {errors} of {len(used)} runs")
    print_notes(notes)


def print_notes(notes):
    """Prints the notes under the table, one Markdown bullet each."""
    if notes:
        print()
        for n in notes:
            print(f"- note: {n}")


if __name__ == "__main__":
    main()
