#!/usr/bin/env bash
# Validates the Everest chart: lint, render every values combination, schema-validate each
# rendering against three Kubernetes minors, check CRD objects, the sidecar/daemon wiring, the
# alert rules (promtool check + unit tests), the dashboard's and alerts' metric names, and YAML
# style. Installs its tools into $EVEREST_TOOLS_DIR (default /var/tmp/everest-tools).
#
#   bash helm/tests/validate.sh
#
# Needs the daemons built (cargo build -p everest-controller -p everest-node) for the flag check;
# uses $EVEREST_METRICS_DIR (written by metrics-live.sh) for the metric check when present,
# else the metric names recorded in the Rust sources.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CHART="$REPO/helm/everest"
# shellcheck source=lib/tools.sh
source "$HERE/lib/tools.sh"
install_tools

KUBE_VERSIONS=(1.31.0 1.34.0 1.37.0)
BIN_DIR="${CARGO_TARGET_DIR:-$REPO/target}/debug"
METRICS_DIR="${EVEREST_METRICS_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/everest-metrics}"
CHECK=("$EVEREST_PYTHON" "$HERE/lib/check.py")

WORK="$(mktemp -d "${TMPDIR:-/tmp}/everest-validate-XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

step() { printf '\n== %s\n' "$*"; }

step "helm lint --strict"
helm lint --strict "$CHART"
helm lint --strict "$CHART" -f "$HERE/values/all.yaml"

# name → extra helm arguments
declare -A COMBOS=(
  [default]=""
  [block-only]="-f $HERE/values/block-only.yaml"
  [file-only]="-f $HERE/values/file-only.yaml"
  [object-only]="-f $HERE/values/object-only.yaml"
  [all]="-f $HERE/values/all.yaml"
  [snapshots]="--set snapshots.enabled=true"
  [monitoring]="-f $HERE/values/monitoring.yaml"
  [single-replica]="--set controller.replicas=1 --set controller.podDisruptionBudget.enabled=false"
)

for name in $(printf '%s\n' "${!COMBOS[@]}" | sort); do
  step "render: $name"
  out="$WORK/$name"
  mkdir -p "$out"
  # shellcheck disable=SC2086
  helm template everest "$CHART" --namespace kube-system ${COMBOS[$name]} > "$out/rendered.yaml"
  "${CHECK[@]}" split "$out/rendered.yaml" "$out/core.yaml" "$out/crd.yaml"
  for v in "${KUBE_VERSIONS[@]}"; do
    kubernetes-validate --strict --quiet -k "$v" "$out/core.yaml"
    echo "ok  kubernetes-validate --strict -k $v"
  done
  if [[ -s "$out/crd.yaml" ]] && grep -q kind "$out/crd.yaml"; then
    "${CHECK[@]}" crds "$out/crd.yaml"
  fi
  yamllint -c "$HERE/yamllint-rendered.yaml" "$out/rendered.yaml"
  echo "ok  yamllint"
done

step "expected objects per combination"
grep -q 'kind: VolumeSnapshotClass' "$WORK/snapshots/rendered.yaml"
grep -q 'name: csi-snapshotter' "$WORK/snapshots/rendered.yaml"
! grep -q 'name: csi-snapshotter' "$WORK/default/rendered.yaml"
grep -q 'attachRequired: false' "$WORK/file-only/rendered.yaml"
grep -q 'fsGroupPolicy: None' "$WORK/object-only/rendered.yaml"
grep -q 'fsGroupPolicy: ReadWriteOnceWithFSType' "$WORK/all/rendered.yaml"
! grep -q 'name: csi-attacher' "$WORK/file-only/rendered.yaml"
for sc in csi-disk csi-disk-topology csi-nas csi-obs; do grep -q "name: $sc\$" "$WORK/all/rendered.yaml"; done
for k in ServiceMonitor PodMonitor PrometheusRule; do grep -q "kind: $k" "$WORK/monitoring/rendered.yaml"; done
# Credentials only ever in Secrets: no ConfigMap of any rendering holds a secret value.
for f in "$WORK"/*/rendered.yaml; do
  "$EVEREST_PYTHON" - "$f" <<'PY'
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "ConfigMap":
        text = str(d.get("data", {}))
        for word in ("SKEXAMPLE", "example-password", "secret_key", "password ="):
            if word in text:
                sys.exit(f"FAIL: ConfigMap {d['metadata']['name']} holds a secret ({word}) in {sys.argv[1]}")
PY
done
echo "ok  snapshots, attach, fsGroup, StorageClasses, monitoring objects as expected"

step "daemon flags, sockets and registration paths"
for d in everest-controller everest-node; do
  if [[ ! -x "$BIN_DIR/$d" ]]; then
    echo "FAIL: $BIN_DIR/$d missing: cargo build -p everest-controller -p everest-node" >&2
    exit 1
  fi
  "$BIN_DIR/$d" --help > "$WORK/$d.help"
done
for name in default all snapshots; do
  "${CHECK[@]}" wiring "$WORK/$name/rendered.yaml" "$WORK/everest-controller.help" "$WORK/everest-node.help"
done

step "the rendered daemon config passes --check-config"
"${CHECK[@]}" toml "$WORK/block-only/rendered.yaml" "$WORK/everest.toml"
printf '{"access_key":"AK","secret_key":"SK"}' > "$WORK/credentials.json"
chmod 600 "$WORK/credentials.json"
sed -i "s#/etc/everest/credentials/evs-default/credentials.json#$WORK/credentials.json#" "$WORK/everest.toml"
sed -i "s#^kubelet_root = .*#kubelet_root = \"$WORK\"#" "$WORK/everest.toml"
sed -i "s#^by_id_dir = .*#by_id_dir = \"$WORK\"#" "$WORK/everest.toml"
( cd "$WORK" && env -u EVEREST_NODE__NODE_ID "$BIN_DIR/everest-controller" --check-config --config "$WORK/everest.toml" --endpoint "unix://$WORK/c.sock" )
( cd "$WORK" && EVEREST_NODE__NODE_ID=check EVEREST_NODE__ZONE=check "$BIN_DIR/everest-node" --check-config --config "$WORK/everest.toml" --endpoint "unix://$WORK/n.sock" )

step "alert rules: promtool check rules / test rules"
"${CHECK[@]}" rules "$WORK/monitoring/rendered.yaml" "$WORK/rendered-rules.yaml"
cp "$HERE/alerts.test.yaml" "$WORK/alerts.test.yaml"
promtool check rules "$WORK/rendered-rules.yaml"
promtool test rules "$WORK/alerts.test.yaml"

step "dashboard and alert metrics are exported by the daemons"
"$EVEREST_PYTHON" -c 'import json,sys; json.load(open(sys.argv[1]))' "$CHART/files/everest-dashboard.json"
"${CHECK[@]}" metrics "$CHART/files/everest-dashboard.json" "$WORK/rendered-rules.yaml" --source "$REPO"
shopt -s nullglob
expositions=("$METRICS_DIR"/*.prom)
if (( ${#expositions[@]} > 0 )); then
  "${CHECK[@]}" metrics "$CHART/files/everest-dashboard.json" "$WORK/rendered-rules.yaml" --exposition "${expositions[@]}"
else
  echo "note: no saved expositions in $METRICS_DIR (run helm/tests/metrics-live.sh); checked against the sources only"
fi

step "yamllint values"
yamllint -c "$HERE/yamllint-values.yaml" "$CHART/values.yaml" "$CHART/Chart.yaml" "$HERE"/values/*.yaml "$HERE/alerts.test.yaml"

printf '\nvalidate.sh: all checks passed\n'
