//! `everest-node`: the CSI Identity and Node services on a unix socket.
//!
//! Exit codes: 0 after a clean shutdown (or `--check-config` success), 1 when startup or serving
//! fails (e.g. the metadata service is unreachable), 2 when the configuration is invalid.

mod backends;
#[cfg(test)]
mod fake;
mod node;
mod node_info;
mod registration;
mod requests;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use everest_backend::daemon::config::{CommonArgs, NodeConfig, RegistrationMode};
use everest_backend::daemon::identity::IdentityService;
use everest_backend::daemon::server::{SHUTDOWN_GRACE, serve_bound};
use everest_backend::daemon::shutdown::Shutdown;
use everest_backend::daemon::socket::{bind, parse_endpoint};
use everest_backend::daemon::startup::launch;
use everest_backend::daemon::telemetry;
use everest_backend::host::{Host, LinuxHost};
use everest_backend::paths::AllowedRoot;
use everest_backend::registry::Registry;
use everest_backend::{Error, NodeBackend};
use everest_proto::csi::v1::identity_server::IdentityServer;
use everest_proto::csi::v1::node_server::NodeServer;
use everest_proto::pluginregistration::registration_server::RegistrationServer;
use tonic::transport::Server;

use crate::backends::NodeReady;
use crate::node::NodeService;
use crate::registration::{RegistrationPlan, RegistrationService};

/// Command line of the node plugin.
#[derive(Debug, Parser)]
#[command(
    name = "everest-node",
    version,
    about = "Everest CSI node plugin: Identity and Node services on a unix socket",
    after_help = "Configuration layers: defaults, then --config FILE (TOML), then EVEREST_* \
                  environment variables (EVEREST_NODE__NODE_ID=…, EVEREST_NODE__ZONE=…, \
                  EVEREST_LOG_FORMAT=json), then these flags. See docs/config.example.toml."
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Who registers the plugin with the kubelet: the node-driver-registrar sidecar, or
    /// everest-node itself on <registry dir>/<driver>-reg.sock [config: node.registration.mode].
    #[arg(long, value_enum, value_name = "MODE")]
    registration: Option<RegistrationMode>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    launch(
        "everest-node",
        cli.common.check_config,
        || {
            let mut cfg = NodeConfig::load(&cli.common, std::env::vars())?;
            // The flag is the last configuration layer.
            if let Some(mode) = cli.registration {
                cfg.node.registration.mode = mode;
            }
            let host: Arc<dyn Host> = Arc::new(LinuxHost::new(cfg.node.host.clone()));
            let root = AllowedRoot::new(&cfg.node.kubelet_root)
                .map_err(|e| e.context("configuration key node.kubelet_root"))?;
            let registration = RegistrationPlan::from_config(&cfg, &root)?;
            let registry = Arc::new(backends::build(&cfg, &host)?);
            Ok((cfg.log_format, (cfg, root, host, registry, registration)))
        },
        |(cfg, root, host, registry, registration)| async move {
            run(&cfg, root, host, registry, registration).await
        },
    )
    .await
}

async fn run(
    cfg: &NodeConfig,
    root: AllowedRoot,
    host: Arc<dyn Host>,
    registry: Arc<Registry<dyn NodeBackend>>,
    registration: Option<RegistrationPlan>,
) -> Result<(), Error> {
    if let Some(addr) = cfg.metrics_address {
        telemetry::install_exporter(addr)?;
        everest_backends::describe_metrics();
    }
    for (name, backend) in registry.iter() {
        // Only name and kind: settings may name credential files and are not for logs.
        tracing::info!(backend = %name, kind = ?backend.kind(), "backend configured");
        // What an earlier run left mounted is taken up again, never mounted twice.
        if let Err(e) = backend.recover().await {
            tracing::warn!(backend = %name, error = %e, "cannot take up what an earlier run left on this node");
        }
    }
    let info = node_info::apply_backend_limits(
        node_info::resolve(
            &cfg.node,
            &registry,
            std::env::var(node_info::NODE_NAME_ENV).ok(),
        )
        .await?,
        &registry,
    )
    .await;
    tracing::info!(
        driver = %cfg.driver_name,
        version = env!("CARGO_PKG_VERSION"),
        node_id = %info.node_id,
        zone = info.zone.as_deref().unwrap_or("none"),
        max_volumes = info.max_volumes,
        kubelet_root = %root.path().display(),
        registration = ?cfg.node.registration.mode,
        metrics = %cfg.metrics_address.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        "everest-node starting"
    );
    let identity = IdentityService::new(
        cfg.driver_name.clone(),
        env!("CARGO_PKG_VERSION"),
        Arc::new(NodeReady {
            host: Arc::clone(&host),
            registry: Arc::clone(&registry),
        }),
    );
    let node = NodeService::new(registry, host, root, info);
    let router = Server::builder()
        .add_service(IdentityServer::new(identity))
        .add_service(NodeServer::new(node));
    let shutdown = Shutdown::on_signal();
    // The CSI socket first: the kubelet calls NodeGetInfo on it as soon as it has read the
    // registration socket's GetInfo.
    let csi = bind(&parse_endpoint(&cfg.endpoint)?).await?;
    let serve_csi = serve_bound(csi, "CSI", router, shutdown.clone().wait(), SHUTDOWN_GRACE);
    let Some(plan) = registration else {
        return serve_csi.await;
    };
    let socket = bind(plan.socket())
        .await
        .map_err(|e| e.context("kubelet plugin registration socket"))?;
    let router =
        Server::builder().add_service(RegistrationServer::new(RegistrationService::new(plan)));
    let serve_registration = serve_bound(
        socket,
        "kubelet plugin registration",
        router,
        shutdown.wait(),
        SHUTDOWN_GRACE,
    );
    tokio::try_join!(serve_csi, serve_registration).map(|_| ())
}
