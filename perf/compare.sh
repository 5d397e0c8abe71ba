#!/usr/bin/env bash
# wshub vs Bun (uWebSockets) vs a plain tokio-tungstenite hub, on identical load.
#
# Each server runs pinned to core 0 and the load generator to core 1 (taskset); every test is
# repeated and the medians and ratios are printed. 127.0.0.1 only; every step is bounded.
#
# Usage: perf/compare.sh [--quick] [--runs N] [--servers wshub,bun,tungstenite] [--out DIR]
#   servers: wshub, bun, tungstenite, and wshub-delay (wshub with --write-delay, see below)
#   --quick     1 run per test, 2 s windows, no slow/hot tests (< 3 min)
#   full        5 runs (3 for idle, slow, hot), 4 s windows (< 15 min, plus waits for quiet)
# Environment:
#   WSHUB_BIN          a prebuilt wshub binary (default: cargo build --release --bin wshub)
#   FIXED_DELIVERIES   offered deliveries/s for the fixed-load tests (default 1000000)
#   QUIET_WAIT         longest wait, seconds, for other processes to go idle before each run
#                      (default 120; runs on a busy machine are flagged and left out of medians)
#   QUIET_BUDGET       longest total wait for quiet over the whole comparison (default 600)
#   WSHUB_REV          the revision to print for WSHUB_BIN (default: git describe of this tree)
#   WRITE_DELAY_MS     --write-delay of the wshub-delay server (default 1)
#   PORT               base port (default 18480; four consecutive ports are used)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=perf/lib.sh
source perf/lib.sh

QUICK=0
RUNS=""
SERVERS="wshub,bun,tungstenite"
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --runs) RUNS=$2; shift ;;
        --servers) SERVERS=$2; shift ;;
        --out) OUT=$2; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if [ "$QUICK" = 1 ]; then
    RUNS=${RUNS:-1}; RUNS_SMALL=1; DURATION=2; WARMUP=0.5
else
    RUNS=${RUNS:-5}; RUNS_SMALL=$(( RUNS < 3 ? RUNS : 3 )); DURATION=4; WARMUP=1
fi
FIXED=${FIXED_DELIVERIES:-1000000}
QUIET_WAIT=${QUIET_WAIT:-120}
QUIET_BUDGET=${QUIET_BUDGET:-600}
PORT=${PORT:-18480}
OUT=${OUT:-$ROOT/target/perf-compare/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

START=$SECONDS
echo "== build (release)" >&2
if [ -z "${WSHUB_BIN:-}" ]; then
    cargo build --release --bin wshub >&2
    WSHUB_BIN=$TARGET_DIR/release/wshub
fi
cargo build --release -p perf --bins >&2
LOADGEN=$TARGET_DIR/release/loadgen
TUNG_BIN=$TARGET_DIR/release/peer-tungstenite
BUN=$ROOT/perf/peers/bun/node_modules/.bin/bun
if [[ ",$SERVERS," == *",bun,"* ]] && [ ! -x "$BUN" ]; then
    echo "== npm install bun (perf/peers/bun)" >&2
    (cd perf/peers/bun && npm install --no-audit --no-fund >&2)
fi
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

SPID=""
cleanup() {
    if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; fi
}
trap cleanup EXIT

port_of() {
    case "$1" in
        wshub) echo "$PORT" ;; bun) echo $((PORT + 1)) ;; tungstenite) echo $((PORT + 2)) ;;
        wshub-delay) echo $((PORT + 3)) ;;
        *) echo "compare.sh: unknown server $1" >&2; exit 2 ;;
    esac
}

start_server() {
    local name=$1 port
    port=$(port_of "$name")
    case "$name" in
        wshub) taskset -c 0 "$WSHUB_BIN" --listen "127.0.0.1:$port" --rate-limit 0 \
                   --client-publish '*' --max-connections 20000 2>>"$OUT/$name.log" & ;;
        wshub-delay) taskset -c 0 "$WSHUB_BIN" --listen "127.0.0.1:$port" --rate-limit 0 \
                   --client-publish '*' --max-connections 20000 \
                   --write-delay "${WRITE_DELAY_MS:-1}" 2>>"$OUT/$name.log" & ;;
        bun) taskset -c 0 "$BUN" "$ROOT/perf/peers/bun/server.js" "$port" 2>>"$OUT/$name.log" & ;;
        tungstenite) taskset -c 0 "$TUNG_BIN" "127.0.0.1:$port" 2>>"$OUT/$name.log" & ;;
    esac
    SPID=$!
    if ! wait_port "$port"; then
        echo "compare.sh: $name did not start listening on $port" >&2
        exit 1
    fi
}

stop_server() {
    kill "$SPID" 2>/dev/null || true
    wait "$SPID" 2>/dev/null || true
    SPID=""
}

# User CPU (cores) that other processes use over one second (nothing of ours runs then).
busy_cores() {
    local a b
    a=$(awk '/^cpu /{print $2+$3}' /proc/stat)
    sleep 1
    b=$(awk '/^cpu /{print $2+$3}' /proc/stat)
    echo $(( b - a ))  # ticks per second at 100 Hz: 100 = one core
}

# Waits (at most QUIET_WAIT seconds) until other processes use under 5 % of a core, so that
# builds or fuzzers running beside the comparison do not disturb it. Runs that still overlap
# other load are flagged in the results (loadgen's other_user_cpu) and left out of the medians
# when quiet runs exist.
WAITED_TOTAL=0
wait_quiet() {
    local waited=0 busy
    while [ "$WAITED_TOTAL" -lt "$QUIET_BUDGET" ] && busy=$(busy_cores) && [ "$busy" -gt 5 ] \
            && [ "$waited" -lt "$QUIET_WAIT" ]; do
        if [ "$waited" = 0 ]; then echo "   waiting for a quiet machine (others use ${busy}% of a core)" >&2; fi
        sleep 4
        waited=$((waited + 5))
        WAITED_TOTAL=$((WAITED_TOTAL + 5))
    done
}

# run TEST SERVER RUN loadgen-args...: one fresh server, one loadgen run, JSON to $OUT.
run() {
    local test=$1 server=$2 n=$3
    shift 3
    wait_quiet
    start_server "$server"
    local file="$OUT/$test.$server.$n.json"
    if ! timeout 180 taskset -c 1 "$LOADGEN" "$@" --url "ws://127.0.0.1:$(port_of "$server")/ws" \
            --pid "$SPID" --label "$server" --json > "$file" 2>>"$OUT/loadgen.log"; then
        echo "   $test $server run $n: loadgen failed (see $OUT/loadgen.log)" >&2
        rm -f "$file"
    fi
    stop_server
}

W="--duration $DURATION --warmup $WARMUP"
IFS=, read -r -a LIST <<< "$SERVERS"
echo "== tests: runs=$RUNS, ${DURATION}s windows, fixed load ${FIXED} deliveries/s, servers: $SERVERS" >&2
for i in $(seq "$RUNS"); do
    for s in "${LIST[@]}"; do
        echo "-- run $i/$RUNS $s ($((SECONDS - START)) s)" >&2
        run chat_max "$s" "$i" chat --clients 32 --rate max $W
        run fanout_max "$s" "$i" fanout --clients 256 --rate max $W
        run chat_fixed "$s" "$i" chat --clients 32 --rate "$(python3 -c "print($FIXED/32)")" $W
        run fanout_fixed "$s" "$i" fanout --clients 256 --rate "$(python3 -c "print($FIXED/256)")" $W
    done
done
for i in $(seq "$RUNS_SMALL"); do
    for s in "${LIST[@]}"; do
        echo "-- idle/slow/hot run $i/$RUNS_SMALL $s ($((SECONDS - START)) s)" >&2
        run idle_10k "$s" "$i" idle --clients 10000
        if [ "$QUICK" = 0 ]; then
            run slow_0 "$s" "$i" slow --clients 1000 --slow-percent 0 --size 1024 --rate 50 $W
            run slow_1 "$s" "$i" slow --clients 1000 --slow-percent 1 --size 1024 --rate 50 $W
            run hot_10k "$s" "$i" hot --clients 10000 --channels 10 --rate 20 $W
        fi
    done
done
echo "== done in $((SECONDS - START)) s; raw results in $OUT" >&2

EXTRA_META=()
if [[ ",$SERVERS," == *",wshub-delay,"* ]]; then
    EXTRA_META=(--meta "wshub-delay=wshub --write-delay ${WRITE_DELAY_MS:-1}")
fi
python3 "$ROOT/perf/summarize.py" "$OUT" --servers "$SERVERS" \
    --meta "date=$(date -u +%Y-%m-%dT%H:%MZ)" \
    --meta "command=perf/compare.sh $([ "$QUICK" = 1 ] && echo --quick) --servers $SERVERS (runs=$RUNS)" \
    --meta "wshub=${WSHUB_REV:-$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)}" \
    --meta "fixed=$FIXED" "${EXTRA_META[@]}" | tee "$OUT/summary.md"
