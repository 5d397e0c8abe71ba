#!/usr/bin/env bash
# The whole wshub test suite, from a fresh machine: installs what the tests need, then runs
# unit, integration and doc tests, the docs build, the benchmark build and the Autobahn
# conformance suite. Prints the time each stage took.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

stage() {
  local name="$1"; shift
  local start=$SECONDS
  echo "==> $name"
  "$@"
  echo "<== $name: $((SECONDS - start)) s"
}

need_python() {
  # The Autobahn suite needs Python 3.8-3.12 (lib2to3) with venv and pip.
  if ! python3 -c 'import venv, lib2to3, ensurepip' 2>/dev/null; then
    if command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3 python3-venv python3-pip python3-lib2to3 >/dev/null
    fi
  fi
}

stage "install test tools" need_python
stage "cargo test" cargo test --all-features
stage "cargo doc" env RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features
stage "cargo bench --no-run" cargo bench --no-run
stage "autobahn conformance" bash autobahn/run.sh
echo "all tests passed"
