//! The lifecycle suite: the calls of csi-provisioner, csi-attacher, csi-resizer and kubelet,
//! replayed against the real emulator and the real daemons over their unix sockets, with
//! real loop devices, mkfs and mounts.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use everest_proto::csi::v1 as csi;
use everest_testsupport::csi::{GIB, block_cap, mount_cap};
use everest_testsupport::host::{self, fs_size, mount_at, skip_without};
use everest_testsupport::{Lifecycle, World, skip_unless_root_and_loop};

use csi::volume_capability::access_mode::Mode;

const ZONE_KEY: &str = "topology.everest.csi.io/zone";

/// Create, attach, stage and publish; checks what each step leaves on the machine.
async fn bring_up(v: &mut Lifecycle<'_>, world: &World, gib: i64) {
    let vol = v.create(gib, &[]).await.expect("CreateVolume");
    assert!(
        vol.volume_id.starts_with("v1:evs-default:"),
        "volume ID {:?} is not v1:evs-default:<disk id>",
        vol.volume_id
    );
    assert_eq!(vol.capacity_bytes, gib * GIB);
    let zones: Vec<&String> = vol
        .accessible_topology
        .iter()
        .filter_map(|t| t.segments.get(ZONE_KEY))
        .collect();
    assert!(
        !zones.is_empty(),
        "CreateVolume reported no {ZONE_KEY} topology: {:?}",
        vol.accessible_topology
    );
    let disk = world
        .disk(&vol.volume_id)
        .await
        .expect("the emulator has the disk");
    assert_eq!(disk["size"].as_u64(), Some(gib as u64), "disk: {disk}");

    v.attach().await.expect("ControllerPublishVolume");
    let disk = world.disk(&vol.volume_id).await.expect("disk");
    assert_eq!(disk["status"], "in-use", "disk after attach: {disk}");

    v.stage().await.expect("NodeStageVolume");
    v.publish(false).await.expect("NodePublishVolume");
}

/// Unpublish, unstage, detach, delete; checks nothing is left on the machine or in the cloud.
async fn tear_down(v: &Lifecycle<'_>, world: &World) {
    v.unpublish().await.expect("NodeUnpublishVolume");
    assert!(
        mount_at(Path::new(&v.target)).is_none(),
        "target still mounted"
    );
    assert!(
        !Path::new(&v.target).exists(),
        "NodeUnpublish must remove the target path it created"
    );
    v.unstage().await.expect("NodeUnstageVolume");
    assert!(
        mount_at(Path::new(&v.staging)).is_none(),
        "staging still mounted"
    );
    v.detach().await.expect("ControllerUnpublishVolume");
    let disk = world
        .disk(&v.id())
        .await
        .expect("disk still exists before delete");
    assert_eq!(disk["status"], "available", "disk after detach: {disk}");
    assert!(
        host::loop_devices_under(world.root()).is_empty(),
        "a loop device is still attached after ControllerUnpublish"
    );
    v.delete().await.expect("DeleteVolume");
    assert!(
        world.disk(&v.id()).await.is_none(),
        "disk still exists after DeleteVolume"
    );
}

fn write_and_read_back(dir: &str, name: &str, contents: &str) {
    let path = Path::new(dir).join(name);
    let mut f = std::fs::File::create(&path).expect("create a file through the target path");
    f.write_all(contents.as_bytes()).expect("write");
    f.sync_all().expect("fsync");
    drop(f);
    assert_eq!(std::fs::read_to_string(&path).expect("read back"), contents);
}

fn assert_mounted(path: &str, fs_type: &str) {
    let m = mount_at(Path::new(path)).unwrap_or_else(|| panic!("{path} is not a mount point"));
    assert_eq!(m.fs_type, fs_type, "{path} is mounted as {m:?}");
}

#[tokio::test]
async fn xfs_full_lifecycle_with_online_expand() {
    if skip_unless_root_and_loop() || skip_without("mkfs.xfs", "xfsprogs") {
        return;
    }
    let world = World::start().await;
    let mut v = Lifecycle::new(
        &world,
        "pvc-xfs",
        mount_cap("xfs", Mode::SingleNodeWriter),
        "pod-a",
    )
    .await;
    bring_up(&mut v, &world, 10).await;
    assert_mounted(&v.staging, "xfs");
    assert_mounted(&v.target, "xfs");
    write_and_read_back(&v.target, "hello.txt", "hello from everest\n");
    // The target is a bind of the staging mount: the same file is visible there.
    assert_eq!(
        std::fs::read_to_string(Path::new(&v.staging).join("hello.txt")).unwrap(),
        "hello from everest\n"
    );

    let before = fs_size(Path::new(&v.target)).unwrap().total_bytes;
    let resp = v
        .controller_expand(12)
        .await
        .expect("ControllerExpandVolume");
    assert!(resp.capacity_bytes >= 12 * GIB, "{resp:?}");
    assert!(
        resp.node_expansion_required,
        "a block filesystem needs NodeExpand: {resp:?}"
    );
    let disk = world.disk(&v.id()).await.unwrap();
    assert_eq!(disk["size"].as_u64(), Some(12), "disk after expand: {disk}");

    let resp = v
        .node_expand(12)
        .await
        .expect("NodeExpandVolume (online xfs)");
    assert!(
        resp.capacity_bytes == 0 || resp.capacity_bytes >= 12 * GIB,
        "{resp:?}"
    );
    let after = fs_size(Path::new(&v.target)).unwrap().total_bytes;
    assert!(
        after > before + GIB as u64 + GIB as u64 / 2,
        "the filesystem did not grow: {before} -> {after} bytes"
    );
    assert_eq!(
        std::fs::read_to_string(Path::new(&v.target).join("hello.txt")).unwrap(),
        "hello from everest\n"
    );

    let stats = v.stats().await.expect("NodeGetVolumeStats");
    let bytes = stats
        .usage
        .iter()
        .find(|u| u.unit == csi::volume_usage::Unit::Bytes as i32)
        .unwrap_or_else(|| panic!("no BYTES usage: {stats:?}"));
    assert_eq!(
        bytes.total as u64, after,
        "stats total vs statvfs: {stats:?}"
    );
    assert!(bytes.used > 0 && bytes.available > 0, "{stats:?}");
    assert!(
        stats
            .usage
            .iter()
            .any(|u| u.unit == csi::volume_usage::Unit::Inodes as i32),
        "no INODES usage: {stats:?}"
    );
    // The node advertises VOLUME_CONDITION, so the condition must be there.
    let c = stats
        .volume_condition
        .as_ref()
        .unwrap_or_else(|| panic!("no volume_condition: {stats:?}"));
    assert!(!c.abnormal, "volume reported abnormal: {c:?}");

    tear_down(&v, &world).await;
    let left = world.shutdown();
    assert!(left.is_clean(), "the run left {left:?}");
}

#[tokio::test]
async fn ext4_online_expand_fails_cleanly_and_grows_at_restage() {
    if skip_unless_root_and_loop() {
        return;
    }
    let world = World::start().await;
    let mut v = Lifecycle::new(
        &world,
        "pvc-ext4",
        mount_cap("ext4", Mode::SingleNodeWriter),
        "pod-a",
    )
    .await;
    bring_up(&mut v, &world, 10).await;
    assert_mounted(&v.staging, "ext4");
    assert_mounted(&v.target, "ext4");
    write_and_read_back(&v.target, "data.txt", "ext4 data\n");
    let size_10 = fs_size(Path::new(&v.target)).unwrap().total_bytes;

    let resp = v
        .controller_expand(11)
        .await
        .expect("ControllerExpandVolume");
    assert!(resp.node_expansion_required, "{resp:?}");
    match v.node_expand(11).await {
        Err(status) => {
            // This machine cannot grow a mounted ext4 (no CAP_SYS_RESOURCE): the error must
            // say so, and the volume must stay mounted and usable.
            let msg = status.message().to_lowercase();
            assert!(
                ["resize", "grow", "online", "ext4"]
                    .iter()
                    .any(|w| msg.contains(w)),
                "NodeExpand on mounted ext4 failed with an unclear message: {status:?}"
            );
            eprintln!("online ext4 grow refused as expected: {status:?}");
            assert_mounted(&v.staging, "ext4");
            assert_mounted(&v.target, "ext4");
            assert_eq!(
                std::fs::read_to_string(Path::new(&v.target).join("data.txt")).unwrap(),
                "ext4 data\n"
            );
            write_and_read_back(&v.target, "still-writable.txt", "yes\n");
            assert_eq!(fs_size(Path::new(&v.target)).unwrap().total_bytes, size_10);
        }
        Ok(resp) => {
            // A machine that can grow mounted ext4 must actually have grown it.
            eprintln!("this machine grows mounted ext4 online: {resp:?}");
            assert!(fs_size(Path::new(&v.target)).unwrap().total_bytes > size_10);
        }
    }

    // Unstage, grow the disk again while it is not mounted, stage again: the node grows ext4
    // at NodeStage because the device is now larger than the filesystem.
    v.unpublish().await.expect("NodeUnpublishVolume");
    v.unstage().await.expect("NodeUnstageVolume");
    v.controller_expand(12)
        .await
        .expect("ControllerExpandVolume while unstaged");
    v.stage()
        .await
        .expect("NodeStageVolume (grows ext4 offline)");
    let grown = fs_size(Path::new(&v.staging)).unwrap().total_bytes;
    assert!(
        grown > size_10 + GIB as u64 + GIB as u64 / 2,
        "NodeStage did not grow ext4 to the 12 GiB device: {size_10} -> {grown} bytes"
    );
    v.publish(false)
        .await
        .expect("NodePublishVolume after restage");
    assert_eq!(
        std::fs::read_to_string(Path::new(&v.target).join("data.txt")).unwrap(),
        "ext4 data\n",
        "data lost across the offline grow"
    );
    tear_down(&v, &world).await;
    let left = world.shutdown();
    assert!(left.is_clean(), "the run left {left:?}");
}

#[tokio::test]
async fn read_only_publish_refuses_writes() {
    if skip_unless_root_and_loop() {
        return;
    }
    let world = World::start().await;
    let mut v = Lifecycle::new(
        &world,
        "pvc-ro",
        mount_cap("ext4", Mode::SingleNodeWriter),
        "pod-rw",
    )
    .await;
    bring_up(&mut v, &world, 10).await;
    write_and_read_back(
        &v.target,
        "seen-by-reader.txt",
        "written by the writer pod\n",
    );
    let rw_target = v.target.clone();

    // A second pod mounts the same staged volume read-only.
    v.target = world.target_path("pod-ro", "pvc-ro");
    v.publish(true).await.expect("NodePublishVolume readonly");
    let m = mount_at(Path::new(&v.target)).expect("read-only target is mounted");
    assert!(
        m.read_only(),
        "the read-only target is mounted {:?}",
        m.options
    );
    assert_eq!(
        std::fs::read_to_string(Path::new(&v.target).join("seen-by-reader.txt")).unwrap(),
        "written by the writer pod\n"
    );
    let err = std::fs::File::create(Path::new(&v.target).join("nope.txt"))
        .expect_err("creating a file on a read-only publish must fail");
    assert_eq!(
        err.raw_os_error(),
        Some(libc_erofs()),
        "expected EROFS, got {err}"
    );
    // The writer's mount is still writable.
    write_and_read_back(&rw_target, "after.txt", "still rw\n");

    v.unpublish().await.expect("NodeUnpublishVolume readonly");
    v.target = rw_target;
    tear_down(&v, &world).await;
    let left = world.shutdown();
    assert!(left.is_clean(), "the run left {left:?}");
}

/// EROFS on Linux.
fn libc_erofs() -> i32 {
    30
}

#[tokio::test]
async fn raw_block_publish_is_the_whole_device() {
    if skip_unless_root_and_loop() {
        return;
    }
    let world = World::start().await;
    let mut v = Lifecycle::new(
        &world,
        "pvc-raw",
        block_cap(Mode::SingleNodeWriter),
        "pod-a",
    )
    .await;
    bring_up(&mut v, &world, 10).await;

    let target = Path::new(&v.target);
    let meta = std::fs::metadata(target).expect("the block target exists");
    assert!(
        meta.file_type().is_block_device(),
        "the target is not a block device: {meta:?}"
    );
    assert_eq!(host::device_size(target).unwrap(), 10 * GIB as u64);

    // A raw block volume is handed over as is: never formatted.
    let disk = world.disk(&v.id()).await.unwrap();
    // The emulator backs every attachment with a loop device and records it.
    let loop_dev = disk["attachment"]["loop_device"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("the emulator state names no loop device: {disk}"));
    assert_eq!(
        host::fs_uuid(Path::new(&loop_dev)),
        None,
        "the raw block device was formatted"
    );

    let payload = b"everest raw block payload";
    let offset = 5 * 1024 * 1024 + 17;
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(target)
            .unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(payload).unwrap();
        f.sync_all().unwrap();
    }
    let read_at = |path: &Path| {
        let mut f = std::fs::File::open(path).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        let mut buf = vec![0u8; payload.len()];
        f.read_exact(&mut buf).unwrap();
        buf
    };
    assert_eq!(read_at(target), payload);
    // The same bytes are on the disk's loop device: the target is a bind of the device.
    assert_eq!(
        read_at(Path::new(&loop_dev)),
        payload,
        "not the disk's device"
    );
    tear_down(&v, &world).await;
    let left = world.shutdown();
    assert!(left.is_clean(), "the run left {left:?}");
}

#[tokio::test]
async fn restage_after_node_restart_keeps_data_and_never_reformats() {
    if skip_unless_root_and_loop() {
        return;
    }
    let world = World::start().await;
    let mut v = Lifecycle::new(
        &world,
        "pvc-restart",
        mount_cap("ext4", Mode::SingleNodeWriter),
        "pod-a",
    )
    .await;
    bring_up(&mut v, &world, 10).await;
    write_and_read_back(&v.target, "precious.txt", "survives restarts\n");
    let device = mount_at(Path::new(&v.staging)).expect("staged").source;
    let uuid = host::fs_uuid(Path::new(&device)).expect("the staged device has a filesystem UUID");

    // The node plugin restarts (DaemonSet update); kubelet repeats NodeStage and NodePublish.
    world.restart_node().await.expect("restart the node plugin");
    let node_id = world.node_id().await;
    assert_eq!(node_id, v.node_id, "the node ID changed across a restart");
    v.stage()
        .await
        .expect("NodeStageVolume after restart (already staged)");
    v.publish(false)
        .await
        .expect("NodePublishVolume after restart (already published)");
    assert_eq!(
        std::fs::read_to_string(Path::new(&v.target).join("precious.txt")).unwrap(),
        "survives restarts\n"
    );

    // A full unstage and restage mounts the existing filesystem; it must not be reformatted.
    v.unpublish().await.expect("NodeUnpublishVolume");
    v.unstage().await.expect("NodeUnstageVolume");
    world
        .restart_node()
        .await
        .expect("restart the node plugin again");
    v.stage()
        .await
        .expect("NodeStageVolume of an existing filesystem");
    v.publish(false).await.expect("NodePublishVolume");
    let device = mount_at(Path::new(&v.staging)).expect("restaged").source;
    assert_eq!(
        host::fs_uuid(Path::new(&device)).as_deref(),
        Some(uuid.as_str()),
        "the filesystem was recreated"
    );
    assert_eq!(
        std::fs::read_to_string(Path::new(&v.target).join("precious.txt")).unwrap(),
        "survives restarts\n",
        "data lost across restage"
    );
    tear_down(&v, &world).await;
    let left = world.shutdown();
    assert!(left.is_clean(), "the run left {left:?}");
}

fn condition(stats: &csi::NodeGetVolumeStatsResponse) -> csi::VolumeCondition {
    stats
        .volume_condition
        .clone()
        .unwrap_or_else(|| panic!("VOLUME_CONDITION is advertised but missing: {stats:?}"))
}

fn run(program: &str, args: &[&str]) {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
}

#[tokio::test]
async fn stats_tell_a_volume_that_is_not_there_from_one_that_is_unhealthy() {
    if skip_unless_root_and_loop() {
        return;
    }
    let world = World::start().await;
    let mut v = Lifecycle::new(
        &world,
        "pvc-health",
        mount_cap("ext4", Mode::SingleNodeWriter),
        "pod-a",
    )
    .await;
    bring_up(&mut v, &world, 10).await;
    let healthy = v.stats().await.expect("NodeGetVolumeStats");
    assert!(!condition(&healthy).abnormal, "{healthy:?}");

    // The kernel remounts the filesystem read-only, as ext4 does on errors: the pod's bind
    // mount stays read-write, the filesystem under it does not.
    run("mount", &["-o", "remount,ro", &v.staging]);
    let ro = v
        .stats()
        .await
        .expect("NodeGetVolumeStats, remounted read-only");
    let c = condition(&ro);
    assert!(c.abnormal && c.message.contains("read-only"), "{c:?}");
    assert!(!ro.usage.is_empty(), "a read-only volume still has figures");
    run("mount", &["-o", "remount,rw", &v.staging]);
    assert!(!condition(&v.stats().await.expect("stats")).abnormal);

    // Unmounted behind the kubelet's back: the path no longer holds the volume.
    run("umount", &[&v.target]);
    let status = v
        .stats()
        .await
        .expect_err("stats of a path holding no mount");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    v.publish(false).await.expect("NodePublishVolume again");

    // NodeExpandVolume takes the staging path as well as the publish path.
    v.controller_expand(11)
        .await
        .expect("ControllerExpandVolume");
    let staging_expand = csi::NodeExpandVolumeRequest {
        volume_id: v.id(),
        volume_path: v.staging.clone(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: 11 * GIB,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    match world.node().await.node_expand_volume(staging_expand).await {
        Ok(r) => assert!(r.into_inner().capacity_bytes >= 11 * GIB),
        // No online ext4 grow on this host: the spec's answer, naming the disk.
        Err(s) => assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}"),
    }

    // The disk is detached from under the mounts (a forced detach, a hot-unplug).
    v.detach()
        .await
        .expect("ControllerUnpublishVolume while mounted");
    let gone = v.stats().await.expect("NodeGetVolumeStats, device gone");
    let c = condition(&gone);
    assert!(
        c.abnormal && c.message.contains("no longer attached"),
        "{c:?}"
    );

    v.unpublish().await.expect("NodeUnpublishVolume");
    v.unstage().await.expect("NodeUnstageVolume");
    assert!(
        host::loop_devices_under(world.root()).is_empty(),
        "the loop device outlived its last mount"
    );
    v.delete().await.expect("DeleteVolume");
    let left = world.shutdown();
    assert!(left.is_clean(), "the run left {left:?}");
}

#[tokio::test]
async fn a_disk_reattached_under_a_new_loop_device_is_restaged_from_it() {
    if skip_unless_root_and_loop() {
        return;
    }
    let world = World::start().await;
    let mut v = Lifecycle::new(
        &world,
        "pvc-reattach",
        mount_cap("ext4", Mode::SingleNodeWriter),
        "pod-a",
    )
    .await;
    bring_up(&mut v, &world, 10).await;
    write_and_read_back(&v.target, "before.txt", "written before the re-attach\n");
    let old = mount_at(Path::new(&v.staging)).expect("staged");

    // The disk is detached while still mounted and attached again. The kernel keeps the mount
    // on the old loop device (a busy loop device is only marked auto-clear), and the disk
    // comes back as another loop device with another number.
    v.detach()
        .await
        .expect("ControllerUnpublishVolume while staged");
    v.attach().await.expect("ControllerPublishVolume again");
    let disk = world.disk(&v.id()).await.expect("disk");
    let new = disk["attachment"]["loop_device"]
        .as_str()
        .expect("the emulator names the new loop device")
        .to_owned();
    assert_ne!(new, old.source, "the re-attach reused the loop device");
    assert_eq!(
        mount_at(Path::new(&v.staging)).expect("still mounted").dev,
        old.dev,
        "the kernel keeps the old mount"
    );

    // The pod still uses the old mount: stage must neither answer OK nor mount the disk a
    // second time beside it.
    let err = v
        .stage()
        .await
        .expect_err("NodeStageVolume while a pod holds the stale mount");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains(&v.target), "{err:?}");
    assert_eq!(mount_at(Path::new(&v.staging)).unwrap().dev, old.dev);

    // Once the pod is gone, stage replaces the stale mount with the disk's current device.
    v.unpublish().await.expect("NodeUnpublishVolume");
    v.stage()
        .await
        .expect("NodeStageVolume replaces the stale staging mount");
    let staged = mount_at(Path::new(&v.staging)).expect("restaged");
    assert_eq!(staged.source, new, "staged from {staged:?}");
    assert_ne!(staged.dev, old.dev);
    v.stage()
        .await
        .expect("NodeStageVolume again is idempotent");
    v.publish(false).await.expect("NodePublishVolume");
    assert_eq!(
        std::fs::read_to_string(Path::new(&v.target).join("before.txt")).unwrap(),
        "written before the re-attach\n",
        "data lost across the re-attach"
    );
    tear_down(&v, &world).await;
    let left = world.shutdown();
    assert!(left.is_clean(), "the run left {left:?}");
}

#[tokio::test]
async fn a_stage_with_the_other_read_only_mode_is_refused() {
    if skip_unless_root_and_loop() {
        return;
    }
    let world = World::start().await;
    let mut v = Lifecycle::new(
        &world,
        "pvc-ro-mismatch",
        mount_cap("ext4", Mode::SingleNodeWriter),
        "pod-a",
    )
    .await;
    bring_up(&mut v, &world, 10).await;
    let writer = v.cap.clone();
    v.cap = mount_cap("ext4", Mode::SingleNodeReaderOnly);
    let err = v
        .stage()
        .await
        .expect_err("a read-only NodeStage of a read-write stage");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains("read-only"), "{err:?}");
    let m = mount_at(Path::new(&v.staging)).expect("still staged");
    assert!(!m.read_only(), "the stage was changed: {m:?}");
    v.cap = writer;
    v.stage().await.expect("the matching NodeStage is still OK");
    tear_down(&v, &world).await;
    let left = world.shutdown();
    assert!(left.is_clean(), "the run left {left:?}");
}

#[tokio::test]
async fn a_read_write_once_pod_volume_serves_one_pod_at_a_time() {
    if skip_unless_root_and_loop() {
        return;
    }
    let world = World::start().await;
    let mut v = Lifecycle::new(
        &world,
        "pvc-rwop",
        mount_cap("ext4", Mode::SingleNodeSingleWriter),
        "pod-a",
    )
    .await;
    bring_up(&mut v, &world, 10).await;
    let first = v.target.clone();
    let second = world.target_path("pod-b", "pvc-rwop");

    v.target = second.clone();
    let status = v.publish(false).await.expect_err("a second pod must wait");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains(&first), "{status:?}");
    assert!(
        mount_at(Path::new(&second)).is_none(),
        "the second target got mounted"
    );

    // Once the first pod is gone, the second gets the volume.
    v.target = first;
    v.unpublish()
        .await
        .expect("NodeUnpublishVolume of the first pod");
    v.target = second;
    v.publish(false)
        .await
        .expect("NodePublishVolume for the second pod");
    assert_mounted(&v.target, "ext4");
    tear_down(&v, &world).await;
    let left = world.shutdown();
    assert!(left.is_clean(), "the run left {left:?}");
}
