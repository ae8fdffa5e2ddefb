//! Node decisions about filesystems and devices, on the fake host: grows that must really grow,
//! read-only stages that must not format, the filesystem and mount options a volume asks for,
//! and the SCSI rescan after an expand.

use std::collections::BTreeMap;

use everest_backend::capability::{AccessMode, AccessType};
use everest_backend::host::{FakeDevice, FakeHost};
use everest_backend::params::FSTYPE_KEY;
use everest_backend::paths::AllowedRoot;
use everest_backend::secrets::Secrets;

use super::*;

const GIB: u64 = 1 << 30;
const DEVICE: &str = "/dev/loop3";

fn setup(fs: Option<&str>) -> (Arc<FakeHost>, EvsNode) {
    let host = Arc::new(FakeHost::default());
    host.add_device(
        Path::new("/by-id/virtio-disk-1"),
        Path::new(DEVICE),
        match fs {
            Some(fs) => FakeDevice::formatted(fs, 10 * GIB),
            None => FakeDevice {
                size: 10 * GIB,
                ..FakeDevice::default()
            },
        },
    );
    let table = serde_json::json!({"project_id": "p", "region": "r", "credentials_file": "/x", "by_id_dir": "/by-id", "device_wait_seconds": 0});
    let config = EvsConfig::parse("evs", table.as_object().unwrap()).unwrap();
    (host.clone(), EvsNode::new(config, host))
}

fn stage_req(fs: &str, flags: &[&str], mode: AccessMode) -> NodeStage {
    NodeStage {
        native_id: "disk-1".into(),
        publish_context: BTreeMap::new(),
        staging: AllowedRoot::new("/var/lib/kubelet")
            .unwrap()
            .check("/var/lib/kubelet/plugins/g/globalmount", "staging")
            .unwrap(),
        capability: VolumeCapability {
            access_type: AccessType::Mount {
                fs_type: fs.into(),
                mount_flags: flags.iter().map(|f| f.to_string()).collect(),
            },
            access_mode: mode,
        },
        volume_context: BTreeMap::new(),
        secrets: Secrets::default(),
    }
}

fn expand_req(req: &NodeStage, gib: u64) -> NodeExpand {
    NodeExpand {
        native_id: "disk-1".into(),
        volume_path: req.staging.clone(),
        staging: None,
        capacity: CapacityRange::new((gib * GIB) as i64, 0).unwrap(),
        capability: Some(req.capability.clone()),
    }
}

fn fs_size(host: &FakeHost) -> u64 {
    host.device(Path::new(DEVICE)).unwrap().fs_size
}

#[tokio::test]
async fn btrfs_expand_grows_the_filesystem_itself() {
    let (host, node) = setup(Some("btrfs"));
    let req = stage_req("btrfs", &[], AccessMode::SingleNodeWriter);
    node.stage(&req).await.unwrap();
    host.resize_device(Path::new(DEVICE), 20 * GIB);
    assert_eq!(node.expand(&expand_req(&req, 20)).await.unwrap(), 20 * GIB);
    assert_eq!(fs_size(&host), 20 * GIB, "{:?}", host.calls());
    let stats = host.fs_stats(req.staging.as_path()).await.unwrap();
    assert_eq!(stats.total_bytes, 20 * GIB);
}

#[tokio::test]
async fn a_grow_that_does_not_grow_is_an_error_not_a_done_resize() {
    for fs in ["btrfs", "xfs"] {
        let (host, node) = setup(Some(fs));
        let req = stage_req(fs, &[], AccessMode::SingleNodeWriter);
        node.stage(&req).await.unwrap();
        host.resize_device(Path::new(DEVICE), 20 * GIB);
        host.make_grow_inert(fs);
        let err = node.expand(&expand_req(&req, 20)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal, "{fs}: {err}");
        assert!(err.to_string().contains("still holds"), "{fs}: {err}");
        assert_eq!(fs_size(&host), 10 * GIB);
    }
    // Offline ext4 at stage, too: the stage fails instead of mounting a filesystem left small.
    let (host, node) = setup(Some("ext4"));
    host.resize_device(Path::new(DEVICE), 20 * GIB);
    host.make_grow_inert("ext4");
    let err = node
        .stage(&stage_req("ext4", &[], AccessMode::SingleNodeWriter))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("still holds"), "{err}");
    assert!(host.mount_table().is_empty());
}

#[tokio::test]
async fn a_read_only_stage_of_a_blank_disk_formats_nothing() {
    for mode in [
        AccessMode::SingleNodeReaderOnly,
        AccessMode::SingleNodeWriter, // with "ro" among the mount options of one entry
    ] {
        let (host, node) = setup(None);
        let flags: &[&str] = if mode == AccessMode::SingleNodeWriter {
            &["noatime,ro"]
        } else {
            &[]
        };
        let err = node
            .stage(&stage_req("ext4", flags, mode))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
        assert!(err.to_string().contains("blank"), "{err}");
        let calls = host.calls();
        assert!(
            !calls
                .iter()
                .any(|c| c.starts_with("mkfs") || c.starts_with("mount")),
            "{calls:?}"
        );
        assert_eq!(host.device(Path::new(DEVICE)).unwrap().fs_type, None);
    }
    // The same blank disk staged read-write is formatted, as before.
    let (host, node) = setup(None);
    node.stage(&stage_req("ext4", &[], AccessMode::SingleNodeWriter))
        .await
        .unwrap();
    assert!(host.calls().iter().any(|c| c == "mkfs ext4 /dev/loop3"));
}

#[tokio::test]
async fn the_storage_class_fs_type_in_the_context_is_used_when_the_capability_has_none() {
    let (host, node) = setup(None);
    let mut req = stage_req("", &[], AccessMode::SingleNodeWriter);
    req.volume_context
        .insert(FSTYPE_KEY.to_owned(), "btrfs".to_owned());
    node.stage(&req).await.unwrap();
    assert!(host.calls().iter().any(|c| c == "mkfs btrfs /dev/loop3"));
    // Staged again with the same context: same filesystem, nothing to do.
    node.stage(&req).await.unwrap();
    assert_eq!(host.mount_table().len(), 1);

    // The capability's fs_type wins over the context.
    let (host, node) = setup(None);
    let mut req = stage_req("xfs", &[], AccessMode::SingleNodeWriter);
    req.volume_context
        .insert(FSTYPE_KEY.to_owned(), "btrfs".to_owned());
    node.stage(&req).await.unwrap();
    assert!(host.calls().iter().any(|c| c == "mkfs xfs /dev/loop3"));

    // Neither: the backend's default (ext4).
    let (host, node) = setup(None);
    node.stage(&stage_req("", &[], AccessMode::SingleNodeWriter))
        .await
        .unwrap();
    assert!(host.calls().iter().any(|c| c == "mkfs ext4 /dev/loop3"));

    // A context naming a filesystem EVS cannot make is refused before anything is written.
    let (host, node) = setup(None);
    let mut req = stage_req("", &[], AccessMode::SingleNodeWriter);
    req.volume_context
        .insert(FSTYPE_KEY.to_owned(), "vfat".to_owned());
    let err = node.stage(&req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(host.calls().is_empty(), "{:?}", host.calls());
}

#[tokio::test]
async fn mount_flags_reach_mount_one_by_one_and_a_refused_one_is_named() {
    let (host, node) = setup(Some("ext4"));
    node.stage(&stage_req(
        "ext4",
        &["noatime,nodiratime", "discard"],
        AccessMode::SingleNodeWriter,
    ))
    .await
    .unwrap();
    let mounts: Vec<String> = host
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("mount "))
        .collect();
    assert_eq!(
        mounts,
        vec![
            "mount /dev/loop3 /var/lib/kubelet/plugins/g/globalmount ext4 noatime,nodiratime,discard"
        ]
    );

    let (host, node) = setup(Some("ext4"));
    let err = node
        .stage(&stage_req(
            "ext4",
            &["noatime", "exec,suid"],
            AccessMode::SingleNodeWriter,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.to_string().contains("\"exec\""), "{err}");
    assert!(host.calls().is_empty(), "{:?}", host.calls());
}

#[tokio::test]
async fn an_expanded_scsi_disk_is_rescanned_a_virtio_disk_is_not() {
    for scsi in [true, false] {
        let (host, node) = setup(Some("xfs"));
        if scsi {
            host.make_scsi(Path::new(DEVICE));
        }
        let req = stage_req("xfs", &[], AccessMode::SingleNodeWriter);
        node.stage(&req).await.unwrap();
        host.resize_device(Path::new(DEVICE), 20 * GIB);
        node.expand(&expand_req(&req, 20)).await.unwrap();
        let rescans: Vec<String> = host
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("rescan"))
            .collect();
        if scsi {
            assert_eq!(rescans, vec!["rescan /dev/loop3"]);
        } else {
            assert!(rescans.is_empty(), "{rescans:?}");
        }
    }
}

#[tokio::test]
async fn a_timed_out_mkfs_is_wiped_so_the_retry_formats_the_disk() {
    let (host, node) = setup(None);
    let req = stage_req("xfs", &[], AccessMode::SingleNodeWriter);
    host.time_out("mkfs");
    let err = node.stage(&req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err}");
    assert!(err.to_string().contains("mkfs xfs /dev/loop3"), "{err}");
    assert_eq!(host.device(Path::new(DEVICE)).unwrap().fs_type, None);
    assert!(host.mount_table().is_empty());
    host.heal();
    node.stage(&req).await.unwrap();
    assert_eq!(
        host.device(Path::new(DEVICE)).unwrap().fs_type.as_deref(),
        Some("xfs")
    );
    assert_eq!(host.mount_table().len(), 1);

    // A failure that is not a time-out may be mkfs refusing a signature blkid missed: never wiped.
    let (host, node) = setup(None);
    host.fail("mkfs", "appears to contain an existing filesystem");
    node.stage(&req).await.unwrap_err();
    assert!(!host.calls().iter().any(|c| c.starts_with("wipefs")));
}

/// DEADLINE_EXCEEDED leaves the kubelet "uncertain": it retries NodeStage, and sends
/// NodeUnstage if the pod goes away, so the mount is adopted rather than undone (undoing it
/// would make a slow mount, a long log replay, time out on every retry).
#[tokio::test]
async fn a_mount_that_timed_out_after_mounting_is_adopted_by_the_retry() {
    let (host, node) = setup(Some("xfs"));
    let req = stage_req("xfs", &[], AccessMode::SingleNodeWriter);
    host.time_out("mount");
    let err = node.stage(&req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err}");
    assert!(err.to_string().contains("mount /dev/loop3"), "{err}");
    assert_eq!(host.mount_table().len(), 1, "the kernel did mount it");
    host.heal();
    node.stage(&req).await.unwrap();
    assert_eq!(host.mount_table().len(), 1, "{:?}", host.calls());
    let mounts = host
        .calls()
        .iter()
        .filter(|c| c.starts_with("mount "))
        .count();
    assert_eq!(mounts, 1, "the retry must find the mount, not mount again");
}
