#!/usr/bin/env python3
"""Summarises perf/scale_out.sh results: medians per test and configuration.

Reads DIR/<test>.<config>.<run>.json (one loadgen --json document each; configs `single`,
`redis1`, `redis2`) and prints a Markdown table: deliveries/s, latency, loss, and the CPU time per
delivery of node A (publishers), node B (subscribers) and each redis-server, with the total
against one node without a broker. Usage: summarize_scale_out.py DIR [--meta k=v ...]
"""
import argparse
import glob
import json
import os

from summarize import QUIET, fmt, med, print_notes

CONFIGS = [
    ("single", "1 node, no broker"),
    ("redis1", "2 nodes, 1 Redis"),
    ("redis2", "2 nodes, 2 Redis shards"),
]
TESTS = [
    ("relay_max", "relay 1:1, 1000 channels, max rate"),
    ("relay_fixed", "relay 1:1, 1000 channels, fixed load"),
    ("fanout_max", "fan-out to 256 on the other node, max rate"),
]


def load(directory):
    runs = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        parts = os.path.basename(path)[: -len(".json")].split(".")
        if len(parts) != 3:
            continue
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue
        if doc.get("phases"):
            runs.setdefault((parts[0], parts[1]), []).append(doc["phases"][0])
    return runs


def cpu(phase, name):
    """CPU µs per delivery of one process: `a` is the --pid server, others by --watch name."""
    if name == "a":
        return (phase.get("server") or {}).get("cpu_us_per_delivery")
    for p in phase.get("processes", []):
        if p["name"] == name:
            return p["cpu_us_per_delivery"]
    return None


def redis_total(phase):
    shards = [p["cpu_us_per_delivery"] for p in phase.get("processes", [])
              if p["name"].startswith("redis-")]
    return sum(shards) if shards else None


def total(phase):
    parts = [cpu(phase, "a"), cpu(phase, "node-b"), redis_total(phase)]
    return sum(p for p in parts if p is not None)


def us(v):
    return fmt(v, "us")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--meta", action="append", default=[])
    args = ap.parse_args()
    runs = load(args.dir)
    meta = dict(m.split("=", 1) for m in args.meta)
    print(f"# wshub scale-out over Redis, {meta.get('date', '')}")
    print()
    for k in ("command", "wshub", "redis"):
        if k in meta:
            print(f"- {k}: `{meta[k]}`")
    print("- servers (nodes and Redis) pinned to core 0, load generator to core 1")
    print("- CPU columns: CPU time per delivered message (user + system); medians over runs")
    print()
    print("| test | configuration | runs | deliveries/s | p50 | p99 | lost | node A | node B "
          "| Redis (per shard) | total | total vs 1 node |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    notes = []
    for test, tname in TESTS:
        base = None
        for config, cname in CONFIGS:
            docs = runs.get((test, config), [])
            if not docs:
                continue
            calm = [d for d in docs if d["loadgen"].get("other_user_cpu", 0) <= QUIET]
            if not calm:
                notes.append(f"{test}/{config}: no quiet run; medians over disturbed runs")
            use = calm or docs
            shards = sorted({p["name"] for d in use for p in d.get("processes", [])
                             if p["name"].startswith("redis-")})
            per_shard = " + ".join(us(med([cpu(d, s) for d in use])) for s in shards)
            tot = med([total(d) for d in use])
            if config == "single":
                base = tot
            vs = f"{tot / base:.2f}×" if base and tot else "–"
            lost = sum(d["loss"]["lost"] for d in use)
            skipped = sum(d["loss"]["skipped"] for d in use)
            if skipped:
                notes.append(f"{test}/{config}: {skipped} sends skipped (offered load not sustained)")
            if any(d["loadgen"].get("saturated") for d in use):
                notes.append(f"{test}/{config}: the load generator's core was saturated")
            b = us(med([cpu(d, "node-b") for d in use])) if config != "single" else "(same node)"
            print(f"| {tname} | {cname} | {len(use)} | {fmt(med([d['deliveries_per_s'] for d in use]), 'rate')} "
                  f"| {fmt(med([d['latency_us']['p50'] for d in use]), 'lat')} "
                  f"| {fmt(med([d['latency_us']['p99'] for d in use]), 'lat')} | {lost} "
                  f"| {us(med([cpu(d, 'a') for d in use]))} | {b} "
                  f"| {per_shard + (f' (sum {us(med([redis_total(d) for d in use]))})' if len(shards) > 1 else '') if shards else '–'} "
                  f"| {us(tot)} | {vs} |")
    print_notes(notes)


if __name__ == "__main__":
    main()
