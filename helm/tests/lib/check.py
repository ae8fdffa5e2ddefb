#!/usr/bin/env python3
"""Checks of the rendered chart that no schema validator does.

Subcommands (each exits non-zero with a message naming the problem):
  split RENDERED CORE_OUT CRD_OUT      split rendered YAML into built-in kinds and CRD-based kinds
  wiring RENDERED CTRL_HELP NODE_HELP  daemon flags vs `--help`, sockets, registration paths
                                       (node-driver-registrar or native registration),
                                       sidecar flags vs the flags each pinned sidecar accepts
  rules RENDERED OUT                   the PrometheusRule's spec as a plain Prometheus rules file
  toml RENDERED OUT                    the daemon config (everest.toml) from the ConfigMap
  metrics DASHBOARD RULES (--exposition FILE... | --source DIR)
                                       every metric (and label) the dashboard and alerts use is
                                       one the daemons export
"""

import json
import re
import sys
import tomllib

import yaml

CRD_GROUPS = ("monitoring.coreos.com/", "snapshot.storage.k8s.io/")


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def cmd_split(rendered, core_out, crd_out):
    docs = load_docs(rendered)
    core = [d for d in docs if not d["apiVersion"].startswith(CRD_GROUPS)]
    crd = [d for d in docs if d["apiVersion"].startswith(CRD_GROUPS)]
    for out, items in ((core_out, core), (crd_out, crd)):
        with open(out, "w") as f:
            yaml.safe_dump_all(items, f, sort_keys=False)
    print(f"{len(core)} built-in objects, {len(crd)} CRD-based objects")


# Flags each pinned sidecar accepts (from the kubernetes-csi sidecars' documentation); a
# misspelt flag makes the sidecar exit at start, which no schema check sees.
LEADER = {"leader-election", "leader-election-namespace", "leader-election-lease-duration",
          "leader-election-renew-deadline", "leader-election-retry-period"}
COMMON = {"csi-address", "v", "timeout", "http-endpoint", "metrics-address", "kube-api-qps",
          "kube-api-burst"} | LEADER
SIDECAR_FLAGS = {
    "csi-provisioner": COMMON | {"worker-threads", "feature-gates", "extra-create-metadata",
                                "default-fstype", "strict-topology", "immediate-topology",
                                "retry-interval-start", "retry-interval-max"},
    "csi-attacher": COMMON | {"worker-threads", "retry-interval-start", "retry-interval-max"},
    "csi-resizer": COMMON | {"workers", "handle-volume-inuse-error", "retry-interval-start",
                            "retry-interval-max"},
    "csi-snapshotter": COMMON | {"extra-create-metadata", "worker-threads"},
    "liveness-probe": {"csi-address", "health-port", "probe-timeout", "v", "http-endpoint"},
    "node-driver-registrar": {"csi-address", "kubelet-registration-path", "v",
                              "http-endpoint", "plugin-registration-path"},
}


def help_flags(path):
    text = open(path).read()
    flags = set(re.findall(r"^\s+(?:-\w, )?--([a-z][a-z0-9-]*)", text, re.M))
    if "endpoint" not in flags:
        fail(f"{path}: no --endpoint in the daemon's --help output:\n{text[:400]}")
    return flags


def parse_args(args):
    out = {}
    for a in args:
        if not a.startswith("--"):
            fail(f"argument {a!r} is not a --flag")
        name, _, value = a[2:].partition("=")
        out[name] = value
    return out


MOUNTER = "everest-mounter"


def mount_under(container, path):
    """The volume mount holding `path` in `container` (the longest mountPath above it)."""
    best = None
    for m in container.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if (path == mp or path.startswith(mp + "/")) and (best is None or len(mp) > len(best["mountPath"].rstrip("/"))):
            best = m
    return best


def host_dir(container, volumes, path):
    """(mountPath, host path) of the hostPath volume holding `path` in `container`, or None."""
    m = mount_under(container, path)
    if not m:
        return None
    hp = volumes.get(m["name"], {}).get("hostPath", {}).get("path")
    return (m["mountPath"], hp) if hp else None


def check_mounter(pod, node, node_volumes, config, help_path, kubelet_host):
    """The FUSE mounter supervisor, a DaemonSet of its own: its flags exist, its socket is
    where everest-node looks (everest.toml's supervisor_socket) in a host dir both pods mount
    at the same path (as are the credential files of object volumes), its state is on a host
    dir (a re-created pod finds it), its metrics port is declared, and it mounts the kubelet
    dir like everest-node."""
    spec = pod["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in spec["containers"]}
    if set(containers) != {MOUNTER}:
        fail(f"{MOUNTER} DaemonSet: containers {sorted(containers)}, expected only {MOUNTER}")
    c = containers[MOUNTER]
    volumes = {v["name"]: v for v in spec["volumes"]}
    if not c.get("securityContext", {}).get("privileged"):
        fail(f"{MOUNTER}: not privileged (FUSE mounts need it)")
    if pod["spec"].get("updateStrategy", {}).get("type") is None:
        fail(f"{MOUNTER} DaemonSet: no updateStrategy")
    if help_path is None:
        fail(f"{MOUNTER} is rendered but no `{MOUNTER} --help` output was given")
    known = set(re.findall(r"^\s+(?:-\w, )?--([a-z][a-z0-9-]*)", open(help_path).read(), re.M))
    if "socket" not in known:
        fail(f"{help_path}: no --socket in {MOUNTER} --help")
    if c["command"] != [f"/usr/local/bin/{MOUNTER}"]:
        fail(f"{MOUNTER}: command {c['command']} is not the image's binary path")
    margs = parse_args(c.get("args", []))
    unknown = set(margs) - known
    if unknown:
        fail(f"{MOUNTER}: flags {sorted(unknown)} not in `{MOUNTER} --help`")
    sock = margs.get("socket", "")
    wanted = re.findall(r'^supervisor_socket = "([^"]*)"', config["data"]["everest.toml"], re.M)
    if not wanted or set(wanted) != {sock}:
        fail(f"{MOUNTER}: --socket {sock!r}, but everest.toml's supervisor_socket is {wanted}")
    mine, theirs = host_dir(c, volumes, sock), host_dir(node, node_volumes, sock)
    if not mine or mine != theirs:
        fail(f"{MOUNTER}: socket {sock} is not in a host dir everest-node mounts at the same path ({mine} vs {theirs})")
    creds = re.findall(r'^runtime_dir = "([^"]*)"', config["data"]["everest.toml"], re.M) or ["/run/everest/obs"]
    for d in creds:
        if host_dir(c, volumes, d) != host_dir(node, node_volumes, d) or not host_dir(c, volumes, d):
            fail(f"{MOUNTER}: credential dir {d} is not in a host dir shared with everest-node")
    state = margs.get("state-dir", "/")
    if state == "/" or not host_dir(c, volumes, state):
        fail(f"{MOUNTER}: --state-dir is not on a host dir (a re-created pod would lose its mounts)")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    addr = margs.get("metrics-address", "")
    if not addr or ports.get("metrics") != int(addr.rsplit(":", 1)[1]):
        fail(f"{MOUNTER}: port 'metrics' {ports.get('metrics')} != --metrics-address {addr!r}")
    bidi = [m for m in c.get("volumeMounts", []) if m.get("mountPropagation") == "Bidirectional"]
    if [m["mountPath"] for m in bidi] != [kubelet_host]:
        fail(f"{MOUNTER}: exactly one Bidirectional mount, the kubelet dir at {kubelet_host}, expected")
    if not mount_under(c, "/dev/fuse"):
        fail(f"{MOUNTER}: /dev is not mounted (FUSE needs /dev/fuse)")


REGISTRAR = "node-driver-registrar"


def check_registration(containers, daemon, volumes, config, sock, driver, kubelet_host):
    """Exactly one of node-driver-registrar and everest-node's native registration registers
    the plugin. Native: the registry dir is the host's <kubelet>/plugins_registry through
    everest-node's mounts, the endpoint it reports is the host path of its CSI socket, and no
    mount is nested in the Bidirectional kubelet dir mount (it would propagate to the host)."""
    reg = tomllib.loads(config["data"]["everest.toml"]).get("node", {}).get("registration", {})
    mode = reg.get("mode", "registrar")
    if mode == "native" and REGISTRAR in containers:
        fail(f"both {REGISTRAR} and everest-node (node.registration.mode = native) register the plugin")
    if mode != "native":
        if REGISTRAR not in containers:
            fail(f"nothing registers the plugin with the kubelet: no {REGISTRAR}, and everest.toml node.registration.mode = {mode!r}")
        return
    registry = reg.get("registry_dir", f"{kubelet_host}/plugins_registry")
    where = host_dir(daemon, volumes, registry)
    host_registry = where and where[1].rstrip("/") + registry[len(where[0].rstrip("/")):]
    if host_registry != f"{kubelet_host}/plugins_registry":
        fail(f"everest-node: registry_dir {registry} is {host_registry} on the host, not the kubelet's {kubelet_host}/plugins_registry")
    endpoint = reg.get("kubelet_endpoint", sock)
    sock_host = host_dir(daemon, volumes, sock)
    want = sock_host and sock_host[1].rstrip("/") + sock[len(sock_host[0].rstrip("/")):]
    if endpoint != want or not want.endswith(f"/plugins/{driver}/{sock.rsplit('/', 1)[1]}"):
        fail(f"everest-node: kubelet_endpoint {endpoint} is not the host path of its socket {sock} ({want}) under <kubelet>/plugins/{driver}")
    nested = [m["mountPath"] for m in daemon.get("volumeMounts", [])
              if m["mountPath"].startswith(kubelet_host.rstrip("/") + "/")]
    if nested:
        fail(f"everest-node: {nested} nested in the Bidirectional kubelet dir mount would propagate to the host")
    print(f"ok  native registration: {registry} (host {host_registry}), endpoint {endpoint}")


def cmd_wiring(rendered, ctrl_help, node_help, mounter_help=None):
    docs = load_docs(rendered)
    daemons = {"everest-controller": help_flags(ctrl_help), "everest-node": help_flags(node_help)}
    def runs(d, container):
        return any(c["name"] == container for c in d["spec"]["template"]["spec"]["containers"])

    workloads = [d for d in docs if d["kind"] in ("Deployment", "DaemonSet")]
    mounters = [d for d in workloads if runs(d, MOUNTER)]
    pods = {d["kind"]: d for d in workloads if d not in mounters}
    driver = next(d for d in docs if d["kind"] == "CSIDriver")["metadata"]["name"]
    if len(workloads) - len(mounters) != 2 or set(pods) != {"Deployment", "DaemonSet"} or len(mounters) > 1:
        fail(f"expected one Deployment, one node DaemonSet and at most one {MOUNTER} DaemonSet")
    config = next(d for d in docs if d["kind"] == "ConfigMap" and "everest.toml" in d.get("data", {}))
    if f'driver_name = "{driver}"' not in config["data"]["everest.toml"]:
        fail("everest.toml driver_name differs from the CSIDriver name")
    for kind, pod in pods.items():
        spec = pod["spec"]["template"]["spec"]
        mounts_by_volume = {v["name"]: v for v in spec["volumes"]}
        main = "everest-controller" if kind == "Deployment" else "everest-node"
        containers = {c["name"]: c for c in spec["containers"]}
        daemon = containers[main]
        if daemon["command"] != [f"/usr/local/bin/{main}"]:
            fail(f"{main}: command {daemon['command']} is not the image's binary path")
        dargs = parse_args(daemon["args"])
        unknown = set(dargs) - daemons[main]
        if unknown:
            fail(f"{main}: flags {sorted(unknown)} not in `{main} --help`")
        endpoint = dargs.get("endpoint", "")
        if not endpoint.startswith("unix:///"):
            fail(f"{main}: --endpoint {endpoint!r} is not unix:///abs/path")
        sock = endpoint[len("unix://"):]
        sock_dir = sock.rsplit("/", 1)[0]

        def mount_of(container, path_dir):
            for m in container.get("volumeMounts", []):
                if m["mountPath"].rstrip("/") == path_dir:
                    return m["name"]
            return None

        sock_vol = mount_of(daemon, sock_dir)
        if not sock_vol:
            fail(f"{main}: the socket dir {sock_dir} is not a volume")
        metrics_port = int(dargs["metrics-address"].rsplit(":", 1)[1])
        ports = {p["name"]: p["containerPort"] for p in daemon.get("ports", [])}
        if ports.get("metrics") != metrics_port:
            fail(f"{main}: port 'metrics' {ports.get('metrics')} != --metrics-address {metrics_port}")
        for name, c in containers.items():
            if name in (main, MOUNTER):
                continue
            cargs = parse_args(c.get("args", []))
            allowed = SIDECAR_FLAGS.get(name)
            if allowed is None:
                fail(f"{kind}: unknown sidecar container {name}")
            bad = set(cargs) - allowed
            if bad:
                fail(f"{name}: flags {sorted(bad)} are not flags of this sidecar")
            addr = cargs.get("csi-address")
            if not addr:
                fail(f"{name}: no --csi-address")
            addr_dir = addr.rsplit("/", 1)[0]
            if mount_of(c, addr_dir) != sock_vol or addr != sock:
                fail(f"{name}: --csi-address {addr} is not {main}'s socket {sock} on the same volume")
            if name == "liveness-probe":
                if int(cargs["health-port"]) != ports.get("healthz"):
                    fail(f"liveness-probe --health-port {cargs['health-port']} != {main} healthz port")
            if name == "node-driver-registrar":
                reg = cargs["kubelet-registration-path"]
                host_dir = mounts_by_volume[sock_vol].get("hostPath", {}).get("path")
                if reg != f"{host_dir}/{sock.rsplit('/', 1)[1]}":
                    fail(f"registrar: --kubelet-registration-path {reg} is not the host path of {sock} ({host_dir})")
                if not host_dir.endswith(f"/plugins/{driver}"):
                    fail(f"registrar: plugin dir {host_dir} is not <kubelet>/plugins/{driver}")
                reg_vol = mount_of(c, "/registration")
                reg_host = mounts_by_volume.get(reg_vol, {}).get("hostPath", {}).get("path", "")
                if not reg_host.endswith("/plugins_registry"):
                    fail(f"registrar: /registration is not the kubelet's plugins_registry ({reg_host})")
        if kind == "DaemonSet":
            kubelet_mounts = [m for m in daemon["volumeMounts"] if m.get("mountPropagation") == "Bidirectional"]
            if len(kubelet_mounts) != 1:
                fail("everest-node: exactly one Bidirectional mount (the kubelet dir) expected")
            host = mounts_by_volume[kubelet_mounts[0]["name"]]["hostPath"]["path"]
            if kubelet_mounts[0]["mountPath"] != host:
                fail("everest-node: the kubelet dir must be mounted at its host path")
            if f'kubelet_root = "{host}"' not in config["data"]["everest.toml"]:
                fail("everest.toml kubelet_root differs from the mounted kubelet dir")
            check_registration(containers, daemon, mounts_by_volume, config, sock, driver, host)
            if not mount_of(daemon, "/dev"):
                fail("everest-node: /dev is not mounted")
            for name, c in containers.items():
                priv = c.get("securityContext", {}).get("privileged", False)
                if priv != (name in (main, MOUNTER)):
                    fail(f"{name}: privileged={priv}; only everest-node and {MOUNTER} may be privileged")
            if MOUNTER in containers:
                fail(f"{MOUNTER} runs in the node pod: re-creating that pod (an upgrade) would end every FUSE mount")
            supervised = re.search(r'^supervisor_socket = ', config["data"]["everest.toml"], re.M)
            if bool(mounters) != bool(supervised):
                fail(f"everest.toml {'names' if supervised else 'names no'} supervisor_socket, but {len(mounters)} {MOUNTER} DaemonSet(s) render")
            if mounters:
                check_mounter(mounters[0], daemon, mounts_by_volume, config, mounter_help, host)
        else:
            for name, c in containers.items():
                sc = c.get("securityContext", {})
                if sc.get("privileged") or sc.get("allowPrivilegeEscalation", True) or not sc.get("readOnlyRootFilesystem"):
                    fail(f"controller container {name} is not restricted: {sc}")
            if not spec["securityContext"].get("runAsNonRoot"):
                fail("controller pod does not run as non-root")
        print(f"ok  {kind}: {main} flags {sorted(dargs)} accepted; socket {sock} shared with {sorted(set(containers) - {main})}")


def cmd_rules(rendered, out):
    rules = [d for d in load_docs(rendered) if d["kind"] == "PrometheusRule"]
    if len(rules) != 1:
        fail(f"expected one PrometheusRule, found {len(rules)}")
    with open(out, "w") as f:
        yaml.safe_dump({"groups": rules[0]["spec"]["groups"]}, f, sort_keys=False)


def cmd_toml(rendered, out):
    cms = [d for d in load_docs(rendered) if d["kind"] == "ConfigMap" and "everest.toml" in d.get("data", {})]
    if len(cms) != 1:
        fail("expected one ConfigMap with everest.toml")
    with open(out, "w") as f:
        f.write(cms[0]["data"]["everest.toml"])


# ---------------------------------------------------------------- metric names

# An everest_ name not followed by a matcher operator (everest_release="…" is a label).
METRIC = re.compile(r"\b(everest_[a-zA-Z0-9_]+)\b(?!\s*(?:=|!=|!~))")
# Labels Prometheus puts on every series of a target (the monitors' relabelings and its own):
# not in the daemons' exposition, but legitimate in selectors and aggregations.
TARGET_LABELS = {"everest_release", "everest_component", "container", "node", "instance", "job"}
UP = re.compile(r"\bup\s*\{")
SELECTOR = re.compile(r"\b(everest_[a-zA-Z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*\"([^\"]*)\"")
BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
HIST_SUFFIXES = ("_bucket", "_sum", "_count")


def exprs_of(dashboard, rules):
    out = []
    dash = json.load(open(dashboard))

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((f"dashboard panel {p['title']!r}", t["expr"]))
            walk(p.get("panels", []))

    walk(dash["panels"])
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if isinstance(q, str) and "everest_" in q:
            out.append((f"dashboard variable {v['name']}", q))
    for g in yaml.safe_load(open(rules))["groups"]:
        for r in g["rules"]:
            out.append((f"alert {r.get('alert') or r.get('record')}", r["expr"]))
    return out


def parse_exposition(paths):
    """name -> {label: set(values)}, and the TYPE of each family."""
    series, types = {}, {}
    line_re = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s")
    for path in paths:
        for line in open(path):
            if line.startswith("# TYPE "):
                _, _, name, typ = line.split()[:4]
                types[name] = typ
                continue
            if line.startswith("#") or not line.strip():
                continue
            m = line_re.match(line)
            if not m:
                continue
            labels = series.setdefault(m.group(1), {})
            for k, _, v in MATCHER.findall(m.group(3) or ""):
                labels.setdefault(k, set()).add(v)
    return series, types


def source_names(root):
    """Metric names the Rust sources record; histograms (`histogram!`) also get their suffixes."""
    import pathlib

    names = {}
    consts = {}
    for p in pathlib.Path(root).rglob("*.rs"):
        if "target" in p.parts:
            continue
        text = p.read_text(errors="replace")
        for c, n in re.findall(r"const\s+([A-Z_]+)\s*:\s*&str\s*=\s*\"(everest_[a-z0-9_]+)\"", text):
            consts[c] = n
        for kind, arg in re.findall(r"metrics::(counter|histogram|gauge)!\(\s*([A-Za-z_\"][A-Za-z0-9_\"]*)", text):
            name = arg.strip('"') if arg.startswith('"') else consts.get(arg)
            if name:
                names[name] = kind
    # Constants used from another file than the one defining them.
    for p in pathlib.Path(root).rglob("*.rs"):
        if "target" in p.parts:
            continue
        text = p.read_text(errors="replace")
        for kind, arg in re.findall(r"metrics::(counter|histogram|gauge)!\(\s*([A-Z_]+)", text):
            if arg in consts:
                names[consts[arg]] = kind
    out = {}
    for n, kind in names.items():
        out[n] = {}
        if kind == "histogram":
            for s in HIST_SUFFIXES:
                out[n + s] = {}
    return out


def cmd_metrics(argv):
    dashboard, rules = argv[0], argv[1]
    rest = argv[2:]
    if rest[:1] == ["--exposition"]:
        series, _ = parse_exposition(rest[1:])
        check_labels = True
        where = "the scraped expositions " + ", ".join(rest[1:])
    elif rest[:1] == ["--source"]:
        series = source_names(rest[1])
        check_labels = False
        where = f"the metrics recorded in the Rust sources under {rest[1]}"
    else:
        fail("metrics: give --exposition FILE... or --source DIR")
    if not series:
        fail(f"no everest_ metrics found in {where}")
    problems, used = [], set()
    for origin, expr in exprs_of(dashboard, rules):
        names = set(METRIC.findall(expr))
        if not names and not UP.search(expr):
            problems.append(f"{origin}: names no everest_ metric: {expr}")
        for n in names:
            used.add(n)
            if n not in series:
                problems.append(f"{origin}: metric {n} is not exported ({where})")
        if not check_labels:
            continue
        known = set().union(*(series.get(n, {}).keys() for n in names)) | {"le"} | TARGET_LABELS
        for n, body in SELECTOR.findall(expr):
            for label, op, value in MATCHER.findall(body):
                if label in TARGET_LABELS:
                    continue
                if label not in series.get(n, {}):
                    problems.append(f"{origin}: {n} has no label {label}")
                elif op == "=" and value and not value.startswith("$") and value not in series[n][label]:
                    print(f"note: {origin}: {n}{{{label}={value!r}}} not seen in this exposition (values seen: {sorted(series[n][label])})")
        for group in BY.findall(expr):
            for label in (x.strip() for x in group.split(",") if x.strip()):
                if label not in known:
                    problems.append(f"{origin}: aggregates by {label}, which {sorted(names)} do not carry")
    if problems:
        fail("\n  ".join(["dashboard/alert metrics do not match the daemons:"] + problems))
    print(f"ok  {len(used)} metric names used by the dashboard and alerts are exported ({where})")


def main():
    if len(sys.argv) < 2:
        fail(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    {
        "split": lambda: cmd_split(*args),
        "wiring": lambda: cmd_wiring(*args),
        "rules": lambda: cmd_rules(*args),
        "toml": lambda: cmd_toml(*args),
        "metrics": lambda: cmd_metrics(args),
    }.get(cmd, lambda: fail(f"unknown subcommand {cmd}\n{__doc__}"))()


if __name__ == "__main__":
    main()
