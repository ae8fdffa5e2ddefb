#!/usr/bin/env bash
# Prepares an official-spec CSI client in DIR (idempotent; safe to re-run).
#
#   proto/tests/official_client/setup.sh DIR
#
# Afterwards DIR holds:
#   venv/                     Python with pinned grpcio / grpcio-tools / protobuf
#   official/csi-v1.1.0.fds   the official CSI v1.1.0 schema (FileDescriptorSet),
#                             taken from the stubs that PyPI's ember-csi 0.9.1
#                             generated from the official csi.proto
#   stubs/csi_pb2*.py         Python stubs compiled fresh from that schema
#
# Nothing here is built from this repository's csi.proto, so a client using
# these stubs is an independent witness of wire compatibility.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
dir=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${PYTHON:-python3}

# Pinned so that CI and developers run the same client.
reqs=(grpcio==1.85.1 grpcio-tools==1.85.1 protobuf==7.36.2 setuptools==84.2.1)
ember=ember-csi==0.9.1
ember_wheel=ember_csi-0.9.1-py2.py3-none-any.whl

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

stamp="$dir/venv/.everest-reqs"
if [[ ! -x "$dir/venv/bin/python" ]]; then
    "$python" -m venv "$dir/venv"
fi
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "${reqs[*]}" ]]; then
    "$dir/venv/bin/pip" install --quiet --disable-pip-version-check "${reqs[@]}"
    echo "${reqs[*]}" >"$stamp"
fi

fds="$dir/official/csi-v1.1.0.fds"
if [[ ! -s "$fds" ]]; then
    mkdir -p "$dir/download" "$dir/official"
    if [[ ! -f "$dir/download/$ember_wheel" ]]; then
        "$dir/venv/bin/pip" download --quiet --disable-pip-version-check \
            --no-deps -d "$dir/download" "$ember"
    fi
    "$dir/venv/bin/python" "$here/extract_official.py" \
        --wheel "$dir/download/$ember_wheel" --out "$fds.tmp"
    mv "$fds.tmp" "$fds"
fi

if [[ ! -s "$dir/stubs/csi_pb2_grpc.py" || "$fds" -nt "$dir/stubs/csi_pb2_grpc.py" ]]; then
    rm -rf "$dir/stubs.tmp"
    mkdir -p "$dir/stubs.tmp"
    "$dir/venv/bin/python" -m grpc_tools.protoc \
        --descriptor_set_in="$fds" \
        --python_out="$dir/stubs.tmp" --grpc_python_out="$dir/stubs.tmp" \
        csi.proto
    rm -rf "$dir/stubs"
    mv "$dir/stubs.tmp" "$dir/stubs"
fi

echo "official CSI client ready in $dir"
