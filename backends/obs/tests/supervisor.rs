//! The mounter supervisor for real: `everest-mounter` as its own process, the daemons with an
//! `obs` backend that names its socket, s3fs mounting a bucket of a moto server. The mounter
//! is the supervisor's child, not the node's: SIGKILL it and the supervisor starts it again;
//! SIGKILL `everest-node` and the mount goes on serving, and the node started again re-adopts
//! it; stop the supervisor and the mounts go on serving, and a supervisor started again
//! adopts them. No secret shows in any process's command line or environment, or in a log.
//! Guards stop every process and unmount everything, also when the test fails.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use csi::volume_capability::access_mode::Mode;
use everest_obs::supervisor::client::SupervisorClient;
use everest_obs::supervisor::protocol::{MountState, MountStatus};
use everest_testsupport::csi::{GIB, create_request, mount_cap};
use everest_testsupport::process::Proc;
use everest_testsupport::proto as csi;
use everest_testsupport::{
    Daemon, S3Server, World, WorldOptions, skip_unless_s3_server, skip_without,
};

mod common;
use common::{fuse_unavailable, shown_by_any_process, write_credentials};

const AK: &str = "AKIASUPERVISED";
const SK: &str = "sk-supervised-never-shown-51c0";

/// Kills, when dropped, every process whose command line names `dir` (the mounters of this
/// test's volumes, whose credentials file lives there), so none outlives a failed test.
struct MounterGuard(PathBuf);

impl Drop for MounterGuard {
    fn drop(&mut self) {
        for pid in processes_naming(&self.0) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

fn processes_naming(needle: &Path) -> Vec<i32> {
    let needle = needle.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(&needle)
                .then_some(pid)
        })
        .filter(|pid| *pid != std::process::id() as i32)
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()
}

/// Starts `everest-mounter` with its socket and state in `dir`, serving metrics on
/// `metrics_port` when given.
fn start_supervisor(dir: &Path, metrics_port: Option<u16>) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_everest-mounter"));
    if let Some(port) = metrics_port {
        cmd.args(["--metrics-address", &format!("127.0.0.1:{port}")]);
    }
    cmd.args([
        "--socket",
        &dir.join("mounter.sock").display().to_string(),
        "--state-dir",
        &dir.join("state").display().to_string(),
        "--max-restarts",
        "3",
        "--backoff-cap-seconds",
        "1",
    ])
    .env("RUST_LOG", "info");
    Proc::spawn("mounter", cmd, dir).expect("start everest-mounter")
}

/// The supervisor's metrics exposition (plain HTTP/1.0 on loopback).
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

/// The value of the series `series` (name and labels as the exposition writes them).
fn value(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn the_mount(client: &SupervisorClient) -> Option<MountStatus> {
    let mounts = client.list().await.ok()?;
    assert!(mounts.len() <= 1, "{mounts:?}");
    mounts.into_iter().next()
}

/// What both tests start: a moto server, a private dir with the controller's credentials
/// file, a supervisor with its socket and state there, and a client of it. Dropped in field
/// order: the supervisor stops, mounters left behind are killed, the dir and server go.
struct Fixture {
    supervisor: Proc,
    _mounters: MounterGuard,
    client: SupervisorClient,
    socket: PathBuf,
    creds: PathBuf,
    dir: tempfile::TempDir,
    server: S3Server,
}

impl Fixture {
    /// Starts it all for a test of `mounter`, or skips (`None`) when something is missing.
    async fn start(mounter: &str, metrics_port: Option<u16>) -> Option<Fixture> {
        if skip_without(mounter, mounter) || skip_unless_s3_server() {
            return None;
        }
        if let Some(why) = fuse_unavailable() {
            everest_testsupport::skip(why);
            return None;
        }
        let server = S3Server::start().expect("start moto");
        let dir = tempfile::Builder::new()
            .prefix("everest-mounter-")
            .tempdir()
            .unwrap();
        let mounters = MounterGuard(dir.path().to_owned());
        let creds = dir.path().join("obs.json");
        write_credentials(&creds, AK, SK);
        let socket = dir.path().join("mounter.sock");
        let supervisor = start_supervisor(dir.path(), metrics_port);
        let client = SupervisorClient::new(socket.clone(), Duration::from_secs(30));
        wait_for("the supervisor's socket", async || client.list().await.ok()).await;
        Some(Fixture {
            supervisor,
            _mounters: mounters,
            client,
            socket,
            creds,
            dir,
            server,
        })
    }

    /// Whether only the supervisor is left of the processes naming the test's dir.
    fn only_the_supervisor_runs(&self) -> bool {
        processes_naming(self.dir.path()) == [self.supervisor.pid() as i32]
    }
}

/// Runs a host tool that must succeed.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Unmounts, when dropped, everything stacked at its path (lazily: a dead FUSE mount may be
/// among them), so a failed test leaves no mount behind.
struct Unmounter(PathBuf);

impl Drop for Unmounter {
    fn drop(&mut self) {
        for _ in 0..8 {
            let done = Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .output()
                .map_or(true, |o| !o.status.success());
            if done {
                break;
            }
        }
    }
}

fn kill(pid: u32) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a real pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
}

#[tokio::test]
async fn supervised_mounts_outlive_their_mounter_the_node_and_the_supervisor() {
    let metrics_port = free_port();
    let Some(mut fx) = Fixture::start("s3fs", Some(metrics_port)).await else {
        return;
    };
    let (client, socket, creds, server) = (&fx.client, fx.socket.clone(), &fx.creds, &fx.server);
    let dir = fx.dir.path().to_owned();
    let dir = dir.as_path();
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let opts = WorldOptions {
        extra_config: [
            "[backends.objects]".to_owned(),
            "kind = \"obs\"".to_owned(),
            format!("endpoint = \"{}\"", server.endpoint()),
            format!("credentials_file = \"{}\"", creds.display()),
            format!("runtime_dir = \"{}\"", dir.join("run").display()),
            format!("supervisor_socket = \"{}\"", socket.display()),
        ]
        .join("\n"),
        ..WorldOptions::default()
    };
    let world = World::start_with(opts).await.expect("start the world");
    let mut controller = world.controller().await;
    let mut node = world.node().await;
    let cap = mount_cap("", Mode::MultiNodeMultiWriter);
    let vol = controller
        .create_volume(create_request(
            "pvc-sup",
            GIB,
            cap.clone(),
            &[("everest.io/backend", "objects")],
        ))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let staging = world.staging_path(&vol.volume_id);
    let target = world.target_path("pod-1", "data");
    let stage = csi::NodeStageVolumeRequest {
        volume_id: vol.volume_id.clone(),
        staging_target_path: staging.clone(),
        volume_capability: Some(cap.clone()),
        volume_context: vol.volume_context.clone(),
        secrets: HashMap::from([
            ("access.key".to_owned(), AK.to_owned()),
            ("secret.key".to_owned(), SK.to_owned()),
        ]),
        ..Default::default()
    };
    let publish = csi::NodePublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        staging_target_path: staging.clone(),
        target_path: target.clone(),
        volume_capability: Some(cap.clone()),
        volume_context: vol.volume_context.clone(),
        ..Default::default()
    };
    let stats = csi::NodeGetVolumeStatsRequest {
        volume_id: vol.volume_id.clone(),
        volume_path: target.clone(),
        ..Default::default()
    };
    node.node_stage_volume(stage.clone()).await.unwrap();
    node.node_stage_volume(stage.clone()).await.unwrap();
    node.node_publish_volume(publish.clone()).await.unwrap();
    let in_target = |f: &str| Path::new(&target).join(f);
    let in_staging = |f: &str| Path::new(&staging).join(f);
    std::fs::write(in_target("one.txt"), "first").unwrap();

    // The mounter is the supervisor's child, in the foreground, and was started once.
    let first = the_mount(client).await.expect("a supervised mount");
    assert_eq!(first.state, MountState::Serving);
    assert_eq!(first.target, Path::new(&staging));
    let pid = first.pid.unwrap();
    assert_eq!(parent_of(pid), Some(fx.supervisor.pid()));
    if let Some(place) = shown_by_any_process(SK) {
        panic!("the secret key shows in {place}");
    }
    let st = node
        .node_get_volume_stats(stats.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(
        st.volume_condition.as_ref().is_none_or(|c| !c.abnormal),
        "{st:?}"
    );

    // A container's view of the pod's path as the runtime makes it for a volumeMount with
    // mountPropagation HostToContainer: a slave of the path's mount, which is shared as the
    // kubelet's own directory is (made so here by hand).
    let view = dir.join("container-view");
    std::fs::create_dir(&view).unwrap();
    let container = Unmounter(view.clone());
    run("mount", &["--make-shared", &target]);
    run("mount", &["--bind", &target, view.to_str().unwrap()]);
    run("mount", &["--make-slave", view.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(view.join("one.txt")).unwrap(),
        "first"
    );

    // SIGKILL the mounter: the supervisor starts it again and the staged mount serves.
    kill(pid);
    let again = wait_for("the mounter's restart", async || {
        the_mount(client)
            .await
            .filter(|m| m.restarts == 1 && m.state == MountState::Serving)
    })
    .await;
    assert_ne!(again.pid, Some(pid));
    let labels = r#"{backend="objects",mounter="s3fs"}"#;
    let exposition = scrape(metrics_port);
    assert_eq!(
        value(
            &exposition,
            &format!("everest_obs_mounter_restarts_total{labels}")
        ),
        Some(1.0),
        "{exposition}"
    );
    assert_eq!(
        value(&exposition, &format!("everest_obs_mounts{labels}")),
        Some(1.0),
        "{exposition}"
    );
    assert_eq!(
        std::fs::read_to_string(in_staging("one.txt")).unwrap(),
        "first"
    );
    std::fs::write(in_staging("two.txt"), "second").unwrap();
    // The supervisor bound the new mount over the pod's dead bind, with no publish: the pod's
    // path serves, and so does the container's view through propagation.
    assert_eq!(
        std::fs::read_to_string(in_target("two.txt")).unwrap(),
        "second"
    );
    assert_eq!(
        std::fs::read_to_string(view.join("two.txt")).unwrap(),
        "second"
    );
    std::fs::write(view.join("from-the-pod.txt"), "pod").unwrap();
    assert_eq!(
        std::fs::read_to_string(in_staging("from-the-pod.txt")).unwrap(),
        "pod"
    );
    // Stats tell the operator that containers without that propagation need a restart.
    let st = node
        .node_get_volume_stats(stats.clone())
        .await
        .unwrap()
        .into_inner();
    let cond = st.volume_condition.expect("a condition");
    assert!(
        cond.abnormal && cond.message.contains("mountPropagation HostToContainer"),
        "{cond:?}"
    );
    // A publish finds the live bind in place.
    node.node_publish_volume(publish.clone()).await.unwrap();

    // SIGKILL everest-node and start it again: the mount goes on serving; the node re-adopts
    // it (no second mounter) and a repeated stage finds it in place.
    world
        .crash_and_restart(Daemon::Node)
        .await
        .expect("restart the node plugin");
    let mut node = world.node().await;
    assert_eq!(
        std::fs::read_to_string(in_target("one.txt")).unwrap(),
        "first"
    );
    std::fs::write(in_target("three.txt"), "third").unwrap();
    assert!(
        world
            .log("node")
            .contains("re-adopted an object volume's FUSE mount")
    );
    node.node_stage_volume(stage.clone()).await.unwrap();
    let after = the_mount(client).await.unwrap();
    assert_eq!((after.pid, after.restarts), (again.pid, 1));

    // Stop the supervisor: its mounter goes on serving, the node reports that nothing would
    // restart it; a supervisor started again adopts it.
    fx.supervisor.stop(Duration::from_secs(15));
    assert!(!socket.exists(), "the supervisor left its socket");
    assert!(std::fs::read_to_string(in_target("three.txt")).is_ok());
    let st = node
        .node_get_volume_stats(stats.clone())
        .await
        .unwrap()
        .into_inner();
    let cond = st.volume_condition.expect("a condition");
    assert!(
        cond.abnormal && cond.message.contains("does not answer"),
        "{cond:?}"
    );
    fx.supervisor = start_supervisor(dir, None);
    let adopted = wait_for("the adoption", async || the_mount(client).await).await;
    assert!(adopted.adopted, "{adopted:?}");
    assert_eq!(adopted.pid, again.pid);
    std::fs::write(in_target("four.txt"), "fourth").unwrap();
    // The adopted mounter dies too: the new supervisor starts it again, as its own child.
    kill(adopted.pid.unwrap());
    let third = wait_for("the adopted mounter's restart", async || {
        the_mount(client)
            .await
            .filter(|m| m.restarts == 1 && m.state == MountState::Serving && !m.adopted)
    })
    .await;
    assert_eq!(parent_of(third.pid.unwrap()), Some(fx.supervisor.pid()));
    assert_eq!(
        std::fs::read_to_string(in_staging("four.txt")).unwrap(),
        "fourth"
    );

    // The supervisor's pod is re-created: the supervisor and its mounter die together, as the
    // runtime ends a container's processes. A new supervisor finds the mount in its state
    // files, dead, mounts it again and binds the pod's path again.
    kill(third.pid.unwrap());
    kill(fx.supervisor.pid());
    wait_for("the mount to die", async || {
        std::fs::read_dir(&staging).is_err().then_some(())
    })
    .await;
    fx.supervisor = start_supervisor(dir, None);
    let fourth = wait_for("the mount of the new supervisor", async || {
        the_mount(client)
            .await
            .filter(|m| m.state == MountState::Serving && !m.adopted)
    })
    .await;
    assert_eq!(parent_of(fourth.pid.unwrap()), Some(fx.supervisor.pid()));
    assert_eq!(
        std::fs::read_to_string(in_target("four.txt")).unwrap(),
        "fourth"
    );
    assert_eq!(
        std::fs::read_to_string(view.join("four.txt")).unwrap(),
        "fourth"
    );

    // The container ends (its view goes with its mount namespace); unstage through the
    // restarted node: the supervisor unmounts and forgets it.
    drop(container);
    node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        target_path: target.clone(),
    })
    .await
    .unwrap();
    node.node_unstage_volume(csi::NodeUnstageVolumeRequest {
        volume_id: vol.volume_id.clone(),
        staging_target_path: staging.clone(),
    })
    .await
    .unwrap();
    assert!(client.list().await.unwrap().is_empty());
    let left_in = |d: &str| -> Vec<_> {
        std::fs::read_dir(dir.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    };
    assert!(left_in("run").is_empty(), "{:?}", left_in("run"));
    assert!(left_in("state").is_empty(), "{:?}", left_in("state"));
    wait_for("the mounter's exit", async || {
        fx.only_the_supervisor_runs().then_some(())
    })
    .await;
    controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: vol.volume_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();

    fx.supervisor.stop(Duration::from_secs(15));
    let mounter_log = std::fs::read_to_string(&fx.supervisor.stderr_log).unwrap();
    assert!(mounter_log.contains("mount serving"), "{mounter_log}");
    for (name, log) in [
        ("controller", world.log("controller")),
        ("node", world.log("node")),
        ("mounter", mounter_log),
    ] {
        assert!(!log.contains(SK), "the {name} log shows the secret key");
    }
    let leftovers = world.shutdown();
    assert!(leftovers.is_clean(), "{leftovers:?}");
}

/// rclone under the supervisor, without the daemons: it runs in the foreground as the
/// supervisor's child (no `--daemon`), is started again when killed, and stops on unstage.
#[tokio::test]
async fn rclone_runs_supervised_and_is_restarted() {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use everest_backend::BackendName;
    use everest_backend::backend::{ControllerBackend, CreateVolume, NodeBackend, NodeStage};
    use everest_backend::capability::{AccessMode, VolumeCapability};
    use everest_backend::host::LinuxHost;
    use everest_backend::paths::AllowedRoot;
    use everest_backend::secrets::Secrets;
    use everest_obs::{ObsConfig, ObsController, ObsNode};

    let Some(fx) = Fixture::start("rclone", None).await else {
        return;
    };
    let (client, dir, server) = (&fx.client, fx.dir.path(), &fx.server);
    let kubelet = dir.join("kubelet");
    let staging = AllowedRoot::new(&kubelet)
        .unwrap()
        .check(
            &kubelet
                .join("plugins/obs/rc/globalmount")
                .display()
                .to_string(),
            "staging",
        )
        .unwrap();
    let _unmount = UnmountGuard(staging.as_path().to_owned());
    let table = |with_creds: bool| {
        let mut t = serde_json::json!({
            "endpoint": server.endpoint(),
            "runtime_dir": dir.join("run"),
            "supervisor_socket": fx.socket,
        });
        if with_creds {
            t["credentials_file"] = fx.creds.display().to_string().into();
        }
        ObsConfig::parse("objects", t.as_object().unwrap()).unwrap()
    };
    let name = BackendName::new("objects").unwrap();
    let controller = ObsController::new(name.clone(), table(true)).unwrap();
    let cap = VolumeCapability::mount(AccessMode::MultiNodeMultiWriter, &["dir-cache-time=1s"]);
    let v = controller
        .create_volume(&CreateVolume::for_test(
            "pvc-rc-sup",
            1 << 30,
            cap.clone(),
            &[("everest.io/obs-mounter", "rclone")],
        ))
        .await
        .unwrap();
    let node = ObsNode::new(name, table(false), Arc::new(LinuxHost::default()));
    node.stage(&NodeStage {
        native_id: v.native_id.clone(),
        publish_context: BTreeMap::new(),
        staging: staging.clone(),
        capability: cap,
        volume_context: v.context.clone(),
        secrets: Secrets::new(BTreeMap::from([
            ("access.key".to_owned(), AK.to_owned()),
            ("secret.key".to_owned(), SK.to_owned()),
        ])),
    })
    .await
    .unwrap();
    let first = the_mount(client).await.expect("a supervised mount");
    let pid = first.pid.unwrap();
    assert_eq!(parent_of(pid), Some(fx.supervisor.pid()));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.starts_with("rclone mount "), "{cmdline}");
    assert!(!cmdline.contains("--daemon"), "{cmdline}");
    if let Some(place) = shown_by_any_process(SK) {
        panic!("the secret key shows in {place}");
    }
    std::fs::write(staging.as_path().join("rc.txt"), "kept").unwrap();

    kill(pid);
    wait_for("rclone's restart", async || {
        the_mount(client)
            .await
            .filter(|m| m.restarts == 1 && m.state == MountState::Serving)
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(staging.as_path().join("rc.txt")).unwrap(),
        "kept"
    );
    node.unstage(&v.native_id, &staging).await.unwrap();
    assert!(client.list().await.unwrap().is_empty());
    wait_for("rclone's exit", async || {
        fx.only_the_supervisor_runs().then_some(())
    })
    .await;
    controller
        .delete_volume(&v.native_id, &Secrets::default())
        .await
        .unwrap();
}

/// Lazily unmounts a path when dropped, if it is still mounted (a failed test).
struct UnmountGuard(PathBuf);

impl Drop for UnmountGuard {
    fn drop(&mut self) {
        let p = self.0.display().to_string();
        for _ in 0..4 {
            let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            if !text
                .lines()
                .any(|l| l.split(' ').nth(4) == Some(p.as_str()))
            {
                break;
            }
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}
