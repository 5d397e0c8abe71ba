#!/usr/bin/env bash
# Syscalls per delivered message, per server, with `strace -c -f` attached during a fixed load.
#
# /proc/PID/io's syscw counts write/writev but not send/sendmsg (what std, Bun and uWS use), so
# this attaches strace for a few seconds instead. strace slows every syscall down a lot, so the
# load is modest and fixed (default chat, 32 clients, 500k deliveries/s offered) and the result is
# syscalls per *delivered* message during the traced window, an approximation: a slower server
# batches more.
#
# Usage: perf/syscalls.sh [--servers wshub,bun,tungstenite] [-- LOADGEN ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=perf/lib.sh
source perf/lib.sh
SERVERS="wshub,bun,tungstenite"
while [ $# -gt 0 ]; do
    case "$1" in
        --servers) SERVERS=$2; shift ;;
        --) shift; break ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "syscalls.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
LOAD=("$@")
[ ${#LOAD[@]} -gt 0 ] || LOAD=(chat --clients 32 --rate 15625)
command -v strace >/dev/null || { echo "syscalls.sh: needs strace (apt-get install strace)" >&2; exit 1; }
OUT=$ROOT/target/perf-syscalls
mkdir -p "$OUT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -z "${WSHUB_BIN:-}" ]; then
    cargo build --release --bin wshub >&2
    WSHUB_BIN=$TARGET_DIR/release/wshub
fi
cargo build --release -p perf --bins >&2
LOADGEN=$TARGET_DIR/release/loadgen
BUN=$ROOT/perf/peers/bun/node_modules/.bin/bun
PORT=${PORT:-18495}
SPID=""
trap '[ -n "$SPID" ] && kill $SPID 2>/dev/null || true' EXIT

printf "%-12s %12s %12s %10s   %s\n" server delivered syscalls "per deliv" "top syscalls (count)"
IFS=, read -r -a LIST <<< "$SERVERS"
for s in "${LIST[@]}"; do
    case "$s" in
        wshub) taskset -c 0 "$WSHUB_BIN" --listen "127.0.0.1:$PORT" --rate-limit 0 --client-publish '*' 2>/dev/null & ;;
        bun) taskset -c 0 "$BUN" "$ROOT/perf/peers/bun/server.js" "$PORT" 2>/dev/null & ;;
        tungstenite) taskset -c 0 "$TARGET_DIR/release/peer-tungstenite" "127.0.0.1:$PORT" 2>/dev/null & ;;
        *) echo "unknown server $s" >&2; exit 2 ;;
    esac
    SPID=$!
    wait_port "$PORT" || true
    # The loadgen measures 3 s starting 1 s in; strace covers 2.7 s of them.
    taskset -c 1 "$LOADGEN" "${LOAD[@]}" --url "ws://127.0.0.1:$PORT/ws" --warmup 1 --duration 3 \
        --json > "$OUT/$s.json" &
    LPID=$!
    sleep 1.2
    timeout -s INT 2.7 strace -c -f -p "$SPID" -o "$OUT/$s.strace" >/dev/null 2>&1 || true
    wait "$LPID"
    kill "$SPID" 2>/dev/null || true
    wait "$SPID" 2>/dev/null || true
    SPID=""
    python3 - "$s" "$OUT/$s.json" "$OUT/$s.strace" <<'EOF'
import json, sys
name, jpath, spath = sys.argv[1:]
ph = json.load(open(jpath))["phases"][0]
delivered = ph["deliveries_per_s"] * 2.7
calls, top = 0, []
for line in open(spath):
    parts = line.split()
    if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
        n = int(parts[3]); calls += n; top.append((n, parts[-1]))
top.sort(reverse=True)
per = calls / delivered if delivered else 0
print(f"{name:<12} {delivered:12.0f} {calls:12d} {per:10.4f}   " + ", ".join(f"{s} {n}" for n, s in top[:5]))
EOF
done
