//! What the node does to the host, checked on real loop devices through the real daemons: btrfs
//! grows online for real, a read-only stage of a blank disk formats nothing, the StorageClass
//! fstype and the capability's mount flags reach mkfs and mount.

use std::path::{Path, PathBuf};

use everest_proto::csi::v1 as csi;
use everest_testsupport::csi::{GIB, mount_cap};
use everest_testsupport::host::{fs_size, mount_at, skip_without};
use everest_testsupport::{Lifecycle, World, skip_unless_root_and_loop};

use csi::volume_capability::access_mode::Mode;

/// The by-id link the emulator made for the volume's disk (first 20 characters of its ID).
fn by_id_link(world: &World, volume_id: &str) -> PathBuf {
    let disk = volume_id.rsplit(':').next().expect("v1:<backend>:<disk>");
    let serial: String = disk.chars().take(20).collect();
    world.by_id_dir().join(format!("virtio-{serial}"))
}

/// The filesystem type found on `device` by probing the device itself (`blkid -p`, never
/// blkid's cache, which may remember another disk that had the same loop device).
fn probed_fs_type(device: &Path) -> Option<String> {
    let out = std::process::Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "TYPE"])
        .arg(device)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run blkid");
    let fs = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!fs.is_empty()).then_some(fs)
}

fn set_mount_flags(cap: &mut csi::VolumeCapability, flags: &[&str]) {
    if let Some(csi::volume_capability::AccessType::Mount(m)) = cap.access_type.as_mut() {
        m.mount_flags = flags.iter().map(|f| f.to_string()).collect();
    }
}

/// Unpublish (if published), unstage, detach, delete.
async fn tear_down(v: &Lifecycle<'_>, published: bool) {
    if published {
        v.unpublish().await.expect("NodeUnpublishVolume");
    }
    v.unstage().await.expect("NodeUnstageVolume");
    v.detach().await.expect("ControllerUnpublishVolume");
    v.delete().await.expect("DeleteVolume");
}

#[tokio::test]
async fn btrfs_online_expand_grows_the_filesystem() {
    if skip_unless_root_and_loop() || skip_without("mkfs.btrfs", "btrfs-progs") {
        return;
    }
    let world = World::start().await;
    let mut v = Lifecycle::new(
        &world,
        "pvc-btrfs",
        mount_cap("btrfs", Mode::SingleNodeWriter),
        "pod-a",
    )
    .await;
    v.bring_up(10).await;
    assert_eq!(mount_at(Path::new(&v.staging)).unwrap().fs_type, "btrfs");
    std::fs::write(Path::new(&v.target).join("kept.txt"), "btrfs data\n").unwrap();

    let before = fs_size(Path::new(&v.target)).unwrap().total_bytes;
    v.controller_expand(13)
        .await
        .expect("ControllerExpandVolume");
    v.node_expand(13)
        .await
        .expect("NodeExpandVolume (online btrfs)");
    let after = fs_size(Path::new(&v.target)).unwrap().total_bytes;
    // What df shows: the filesystem itself grew by the 3 GiB, not just the disk under it.
    assert!(
        after >= before + 3 * GIB as u64 - (64 << 20),
        "btrfs did not grow: {before} -> {after} bytes"
    );
    assert_eq!(
        std::fs::read_to_string(Path::new(&v.target).join("kept.txt")).unwrap(),
        "btrfs data\n"
    );
    // Asked again, nothing is left to grow: OK without another resize.
    v.node_expand(13)
        .await
        .expect("a repeated NodeExpandVolume");
    assert_eq!(fs_size(Path::new(&v.target)).unwrap().total_bytes, after);
    tear_down(&v, true).await;
    let left = world.shutdown();
    assert!(left.is_clean(), "the run left {left:?}");
}

#[tokio::test]
async fn a_read_only_stage_of_a_blank_disk_is_refused_and_formats_nothing() {
    if skip_unless_root_and_loop() {
        return;
    }
    let world = World::start().await;
    let mut v = Lifecycle::new(
        &world,
        "pvc-ro-blank",
        mount_cap("ext4", Mode::SingleNodeReaderOnly),
        "pod-a",
    )
    .await;
    v.create(10, &[]).await.expect("CreateVolume");
    v.attach().await.expect("ControllerPublishVolume");
    let err = v
        .stage()
        .await
        .expect_err("a read-only NodeStage of a blank disk");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("blank"), "{err:?}");
    assert!(
        mount_at(Path::new(&v.staging)).is_none(),
        "something was mounted"
    );
    let device = std::fs::canonicalize(by_id_link(&world, &v.id())).expect("the disk's link");
    assert_eq!(
        probed_fs_type(&device),
        None,
        "the blank disk was formatted"
    );

    // Staged read-write, the same disk is formatted as usual.
    v.cap = mount_cap("ext4", Mode::SingleNodeWriter);
    v.stage().await.expect("a read-write NodeStage");
    assert_eq!(probed_fs_type(&device).as_deref(), Some("ext4"));
    tear_down(&v, false).await;
    let left = world.shutdown();
    assert!(left.is_clean(), "the run left {left:?}");
}

#[tokio::test]
async fn storage_class_fstype_and_mount_flags_reach_mkfs_and_mount() {
    if skip_unless_root_and_loop() || skip_without("mkfs.xfs", "xfsprogs") {
        return;
    }
    let world = World::start().await;
    // The capability names no filesystem; the StorageClass does.
    let mut cap = mount_cap("", Mode::SingleNodeWriter);
    set_mount_flags(&mut cap, &["noatime", "nodiratime,nodev"]);
    let mut v = Lifecycle::new(&world, "pvc-sc-fstype", cap, "pod-a").await;
    let vol = v
        .create(10, &[("csi.storage.k8s.io/fstype", "xfs")])
        .await
        .expect("CreateVolume");
    assert_eq!(
        vol.volume_context
            .get("csi.storage.k8s.io/fstype")
            .map(String::as_str),
        Some("xfs"),
        "{vol:?}"
    );
    v.attach().await.expect("ControllerPublishVolume");

    // A flag outside the allowlist is refused by name before anything is formatted.
    let allowed = v.cap.clone();
    set_mount_flags(&mut v.cap, &["noatime", "suid"]);
    let err = v
        .stage()
        .await
        .expect_err("a NodeStage with mount flag suid");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("\"suid\""), "{err:?}");
    let device = std::fs::canonicalize(by_id_link(&world, &v.id())).expect("the disk's link");
    assert_eq!(
        probed_fs_type(&device),
        None,
        "formatted despite the refused flag"
    );

    v.cap = allowed;
    v.stage().await.expect("NodeStageVolume");
    let m = mount_at(Path::new(&v.staging)).expect("staged");
    assert_eq!(m.fs_type, "xfs", "{m:?}");
    v.publish(false).await.expect("NodePublishVolume");
    // The pod's bind mount carries the staging mount's per-mount flags.
    let t = mount_at(Path::new(&v.target)).expect("published");
    for m in [&m, &t] {
        for flag in ["noatime", "nodiratime", "nodev"] {
            assert!(
                m.options.split(',').any(|o| o == flag),
                "{flag} is not in the mount's options: {m:?}"
            );
        }
    }
    tear_down(&v, true).await;
    let left = world.shutdown();
    assert!(left.is_clean(), "the run left {left:?}");
}

#[tokio::test]
async fn a_storage_class_fstype_that_conflicts_with_the_capability_is_refused() {
    if skip_unless_root_and_loop() {
        return;
    }
    let world = World::start().await;
    let mut v = Lifecycle::new(
        &world,
        "pvc-fstype-conflict",
        mount_cap("ext4", Mode::SingleNodeWriter),
        "pod-a",
    )
    .await;
    for (fs, needle) in [("xfs", "conflicts"), ("ntfs", "ntfs")] {
        let err = v
            .create(10, &[("csi.storage.k8s.io/fstype", fs)])
            .await
            .expect_err("CreateVolume with a conflicting or unknown fstype");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(needle), "{err:?}");
    }
    assert!(
        world.disks().await.is_empty(),
        "a disk was created for a refused request"
    );
    let left = world.shutdown();
    assert!(left.is_clean(), "the run left {left:?}");
}

/// A disk made and attached straight through the cloud API, as an operator would by hand: the
/// server holds it, Everest does not manage it.
struct ForeignDisk {
    client: everest_evs::api::EvsClient,
    server: String,
    id: String,
}

impl ForeignDisk {
    async fn attach(world: &World, server: &str) -> Self {
        use everest_evs::api::{CreateVolume, EvsClient, Service};
        let url = world.emulator_url();
        let settings = serde_json::json!({
            "project_id": everest_testsupport::world::PROJECT_ID,
            "region": everest_testsupport::world::REGION,
            "evs_endpoint": url, "ecs_endpoint": url, "allow_insecure_http": true,
            "credentials_file": world.root().join("evs-credentials.json"),
        });
        let cfg = everest_evs::EvsConfig::parse("by-hand", settings.as_object().unwrap()).unwrap();
        let client =
            EvsClient::from_credentials_file(cfg.cloud.clone(), &cfg.backend.credentials_file)
                .unwrap();
        let spec = CreateVolume {
            availability_zone: "emu-az1".into(),
            volume_type: "SSD".into(),
            name: "attached-by-hand".into(),
            size: 10,
            ..CreateVolume::default()
        };
        let accepted = client.create_volume(&spec, None).await.expect("create");
        let wait = std::time::Duration::from_secs(60);
        let job = client
            .wait_for_job(Service::Evs, &accepted.job_id, wait)
            .await
            .expect("create job");
        let id = job.volume_id().expect("the job names the disk").to_owned();
        let attach = client.attach_volume(server, &id).await.expect("attach");
        client
            .wait_for_job(Service::Ecs, &attach, wait)
            .await
            .expect("attach job");
        Self {
            client,
            server: server.to_owned(),
            id,
        }
    }

    async fn remove(self) {
        use everest_evs::api::Service;
        let wait = std::time::Duration::from_secs(60);
        if let Some(job) = self
            .client
            .detach_volume(&self.server, &self.id)
            .await
            .expect("detach")
        {
            self.client
                .wait_for_job(Service::Ecs, &job, wait)
                .await
                .expect("detach job");
        }
        if let Some(job) = self.client.delete_volume(&self.id).await.expect("delete") {
            self.client
                .wait_for_job(Service::Evs, &job, wait)
                .await
                .expect("delete job");
        }
    }
}

#[tokio::test]
async fn max_volumes_per_node_is_the_free_slots_plus_the_everest_disks_attached() {
    if skip_unless_root_and_loop() {
        return;
    }
    let world = World::start().await;
    // The world configures max_volumes_per_node = 24, which is also the emulated server's
    // slot count: only a disk Everest does not manage tells the two apart.
    assert_eq!(world.node_info().await.max_volumes_per_node, 24);
    let server = world.node_id().await;
    let foreign = ForeignDisk::attach(&world, &server).await;
    let mut v = Lifecycle::new(
        &world,
        "pvc-slots",
        mount_cap("ext4", Mode::SingleNodeWriter),
        "pod-a",
    )
    .await;
    v.create(10, &[]).await.expect("CreateVolume");
    v.attach().await.expect("ControllerPublishVolume");
    // NodeGetInfo is answered from what the node learnt at start (the kubelet asks once, at
    // registration): restart it to see the server as it is now.
    world.restart_node().await.expect("restart the node");
    // 22 free slots + the one Everest disk; the disk attached by hand is not ours to count.
    assert_eq!(world.node_info().await.max_volumes_per_node, 23);

    v.detach().await.expect("ControllerUnpublishVolume");
    v.delete().await.expect("DeleteVolume");
    foreign.remove().await;
    let left = world.shutdown();
    assert!(left.is_clean(), "the run left {left:?}");
}

#[tokio::test]
async fn without_a_by_id_link_the_disk_is_found_by_serial_and_a_scsi_disk_is_rescanned() {
    if skip_unless_root_and_loop() || skip_without("mkfs.xfs", "xfsprogs") {
        return;
    }
    let world = World::start().await;
    let mut v = Lifecycle::new(
        &world,
        "pvc-no-udev",
        mount_cap("xfs", Mode::SingleNodeWriter),
        "pod-a",
    )
    .await;
    v.create(10, &[]).await.expect("CreateVolume");
    v.attach().await.expect("ControllerPublishVolume");
    let link = by_id_link(&world, &v.id());
    let device = std::fs::canonicalize(&link).expect("the disk's link");
    // What a guest without udev has: no by-id link, but the kernel's view of the disk in
    // /sys/block (the world's node reads a sysfs tree the test writes, since a loop device has
    // neither a serial nor a SCSI rescan file).
    let name = device.file_name().expect("a device name");
    let sys = world.sysfs_root().join("block").join(name);
    std::fs::create_dir_all(sys.join("device")).unwrap();
    let serial = link
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("virtio-"))
        .expect("virtio-<serial>")
        .to_owned();
    std::fs::write(sys.join("serial"), format!("{serial}\n")).unwrap();
    std::fs::write(sys.join("device/rescan"), "").unwrap();
    std::fs::remove_file(&link).unwrap();

    v.stage()
        .await
        .expect("NodeStageVolume without a by-id link");
    let m = mount_at(Path::new(&v.staging)).expect("staged");
    assert_eq!(Path::new(&m.source), device, "{m:?}");
    v.publish(false).await.expect("NodePublishVolume");

    v.controller_expand(12)
        .await
        .expect("ControllerExpandVolume");
    v.node_expand(12).await.expect("NodeExpandVolume");
    assert_eq!(
        std::fs::read_to_string(sys.join("device/rescan")).unwrap(),
        "1",
        "the node did not ask for a rescan of the disk's size"
    );

    // Put the link back as the emulator made it, for its own detach.
    std::os::unix::fs::symlink(&device, &link).unwrap();
    tear_down(&v, true).await;
    let left = world.shutdown();
    assert!(left.is_clean(), "the run left {left:?}");
}
