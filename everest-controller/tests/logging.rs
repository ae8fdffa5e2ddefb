//! The controller's log as an operator's log file holds it: stderr to a file (no terminal, no
//! `NO_COLOR`), so no terminal escape codes; one info line per call that changes something,
//! reads (Probe, Get*, List*, Validate*) only at debug. Needs no root: no backend is configured.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use everest_proto::csi::v1 as csi;
use everest_testsupport::csi::{connect_uds, create_request, mount_cap};
use everest_testsupport::process::Proc;

use csi::controller_client::ControllerClient;
use csi::identity_client::IdentityClient;
use csi::volume_capability::access_mode::Mode;

// Two workers: one drives the client connection while the other blocks stopping the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_file_holds_plain_text_and_one_info_line_per_change() {
    let dir = tempfile::Builder::new()
        .prefix("everest-test-logging-")
        .tempdir()
        .unwrap();
    let socket = dir.path().join("controller.sock");
    let config = dir.path().join("everest.toml");
    std::fs::write(
        &config,
        format!(
            "driver_name = \"everest.csi.io\"\nendpoint = \"unix://{}\"\n",
            socket.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_everest-controller"));
    cmd.arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR");
    let mut proc = Proc::spawn("controller", cmd, dir.path()).unwrap();

    let channel = connect_when_up(&socket, &mut proc).await;
    let mut identity = IdentityClient::new(channel.clone());
    for _ in 0..3 {
        identity.probe(csi::ProbeRequest {}).await.expect("Probe");
    }
    identity
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .expect("GetPluginInfo");
    // No backend is configured, so the create fails: one warning line.
    let create = create_request(
        "pvc-log",
        1 << 30,
        mount_cap("ext4", Mode::SingleNodeWriter),
        &[],
    );
    let err = ControllerClient::new(channel)
        .create_volume(create)
        .await
        .unwrap_err();
    eprintln!("CreateVolume without backends: {err}");
    drop(identity);
    proc.stop(Duration::from_secs(15));

    let raw = std::fs::read(&proc.stderr_log).unwrap();
    let log = String::from_utf8_lossy(&raw);
    eprintln!("controller log:\n{log}");
    assert!(
        log.contains("everest-controller starting"),
        "the log is not the daemon's: {log}"
    );
    assert!(
        !raw.contains(&0x1b),
        "escape codes in a log written to a file:\n{log:?}"
    );
    for read in ["Probe", "GetPluginInfo"] {
        assert!(
            !log.lines().any(|l| l.contains(read)),
            "a read ({read}) logged at info:\n{log}"
        );
    }
    let creates: Vec<&str> = log.lines().filter(|l| l.contains("CreateVolume")).collect();
    assert_eq!(creates.len(), 1, "{log}");
    assert!(creates[0].contains("WARN"), "{}", creates[0]);
}

/// Connects once the socket answers; fails early with the log if the daemon exited.
async fn connect_when_up(socket: &Path, proc: &mut Proc) -> tonic::transport::Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = proc.exited() {
            panic!("the controller exited: {status}\n{}", proc.log_tail(40));
        }
        if socket.exists()
            && let Ok(channel) = connect_uds(socket).await
        {
            return channel;
        }
        assert!(
            Instant::now() < deadline,
            "no socket after 30 s:\n{}",
            proc.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A whole volume lifecycle against the real daemons: at `info`, each daemon's log holds one
/// line per call that changed something (and the one rare step worth its own line: formatting
/// a blank disk), nothing for the reads in between, and no escape codes.
#[tokio::test]
async fn a_lifecycle_logs_one_info_line_per_change() {
    if everest_testsupport::skip_unless_root_and_loop() {
        return;
    }
    let world = everest_testsupport::World::start().await;
    let mut v = everest_testsupport::Lifecycle::new(
        &world,
        "pvc-logged",
        mount_cap("ext4", Mode::SingleNodeWriter),
        "pod-a",
    )
    .await;
    v.bring_up(10).await;
    for _ in 0..3 {
        v.stats().await.expect("NodeGetVolumeStats");
    }
    v.unpublish().await.expect("NodeUnpublishVolume");
    v.unstage().await.expect("NodeUnstageVolume");
    v.detach().await.expect("ControllerUnpublishVolume");
    v.delete().await.expect("DeleteVolume");

    let info_after_start = |process: &str| -> Vec<String> {
        let log = world.log(process);
        assert!(!log.contains('\u{1b}'), "escape codes in the {process} log");
        log.lines()
            .skip_while(|l| !l.contains("serving CSI"))
            .skip(1)
            .filter(|l| l.contains(" INFO "))
            .map(|l| {
                // The message: after the last "target: ", up to the first `key=value` field.
                let msg = l.rsplit_once(": ").map_or(l, |(_, m)| m);
                msg.split(' ')
                    .take_while(|w| !w.contains('='))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    };
    assert_eq!(
        info_after_start("controller"),
        [
            "CreateVolume succeeded",
            "ControllerPublishVolume succeeded",
            "ControllerUnpublishVolume succeeded",
            "DeleteVolume succeeded"
        ],
        "{}",
        world.log("controller")
    );
    assert_eq!(
        info_after_start("node"),
        [
            "formatting blank disk",
            "NodeStageVolume succeeded",
            "NodePublishVolume succeeded",
            "NodeUnpublishVolume succeeded",
            "NodeUnstageVolume succeeded"
        ],
        "{}",
        world.log("node")
    );
    let left = world.shutdown();
    assert!(left.is_clean(), "the run left {left:?}");
}
