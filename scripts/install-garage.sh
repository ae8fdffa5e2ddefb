#!/usr/bin/env bash
# Builds Garage (a full S3 service, for the object-volume tests and the mounters bench) once
# per target dir, about 8 minutes on 2 cores, and prints the path of its binary.
set -euo pipefail
garage_root=${CARGO_TARGET_DIR:?set CARGO_TARGET_DIR}/garage-2.5.0
if [[ ! -x $garage_root/bin/garage ]]; then
    CARGO_TARGET_DIR=$garage_root/build cargo install garage@2.5.0 --locked --quiet --root "$garage_root" >&2
    rm -rf "$garage_root/build"
fi
echo "$garage_root/bin/garage"
