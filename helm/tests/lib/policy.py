#!/usr/bin/env python3
"""Checks of the rendered chart beyond schemas (each exits non-zero naming the problem):

  crds FILE                       CRD-based objects (ServiceMonitor, PodMonitor, PrometheusRule,
                                  VolumeSnapshotClass): every field known, required ones present
  rbac RENDERED                   the controller's ClusterRole/Role grant exactly what the
                                  sidecars that run need, for their pinned versions, and
                                  everest-controller's own reads
  expect COMBO RENDERED           the objects and containers a values combination must (not) have
  secrets RENDERED                no ConfigMap holds a credential
  scope DASHBOARD RULES RELEASE   every dashboard and alert selector names the release
  uids RENDERED RENDERED          two releases' dashboards have different uids
  notes NOTES CLASS...            NOTES lists exactly these StorageClasses
  alerts RULES TESTS DOC          every alert has a runbook section in DOC and a promtool test
                                  that fires it and one that keeps it silent
"""

import json
import re
import sys

import yaml


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


# ------------------------------------------------------------------ CRD fields
# Allowed keys per path for the CRD kinds the chart renders (from the prometheus-operator and
# external-snapshotter CRDs; only the fields a chart like ours may set). A misspelt key is
# silently dropped by a lenient API server, so an unknown key fails here. `!` = required.
RELABEL = {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"}
ENDPOINT = {"!port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels",
            "honorTimestamps", "relabelings", "metricRelabelings", "tlsConfig", "params"}
META = {"!name", "namespace", "labels", "annotations"}
CRD_FIELDS = {
    "ServiceMonitor": {
        "": {"!apiVersion", "!kind", "!metadata", "!spec"}, "metadata": META,
        "spec": {"!selector", "namespaceSelector", "!endpoints", "jobLabel", "targetLabels",
                 "podTargetLabels", "sampleLimit"},
        "spec.endpoints[]": ENDPOINT, "spec.endpoints[].relabelings[]": RELABEL,
    },
    "PodMonitor": {
        "": {"!apiVersion", "!kind", "!metadata", "!spec"}, "metadata": META,
        "spec": {"!selector", "namespaceSelector", "!podMetricsEndpoints", "jobLabel",
                 "podTargetLabels", "sampleLimit"},
        "spec.podMetricsEndpoints[]": ENDPOINT, "spec.podMetricsEndpoints[].relabelings[]": RELABEL,
    },
    "PrometheusRule": {
        "": {"!apiVersion", "!kind", "!metadata", "!spec"}, "metadata": META,
        "spec": {"!groups"}, "spec.groups[]": {"!name", "interval", "!rules", "limit"},
        "spec.groups[].rules[]": {"alert", "record", "!expr", "for", "keep_firing_for",
                                  "labels", "annotations"},
    },
    "VolumeSnapshotClass": {
        "": {"!apiVersion", "!kind", "!metadata", "!driver", "!deletionPolicy", "parameters"},
        "metadata": META,
    },
}
CRD_API = {"ServiceMonitor": "monitoring.coreos.com/v1", "PodMonitor": "monitoring.coreos.com/v1",
           "PrometheusRule": "monitoring.coreos.com/v1",
           "VolumeSnapshotClass": "snapshot.storage.k8s.io/v1"}
DURATION = re.compile(r"^(0|([0-9]+(ms|s|m|h|d|w|y))+)$")
META_LABEL = re.compile(r"^__meta_kubernetes_pod_(label_[a-z0-9_]+|container_name|node_name|name)$")


def nodes_at(obj, path):
    cur = [obj]
    for part in [p for p in path.split(".") if p]:
        many = part.endswith("[]")
        key = part[:-2] if many else part
        nxt = []
        for c in cur:
            v = c.get(key) if isinstance(c, dict) else None
            if v is None:
                continue
            nxt.extend(v if many and isinstance(v, list) else [v])
        cur = nxt
    return cur


def cmd_crds(path):
    for d in load(path):
        kind = d.get("kind")
        name = f"{kind}/{d.get('metadata', {}).get('name')}"
        if kind not in CRD_FIELDS:
            fail(f"{name}: unexpected CRD-based object")
        if d.get("apiVersion") != CRD_API[kind]:
            fail(f"{name}: apiVersion {d.get('apiVersion')} is not {CRD_API[kind]}")
        for where, allowed in CRD_FIELDS[kind].items():
            names = {a.lstrip("!") for a in allowed}
            required = {a[1:] for a in allowed if a.startswith("!")}
            for node in nodes_at(d, where):
                if not isinstance(node, dict):
                    fail(f"{name}: {where or 'top level'} is not a mapping")
                unknown = set(node) - names
                if unknown:
                    fail(f"{name}: unknown field(s) {sorted(unknown)} in {where or 'top level'} (known: {sorted(names)})")
                missing = {r for r in required if node.get(r) in (None, "", [], {})}
                if missing:
                    fail(f"{name}: {where or 'top level'} lacks {sorted(missing)}")
        if kind == "VolumeSnapshotClass" and d["deletionPolicy"] not in ("Delete", "Retain"):
            fail(f"{name}: deletionPolicy must be Delete or Retain, not {d['deletionPolicy']!r}")
        for ep in nodes_at(d, "spec.endpoints[]") + nodes_at(d, "spec.podMetricsEndpoints[]"):
            for k in ("interval", "scrapeTimeout"):
                if k in ep and not DURATION.match(str(ep[k])):
                    fail(f"{name}: {k} {ep[k]!r} is not a Prometheus duration")
            for r in ep.get("relabelings", []):
                for s in r.get("sourceLabels", []):
                    if not META_LABEL.match(s):
                        fail(f"{name}: relabeling source {s!r} is not a pod meta label")
                if "sourceLabels" not in r and "replacement" not in r:
                    fail(f"{name}: relabeling to {r.get('targetLabel')} has no source and no replacement")
        for r in nodes_at(d, "spec.groups[].rules[]"):
            if ("alert" in r) == ("record" in r):
                fail(f"{name}: a rule needs exactly one of alert/record: {r}")
            if "for" in r and not DURATION.match(str(r["for"])):
                fail(f"{name}: for {r['for']!r} is not a duration")
        print(f"ok  {name}: every field known")


# ------------------------------------------------------------------ RBAC
# What each sidecar needs, per pinned major version, from the kubernetes-csi sidecars' own
# deploy/kubernetes RBAC files (optional rules for features we leave off are not granted:
# secrets, pods for --handle-volume-inuse-error, group snapshots).
CORE, STORAGE, SNAP = "", "storage.k8s.io", "snapshot.storage.k8s.io"
EVENTS = {(CORE, "events"): {"list", "watch", "create", "update", "patch"}}
SIDECAR_RBAC = {
    ("csi-provisioner", "5"): {
        (CORE, "persistentvolumes"): {"get", "list", "watch", "create", "patch", "delete"},
        (CORE, "persistentvolumeclaims"): {"get", "list", "watch", "update"},
        (STORAGE, "storageclasses"): {"get", "list", "watch"},
        (SNAP, "volumesnapshots"): {"get", "list"},
        (SNAP, "volumesnapshotcontents"): {"get", "list"},
        (STORAGE, "csinodes"): {"get", "list", "watch"},
        (CORE, "nodes"): {"get", "list", "watch"},
        (STORAGE, "volumeattachments"): {"get", "list", "watch"},
        # A claim naming a VolumeAttributesClass: the provisioner reads it at CreateVolume.
        (STORAGE, "volumeattributesclasses"): {"get"},
        **EVENTS,
    },
    ("csi-attacher", "4"): {
        (CORE, "persistentvolumes"): {"get", "list", "watch", "patch"},
        (CORE, "nodes"): {"get", "list", "watch"},
        (STORAGE, "csinodes"): {"get", "list", "watch"},
        (STORAGE, "volumeattachments"): {"get", "list", "watch", "patch"},
        (STORAGE, "volumeattachments/status"): {"patch"},
    },
    ("csi-resizer", "2"): {
        (CORE, "persistentvolumes"): {"get", "list", "watch", "patch"},
        (CORE, "persistentvolumeclaims"): {"get", "list", "watch"},
        (CORE, "persistentvolumeclaims/status"): {"patch"},
        # v2 watches VolumeAttributesClasses (GA in Kubernetes 1.34).
        (STORAGE, "volumeattributesclasses"): {"get", "list", "watch"},
        **EVENTS,
    },
    ("csi-snapshotter", "8"): {
        (SNAP, "volumesnapshotclasses"): {"get", "list", "watch"},
        (SNAP, "volumesnapshotcontents"): {"get", "list", "watch", "update", "patch"},
        (SNAP, "volumesnapshotcontents/status"): {"update", "patch"},
        **EVENTS,
    },
}
# What the controller pod's own containers need. everest-controller reads the claim of a
# CreateVolume whose StorageClass allows PVC annotations (docs/annotations.md): get only, never
# list or watch. The liveness probe calls no API.
OWN_RBAC = {
    "everest-controller": {(CORE, "persistentvolumeclaims"): {"get"}},
    "liveness-probe": {},
}
LEASES = {("coordination.k8s.io", "leases"): {"get", "watch", "list", "create", "update", "delete"}}


def grants(role):
    out = {}
    for r in role.get("rules", []):
        for g in r.get("apiGroups", []):
            for res in r.get("resources", []):
                if "*" in (g, res) or "*" in r.get("verbs", []):
                    fail(f"{role['kind']}/{role['metadata']['name']}: wildcard rule {r}")
                out.setdefault((g, res), set()).update(r["verbs"])
    return out


def compare(what, have, need, who=None):
    """`who` maps (group, resource, verb) to the containers that need it, for the messages."""
    problems = []
    for key in sorted(set(have) | set(need)):
        h, n = have.get(key, set()), need.get(key, set())
        res = f"{key[0] or 'core'}/{key[1]}"
        if n - h:
            by = sorted({c for v in n - h for c in (who or {}).get((*key, v), ())})
            suffix = f" (needed by {', '.join(by)})" if by else ""
            problems.append(f"{what}: {res} lacks {sorted(n - h)}{suffix}")
        if h - n:
            problems.append(f"{what}: {res} grants {sorted(h - n)} that no running container needs")
    return problems


def cmd_rbac(rendered):
    docs = load(rendered)
    dep = next(d for d in docs if d["kind"] == "Deployment")
    need, who, running = {}, {}, []
    for c in dep["spec"]["template"]["spec"]["containers"]:
        name = c["name"]
        tag = c["image"].rsplit(":", 1)[-1]
        if name in OWN_RBAC:
            rules = OWN_RBAC[name]
        else:
            major = tag.lstrip("v").split(".")[0]
            rules = SIDECAR_RBAC.get((name, major))
            if rules is None:
                fail(f"{name} {tag}: no RBAC requirements known for this major version; read its deploy/kubernetes/rbac.yaml and add them to SIDECAR_RBAC")
        if rules:
            running.append(f"{name} {tag}")
        for k, v in rules.items():
            need.setdefault(k, set()).update(v)
            for verb in v:
                who.setdefault((*k, verb), set()).add(name)
    croles = [d for d in docs if d["kind"] == "ClusterRole"]
    roles = [d for d in docs if d["kind"] == "Role"]
    if len(croles) != 1 or len(roles) != 1:
        fail(f"expected one ClusterRole and one Role, found {len(croles)} and {len(roles)}")
    problems = compare("ClusterRole", grants(croles[0]), need, who)
    problems += compare("Role (leader election)", grants(roles[0]), LEASES)
    if problems:
        fail("\n  ".join(["RBAC does not match the containers' needs:"] + problems))
    print(f"ok  RBAC grants exactly what {', '.join(running)} need")


# ------------------------------------------------------------------ expectations
def containers(docs):
    out = set()
    for d in docs:
        if d["kind"] in ("Deployment", "DaemonSet"):
            out.update(c["name"] for c in d["spec"]["template"]["spec"]["containers"])
    return out


def objects(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def flags(docs, container):
    for d in docs:
        if d["kind"] in ("Deployment", "DaemonSet"):
            for c in d["spec"]["template"]["spec"]["containers"]:
                if c["name"] == container:
                    return [a.split("=", 1)[0] for a in c.get("args", [])]
    return []


BLOCK = {"csi-disk", "csi-disk-topology"}
# combination -> (StorageClasses, attachRequired, fsGroupPolicy, snapshots, monitors)
COMBOS = {
    "default": (BLOCK, True, "File", False, set()),
    "block-only": (BLOCK, True, "File", False, set()),
    "file-only": ({"csi-nas", "csi-sfs-turbo"}, False, "None", False, set()),
    "object-only": ({"csi-obs"}, False, "None", False, set()),
    "block-file": (BLOCK | {"csi-nas"}, True, "ReadWriteOnceWithFSType", False, set()),
    "block-object": (BLOCK | {"csi-obs"}, True, "ReadWriteOnceWithFSType", False, set()),
    "file-object": ({"csi-nas", "csi-obs"}, False, "None", False, set()),
    "all": (BLOCK | {"csi-nas", "csi-obs"}, True, "ReadWriteOnceWithFSType", True,
            {"ServiceMonitor", "PrometheusRule"}),
    "snapshots": (BLOCK, True, "File", True, set()),
    "monitoring": (BLOCK, True, "File", False, {"ServiceMonitor", "PrometheusRule"}),
    "monitoring-pod": (BLOCK, True, "File", False, {"PodMonitor", "PrometheusRule"}),
    "single-replica": (BLOCK, True, "File", False, set()),
    "native-registration": (BLOCK, True, "File", False, set()),
}


def cmd_expect(combo, rendered):
    docs = load(rendered)
    if combo not in COMBOS:
        fail(f"no expectations for combination {combo!r}")
    classes, attach, fsgroup, snaps, monitors = COMBOS[combo]
    problems = []
    got = set(objects(docs, "StorageClass"))
    if got != classes:
        problems.append(f"StorageClasses {sorted(got)}, expected {sorted(classes)}")
    drv = list(objects(docs, "CSIDriver").values())
    if len(drv) != 1:
        problems.append(f"{len(drv)} CSIDriver objects")
    else:
        if drv[0]["spec"]["attachRequired"] is not attach:
            problems.append(f"attachRequired {drv[0]['spec']['attachRequired']}, expected {attach}")
        if drv[0]["spec"]["fsGroupPolicy"] != fsgroup:
            problems.append(f"fsGroupPolicy {drv[0]['spec']['fsGroupPolicy']}, expected {fsgroup}")
    have = containers(docs)
    if ("csi-attacher" in have) != attach:
        problems.append(f"csi-attacher {'present' if 'csi-attacher' in have else 'missing'} with attachRequired={attach}")
    if ("csi-snapshotter" in have) != snaps or bool(objects(docs, "VolumeSnapshotClass")) != snaps:
        problems.append(f"csi-snapshotter/VolumeSnapshotClass should {'' if snaps else 'not '}be there")
    for k in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        if bool(objects(docs, k)) != (k in monitors):
            problems.append(f"{k} should {'' if k in monitors else 'not '}be there")
    provisioner = {f.lstrip("-") for f in flags(docs, "csi-provisioner")}
    if "default-fstype" in provisioner:
        problems.append("csi-provisioner has --default-fstype, which overrides every backend's default_fs_type")
    # Without it the provisioner sends no PV/PVC names, and no volume's marker says whose it is.
    if "extra-create-metadata" not in provisioner:
        problems.append("csi-provisioner lacks --extra-create-metadata, so volumes are not tagged with their PV and PVC")
    toml = "".join(d.get("data", {}).get("everest.toml", "") for d in objects(docs, "ConfigMap").values())
    if "[controller]" not in toml or "cluster_id = " not in toml:
        problems.append("the daemon configuration sets no [controller] cluster_id, so markers name the cluster 'default'")
    if problems:
        fail("\n  ".join([f"{combo}: the rendering is not what these values ask for:"] + problems))
    print(f"ok  {combo}: classes {sorted(classes)}, attach={attach}, fsGroupPolicy={fsgroup}, snapshots={snaps}, monitors {sorted(monitors)}")


def cmd_secrets(rendered):
    for d in load(rendered):
        if d["kind"] == "ConfigMap":
            text = str(d.get("data", {}))
            for word in ("SKEXAMPLE", "example-password", "secret_key", "password =", "access_key"):
                if word in text:
                    fail(f"ConfigMap {d['metadata']['name']} holds a secret ({word}) in {rendered}")
    print("ok  no ConfigMap holds a credential")


# ------------------------------------------------------------------ release scoping
SEL = re.compile(r"\b((?:everest_[a-z0-9_]+)|up)\s*(\{[^}]*\})?")


def cmd_scope(dashboard, rules, release):
    problems, exprs = [], []
    dash = json.load(open(dashboard))

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                exprs.append((f"panel {p['title']!r}", t["expr"], '"$release"'))
            walk(p.get("panels", []))

    walk(dash["panels"])
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if isinstance(q, str) and "everest_" in q:
            exprs.append((f"variable {v['name']}", q, '"$release"'))
    if not any(v.get("name") == "release" for v in dash.get("templating", {}).get("list", [])):
        problems.append("the dashboard has no `release` variable")
    for g in yaml.safe_load(open(rules))["groups"]:
        for r in g["rules"]:
            exprs.append((f"alert {r.get('alert')}", r["expr"], f'"{release}"'))
    for origin, expr, value in exprs:
        for name, body in SEL.findall(expr):
            if f"everest_release={value}" not in (body or "").replace(" ", ""):
                problems.append(f"{origin}: {name} is not scoped to everest_release={value}: {expr.strip()}")
    if problems:
        fail("\n  ".join(["selectors not scoped to the release:"] + problems))
    print(f"ok  {len(exprs)} dashboard and alert expressions select on the release")


def cmd_uids(a, b):
    def uid(path):
        for d in load(path):
            if d["kind"] == "ConfigMap" and "dashboard" in d["metadata"]["name"]:
                (text,) = d["data"].values()
                return json.loads(text)["uid"]
        fail(f"no dashboard ConfigMap in {path}")
    ua, ub = uid(a), uid(b)
    if ua == ub:
        fail(f"two releases render the same dashboard uid {ua!r}: Grafana would keep only one")
    if len(ua) > 40:
        fail(f"dashboard uid {ua!r} is longer than Grafana's 40 characters")
    print(f"ok  dashboard uids differ per release ({ua}, {ub})")


def cmd_notes(notes, *classes):
    text = open(notes).read()
    listed = set(re.findall(r"^\s+([a-z0-9.-]+) \((?:Immediate|WaitForFirstConsumer), backend ", text, re.M))
    named = set(re.findall(r"storageClassName: (\S+)", text))
    if listed != set(classes):
        fail(f"NOTES lists StorageClasses {sorted(listed)}, expected {sorted(classes)}")
    if not named <= set(classes):
        fail(f"NOTES' example claim uses {sorted(named)}, which this release does not create")
    print(f"ok  NOTES lists {sorted(listed)}")


def cmd_alerts(rules, tests, doc):
    alerts = [r for g in yaml.safe_load(open(rules))["groups"] for r in g["rules"] if "alert" in r]
    anchors = {re.sub(r"[^a-z0-9-]", "", h.strip().lower().replace(" ", "-"))
               for h in re.findall(r"^#{2,4} (.+)$", open(doc).read(), re.M)}
    fires, silent = set(), set()
    for t in yaml.safe_load(open(tests))["tests"]:
        for a in t.get("alert_rule_test", []):
            (fires if a.get("exp_alerts") else silent).add(a["alertname"])
    problems = []
    for r in alerts:
        name = r["alert"]
        runbook = r.get("annotations", {}).get("runbook", "")
        page, _, anchor = runbook.partition("#")
        if not page.endswith("observability.md") or anchor not in anchors:
            problems.append(f"{name}: runbook {runbook!r} names no section of {doc}")
        if name not in fires:
            problems.append(f"{name}: no promtool test expects it to fire")
        if name not in silent:
            problems.append(f"{name}: no promtool test expects it to stay silent")
    if problems:
        fail("\n  ".join(["alerts without runbook or tests:"] + problems))
    print(f"ok  {len(alerts)} alerts: each has a runbook section and tests that fire it and keep it silent")


def main():
    if len(sys.argv) < 2:
        fail(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    cmds = {"crds": cmd_crds, "rbac": cmd_rbac, "expect": cmd_expect, "secrets": cmd_secrets,
            "scope": cmd_scope, "uids": cmd_uids, "notes": cmd_notes, "alerts": cmd_alerts}
    if cmd not in cmds:
        fail(f"unknown subcommand {cmd}\n{__doc__}")
    cmds[cmd](*args)


if __name__ == "__main__":
    main()
