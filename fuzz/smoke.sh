#!/usr/bin/env bash
# Builds every fuzz target and runs each for a short smoke (default 30 s) from the committed
# seeds and past crashes. Installs cargo-fuzz if it is missing. Usage: bash fuzz/smoke.sh [secs]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-30}
# cargo-fuzz builds with sanitizer flags that need nightly features; this allows them on stable.
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$SECONDS
if ! cargo fuzz build >"$log" 2>&1; then
    cat "$log"
    exit 1
fi
echo "<== fuzz build: $((SECONDS - start)) s"
for target in $(cargo fuzz list); do
    start=$SECONDS
    mkdir -p "corpus/$target"
    dirs=("corpus/$target" "seeds/$target")
    if [ -d "regressions/$target" ]; then
        dirs+=("regressions/$target")
    fi
    if ! cargo fuzz run "$target" "${dirs[@]}" -- \
        -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
        cat "$log"
        echo "<== fuzz $target: FAILED (the crashing input is in fuzz/artifacts/$target/)"
        exit 1
    fi
    grep -E '^Done|stat::(number_of_executed_units|average_exec_per_sec)' "$log" || true
    echo "<== fuzz $target: $((SECONDS - start)) s"
done
