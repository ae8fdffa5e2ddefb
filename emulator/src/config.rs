//! The emulator's command line, parsed once into a typed config.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Default project id (32 hex chars, like a real project id).
pub const DEFAULT_PROJECT_ID: &str = "0123456789abcdef0123456789abcdef";
/// Default server (ECS instance) id the node "runs on".
pub const DEFAULT_SERVER_ID: &str = "5b2c8f8e-6d3a-4c1e-9a57-3f0e2b7d1c40";
/// A second zone with no servers, so cross-zone mistakes can be tested.
pub const SECOND_ZONE: &str = "emu-az2";

/// Everest's local cloud: EVS, ECS, jobs, SFS Turbo, IAM token and metadata APIs with real effects.
#[derive(Debug, Clone, Parser)]
#[command(name = "everest-emulator", version, about)]
pub struct Config {
    /// Address to listen on (loopback; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Directory holding state.json and the disk images.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Directory where `virtio-<id[..20]>` links to attached loop devices are made.
    #[arg(long)]
    pub by_id_dir: PathBuf,
    /// JSON file with the accepted access keys and IAM users (never pass secrets as flags).
    #[arg(long)]
    pub credentials_file: PathBuf,
    /// The one project this cloud knows.
    #[arg(long, default_value = DEFAULT_PROJECT_ID)]
    pub project_id: String,
    /// Region name (also accepted as the project name in token scopes).
    #[arg(long, default_value = "emu-region-1")]
    pub region: String,
    /// The id of the one server (the local machine) disks attach to.
    #[arg(long, default_value = DEFAULT_SERVER_ID)]
    pub server_id: String,
    /// Another server of the zone disks may attach to (repeat for more): another machine, so
    /// attaching to it has no effect on this host (no loop device, no by-id link).
    #[arg(long = "remote-server", value_name = "ID")]
    pub remote_servers: Vec<String>,
    /// The zone of the servers.
    #[arg(long, default_value = "emu-az1")]
    pub availability_zone: String,
    /// How long an asynchronous job takes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub job_latency_ms: u64,
    /// Probability (0..=1) that a cloud API call fails with 500 EVS.5500.
    #[arg(long, default_value_t = 0.0)]
    pub fault_error_rate: f64,
    /// Probability (0..=1) that a cloud API call is throttled with 429 APIGW.0308.
    #[arg(long, default_value_t = 0.0)]
    pub fault_throttle_rate: f64,
    /// Extra delay added to every cloud API call, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub fault_delay_ms: u64,
    /// Disk quota for the project (EVS.1034 beyond it).
    #[arg(long)]
    pub max_disks: Option<usize>,
    /// Snapshot quota for the project (EVS.5413 beyond it).
    #[arg(long)]
    pub max_snapshots: Option<usize>,
    /// SFS Turbo share quota for the project (SFS.TURBO.0010 beyond it).
    #[arg(long)]
    pub max_shares: Option<usize>,
    /// Directory holding one directory per SFS Turbo share (default: `<state-dir>/shares`).
    /// Export it with an NFS server (one export of this directory) to make shares mountable.
    #[arg(long)]
    pub nfs_export_root: Option<PathBuf>,
    /// The server address put in each share's `export_location`.
    #[arg(long, default_value = "127.0.0.1")]
    pub nfs_export_address: String,
    /// The path NFS clients mount for the export root (the NFS server's pseudo path);
    /// `export_location` is `<address>:<path>/<share id>`. Default: the export root itself.
    #[arg(long)]
    pub nfs_export_path: Option<String>,
    /// On SIGTERM/SIGINT, detach every loop device and remove every link this emulator made.
    #[arg(long, default_value_t = false)]
    pub cleanup_on_exit: bool,
}

impl Config {
    /// The zones this cloud offers: the server's zone and an empty second one.
    pub fn zones(&self) -> Vec<String> {
        let mut zones = vec![self.availability_zone.clone()];
        if self.availability_zone != SECOND_ZONE {
            zones.push(SECOND_ZONE.to_string());
        }
        zones
    }

    /// The directory holding the share directories.
    pub fn share_root(&self) -> PathBuf {
        self.nfs_export_root
            .clone()
            .unwrap_or_else(|| self.state_dir.join("shares"))
    }

    /// `export_location` of a share: `<address>:<export path>/<share id>`.
    pub fn export_location(&self, share_id: &str) -> String {
        let path = self
            .nfs_export_path
            .clone()
            .unwrap_or_else(|| self.share_root().display().to_string());
        format!(
            "{}:{}/{share_id}",
            self.nfs_export_address,
            path.trim_end_matches('/')
        )
    }

    /// A config for tests: given dirs, defaults elsewhere, fast jobs.
    pub fn for_dirs(state_dir: PathBuf, by_id_dir: PathBuf, credentials_file: PathBuf) -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            state_dir,
            by_id_dir,
            credentials_file,
            project_id: DEFAULT_PROJECT_ID.to_string(),
            region: "emu-region-1".to_string(),
            server_id: DEFAULT_SERVER_ID.to_string(),
            remote_servers: Vec::new(),
            availability_zone: "emu-az1".to_string(),
            job_latency_ms: 50,
            fault_error_rate: 0.0,
            fault_throttle_rate: 0.0,
            fault_delay_ms: 0,
            max_disks: None,
            max_shares: None,
            max_snapshots: None,
            nfs_export_root: None,
            nfs_export_address: "127.0.0.1".to_string(),
            nfs_export_path: None,
            cleanup_on_exit: false,
        }
    }
}
