//! `everest-bench`: how fast Everest is, each figure a ratio against a baseline measured in the
//! same run on the same machine (docs/performance.md explains each one and holds the results).
//!
//! Against the real emulator and the real daemons (build them with `--release` and point
//! `EVEREST_BIN_DIR` at them for the published figures). Needs root and loop devices for the
//! node figures. `--quick` runs a small version of everything in a few minutes.
//! `scripts/bench.sh` builds what it needs and runs this and the object mounters' bench: every
//! figure of docs/performance.md in one command.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use everest_testsupport::csi::{GIB, connect_uds, mount_cap};
use everest_testsupport::host::{have_program, mount_at};
use everest_testsupport::proto as csi;
use everest_testsupport::proto::volume_capability::access_mode::Mode;
use everest_testsupport::{Daemon, Lifecycle, World, WorldOptions, skip_unless_root_and_loop};

/// Measures Everest against baselines taken in the same run; prints a Markdown report.
#[derive(Parser, Debug)]
#[command(name = "everest-bench")]
struct Args {
    /// A small run of every figure (a few minutes).
    #[arg(long)]
    quick: bool,
    /// Volumes in the burst (default: 1000, or 40 with --quick).
    #[arg(long)]
    volumes: Option<usize>,
    /// Calls in flight during the burst, as csi-provisioner's --worker-threads (default: 64,
    /// or 16 with --quick). The growth figures run at most as many as the node takes.
    #[arg(long)]
    in_flight: Option<usize>,
    /// How long each emulated cloud job takes, in milliseconds (default: 2000, or 500 with
    /// --quick).
    #[arg(long)]
    job_latency_ms: Option<u64>,
    /// Calls per latency sample (default: 2000, or 300 with --quick).
    #[arg(long)]
    samples: Option<usize>,
    /// Extra mounts on the node for the many-mounts figures (default: 500, or 50 with --quick).
    #[arg(long)]
    mounts: Option<usize>,
    /// Volume counts of the growth figures, each through the whole lifecycle (default:
    /// 10,100,1000, or 10,40 with --quick).
    #[arg(long, value_delimiter = ',')]
    scales: Vec<usize>,
    /// Attaches at once, spread over this machine's server and two more of the emulated
    /// zone (default: 60; at most 72, 24 to a server).
    #[arg(long, default_value_t = 60)]
    attaches: usize,
    /// Seconds each fio job runs (default: 10, or 2 with --quick).
    #[arg(long)]
    io_seconds: Option<u64>,
    /// Size of each fio job's file in MiB (default: 1024, or 128 with --quick).
    #[arg(long)]
    io_size_mib: Option<u64>,
    /// Only these parts (rpc, cloud, node, io, growth, file); the driver's own time and memory
    /// are always reported, over what ran.
    #[arg(long, value_delimiter = ',', value_parser = ["rpc", "cloud", "node", "io", "growth", "file"])]
    only: Vec<String>,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("everest-bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One row of the report.
struct Figure {
    name: String,
    ours: String,
    baseline: String,
    ratio: f64,
    goal: String,
}

impl Figure {
    /// A time against a baseline time (`baseline_is` says what it is).
    fn time(
        name: String,
        ours: Duration,
        baseline: Duration,
        baseline_is: &str,
        goal: &str,
    ) -> Self {
        Self {
            name,
            ours: ms(ours),
            baseline: format!("{} ({baseline_is})", ms(baseline)),
            ratio: ratio(ours, baseline),
            goal: goal.into(),
        }
    }

    fn row(&self) -> String {
        // Small ratios (the driver's share of a call that waits on the cloud) keep their digits.
        let ratio = if self.ratio >= 0.1 {
            format!("{:.2}", self.ratio)
        } else {
            format!("{:.2e}", self.ratio)
        };
        format!(
            "| {} | {} | {} | {ratio} | {} |",
            self.name, self.ours, self.baseline, self.goal
        )
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// The `q`-quantile of `samples` (sorted in place).
fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[i.min(samples.len() - 1)]
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

async fn run(args: &Args) -> Result<String, Error> {
    let samples = args.samples.unwrap_or(if args.quick { 300 } else { 2000 });
    let volumes = args.volumes.unwrap_or(if args.quick { 40 } else { 1000 });
    let in_flight = args.in_flight.unwrap_or(if args.quick { 16 } else { 64 });
    let job_latency_ms = args
        .job_latency_ms
        .unwrap_or(if args.quick { 500 } else { 2000 });
    let mounts = args.mounts.unwrap_or(if args.quick { 50 } else { 500 });
    let scales = match (&args.scales[..], args.quick) {
        ([], false) => vec![10, 100, 1000],
        ([], true) => vec![10, 40],
        (given, _) => given.to_vec(),
    };
    let io_seconds = args.io_seconds.unwrap_or(if args.quick { 2 } else { 10 });
    let io_size = args
        .io_size_mib
        .unwrap_or(if args.quick { 128 } else { 1024 });
    let rounds = if args.quick { 3 } else { 7 };
    let job = Duration::from_millis(job_latency_ms);
    let world = std::sync::Arc::new(
        World::start_with(WorldOptions {
            job_latency_ms,
            temp_prefix: "everest-bench-".into(),
            emulator_extra: OTHER_SERVERS
                .iter()
                .flat_map(|s| ["--remote-server".to_owned(), (*s).to_owned()])
                .collect(),
            ..WorldOptions::default()
        })
        .await
        .map_err(|e| format!("cannot start the world: {e}"))?,
    );
    let mut figures = Vec::new();
    let mut notes = Vec::new();
    let rss_start = rss_of(&world);

    let wanted = |part: &str| args.only.is_empty() || args.only.iter().any(|p| p == part);
    let (rpc, grpc_floor) = rpc_latency(&world, samples).await?;
    if wanted("rpc") {
        figures.extend(rpc);
        for daemon in [Daemon::Controller, Daemon::Node] {
            figures.push(start_to_ready(&world, daemon, rounds).await?);
        }
    }
    let most = usize::try_from(world.node_info().await.max_volumes_per_node).unwrap_or(1);
    if wanted("cloud") {
        figures.extend(single_operations(&world, job).await?);
        figures.extend(burst(&world, volumes, in_flight, job).await?);
        let servers = 1 + OTHER_SERVERS.len();
        if args.attaches > most * servers {
            return Err(format!(
                "--attaches: at most {} ({most} to a server)",
                most * servers
            )
            .into());
        }
        figures.extend(attach_burst(&world, args.attaches, job).await?);
    }
    let node = !skip_unless_root_and_loop() && have_program("mkfs.ext4");
    let mut growth = Vec::new();
    if !node {
        notes.push("node figures skipped: they need root, loop devices and mkfs.ext4".to_owned());
    }
    if node && wanted("node") {
        let (stage, stage_figures) =
            stage_against_mkfs_and_mount(&world, rounds, grpc_floor).await?;
        figures.extend(stage_figures);
        let (stats, figure) = stats_against_statvfs(&world, samples, grpc_floor).await?;
        figures.push(figure);
        figures.extend(with_many_mounts(&world, mounts, rounds, samples, stage, stats).await?);
    }
    if node && wanted("io") {
        if have_program("fio") {
            figures.extend(io_against_hand_mount(&world, io_size, io_seconds).await?);
        } else {
            notes
                .push("I/O figures skipped: fio is not installed (apt-get install fio)".to_owned());
        }
    }
    if node && wanted("growth") {
        // As many at once as the node takes, at most the burst's width.
        for n in scales {
            growth.push(lifecycles_at_scale(&world, n, in_flight.min(most)).await?);
        }
    }
    let rss_end = rss_of(&world);
    let own = driver_time(&world).await?;
    if wanted("file") {
        match everest_testsupport::nfs::nfs_server_unavailable() {
            None => figures.extend(file_figures(job_latency_ms, rounds).await?),
            Some(why) => notes.push(format!("file figures skipped: {why}")),
        }
    }

    let world = std::sync::Arc::into_inner(world).ok_or("a task still holds the world")?;
    let leftovers = world.shutdown();
    if !leftovers.is_clean() {
        return Err(format!("the run left things behind: {leftovers:?}").into());
    }

    let mut out = String::new();
    out.push_str(&format!(
        "Everest benchmark ({}; {} samples per latency, {volumes} volumes at {} in flight, {} ms cloud jobs)\n\n",
        if args.quick { "quick" } else { "full" },
        samples,
        in_flight,
        job_latency_ms,
    ));
    for note in &notes {
        eprintln!("everest-bench: {note}");
        out.push_str(&format!("- {note}\n"));
    }
    if !notes.is_empty() {
        out.push('\n');
    }
    out.push_str("| figure | Everest | baseline | ratio | goal |\n|---|---|---|---|---|\n");
    for f in &figures {
        out.push_str(&f.row());
        out.push('\n');
    }
    out.push_str(&format!(
        "\nResident memory (VmRSS; its own: RssAnon, the rest is the executable's pages from the page cache): controller {} at start, {} at the end; node {} at start, {} at the end.\n",
        rss_start.0, rss_end.0, rss_start.1, rss_end.1
    ));
    out.push_str(
        "\nThe driver's own time per RPC, measured in the daemons over the whole run (each call's latency less its waits on the cloud, host tools and the kernel; p50 and p99 as the histogram bucket they fall in); the ratio is the driver's share of the calls' whole time.\n\n| figure | Everest | baseline | ratio | goal |\n|---|---|---|---|---|\n",
    );
    for f in &own {
        out.push_str(&f.row());
        out.push('\n');
    }
    if let Some(first) = growth.first() {
        let per = |s: &Scale| s.wall / s.volumes.max(1) as u32;
        out.push_str(&format!(
            "\nGrowth: volumes through the whole lifecycle (create, attach, stage, publish, unpublish, unstage, detach, delete), {} at once; the ratio is the time per volume against the first scale's.\n\n",
            first.at_once
        ));
        out.push_str("| volumes | wall time | per volume | ratio | cloud calls per volume | controller RSS after | node RSS after |\n|---|---|---|---|---|---|---|\n");
        for s in &growth {
            out.push_str(&format!(
                "| {} | {} | {} | {:.2} | {:.2} | {} | {} |\n",
                s.volumes,
                ms(s.wall),
                ms(per(s)),
                ratio(per(s), per(first)),
                s.calls,
                s.rss.0,
                s.rss.1
            ));
        }
    }
    Ok(out)
}

/// A read-write ext4 volume for the pod the bench plays, on its way through the lifecycle.
async fn ext4_volume<'w>(world: &'w World, name: &str) -> Lifecycle<'w> {
    Lifecycle::new(
        world,
        name,
        mount_cap("ext4", Mode::SingleNodeWriter),
        "pod-bench",
    )
    .await
}

/// A daemon's resident memory in KiB: in all (VmRSS), and of that its own (RssAnon: heap and
/// stacks); the rest is the executable's pages mapped from the page cache (RssFile), shared
/// with every copy of the binary and given back under memory pressure.
#[derive(Clone, Copy, Default)]
struct Resident {
    all: u64,
    own: u64,
}

impl std::fmt::Display for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} KiB ({} KiB its own)", self.all, self.own)
    }
}

/// The controller's and the node's resident memory (0 where unreadable).
fn rss_of(world: &World) -> (Resident, Resident) {
    let pids = world.pids();
    let resident = |pid: Option<&u32>| -> Resident {
        let status = pid
            .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
            .unwrap_or_default();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        Resident {
            all: field("VmRSS:"),
            own: field("RssAnon:"),
        }
    };
    // pids(): emulator, controller, node.
    (resident(pids.get(1)), resident(pids.get(2)))
}

// ------------------------------------------------------------------ P1: RPC latency

/// A bare tonic Identity server: the floor any gRPC plugin on a unix socket pays.
#[derive(Default)]
struct BareIdentity;

#[tonic::async_trait]
impl csi::identity_server::Identity for BareIdentity {
    async fn get_plugin_info(
        &self,
        _: tonic::Request<csi::GetPluginInfoRequest>,
    ) -> Result<tonic::Response<csi::GetPluginInfoResponse>, tonic::Status> {
        Ok(tonic::Response::new(csi::GetPluginInfoResponse {
            name: "bare.example".into(),
            vendor_version: "0".into(),
            ..Default::default()
        }))
    }
    async fn get_plugin_capabilities(
        &self,
        _: tonic::Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<tonic::Response<csi::GetPluginCapabilitiesResponse>, tonic::Status> {
        Ok(tonic::Response::new(Default::default()))
    }
    async fn probe(
        &self,
        _: tonic::Request<csi::ProbeRequest>,
    ) -> Result<tonic::Response<csi::ProbeResponse>, tonic::Status> {
        Ok(tonic::Response::new(csi::ProbeResponse {
            ready: Some(true),
        }))
    }
}

/// Times `n` calls of `call`, one after another.
async fn time_calls<F, Fut>(n: usize, mut call: F) -> Result<Vec<Duration>, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    // Warm the connection first.
    for _ in 0..20 {
        call().await?;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        call().await?;
        v.push(t.elapsed());
    }
    Ok(v)
}

/// The figures, and the bare gRPC round trip (p50) later figures build their baselines on.
async fn rpc_latency(world: &World, n: usize) -> Result<(Vec<Figure>, Duration), Error> {
    // The baseline: the same client and transport against a server that does nothing.
    let dir = tempfile::tempdir()?;
    let sock = dir.path().join("bare.sock");
    let listener = tokio::net::UnixListener::bind(&sock)?;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(csi::identity_server::IdentityServer::new(BareIdentity))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    let bare = csi::identity_client::IdentityClient::new(connect_uds(&sock).await?);
    let mut floor = time_calls(n, || {
        let mut c = bare.clone();
        async move { c.probe(csi::ProbeRequest {}).await.map(drop) }
    })
    .await?;
    let floor50 = quantile(&mut floor, 0.5);
    let floor99 = quantile(&mut floor, 0.99);
    server.abort();

    let mut figures = Vec::new();
    let mut push = |name: &str, mut v: Vec<Duration>| {
        let p50 = quantile(&mut v, 0.5);
        let p99 = quantile(&mut v, 0.99);
        figures.push(Figure::time(
            format!("{name} p50 (client-side)"),
            p50,
            floor50,
            "bare tonic Probe",
            "driver adds ≤ 0.3 ms",
        ));
        figures.push(Figure::time(
            format!("{name} p99 (client-side)"),
            p99,
            floor99,
            "bare tonic Probe",
            "driver adds ≤ 1 ms",
        ));
    };
    let identity = world.identity(Daemon::Node).await;
    push(
        "Probe (node)",
        time_calls(n, || {
            let mut c = identity.clone();
            async move { c.probe(csi::ProbeRequest {}).await.map(drop) }
        })
        .await?,
    );
    let node = world.node().await;
    push(
        "NodeGetCapabilities",
        time_calls(n, || {
            let mut c = node.clone();
            async move {
                c.node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
                    .await
                    .map(drop)
            }
        })
        .await?,
    );
    let controller = world.controller().await;
    push(
        "ControllerGetCapabilities",
        time_calls(n, || {
            let mut c = controller.clone();
            async move {
                c.controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
                    .await
                    .map(drop)
            }
        })
        .await?,
    );
    Ok((figures, floor50))
}

// ------------------------------------------------------------------ P2: cloud operations

/// Rounds of one create, attach, detach and delete before the timed one: the client learns how
/// long each kind of wait takes (see `CloudClient::wait_pace`), and the figure is the steady
/// state of a controller that has been running a while.
const WARM_UP_ROUNDS: usize = 5;

/// One create, attach, detach and delete, each timed, after the warm-up rounds.
async fn single_operations(world: &World, job: Duration) -> Result<Vec<Figure>, Error> {
    let mut timed = Vec::new();
    for round in 0..=WARM_UP_ROUNDS {
        timed = one_of_each(world, &format!("bench-single-{round}")).await?;
    }
    Ok(timed
        .into_iter()
        .map(|(name, d)| {
            Figure::time(
                format!("{name}, one alone"),
                d,
                job,
                "the cloud job itself",
                "≤ 1.1 ×",
            )
        })
        .collect())
}

async fn one_of_each(world: &World, name: &str) -> Result<Vec<(&'static str, Duration)>, Error> {
    let mut v = ext4_volume(world, name).await;
    let mut timed = Vec::new();
    let t = Instant::now();
    v.create(1, &[]).await?;
    timed.push(("CreateVolume", t.elapsed()));
    let t = Instant::now();
    v.attach().await?;
    timed.push(("ControllerPublishVolume", t.elapsed()));
    let t = Instant::now();
    v.detach().await?;
    timed.push(("ControllerUnpublishVolume", t.elapsed()));
    let t = Instant::now();
    v.delete().await?;
    timed.push(("DeleteVolume", t.elapsed()));
    Ok(timed)
}

/// The controller's `everest_cloud_api_requests_total`, summed by operation.
async fn cloud_calls(world: &World) -> Result<std::collections::BTreeMap<String, f64>, Error> {
    let text = world.metrics(Daemon::Controller).await?;
    let mut by_operation = std::collections::BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("everest_cloud_api_requests_total{"))
    {
        let operation = line
            .split("operation=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("?");
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *by_operation.entry(operation.to_owned()).or_insert(0.0) += value;
    }
    Ok(by_operation)
}

/// The cloud calls made between two counts, per volume of `n`: in all, and each operation's
/// share (`create_volume 1.00, list_volumes 1.17`).
fn calls_per_volume(
    before: &std::collections::BTreeMap<String, f64>,
    mut after: std::collections::BTreeMap<String, f64>,
    n: usize,
) -> (f64, String) {
    for (op, calls) in &mut after {
        *calls -= before.get(op).copied().unwrap_or(0.0);
    }
    let share = |calls: f64| calls / n.max(1) as f64;
    let breakdown = after
        .iter()
        .filter(|(_, calls)| **calls > 0.0)
        .map(|(op, calls)| format!("{op} {:.2}", share(*calls)))
        .collect::<Vec<_>>()
        .join(", ");
    (share(after.values().sum()), breakdown)
}

async fn burst(
    world: &World,
    n: usize,
    in_flight: usize,
    job: Duration,
) -> Result<Vec<Figure>, Error> {
    let calls_before = cloud_calls(world).await?;
    let controller = world.controller().await;
    let topology = world.topology_requirement().await;
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(in_flight));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut c = controller.clone();
        let sem = sem.clone();
        let mut req = everest_testsupport::csi::create_request(
            &format!("bench-burst-{i}"),
            GIB,
            mount_cap("ext4", Mode::SingleNodeWriter),
            &[],
        );
        req.accessibility_requirements = Some(topology.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.expect("open semaphore");
            c.create_volume(req)
                .await
                .map(|r| r.into_inner().volume.map(|v| v.volume_id))
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await??.ok_or("CreateVolume answered no volume")?);
    }
    let created = t.elapsed();
    let (calls, breakdown) = calls_per_volume(&calls_before, cloud_calls(world).await?, n);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for id in ids {
        let mut c = controller.clone();
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.expect("open semaphore");
            c.delete_volume(csi::DeleteVolumeRequest {
                volume_id: id,
                ..Default::default()
            })
            .await
            .map(drop)
        }));
    }
    for task in tasks {
        task.await??;
    }
    let deleted = t.elapsed();
    let ideal = job * n.div_ceil(in_flight) as u32;
    Ok(vec![
        Figure::time(
            format!("{n} × CreateVolume, {in_flight} in flight"),
            created,
            ideal,
            "ideal: ⌈n / in flight⌉ × job",
            "≤ 1.2 ×",
        ),
        Figure::time(
            format!("{n} × DeleteVolume, {in_flight} in flight"),
            deleted,
            ideal,
            "ideal",
            "≤ 1.2 ×",
        ),
        Figure {
            name: format!("cloud API calls per created volume ({breakdown})"),
            ours: format!("{calls:.2}"),
            baseline: "1 (the create call alone)".into(),
            ratio: calls,
            goal: "≤ 2.5".into(),
        },
    ])
}

// ------------------------------------------------------------------ P3, P7: the node

/// Runs a command, failing with its output.
fn sh(program: &str, args: &[&str]) -> Result<String, Error> {
    let out = std::process::Command::new(program).args(args).output()?;
    if !out.status.success() {
        return Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// What a hand-run stage and publish of a fresh 10 GiB loop device took, step by step.
struct HandSteps {
    /// `mkfs.ext4` + `mount`: the baseline.
    mkfs_and_mount: Duration,
    /// `blkid -p` of the blank device, which Everest runs first so it never formats data.
    blkid: Duration,
    /// `mount --bind` into a pod's directory, NodePublish's work.
    bind: Duration,
}

/// Stages and publishes a fresh 10 GiB loop device by hand with the tools Everest runs, each
/// step timed; cleaned up after.
fn stage_by_hand(dir: &Path) -> Result<HandSteps, Error> {
    let image = dir.join("hand.img");
    let f = std::fs::File::create(&image)?;
    f.set_len(10 * GIB as u64)?;
    drop(f);
    let dev = sh(
        "losetup",
        &["--find", "--show", &image.display().to_string()],
    )?;
    let (mnt, pod) = (dir.join("hand-mnt"), dir.join("hand-pod"));
    std::fs::create_dir_all(&mnt)?;
    std::fs::create_dir_all(&pod)?;
    let (mnt_s, pod_s) = (mnt.display().to_string(), pod.display().to_string());
    let mut mounted = Vec::new();
    let steps = (|| -> Result<HandSteps, Error> {
        let t = Instant::now();
        // A blank device: blkid finds nothing and exits 2.
        let _ = std::process::Command::new("blkid")
            .args(["-p", "-o", "export", &dev])
            .output()?;
        let blkid = t.elapsed();
        let t = Instant::now();
        sh("mkfs.ext4", &["-q", &dev])?;
        sh("mount", &["-t", "ext4", &dev, &mnt_s])?;
        let mkfs_and_mount = t.elapsed();
        mounted.push(mnt_s.clone());
        let t = Instant::now();
        sh("mount", &["--bind", &mnt_s, &pod_s])?;
        let bind = t.elapsed();
        mounted.push(pod_s.clone());
        Ok(HandSteps {
            mkfs_and_mount,
            blkid,
            bind,
        })
    })();
    for m in mounted.iter().rev() {
        sh("umount", &[m])?;
    }
    sh("losetup", &["-d", &dev])?;
    std::fs::remove_file(&image)?;
    steps
}

/// NodeStage + NodePublish of fresh disks against a hand-run `mkfs.ext4` + `mount`, and where
/// the difference goes (the steps Everest adds, run by hand). Also answers Everest's median,
/// the base of the many-mounts figure.
async fn stage_against_mkfs_and_mount(
    world: &World,
    rounds: usize,
    grpc: Duration,
) -> Result<(Duration, Vec<Figure>), Error> {
    let scratch = tempfile::tempdir()?;
    let (mut base, mut blkid, mut bind) = (Vec::new(), Vec::new(), Vec::new());
    let mut ours = Vec::new();
    for i in 0..rounds {
        let hand = stage_by_hand(scratch.path())?;
        base.push(hand.mkfs_and_mount);
        blkid.push(hand.blkid);
        bind.push(hand.bind);
        ours.extend(stage_rounds(world, &format!("bench-stage-{i}"), 1).await?);
    }
    let (h, o) = (quantile(&mut base, 0.5), quantile(&mut ours, 0.5));
    let (blkid, bind) = (quantile(&mut blkid, 0.5), quantile(&mut bind, 0.5));
    // The same steps by hand: the baseline, plus the probe, plus the bind mount, plus the two
    // calls' round trips. What Everest takes beyond that is its own.
    let steps = h + blkid + bind + 2 * grpc;
    Ok((
        o,
        vec![
            Figure {
                name: format!(
                    "NodeStage + NodePublish of a fresh 10 GiB disk (median of {rounds})"
                ),
                ours: ms(o),
                baseline: format!("{} (mkfs.ext4 + mount by hand)", ms(h)),
                ratio: ratio(o, h),
                goal: "≤ 1.1 ×".into(),
            },
            Figure {
                name: format!(
                    "… the same against every step it runs, by hand (blkid {}, mkfs.ext4 + mount {}, mount --bind {}, 2 gRPC round trips {})",
                    ms(blkid),
                    ms(h),
                    ms(bind),
                    ms(2 * grpc)
                ),
                ours: ms(o),
                baseline: format!("{} (the steps by hand)", ms(steps)),
                ratio: ratio(o, steps),
                goal: "—".into(),
            },
        ],
    ))
}

/// NodeGetVolumeStats against what it cannot avoid: a bare gRPC round trip plus one statvfs.
/// Also answers Everest's p50, the base of the many-mounts figure.
async fn stats_against_statvfs(
    world: &World,
    n: usize,
    grpc: Duration,
) -> Result<(Duration, Figure), Error> {
    let mut base = Vec::with_capacity(n);
    let dir = world.root().display().to_string();
    for _ in 0..n {
        let t = Instant::now();
        rustix::fs::statvfs(dir.as_str())?;
        base.push(t.elapsed());
    }
    let mut ours = stats_samples(world, "bench-stats", n).await?;
    let (b, o) = (quantile(&mut base, 0.5) + grpc, quantile(&mut ours, 0.5));
    Ok((
        o,
        Figure::time(
            "NodeGetVolumeStats p50 (client-side)".into(),
            o,
            b,
            "bare gRPC round trip + statvfs of a path",
            "≤ 1 ms",
        ),
    ))
}

/// The times of `rounds` NodeStage + NodePublish of fresh 10 GiB disks, each created and
/// attached before and torn down after its timing.
async fn stage_rounds(world: &World, prefix: &str, rounds: usize) -> Result<Vec<Duration>, Error> {
    let mut ours = Vec::new();
    for i in 0..rounds {
        let mut v = ext4_volume(world, &format!("{prefix}-{i}")).await;
        v.create(10, &[]).await?;
        v.attach().await?;
        let t = Instant::now();
        v.stage().await?;
        v.publish(false).await?;
        ours.push(t.elapsed());
        if mount_at(Path::new(&v.target)).is_none() {
            return Err("NodePublish left no mount at the target".into());
        }
        v.unpublish().await?;
        v.unstage().await?;
        v.detach().await?;
        v.delete().await?;
    }
    Ok(ours)
}

/// `n` NodeGetVolumeStats of a published 1 GiB volume, one after another.
async fn stats_samples(world: &World, name: &str, n: usize) -> Result<Vec<Duration>, Error> {
    let mut v = ext4_volume(world, name).await;
    v.bring_up(1).await;
    let samples = time_calls(n, || async { v.stats().await.map(drop) }).await;
    v.unpublish().await?;
    v.unstage().await?;
    v.detach().await?;
    v.delete().await?;
    samples
}

// ------------------------------------------------------------------ P7: many mounts

/// Bind mounts of one directory, made for a measurement and undone when dropped (also when
/// the measurement fails), so the run leaves none behind.
struct Binds {
    scratch: tempfile::TempDir,
    made: Vec<std::path::PathBuf>,
}

impl Binds {
    fn make(n: usize) -> Result<Self, Error> {
        let scratch = tempfile::Builder::new()
            .prefix("everest-bench-binds-")
            .tempdir()?;
        let source = scratch.path().join("source");
        std::fs::create_dir(&source)?;
        let mut binds = Self {
            scratch,
            made: Vec::with_capacity(n),
        };
        for i in 0..n {
            let at = binds.scratch.path().join(format!("m{i}"));
            std::fs::create_dir(&at)?;
            sh(
                "mount",
                &[
                    "--bind",
                    &source.display().to_string(),
                    &at.display().to_string(),
                ],
            )?;
            binds.made.push(at);
        }
        Ok(binds)
    }
}

impl Drop for Binds {
    fn drop(&mut self) {
        for at in self.made.drain(..).rev() {
            if let Err(e) = sh("umount", &[&at.display().to_string()]) {
                eprintln!("everest-bench: cannot undo a bind mount: {e}");
            }
        }
    }
}

/// NodeStage + NodePublish and NodeGetVolumeStats with `mounts` more mounts on the node than
/// when `stage_alone` and `stats_alone` were measured: both should stay flat.
async fn with_many_mounts(
    world: &World,
    mounts: usize,
    rounds: usize,
    samples: usize,
    stage_alone: Duration,
    stats_alone: Duration,
) -> Result<Vec<Figure>, Error> {
    let binds = Binds::make(mounts)?;
    let total = everest_testsupport::host::mounts().len();
    let mut stage = stage_rounds(world, "bench-many", rounds).await?;
    let mut stats = stats_samples(world, "bench-many-stats", samples).await?;
    drop(binds);
    let (stage, stats) = (quantile(&mut stage, 0.5), quantile(&mut stats, 0.5));
    Ok(vec![
        Figure {
            name: format!(
                "NodeStage + NodePublish with {mounts} more mounts on the node ({total} in all; median of {rounds})"
            ),
            ours: ms(stage),
            baseline: format!("{} (the same without them)", ms(stage_alone)),
            ratio: ratio(stage, stage_alone),
            goal: "flat: ≤ 1.1 ×".into(),
        },
        Figure::time(
            format!("NodeGetVolumeStats p50 with {mounts} more mounts (client-side)"),
            stats,
            stats_alone,
            "the same without them",
            "≤ 1 ms",
        ),
    ])
}

// ------------------------------------------------------------------ P4: I/O through the mount

/// A filesystem made and mounted by hand on a fresh loop device of `gib` GiB: the baseline
/// Everest's mounts are measured against. Undone when dropped.
struct HandMount {
    dir: tempfile::TempDir,
    device: String,
    mounted: bool,
}

impl HandMount {
    fn make(gib: u64) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("everest-bench-hand-")
            .tempdir()?;
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)?.set_len(gib * GIB as u64)?;
        let device = sh(
            "losetup",
            &["--find", "--show", &image.display().to_string()],
        )?;
        let mut hand = Self {
            dir,
            device,
            mounted: false,
        };
        sh("mkfs.ext4", &["-q", &hand.device])?;
        std::fs::create_dir(hand.mount_point())?;
        sh(
            "mount",
            &[
                "-t",
                "ext4",
                &hand.device,
                &hand.mount_point().display().to_string(),
            ],
        )?;
        hand.mounted = true;
        Ok(hand)
    }

    fn mount_point(&self) -> std::path::PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for HandMount {
    fn drop(&mut self) {
        if self.mounted
            && let Err(e) = sh("umount", &[&self.mount_point().display().to_string()])
        {
            eprintln!("everest-bench: cannot unmount the baseline filesystem: {e}");
        }
        if let Err(e) = sh("losetup", &["-d", &self.device]) {
            eprintln!("everest-bench: cannot detach the baseline loop device: {e}");
        }
    }
}

/// One fio job in `dir`: its bandwidth (KiB/s) and IOPS.
fn fio(dir: &Path, rw: &str, bs: &str, size_mib: u64, seconds: u64) -> Result<(f64, f64), Error> {
    let out = sh(
        "fio",
        &[
            "--name=bench",
            &format!("--directory={}", dir.display()),
            &format!("--rw={rw}"),
            &format!("--bs={bs}"),
            &format!("--size={size_mib}M"),
            "--direct=1",
            "--ioengine=psync",
            "--time_based",
            &format!("--runtime={seconds}"),
            "--output-format=json",
        ],
    )?;
    let report: serde_json::Value = serde_json::from_str(&out)?;
    let side = if rw.contains("read") { "read" } else { "write" };
    let job = &report["jobs"][0][side];
    match (job["bw"].as_f64(), job["iops"].as_f64()) {
        (Some(bw), Some(iops)) if bw > 0.0 => Ok((bw, iops)),
        _ => Err(format!("fio {rw} reported no {side} bandwidth: {job}").into()),
    }
}

/// Sequential and random I/O through a published Everest mount against the same filesystem
/// on the same kind of device mounted by hand, each job run on both back to back.
async fn io_against_hand_mount(
    world: &World,
    size_mib: u64,
    seconds: u64,
) -> Result<Vec<Figure>, Error> {
    let hand = HandMount::make(10)?;
    let mut v = ext4_volume(world, "bench-io").await;
    v.bring_up(10).await;
    let mut figures = Vec::new();
    let jobs = [
        ("write", "1M", "sequential write, 1 MiB blocks", true),
        ("read", "1M", "sequential read, 1 MiB blocks", true),
        ("randwrite", "4k", "random write, 4 KiB blocks", false),
        ("randread", "4k", "random read, 4 KiB blocks", false),
    ];
    let measured = (|| -> Result<(), Error> {
        for (rw, bs, what, by_bandwidth) in jobs {
            let (hand_bw, hand_iops) = fio(&hand.mount_point(), rw, bs, size_mib, seconds)?;
            let (bw, iops) = fio(Path::new(&v.target), rw, bs, size_mib, seconds)?;
            let (ours, base, unit) = if by_bandwidth {
                (bw / 1024.0, hand_bw / 1024.0, "MiB/s")
            } else {
                (iops, hand_iops, "IOPS")
            };
            figures.push(Figure {
                name: format!("fio {what}, direct I/O (through the pod's mount)"),
                ours: format!("{ours:.0} {unit}"),
                baseline: format!("{base:.0} {unit} (the same filesystem mounted by hand)"),
                ratio: ours / base.max(1e-9),
                goal: "≥ 0.95".into(),
            });
        }
        Ok(())
    })();
    v.unpublish().await?;
    v.unstage().await?;
    v.detach().await?;
    v.delete().await?;
    drop(hand);
    measured.map(|()| figures)
}

// ------------------------------------------------------------------ P6: start-up

/// Starts another copy of a daemon on the world's configuration (own socket and metrics port)
/// and times how long it takes from spawn to a Probe that answers ready; the baseline is the
/// same binary started for `--version`, the floor of exec, loading and argument parsing.
async fn start_to_ready(world: &World, daemon: Daemon, rounds: usize) -> Result<Figure, Error> {
    let bin = everest_testsupport::process::find_binary(daemon.name())?;
    let dir = tempfile::tempdir()?;
    let mut ready = Vec::new();
    let mut floor = Vec::new();
    for round in 0..rounds {
        let t = Instant::now();
        let status = std::process::Command::new(&bin)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .status()?;
        floor.push(t.elapsed());
        if !status.success() {
            return Err(format!("{} --version failed: {status}", daemon.name()).into());
        }
        let socket = dir.path().join(format!("ready-{round}.sock"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd = std::process::Command::new(&bin);
        cmd.arg("--config")
            .arg(world.config_path())
            .arg("--endpoint")
            .arg(format!("unix://{}", socket.display()))
            .arg("--metrics-address")
            .arg(format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn");
        let t = Instant::now();
        let mut proc =
            everest_testsupport::process::Proc::spawn(&format!("ready-{round}"), cmd, dir.path())?;
        let took = loop {
            if t.elapsed() > Duration::from_secs(10) {
                proc.stop(Duration::from_secs(5));
                return Err(format!("{} was not ready within 10 s", daemon.name()).into());
            }
            if socket.exists()
                && let Ok(ch) = connect_uds(&socket).await
                && let Ok(r) = csi::identity_client::IdentityClient::new(ch)
                    .probe(csi::ProbeRequest {})
                    .await
                && r.get_ref().ready.unwrap_or(true)
            {
                break t.elapsed();
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        };
        proc.stop(Duration::from_secs(15));
        ready.push(took);
    }
    let (ours, base) = (quantile(&mut ready, 0.5), quantile(&mut floor, 0.5));
    Ok(Figure {
        name: format!(
            "{} start to Probe-ready (median of {rounds})",
            daemon.name()
        ),
        ours: ms(ours),
        baseline: format!("{} (the same binary run for --version)", ms(base)),
        ratio: ratio(ours, base),
        goal: "≤ 50 ms".into(),
    })
}

// ------------------------------------------------------------------ growth

/// What one scale of the growth figures measured.
struct Scale {
    volumes: usize,
    at_once: usize,
    wall: Duration,
    calls: f64,
    rss: (Resident, Resident),
}

/// `n` volumes each through the whole lifecycle (create, attach, stage, publish, unpublish,
/// unstage, detach, delete), `in_flight` at once (at most what the node takes).
async fn lifecycles_at_scale(
    world: &std::sync::Arc<World>,
    n: usize,
    in_flight: usize,
) -> Result<Scale, Error> {
    let before: f64 = cloud_calls(world).await?.values().sum();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(in_flight));
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (sem, world) = (sem.clone(), world.clone());
        tasks.spawn(async move {
            let _permit = sem.acquire().await.expect("open semaphore");
            let mut v = ext4_volume(&world, &format!("bench-scale-{n}-{i}")).await;
            v.create(1, &[]).await?;
            v.attach().await?;
            v.stage().await?;
            v.publish(false).await?;
            v.unpublish().await?;
            v.unstage().await?;
            v.detach().await?;
            v.delete().await
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let wall = t.elapsed();
    let after: f64 = cloud_calls(world).await?.values().sum();
    Ok(Scale {
        volumes: n,
        at_once: in_flight,
        wall,
        calls: (after - before) / n as f64,
        rss: rss_of(world),
    })
}

// ------------------------------------------------------------------ P1: in the server

/// The value of `label` in a metric line's label set.
fn label<'a>(line: &'a str, label: &str) -> Option<&'a str> {
    line.split(&format!("{label}=\"")).nth(1)?.split('"').next()
}

/// The driver's own time per RPC, from the daemons' `everest_csi_driver_duration_seconds`
/// (each call's latency less its waits on the cloud, host tools and the kernel) over the whole
/// run: p50 and p99 as the bucket bounds they fall in, and the driver's share of the calls'
/// whole time (`_sum` of both histograms).
async fn driver_time(world: &World) -> Result<Vec<Figure>, Error> {
    use std::collections::BTreeMap;
    #[derive(Default)]
    struct Method {
        buckets: BTreeMap<u64, f64>, // le in ns → cumulative count
        count: f64,
        own: f64,
        whole: f64,
    }
    let mut methods: BTreeMap<String, Method> = BTreeMap::new();
    for daemon in [Daemon::Controller, Daemon::Node] {
        for line in world.metrics(daemon).await?.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let Some(method) = label(series, "method") else {
                continue;
            };
            let m = methods.entry(method.to_owned()).or_default();
            if series.starts_with("everest_csi_driver_duration_seconds_bucket{") {
                let le = label(series, "le").unwrap_or("+Inf");
                let ns = le
                    .parse::<f64>()
                    .map_or(u64::MAX, |s| (s * 1e9).round() as u64);
                *m.buckets.entry(ns).or_default() += value;
            } else if series.starts_with("everest_csi_driver_duration_seconds_count{") {
                m.count += value;
            } else if series.starts_with("everest_csi_driver_duration_seconds_sum{") {
                m.own += value;
            } else if series.starts_with("everest_csi_operation_duration_seconds_sum{") {
                m.whole += value;
            }
        }
    }
    let bound = |m: &Method, q: f64| -> String {
        let wanted = q * m.count;
        match m.buckets.iter().find(|(_, n)| **n >= wanted) {
            Some((ns, _)) if *ns != u64::MAX => format!("≤ {:.2} ms", *ns as f64 / 1e6),
            _ => "> 100 ms".into(),
        }
    };
    Ok(methods
        .iter()
        .filter(|(_, m)| m.count > 0.0)
        .map(|(method, m)| Figure {
            name: format!(
                "{method}: the driver's own time, in the server ({} calls)",
                m.count
            ),
            ours: format!("p50 {}, p99 {}", bound(m, 0.5), bound(m, 0.99)),
            baseline: format!(
                "{} per call in all (mean)",
                ms(Duration::from_secs_f64(m.whole / m.count))
            ),
            ratio: m.own / m.whole.max(1e-12),
            goal: "p50 ≤ 0.3 ms, p99 ≤ 1 ms".into(),
        })
        .collect())
}

// ------------------------------------------------------------------ P2: attaches at once

/// Two more servers of the emulated zone: other machines, which take disks with no effect on
/// this host, so attaches across nodes can be measured on one machine.
const OTHER_SERVERS: [&str; 2] = [
    "3c9d2e7a-1f40-4b8e-9c61-0a5b7d2e4f81",
    "8e41b6d0-5a2c-4f97-b3e8-6d1c0f9a7b52",
];

/// `n` ControllerPublish at once, round-robin over this machine's server and the others,
/// then as many ControllerUnpublish, against the ideal of one cloud job each (all in flight
/// together), with the cloud calls per attach.
async fn attach_burst(world: &World, n: usize, job: Duration) -> Result<Vec<Figure>, Error> {
    let mut lives = Vec::new();
    for i in 0..n {
        let mut v = ext4_volume(world, &format!("bench-attach-{i}")).await;
        v.create(1, &[]).await?;
        lives.push(v);
    }
    let before = cloud_calls(world).await?;
    let t = Instant::now();
    let mut attaching = tokio::task::JoinSet::new();
    let nodes: Vec<String> = std::iter::once(lives.first().map(|v| v.node_id.clone()))
        .flatten()
        .chain(OTHER_SERVERS.iter().map(|s| (*s).to_owned()))
        .collect();
    for (i, v) in lives.iter_mut().enumerate() {
        v.node_id = nodes[i % nodes.len()].clone();
    }
    for (i, v) in lives.iter().enumerate() {
        let (mut c, id, node_id, cap) = (
            world.controller().await,
            v.id(),
            v.node_id.clone(),
            v.cap.clone(),
        );
        attaching.spawn(async move {
            let req = csi::ControllerPublishVolumeRequest {
                volume_id: id,
                node_id,
                volume_capability: Some(cap),
                ..Default::default()
            };
            c.controller_publish_volume(req)
                .await
                .map(|r| (i, r.into_inner().publish_context))
        });
    }
    while let Some(done) = attaching.join_next().await {
        let (i, context) = done??;
        lives[i].publish_context = context;
    }
    let attached = t.elapsed();
    let between = cloud_calls(world).await?;
    let (attach_calls, attach_breakdown) = calls_per_volume(&before, between.clone(), n);
    let t = Instant::now();
    let mut detaching = tokio::task::JoinSet::new();
    for v in &lives {
        let (mut c, id, node_id) = (world.controller().await, v.id(), v.node_id.clone());
        detaching.spawn(async move {
            c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
                volume_id: id,
                node_id,
                ..Default::default()
            })
            .await
            .map(drop)
        });
    }
    while let Some(done) = detaching.join_next().await {
        done??;
    }
    let detached = t.elapsed();
    let (detach_calls, detach_breakdown) = calls_per_volume(&between, cloud_calls(world).await?, n);
    for v in &lives {
        v.delete().await?;
    }
    Ok(vec![
        Figure::time(
            format!(
                "{n} × ControllerPublishVolume at once ({} nodes)",
                nodes.len().min(n)
            ),
            attached,
            job,
            "ideal: one job",
            "≤ 1.2 ×",
        ),
        Figure::time(
            format!("{n} × ControllerUnpublishVolume at once"),
            detached,
            job,
            "ideal: one job",
            "≤ 1.2 ×",
        ),
        Figure {
            name: format!("cloud API calls per attach ({attach_breakdown})"),
            ours: format!("{attach_calls:.2}"),
            baseline: "1 (the attach call alone)".into(),
            ratio: attach_calls,
            goal: "≤ 2.5".into(),
        },
        Figure {
            name: format!("cloud API calls per detach ({detach_breakdown})"),
            ours: format!("{detach_calls:.2}"),
            baseline: "1 (the detach call alone)".into(),
            ratio: detach_calls,
            goal: "≤ 2.5".into(),
        },
    ])
}

// ------------------------------------------------------------------ file volumes

/// The export ganesha serves the file figures' directories and shares under.
const FILE_PSEUDO: &str = "/exports";
/// The `sfs` backend instance of the file figures.
const FILES: &str = "files";

/// The `sfs` instance for `server`: directories under `k8s/` of its export (mode `subdir`), and
/// SFS Turbo shares the emulator makes under `shares/` (mode `share`).
fn sfs_table(server: &everest_testsupport::NfsServer) -> String {
    format!(
        "[backends.{FILES}]\nkind = \"sfs\"\nserver = \"{addr}\"\nexport = \"{FILE_PSEUDO}\"\n\
         base_dir = \"k8s\"\nproject_id = \"{project}\"\nregion = \"{region}\"\n\
         credentials_file = \"{{credentials_file}}\"\nsfs_turbo_endpoint = \"{{emulator_url}}\"\n\
         iam_endpoint = \"{{emulator_url}}\"\navailability_zone = \"emu-az1\"\nvpc_id = \"vpc-1\"\n\
         subnet_id = \"subnet-1\"\nsecurity_group_id = \"sg-1\"\nallow_insecure_http = true\n",
        addr = server.address(),
        project = everest_testsupport::world::PROJECT_ID,
        region = everest_testsupport::world::REGION,
    )
}

/// File volumes' control plane, in a world of their own beside a real nfs-ganesha (the node's
/// figures need a kernel NFS client, which these machines lack): CreateVolume and DeleteVolume
/// of a directory volume against a one-shot user-space NFS session (`nfs-ls` of the export:
/// connect, mount, list), and of a share volume against the emulated SFS Turbo job.
async fn file_figures(job_latency_ms: u64, rounds: usize) -> Result<Vec<Figure>, Error> {
    let root = tempfile::Builder::new()
        .prefix("everest-bench-nfs-")
        .tempdir()?;
    for dir in ["k8s", "shares"] {
        std::fs::create_dir(root.path().join(dir))?;
    }
    let server = everest_testsupport::NfsServer::start(root.path(), FILE_PSEUDO)?;
    let world = World::start_with(WorldOptions {
        job_latency_ms,
        temp_prefix: "everest-bench-".into(),
        netns: Some(server.netns().to_owned()),
        emulator_extra: vec![
            "--nfs-export-root".into(),
            root.path().join("shares").display().to_string(),
            "--nfs-export-path".into(),
            format!("{FILE_PSEUDO}/shares"),
        ],
        extra_config: sfs_table(&server),
        ..WorldOptions::default()
    })
    .await?;
    let mut floor = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        server.nfs_ls("")?;
        floor.push(t.elapsed());
    }
    let mut figures = Vec::new();
    for mode in ["subdir", "share"] {
        let (mut created, mut deleted) = (Vec::new(), Vec::new());
        for i in 0..rounds {
            let mut v = Lifecycle::new(
                &world,
                &format!("bench-{mode}-{i}"),
                mount_cap("", Mode::MultiNodeMultiWriter),
                "pod-bench",
            )
            .await;
            let t = Instant::now();
            v.create(
                1,
                &[("everest.io/backend", FILES), ("everest.io/sfs-mode", mode)],
            )
            .await?;
            created.push(t.elapsed());
            let t = Instant::now();
            v.delete().await?;
            deleted.push(t.elapsed());
        }
        let (created, deleted) = (quantile(&mut created, 0.5), quantile(&mut deleted, 0.5));
        let (base, base_is, goal) = if mode == "subdir" {
            (
                quantile(&mut floor, 0.5),
                "one nfs-ls of the export: connect, mount, list",
                "—",
            )
        } else {
            (
                Duration::from_millis(job_latency_ms),
                "the SFS Turbo job itself",
                "≤ 1.1 ×",
            )
        };
        for (call, took) in [("CreateVolume", created), ("DeleteVolume", deleted)] {
            figures.push(Figure::time(
                format!("file ({mode}) {call}, one alone (median of {rounds})"),
                took,
                base,
                base_is,
                goal,
            ));
        }
    }
    let leftovers = world.shutdown();
    drop(server);
    if !leftovers.is_clean() {
        return Err(format!("the file figures left things behind: {leftovers:?}").into());
    }
    Ok(figures)
}
