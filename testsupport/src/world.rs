//! The world every test starts the same way: a private temp root, the emulator, the controller
//! and the node, with connected clients, and a `Drop` that always takes it all down again.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use csi::controller_client::ControllerClient;
use csi::identity_client::IdentityClient;
use csi::node_client::NodeClient;
use everest_proto::csi::v1 as csi;
use tonic::transport::Channel;

use crate::csi::connect_uds;
use crate::host;
use crate::process::{Proc, find_binary};

/// Errors while starting the world: a message that says what failed, with log tails.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The CSI driver name the daemons are configured with.
pub const DRIVER_NAME: &str = "everest.csi.io";
/// The backend instance the world configures.
pub const BACKEND: &str = "evs-default";
/// The emulator's project.
pub const PROJECT_ID: &str = "0123456789abcdef0123456789abcdef";
/// The emulator's region.
pub const REGION: &str = "emu-region-1";

/// How long to wait for a process to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Which daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    /// `everest-controller`.
    Controller,
    /// `everest-node`.
    Node,
}

impl Daemon {
    /// The name its logs go under.
    fn short(self) -> &'static str {
        match self {
            Daemon::Controller => "controller",
            Daemon::Node => "node",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Daemon::Controller => "everest-controller",
            Daemon::Node => "everest-node",
        }
    }
}

/// How to start the world.
#[derive(Debug, Clone)]
pub struct WorldOptions {
    /// How long each emulated cloud job takes.
    pub job_latency_ms: u64,
    /// Prefix of the temp root's name (the leak check in `scripts/test.sh` looks for it).
    pub temp_prefix: String,
    /// The backend's default filesystem.
    pub default_fs_type: String,
    /// Daemon log format (`text` or `json`).
    pub log_format: String,
    /// Extra `key = value` lines for the backend's table (e.g. `max_retries = 1`).
    pub backend_extra: Vec<String>,
    /// Extra `key = value` lines for the `[controller]` table (e.g. `kubernetes = "off"`).
    pub controller_extra: Vec<String>,
    /// TOML appended to the daemon configuration, e.g. another `[backends.<name>]` table;
    /// `{emulator_url}` and `{credentials_file}` (AK/SK the emulator accepts) are filled in.
    pub extra_config: String,
    /// Extra emulator flags (e.g. where its SFS Turbo shares are exported).
    pub emulator_extra: Vec<String>,
    /// A network namespace (`/run/netns/<name>`) the emulator and both daemons run in, to
    /// reach an NFS server that lives only there ([`crate::nfs::NfsServer`]). They keep the
    /// host's mount namespace, and the tests reach them over their unix sockets; the
    /// emulator's HTTP endpoints and the metrics are not reachable from the test then.
    pub netns: Option<String>,
}

impl Default for WorldOptions {
    fn default() -> Self {
        Self {
            job_latency_ms: 100,
            temp_prefix: "everest-test-".into(),
            default_fs_type: "ext4".into(),
            log_format: "text".into(),
            backend_extra: Vec::new(),
            controller_extra: Vec::new(),
            extra_config: String::new(),
            emulator_extra: Vec::new(),
            netns: None,
        }
    }
}

/// The running world. Dropping it stops the daemons, unmounts everything under its root,
/// stops the emulator, detaches its loop devices and removes the root — also on panic.
#[derive(Debug)]
pub struct World {
    root: PathBuf,
    opts: WorldOptions,
    // Behind mutexes so a daemon can be restarted while tests hold `&World`.
    emulator: Mutex<Option<Proc>>,
    controller: Mutex<Option<Proc>>,
    node: Mutex<Option<Proc>>,
    emulator_addr: String,
    controller_metrics: String,
    node_metrics: String,
    http: reqwest::Client,
    /// Drives the gRPC connections the world hands out. They must keep running while `Drop`
    /// blocks the test's own runtime: a daemon shutting down gracefully waits for its clients
    /// to answer the HTTP/2 GOAWAY ping.
    io: Option<tokio::runtime::Runtime>,
}

impl World {
    /// Starts the world with the default options (100 ms jobs).
    pub async fn start() -> World {
        match Self::start_with(WorldOptions::default()).await {
            Ok(w) => w,
            Err(e) => panic!("cannot start the world: {e}"),
        }
    }

    /// Starts the world; on error everything started so far has been torn down.
    pub async fn start_with(opts: WorldOptions) -> Result<World, Error> {
        let root = tempfile::Builder::new()
            .prefix(&opts.temp_prefix)
            .tempdir()?
            .keep();
        let mut world = World {
            root,
            opts,
            emulator: Mutex::new(None),
            controller: Mutex::new(None),
            node: Mutex::new(None),
            emulator_addr: String::new(),
            controller_metrics: String::new(),
            node_metrics: String::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .no_proxy()
                .build()?,
            io: Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("world-grpc-io")
                    .enable_all()
                    .build()?,
            ),
        };
        // From here on, an early return drops `world`, which tears down what was started.
        world.prepare_dirs()?;
        world.start_emulator().await?;
        world.write_config()?;
        for d in [Daemon::Controller, Daemon::Node] {
            world.start_daemon_on_a_free_port(d).await?;
        }
        Ok(world)
    }

    /// Starts a daemon; when the metrics port picked for it was taken by another process in
    /// between (tests run side by side), picks another and starts it again.
    async fn start_daemon_on_a_free_port(&mut self, d: Daemon) -> Result<(), Error> {
        const ATTEMPTS: usize = 3;
        let mut attempt = 1;
        loop {
            match self.start_daemon(d).await {
                Err(_)
                    if attempt < ATTEMPTS
                        && self.log(d.short()).contains("Address already in use") =>
                {
                    eprintln!(
                        "[world] {} lost its metrics port to another process; retrying",
                        d.name()
                    );
                    let port = format!("127.0.0.1:{}", free_port()?);
                    match d {
                        Daemon::Controller => self.controller_metrics = port,
                        Daemon::Node => self.node_metrics = port,
                    }
                    attempt += 1;
                }
                started => return started,
            }
        }
    }

    // ---------------------------------------------------------------- paths

    /// The private temp root (mode 0700).
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The emulator's state directory (state.json, disk images).
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }
    /// Where the emulator makes `virtio-*` links and the node looks for them.
    pub fn by_id_dir(&self) -> PathBuf {
        self.root.join("by-id")
    }
    /// The node's sysfs root: an empty tree tests fill to stand in for what a VM's kernel shows
    /// (disk serials, SCSI rescan files), which loop devices do not have.
    pub fn sysfs_root(&self) -> PathBuf {
        self.root.join("sys")
    }
    /// The kubelet root the node may use.
    pub fn kubelet_root(&self) -> PathBuf {
        self.root.join("kubelet")
    }
    /// The shared daemon config file.
    pub fn config_path(&self) -> PathBuf {
        self.root.join("everest.toml")
    }
    /// A daemon's socket.
    pub fn socket(&self, d: Daemon) -> PathBuf {
        self.root.join("sockets").join(match d {
            Daemon::Controller => "controller.sock",
            Daemon::Node => "node.sock",
        })
    }
    fn log_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// The staging path kubelet would use for `volume_id`; created, as kubelet does.
    pub fn staging_path(&self, volume_id: &str) -> String {
        let p = self
            .kubelet_root()
            .join("plugins/kubernetes.io/csi")
            .join(DRIVER_NAME)
            .join(sanitize(volume_id))
            .join("globalmount");
        std::fs::create_dir_all(&p).expect("create the staging directory");
        p.to_string_lossy().into_owned()
    }

    /// The target path kubelet would use for a filesystem volume in a pod; kubelet creates
    /// its parent and the plugin creates the path itself.
    pub fn target_path(&self, pod: &str, volume: &str) -> String {
        self.kubelet_path_in_parent(&[
            "pods",
            &sanitize(pod),
            "volumes/kubernetes.io~csi",
            &sanitize(volume),
            "mount",
        ])
    }

    /// The target path kubelet would use for a raw block volume in a pod (a file, made by the plugin).
    pub fn block_target_path(&self, pod: &str, volume: &str) -> String {
        self.kubelet_path_in_parent(&[
            "plugins/kubernetes.io/csi/volumeDevices/publish",
            &sanitize(volume),
            &sanitize(pod),
        ])
    }

    /// `parts` joined under the kubelet root, with the parent directory created, as kubelet does.
    fn kubelet_path_in_parent(&self, parts: &[&str]) -> String {
        let p: PathBuf = parts.iter().fold(self.kubelet_root(), |p, s| p.join(s));
        std::fs::create_dir_all(p.parent().expect("has a parent")).expect("create target parent");
        p.to_string_lossy().into_owned()
    }

    // ---------------------------------------------------------------- clients

    /// A connected Identity client for one daemon.
    pub async fn identity(&self, d: Daemon) -> IdentityClient<Channel> {
        IdentityClient::new(self.channel(d).await)
    }
    /// A connected Controller client.
    pub async fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel(Daemon::Controller).await)
    }
    /// A connected Node client.
    pub async fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel(Daemon::Node).await)
    }

    async fn channel(&self, d: Daemon) -> Channel {
        let sock = self.socket(d);
        match self.connect(&sock).await {
            Ok(c) => c,
            Err(e) => panic!("cannot connect to {} at {}: {e}", d.name(), sock.display()),
        }
    }

    /// What the node plugin answers to NodeGetInfo.
    pub async fn node_info(&self) -> csi::NodeGetInfoResponse {
        self.node()
            .await
            .node_get_info(csi::NodeGetInfoRequest {})
            .await
            .expect("NodeGetInfo")
            .into_inner()
    }

    /// The node ID the node plugin reports (what csi-attacher passes to ControllerPublish).
    pub async fn node_id(&self) -> String {
        self.node_info().await.node_id
    }

    /// What csi-provisioner sends as `accessibility_requirements` for a volume scheduled to
    /// this node (WaitForFirstConsumer): the node's topology from NodeGetInfo, requisite and preferred.
    pub async fn topology_requirement(&self) -> csi::TopologyRequirement {
        let topo: Vec<csi::Topology> = self
            .node_info()
            .await
            .accessible_topology
            .into_iter()
            .collect();
        csi::TopologyRequirement {
            requisite: topo.clone(),
            preferred: topo,
        }
    }

    // ---------------------------------------------------------------- emulator

    /// The emulator's base URL (`http://127.0.0.1:PORT`), the same for every service.
    pub fn emulator_url(&self) -> String {
        format!("http://{}", self.emulator_addr)
    }

    /// Sets injected faults (`PUT /_emulator/faults`).
    pub async fn set_faults(&self, error_rate: f64, throttle_rate: f64, delay_ms: u64) {
        let body = serde_json::json!({
            "error_rate": error_rate,
            "throttle_rate": throttle_rate,
            "delay_ms": delay_ms,
        });
        let resp = self
            .http
            .put(format!("{}/_emulator/faults", self.emulator_url()))
            .json(&body)
            .send()
            .await
            .expect("PUT /_emulator/faults");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "PUT /_emulator/faults: {status}: {text}"
        );
    }

    /// Rotates the cloud's keys: from now on the emulator accepts only a fresh AK/SK, which is
    /// returned (the backend's credentials file still holds the old one).
    pub async fn rotate_cloud_keys(&self) -> (String, String) {
        let (ak, sk) = (random_hex(10).to_uppercase(), random_hex(20));
        write_private(
            &self.root.join("emulator-credentials.json"),
            &serde_json::json!({"access_keys": [{"ak": ak, "sk": sk}], "users": []}).to_string(),
        )
        .expect("write the emulator's credentials");
        let resp = self
            .http
            .post(format!(
                "{}/_emulator/credentials/reload",
                self.emulator_url()
            ))
            .send()
            .await
            .expect("POST /_emulator/credentials/reload");
        assert!(
            resp.status().is_success(),
            "POST /_emulator/credentials/reload: {}",
            resp.status()
        );
        (ak, sk)
    }

    /// Replaces the backend's credentials file the way kubelet updates a mounted Secret: a new
    /// private file renamed over the old one.
    pub fn write_backend_credentials(&self, ak: &str, sk: &str) {
        let path = self.root.join("evs-credentials.json");
        let next = self.root.join("evs-credentials.json.next");
        write_private(
            &next,
            &serde_json::json!({"access_key": ak, "secret_key": sk}).to_string(),
        )
        .expect("write the new credentials");
        std::fs::rename(&next, &path).expect("replace the credentials file");
    }

    /// The emulator's whole state (`GET /_emulator/state`).
    pub async fn emulator_state(&self) -> serde_json::Value {
        let resp = self
            .http
            .get(format!("{}/_emulator/state", self.emulator_url()))
            .send()
            .await
            .expect("GET /_emulator/state");
        assert!(
            resp.status().is_success(),
            "GET /_emulator/state: {}",
            resp.status()
        );
        resp.json().await.expect("state is JSON")
    }

    /// The disks the emulator holds (each as its JSON object).
    pub async fn disks(&self) -> Vec<serde_json::Value> {
        let state = self.emulator_state().await;
        let disks = &state["disks"];
        match disks {
            serde_json::Value::Object(m) => m.values().cloned().collect(),
            serde_json::Value::Array(a) => a.clone(),
            _ => Vec::new(),
        }
    }

    /// The emulator's disk for a volume ID (`v1:<backend>:<disk id>`), if it exists.
    pub async fn disk(&self, volume_id: &str) -> Option<serde_json::Value> {
        let native = volume_id.rsplit(':').next().unwrap_or(volume_id);
        self.disks()
            .await
            .into_iter()
            .find(|d| d["id"].as_str() == Some(native))
    }

    // ---------------------------------------------------------------- metrics

    /// The Prometheus URL of a daemon.
    pub fn metrics_url(&self, d: Daemon) -> String {
        let addr = match d {
            Daemon::Controller => &self.controller_metrics,
            Daemon::Node => &self.node_metrics,
        };
        format!("http://{addr}/metrics")
    }

    /// Scrapes a daemon's metrics.
    pub async fn metrics(&self, d: Daemon) -> Result<String, reqwest::Error> {
        self.http
            .get(self.metrics_url(d))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await
    }

    // ---------------------------------------------------------------- processes

    /// Stops the node plugin (SIGTERM) and starts it again with the same config, as a
    /// DaemonSet rollout would; mounts stay, since they live in the kernel.
    pub async fn restart_node(&self) -> Result<(), Error> {
        self.restart(Daemon::Node).await
    }

    /// Stops and restarts the controller.
    pub async fn restart_controller(&self) -> Result<(), Error> {
        self.restart(Daemon::Controller).await
    }

    /// Kills a daemon with SIGKILL (no graceful shutdown, in-flight RPCs cut off) and starts it
    /// again, as after an OOM kill or a node crash.
    pub async fn crash_and_restart(&self, d: Daemon) -> Result<(), Error> {
        let old = lock(self.slot(d)).take();
        if let Some(mut p) = old {
            let status = p.kill();
            eprintln!("[world] {} killed: {status:?}", d.name());
        }
        self.start_daemon(d).await
    }

    async fn restart(&self, d: Daemon) -> Result<(), Error> {
        let old = lock(self.slot(d)).take();
        if let Some(mut p) = old {
            let status = p.stop(Duration::from_secs(15));
            eprintln!("[world] {} stopped: {status:?}", d.name());
        }
        self.start_daemon(d).await
    }

    /// The process ids of the emulator and the daemons that are running.
    pub fn pids(&self) -> Vec<u32> {
        [&self.emulator, &self.controller, &self.node]
            .into_iter()
            .filter_map(|slot| lock(slot).as_ref().map(Proc::pid))
            .collect()
    }

    /// Everything a process (`emulator`, `controller`, `node`) has written so far, stdout then stderr.
    pub fn log(&self, process: &str) -> String {
        ["stdout", "stderr"]
            .iter()
            .map(|s| {
                std::fs::read_to_string(self.log_dir().join(format!("{process}.{s}.log")))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// The last lines of every process's captured output.
    pub fn log_tails(&self, max_lines: usize) -> String {
        [&self.emulator, &self.controller, &self.node]
            .into_iter()
            .filter_map(|slot| lock(slot).as_ref().map(|p| p.log_tail(max_lines)))
            .collect()
    }

    /// Connects on the world's I/O runtime, so the connection's tasks live there.
    async fn connect(&self, sock: &Path) -> Result<Channel, tonic::transport::Error> {
        let io = self.io.as_ref().expect("the world is running");
        let sock = sock.to_path_buf();
        io.spawn(async move { connect_uds(&sock).await })
            .await
            .expect("the connect task does not panic")
    }

    // ---------------------------------------------------------------- start-up

    fn prepare_dirs(&self) -> Result<(), Error> {
        let mut b = std::fs::DirBuilder::new();
        b.mode(0o700).recursive(true);
        for d in [
            self.state_dir(),
            self.by_id_dir(),
            self.sysfs_root().join("block"),
            self.kubelet_root(),
            self.root.join("sockets"),
            self.log_dir(),
        ] {
            b.create(&d)?;
        }
        Ok(())
    }

    async fn start_emulator(&mut self) -> Result<(), Error> {
        let bin = find_binary("everest-emulator")?;
        let (ak, sk) = (random_hex(10).to_uppercase(), random_hex(20));
        write_private(
            &self.root.join("emulator-credentials.json"),
            &serde_json::json!({"access_keys": [{"ak": ak, "sk": sk}], "users": []}).to_string(),
        )?;
        write_private(
            &self.root.join("evs-credentials.json"),
            &serde_json::json!({"access_key": ak, "secret_key": sk}).to_string(),
        )?;
        let mut cmd = self.command(bin);
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--by-id-dir")
            .arg(self.by_id_dir())
            .arg("--credentials-file")
            .arg(self.root.join("emulator-credentials.json"))
            .arg("--job-latency-ms")
            .arg(self.opts.job_latency_ms.to_string())
            .arg("--project-id")
            .arg(PROJECT_ID)
            .arg("--region")
            .arg(REGION)
            .arg("--cleanup-on-exit")
            .args(&self.opts.emulator_extra);
        set_log_env(&mut cmd);
        let proc = Proc::spawn("emulator", cmd, &self.log_dir())?;
        let stdout_log = proc.stdout_log.clone();
        *lock(&self.emulator) = Some(proc);

        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = loop {
            let text = std::fs::read_to_string(&stdout_log).unwrap_or_default();
            if let Some(addr) = text
                .lines()
                .find_map(|l| l.strip_prefix("EVEREST_EMULATOR_LISTENING="))
            {
                break addr.trim().to_string();
            }
            self.check_alive("emulator")?;
            if Instant::now() > deadline {
                return Err(self.fail("the emulator printed no EVEREST_EMULATOR_LISTENING line"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.emulator_addr = addr;
        if self.opts.netns.is_some() {
            // Unreachable from here; it announces its address only once it listens.
            return Ok(());
        }
        let health = format!("{}/_emulator/health", self.emulator_url());
        loop {
            match self.http.get(&health).send().await {
                Ok(r) if r.status().is_success() => break,
                _ if Instant::now() > deadline => {
                    return Err(self.fail("the emulator's /_emulator/health never answered 200"));
                }
                _ => {}
            }
            self.check_alive("emulator")?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    fn write_config(&mut self) -> Result<(), Error> {
        self.controller_metrics = format!("127.0.0.1:{}", free_port()?);
        self.node_metrics = format!("127.0.0.1:{}", free_port()?);
        let url = self.emulator_url();
        let mut toml = String::new();
        writeln!(toml, "driver_name = \"{DRIVER_NAME}\"")?;
        writeln!(
            toml,
            "endpoint = \"unix://{}\"",
            self.socket(Daemon::Controller).display()
        )?;
        writeln!(toml, "metrics_address = \"{}\"", self.controller_metrics)?;
        writeln!(toml, "log_format = \"{}\"", self.opts.log_format)?;
        writeln!(toml, "default_backend = \"{BACKEND}\"")?;
        writeln!(toml)?;
        writeln!(toml, "[controller]")?;
        // Quick enough for a test to see the reachability gauge change.
        writeln!(toml, "backend_check_seconds = 1")?;
        for line in &self.opts.controller_extra {
            writeln!(toml, "{line}")?;
        }
        writeln!(toml)?;
        writeln!(toml, "[node]")?;
        writeln!(toml, "max_volumes_per_node = 24")?;
        writeln!(toml, "kubelet_root = \"{}\"", self.kubelet_root().display())?;
        writeln!(toml)?;
        writeln!(toml, "[node.host]")?;
        writeln!(toml, "sysfs_root = \"{}\"", self.sysfs_root().display())?;
        writeln!(toml)?;
        writeln!(toml, "[backends.{BACKEND}]")?;
        writeln!(toml, "kind = \"evs\"")?;
        writeln!(toml, "project_id = \"{PROJECT_ID}\"")?;
        writeln!(toml, "region = \"{REGION}\"")?;
        writeln!(toml, "evs_endpoint = \"{url}\"")?;
        writeln!(toml, "ecs_endpoint = \"{url}\"")?;
        writeln!(
            toml,
            "metadata_url = \"{url}/openstack/latest/meta_data.json\""
        )?;
        // The emulator speaks plain HTTP on loopback.
        writeln!(toml, "allow_insecure_http = true")?;
        writeln!(
            toml,
            "credentials_file = \"{}\"",
            self.root.join("evs-credentials.json").display()
        )?;
        writeln!(toml, "by_id_dir = \"{}\"", self.by_id_dir().display())?;
        writeln!(toml, "default_fs_type = \"{}\"", self.opts.default_fs_type)?;
        // The emulator links a disk before ControllerPublish returns; a short wait keeps the
        // "volume does not exist" cases quick.
        writeln!(toml, "device_wait_seconds = 5")?;
        writeln!(toml, "job_timeout_seconds = 120")?;
        writeln!(toml, "default_volume_type = \"SSD\"")?;
        // Calls without a topology requirement (the sidecar always sends one) land in the emulator's zone.
        writeln!(toml, "availability_zone = \"emu-az1\"")?;
        for line in &self.opts.backend_extra {
            writeln!(toml, "{line}")?;
        }
        let extra = self
            .opts
            .extra_config
            .replace("{emulator_url}", &url)
            .replace(
                "{credentials_file}",
                &self.root.join("evs-credentials.json").display().to_string(),
            );
        writeln!(toml, "{extra}")?;
        write_private(&self.config_path(), &toml)?;
        Ok(())
    }

    async fn start_daemon(&self, d: Daemon) -> Result<(), Error> {
        let bin = find_binary(d.name())?;
        let metrics = match d {
            Daemon::Controller => self.controller_metrics.clone(),
            Daemon::Node => self.node_metrics.clone(),
        };
        let mut cmd = self.command(bin);
        cmd.arg("--config")
            .arg(self.config_path())
            .arg("--endpoint")
            .arg(format!("unix://{}", self.socket(d).display()))
            .arg("--metrics-address")
            .arg(&metrics);
        set_log_env(&mut cmd);
        let short = d.short();
        let proc = Proc::spawn(short, cmd, &self.log_dir())?;
        *lock(self.slot(d)) = Some(proc);
        self.wait_ready(d, short).await
    }

    /// `program`, in the world's network namespace when it has one (`nsenter --net` execs it,
    /// so the PID is the program's own, and the mount namespace stays the host's).
    fn command(&self, program: PathBuf) -> Command {
        match &self.opts.netns {
            Some(ns) => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net=/run/netns/{ns}")).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }

    /// Polls Probe over the socket until it answers ready, the daemon exits, or the deadline passes.
    async fn wait_ready(&self, d: Daemon, short: &str) -> Result<(), Error> {
        let sock = self.socket(d);
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("socket not created yet");
        loop {
            self.check_alive(short)?;
            if sock.exists() {
                match self.connect(&sock).await {
                    Ok(ch) => {
                        match IdentityClient::new(ch).probe(csi::ProbeRequest {}).await {
                            // CSI: an absent `ready` means ready.
                            Ok(r) if r.get_ref().ready.unwrap_or(true) => return Ok(()),
                            Ok(_) => last = "Probe answered ready=false".into(),
                            Err(s) => last = format!("Probe failed: {s}"),
                        }
                    }
                    Err(e) => last = format!("connect failed: {e}"),
                }
            }
            if Instant::now() > deadline {
                return Err(self.fail(&format!(
                    "{} not ready after {READY_TIMEOUT:?}: {last}",
                    d.name()
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn slot(&self, d: Daemon) -> &Mutex<Option<Proc>> {
        match d {
            Daemon::Controller => &self.controller,
            Daemon::Node => &self.node,
        }
    }

    fn check_alive(&self, short: &str) -> Result<(), Error> {
        let slot = match short {
            "emulator" => &self.emulator,
            "controller" => &self.controller,
            _ => &self.node,
        };
        let exited = lock(slot).as_mut().and_then(|p| p.exited());
        if let Some(status) = exited {
            return Err(self.fail(&format!("{short} exited during start-up: {status}")));
        }
        Ok(())
    }

    fn fail(&self, what: &str) -> Error {
        format!("{what}\n{}", self.log_tails(40)).into()
    }

    // ---------------------------------------------------------------- teardown

    /// Tears everything down and reports what had been left behind (mounts, loop devices).
    /// `Drop` does the same; call this to check for leaks explicitly.
    pub fn shutdown(mut self) -> Leftovers {
        self.teardown()
    }

    fn teardown(&mut self) -> Leftovers {
        let mut left = Leftovers::default();
        if self.root.as_os_str().is_empty() {
            return left; // already torn down
        }
        if std::thread::panicking() || std::env::var_os("EVEREST_TEST_LOGS").is_some() {
            eprintln!(
                "[world] logs of the world in {}:\n{}",
                self.root.display(),
                self.log_tails(200)
            );
        }
        for slot in [&self.node, &self.controller] {
            if let Some(mut p) = lock(slot).take() {
                p.stop(Duration::from_secs(15));
            }
        }
        left.mounts = host::unmount_all_under(&self.root);
        if let Some(mut e) = lock(&self.emulator).take() {
            e.stop(Duration::from_secs(20));
        }
        left.loop_devices = host::detach_loops_under(&self.root)
            .into_iter()
            .map(|l| l.name)
            .collect();
        if !left.mounts.is_empty() || !left.loop_devices.is_empty() {
            eprintln!("[world] cleaned up leftovers: {left:?}");
        }
        if self.root.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.root)
        {
            eprintln!("[world] cannot remove {}: {e}", self.root.display());
        }
        self.root = PathBuf::new();
        if let Some(io) = self.io.take() {
            io.shutdown_background();
        }
        left
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// What teardown found still mounted or attached after the daemons and the emulator stopped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    /// Mount points under the root that teardown had to unmount.
    pub mounts: Vec<PathBuf>,
    /// Loop devices backed by files under the root that teardown had to detach.
    pub loop_devices: Vec<String>,
}

impl Leftovers {
    /// Nothing was left behind.
    pub fn is_clean(&self) -> bool {
        self.mounts.is_empty() && self.loop_devices.is_empty()
    }
}

/// Locks a process slot; a panic elsewhere must not stop the teardown, so poisoning is ignored.
fn lock(slot: &Mutex<Option<Proc>>) -> MutexGuard<'_, Option<Proc>> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

fn set_log_env(cmd: &mut Command) {
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    cmd.env("RUST_BACKTRACE", "1");
    // No NO_COLOR here: the processes must write plain text to a file by themselves, as they
    // do for an operator.
    cmd.env_remove("NO_COLOR");
}

/// Writes a file only its owner can read (credentials, config).
pub(crate) fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

/// `n` random bytes from the kernel, hex-encoded.
pub(crate) fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A port that was free a moment ago (the daemons need a fixed metrics address).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Makes a path segment from an ID (kubelet hashes; a readable stand-in is enough here).
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
