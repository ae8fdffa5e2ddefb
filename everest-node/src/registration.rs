//! Native kubelet plugin registration: the node serves the kubelet's `pluginregistration`
//! API on `<registry dir>/<driver>-reg.sock`, so no node-driver-registrar sidecar is needed.
//!
//! The kubelet's plugin watcher finds the socket, asks GetInfo, registers the CSI driver at the
//! endpoint it was given (calling NodeGetInfo there), and reports the outcome with
//! NotifyRegistrationStatus. The outcome is logged and exported as metrics; a restart removes
//! the socket (the kubelet deregisters) and creates it again (the kubelet registers again).

use std::path::{Path, PathBuf};

use everest_backend::Error;
use everest_backend::daemon::config::{NodeConfig, RegistrationMode};
use everest_backend::daemon::socket::parse_endpoint;
use everest_backend::paths::AllowedRoot;
use everest_proto::pluginregistration::registration_server::Registration;
use everest_proto::pluginregistration::{
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
};
use tonic::{Request, Response, Status};

/// Gauge: 1 once the kubelet reported the plugin registered, 0 before and after a refusal.
pub const PLUGIN_REGISTERED: &str = "everest_plugin_registered";
/// Counter of the kubelet's registration reports, by `outcome` (`registered`, `failed`).
pub const REGISTRATION_NOTIFICATIONS: &str = "everest_plugin_registration_notifications_total";

/// The plugin type the kubelet routes to its CSI handler.
const CSI_PLUGIN_TYPE: &str = "CSIPlugin";
/// The CSI major version the kubelet's CSI handler negotiates; it accepts any 1.x.
const SUPPORTED_VERSIONS: &[&str] = &["1.0.0"];
/// The directory under the kubelet root its plugin watcher watches.
const REGISTRY_SUBDIR: &str = "plugins_registry";

/// Where and what to register, checked from the configuration before anything listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationPlan {
    /// The registration socket: `<registry dir>/<driver>-reg.sock`.
    socket: PathBuf,
    /// The CSI driver name.
    driver: String,
    /// The CSI socket as the kubelet reaches it on the host.
    kubelet_endpoint: PathBuf,
}

impl RegistrationPlan {
    /// The plan for `native` mode, or `None` when the registrar sidecar registers the plugin.
    /// A registry dir outside the kubelet root is refused: the kubelet would never look there.
    pub fn from_config(cfg: &NodeConfig, root: &AllowedRoot) -> Result<Option<Self>, Error> {
        let settings = &cfg.node.registration;
        if settings.mode == RegistrationMode::Registrar {
            return Ok(None);
        }
        let dir = settings
            .registry_dir
            .clone()
            .unwrap_or_else(|| root.path().join(REGISTRY_SUBDIR));
        let shown = dir.display().to_string();
        root.check(&shown, "node.registration.registry_dir")
            .map_err(|e| {
                Error::InvalidArgument(format!(
                    "configuration key node.registration.registry_dir = {shown:?} is not under the kubelet root {} (node.kubelet_root); the kubelet only finds plugin sockets in {}: {e}",
                    root.path().display(),
                    root.path().join(REGISTRY_SUBDIR).display(),
                ))
            })?;
        let kubelet_endpoint = parse_endpoint(
            settings
                .kubelet_endpoint
                .as_deref()
                .unwrap_or(&cfg.endpoint),
        )
        .map_err(|e| e.context("configuration key node.registration.kubelet_endpoint"))?;
        Ok(Some(Self {
            socket: dir.join(format!("{}-reg.sock", cfg.driver_name)),
            driver: cfg.driver_name.clone(),
            kubelet_endpoint,
        }))
    }

    /// The registration socket to bind.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

/// The kubelet's `pluginregistration.Registration` service.
#[derive(Debug)]
pub struct RegistrationService {
    plan: RegistrationPlan,
}

impl RegistrationService {
    /// Serves `plan`; the plugin counts as not registered until the kubelet says otherwise.
    pub fn new(plan: RegistrationPlan) -> Self {
        describe_metrics();
        metrics::gauge!(PLUGIN_REGISTERED).set(0.0);
        // Both outcomes exist from the start, so `increase()` sees the first one.
        for outcome in Outcome::ALL {
            metrics::counter!(REGISTRATION_NOTIFICATIONS, "outcome" => outcome.label())
                .increment(0);
        }
        Self { plan }
    }

    fn info(&self) -> PluginInfo {
        PluginInfo {
            r#type: CSI_PLUGIN_TYPE.to_owned(),
            name: self.plan.driver.clone(),
            endpoint: self.plan.kubelet_endpoint.display().to_string(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    /// Logs and counts what the kubelet reported.
    fn record(&self, status: &RegistrationStatus) {
        let outcome = Outcome::of(status);
        metrics::counter!(REGISTRATION_NOTIFICATIONS, "outcome" => outcome.label()).increment(1);
        let plan = &self.plan;
        match outcome {
            Outcome::Registered => {
                metrics::gauge!(PLUGIN_REGISTERED).set(1.0);
                tracing::info!(
                    driver = %plan.driver,
                    endpoint = %plan.kubelet_endpoint.display(),
                    "registered with the kubelet"
                );
            }
            Outcome::Failed => {
                metrics::gauge!(PLUGIN_REGISTERED).set(0.0);
                tracing::warn!(
                    driver = %plan.driver,
                    endpoint = %plan.kubelet_endpoint.display(),
                    error = %status.error,
                    "the kubelet refused to register the plugin"
                );
            }
        }
    }
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn get_info(&self, _req: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        tracing::debug!(socket = %self.plan.socket.display(), "the kubelet asked for the plugin info");
        Ok(Response::new(self.info()))
    }

    async fn notify_registration_status(
        &self,
        req: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        self.record(req.get_ref());
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

/// What the kubelet reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Registered,
    Failed,
}

impl Outcome {
    const ALL: [Outcome; 2] = [Outcome::Registered, Outcome::Failed];

    fn of(status: &RegistrationStatus) -> Self {
        if status.plugin_registered {
            Outcome::Registered
        } else {
            Outcome::Failed
        }
    }

    fn label(self) -> &'static str {
        match self {
            Outcome::Registered => "registered",
            Outcome::Failed => "failed",
        }
    }
}

fn describe_metrics() {
    metrics::describe_gauge!(
        PLUGIN_REGISTERED,
        "1 while the kubelet reports this node plugin registered (native registration), else 0"
    );
    metrics::describe_counter!(
        REGISTRATION_NOTIFICATIONS,
        "Registration outcomes the kubelet reported (native registration), by outcome"
    );
}

#[cfg(test)]
mod tests {
    use everest_backend::daemon::config::CommonArgs;

    use super::*;

    fn config(toml: &str) -> (tempfile::TempDir, NodeConfig) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("everest.toml");
        std::fs::write(&path, toml).unwrap();
        let args = CommonArgs {
            config: Some(path),
            ..Default::default()
        };
        let cfg = NodeConfig::load(&args, Vec::new()).unwrap();
        (dir, cfg)
    }

    fn plan(toml: &str) -> Result<Option<RegistrationPlan>, Error> {
        let (_dir, cfg) = config(toml);
        let root = AllowedRoot::new(&cfg.node.kubelet_root).unwrap();
        RegistrationPlan::from_config(&cfg, &root)
    }

    #[test]
    fn registrar_mode_serves_nothing() {
        assert_eq!(plan("").unwrap(), None);
        assert_eq!(
            plan("[node.registration]\nmode = \"registrar\"").unwrap(),
            None
        );
    }

    #[test]
    fn native_mode_defaults_to_the_kubelets_registry_and_the_endpoint() {
        let p = plan(
            "driver_name = \"disk.example.com\"\nendpoint = \"unix:///csi/csi.sock\"\n\
             [node]\nkubelet_root = \"/var/lib/k\"\n[node.registration]\nmode = \"native\"",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            p.socket(),
            Path::new("/var/lib/k/plugins_registry/disk.example.com-reg.sock")
        );
        let info = RegistrationService::new(p).info();
        assert_eq!(info.r#type, "CSIPlugin");
        assert_eq!(info.name, "disk.example.com");
        assert_eq!(info.endpoint, "/csi/csi.sock");
        assert_eq!(info.supported_versions, ["1.0.0"]);
    }

    #[test]
    fn native_mode_reports_the_host_endpoint() {
        let p = plan(
            "[node.registration]\nmode = \"native\"\n\
             kubelet_endpoint = \"unix:///var/lib/kubelet/plugins/everest.csi.io/csi.sock\"",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            RegistrationService::new(p).info().endpoint,
            "/var/lib/kubelet/plugins/everest.csi.io/csi.sock"
        );
        let err = plan("[node.registration]\nmode = \"native\"\nkubelet_endpoint = \"csi.sock\"")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("node.registration.kubelet_endpoint"),
            "{err}"
        );
    }

    #[test]
    fn a_registry_dir_outside_the_kubelet_root_is_refused() {
        for dir in [
            "/var/lib/plugins_registry",
            "/var/lib/kubelet",
            "/var/lib/kubelet/../plugins_registry",
        ] {
            let err = plan(&format!(
                "[node.registration]\nmode = \"native\"\nregistry_dir = \"{dir}\""
            ))
            .unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("is not under the kubelet root /var/lib/kubelet")
                    && msg.contains("/var/lib/kubelet/plugins_registry"),
                "{msg}"
            );
        }
        assert!(
            plan(
                "[node.registration]\nmode = \"native\"\nregistry_dir = \"/var/lib/kubelet/plugins_registry\""
            )
            .is_ok()
        );
    }
}
