#!/usr/bin/env bash
# Live metrics check: the real daemons against the emulator, one volume lifecycle (with a
# burst of injected throttling), and an object volume through the FUSE mounter supervisor
# (everest-mounter, s3fs against moto's S3 server) whose mounter is killed once; then:
# `promtool check metrics` on the three expositions, saved to $EVEREST_METRICS_DIR for
# validate.sh's metric-name check, and a real Prometheus on 127.0.0.1 scraping the three
# daemons, asked for everest_csi_operations_total and the mounter restart.
#
#   CARGO_TARGET_DIR=/work/target bash helm/tests/metrics-live.sh      (root: loop devices)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
source "$HERE/lib/tools.sh"
install_tools
GRPC_VERSION="1.76.0"
venv="$(dirname "$EVEREST_PYTHON")/.."
"$EVEREST_PYTHON" -c 'import grpc_tools' 2>/dev/null || "$venv/bin/pip" install --quiet --disable-pip-version-check "grpcio==$GRPC_VERSION" "grpcio-tools==$GRPC_VERSION"

BIN="${CARGO_TARGET_DIR:-$REPO/target}/debug"
OUT="${EVEREST_METRICS_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/everest-metrics}"
for b in everest-emulator everest-controller everest-node everest-mounter; do
  [[ -x "$BIN/$b" ]] || { echo "FAIL: $BIN/$b missing: cargo build -p everest-emulator -p everest-controller -p everest-node" >&2; exit 1; }
done

ROOT="$(mktemp -d "${TMPDIR:-/tmp}/everest-metrics-live-XXXXXX")"
chmod 700 "$ROOT"
PIDS=()
cleanup() {
  local rc=$?
  set +e
  # Daemons first (SIGTERM, graceful), then the emulator, whose --cleanup-on-exit detaches
  # its loop devices and removes its links.
  for (( i=${#PIDS[@]}-1; i>=0; i-- )); do kill -TERM "${PIDS[$i]}" 2>/dev/null || true; wait "${PIDS[$i]}" 2>/dev/null || true; done
  # Anything still mounted under our root (a failed lifecycle) is unmounted before removal.
  grep -o " $ROOT[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount "$m" 2>/dev/null || true; done
  for l in $(losetup -j "$ROOT/state" 2>/dev/null | cut -d: -f1); do losetup -d "$l" || true; done
  # Mounters of a failed object lifecycle (children of the supervisor, which leaves them
  # serving when stopped): whatever names this run's dir.
  for p in $(pgrep -f "$ROOT" || true); do kill -KILL "$p" 2>/dev/null || true; done
  (( rc == 0 )) || tail -n 30 "$ROOT"/*.log 2>/dev/null || true
  rm -rf "$ROOT"
  exit $rc
}
trap cleanup EXIT INT TERM

wait_for() { # wait_for SECONDS COMMAND... : poll until it succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do (( SECONDS < deadline )) || return 1; sleep 0.2; done
}
free_port() { "$EVEREST_PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

mkdir -p "$ROOT"/{state,by-id,kubelet,sockets,tsdb}
AK=METRICSLIVEAK; SK="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
( umask 077
  printf '{"access_keys":[{"ak":"%s","sk":"%s"}],"users":[]}' "$AK" "$SK" > "$ROOT/emulator-credentials.json"
  printf '{"access_key":"%s","secret_key":"%s"}' "$AK" "$SK" > "$ROOT/evs-credentials.json" )

"$BIN/everest-emulator" --listen 127.0.0.1:0 --state-dir "$ROOT/state" --by-id-dir "$ROOT/by-id" \
  --credentials-file "$ROOT/emulator-credentials.json" --job-latency-ms 100 --cleanup-on-exit \
  > "$ROOT/emulator.out" 2> "$ROOT/emulator.log" &
PIDS+=($!)
wait_for 30 grep -q EVEREST_EMULATOR_LISTENING= "$ROOT/emulator.out" || { echo "FAIL: emulator did not start"; exit 1; }
EMU="http://$(sed -n 's/^EVEREST_EMULATOR_LISTENING=//p' "$ROOT/emulator.out")"
CPORT="$(free_port)"; NPORT="$(free_port)"; PPORT="$(free_port)"

# The object volume needs moto's S3 server (scripts/test.sh installs it and sets
# EVEREST_MOTO_SERVER), s3fs and FUSE; without them (never in CI) the supervisor's metrics are
# checked against the sources only.
OBJECT=1
why_no_object=""
if [[ -z "${EVEREST_MOTO_SERVER:-}" || ! -x "${EVEREST_MOTO_SERVER:-}" ]]; then why_no_object="EVEREST_MOTO_SERVER is not set"
elif ! command -v s3fs >/dev/null; then why_no_object="s3fs is not installed"
elif [[ ! -c /dev/fuse ]]; then why_no_object="/dev/fuse is missing"
fi
if [[ -n $why_no_object ]]; then
  [[ "${CI:-}" == true ]] && { echo "FAIL: no object volume: $why_no_object"; exit 1; }
  echo "note: no object volume ($why_no_object): the supervisor's metrics are not scraped"
  OBJECT=0
fi
MPORT="$(free_port)"
if (( OBJECT )); then
  S3PORT="$(free_port)"
  "$EVEREST_MOTO_SERVER" -H 127.0.0.1 -p "$S3PORT" > "$ROOT/moto.log" 2>&1 &
  PIDS+=($!)
  wait_for 60 curl -fsS "http://127.0.0.1:$S3PORT/" || { echo "FAIL: moto did not start"; exit 1; }
  OBS_AK=METRICSLIVEOBS; OBS_SK="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  ( umask 077; printf '{"access_key":"%s","secret_key":"%s"}' "$OBS_AK" "$OBS_SK" > "$ROOT/obs-credentials.json" )
  "$BIN/everest-mounter" --socket "$ROOT/run/mounter/mounter.sock" --state-dir "$ROOT/mounter-state" \
    --metrics-address "127.0.0.1:$MPORT" --backoff-cap-seconds 1 2> "$ROOT/mounter.log" &
  PIDS+=($!)
  wait_for 30 test -S "$ROOT/run/mounter/mounter.sock" || { echo "FAIL: everest-mounter did not create its socket"; exit 1; }
fi

cat > "$ROOT/everest.toml" <<TOML
driver_name = "everest.csi.io"
default_backend = "evs-default"

[node]
kubelet_root = "$ROOT/kubelet"

[backends.evs-default]
kind = "evs"
project_id = "0123456789abcdef0123456789abcdef"
region = "emu-region-1"
evs_endpoint = "$EMU"
ecs_endpoint = "$EMU"
iam_endpoint = "$EMU"
metadata_url = "$EMU/openstack/latest/meta_data.json"
allow_insecure_http = true
credentials_file = "$ROOT/evs-credentials.json"
by_id_dir = "$ROOT/by-id"
job_timeout_seconds = 60
device_wait_seconds = 30
TOML
if (( OBJECT )); then
  cat >> "$ROOT/everest.toml" <<TOML

[backends.objects]
kind = "obs"
endpoint = "http://127.0.0.1:$S3PORT"
credentials_file = "$ROOT/obs-credentials.json"
runtime_dir = "$ROOT/run/obs"
supervisor_socket = "$ROOT/run/mounter/mounter.sock"
TOML
fi
"$BIN/everest-controller" --config "$ROOT/everest.toml" --endpoint "unix://$ROOT/sockets/controller.sock" \
  --metrics-address "127.0.0.1:$CPORT" 2> "$ROOT/controller.log" &
PIDS+=($!)
"$BIN/everest-node" --config "$ROOT/everest.toml" --endpoint "unix://$ROOT/sockets/node.sock" \
  --metrics-address "127.0.0.1:$NPORT" 2> "$ROOT/node.log" &
PIDS+=($!)
wait_for 30 test -S "$ROOT/sockets/controller.sock" && wait_for 30 test -S "$ROOT/sockets/node.sock" \
  || { echo "FAIL: daemons did not create their sockets"; exit 1; }

echo "== lifecycle"
"$EVEREST_PYTHON" "$HERE/lib/lifecycle.py" "$REPO/proto" "$ROOT/sockets/controller.sock" "$ROOT/sockets/node.sock" "$ROOT/kubelet"
echo "== throttling burst (so retry metrics exist)"
curl -fsS -X PUT -H 'content-type: application/json' -d '{"error_rate":0,"throttle_rate":0.5,"delay_ms":0}' "$EMU/_emulator/faults" >/dev/null
"$EVEREST_PYTHON" "$HERE/lib/lifecycle.py" "$REPO/proto" "$ROOT/sockets/controller.sock" "$ROOT/sockets/node.sock" "$ROOT/kubelet" || echo "note: lifecycle under 50% throttling failed (allowed)"
curl -fsS -X PUT -H 'content-type: application/json' -d '{"error_rate":0,"throttle_rate":0,"delay_ms":0}' "$EMU/_emulator/faults" >/dev/null

mounter_restarts() { curl -fsS "http://127.0.0.1:$MPORT/metrics" | grep -q '^everest_obs_mounter_restarts_total{backend="objects",mounter="s3fs"} 1$'; }
if (( OBJECT )); then
  echo "== object volume through the mounter supervisor; its mounter killed once"
  mkfifo "$ROOT/hold"
  OBS_AK=$OBS_AK OBS_SK=$OBS_SK "$EVEREST_PYTHON" "$HERE/lib/lifecycle.py" "$REPO/proto" "$ROOT/sockets/controller.sock" \
    "$ROOT/sockets/node.sock" "$ROOT/kubelet" object objects < "$ROOT/hold" > "$ROOT/object-lifecycle.log" 2>&1 &
  LIFECYCLE=$!
  exec 3> "$ROOT/hold"
  wait_for 60 grep -q '^STAGED ' "$ROOT/object-lifecycle.log" || { echo "FAIL: the object volume was not staged"; cat "$ROOT/object-lifecycle.log"; exit 1; }
  staging=$(sed -n 's/^STAGED //p' "$ROOT/object-lifecycle.log")
  mounter=$(pgrep -f "^s3fs .* $staging( |\$)" | head -n 1)
  [[ -n $mounter ]] || { echo "FAIL: no s3fs process mounts $staging"; exit 1; }
  kill -KILL "$mounter"
  wait_for 30 mounter_restarts || { echo "FAIL: the supervisor did not count the mounter's restart"; exit 1; }
  echo >&3; exec 3>&-
  wait "$LIFECYCLE" || { echo "FAIL: object lifecycle"; cat "$ROOT/object-lifecycle.log"; exit 1; }
  sed 's/^/  /' "$ROOT/object-lifecycle.log"
fi

echo "== scrape and promtool check metrics"
mkdir -p "$OUT"
rm -f "$OUT"/*.prom
curl -fsS "http://127.0.0.1:$CPORT/metrics" > "$OUT/controller.prom"
curl -fsS "http://127.0.0.1:$NPORT/metrics" > "$OUT/node.prom"
expositions=("$OUT"/controller.prom "$OUT"/node.prom)
if (( OBJECT )); then
  curl -fsS "http://127.0.0.1:$MPORT/metrics" > "$OUT/mounter.prom"
  for m in everest_obs_mounts everest_obs_mounter_restarts_total everest_obs_mounts_given_up_total; do
    grep -q "^$m{" "$OUT/mounter.prom" || { echo "FAIL: no $m in the supervisor's exposition"; exit 1; }
  done
  promtool check metrics < "$OUT/mounter.prom" || { echo "FAIL: promtool check metrics $OUT/mounter.prom"; exit 1; }
  echo "ok  $OUT/mounter.prom"
fi
for f in "${expositions[@]}"; do
  # Lint findings (exit 3, e.g. a metric without HELP) are fatal too, unless
  # EVEREST_STRICT_METRICS_LINT=0 asks to see them without failing.
  lint_rc=0; promtool check metrics < "$f" || lint_rc=$?
  if (( lint_rc == 3 )) && [[ "${EVEREST_STRICT_METRICS_LINT:-1}" == 0 ]]; then
    echo "LINT (not fatal): promtool check metrics findings above for $f"
  elif (( lint_rc != 0 )); then
    echo "FAIL: promtool check metrics $f (exit $lint_rc)"; exit 1
  fi
  grep -q '^everest_csi_operations_total{' "$f" || { echo "FAIL: no everest_csi_operations_total in $f"; exit 1; }
  echo "ok  $f"
done

echo "== Prometheus on 127.0.0.1:$PPORT"
cat > "$ROOT/prometheus.yml" <<YML
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: everest
    honor_labels: true
    static_configs:
      - targets: ["127.0.0.1:$CPORT", "127.0.0.1:$NPORT", "127.0.0.1:$MPORT"]
YML
prometheus --config.file "$ROOT/prometheus.yml" --storage.tsdb.path "$ROOT/tsdb" \
  --web.listen-address "127.0.0.1:$PPORT" > "$ROOT/prometheus.log" 2>&1 &
PIDS+=($!)
query() { curl -fsS --get "http://127.0.0.1:$PPORT/api/v1/query" --data-urlencode "query=$1"; }
has_value() { query "$1" | "$EVEREST_PYTHON" -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; sys.exit(0 if r and float(r[0]["value"][1])>0 else 1)'; }
wait_for 60 has_value 'sum(everest_csi_operations_total{service="controller",method="CreateVolume",grpc_code="OK"})' \
  || { echo "FAIL: Prometheus has no CreateVolume count"; exit 1; }
wait_for 30 has_value 'sum(everest_csi_operations_total{service="node",method="NodeStageVolume",grpc_code="OK"})' \
  || { echo "FAIL: Prometheus has no NodeStageVolume count"; exit 1; }
if (( OBJECT )); then
  wait_for 30 has_value 'sum(everest_obs_mounter_restarts_total{backend="objects",mounter="s3fs"})' \
    || { echo "FAIL: Prometheus has no mounter restart"; exit 1; }
fi
query 'sum by (service, method, grpc_code) (everest_csi_operations_total)' > "$ROOT/counts.json"
"$EVEREST_PYTHON" - "$ROOT/counts.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["data"]["result"]:
    m = r["metric"]
    print("  %-10s %-28s %-18s %s" % (m.get("service"), m.get("method"), m.get("grpc_code"), r["value"][1]))
PY
echo
echo "metrics-live.sh: passed; expositions saved in $OUT"
