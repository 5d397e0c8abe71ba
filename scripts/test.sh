#!/usr/bin/env bash
# The whole wshub test suite, from a fresh machine: installs what the tests need (Python with
# venv for Autobahn and the `websockets` interop client, Node's `ws` interop client,
# redis-server for the scale-out tests), then runs
# unit, integration and doc tests, the release-mode churn test, feature combinations, the docs
# build, the benchmark and perf builds, the Autobahn conformance suite and a fuzz smoke run.
# Prints the time each stage took.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
TOOLS="$PWD/target/test-tools"

stage() {
  local name="$1"; shift
  local start=$SECONDS
  echo "==> $name"
  "$@"
  echo "<== $name: $((SECONDS - start)) s"
}

install_tools() {
  # Python 3.8-3.12 with venv, pip and lib2to3 (Autobahn), Node.js with npm (interop), and
  # redis-server (the scale-out tests start their own instances).
  local missing=()
  python3 -c 'import venv, lib2to3, ensurepip' 2>/dev/null \
    || missing+=(python3 python3-venv python3-pip python3-lib2to3)
  command -v npm >/dev/null || missing+=(nodejs npm)
  command -v redis-server >/dev/null || missing+=(redis-server)
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  # The Debian package may start a system instance; the tests do not use it.
  mkdir -p "$TOOLS"
  if [ ! -x "$TOOLS/venv/bin/python" ]; then
    python3 -m venv "$TOOLS/venv"
  fi
  "$TOOLS/venv/bin/pip" install -q -r tests/interop/requirements.txt
  npm install --prefix tests/interop --no-audit --no-fund --silent
}

check_features() {
  # The library alone, and each feature alone, must build without warnings.
  local combos=("" "server" "client" "redis")
  local out
  for f in "${combos[@]}"; do
    # A build error must reach the grep below (and be printed), not end the script silently.
    out=$(cargo check --lib --bins --no-default-features ${f:+--features "$f"} --message-format short 2>&1) || true
    if grep -qE '^(src|warning|error)' <<<"$out"; then
      echo "features [$f]:"; echo "$out"; return 1
    fi
  done
}

stage "install test tools" install_tools
export WSHUB_INTEROP_PYTHON="$TOOLS/venv/bin/python" WSHUB_INTEROP_NODE="$(command -v node)"
stage "cargo test" cargo test --all-features
stage "churn test (release)" cargo test --release --test stress_churn -- --ignored
stage "feature combinations" check_features
stage "cargo doc" env RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features
stage "cargo bench --no-run" cargo bench --no-run
stage "perf crate build" cargo build --release -p perf
stage "autobahn conformance" bash autobahn/run.sh
stage "fuzz smoke (30 s per target)" bash fuzz/smoke.sh 30
echo "all tests passed"
