#!/usr/bin/env bash
# Everest's test command, what CI runs (.ci/run). Installs what the tests need, then:
# fmt check, clippy -D warnings, build, the official-spec CSI client, Huawei Cloud's official
# Python SDK, moto's S3 server, Garage, cargo test (unit, integration and lifecycle suites against the real emulator and
# daemons, the official client's wire check against both daemons, and the SDK's fidelity suite
# against the emulator), the Helm chart's checks (helm/tests), and a leak check.
#
#   bash scripts/test.sh          (as root for the tests that attach disks; others run anyway)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
start=$SECONDS
section() { printf '\n=== %s (t+%ds)\n' "$*" "$((SECONDS - start))"; }

as_root=0
[[ $(id -u) -eq 0 ]] && as_root=1

section "system packages"
need=()
command -v mkfs.xfs >/dev/null || need+=(xfsprogs)
command -v mkfs.btrfs >/dev/null || need+=(btrfs-progs)
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# The chart checks (helm/tests): promtool and a Prometheus server; unzip for helm's layer.
command -v promtool >/dev/null || need+=(prometheus)
command -v unzip >/dev/null || need+=(unzip)
command -v npm >/dev/null || need+=(npm)
# The benchmark harness's I/O figures (testsupport/tests/bench_runs.rs runs a tiny version).
command -v fio >/dev/null || need+=(fio)
# File shares (testsupport/src/nfs.rs): nfs-ganesha with its VFS backend and rpcbind, run in a
# private network namespace per test; libnfs-utils (nfs-cp, nfs-ls) is the user-space client.
command -v ganesha.nfsd >/dev/null || need+=(nfs-ganesha)
dpkg -s nfs-ganesha-vfs >/dev/null 2>&1 || need+=(nfs-ganesha-vfs)
command -v rpcbind >/dev/null || need+=(rpcbind)
command -v nfs-cp >/dev/null || need+=(libnfs-utils)
# Object volumes (backends/obs/tests): s3fs and rclone mount buckets through FUSE (fuse3 brings
# fusermount).
command -v s3fs >/dev/null || need+=(s3fs)
command -v rclone >/dev/null || need+=(rclone)
command -v fusermount >/dev/null || need+=(fuse3)
if ((${#need[@]})); then
    if ((as_root)); then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${need[@]}" >/dev/null
        echo "installed: ${need[*]}"
    else
        echo "not root: cannot install ${need[*]}; the tests that need them will skip"
    fi
else
    echo "all present"
fi
command -v cargo >/dev/null || { echo "cargo not found; install Rust" >&2; exit 2; }

# Every temp dir the tests make goes under one private dir, so the leak check below looks
# only at what this run made.
run_tmp=$(mktemp -d /tmp/everest-testrun-XXXXXX)
# Removed however the run ends (an early failure in fmt, clippy or the build included);
# --one-file-system so a leaked mount is reported by rm, not emptied.
trap 'rm -rf --one-file-system "$run_tmp"' EXIT
export TMPDIR=$run_tmp
# Every test that cannot run here says why in this file (testsupport::skip); the summary counts
# them. With CI=true a skip fails its test instead.
export EVEREST_SKIP_LOG=$run_tmp/skipped.log
: >"$EVEREST_SKIP_LOG"
# Network namespaces present before the tests; any other everest-nfs-* one after them leaked.
netns_before=$(ip netns list 2>/dev/null | awk '{print $1}' | sort)
leak_check() {
    local failed=0 ns
    ns=$(comm -13 <(echo "$netns_before") <(ip netns list 2>/dev/null | awk '{print $1}' | sort) |
        grep '^everest-nfs-' || true)
    if [[ -n $ns ]]; then
        echo "$ns"
        echo "LEAK: the network namespaces above were made by this run and remain" >&2
        failed=1
    fi
    # A process whose command line names a file of this run (an emulator's state dir, a
    # ganesha config) outlived its test.
    if ps -eo pid=,args= | grep -F "$run_tmp" | grep -v grep; then
        echo "LEAK: the processes above remain from this run" >&2
        failed=1
    fi
    if command -v losetup >/dev/null && losetup -n -l -O NAME,BACK-FILE 2>/dev/null | grep -F "$run_tmp"; then
        echo "LEAK: loop devices above are backed by files under $run_tmp" >&2
        failed=1
    fi
    if grep -F " $run_tmp" /proc/self/mountinfo; then
        echo "LEAK: mounts above remain under $run_tmp" >&2
        failed=1
    fi
    return $failed
}

section "cargo fmt --check"
cargo fmt --all -- --check

section "cargo clippy --workspace --all-targets -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

section "cargo build --workspace --bins"
cargo build --workspace --bins

section "the fake host is test-only (core's doc tests, without its test-util feature)"
cargo test -p everest-backend --doc

section "official-spec CSI client (for the wire check in cargo test)"
setup=proto/tests/official_client/setup.sh
if [[ -f $setup ]]; then
    client_dir=$CARGO_TARGET_DIR/official-client
    bash "$setup" "$client_dir"
    # everest-controller/tests/official_client.rs drives both daemons with it.
    export EVEREST_OFFICIAL_CLIENT_DIR=$client_dir
else
    echo "skipped: $setup does not exist"
fi

section "Huawei Cloud's official Python SDK (for the emulator fidelity suite in cargo test)"
setup=emulator/tests/sdk_fidelity/setup.sh
sdk_dir=$CARGO_TARGET_DIR/sdk-fidelity
bash "$setup" "$sdk_dir"
# emulator/tests/sdk_fidelity.rs drives the emulator with it; without it that test skips.
export EVEREST_SDK_VENV=$sdk_dir/venv

section "moto's S3 server (for the object-volume tests in cargo test)"
s3_dir=$CARGO_TARGET_DIR/s3-server
bash backends/obs/tests/s3_server/setup.sh "$s3_dir"
# testsupport::S3Server starts one per test; without it those tests skip.
export EVEREST_MOTO_SERVER=$s3_dir/venv/bin/moto_server

section "Garage (a full S3 service, for the object-volume tests that need one)"
# testsupport::GarageServer starts one per test; without it those tests skip.
EVEREST_GARAGE=$(bash scripts/install-garage.sh)
export EVEREST_GARAGE
"$EVEREST_GARAGE" --version

section "cargo test --workspace"
# Two test binaries at a time at most share the 2 cores with their worlds' processes.
test_status=0
# --no-fail-fast: one failing test binary does not hide the others' results.
cargo test --workspace --no-fail-fast -- --test-threads="${EVEREST_TEST_THREADS:-2}" || test_status=$?

section "Helm chart: live metrics (Prometheus scraping both daemons), then chart validation"
chart_status=0
if ((as_root)); then
    bash helm/tests/metrics-live.sh || chart_status=$?
else
    echo "not root: skipping helm/tests/metrics-live.sh (it attaches disks); validate.sh checks metric names against the sources"
fi
bash helm/tests/validate.sh || chart_status=$?

section "leak check"
leak_status=0
leak_check || leak_status=1
[[ $leak_status -eq 0 ]] && echo "no loop device, mount, network namespace or process left from $run_tmp"

section "summary"
skipped=$(wc -l <"$EVEREST_SKIP_LOG")
echo "cargo test: $([[ $test_status -eq 0 ]] && echo ok || echo FAILED), $skipped test(s) skipped"
sed 's/^/  /' "$EVEREST_SKIP_LOG"
echo "helm chart: $([[ $chart_status -eq 0 ]] && echo ok || echo FAILED)"
echo "leak check: $([[ $leak_status -eq 0 ]] && echo ok || echo FAILED)"
echo "total time: $((SECONDS - start))s"
((test_status == 0 && chart_status == 0 && leak_status == 0))
