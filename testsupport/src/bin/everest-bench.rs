//! `everest-bench`: how fast Everest is, each figure a ratio against a baseline measured in the
//! same run on the same machine (docs/performance.md explains each one and holds the results).
//!
//! Against the real emulator and the real daemons (build them with `--release` and point
//! `EVEREST_BIN_DIR` at them for the published figures). Needs root and loop devices for the
//! node figures. `--quick` runs a small version of everything in about a minute.

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
    /// A small run of every figure (about a minute).
    #[arg(long)]
    quick: bool,
    /// Volumes in the burst (default: 200, or 40 with --quick).
    #[arg(long)]
    volumes: Option<usize>,
    /// Calls in flight during the burst, as csi-provisioner's --worker-threads.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// How long each emulated cloud job takes, in milliseconds.
    #[arg(long, default_value_t = 500)]
    job_latency_ms: u64,
    /// Calls per latency sample (default: 2000, or 300 with --quick).
    #[arg(long)]
    samples: Option<usize>,
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
    fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {:.2} | {} |",
            self.name, self.ours, self.baseline, self.ratio, self.goal
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
    let volumes = args.volumes.unwrap_or(if args.quick { 40 } else { 200 });
    let job = Duration::from_millis(args.job_latency_ms);
    let world = World::start_with(WorldOptions {
        job_latency_ms: args.job_latency_ms,
        temp_prefix: "everest-bench-".into(),
        ..WorldOptions::default()
    })
    .await
    .map_err(|e| format!("cannot start the world: {e}"))?;
    let mut figures = Vec::new();
    let rss_start = rss_of(&world);

    let (rpc, grpc_floor) = rpc_latency(&world, samples).await?;
    figures.extend(rpc);
    figures.extend(single_operations(&world, job).await?);
    figures.extend(burst(&world, volumes, args.in_flight, job).await?);
    let node = if skip_unless_root_and_loop() || !have_program("mkfs.ext4") {
        eprintln!("node figures skipped: they need root, loop devices and mkfs.ext4");
        false
    } else {
        figures.extend(stage_against_mkfs_and_mount(&world, if args.quick { 3 } else { 7 }).await?);
        figures.push(stats_against_statvfs(&world, samples, grpc_floor).await?);
        true
    };
    let rss_end = rss_of(&world);

    let leftovers = world.shutdown();
    if !leftovers.is_clean() {
        return Err(format!("the run left things behind: {leftovers:?}").into());
    }

    let mut out = String::new();
    out.push_str(&format!(
        "Everest benchmark ({}; {} samples per latency, {volumes} volumes at {} in flight, {} ms cloud jobs{})\n\n",
        if args.quick { "quick" } else { "full" },
        samples,
        args.in_flight,
        args.job_latency_ms,
        if node { "" } else { "; node figures skipped" },
    ));
    out.push_str("| figure | Everest | baseline | ratio | goal |\n|---|---|---|---|---|\n");
    for f in &figures {
        out.push_str(&f.row());
        out.push('\n');
    }
    out.push_str(&format!(
        "\nResident memory (VmRSS): controller {} KiB at start, {} KiB at the end; node {} KiB at start, {} KiB at the end.\n",
        rss_start.0, rss_end.0, rss_start.1, rss_end.1
    ));
    Ok(out)
}

/// VmRSS in KiB of the controller and the node (0 if unreadable).
fn rss_of(world: &World) -> (u64, u64) {
    let pids = world.pids();
    let rss = |pid: Option<&u32>| -> u64 {
        pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    };
    // pids(): emulator, controller, node.
    (rss(pids.get(1)), rss(pids.get(2)))
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
        figures.push(Figure {
            name: format!("{name} p50 (client-side)"),
            ours: ms(p50),
            baseline: format!("{} (bare tonic Probe)", ms(floor50)),
            ratio: ratio(p50, floor50),
            goal: "driver adds ≤ 0.3 ms".into(),
        });
        figures.push(Figure {
            name: format!("{name} p99 (client-side)"),
            ours: ms(p99),
            baseline: format!("{} (bare tonic Probe)", ms(floor99)),
            ratio: ratio(p99, floor99),
            goal: "driver adds ≤ 1 ms".into(),
        });
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
        .map(|(name, d)| Figure {
            name: format!("{name}, one alone"),
            ours: ms(d),
            baseline: format!("{} (the cloud job itself)", ms(job)),
            ratio: ratio(d, job),
            goal: "≤ 1.1 ×".into(),
        })
        .collect())
}

async fn one_of_each(world: &World, name: &str) -> Result<Vec<(&'static str, Duration)>, Error> {
    let mut v = Lifecycle::new(
        world,
        name,
        mount_cap("ext4", Mode::SingleNodeWriter),
        "pod-bench",
    )
    .await;
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
    let mut calls_by_operation = cloud_calls(world).await?;
    for (op, before) in &calls_before {
        if let Some(after) = calls_by_operation.get_mut(op) {
            *after -= before;
        }
    }
    let calls: f64 = calls_by_operation.values().sum();
    let breakdown = calls_by_operation
        .iter()
        .filter(|(_, n)| **n > 0.0)
        .map(|(op, calls)| format!("{op} {:.2}", calls / n as f64))
        .collect::<Vec<_>>()
        .join(", ");
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
        Figure {
            name: format!("{n} × CreateVolume, {in_flight} in flight"),
            ours: ms(created),
            baseline: format!("{} (ideal: ⌈n / in flight⌉ × job)", ms(ideal)),
            ratio: ratio(created, ideal),
            goal: "≤ 1.2 ×".into(),
        },
        Figure {
            name: format!("{n} × DeleteVolume, {in_flight} in flight"),
            ours: ms(deleted),
            baseline: format!("{} (ideal)", ms(ideal)),
            ratio: ratio(deleted, ideal),
            goal: "≤ 1.2 ×".into(),
        },
        Figure {
            name: format!("cloud API calls per created volume ({breakdown})"),
            ours: format!("{:.2}", calls / n as f64),
            baseline: "1 (the create call alone)".into(),
            ratio: calls / n as f64,
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

/// A hand-run `mkfs.ext4` + `mount` of a fresh 10 GiB loop device, timed; cleaned up after.
fn mkfs_and_mount_by_hand(dir: &Path) -> Result<Duration, Error> {
    let image = dir.join("hand.img");
    let f = std::fs::File::create(&image)?;
    f.set_len(10 * GIB as u64)?;
    drop(f);
    let dev = sh(
        "losetup",
        &["--find", "--show", &image.display().to_string()],
    )?;
    let mnt = dir.join("hand-mnt");
    std::fs::create_dir_all(&mnt)?;
    let t = Instant::now();
    let made = sh("mkfs.ext4", &["-q", &dev])
        .and_then(|_| sh("mount", &["-t", "ext4", &dev, &mnt.display().to_string()]));
    let took = t.elapsed();
    if made.is_ok() {
        sh("umount", &[&mnt.display().to_string()])?;
    }
    sh("losetup", &["-d", &dev])?;
    std::fs::remove_file(&image)?;
    made.map(|_| took)
}

async fn stage_against_mkfs_and_mount(world: &World, rounds: usize) -> Result<Vec<Figure>, Error> {
    let scratch = tempfile::tempdir()?;
    let mut hand = Vec::new();
    let mut ours = Vec::new();
    for i in 0..rounds {
        hand.push(mkfs_and_mount_by_hand(scratch.path())?);
        let mut v = Lifecycle::new(
            world,
            &format!("bench-stage-{i}"),
            mount_cap("ext4", Mode::SingleNodeWriter),
            "pod-bench",
        )
        .await;
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
    let (h, o) = (quantile(&mut hand, 0.5), quantile(&mut ours, 0.5));
    Ok(vec![Figure {
        name: format!("NodeStage + NodePublish of a fresh 10 GiB disk (median of {rounds})"),
        ours: ms(o),
        baseline: format!("{} (mkfs.ext4 + mount by hand)", ms(h)),
        ratio: ratio(o, h),
        goal: "≤ 1.1 ×".into(),
    }])
}

/// NodeGetVolumeStats against what it cannot avoid: a bare gRPC round trip plus one statvfs.
async fn stats_against_statvfs(world: &World, n: usize, grpc: Duration) -> Result<Figure, Error> {
    let mut v = Lifecycle::new(
        world,
        "bench-stats",
        mount_cap("ext4", Mode::SingleNodeWriter),
        "pod-bench",
    )
    .await;
    v.bring_up(1).await;
    let target = v.target.clone();
    let mut base = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        rustix::fs::statvfs(target.as_str())?;
        base.push(t.elapsed());
    }
    let mut ours = time_calls(n, || async { v.stats().await.map(drop) }).await?;
    v.unpublish().await?;
    v.unstage().await?;
    v.detach().await?;
    v.delete().await?;
    let (b, o) = (quantile(&mut base, 0.5) + grpc, quantile(&mut ours, 0.5));
    Ok(Figure {
        name: "NodeGetVolumeStats p50 (client-side)".into(),
        ours: ms(o),
        baseline: format!("{} (bare gRPC round trip + statvfs of the path)", ms(b)),
        ratio: ratio(o, b),
        goal: "≤ 1 ms".into(),
    })
}
