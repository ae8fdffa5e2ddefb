//! File volumes through the real daemons, one StorageClass per mode of the `sfs` backend:
//! CreateVolume → ControllerPublish → NodeStage → NodePublish → write → tear-down → DeleteVolume,
//! over the daemons' unix sockets.
//!
//! The NFS server is a real nfs-ganesha in a private network namespace; the emulator (whose SFS
//! Turbo shares are directories ganesha exports) and both daemons run in that namespace too.
//! Where the kernel has an NFS client, NodeStage mounts the export for real and the pod's
//! target is written through. These machines have none (see docs/facts/components.md): there
//! NodeStage must refuse with FAILED_PRECONDITION naming the missing support before touching
//! anything, and the data is written over NFS from user space (`nfs-cp`) into the export the
//! volume names, then read back on the server's disk. Either way the volume's directory or
//! share is gone after DeleteVolume, and nothing is left behind.

use std::path::{Path, PathBuf};

use everest_proto::csi::v1 as csi;
use everest_testsupport::csi::mount_cap;
use everest_testsupport::nfs::{NfsServer, skip_unless_nfs_server};
use everest_testsupport::{Lifecycle, World, WorldOptions};

use csi::volume_capability::access_mode::Mode;

const PSEUDO: &str = "/exports";
const BACKEND: &str = "files";
const EXPORT_KEY: &str = "everest.io/nfs-export";

/// What the node itself asks before an NFS mount.
async fn kernel_has_nfs() -> bool {
    use everest_backend::host::{Host, LinuxHost};
    LinuxHost::default()
        .kernel_supports("nfs")
        .await
        .expect("read /proc/filesystems")
}

/// The `sfs` instance with both modes: directories under `k8s/` of the export, shares made by
/// the emulator under `shares/`.
fn backend_table(server: &NfsServer) -> String {
    format!(
        r#"
[backends.{BACKEND}]
kind = "sfs"
server = "{addr}"
export = "{PSEUDO}"
base_dir = "k8s"
project_id = "{project}"
region = "{region}"
credentials_file = "{{credentials_file}}"
sfs_turbo_endpoint = "{{emulator_url}}"
iam_endpoint = "{{emulator_url}}"
availability_zone = "emu-az1"
vpc_id = "vpc-1"
subnet_id = "subnet-1"
security_group_id = "sg-1"
allow_insecure_http = true
job_poll_initial_ms = 20
job_poll_max_ms = 100
wait_timeout_seconds = 30
"#,
        addr = server.address(),
        project = everest_testsupport::world::PROJECT_ID,
        region = everest_testsupport::world::REGION,
    )
}

/// One volume of `params`' mode, from CreateVolume to DeleteVolume; returns the path on the
/// server's disk it lived at (gone by then).
async fn one_volume(
    world: &World,
    server: &NfsServer,
    root: &Path,
    name: &str,
    params: &[(&str, &str)],
) -> PathBuf {
    let mut v = Lifecycle::new(
        world,
        name,
        mount_cap("", Mode::MultiNodeMultiWriter),
        "pod-1",
    )
    .await;
    let mut all = vec![("everest.io/backend", BACKEND)];
    all.extend_from_slice(params);
    let vol = v.create(1, &all).await.expect("CreateVolume");
    assert!(
        vol.volume_id.starts_with(&format!("v1:{BACKEND}:")),
        "{}",
        vol.volume_id
    );
    let export = vol.volume_context[EXPORT_KEY].clone();
    let published = v.attach().await.expect("ControllerPublishVolume");
    assert_eq!(
        published[EXPORT_KEY], export,
        "the node is handed the export"
    );
    let under_pseudo = export
        .strip_prefix(&format!("{}:{PSEUDO}/", server.address()))
        .unwrap_or_else(|| panic!("export {export} is not under {PSEUDO}"))
        .to_owned();
    let on_disk = root.join(&under_pseudo);
    assert!(
        on_disk.is_dir(),
        "{} is not on the server's disk",
        on_disk.display()
    );

    let payload = world.root().join(format!("{name}.txt"));
    std::fs::write(&payload, format!("{name} written over NFS\n")).unwrap();
    if kernel_has_nfs().await {
        v.stage().await.expect("NodeStageVolume");
        v.publish(false).await.expect("NodePublishVolume");
        std::fs::copy(&payload, Path::new(&v.target).join("hello.txt")).expect("write in the pod");
        v.unpublish().await.expect("NodeUnpublishVolume");
        v.unstage().await.expect("NodeUnstageVolume");
    } else {
        let err = v
            .stage()
            .await
            .expect_err("NodeStage without a kernel NFS client");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("nfs"), "{}", err.message());
        assert!(
            !Path::new(&v.staging).join("hello.txt").exists(),
            "the refused stage touched the staging path"
        );
        eprintln!(
            "no kernel NFS client here: NodeStage refused as it must; writing over NFS from user space"
        );
        server
            .nfs_cp_to(&payload, &format!("{under_pseudo}/hello.txt"))
            .expect("nfs-cp into the volume's export");
        // Tear-down of what was never set up is still success (kubelet may retry it).
        v.unpublish().await.expect("NodeUnpublishVolume");
        v.unstage().await.expect("NodeUnstageVolume");
    }
    assert_eq!(
        std::fs::read_to_string(on_disk.join("hello.txt")).unwrap(),
        format!("{name} written over NFS\n")
    );
    v.detach().await.expect("ControllerUnpublishVolume");
    v.delete().await.expect("DeleteVolume");
    v.delete().await.expect("DeleteVolume again");
    on_disk
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_class_per_file_mode_goes_from_create_to_delete() {
    if skip_unless_nfs_server() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("k8s")).unwrap();
    std::fs::create_dir(root.path().join("shares")).unwrap();
    let server = NfsServer::start(root.path(), PSEUDO).expect("start nfs-ganesha");
    let opts = WorldOptions {
        netns: Some(server.netns().to_owned()),
        emulator_extra: vec![
            "--nfs-export-root".into(),
            root.path().join("shares").display().to_string(),
            "--nfs-export-path".into(),
            format!("{PSEUDO}/shares"),
        ],
        extra_config: backend_table(&server),
        ..WorldOptions::default()
    };
    let world = World::start_with(opts).await.expect("start the world");

    let dir = one_volume(
        &world,
        &server,
        root.path(),
        "pvc-subdir",
        &[("everest.io/sfs-mode", "subdir")],
    )
    .await;
    assert!(!dir.exists(), "DeleteVolume left the directory");
    let share = one_volume(
        &world,
        &server,
        root.path(),
        "pvc-share",
        &[("everest.io/sfs-mode", "share")],
    )
    .await;
    // The emulator removes a share's directory when its deletion completes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while share.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!share.exists(), "DeleteVolume left the share");

    let leftovers = world.shutdown();
    assert!(leftovers.is_clean(), "{leftovers:?}");
}
