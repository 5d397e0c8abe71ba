#!/usr/bin/env bash
# Cross-node throughput over Redis: wshub nodes A and B joined by one Redis, then by two Redis
# shards, against one wshub node without a broker on the same load. Publishers connect to node A,
# subscribers to node B, so every delivery crosses Redis; the load generator reports deliveries/s,
# latency, loss and the CPU time per delivery of node A, node B and each redis-server.
#
# Servers (nodes and Redis) are pinned to core 0 and the load generator to core 1 (taskset), as in
# compare.sh. On a 2-core machine the shards share one core, so the figures to read are CPU per
# delivery (how the work splits) rather than the 2-shard throughput. 127.0.0.1 only; every step
# is bounded.
#
# Usage: perf/scale_out.sh [--quick] [--runs N] [--out DIR]
#   --quick   1 run per test, 2 s windows (< 2 min)
#   full      3 runs per test, 4 s windows (< 10 min)
# Environment:
#   WSHUB_BIN     a prebuilt wshub binary with the `redis` feature (default: cargo build --release)
#   REDIS_SERVER  redis-server to run (default: the one on PATH; `apt-get install -y redis-server`)
#   RELAY_RATE    offered deliveries/s of the fixed-load relay test (default 20000, which every
#                 configuration sustains here)
#   PORT          base port (default 18580; nodes use PORT and PORT+1, Redis PORT+10 and PORT+11)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=perf/lib.sh
source perf/lib.sh

QUICK=0
RUNS=""
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --runs) RUNS=$2; shift ;;
        --out) OUT=$2; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "scale_out.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if [ "$QUICK" = 1 ]; then
    RUNS=${RUNS:-1}; DURATION=2; WARMUP=0.5
else
    RUNS=${RUNS:-3}; DURATION=4; WARMUP=1
fi
RELAY_RATE=${RELAY_RATE:-20000}
PORT=${PORT:-18580}
OUT=${OUT:-$ROOT/target/perf-scale-out/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
REDIS_SERVER=${REDIS_SERVER:-$(command -v redis-server || true)}
if [ -z "$REDIS_SERVER" ]; then
    echo "scale_out.sh: redis-server not found (apt-get install -y redis-server)" >&2
    exit 2
fi

START=$SECONDS
echo "== build (release)" >&2
if [ -z "${WSHUB_BIN:-}" ]; then
    cargo build --release --bin wshub >&2
    WSHUB_BIN=$TARGET_DIR/release/wshub
fi
cargo build --release -p perf --bin loadgen >&2
LOADGEN=$TARGET_DIR/release/loadgen
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap cleanup EXIT

listening() {
    if ! wait_port "$1"; then
        echo "scale_out.sh: nothing listens on $1 (see $OUT/*.log)" >&2
        exit 1
    fi
}

# start_redis PORT: a throw-away redis-server (no persistence) pinned to core 0; sets LAST.
start_redis() {
    taskset -c 0 "$REDIS_SERVER" --port "$1" --bind 127.0.0.1 --save '' --appendonly no \
        --loglevel warning >>"$OUT/redis.log" 2>&1 &
    LAST=$!
    PIDS+=("$LAST")
    listening "$1"
}

# start_node PORT [--redis URL ...]: a wshub node pinned to core 0; sets LAST.
start_node() {
    local port=$1
    shift
    taskset -c 0 "$WSHUB_BIN" --listen "127.0.0.1:$port" --rate-limit 0 --client-publish '*' \
        --max-connections 20000 "$@" 2>>"$OUT/wshub.log" &
    LAST=$!
    PIDS+=("$LAST")
    listening "$port"
}

# setup CONFIG: starts the servers of one configuration; sets A, B (node URLs) and WATCH.
setup() {
    local r1=$((PORT + 10)) r2=$((PORT + 11))
    case "$1" in
        single)
            start_node "$PORT"; APID=$LAST
            A="ws://127.0.0.1:$PORT/ws"; B=$A; WATCH=() ;;
        redis1)
            start_redis "$r1"; local rp1=$LAST
            start_node "$PORT" --redis "redis://127.0.0.1:$r1"; APID=$LAST
            start_node $((PORT + 1)) --redis "redis://127.0.0.1:$r1"; local bp=$LAST
            A="ws://127.0.0.1:$PORT/ws"; B="ws://127.0.0.1:$((PORT + 1))/ws"
            WATCH=(--watch "node-b=$bp" --watch "redis-1=$rp1") ;;
        redis2)
            start_redis "$r1"; local rp1=$LAST
            start_redis "$r2"; local rp2=$LAST
            local shards=(--redis "redis://127.0.0.1:$r1" --redis "redis://127.0.0.1:$r2")
            start_node "$PORT" "${shards[@]}"; APID=$LAST
            start_node $((PORT + 1)) "${shards[@]}"; local bp=$LAST
            A="ws://127.0.0.1:$PORT/ws"; B="ws://127.0.0.1:$((PORT + 1))/ws"
            WATCH=(--watch "node-b=$bp" --watch "redis-1=$rp1" --watch "redis-2=$rp2") ;;
    esac
}

# run TEST CONFIG N loadgen-args...: fresh servers, one loadgen run, JSON to $OUT.
run() {
    local test=$1 config=$2 n=$3
    shift 3
    setup "$config"
    local file="$OUT/$test.$config.$n.json"
    if ! timeout 180 taskset -c 1 "$LOADGEN" "$@" --url "$A" --sub-url "$B" --pid "$APID" \
            "${WATCH[@]}" --label "$config" --json > "$file" 2>>"$OUT/loadgen.log"; then
        echo "   $test $config run $n: loadgen failed (see $OUT/loadgen.log)" >&2
        rm -f "$file"
    fi
    cleanup
}

W="--duration $DURATION --warmup $WARMUP"
# relay: 4 publishers on A over 1000 channels, one subscriber each on B: every delivery is one
# Redis message. fanout: one publisher on A, 256 subscribers of one channel on B: one Redis
# message per 256 deliveries.
RELAY="relay --clients 1000 --channels 1000 --publishers 4 --inflight 256"
echo "== tests: runs=$RUNS, ${DURATION}s windows, relay fixed load ${RELAY_RATE}/s" >&2
for i in $(seq "$RUNS"); do
    for c in single redis1 redis2; do
        echo "-- run $i/$RUNS $c ($((SECONDS - START)) s)" >&2
        run relay_max "$c" "$i" $RELAY --rate max $W
        run relay_fixed "$c" "$i" $RELAY --rate "$RELAY_RATE" $W
        run fanout_max "$c" "$i" fanout --clients 256 --rate max $W
    done
done
echo "== done in $((SECONDS - START)) s; raw results in $OUT" >&2

python3 "$ROOT/perf/summarize_scale_out.py" "$OUT" \
    --meta "date=$(date -u +%Y-%m-%dT%H:%MZ)" \
    --meta "command=perf/scale_out.sh $([ "$QUICK" = 1 ] && echo --quick) (runs=$RUNS)" \
    --meta "wshub=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)" \
    --meta "redis=$("$REDIS_SERVER" --version | grep -o 'v=[0-9.]*' | cut -c3-)" \
    | tee "$OUT/summary.md"
