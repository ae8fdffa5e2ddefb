//! The daemon configuration, layered: built-in defaults → TOML file (`--config`) → `EVEREST_`
//! environment variables → command-line flags.
//!
//! Layout: the keys both daemons use sit at the top level; keys only one daemon uses sit in its
//! own section (`[node]`, `[controller]`). Both daemons read the same file: each parses its own
//! section strictly and skips the other's, and every table rejects unknown keys, so a typo fails
//! at start instead of being silently ignored.
//!
//! Environment: `EVEREST_<KEY>` with `__` between levels, e.g. `EVEREST_LOG_FORMAT=json`,
//! `EVEREST_NODE__ZONE=az1`, `EVEREST_BACKENDS__EVS_DEFAULT__REGION=r1`. Values of the daemon's
//! own keys that read as numbers or booleans become numbers or booleans; values inside a backend
//! table stay text (the backend parses its own numbers). Environment variable names cannot hold `-`,
//! so `_` in a backend name is read as `-` (`EVS_DEFAULT` → `evs-default`). Only variables whose
//! first level is a known top-level key are read, so unrelated `EVEREST_*` variables (such as
//! the ones Kubernetes injects for a Service named `everest-…`) cannot break startup.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::logging::LogFormat;
use super::socket::parse_endpoint;
use crate::error::Error;
use crate::host::HostSettings;
use crate::registry::{BackendConfig, Registry};
use crate::volume_id::BackendName;

/// The prefix of configuration environment variables.
pub const ENV_PREFIX: &str = "EVEREST";
/// The CSI driver name when none is configured.
pub const DEFAULT_DRIVER_NAME: &str = "everest.csi.io";
/// The CSI endpoint when none is configured.
pub const DEFAULT_ENDPOINT: &str = "unix:///run/everest/csi.sock";

/// The top-level keys; environment variables for anything else are ignored.
const TOP_LEVEL_KEYS: &[&str] = &[
    "driver_name",
    "endpoint",
    "metrics_address",
    "log_format",
    "default_backend",
    "backends",
    "controller",
    "node",
];

/// The flags both daemons accept; each one overrides the file and the environment.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonArgs {
    /// TOML configuration file (optional: defaults and EVEREST_* variables may be enough).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// CSI endpoint, unix:///path/to/csi.sock or /path/to/csi.sock [config: endpoint].
    #[arg(long, value_name = "ENDPOINT")]
    pub endpoint: Option<String>,
    /// Serve Prometheus metrics on this address, e.g. 0.0.0.0:9808 [config: metrics_address].
    #[arg(long, value_name = "ADDR")]
    pub metrics_address: Option<SocketAddr>,
    /// Log format [config: log_format].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Validate the configuration and build the backends without listening; print "config ok"
    /// and exit 0, or print the problem and exit 2.
    #[arg(long)]
    pub check_config: bool,
}

/// A whole configuration file as one daemon reads it: `C` and `N` are the controller and node
/// sections, one typed strictly and the other skipped (see [`ControllerConfig`], [`NodeConfig`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig<C, N> {
    /// The CSI driver name reported by GetPluginInfo (the StorageClass `provisioner`).
    #[serde(default = "default_driver_name")]
    pub driver_name: String,
    /// Where the CSI socket is created.
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// Where Prometheus metrics are served; none when unset.
    #[serde(default)]
    pub metrics_address: Option<SocketAddr>,
    /// Log format.
    #[serde(default)]
    pub log_format: LogFormat,
    /// The backend instance used when a StorageClass names none.
    #[serde(default)]
    pub default_backend: Option<String>,
    /// Backend instances by name.
    #[serde(default)]
    pub backends: BTreeMap<String, BackendConfig>,
    /// The controller's own keys.
    #[serde(default)]
    pub controller: C,
    /// The node's own keys.
    #[serde(default)]
    pub node: N,
}

/// The `[controller]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerSection {
    /// How often each backend's service is checked for the `everest_backend_reachable` gauge.
    #[serde(default = "default_backend_check_seconds")]
    pub backend_check_seconds: u64,
    /// How the controller reaches the Kubernetes API (to read PVC annotations).
    #[serde(default)]
    pub kubernetes: KubernetesAccess,
    /// The kubeconfig file read when `kubernetes = "kubeconfig"`; only allowed then.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The cluster named in the marker on every volume this controller creates (see
    /// `docs/tags.md`); `default` when unset, the release name in the chart.
    #[serde(default)]
    pub cluster_id: crate::marker::ClusterId,
}

/// How the controller reaches the Kubernetes API; it asks it only for the PVC of a CreateVolume
/// whose StorageClass allows PVC annotations (see `docs/annotations.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KubernetesAccess {
    /// The pod's service account and the `KUBERNETES_SERVICE_*` variables (the chart's case).
    #[default]
    InCluster,
    /// The file named by `kubeconfig` (out of a cluster, and tests).
    Kubeconfig,
    /// No Kubernetes API: a StorageClass that allows PVC annotations fails CreateVolume.
    Off,
}

impl Default for ControllerSection {
    fn default() -> Self {
        Self {
            backend_check_seconds: default_backend_check_seconds(),
            kubernetes: KubernetesAccess::default(),
            kubeconfig: None,
            cluster_id: crate::marker::ClusterId::default(),
        }
    }
}

impl ControllerSection {
    /// The check interval; at least one second.
    pub fn backend_check_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.backend_check_seconds.max(1))
    }

    /// Checks that `kubeconfig` is given exactly when `kubernetes = "kubeconfig"`.
    pub fn validate(&self) -> Result<(), Error> {
        match (self.kubernetes, &self.kubeconfig) {
            (KubernetesAccess::Kubeconfig, None) => Err(Error::InvalidArgument(
                "configuration: controller.kubernetes = \"kubeconfig\" needs controller.kubeconfig, the file to read".into(),
            )),
            (KubernetesAccess::InCluster | KubernetesAccess::Off, Some(path)) => {
                Err(Error::InvalidArgument(format!(
                    "configuration: controller.kubeconfig = {path:?} is only read with controller.kubernetes = \"kubeconfig\""
                )))
            }
            _ => Ok(()),
        }
    }
}

fn default_backend_check_seconds() -> u64 {
    30
}

/// The `[node]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// This node's ID (the cloud server ID); asked from the metadata service when unset.
    #[serde(default, deserialize_with = "opt_scalar_string")]
    pub node_id: Option<String>,
    /// This node's availability zone; asked from the metadata service when unset.
    #[serde(default, deserialize_with = "opt_scalar_string")]
    pub zone: Option<String>,
    /// How many volumes the scheduler may place on this node.
    #[serde(default = "default_max_volumes")]
    pub max_volumes_per_node: u32,
    /// The kubelet's directory; staging and target paths must lie under it.
    #[serde(default = "default_kubelet_root")]
    pub kubelet_root: PathBuf,
    /// Time limits of host commands, and where sysfs and /dev are (`[node.host]`).
    #[serde(default)]
    pub host: HostSettings,
    /// Who registers the plugin with the kubelet (`[node.registration]`).
    #[serde(default)]
    pub registration: RegistrationSettings,
}

/// Who tells the kubelet that this node plugin exists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    /// The node-driver-registrar sidecar does (the chart's default); the node serves no
    /// registration socket.
    #[default]
    Registrar,
    /// `everest-node` serves the kubelet's plugin registration API itself.
    Native,
}

/// The `[node.registration]` section; only read in `native` mode.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationSettings {
    /// `registrar` (default) or `native`.
    #[serde(default)]
    pub mode: RegistrationMode,
    /// The directory the kubelet's plugin watcher watches; `<kubelet_root>/plugins_registry`
    /// when unset. It must lie under `kubelet_root`.
    #[serde(default)]
    pub registry_dir: Option<PathBuf>,
    /// The CSI socket as the kubelet reaches it on the host (in a container it differs from
    /// `endpoint`); the endpoint's path when unset.
    #[serde(default)]
    pub kubelet_endpoint: Option<String>,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            node_id: None,
            zone: None,
            max_volumes_per_node: default_max_volumes(),
            kubelet_root: default_kubelet_root(),
            host: HostSettings::default(),
            registration: RegistrationSettings::default(),
        }
    }
}

/// The configuration as the controller reads it.
pub type ControllerConfig = DaemonConfig<ControllerSection, IgnoredAny>;
/// The configuration as the node reads it.
pub type NodeConfig = DaemonConfig<IgnoredAny, NodeSection>;

fn default_driver_name() -> String {
    DEFAULT_DRIVER_NAME.to_owned()
}
fn default_endpoint() -> String {
    DEFAULT_ENDPOINT.to_owned()
}
fn default_max_volumes() -> u32 {
    24
}
fn default_kubelet_root() -> PathBuf {
    PathBuf::from("/var/lib/kubelet")
}

/// Environment values that look numeric arrive as numbers; an ID or zone is still text.
fn opt_scalar_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Some(v.to_string()),
        Some(other) => {
            return Err(serde::de::Error::custom(format!(
                "expected a string, found {other}"
            )));
        }
    })
}

impl<C: DeserializeOwned + Default, N: DeserializeOwned + Default> DaemonConfig<C, N> {
    /// Loads the layers in order; `env` is the process environment (a parameter for tests).
    pub fn load(
        args: &CommonArgs,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, Error> {
        let bad = |e: &dyn std::fmt::Display| Error::InvalidArgument(format!("configuration: {e}"));
        let mut builder = config::Config::builder();
        if let Some(file) = &args.config {
            builder = builder.add_source(
                config::File::from(file.as_path())
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        // Backend tables keep environment values as text (an all-digit project ID must keep its
        // leading zeros; backends parse their own numbers); the daemon's own keys are typed.
        let (backend_env, daemon_env): (config::Map<_, _>, config::Map<_, _>) = known_env(env)
            .into_iter()
            .partition(|(k, _)| is_backend_key(k));
        for (vars, typed) in [(daemon_env, true), (backend_env, false)] {
            builder = builder.add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(typed)
                    .source(Some(vars)),
            );
        }
        let mut tree: Value = builder
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| bad(&e))?;
        let Some(root) = tree.as_object_mut() else {
            return Err(bad(&"the configuration must be a table of keys"));
        };
        if let Some(Value::Object(backends)) = root.get_mut("backends") {
            merge_env_backend_names(backends);
        }
        if let Some(endpoint) = &args.endpoint {
            root.insert("endpoint".into(), Value::String(endpoint.clone()));
        }
        if let Some(addr) = &args.metrics_address {
            root.insert("metrics_address".into(), Value::String(addr.to_string()));
        }
        if let Some(format) = args.log_format {
            root.insert("log_format".into(), Value::String(format.as_str().into()));
        }
        let cfg: Self = serde_json::from_value(tree).map_err(|e| bad(&e))?;
        cfg.validate()?;
        Ok(cfg)
    }
}

impl<C, N> DaemonConfig<C, N> {
    /// Checks what serde cannot: names, the endpoint, and that the default backend exists.
    pub fn validate(&self) -> Result<(), Error> {
        check_driver_name(&self.driver_name)?;
        parse_endpoint(&self.endpoint).map_err(|e| e.context("configuration key endpoint"))?;
        let backends = self.backend_names()?;
        if let Some(default) = self.default_backend()?
            && !backends.contains(&default)
        {
            return Err(Error::InvalidArgument(format!(
                "configuration key default_backend = \"{default}\" names no [backends.{default}] table"
            )));
        }
        Ok(())
    }

    /// The default backend, parsed.
    pub fn default_backend(&self) -> Result<Option<BackendName>, Error> {
        self.default_backend
            .as_deref()
            .map(|d| {
                BackendName::new(d).map_err(|e| e.context("configuration key default_backend"))
            })
            .transpose()
    }

    /// The backend instances with their names parsed.
    pub fn backends(&self) -> Result<Vec<(BackendName, &BackendConfig)>, Error> {
        self.backends
            .iter()
            .map(|(name, cfg)| {
                BackendName::new(name)
                    .map(|n| (n, cfg))
                    .map_err(|e| e.context(format!("configuration table [backends.{name}]")))
            })
            .collect()
    }

    /// The registry of every `[backends.*]` instance, each built by `build` (which matches on
    /// the `kind` and answers [`unknown_kind`] for the ones its daemon cannot build).
    pub fn build_registry<B: ?Sized>(
        &self,
        mut build: impl FnMut(&BackendName, &BackendConfig) -> Result<Arc<B>, Error>,
    ) -> Result<Registry<B>, Error> {
        let mut registry = Registry::new(self.default_backend()?);
        for (name, cfg) in self.backends()? {
            let backend = build(&name, cfg)?;
            registry.insert(name, backend);
        }
        registry.validate()?;
        Ok(registry)
    }

    fn backend_names(&self) -> Result<Vec<BackendName>, Error> {
        Ok(self.backends()?.into_iter().map(|(n, _)| n).collect())
    }
}

/// The error for a `[backends.<name>]` table whose `kind` this daemon cannot build.
pub fn unknown_kind(name: &BackendName, kind: &str, supported: &[&str]) -> Error {
    Error::InvalidArgument(format!(
        "backend {name}: unknown kind {kind:?} (supported: {})",
        supported.join(", ")
    ))
}

/// A CSI driver name: at most 63 characters, alphanumerics, `-` and `.`, alphanumeric at both ends.
fn check_driver_name(name: &str) -> Result<(), Error> {
    let ok = (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "configuration key driver_name = {name:?} is not a valid CSI driver name (max 63 characters of a-z, 0-9, '-' and '.', alphanumeric at both ends)"
        )))
    }
}

/// Keeps the `EVEREST_*` variables whose first level is a known key.
fn known_env(env: impl IntoIterator<Item = (String, String)>) -> config::Map<String, String> {
    let prefix = format!("{ENV_PREFIX}_");
    env.into_iter()
        .filter(|(k, _)| {
            k.strip_prefix(&prefix).is_some_and(|rest| {
                let first = rest.split("__").next().unwrap_or_default().to_lowercase();
                TOP_LEVEL_KEYS.contains(&first.as_str())
            })
        })
        .collect()
}

/// Whether an `EVEREST_…` variable sets a key inside a `[backends.<name>]` table.
fn is_backend_key(var: &str) -> bool {
    var.strip_prefix(ENV_PREFIX)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|rest| rest.to_lowercase().starts_with("backends__"))
}

/// Folds `evs_default` (from the environment) into `evs-default`, the environment winning.
fn merge_env_backend_names(backends: &mut serde_json::Map<String, Value>) {
    let underscored: Vec<String> = backends
        .keys()
        .filter(|k| k.contains('_'))
        .cloned()
        .collect();
    for key in underscored {
        let Some(from_env) = backends.remove(&key) else {
            continue;
        };
        let entry = backends
            .entry(key.replace('_', "-"))
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        merge(entry, from_env);
    }
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
driver_name = "everest.csi.io"
endpoint = "unix:///tmp/everest-test/csi.sock"
log_format = "text"
default_backend = "evs-default"

[node]
zone = "az1"
max_volumes_per_node = 16

[node.host]
format_timeout_seconds = 900

[backends.evs-default]
kind = "evs"
region = "r1"
device_wait_seconds = 30
"#;

    fn file(text: &str) -> (tempfile::TempDir, CommonArgs) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("everest.toml");
        std::fs::write(&path, text).unwrap();
        let args = CommonArgs {
            config: Some(path),
            ..Default::default()
        };
        (dir, args)
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_without_file_or_env() {
        let cfg = NodeConfig::load(&CommonArgs::default(), env(&[])).unwrap();
        assert_eq!(cfg.driver_name, DEFAULT_DRIVER_NAME);
        assert_eq!(cfg.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(cfg.node.max_volumes_per_node, 24);
        assert!(cfg.backends.is_empty());
    }

    #[test]
    fn layers_file_then_env_then_flags() {
        let (_dir, mut args) = file(SAMPLE);
        let vars = env(&[
            ("EVEREST_LOG_FORMAT", "json"),
            ("EVEREST_NODE__NODE_ID", "12345"),
            ("EVEREST_BACKENDS__EVS_DEFAULT__REGION", "r2"),
            ("EVEREST_BACKENDS__EVS_DEFAULT__PROJECT_ID", "0123456789"),
            ("EVEREST_NODE__MAX_VOLUMES_PER_NODE", "16"),
            ("EVEREST_NODE__HOST__MOUNT_TIMEOUT_SECONDS", "90"),
            ("EVEREST_METRICS_SERVICE_HOST", "10.0.0.1"),
            ("EVEREST_CONFIG", "/ignored"),
        ]);
        let cfg = NodeConfig::load(&args, vars.clone()).unwrap();
        assert_eq!(cfg.log_format, LogFormat::Json);
        assert_eq!(cfg.node.node_id.as_deref(), Some("12345"));
        assert_eq!(cfg.node.zone.as_deref(), Some("az1"));
        assert_eq!(cfg.node.max_volumes_per_node, 16);
        let host = &cfg.node.host;
        assert_eq!(
            (host.format_timeout_seconds, host.mount_timeout_seconds),
            (900, 90)
        );
        assert_eq!(
            host.query_timeout_seconds, 30,
            "unset keys keep their defaults"
        );
        let evs = &cfg.backends["evs-default"];
        assert_eq!(evs.kind, "evs");
        assert_eq!(evs.settings["region"], "r2");
        // Backend values from the environment stay text: the leading zero survives.
        assert_eq!(evs.settings["project_id"], "0123456789");
        assert_eq!(evs.settings["device_wait_seconds"], 30);
        assert_eq!(cfg.backends.len(), 1);

        args.endpoint = Some("/tmp/other.sock".into());
        args.log_format = Some(LogFormat::Text);
        args.metrics_address = Some("127.0.0.1:9808".parse().unwrap());
        let cfg = ControllerConfig::load(&args, vars).unwrap();
        assert_eq!(cfg.endpoint, "/tmp/other.sock");
        assert_eq!(cfg.log_format, LogFormat::Text);
        assert_eq!(cfg.metrics_address, Some("127.0.0.1:9808".parse().unwrap()));
    }

    #[test]
    fn kubernetes_access_defaults_to_in_cluster_and_a_kubeconfig_needs_its_file() {
        let cfg = ControllerConfig::load(&CommonArgs::default(), env(&[])).unwrap();
        assert_eq!(cfg.controller.kubernetes, KubernetesAccess::InCluster);
        cfg.controller.validate().unwrap();
        let (_dir, args) =
            file("[controller]\nkubernetes = \"kubeconfig\"\nkubeconfig = \"/k.yaml\"");
        let cfg = ControllerConfig::load(&args, env(&[])).unwrap();
        assert_eq!(cfg.controller.kubernetes, KubernetesAccess::Kubeconfig);
        cfg.controller.validate().unwrap();
        let cfg = ControllerConfig::load(
            &CommonArgs::default(),
            env(&[("EVEREST_CONTROLLER__KUBERNETES", "off")]),
        )
        .unwrap();
        assert_eq!(cfg.controller.kubernetes, KubernetesAccess::Off);
        for (text, says) in [
            ("kubernetes = \"kubeconfig\"", "needs controller.kubeconfig"),
            ("kubeconfig = \"/k.yaml\"", "only read with"),
        ] {
            let (_dir, args) = file(&format!("[controller]\n{text}"));
            let err = ControllerConfig::load(&args, env(&[]))
                .unwrap()
                .controller
                .validate()
                .unwrap_err();
            assert!(err.to_string().contains(says), "{text}: {err}");
        }
        let (_dir, args) = file("[controller]\nkubernetes = \"incluster\"");
        assert!(ControllerConfig::load(&args, env(&[])).is_err());
    }

    #[test]
    fn cluster_id_defaults_and_is_checked() {
        let cfg = ControllerConfig::load(&CommonArgs::default(), env(&[])).unwrap();
        assert_eq!(cfg.controller.cluster_id.as_str(), "default");
        let (_dir, args) = file("[controller]\ncluster_id = \"prod-eu\"");
        let cfg = ControllerConfig::load(&args, env(&[])).unwrap();
        assert_eq!(cfg.controller.cluster_id.as_str(), "prod-eu");
        let cfg = ControllerConfig::load(
            &CommonArgs::default(),
            env(&[("EVEREST_CONTROLLER__CLUSTER_ID", "staging")]),
        )
        .unwrap();
        assert_eq!(cfg.controller.cluster_id.as_str(), "staging");
        let (_dir, args) = file("[controller]\ncluster_id = \"Prod EU\"");
        let err = ControllerConfig::load(&args, env(&[])).unwrap_err();
        assert!(err.to_string().contains("cluster ID"), "{err}");
    }

    #[test]
    fn registration_defaults_to_the_registrar_and_reads_native_from_file_and_env() {
        let cfg = NodeConfig::load(&CommonArgs::default(), env(&[])).unwrap();
        assert_eq!(cfg.node.registration.mode, RegistrationMode::Registrar);
        let (_dir, args) = file(
            "[node.registration]\nmode = \"native\"\nregistry_dir = \"/var/lib/kubelet/plugins_registry\"",
        );
        let cfg = NodeConfig::load(&args, env(&[])).unwrap();
        assert_eq!(cfg.node.registration.mode, RegistrationMode::Native);
        assert_eq!(
            cfg.node.registration.registry_dir.as_deref(),
            Some(std::path::Path::new("/var/lib/kubelet/plugins_registry"))
        );
        let vars = env(&[
            ("EVEREST_NODE__REGISTRATION__MODE", "native"),
            (
                "EVEREST_NODE__REGISTRATION__KUBELET_ENDPOINT",
                "/var/lib/kubelet/plugins/everest.csi.io/csi.sock",
            ),
        ]);
        let cfg = NodeConfig::load(&CommonArgs::default(), vars).unwrap();
        assert_eq!(cfg.node.registration.mode, RegistrationMode::Native);
        assert!(cfg.node.registration.kubelet_endpoint.is_some());
        for bad in [
            "[node.registration]\nmode = \"sidecar\"",
            "[node.registration]\nregistry = \"/x\"",
        ] {
            let (_dir, args) = file(bad);
            assert!(NodeConfig::load(&args, env(&[])).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_unknown_keys_everywhere_but_the_other_side() {
        for bad in [
            "log_formt = \"json\"",
            "[node]\nzon = \"az1\"",
            "[controller]\nzone = \"az1\"",
        ] {
            let (_dir, args) = file(bad);
            let node = NodeConfig::load(&args, env(&[]));
            let ctrl = ControllerConfig::load(&args, env(&[]));
            assert!(node.is_err() || ctrl.is_err(), "{bad}");
        }
        let (_dir, args) = file("[node]\nzone = \"az1\"");
        assert!(ControllerConfig::load(&args, env(&[])).is_ok());
        let (_dir, args) = file("log_formt = \"json\"");
        let err = NodeConfig::load(&args, env(&[])).unwrap_err();
        assert!(err.to_string().contains("log_formt"), "{err}");
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            "default_backend = \"missing\"",
            "endpoint = \"tcp://127.0.0.1:1\"",
            "driver_name = \"-bad\"",
            "log_format = \"yaml\"",
            "[backends.Bad_Name]\nkind = \"evs\"",
            "[backends.evs]\nregion = \"r1\"",
        ] {
            let (_dir, args) = file(bad);
            assert!(ControllerConfig::load(&args, env(&[])).is_err(), "{bad}");
        }
        let args = CommonArgs {
            config: Some("/nonexistent/everest.toml".into()),
            ..Default::default()
        };
        assert!(ControllerConfig::load(&args, env(&[])).is_err());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(128)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

        /// Any file text and any EVEREST_* variables load or fail with a message: the layering
        /// and the merge of backend names from variables never panic.
        #[test]
        fn any_file_and_variables_load_or_fail_cleanly(
            text in "(\\PC|\n|\\[|\\]|=|\"){0,200}",
            vars in proptest::collection::vec(
                ("EVEREST_(BACKENDS__[A-Za-z0-9_]{0,12}__[A-Z_]{0,10}|NODE__[A-Z_]{0,16}|[A-Z_]{0,16})", "\\PC{0,16}"),
                0..6,
            ),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("everest.toml");
            std::fs::write(&path, &text).unwrap();
            let args = CommonArgs { config: Some(path), ..Default::default() };
            if let Err(e) = NodeConfig::load(&args, vars.clone()) {
                prop_assert!(!e.to_string().is_empty());
            }
            if let Err(e) = ControllerConfig::load(&CommonArgs::default(), vars) {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}
