//! `everest-demo`: one block volume through its whole life against the local cloud, with
//! realistic 1 s cloud jobs, each step timed; then the daemons' operation counters, and a
//! check that nothing is left behind. Run as root (loop devices, mounts): `scripts/demo.sh`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use everest_testsupport::csi::{GIB, mount_cap};
use everest_testsupport::host::{self, fs_size, have_program, mount_at};
use everest_testsupport::proto::volume_capability::access_mode::Mode;
use everest_testsupport::{Daemon, Lifecycle, World, WorldOptions, skip_unless_root_and_loop};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    if std::env::args().len() > 1 {
        // No options: anything on the command line is a question, not a request to run.
        println!(
            "usage: everest-demo\n\nWalks one block volume through create, attach, stage, publish, write/read,\nonline expand and teardown against the local cloud emulator, then prints the\ndaemons' operation counts. Needs root. Usually started by scripts/demo.sh."
        );
        return ExitCode::SUCCESS;
    }
    if skip_unless_root_and_loop() {
        eprintln!("everest-demo needs root and loop devices: run `sudo bash scripts/demo.sh`");
        return ExitCode::from(2);
    }
    if !have_program("mkfs.xfs") {
        eprintln!("everest-demo needs mkfs.xfs: apt-get install -y xfsprogs");
        return ExitCode::from(2);
    }
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nDEMO FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Prints a step, runs it, prints how long it took.
macro_rules! step {
    ($n:expr, $what:expr, $body:expr) => {{
        let start = Instant::now();
        print!("[{:>2}] {:<58}", $n, $what);
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        let out = $body;
        println!(" {:>8.2?}", start.elapsed());
        out
    }};
}

async fn run() -> Result<(), Error> {
    println!(
        "Everest demo: one EVS block volume, xfs, through the calls of kubelet and the sidecars"
    );
    println!(
        "(local cloud emulator with 1 s asynchronous jobs; real loop devices, mkfs and mounts)\n"
    );
    let start = Instant::now();
    let world = step!(0, "start emulator, everest-controller, everest-node", {
        World::start_with(WorldOptions {
            job_latency_ms: 1000,
            temp_prefix: "everest-demo-".into(),
            ..WorldOptions::default()
        })
        .await?
    });
    let root: PathBuf = world.root().to_path_buf();
    let state_dir = world.state_dir();
    println!(
        "     emulator at {}, temp root {}",
        world.emulator_url(),
        root.display()
    );

    let mut v = Lifecycle::new(
        &world,
        "pvc-demo",
        mount_cap("xfs", Mode::SingleNodeWriter),
        "demo-pod",
    )
    .await;
    println!("     node ID {}\n", v.node_id);

    let vol = step!(
        1,
        "CreateVolume 10 GiB (csi-provisioner)",
        v.create(10, &[]).await?
    );
    println!(
        "     volume {} ({} GiB)",
        vol.volume_id,
        vol.capacity_bytes / GIB
    );
    let ctx = step!(
        2,
        "ControllerPublishVolume (csi-attacher)",
        v.attach().await?
    );
    println!("     publish context {ctx:?}");
    step!(
        3,
        "NodeStageVolume: find device, mkfs.xfs, mount (kubelet)",
        v.stage().await?
    );
    let staged = mount_at(Path::new(&v.staging)).ok_or("staging path is not mounted")?;
    println!(
        "     {} mounted at staging as {}",
        staged.source, staged.fs_type
    );
    step!(
        4,
        "NodePublishVolume: bind into the pod (kubelet)",
        v.publish(false).await?
    );

    let file = Path::new(&v.target).join("hello.txt");
    let text = "hello from an Everest volume\n";
    step!(5, "write and read back a file in the pod's volume", {
        std::fs::write(&file, text)?;
        let back = std::fs::read_to_string(&file)?;
        if back != text {
            return Err(format!("read back {back:?}, wrote {text:?}").into());
        }
    });
    let before = fs_size(Path::new(&v.target))?.total_bytes;
    let resp = step!(
        6,
        "ControllerExpandVolume to 12 GiB (csi-resizer)",
        v.controller_expand(12).await?
    );
    println!(
        "     disk now {} GiB, node expansion required: {}",
        resp.capacity_bytes / GIB,
        resp.node_expansion_required
    );
    step!(
        7,
        "NodeExpandVolume: xfs_growfs online (kubelet)",
        v.node_expand(12).await?
    );
    let after = fs_size(Path::new(&v.target))?.total_bytes;
    println!(
        "     filesystem {:.2} GiB -> {:.2} GiB, file still reads {:?}",
        before as f64 / GIB as f64,
        after as f64 / GIB as f64,
        std::fs::read_to_string(&file)?.trim_end()
    );
    if after <= before {
        return Err("the filesystem did not grow".into());
    }
    let stats = step!(8, "NodeGetVolumeStats (kubelet)", v.stats().await?);
    for u in &stats.usage {
        let unit = everest_testsupport::proto::volume_usage::Unit::try_from(u.unit)
            .map(|u| u.as_str_name())
            .unwrap_or("?");
        println!(
            "     {unit:<6} total {:>12} used {:>10} available {:>12}",
            u.total, u.used, u.available
        );
    }
    step!(9, "NodeUnpublishVolume (kubelet)", v.unpublish().await?);
    step!(10, "NodeUnstageVolume (kubelet)", v.unstage().await?);
    step!(
        11,
        "ControllerUnpublishVolume (csi-attacher)",
        v.detach().await?
    );
    step!(12, "DeleteVolume (csi-provisioner)", v.delete().await?);

    println!("\nOperations counted by the daemons (everest_csi_operations_total):");
    for d in [Daemon::Controller, Daemon::Node] {
        match world.metrics(d).await {
            Ok(text) => {
                let mut lines: Vec<&str> = text
                    .lines()
                    .filter(|l| l.starts_with("everest_csi_operations_total"))
                    .collect();
                lines.sort_unstable();
                println!("  {d:?} ({}):", world.metrics_url(d));
                if lines.is_empty() {
                    println!("    (no everest_csi_operations_total series)");
                }
                for l in lines {
                    println!("    {l}");
                }
            }
            Err(e) => println!("  {d:?}: cannot scrape {}: {e}", world.metrics_url(d)),
        }
    }

    let disks = world.disks().await;
    let left = world.shutdown();
    println!("\nLeft behind:");
    println!("  disks in the cloud:          {}", disks.len());
    let loops = host::loop_devices_under(&state_dir);
    println!("  loop devices from its state: {}", loops.len());
    let mounts = host::mounts_under(&root);
    println!("  mounts under its root:       {}", mounts.len());
    println!("  temp root still present:     {}", root.exists());
    if !disks.is_empty() || !loops.is_empty() || !mounts.is_empty() || !left.is_clean() {
        return Err(format!(
            "leftovers: {} disks, loops {loops:?}, mounts {mounts:?}, teardown had to clean {left:?}",
            disks.len()
        )
        .into());
    }
    println!("\nDone in {:.1?}: nothing left behind.", start.elapsed());
    Ok(())
}
