//! `everest-mounter`: the supervisor of object volumes' FUSE mounters (see
//! `everest_obs::supervisor`). It runs in a session of its own, listens on a private unix
//! socket, and on `everest-node`'s request starts s3fs or rclone as its own children, restarts
//! one that dies and stops one on request. Stopping it leaves the mounters serving; started
//! again, it finds them from its state directory.
//!
//! Exit codes: 0 after SIGTERM/SIGINT, 1 when it cannot serve, 2 for invalid arguments.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use everest_backend::daemon::logging::{self, LogFormat};
use everest_backend::daemon::shutdown::signal_received;
use everest_backend::daemon::telemetry;
use everest_backend::host::{HostSettings, LinuxHost};
use everest_obs::supervisor::host::LinuxMounterHost;
use everest_obs::supervisor::{self, Settings, Supervisor};

/// Command line of the mounter supervisor.
#[derive(Debug, Parser)]
#[command(
    name = "everest-mounter",
    version,
    about = "Everest's FUSE mounter supervisor: keeps object volumes mounted apart from everest-node"
)]
struct Cli {
    /// The unix socket everest-node asks on (the obs backend's supervisor_socket).
    #[arg(
        long,
        env = "EVEREST_MOUNTER_SOCKET",
        default_value = "/run/everest/mounter/mounter.sock"
    )]
    socket: PathBuf,
    /// Its own directory for state files and mounter logs, made private (0700); keep it across
    /// restarts of this process, not across reboots (a tmpfs, or a pod's emptyDir).
    #[arg(
        long,
        env = "EVEREST_MOUNTER_STATE_DIR",
        default_value = "/run/everest/mounter/state"
    )]
    state_dir: PathBuf,
    /// Restarts in a row after which a mount is given up (and reported dead).
    #[arg(long, env = "EVEREST_MOUNTER_MAX_RESTARTS", default_value_t = 5)]
    max_restarts: u32,
    /// Longest pause between two restarts, in seconds (the pause doubles from 1 s).
    #[arg(
        long,
        env = "EVEREST_MOUNTER_BACKOFF_CAP_SECONDS",
        default_value_t = 30
    )]
    backoff_cap_seconds: u64,
    /// How long a mounter may take to show its mount, in seconds.
    #[arg(
        long,
        env = "EVEREST_MOUNTER_MOUNT_TIMEOUT_SECONDS",
        default_value_t = 60
    )]
    mount_timeout_seconds: u64,
    /// Serve Prometheus metrics on this address, e.g. 0.0.0.0:9810.
    #[arg(long, env = "EVEREST_MOUNTER_METRICS_ADDRESS")]
    metrics_address: Option<SocketAddr>,
    /// Log format.
    #[arg(long, env = "EVEREST_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    // Its own session: no terminal hangup or signal to the starter's group reaches it or its
    // mounters. Failing means it already leads one (as a container's first process does).
    let _ = rustix::process::setsid();
    if let Some(addr) = cli.metrics_address {
        if let Err(e) = telemetry::install_exporter(addr) {
            tracing::error!(error = %e, "cannot serve metrics");
            return ExitCode::FAILURE;
        }
        supervisor::describe_metrics();
    }
    let mut settings = Settings::new(cli.state_dir);
    settings.max_restarts = cli.max_restarts;
    settings.backoff_cap = Duration::from_secs(cli.backoff_cap_seconds.max(1));
    settings.mount_timeout = Duration::from_secs(cli.mount_timeout_seconds.max(1));
    let host = LinuxMounterHost::new(LinuxHost::new(HostSettings::default()));
    let sup = Supervisor::new(Arc::new(host), settings);
    match sup.recover().await {
        Ok(n) => tracing::info!(mounts = n, "state read"),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the state directory");
            return ExitCode::FAILURE;
        }
    }
    match supervisor::server::serve(sup, &cli.socket, signal_received()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "everest-mounter stopped with an error");
            ExitCode::FAILURE
        }
    }
}
