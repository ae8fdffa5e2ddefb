# shellcheck shell=bash
# Negative tests of validate.sh: every check is run once on a chart, rendering or file broken on
# purpose, and must fail naming the breakage. Sourced by validate.sh (uses its WORK, CHART, HERE,
# IMAGE, CHECK, POLICY, BIN_DIR and functions); a check that passes here could not fail.

NEG="$WORK/negative"
mkdir -p "$NEG"
neg_count=0
# must_fail NAME PATTERN COMMAND...: COMMAND fails and its output contains PATTERN.
must_fail() {
  local name=$1 pattern=$2; shift 2
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  if (( rc == 0 )); then
    echo "FAIL: negative test '$name': the check passed on broken input" >&2; echo "$out" | tail -5 >&2; exit 1
  fi
  if ! grep -qF -- "$pattern" <<<"$out"; then
    echo "FAIL: negative test '$name': the check failed without reporting '$pattern':" >&2; echo "$out" | tail -8 >&2; exit 1
  fi
  neg_count=$((neg_count + 1))
  echo "ok  [$name] fails as it should: $(grep -F -m1 -- "$pattern" <<<"$out" | cut -c1-150)"
}
# A patched copy of the chart: chart_copy NAME → prints its path.
chart_copy() { rm -rf "$NEG/$1"; cp -r "$CHART" "$NEG/$1"; echo "$NEG/$1"; }
render() { helm template everest "$1" --namespace kube-system "${IMAGE[@]}" "${@:2}"; }
R="$WORK/default/rendered.yaml"

# helm lint --strict: a chart without a version.
c=$(chart_copy lint); sed -i '/^version:/d' "$c/Chart.yaml"
must_fail "helm lint" "version" helm lint --strict "$c" "${IMAGE[@]}"

# kubernetes-validate --strict: a misspelt Deployment field.
sed 's/^  replicas: /  replica: /' "$WORK/default/core.yaml" > "$NEG/core.yaml"
must_fail "kubernetes-validate" "replica" kubernetes-validate --strict --quiet -k "${KUBE_VERSIONS[0]}" "$NEG/core.yaml"

# crds: a misspelt ServiceMonitor endpoint field, a misspelt rule field, a bad deletionPolicy,
# a relabeling from a label that does not exist.
sed 's/honorLabels: true/honorLabel: true/' "$WORK/monitoring/crd.yaml" > "$NEG/crd1.yaml"
must_fail "crds: ServiceMonitor field" "unknown field(s) ['honorLabel']" "${POLICY[@]}" crds "$NEG/crd1.yaml"
sed 's/^\( *\)expr: /\1expression: /' "$WORK/monitoring/crd.yaml" > "$NEG/crd2.yaml"
must_fail "crds: PrometheusRule field" "unknown field(s) ['expression']" "${POLICY[@]}" crds "$NEG/crd2.yaml"
sed 's/deletionPolicy: Delete/deletionPolicy: Remove/' "$WORK/snapshots/crd.yaml" > "$NEG/crd3.yaml"
must_fail "crds: VolumeSnapshotClass value" "deletionPolicy must be Delete or Retain" "${POLICY[@]}" crds "$NEG/crd3.yaml"
sed 's/__meta_kubernetes_pod_node_name/__meta_kubernetes_node_nme/' "$WORK/monitoring-pod/crd.yaml" > "$NEG/crd4.yaml"
must_fail "crds: PodMonitor relabeling" "is not a pod meta label" "${POLICY[@]}" crds "$NEG/crd4.yaml"

# yamllint of the rendering: trailing spaces.
sed '0,/^kind:/s/^kind: \(.*\)$/kind: \1   /' "$R" > "$NEG/lint.yaml"
must_fail "yamllint rendered" "trailing-spaces" yamllint -c "$HERE/yamllint-rendered.yaml" "$NEG/lint.yaml"

# expect: each combination's expectations against another combination's rendering.
must_fail "expect: attacher without attach" "csi-attacher present" "${POLICY[@]}" expect file-only "$WORK/block-only/rendered.yaml"
must_fail "expect: snapshots" "csi-snapshotter/VolumeSnapshotClass should be there" "${POLICY[@]}" expect snapshots "$R"
must_fail "expect: StorageClasses" "StorageClasses" "${POLICY[@]}" expect all "$WORK/block-file/rendered.yaml"
must_fail "expect: fsGroupPolicy" "fsGroupPolicy File, expected ReadWriteOnceWithFSType" "${POLICY[@]}" expect block-object "$R"
must_fail "expect: monitors" "PodMonitor should be there" "${POLICY[@]}" expect monitoring-pod "$WORK/monitoring/rendered.yaml"
render "$CHART" --set-json 'sidecars.provisioner.extraArgs=["--default-fstype=ext4"]' > "$NEG/fstype.yaml"
must_fail "expect: --default-fstype" "overrides every backend's default_fs_type" "${POLICY[@]}" expect default "$NEG/fstype.yaml"
# expect: the provisioner without --extra-create-metadata; a config without the cluster ID.
sed '/- --extra-create-metadata/d' "$R" > "$NEG/no-metadata.yaml"
must_fail "expect: --extra-create-metadata" "lacks --extra-create-metadata" "${POLICY[@]}" expect default "$NEG/no-metadata.yaml"
sed '/cluster_id = /d' "$R" > "$NEG/no-cluster.yaml"
must_fail "expect: cluster_id" "sets no [controller] cluster_id" "${POLICY[@]}" expect default "$NEG/no-cluster.yaml"

# secrets: a credential in a backend's settings lands in the ConfigMap.
render "$CHART" --set 'backends[0].name=evs-default' --set 'backends[0].kind=evs' --set 'backends[0].enabled=true' \
  --set 'backends[0].settings.secret_key=SKEXAMPLE' > "$NEG/secret.yaml"
must_fail "secrets" "holds a secret" "${POLICY[@]}" secrets "$NEG/secret.yaml"

# rbac: the resizer's VolumeAttributesClass rule removed; a rule no sidecar needs added.
c=$(chart_copy rbac-missing)
"$EVEREST_PYTHON" - "$c/templates/controller-rbac.yaml" <<'PY'
import sys; p = sys.argv[1]; s = open(p).read()
s = s.replace("    resources: [volumeattributesclasses]\n", "    resources: [storageclasses]\n")
open(p, "w").write(s)
PY
render "$c" > "$NEG/rbac1.yaml"
must_fail "rbac: missing rule" "storage.k8s.io/volumeattributesclasses lacks ['get', 'list', 'watch']" "${POLICY[@]}" rbac "$NEG/rbac1.yaml"
c=$(chart_copy rbac-extra)
sed -i 's/    resources: \[nodes\]/    resources: [nodes, pods]/' "$c/templates/controller-rbac.yaml"
render "$c" > "$NEG/rbac2.yaml"
must_fail "rbac: least privilege" "core/pods grants ['get', 'list', 'watch'] that no running container needs" "${POLICY[@]}" rbac "$NEG/rbac2.yaml"
# rbac: everest-controller's own need (get on claims, for PVC annotations) is counted.
c=$(chart_copy rbac-controller)
sed -i 's/    verbs: \[get, list, watch, update\]/    verbs: [list, watch, update]/' "$c/templates/controller-rbac.yaml"
render "$c" > "$NEG/rbac4.yaml"
must_fail "rbac: the controller's own need" "core/persistentvolumeclaims lacks ['get'] (needed by csi-provisioner, csi-resizer, everest-controller)" "${POLICY[@]}" rbac "$NEG/rbac4.yaml"
render "$CHART" --set sidecars.resizer.image.tag=v3.0.0 > "$NEG/rbac3.yaml"
must_fail "rbac: unknown sidecar version" "no RBAC requirements known" "${POLICY[@]}" rbac "$NEG/rbac3.yaml"

# refusals: the chart changed to accept what it must refuse.
c=$(chart_copy ports); sed -i 's/{{- fail (printf "%s and %s are both/{{- print (printf "%s and %s are both/' "$c/templates/_helpers.tpl"
CHART_SAVED=$CHART; CHART=$c
must_fail "refusal: equal ports" "rendered; expected a refusal" expect_refusal "are both 9810" "${IMAGE[@]}" --set controller.metricsPort=9810
CHART=$CHART_SAVED

# NOTES: the file-only notes checked against the block classes; the old NOTES (every class
# marked enabled, whatever its backend) listed a class this release does not create.
must_fail "notes: classes" "NOTES lists StorageClasses ['csi-nas', 'csi-sfs-turbo'], expected" "${POLICY[@]}" notes "$WORK/notes-file-only.txt" csi-disk csi-disk-topology
c=$(chart_copy notes); sed -i 's/{{ if and .enabled (hasKey $kinds .backend) }}/{{ if .enabled }}/' "$c/templates/NOTES.txt"
helm install everest "$c" --namespace kube-system --dry-run=client "${IMAGE[@]}" --set-json 'backends=[{"name":"evs-default","kind":"evs","enabled":false}]' | sed -n '/^NOTES:/,$p' > "$NEG/notes.txt"
must_fail "notes: disabled backend" "NOTES lists StorageClasses ['csi-disk', 'csi-disk-topology', 'csi-obs'], expected []" "${POLICY[@]}" notes "$NEG/notes.txt"

# wiring: a daemon flag the binary does not know; a privileged controller sidecar.
sed 's/--log-format=json/--log-fromat=json/' "$R" > "$NEG/wiring1.yaml"
must_fail "wiring: daemon flag" "flags ['log-fromat'] not in" "${CHECK[@]}" wiring "$NEG/wiring1.yaml" "$WORK/everest-controller.help" "$WORK/everest-node.help"
render "$CHART" --set-json 'sidecars.attacher.extraArgs=["--leader-election-lease=15s"]' > "$NEG/wiring2.yaml"
must_fail "wiring: sidecar flag" "leader-election-lease" "${CHECK[@]}" wiring "$NEG/wiring2.yaml" "$WORK/everest-controller.help" "$WORK/everest-node.help"
# The mounter supervisor: a flag it does not know; a socket everest-node does not look at.
render "$CHART" -f "$HERE/values/object-only.yaml" --set-json 'node.mounterSupervisor.extraArgs=["--max-restart=3"]' > "$NEG/wiring3.yaml"
must_fail "wiring: mounter flag" "everest-mounter: flags ['max-restart'] not in" "${CHECK[@]}" wiring "$NEG/wiring3.yaml" "$WORK/everest-controller.help" "$WORK/everest-node.help" "$WORK/everest-mounter.help"
sed 's|--socket=/run/everest/mounter/mounter.sock|--socket=/run/everest/other.sock|' "$WORK/object-only/rendered.yaml" > "$NEG/wiring4.yaml"
must_fail "wiring: mounter socket" "everest.toml's supervisor_socket is" "${CHECK[@]}" wiring "$NEG/wiring4.yaml" "$WORK/everest-controller.help" "$WORK/everest-node.help" "$WORK/everest-mounter.help"
# Its state on the pod's own emptyDir (a re-created pod would forget every mount); a metrics
# port it does not serve.
sed 's|--state-dir=/var/lib/everest-mounter|--state-dir=/tmp/state|' "$WORK/object-only/rendered.yaml" > "$NEG/wiring5.yaml"
must_fail "wiring: mounter state" "--state-dir is not on a host dir" "${CHECK[@]}" wiring "$NEG/wiring5.yaml" "$WORK/everest-controller.help" "$WORK/everest-node.help" "$WORK/everest-mounter.help"
render "$CHART" -f "$HERE/values/object-only.yaml" --set-json 'node.mounterSupervisor.extraArgs=["--metrics-address=0.0.0.0:9999"]' > "$NEG/wiring6.yaml"
must_fail "wiring: mounter metrics port" "everest-mounter: port 'metrics' 9813" "${CHECK[@]}" wiring "$NEG/wiring6.yaml" "$WORK/everest-controller.help" "$WORK/everest-node.help" "$WORK/everest-mounter.help"

# wiring, registration: nothing registers (native turned off, no registrar); both register;
# the kubelet told a container path as the endpoint; a registry dir that is not the kubelet's;
# the registry mounted a second time inside the Bidirectional kubelet dir mount.
NR="$WORK/native-registration/rendered.yaml"
sed 's/^    mode = "native"$/    mode = "registrar"/' "$NR" > "$NEG/reg1.yaml"
must_fail "wiring: no registration" "nothing registers the plugin with the kubelet" "${CHECK[@]}" wiring "$NEG/reg1.yaml" "$WORK/everest-controller.help" "$WORK/everest-node.help"
sed 's/^    mode = "registrar"$/    mode = "native"/' "$R" > "$NEG/reg2.yaml"
must_fail "wiring: registered twice" "both node-driver-registrar and everest-node" "${CHECK[@]}" wiring "$NEG/reg2.yaml" "$WORK/everest-controller.help" "$WORK/everest-node.help"
sed 's|^    kubelet_endpoint = .*|    kubelet_endpoint = "/csi/csi.sock"|' "$NR" > "$NEG/reg3.yaml"
must_fail "wiring: registration endpoint" "kubelet_endpoint /csi/csi.sock is not the host path" "${CHECK[@]}" wiring "$NEG/reg3.yaml" "$WORK/everest-controller.help" "$WORK/everest-node.help"
sed 's|^    registry_dir = .*|    registry_dir = "/var/lib/kubelet/plugins/registry"|' "$NR" > "$NEG/reg4.yaml"
must_fail "wiring: registry dir" "not the kubelet's /var/lib/kubelet/plugins_registry" "${CHECK[@]}" wiring "$NEG/reg4.yaml" "$WORK/everest-controller.help" "$WORK/everest-node.help"
render "$CHART" -f "$HERE/values/block-only.yaml" --set node.registration=native \
  --set-json 'node.extraVolumes=[{"name":"reg","hostPath":{"path":"/var/lib/kubelet/plugins_registry"}}]' \
  --set-json 'node.extraVolumeMounts=[{"name":"reg","mountPath":"/var/lib/kubelet/plugins_registry"}]' > "$NEG/reg5.yaml"
must_fail "wiring: nested registry mount" "nested in the Bidirectional kubelet dir mount" "${CHECK[@]}" wiring "$NEG/reg5.yaml" "$WORK/everest-controller.help" "$WORK/everest-node.help"
# refusals: a schema that lets any registration mode through.
c=$(chart_copy registration)
"$EVEREST_PYTHON" - "$c/values.schema.json" <<'PY'
import json, sys; p = sys.argv[1]; s = json.load(open(p))
del s["properties"]["node"]["properties"]["registration"]["enum"]
json.dump(s, open(p, "w"), indent=2)
PY
CHART_SAVED=$CHART; CHART=$c
must_fail "refusal: registration mode" "rendered; expected a refusal" expect_refusal "registration" "${IMAGE[@]}" --set node.registration=sidecar
CHART=$CHART_SAVED

# --check-config: native registration with the registry outside the kubelet root.
sed 's|^mode = "registrar"$|mode = "native"\nregistry_dir = "/var/lib/kubelet/plugins_registry"|' "$WORK/everest.toml" > "$NEG/registration.toml"
must_fail "check-config: registry dir" "is not under the kubelet root" bash -c "cd '$WORK' && EVEREST_NODE__NODE_ID=check EVEREST_NODE__ZONE=check '$BIN_DIR/everest-node' --check-config --config '$NEG/registration.toml' --endpoint 'unix://$WORK/n.sock'"

# --check-config: the rendered config without the EVS project.
sed '/^project_id = /d' "$WORK/everest.toml" > "$NEG/everest.toml"
must_fail "check-config" "project_id" bash -c "cd '$WORK' && env -u EVEREST_NODE__NODE_ID '$BIN_DIR/everest-controller' --check-config --config '$NEG/everest.toml' --endpoint 'unix://$WORK/c.sock'"

# promtool check rules: an expression that does not parse.
sed '0,/absent(up/s//absent((up/' "$WORK/rendered-rules.yaml" > "$NEG/rules-bad.yaml"
must_fail "promtool check rules" "FAILED" promtool check rules "$NEG/rules-bad.yaml"

# promtool test rules: the EverestMountFailures label mismatch put back (aggregating the node
# away): the unit test that enshrined it now catches it.
c=$(chart_copy mountfailures); sed -i 's/sum by (node, backend, method, grpc_code)/sum by (backend, method, grpc_code)/' "$c/templates/prometheusrule.yaml"
render "$c" -f "$HERE/values/monitoring.yaml" > "$NEG/mf.yaml"
mkdir -p "$NEG/mf"; "${CHECK[@]}" rules "$NEG/mf.yaml" "$NEG/mf/rendered-rules.yaml"; cp "$HERE/alerts.test.yaml" "$NEG/mf/"
must_fail "promtool test rules: mount failures lose the node" "EverestMountFailures" bash -c "cd '$NEG/mf' && promtool test rules alerts.test.yaml"
# ... and a driver-down alert that cannot see an absent target.
c=$(chart_copy down); sed -i 's/absent(up{ {{- $sel }},container="everest-controller"} == 1)/up{ {{- $sel }},container="everest-controller"} == 0/' "$c/templates/prometheusrule.yaml"
render "$c" -f "$HERE/values/monitoring.yaml" > "$NEG/down.yaml"
mkdir -p "$NEG/down"; "${CHECK[@]}" rules "$NEG/down.yaml" "$NEG/down/rendered-rules.yaml"; cp "$HERE/alerts.test.yaml" "$NEG/down/"
must_fail "promtool test rules: no target" "no target at all fires the down alerts" bash -c "cd '$NEG/down' && promtool test rules alerts.test.yaml"

# alerts: a runbook section missing from the docs; an alert no test fires.
sed 's/^### EverestNodePluginDown$/### Node plugin down/' "$REPO/docs/observability.md" > "$NEG/observability.md"
must_fail "alerts: runbook" "EverestNodePluginDown: runbook" "${POLICY[@]}" alerts "$WORK/rendered-rules.yaml" "$HERE/alerts.test.yaml" "$NEG/observability.md"
"$EVEREST_PYTHON" - "$HERE/alerts.test.yaml" "$NEG/alerts-notest.yaml" <<'PY'
import sys, yaml
t = yaml.safe_load(open(sys.argv[1]))
for case in t["tests"]:
    case["alert_rule_test"] = [a for a in case["alert_rule_test"] if a["alertname"] != "EverestSlowProvisioning" or not a.get("exp_alerts")]
yaml.safe_dump(t, open(sys.argv[2], "w"))
PY
must_fail "alerts: test" "EverestSlowProvisioning: no promtool test expects it to fire" "${POLICY[@]}" alerts "$WORK/rendered-rules.yaml" "$NEG/alerts-notest.yaml" "$REPO/docs/observability.md"

# metrics: a metric the daemons do not export; a label they do not put on it.
sed 's/everest_csi_operations_total/everest_csi_operation_total/' "$CHART/files/everest-dashboard.json" > "$NEG/dash.json"
must_fail "metrics: name" "everest_csi_operation_total is not exported" "${CHECK[@]}" metrics "$NEG/dash.json" "$WORK/rendered-rules.yaml" --source "$REPO"
printf '# TYPE everest_csi_operations_total counter\neverest_csi_operations_total{service="node",method="Probe",backend="none",grpc_code="OK"} 1\n# TYPE everest_backend_reachable gauge\neverest_backend_reachable{backend="evs-default"} 1\n' > "$NEG/expo.prom"
sed 's/backend=~\\"\$backend\\"/volume=~\\"$backend\\"/' "$CHART/files/everest-dashboard.json" > "$NEG/dash2.json"
must_fail "metrics: label" "has no label volume" "${CHECK[@]}" metrics "$NEG/dash2.json" "$WORK/rendered-rules.yaml" --exposition "$NEG/expo.prom"

# scope: an alert and a panel that select every release.
sed 's/everest_release="everest",//' "$WORK/rendered-rules.yaml" > "$NEG/rules-unscoped.yaml"
must_fail "scope: alerts" "is not scoped to everest_release" "${POLICY[@]}" scope "$CHART/files/everest-dashboard.json" "$NEG/rules-unscoped.yaml" everest
sed '0,/everest_release=\\"\$release\\",/s///' "$CHART/files/everest-dashboard.json" > "$NEG/dash-unscoped.json"
must_fail "scope: dashboard" "is not scoped to everest_release" "${POLICY[@]}" scope "$NEG/dash-unscoped.json" "$WORK/rendered-rules.yaml" everest

# uids: a chart whose dashboard keeps the file's fixed uid.
c=$(chart_copy uid); sed -i 's/set $dash "uid"/set $dash "uid-unused"/' "$c/templates/dashboard-configmap.yaml"
render "$c" -f "$HERE/values/monitoring.yaml" > "$NEG/uid1.yaml"
helm template other "$c" --namespace storage "${IMAGE[@]}" -f "$HERE/values/monitoring.yaml" > "$NEG/uid2.yaml"
must_fail "uids" "render the same dashboard uid" "${POLICY[@]}" uids "$NEG/uid1.yaml" "$NEG/uid2.yaml"

# yamllint of values: trailing spaces in a values file.
sed '1s/$/   /' "$CHART/values.yaml" > "$NEG/values.yaml"
must_fail "yamllint values" "trailing-spaces" yamllint -c "$HERE/yamllint-values.yaml" "$NEG/values.yaml"

# Dockerfile: a tag without digest; btrfs-progs dropped; root at the end; a hadolint finding.
sed 's/^ARG RUNTIME_IMAGE=.*/ARG RUNTIME_IMAGE=debian:bookworm-slim/' "$REPO/Dockerfile" > "$NEG/Dockerfile.digest"
must_fail "Dockerfile: digest" "is not pinned by digest" bash "$HERE/dockerfile-lint.sh" "$NEG/Dockerfile.digest"
sed 's/ btrfs-progs / /' "$REPO/Dockerfile" > "$NEG/Dockerfile.btrfs"
must_fail "Dockerfile: btrfs-progs" "does not install btrfs-progs" bash "$HERE/dockerfile-lint.sh" "$NEG/Dockerfile.btrfs"
sed 's/^USER 65532:65532/USER root/' "$REPO/Dockerfile" > "$NEG/Dockerfile.root"
must_fail "Dockerfile: non-root" "USER" bash "$HERE/dockerfile-lint.sh" "$NEG/Dockerfile.root"
sed 's/^WORKDIR \/src/RUN cd \/src/' "$REPO/Dockerfile" > "$NEG/Dockerfile.hadolint"
must_fail "Dockerfile: hadolint" "DL3003" bash "$HERE/dockerfile-lint.sh" "$NEG/Dockerfile.hadolint"

echo "ok  $neg_count negative tests: every check fails on broken input"
