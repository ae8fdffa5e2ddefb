//! `everest-controller`: the CSI Identity and Controller services on a unix socket.
//!
//! Exit codes: 0 after a clean shutdown (or `--check-config` success), 1 when serving fails,
//! 2 when the configuration is invalid.

mod backends;
mod controller;
#[cfg(test)]
mod fake;
mod listing;
mod pvc_annotations;
mod requests;
mod responses;
mod snapshots;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use everest_backend::daemon::config::{CommonArgs, ControllerConfig};
use everest_backend::daemon::identity::IdentityService;
use everest_backend::daemon::startup::launch;
use everest_backend::daemon::{reachability, server, telemetry};
use everest_proto::csi::v1::controller_server::ControllerServer;
use everest_proto::csi::v1::identity_server::IdentityServer;
use tonic::transport::Server;

use crate::backends::ControllerReady;
use crate::controller::ControllerService;
use crate::pvc_annotations::ClaimReader;

/// Command line of the controller plugin.
#[derive(Debug, Parser)]
#[command(
    name = "everest-controller",
    version,
    about = "Everest CSI controller plugin: Identity and Controller services on a unix socket",
    after_help = "Configuration layers: defaults, then --config FILE (TOML), then EVEREST_* \
                  environment variables (EVEREST_LOG_FORMAT=json, EVEREST_BACKENDS__EVS_DEFAULT__REGION=…), \
                  then these flags. See docs/config.example.toml."
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    launch(
        "everest-controller",
        cli.common.check_config,
        || {
            let cfg = ControllerConfig::load(&cli.common, std::env::vars())?;
            ClaimReader::check(&cfg.controller)?;
            let registry = Arc::new(backends::build(&cfg)?);
            Ok((cfg.log_format, (cfg, registry)))
        },
        |(cfg, registry)| async move { run(&cfg, registry).await },
    )
    .await
}

async fn run(
    cfg: &ControllerConfig,
    registry: Arc<everest_backend::registry::Registry<dyn everest_backend::ControllerBackend>>,
) -> Result<(), everest_backend::Error> {
    if let Some(addr) = cfg.metrics_address {
        telemetry::install_exporter(addr)?;
        everest_backends::describe_metrics();
        reachability::describe();
    }
    // Runs for the daemon's lifetime; its state reaches only the gauge and the log.
    tokio::spawn(reachability::watch(
        Arc::clone(&registry),
        cfg.controller.backend_check_interval(),
    ));
    for (name, backend) in registry.iter() {
        // Only name and kind: settings may name credential files and are not for logs.
        tracing::info!(backend = %name, kind = ?backend.kind(), "backend configured");
    }
    tracing::info!(
        driver = %cfg.driver_name,
        version = env!("CARGO_PKG_VERSION"),
        default_backend = cfg.default_backend.as_deref().unwrap_or("none"),
        metrics = %cfg.metrics_address.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        "everest-controller starting"
    );
    let identity = IdentityService::new(
        cfg.driver_name.clone(),
        env!("CARGO_PKG_VERSION"),
        Arc::new(ControllerReady),
    );
    let claims = ClaimReader::from_config(&cfg.controller).await?;
    tracing::info!(kubernetes = ?claims, "Kubernetes API for PVC annotations");
    tracing::info!(cluster = %cfg.controller.cluster_id, "cluster ID for volume markers");
    let controller = ControllerService::new(registry)
        .with_claims(claims)
        .with_cluster(cfg.controller.cluster_id.clone());
    let router = Server::builder()
        .add_service(IdentityServer::new(identity))
        .add_service(ControllerServer::new(controller));
    server::serve(&cfg.endpoint, router).await
}
