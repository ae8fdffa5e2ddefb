#!/usr/bin/env bash
# The Everest demo: one block volume through create, attach, stage, publish, write/read,
# online expand, and back down, against the local cloud emulator, on real loop devices.
#
#   sudo bash scripts/demo.sh        (or, as root: bash scripts/demo.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "demo.sh: run as root (loop devices and mounts): sudo bash scripts/demo.sh" >&2
    exit 2
fi
if [[ ! -e /dev/loop-control ]]; then
    echo "demo.sh: /dev/loop-control is missing: this machine offers no loop devices" >&2
    exit 2
fi

# What the demo needs from the system.
if ! command -v mkfs.xfs >/dev/null; then
    echo "demo.sh: installing xfsprogs"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq xfsprogs >/dev/null
fi
if ! command -v cargo >/dev/null; then
    # A sudo PATH often lacks ~/.cargo/bin.
    for c in "${SUDO_USER:+$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo/bin}" /root/.cargo/bin /usr/local/cargo/bin; do
        if [[ -n "$c" && -x "$c/cargo" ]]; then PATH="$c:$PATH"; break; fi
    done
fi
command -v cargo >/dev/null || { echo "demo.sh: cargo not found; install Rust (https://rustup.rs)" >&2; exit 2; }

target=${CARGO_TARGET_DIR:-$PWD/target}
export CARGO_TARGET_DIR=$target
echo "demo.sh: building (cargo build --workspace --bins)"
cargo build --workspace --bins --quiet
exec "$target/debug/everest-demo"
