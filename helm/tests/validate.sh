#!/usr/bin/env bash
# Validates the Everest chart: lint, render every values combination, schema-validate each
# rendering against three Kubernetes minors, check CRD objects, the sidecar/daemon wiring, the
# alert rules (promtool check + unit tests), the dashboard's and alerts' metric names and release
# scoping, RBAC against the sidecars' needs, NOTES, the Dockerfile, and YAML style; then
# helm/tests/negative.sh breaks the chart once per check and expects that check to fail.
# Installs its tools into $EVEREST_TOOLS_DIR (default /var/tmp/everest-tools).
#
#   bash helm/tests/validate.sh
#
# Needs the daemons built (cargo build -p everest-controller -p everest-node -p everest-obs) for the flag check;
# uses $EVEREST_METRICS_DIR (written by metrics-live.sh) for the metric check when present,
# else the metric names recorded in the Rust sources.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CHART="$REPO/helm/everest"
# shellcheck source=lib/tools.sh
source "$HERE/lib/tools.sh"
install_tools

# The three newest Kubernetes minors kubernetes-validate bundles.
KUBE_VERSIONS=(1.35.0 1.36.0 1.37.0)
BIN_DIR="${CARGO_TARGET_DIR:-$REPO/target}/debug"
METRICS_DIR="${EVEREST_METRICS_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/everest-metrics}"
CHECK=("$EVEREST_PYTHON" "$HERE/lib/check.py")
POLICY=("$EVEREST_PYTHON" "$HERE/lib/policy.py")
# No public image exists, so every rendering names one (without it the chart refuses: checked below).
IMAGE=(--set image.repository=registry.example.com/everest)

WORK="$(mktemp -d "${TMPDIR:-/tmp}/everest-validate-XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

step() { printf '\n== %s\n' "$*"; }

step "helm lint --strict"
helm lint --strict "$CHART" "${IMAGE[@]}"
helm lint --strict "$CHART" "${IMAGE[@]}" -f "$HERE/values/all.yaml"

# name → extra helm arguments
declare -A COMBOS=(
  [default]=""
  [block-only]="-f $HERE/values/block-only.yaml"
  [file-only]="-f $HERE/values/file-only.yaml"
  [object-only]="-f $HERE/values/object-only.yaml"
  [block-file]="-f $HERE/values/block-file.yaml"
  [block-object]="-f $HERE/values/block-object.yaml"
  [file-object]="-f $HERE/values/file-object.yaml"
  [all]="-f $HERE/values/all.yaml"
  [snapshots]="--set snapshots.enabled=true"
  [monitoring]="-f $HERE/values/monitoring.yaml"
  [monitoring-pod]="-f $HERE/values/monitoring.yaml --set monitoring.serviceMonitor.enabled=false --set monitoring.podMonitor.enabled=true"
  [single-replica]="--set controller.replicas=1 --set controller.podDisruptionBudget.enabled=false"
  [native-registration]="-f $HERE/values/block-only.yaml --set node.registration=native"
)

for name in $(printf '%s\n' "${!COMBOS[@]}" | sort); do
  step "render: $name"
  out="$WORK/$name"
  mkdir -p "$out"
  # shellcheck disable=SC2086
  for v in "${KUBE_VERSIONS[@]}"; do
    # Rendered for each minor (Capabilities differ), then validated against that minor.
    helm template everest "$CHART" --namespace kube-system --kube-version "$v" "${IMAGE[@]}" ${COMBOS[$name]} > "$out/rendered-$v.yaml"
    "${CHECK[@]}" split "$out/rendered-$v.yaml" "$out/core.yaml" "$out/crd.yaml" >/dev/null
    kubernetes-validate --strict --quiet -k "$v" "$out/core.yaml"
    echo "ok  kubernetes-validate --strict -k $v"
  done
  cp "$out/rendered-${KUBE_VERSIONS[-1]}.yaml" "$out/rendered.yaml"
  "${CHECK[@]}" split "$out/rendered.yaml" "$out/core.yaml" "$out/crd.yaml"
  # Every rendering has CRD-based objects or none; the check runs on whatever is there.
  "${POLICY[@]}" crds "$out/crd.yaml"
  yamllint -c "$HERE/yamllint-rendered.yaml" "$out/rendered.yaml"
  echo "ok  yamllint"
  "${POLICY[@]}" expect "$name" "$out/rendered.yaml"
  "${POLICY[@]}" secrets "$out/rendered.yaml"
  "${POLICY[@]}" rbac "$out/rendered.yaml"
done

step "values the chart must refuse, with a message naming the value"
# expect_refusal MESSAGE HELM-ARGS...: helm template fails and says MESSAGE.
expect_refusal() {
  local msg=$1; shift
  local out rc=0
  out=$(helm template everest "$CHART" --namespace kube-system "$@" 2>&1) || rc=$?
  if (( rc == 0 )); then echo "FAIL: helm template $* rendered; expected a refusal naming: $msg" >&2; return 1; fi
  if ! grep -qF -- "$msg" <<<"$out"; then echo "FAIL: helm template $* refused without naming '$msg':" >&2; echo "$out" >&2; return 1; fi
  echo "ok  refused ($msg)"
}
refusals() {
  expect_refusal "image.repository is not set" --set image.repository=
  expect_refusal "controller.healthPort and controller.metricsPort are both 9810" "${IMAGE[@]}" --set controller.metricsPort=9810
  expect_refusal "node.healthPort and node.metricsPort are both 9809" "${IMAGE[@]}" --set node.healthPort=9809
  expect_refusal "controller.metricsPort and sidecars.provisioner.httpPort are both 9808" "${IMAGE[@]}" --set sidecars.provisioner.httpPort=9808
  expect_refusal "serviceMonitor and monitoring.podMonitor are mutually exclusive" "${IMAGE[@]}" --set monitoring.serviceMonitor.enabled=true --set monitoring.podMonitor.enabled=true
  # The mounter's pod binds the same host ports as the node pod under hostNetwork.
  expect_refusal "node.mounterSupervisor.metricsPort and sidecars.nodeDriverRegistrar.healthPort are both 9812" "${IMAGE[@]}" -f "$HERE/values/object-only.yaml" --set node.mounterSupervisor.metricsPort=9812
  expect_refusal "registration" "${IMAGE[@]}" --set node.registration=sidecar
}
refusals

step "NOTES list the StorageClasses this release creates"
notes() { helm install everest "$CHART" --namespace kube-system --dry-run=client "${IMAGE[@]}" "$@" | sed -n '/^NOTES:/,$p'; }
notes > "$WORK/notes-default.txt"
notes -f "$HERE/values/file-only.yaml" > "$WORK/notes-file-only.txt"
notes -f "$HERE/values/all.yaml" > "$WORK/notes-all.txt"
"${POLICY[@]}" notes "$WORK/notes-default.txt" csi-disk csi-disk-topology
"${POLICY[@]}" notes "$WORK/notes-file-only.txt" csi-nas csi-sfs-turbo
"${POLICY[@]}" notes "$WORK/notes-all.txt" csi-disk csi-disk-topology csi-nas csi-obs
# The default classes name evs-default: with that backend disabled, NOTES offer none.
notes --set-json 'backends=[{"name":"evs-default","kind":"evs","enabled":false}]' > "$WORK/notes-no-backend.txt"
"${POLICY[@]}" notes "$WORK/notes-no-backend.txt"

step "dashboard and alerts are scoped per release"
helm template other "$CHART" --namespace storage "${IMAGE[@]}" -f "$HERE/values/monitoring.yaml" > "$WORK/other-release.yaml"
"${POLICY[@]}" uids "$WORK/monitoring/rendered.yaml" "$WORK/other-release.yaml"

step "daemon flags, sockets and registration paths"
for d in everest-controller everest-node everest-mounter; do
  if [[ ! -x "$BIN_DIR/$d" ]]; then
    echo "FAIL: $BIN_DIR/$d missing: cargo build -p everest-controller -p everest-node -p everest-obs" >&2
    exit 1
  fi
  "$BIN_DIR/$d" --help > "$WORK/$d.help"
done
for name in default all snapshots object-only native-registration; do
  "${CHECK[@]}" wiring "$WORK/$name/rendered.yaml" "$WORK/everest-controller.help" "$WORK/everest-node.help" "$WORK/everest-mounter.help"
done

step "the rendered daemon config passes --check-config"
printf '{"access_key":"AK","secret_key":"SK"}' > "$WORK/credentials.json"
chmod 600 "$WORK/credentials.json"
# Every rendering whose backends' settings are complete (all.yaml's are not); block-only last,
# as negative.sh edits it.
for name in block-file file-only object-only block-object native-registration block-only; do
  "${CHECK[@]}" toml "$WORK/$name/rendered.yaml" "$WORK/everest.toml"
  sed -i "s#/etc/everest/credentials/[a-z0-9-]*/credentials.json#$WORK/credentials.json#" "$WORK/everest.toml"
  # The kubelet dir (and the registration paths under it) moved into the scratch dir.
  sed -i "s#\"/var/lib/kubelet#\"$WORK#" "$WORK/everest.toml"
  sed -i "s#^kubelet_root = .*#kubelet_root = \"$WORK\"#" "$WORK/everest.toml"
  sed -i "s#^by_id_dir = .*#by_id_dir = \"$WORK\"#" "$WORK/everest.toml"
  echo "$name:"
  ( cd "$WORK" && env -u EVEREST_NODE__NODE_ID "$BIN_DIR/everest-controller" --check-config --config "$WORK/everest.toml" --endpoint "unix://$WORK/c.sock" )
  ( cd "$WORK" && EVEREST_NODE__NODE_ID=check EVEREST_NODE__ZONE=check "$BIN_DIR/everest-node" --check-config --config "$WORK/everest.toml" --endpoint "unix://$WORK/n.sock" )
done

step "alert rules: promtool check rules / test rules"
"${CHECK[@]}" rules "$WORK/monitoring/rendered.yaml" "$WORK/rendered-rules.yaml"
cp "$HERE/alerts.test.yaml" "$WORK/alerts.test.yaml"
promtool check rules "$WORK/rendered-rules.yaml"
promtool test rules "$WORK/alerts.test.yaml"
"${POLICY[@]}" alerts "$WORK/rendered-rules.yaml" "$HERE/alerts.test.yaml" "$REPO/docs/observability.md"

step "dashboard and alert metrics are exported by the daemons"
"$EVEREST_PYTHON" -c 'import json,sys; json.load(open(sys.argv[1]))' "$CHART/files/everest-dashboard.json"
"${POLICY[@]}" scope "$CHART/files/everest-dashboard.json" "$WORK/rendered-rules.yaml" everest
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

step "Dockerfile"
bash "$HERE/dockerfile-lint.sh" "$REPO/Dockerfile"

step "negative tests: each check above, given a broken chart, must fail"
# shellcheck source=negative.sh
source "$HERE/negative.sh"

printf '\nvalidate.sh: all checks passed\n'
