#!/usr/bin/env bash
# Prepares Huawei Cloud's official Python SDK in a private venv under DIR (idempotent).
#
#   emulator/tests/sdk_fidelity/setup.sh DIR
#
# Afterwards DIR/venv/bin/python imports huaweicloudsdkcore, huaweicloudsdkevs, huaweicloudsdkecs
# and huaweicloudsdksfsturbo at the pinned versions; emulator/tests/sdk_fidelity.rs drives the emulator
# with them (scripts/test.sh sets EVEREST_SDK_VENV=DIR/venv).
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
dir=$1
python=${PYTHON:-python3}

# Pinned so that CI and developers check against the same models and signer.
reqs=(huaweicloudsdkcore==3.1.219 huaweicloudsdkevs==3.1.219 huaweicloudsdkecs==3.1.219
      huaweicloudsdksfsturbo==3.1.219)

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
stamp="$dir/venv/.everest-reqs"
if [[ ! -x "$dir/venv/bin/python" ]]; then
    "$python" -m venv "$dir/venv"
fi
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "${reqs[*]}" ]]; then
    # pip through the venv's python: a venv copied from elsewhere keeps a pip whose first line
    # names the original venv, and would install there.
    "$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check "${reqs[@]}"
    echo "${reqs[*]}" >"$stamp"
fi
"$dir/venv/bin/python" -c 'import huaweicloudsdkcore, huaweicloudsdkevs.v2, huaweicloudsdkecs.v2, huaweicloudsdksfsturbo.v1'
echo "Huawei Cloud SDK ready in $dir/venv"
