#!/usr/bin/env bash
# Runs the Autobahn|TestSuite (fuzzingclient, groups 1-7 and 10 plus the small 9.* cases given
# in AB_CASES) against examples/echo.rs and compares the result with expected-results.json.
# Fails on any FAILED or NON-STRICT case and on any difference from the expected results.
#
# Usage: bash autobahn/run.sh            (builds the echo example in the dev profile)
# The suite itself (tool/, a Python 3 port) is installed into ${TMPDIR:-/tmp}/wshub-autobahn.
set -euo pipefail
cd "$(dirname "$0")/.."
# Groups 1-7 and 10, plus the 9.* (limits) cases that the Python client runs in seconds.
CASES="${AB_CASES:-1.*,2.*,3.*,4.*,5.*,6.*,7.*,10.*,9.1.1,9.1.2,9.1.3,9.2.1,9.2.2,9.2.3,9.5.1,9.6.1,9.7.1,9.7.2,9.8.1,9.8.2}"
PROFILE="${AB_PROFILE:-dev}"
cargo build -q --profile "$PROFILE" --example echo
dir=debug; [ "$PROFILE" = dev ] || dir="$PROFILE"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"target/$dir/examples/echo" "127.0.0.1:$port" 2>/tmp/wshub-autobahn-echo.log &
echo_pid=$!
trap 'kill $echo_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
out=$(mktemp)
rc=0
AGENT=wshub AB_EXPECTED=autobahn/expected-results.json \
  bash autobahn/tool/setup_and_run.sh "ws://127.0.0.1:$port/ws" "$CASES" | tee "$out" || rc=$?
[ "$rc" = 0 ] || { echo "autobahn: FAILED or missing cases (rc=$rc)"; exit 1; }
grep -q ' 0 NON-STRICT' "$out" || { echo "autobahn: NON-STRICT cases"; exit 1; }
grep -q ': 0 differences' "$out" || { echo "autobahn: results differ from autobahn/expected-results.json"; exit 1; }
echo "autobahn: conformance OK"
