#!/usr/bin/env bash
# Every performance figure of docs/performance.md in one run: release builds of the daemons and
# the emulator, then `everest-bench` (control plane, node, I/O, start-up, growth) and the
# object mounters' bench (s3fs and rclone against Garage). The report goes to stdout and to
# $CARGO_TARGET_DIR/bench-report.md.
#
#   sudo bash scripts/bench.sh            # the published figures (about half an hour on 2 cores)
#   sudo bash scripts/bench.sh --quick    # a few minutes
#
# Needs root and loop devices (the node figures), FUSE (the object figures); installs fio, s3fs,
# rclone and nfs-ganesha with apt-get, and Garage with cargo, when they are missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
quick=()
[[ ${1:-} == --quick ]] && quick=(--quick)
[[ $(id -u) -eq 0 ]] || { echo "bench.sh needs root (loop devices, mounts, FUSE)" >&2; exit 2; }

need=()
for tool in fio s3fs rclone; do
    command -v "$tool" >/dev/null || need+=("$tool")
done
command -v fusermount >/dev/null || need+=(fuse3)
# The file figures: nfs-ganesha (with its VFS backend and rpcbind) and the user-space client.
command -v ganesha.nfsd >/dev/null || need+=(nfs-ganesha)
dpkg -s nfs-ganesha-vfs >/dev/null 2>&1 || need+=(nfs-ganesha-vfs)
command -v rpcbind >/dev/null || need+=(rpcbind)
command -v nfs-ls >/dev/null || need+=(libnfs-utils)
if ((${#need[@]})); then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
EVEREST_GARAGE=$(bash scripts/install-garage.sh)
export EVEREST_GARAGE

cargo build --release --quiet -p everest-controller -p everest-node -p everest-emulator \
    -p everest-testsupport --bins
report=$CARGO_TARGET_DIR/bench-report.md
{
    echo "# Everest benchmark, $(date -u +%F), commit $(git rev-parse --short HEAD)"
    echo
    echo "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), load average $(cut -d' ' -f1-3 /proc/loadavg) at the start"
    echo
    echo "## Control plane, node, I/O, start-up and growth (everest-bench)"
    echo
    EVEREST_BIN_DIR=$CARGO_TARGET_DIR/release "$CARGO_TARGET_DIR/release/everest-bench" "${quick[@]}"
    echo
    echo "## Object volumes (cargo bench -p everest-obs --bench mounters)"
    echo
    cargo bench --quiet -p everest-obs --bench mounters -- "${quick[@]}"
} | tee "$report"
echo "report written to $report" >&2
