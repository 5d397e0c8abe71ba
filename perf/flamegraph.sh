#!/usr/bin/env bash
# CPU flamegraph of the wshub server under a loadgen scenario.
#
# Builds wshub with the `profiling` profile (release + debug info) and frame pointers, runs it
# pinned to core 0, drives it with the load generator pinned to core 1, samples the server with
# `perf record -e cpu-clock -F 999 -g` (hardware counters and tracepoints are unavailable here;
# cpu-clock works), and folds the samples into an SVG with inferno. Prints the hottest
# functions (self time) and the hottest inclusive frames.
#
# Usage: perf/flamegraph.sh [--out DIR] [--seconds N] [-- LOADGEN ARGS...]
#   default load: chat --clients 32 --rate max
#   e.g. perf/flamegraph.sh -- fanout --clients 256 --rate 7812
# Environment: WSHUB_ARGS  more wshub flags, e.g. WSHUB_ARGS="--write-delay 1"
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=perf/lib.sh
source perf/lib.sh
OUT=$ROOT/target/flamegraph
SECS=8
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=$2; shift ;;
        --seconds) SECS=$2; shift ;;
        --) shift; break ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "flamegraph.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
LOAD=("$@")
[ ${#LOAD[@]} -gt 0 ] || LOAD=(chat --clients 32 --rate max)
mkdir -p "$OUT"
PORT=${PORT:-18490}

command -v perf >/dev/null || { echo "flamegraph.sh: needs perf (apt-get install linux-perf)" >&2; exit 1; }
if ! command -v inferno-flamegraph >/dev/null; then
    echo "== cargo install inferno" >&2
    cargo install inferno --locked >&2
fi

# A separate target dir: RUSTFLAGS differ from the normal build's.
FP_TARGET=${FP_TARGET_DIR:-$ROOT/target/frame-pointers}
echo "== build wshub (profile profiling, frame pointers)" >&2
RUSTFLAGS="-C force-frame-pointers=yes" CARGO_TARGET_DIR=$FP_TARGET \
    cargo build --profile profiling --bin wshub >&2
WSHUB=$FP_TARGET/profiling/wshub
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
cargo build --release -p perf --bin loadgen >&2
LOADGEN=$TARGET_DIR/release/loadgen

ulimit -n 20000 2>/dev/null || true
taskset -c 0 "$WSHUB" --listen "127.0.0.1:$PORT" --rate-limit 0 --client-publish '*' \
    --max-connections 20000 ${WSHUB_ARGS:-} 2>"$OUT/wshub.log" &
SPID=$!
trap 'kill $SPID 2>/dev/null || true' EXIT
wait_port "$PORT" || true

echo "== load: ${LOAD[*]} (${SECS} s sampled)" >&2
taskset -c 1 "$LOADGEN" "${LOAD[@]}" --url "ws://127.0.0.1:$PORT/ws" --pid "$SPID" \
    --warmup 1 --duration "$((SECS + 1))" > "$OUT/loadgen.txt" &
LPID=$!
sleep 1.5
perf record -e cpu-clock -F 999 -g -p "$SPID" -o "$OUT/perf.data" -- sleep "$SECS" 2>"$OUT/perf-record.log" >/dev/null
wait "$LPID"
kill "$SPID" 2>/dev/null || true
wait "$SPID" 2>/dev/null || true
trap - EXIT
cat "$OUT/loadgen.txt"

perf script -i "$OUT/perf.data" 2>/dev/null | inferno-collapse-perf > "$OUT/wshub.folded"
NAME=$(echo "${LOAD[*]}" | sed 's/--//g' | tr ' ' '-' | tr -cd 'A-Za-z0-9_.-')
inferno-flamegraph --title "wshub: ${LOAD[*]}" < "$OUT/wshub.folded" > "$OUT/wshub-$NAME.svg"
echo "== flamegraph: $OUT/wshub-$NAME.svg" >&2

python3 - "$OUT/wshub.folded" <<'EOF'
import collections, re, sys
self_t = collections.Counter()
incl = collections.Counter()
total = 0
def clean(f):
    f = re.sub(r"::h[0-9a-f]{16}$", "", f)
    f = re.sub(r"<(.+) as (.+)>", r"<\1 as \2>", f)
    return f[:110]
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip().rpartition(" ")
    n = int(n)
    total += n
    frames = [clean(f) for f in stack.split(";")]
    self_t[frames[-1]] += n
    for f in set(frames[1:]):
        incl[f] += n
print(f"\nsamples: {total}")
print("\nhottest functions, self time:")
for f, n in self_t.most_common(25):
    print(f"  {100 * n / total:5.1f}%  {f}")
print("\nhottest frames, inclusive (wshub/tokio/std frames only):")
shown = 0
for f, n in incl.most_common(400):
    if any(k in f for k in ("wshub", "tokio", "hyper", "bytes", "std::", "alloc::", "core::")) and shown < 30:
        print(f"  {100 * n / total:5.1f}%  {f}")
        shown += 1
EOF
