#!/usr/bin/env bash
# Prepares moto's S3 server in a private venv under DIR (idempotent).
#
#   backends/obs/tests/s3_server/setup.sh DIR
#
# Afterwards DIR/venv/bin/moto_server serves S3 on loopback; the object-volume integration tests
# (backends/obs/tests/) start one per test through testsupport::S3Server (scripts/test.sh sets
# EVEREST_MOTO_SERVER=DIR/venv/bin/moto_server).
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
dir=$1
python=${PYTHON:-python3}

# Pinned so that CI and developers test against the same server.
reqs=('moto[server]==5.2.5')

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
stamp="$dir/venv/.everest-reqs"
if [[ ! -x "$dir/venv/bin/python" ]]; then
    "$python" -m venv "$dir/venv"
fi
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "${reqs[*]}" ]]; then
    # pip through the venv's python, as in emulator/tests/sdk_fidelity/setup.sh.
    "$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check "${reqs[@]}"
    echo "${reqs[*]}" >"$stamp"
fi
"$dir/venv/bin/moto_server" --help >/dev/null
echo "moto S3 server ready in $dir/venv"
