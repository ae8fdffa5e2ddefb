#!/usr/bin/env bash
# End-to-end check of everest-proto against the official-spec client:
#   1. prepares the client in DIR (setup.sh),
#   2. compares proto/csi.proto with the official schema (check_schema.py),
#   3. serves the identity_echo example on a private socket and probes it as
#      identity and node (must pass), then with an empty node id (must fail).
#
#   proto/tests/official_client/run_example_check.sh [DIR]
#
# DIR defaults to $CARGO_TARGET_DIR/official-csi-client (or target/...).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
dir=${1:-$target/official-csi-client}

bash "$here/setup.sh" "$dir"
py="$dir/venv/bin/python"
"$py" "$here/check_schema.py" --official "$dir/official/csi-v1.1.0.fds" \
    --ours "$repo/proto/csi.proto"

(cd "$repo" && cargo build --quiet -p everest-proto --example identity_echo)
echo_bin="$target/debug/examples/identity_echo"

run=$(mktemp -d)
chmod 700 "$run"
pid=
cleanup() {
    if [[ -n "$pid" ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$run"
}
trap cleanup EXIT

# The bare example serves without the daemons' authority fix, so this client sends what gRPC-Go does.
probe() { "$py" "$here/csi_probe.py" --stubs "$dir/stubs" --socket "$run/csi.sock" --authority localhost "$@"; }

"$echo_bin" "$run/csi.sock" &
pid=$!
probe --service identity >"$run/identity.json"
probe --service node >"$run/node.json"
kill "$pid"; wait "$pid" || true; pid=

# The probe must also notice a missing required field.
"$echo_bin" "$run/csi.sock" "" &
pid=$!
if probe --service node >"$run/bad.json" 2>&1; then
    echo "FAIL: probe accepted an empty node_id" >&2
    exit 1
fi
grep -q "required field 'node_id' is empty" "$run/bad.json"

echo "official-client check: 3 passed, 0 failed"
