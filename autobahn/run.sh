#!/usr/bin/env bash
# Runs the Autobahn|TestSuite (fuzzingclient, groups 1-7, 9 and 10, or the cases given in
# AB_CASES) against examples/echo.rs and compares the result with expected-results.json.
# Fails on any FAILED or NON-STRICT case, on any difference from the expected results, and (for
# the default cases) when the report and the expected results do not hold the same cases.
#
# Usage: bash autobahn/run.sh            (builds the echo example in the dev profile)
# The suite itself (tool/, a Python 3 port) is installed into ${TMPDIR:-/tmp}/wshub-autobahn.
set -euo pipefail
cd "$(dirname "$0")/.."
# Groups 1-7 and 10, and group 9 (limits and performance: messages up to 16 MiB, fragmented
# and chopped; about a minute with the Python client).
DEFAULT_CASES="1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*"
CASES="${AB_CASES:-$DEFAULT_CASES}"
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
if [ "$CASES" = "$DEFAULT_CASES" ]; then
  # The suite's comparison skips cases the expected file lacks: every case must be in both.
  python3 - "${OUTDIR:-${TMPDIR:-/tmp}/wshub-autobahn/reports/wshub}/index.json" autobahn/expected-results.json <<'EOF'
import json, sys
got = set(next(iter(json.load(open(sys.argv[1])).values())))
want = set(next(iter(json.load(open(sys.argv[2])).values())))
if got != want:
    print("autobahn: cases not in the expected results: %s; expected but not run: %s"
          % (sorted(got - want), sorted(want - got)))
    sys.exit(1)
print("autobahn: the report and the expected results hold the same %d cases" % len(got))
EOF
fi
echo "autobahn: conformance OK"
