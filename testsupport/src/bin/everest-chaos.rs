//! `everest-chaos`: what Everest does when things go wrong, each part a figure (runs completed,
//! failures, leaks), against the real emulator and the real daemons (docs/reliability.md).
//!
//! - `concurrency`: N identical CreateVolume at once make exactly one disk; N conflicting calls
//!   on one volume (attach, expand, detach, delete at once) each answer OK, ABORTED or a
//!   precondition, and the volume ends in one consistent state;
//! - `faults`: full lifecycles (create, attach, stage, publish, write, expand, teardown, delete)
//!   with injected cloud errors, throttling and delays, each step retried as the sidecars do;
//! - `controller-kills`: create/attach/detach/delete cycles with the controller SIGKILLed at a
//!   random point of each, restarted, and the call replayed as a sidecar would;
//! - `node-restarts`: volumes mounted, `everest-node` SIGKILLed and started again: every mount
//!   still serves I/O and unstages cleanly.
//!
//! Every part ends by counting leaks: disks left in the cloud, attachments, loop devices and
//! mounts. The exit status is non-zero when any part lost, leaked or failed anything.
//! `--short` is what CI runs (`testsupport/tests/chaos_runs.rs`); the defaults are the long run.

use std::os::unix::fs::PermissionsExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use everest_testsupport::csi::{GIB, create_request, mount_cap};
use everest_testsupport::host::have_program;
use everest_testsupport::process::{Proc, find_binary};
use everest_testsupport::proto as csi;
use everest_testsupport::proto::volume_capability::access_mode::Mode;
use everest_testsupport::s3::moto_server;
use everest_testsupport::{Daemon, Lifecycle, S3Server, World, WorldOptions};
use tonic::Code;

/// Runs the failure campaign; prints a Markdown table of figures.
#[derive(Parser, Debug)]
#[command(name = "everest-chaos")]
struct Args {
    /// The short form CI runs: a few of each.
    #[arg(long)]
    short: bool,
    /// Only these parts (concurrency, faults, controller-kills, node-restarts).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Calls racing in the concurrency part (default 100, short 20).
    #[arg(long)]
    racers: Option<usize>,
    /// Lifecycles in the fault storm (default 1000, short 4).
    #[arg(long)]
    lifecycles: Option<usize>,
    /// Lifecycles running at once in the fault storm.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Share of cloud calls failing with a server error during the storm.
    #[arg(long, default_value_t = 0.2)]
    error_rate: f64,
    /// Share of cloud calls throttled (429) during the storm.
    #[arg(long, default_value_t = 0.05)]
    throttle_rate: f64,
    /// Delay added to every cloud call during the storm, in milliseconds.
    #[arg(long, default_value_t = 20)]
    delay_ms: u64,
    /// Controller kill cycles (default 200, short 3).
    #[arg(long)]
    kills: Option<usize>,
    /// Block volumes mounted when the node plugin is killed (default: as many as the node takes,
    /// its max_volumes_per_node, 24 for a KVM guest; short 3).
    #[arg(long)]
    node_volumes: Option<usize>,
    /// Object volumes (FUSE mounts through `everest-mounter`) mounted beside them (default: as
    /// many as make 50 volumes in all; short 2; 0 for none).
    #[arg(long)]
    object_volumes: Option<usize>,
    /// Seed of the random kill points (default: from the clock, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Leaves the first storm lifecycle's disk behind, and the first object volume of the
    /// node-restarts part staged: the harness's own test, which must see the leaks reported.
    #[arg(long, hide = true)]
    break_teardown: bool,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// One part's figure.
struct Figure {
    part: &'static str,
    what: String,
    runs: usize,
    completed: usize,
    leaks: Vec<String>,
    failures: Vec<String>,
    took: Duration,
}

impl Figure {
    fn ok(&self) -> bool {
        self.leaks.is_empty() && self.failures.is_empty() && self.completed == self.runs
    }

    fn row(&self) -> String {
        format!(
            "| {} | {} | {} / {} | {} | {} | {:.0} s |",
            self.part,
            self.what,
            self.completed,
            self.runs,
            self.failures.len(),
            self.leaks.len(),
            self.took.as_secs_f64()
        )
    }
}

/// A small xorshift generator: the kill points only need to be spread and reproducible.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(why) = cannot_run() {
        eprintln!("everest-chaos: {why}");
        return ExitCode::from(2);
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    eprintln!("everest-chaos: seed {seed}");
    let mut rng = Rng(seed);
    let wanted = |part: &str| args.only.is_empty() || args.only.iter().any(|p| p == part);
    let n = |given: Option<usize>, long: usize, short: usize| {
        given.unwrap_or(if args.short { short } else { long })
    };
    let mut figures = Vec::new();
    let parts: [(&str, bool); 4] = [
        ("concurrency", wanted("concurrency")),
        ("faults", wanted("faults")),
        ("controller-kills", wanted("controller-kills")),
        ("node-restarts", wanted("node-restarts")),
    ];
    for (part, on) in parts {
        if !on {
            continue;
        }
        let started = Instant::now();
        let result = match part {
            "concurrency" => concurrency(n(args.racers, 100, 20)).await,
            "faults" => faults(&args, n(args.lifecycles, 1000, 4)).await,
            "controller-kills" => controller_kills(n(args.kills, 200, 3), &mut rng).await,
            _ => {
                node_restarts(
                    args.node_volumes.or(args.short.then_some(3)),
                    args.object_volumes.or(args.short.then_some(2)),
                    args.break_teardown,
                )
                .await
            }
        };
        match result {
            Ok(mut figs) => {
                for f in &mut figs {
                    f.took = started.elapsed();
                    // As each part ends, so a long run that fails later keeps what it measured.
                    eprintln!("everest-chaos: {}", f.row());
                }
                figures.extend(figs);
            }
            Err(e) => figures.push(Figure {
                part: leak_name(part),
                what: "could not run".into(),
                runs: 1,
                completed: 0,
                leaks: Vec::new(),
                failures: vec![e.to_string()],
                took: started.elapsed(),
            }),
        }
    }
    println!("| part | what | completed | failures | leaks | time |\n|---|---|---|---|---|---|");
    for f in &figures {
        println!("{}", f.row());
    }
    let mut ok = true;
    for f in &figures {
        for line in f.failures.iter().chain(&f.leaks) {
            eprintln!("{}: {line}", f.part);
        }
        ok &= f.ok();
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn leak_name(part: &str) -> &'static str {
    match part {
        "concurrency" => "concurrency",
        "faults" => "faults",
        "controller-kills" => "controller-kills",
        _ => "node-restarts",
    }
}

fn cannot_run() -> Option<String> {
    if rustix::process::geteuid().as_raw() != 0 {
        return Some("needs root (loop devices and mounts)".into());
    }
    if !std::path::Path::new("/dev/loop-control").exists() {
        return Some("needs loop devices (/dev/loop-control)".into());
    }
    None
}

/// A controller client on `socket`, failing like a call when the daemon is not there.
async fn controller(
    socket: std::path::PathBuf,
) -> Result<csi::controller_client::ControllerClient<tonic::transport::Channel>, tonic::Status> {
    let channel = everest_testsupport::csi::connect_uds(&socket)
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect {}: {e}", socket.display())))?;
    Ok(csi::controller_client::ControllerClient::new(channel))
}

fn ext4() -> csi::VolumeCapability {
    mount_cap("ext4", Mode::SingleNodeWriter)
}

/// What the world leaves behind once its volumes should all be gone: disks in the cloud, then
/// (at shutdown) mounts and loop devices.
async fn cloud_leaks(world: &World) -> Vec<String> {
    world
        .disks()
        .await
        .into_iter()
        .map(|d| {
            format!(
                "disk {} ({}) left in the cloud",
                d["id"].as_str().unwrap_or("?"),
                d["name"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

fn host_leaks(world: World) -> Vec<String> {
    let left = world.shutdown();
    left.mounts
        .iter()
        .map(|m| format!("mount {} left behind", m.display()))
        .chain(
            left.loop_devices
                .iter()
                .map(|l| format!("loop device {l} left behind")),
        )
        .collect()
}

async fn concurrency(racers: usize) -> Result<Vec<Figure>, Error> {
    let world = World::start_with(WorldOptions::default()).await?;
    // Identical creates: one disk, one ID, the rest ABORTED or the same answer.
    let mut req = create_request("pvc-chaos-race", 10 * GIB, ext4(), &[]);
    req.accessibility_requirements = Some(world.topology_requirement().await);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..racers {
        let mut c = world.controller().await;
        let req = req.clone();
        tasks.spawn(async move { c.create_volume(req).await });
    }
    let mut ids = Vec::new();
    let mut failures = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok(r) => ids.extend(r.into_inner().volume.map(|v| v.volume_id)),
            Err(s) if s.code() == Code::Aborted => {}
            Err(s) => failures.push(format!("CreateVolume: {:?}: {}", s.code(), s.message())),
        }
    }
    ids.sort();
    ids.dedup();
    let disks = world.disks().await.len();
    if ids.len() != 1 || disks != 1 {
        failures.push(format!(
            "{racers} identical creates made {} IDs and {disks} disks",
            ids.len()
        ));
    }
    let mut first = Figure {
        part: "concurrency",
        what: format!("{racers} identical CreateVolume at once → one disk"),
        runs: 1,
        completed: usize::from(ids.len() == 1 && disks == 1),
        leaks: Vec::new(),
        failures,
        took: Duration::ZERO,
    };

    // Conflicting calls on that one volume: attach, expand, detach and delete racing. Each
    // answers OK, ABORTED (a call in flight on the volume) or FAILED_PRECONDITION (delete of an
    // attached disk); none fails otherwise, and afterwards a plain teardown leaves nothing.
    let mut life = Lifecycle::new(&world, "pvc-chaos-race", ext4(), "pod-race").await;
    life.create(10, &[]).await?;
    let id = life.id();
    let node_id = world.node_id().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..racers {
        let mut c = world.controller().await;
        let (id, node_id, cap) = (id.clone(), node_id.clone(), ext4());
        tasks.spawn(async move {
            let r = match i % 4 {
                0 => c
                    .controller_publish_volume(csi::ControllerPublishVolumeRequest {
                        volume_id: id,
                        node_id,
                        volume_capability: Some(cap),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
                1 => c
                    .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                        volume_id: id,
                        capacity_range: Some(csi::CapacityRange {
                            required_bytes: 11 * GIB,
                            limit_bytes: 0,
                        }),
                        volume_capability: Some(cap),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
                2 => c
                    .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
                        volume_id: id,
                        node_id,
                        ..Default::default()
                    })
                    .await
                    .map(drop),
                _ => c
                    .delete_volume(csi::DeleteVolumeRequest {
                        volume_id: id,
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            };
            (i % 4, r)
        });
    }
    let mut answers = [0usize; 3];
    let mut failures = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (kind, r) = r?;
        match r {
            Ok(()) => answers[0] += 1,
            Err(s) if s.code() == Code::Aborted => answers[1] += 1,
            // A delete while attached; an attach or expand of a volume a delete removed. A
            // delete or detach of a volume that is gone is OK by the spec, never NOT_FOUND.
            Err(s)
                if s.code() == Code::FailedPrecondition && kind != 2
                    || s.code() == Code::NotFound && kind < 2 =>
            {
                answers[2] += 1
            }
            Err(s) => failures.push(format!("call {kind}: {:?}: {}", s.code(), s.message())),
        }
    }
    eprintln!(
        "concurrency: conflicting calls: {} OK, {} ABORTED, {} refused by state",
        answers[0], answers[1], answers[2]
    );
    // Whatever state the race left, the sidecars' teardown converges: detach, then delete.
    life.retries = Some(Duration::from_secs(120));
    if world.disk(&id).await.is_some() {
        life.detach().await?;
        life.delete().await?;
    }
    let mut leaks = cloud_leaks(&world).await;
    leaks.extend(host_leaks(world));
    first.leaks.extend(leaks.clone());
    let second = Figure {
        part: "concurrency",
        what: format!("{racers} conflicting calls on one volume → OK, ABORTED or refused"),
        runs: 1,
        completed: usize::from(failures.is_empty()),
        leaks,
        failures,
        took: Duration::ZERO,
    };
    Ok(vec![first, second])
}

async fn one_lifecycle(world: &World, name: &str, keep_disk: bool) -> Result<(), Error> {
    let mut life = Lifecycle::new(world, name, ext4(), &format!("pod-{name}")).await;
    life.retries = Some(Duration::from_secs(300));
    life.create(1, &[]).await?;
    let result = async {
        life.attach().await?;
        life.stage().await?;
        life.publish(false).await?;
        let file = std::path::Path::new(&life.target).join("data");
        std::fs::write(&file, name.as_bytes())?;
        life.controller_expand(2).await?;
        life.node_expand(2).await?;
        if std::fs::read(&file)? != name.as_bytes() {
            return Err::<(), Error>(format!("{name}: data changed after expansion").into());
        }
        Ok(())
    }
    .await;
    // Teardown whatever happened above, as the kubelet and the sidecars would.
    life.unpublish().await?;
    life.unstage().await?;
    life.detach().await?;
    if !keep_disk {
        life.delete().await?;
    }
    result
}

async fn faults(args: &Args, lifecycles: usize) -> Result<Vec<Figure>, Error> {
    let world = std::sync::Arc::new(World::start_with(WorldOptions::default()).await?);
    world
        .set_faults(args.error_rate, args.throttle_rate, args.delay_ms)
        .await;
    let mut failures = Vec::new();
    let mut completed = 0;
    let mut next = 0;
    let mut running = tokio::task::JoinSet::new();
    // `parallel` lifecycles at a time, a new one as soon as one ends.
    while next < lifecycles || !running.is_empty() {
        while next < lifecycles && running.len() < args.parallel {
            let (world, i) = (world.clone(), next);
            let keep_disk = args.break_teardown && i == 0;
            running.spawn(async move {
                let r = one_lifecycle(&world, &format!("pvc-storm-{i}"), keep_disk).await;
                (i, r.map_err(|e| e.to_string()))
            });
            next += 1;
        }
        if let Some(done) = running.join_next().await {
            match done? {
                (_, Ok(())) => completed += 1,
                (i, Err(e)) => failures.push(format!("lifecycle {i}: {e}")),
            }
        }
    }
    let world = std::sync::Arc::into_inner(world).ok_or("the world is still shared")?;
    // The harness retries as the sidecars do, so an answer no cloud fault explains (INTERNAL,
    // UNKNOWN) would vanish in the retries: the daemons' own counts show it.
    for d in [Daemon::Controller, Daemon::Node] {
        let exposition = world.metrics(d).await?;
        for line in exposition.lines().filter(|l| {
            l.starts_with("everest_csi_operations_total{")
                && (l.contains("grpc_code=\"Internal\"") || l.contains("grpc_code=\"Unknown\""))
        }) {
            failures.push(format!("{}: {line}", d.name()));
        }
    }
    world.set_faults(0.0, 0.0, 0).await;
    let mut leaks = cloud_leaks(&world).await;
    leaks.extend(host_leaks(world));
    Ok(vec![Figure {
        part: "faults",
        what: format!(
            "full lifecycles, {:.0} % cloud errors, {:.0} % throttled, +{} ms per call",
            args.error_rate * 100.0,
            args.throttle_rate * 100.0,
            args.delay_ms
        ),
        runs: lifecycles,
        completed,
        leaks,
        failures,
        took: Duration::ZERO,
    }])
}

/// Starts `call`, SIGKILLs the controller after a random pause while the call is still in
/// flight (restarting it), then replays the call with retries until it succeeds, as a sidecar
/// does after losing its connection. `kills` counts the kills that landed mid-call (a call
/// that answered before the pause is not killed).
async fn killed_during<T, F, Fut>(
    world: &World,
    rng: &mut Rng,
    kills: &mut usize,
    what: &str,
    mut call: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>> + Send + 'static,
    T: Send + 'static,
{
    let pause = Duration::from_millis(rng.below(400));
    let in_flight = tokio::spawn(call());
    tokio::time::sleep(pause).await;
    if in_flight.is_finished()
        && let Ok(Ok(v)) = in_flight.await
    {
        return Ok(v);
    }
    world.crash_and_restart(Daemon::Controller).await?;
    *kills += 1;
    let (v, _) = everest_testsupport::csi::retry(what, Duration::from_secs(120), call).await?;
    Ok(v)
}

async fn controller_kills(cycles: usize, rng: &mut Rng) -> Result<Vec<Figure>, Error> {
    // Job latency long enough that most kills land while a job is in flight.
    let world = World::start_with(WorldOptions {
        job_latency_ms: 300,
        ..WorldOptions::default()
    })
    .await?;
    let node_id = world.node_id().await;
    let topology = world.topology_requirement().await;
    let mut failures = Vec::new();
    let mut completed = 0;
    let mut kills = 0;
    for i in 0..cycles {
        let name = format!("pvc-kill-{i}");
        let outcome: Result<(), Error> = async {
            let mut req = create_request(&name, GIB, ext4(), &[]);
            req.accessibility_requirements = Some(topology.clone());
            let vol = killed_during(&world, rng, &mut kills, "CreateVolume", || {
                let (req, socket) = (req.clone(), world.socket(Daemon::Controller));
                async move { controller(socket).await?.create_volume(req).await }
            })
            .await?
            .into_inner()
            .volume
            .ok_or("CreateVolume answered no volume")?;
            let same_name = world
                .disks()
                .await
                .into_iter()
                .filter(|d| d["name"].as_str() == Some(name.as_str()))
                .count();
            if same_name != 1 {
                return Err(format!("{name}: {same_name} disks after a killed create").into());
            }
            let id = vol.volume_id;
            let publish = csi::ControllerPublishVolumeRequest {
                volume_id: id.clone(),
                node_id: node_id.clone(),
                volume_capability: Some(ext4()),
                ..Default::default()
            };
            killed_during(&world, rng, &mut kills, "ControllerPublishVolume", || {
                let (req, socket) = (publish.clone(), world.socket(Daemon::Controller));
                async move {
                    controller(socket)
                        .await?
                        .controller_publish_volume(req)
                        .await
                }
            })
            .await?;
            let unpublish = csi::ControllerUnpublishVolumeRequest {
                volume_id: id.clone(),
                node_id: node_id.clone(),
                ..Default::default()
            };
            killed_during(&world, rng, &mut kills, "ControllerUnpublishVolume", || {
                let (req, socket) = (unpublish.clone(), world.socket(Daemon::Controller));
                async move {
                    controller(socket)
                        .await?
                        .controller_unpublish_volume(req)
                        .await
                }
            })
            .await?;
            let delete = csi::DeleteVolumeRequest {
                volume_id: id.clone(),
                ..Default::default()
            };
            killed_during(&world, rng, &mut kills, "DeleteVolume", || {
                let (req, socket) = (delete.clone(), world.socket(Daemon::Controller));
                async move { controller(socket).await?.delete_volume(req).await }
            })
            .await?;
            if world.disk(&id).await.is_some() {
                return Err(format!("{name}: the disk outlived its DeleteVolume").into());
            }
            Ok(())
        }
        .await;
        match outcome {
            Ok(()) => completed += 1,
            Err(e) => failures.push(e.to_string()),
        }
    }
    // A run whose calls all answered before their pause tested no kill at all.
    if cycles > 0 && kills == 0 {
        failures.push("no kill landed while a call was in flight".into());
    }
    let mut leaks = cloud_leaks(&world).await;
    leaks.extend(host_leaks(world));
    Ok(vec![Figure {
        part: "controller-kills",
        what: format!(
            "create/attach/detach/delete, the controller SIGKILLed mid-call {kills} times in {} calls",
            cycles * 4
        ),
        runs: cycles,
        completed,
        leaks,
        failures,
        took: Duration::ZERO,
    }])
}

/// The object side of the node-restarts part: a real S3 server (moto), and `everest-mounter`,
/// the supervisor the node hands its FUSE mounts to, as the chart runs it beside the node.
/// Its dir (under `TMPDIR`, so the test run's leak check sees a process left naming it) holds
/// the supervisor's socket and state, the node's per-volume credential files and the
/// controller's credentials file.
struct ObjectSide {
    server: S3Server,
    supervisor: Proc,
    dir: tempfile::TempDir,
}

/// The access key of the object volumes (moto takes any).
const OBJECT_AK: &str = "AKIACHAOS";
const OBJECT_SK: &str = "sk-chaos-never-shown";
/// The backend instance of the object volumes.
const OBJECTS: &str = "objects";

impl ObjectSide {
    /// Why object volumes cannot be mounted here, if they cannot.
    fn unavailable() -> Option<String> {
        if !have_program("s3fs") {
            return Some("s3fs is not installed (apt-get install s3fs)".into());
        }
        if !std::path::Path::new("/dev/fuse").exists() {
            return Some("/dev/fuse is missing".into());
        }
        moto_server().and(find_binary("everest-mounter")).err()
    }

    async fn start() -> Result<Self, Error> {
        let server = S3Server::start()?;
        let dir = tempfile::Builder::new()
            .prefix("everest-test-chaos-mounter-")
            .tempdir()?;
        let creds = dir.path().join("obs.json");
        std::fs::write(
            &creds,
            format!(r#"{{"access_key":"{OBJECT_AK}","secret_key":"{OBJECT_SK}"}}"#),
        )?;
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600))?;
        let mut cmd = std::process::Command::new(find_binary("everest-mounter")?);
        cmd.arg("--socket")
            .arg(dir.path().join("mounter.sock"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env("RUST_LOG", "info");
        let supervisor = Proc::spawn("mounter", cmd, dir.path())?;
        let side = Self {
            server,
            supervisor,
            dir,
        };
        // The node refuses a supervisor socket that is not there yet.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !side.socket().exists() {
            if Instant::now() > deadline {
                return Err("everest-mounter made no socket in 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(side)
    }

    fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("mounter.sock")
    }

    /// The `obs` backend table both daemons get.
    fn backend_table(&self) -> String {
        let dir = self.dir.path();
        format!(
            "[backends.{OBJECTS}]\nkind = \"obs\"\nendpoint = \"{}\"\ncredentials_file = \"{}\"\n\
             runtime_dir = \"{}\"\nsupervisor_socket = \"{}\"\n",
            self.server.endpoint(),
            dir.join("obs.json").display(),
            dir.join("run").display(),
            self.socket().display()
        )
    }

    /// Buckets left on the server (moto answers an unsigned ListBuckets).
    async fn leaks(&self) -> Vec<String> {
        let listing = match reqwest::get(format!("{}/", self.server.endpoint())).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => return vec![format!("cannot list the S3 server's buckets: {e}")],
        };
        listing
            .split("<Name>")
            .skip(1)
            .filter_map(|s| s.split_once("</Name>").map(|(name, _)| name))
            .map(|b| format!("bucket {b} left on the S3 server"))
            .collect()
    }

    /// The mounters running (each names its credentials file in this dir), as `(pid, command)`.
    fn mounters(&self) -> Vec<(u32, String)> {
        let needle = self.dir.path().display().to_string();
        let supervisor = self.supervisor.pid();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if pid != supervisor && cmdline.contains(&needle) {
                found.push((pid, cmdline.trim().to_owned()));
            }
        }
        found
    }

    /// Mounters still running once every object volume was unstaged; they are killed after
    /// being counted.
    fn mounter_leaks(&self) -> Vec<String> {
        self.mounters()
            .into_iter()
            .map(|(pid, cmdline)| {
                if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
                format!("mounter {pid} ({cmdline}) still running")
            })
            .collect()
    }

    /// The NodeStage secrets of every object volume.
    fn stage_secrets() -> std::collections::HashMap<String, String> {
        [("access.key", OBJECT_AK), ("secret.key", OBJECT_SK)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

/// The volumes of the node-restarts part: block ones (as many as the node takes unless told)
/// and object ones (by default as many more as make 50 in all).
async fn node_restarts(
    block: Option<usize>,
    object: Option<usize>,
    broken: bool,
) -> Result<Vec<Figure>, Error> {
    let mut skipped = None;
    let objects = match ObjectSide::unavailable() {
        _ if object == Some(0) => None,
        // Counted by the test run's summary; a failure under CI=true.
        Some(why) => {
            let why = format!("everest-chaos node-restarts: no object volumes: {why}");
            everest_testsupport::skip(&why);
            skipped = Some(why);
            None
        }
        None => Some(ObjectSide::start().await?),
    };
    let opts = WorldOptions {
        extra_config: objects
            .as_ref()
            .map(ObjectSide::backend_table)
            .unwrap_or_default(),
        ..WorldOptions::default()
    };
    let world = World::start_with(opts).await?;
    // A node holds as many disks as it says (the cloud refuses more): fill it, or as asked.
    let most = usize::try_from(world.node_info().await.max_volumes_per_node).unwrap_or(0);
    let block = block.unwrap_or(most);
    if block > most {
        return Err(format!("{block} block volumes asked, but the node takes {most}").into());
    }
    let object = match &objects {
        Some(_) => object.unwrap_or(50usize.saturating_sub(block)),
        None => 0,
    };
    let kind = |i: usize| {
        if i < block {
            format!("block volume {i}")
        } else {
            format!("object volume {i}")
        }
    };
    let mut lives = Vec::new();
    for i in 0..block + object {
        let mut life = if i < block {
            Lifecycle::new(&world, &format!("pvc-mounted-{i}"), ext4(), "pod-n").await
        } else {
            let cap = mount_cap("", Mode::MultiNodeMultiWriter);
            let mut life = Lifecycle::new(&world, &format!("pvc-objects-{i}"), cap, "pod-n").await;
            life.stage_secrets = ObjectSide::stage_secrets();
            life
        };
        life.retries = Some(Duration::from_secs(120));
        let params: &[(&str, &str)] = if i < block {
            &[]
        } else {
            &[("everest.io/backend", OBJECTS)]
        };
        life.create(1, params).await?;
        life.attach().await?;
        life.stage().await?;
        life.publish(false).await?;
        std::fs::write(
            std::path::Path::new(&life.target).join("before"),
            format!("{i}"),
        )?;
        lives.push(life);
    }
    world.crash_and_restart(Daemon::Node).await?;
    let mut failures = Vec::new();
    let mut serving = vec![false; lives.len()];
    for (i, life) in lives.iter().enumerate() {
        let dir = std::path::Path::new(&life.target);
        let serves = std::fs::read_to_string(dir.join("before")).ok() == Some(i.to_string())
            && std::fs::write(dir.join("after"), b"after").is_ok()
            && std::fs::read(dir.join("after")).ok().as_deref() == Some(b"after".as_slice());
        // The restarted node finds the volume in place: stage and publish again are no-ops.
        let again = async {
            life.stage().await?;
            life.publish(false).await
        }
        .await;
        match (serves, again) {
            (true, Ok(())) => serving[i] = true,
            (false, _) => failures.push(format!("{} stopped serving I/O", kind(i))),
            (_, Err(s)) => failures.push(format!("{}: {:?}: {}", kind(i), s.code(), s.message())),
        }
    }
    // Re-adopted, not mounted a second time: one mounter per object volume.
    if let Some(side) = &objects {
        let mounters = side.mounters().len();
        if mounters != object {
            failures.push(format!(
                "{mounters} mounters run for {object} object volumes after the restart"
            ));
        }
    }
    let mut completed = 0;
    for (i, life) in lives.iter().enumerate() {
        // The harness's own test: an object volume left staged must show as leaks.
        if broken && i == block {
            continue;
        }
        let down = async {
            life.unpublish().await?;
            life.unstage().await?;
            life.detach().await?;
            life.delete().await
        }
        .await;
        match down {
            Ok(()) if serving[i] => completed += 1,
            Ok(()) => {}
            Err(s) => failures.push(format!("{}: {:?}: {}", kind(i), s.code(), s.message())),
        }
    }
    let mut leaks = cloud_leaks(&world).await;
    if let Some(side) = &objects {
        leaks.extend(side.leaks().await);
        leaks.extend(side.mounter_leaks());
    }
    leaks.extend(host_leaks(world));
    if let Some(mut side) = objects {
        side.supervisor.stop(Duration::from_secs(15));
    }
    let mut what = format!(
        "{block} block and {object} object volumes mounted, everest-node SIGKILLed and restarted"
    );
    if let Some(why) = skipped {
        what.push_str(&format!(" ({why})"));
    }
    Ok(vec![Figure {
        part: "node-restarts",
        what,
        runs: block + object,
        completed,
        leaks,
        failures,
        took: Duration::ZERO,
    }])
}
