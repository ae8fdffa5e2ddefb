//! Snapshots and clones through the real daemons and the real emulator, as csi-snapshotter and
//! the provisioner call them: data written in a pod survives snapshot → restore into a larger
//! volume → stage → publish, and a clone likewise; a disk with snapshots is not deleted (and the
//! answer says why); bad input gets the spec's codes; ListSnapshots pages through many
//! snapshots while they change.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use everest_proto::csi::v1 as csi;
use everest_testsupport::csi::{GIB, create_request, expect_error, mount_cap};
use everest_testsupport::host::fs_size;
use everest_testsupport::{Lifecycle, World, skip_unless_root_and_loop};
use tonic::Code;

use csi::volume_capability::access_mode::Mode;

fn ext4() -> csi::VolumeCapability {
    mount_cap("ext4", Mode::SingleNodeWriter)
}

fn snapshot_request(name: &str, source: &str) -> csi::CreateSnapshotRequest {
    csi::CreateSnapshotRequest {
        name: name.into(),
        source_volume_id: source.into(),
        // What csi-snapshotter adds with --extra-create-metadata.
        parameters: [
            (
                "csi.storage.k8s.io/volumesnapshot/name".to_string(),
                format!("vs-{name}"),
            ),
            (
                "csi.storage.k8s.io/volumesnapshot/namespace".to_string(),
                "default".to_string(),
            ),
        ]
        .into(),
        ..Default::default()
    }
}

fn from_snapshot(snapshot_id: &str) -> csi::VolumeContentSource {
    use csi::volume_content_source::{SnapshotSource, Type};
    csi::VolumeContentSource {
        r#type: Some(Type::Snapshot(SnapshotSource {
            snapshot_id: snapshot_id.into(),
        })),
    }
}

/// A CreateVolume from a snapshot, as the provisioner sends it for a PVC with a dataSource.
async fn restore_request(
    world: &World,
    name: &str,
    gib: i64,
    snapshot_id: &str,
    params: &[(&str, &str)],
) -> csi::CreateVolumeRequest {
    let mut req = create_request(name, gib * GIB, ext4(), params);
    req.accessibility_requirements = Some(world.topology_requirement().await);
    req.volume_content_source = Some(from_snapshot(snapshot_id));
    req
}

/// Polls ListSnapshots by ID, as csi-snapshotter does, until the snapshot is ready to use.
async fn wait_ready(world: &World, snapshot_id: &str) -> csi::Snapshot {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = world
            .controller()
            .await
            .list_snapshots(csi::ListSnapshotsRequest {
                snapshot_id: snapshot_id.into(),
                ..Default::default()
            })
            .await
            .expect("ListSnapshots by ID")
            .into_inner();
        assert_eq!(listed.entries.len(), 1, "{listed:?}");
        let snap = listed.entries[0].snapshot.clone().unwrap();
        if snap.ready_to_use {
            return snap;
        }
        assert!(
            Instant::now() < deadline,
            "snapshot {snapshot_id} not ready in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every snapshot ListSnapshots reports for `source` (all when empty), `page` at a time.
/// Snapshots of one volume the paging case makes (the issue asks for a hundred).
const SNAPSHOTS: usize = 100;

async fn list_all(world: &World, source: &str, page: i32) -> Vec<String> {
    let mut c = world.controller().await;
    let (mut out, mut token) = (Vec::new(), String::new());
    loop {
        let r = c
            .list_snapshots(csi::ListSnapshotsRequest {
                max_entries: page,
                source_volume_id: source.into(),
                starting_token: token,
                ..Default::default()
            })
            .await
            .expect("ListSnapshots")
            .into_inner();
        assert!(
            page == 0 || r.entries.len() <= page as usize,
            "a page of {} entries for max_entries {page}",
            r.entries.len()
        );
        out.extend(
            r.entries
                .into_iter()
                .map(|e| e.snapshot.unwrap().snapshot_id),
        );
        if r.next_token.is_empty() {
            return out;
        }
        token = r.next_token;
    }
}

async fn delete_snapshot(world: &World, id: &str) -> Result<(), tonic::Status> {
    world
        .controller()
        .await
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: id.into(),
            ..Default::default()
        })
        .await
        .map(drop)
}

fn write_synced(dir: &str, name: &str, contents: &[u8]) {
    let path = Path::new(dir).join(name);
    let mut f = std::fs::File::create(&path).expect("create a file in the pod's volume");
    f.write_all(contents).expect("write");
    f.sync_all().expect("fsync the file");
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .expect("fsync the directory");
}

#[tokio::test]
async fn data_survives_snapshot_and_restore_and_the_source_is_kept_while_snapshots_exist() {
    if skip_unless_root_and_loop() {
        return;
    }
    let world = World::start().await;
    let mut c = world.controller().await;
    let caps = c
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let advertised = format!("{caps:?}");
    assert!(
        advertised.contains("CreateDeleteSnapshot") && advertised.contains("ListSnapshots"),
        "{advertised}"
    );

    // A volume in a pod, with data in it.
    let mut src = Lifecycle::new(&world, "pvc-snap-src", ext4(), "pod-src").await;
    src.bring_up(10).await;
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    write_synced(&src.target, "payload.bin", &payload);

    // Snapshot it while it is in use, as Kubernetes does.
    let taken = c
        .create_snapshot(snapshot_request("snapshot-1", &src.id()))
        .await
        .expect("CreateSnapshot")
        .into_inner()
        .snapshot
        .unwrap();
    assert!(
        taken.snapshot_id.starts_with("v1:evs-default:"),
        "{taken:?}"
    );
    assert_eq!(taken.source_volume_id, src.id());
    assert_eq!(taken.size_bytes, 10 * GIB);
    assert!(taken.creation_time.is_some());
    // The cloud answers a new snapshot with `creating`: not ready yet, and said so.
    assert!(!taken.ready_to_use, "{taken:?}");
    let ready = wait_ready(&world, &taken.snapshot_id).await;
    assert_eq!(ready.snapshot_id, taken.snapshot_id);
    // Retried as the snapshotter does: the same snapshot, now ready.
    let again = c
        .create_snapshot(snapshot_request("snapshot-1", &src.id()))
        .await
        .expect("CreateSnapshot again")
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(again.snapshot_id, taken.snapshot_id);
    assert!(again.ready_to_use, "{again:?}");
    assert_eq!(
        list_all(&world, &src.id(), 0).await,
        vec![taken.snapshot_id.clone()]
    );

    // Written after the snapshot: must not appear in the restore.
    write_synced(&src.target, "later.txt", b"after the snapshot\n");

    // Restore into a larger volume and use it in another pod.
    let req = restore_request(&world, "pvc-restored", 12, &taken.snapshot_id, &[]).await;
    let vol = c
        .create_volume(req.clone())
        .await
        .expect("CreateVolume from the snapshot")
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(vol.content_source, Some(from_snapshot(&taken.snapshot_id)));
    assert_eq!(vol.capacity_bytes, 12 * GIB);
    let disk = world.disk(&vol.volume_id).await.expect("the restored disk");
    let native_snapshot = taken.snapshot_id.rsplit(':').next().unwrap();
    assert_eq!(disk["snapshot_id"], native_snapshot, "{disk}");
    // Retried by the provisioner: the same volume; the same name without the snapshot is
    // another volume, which this one is not.
    let mut empty = req.clone();
    empty.volume_content_source = None;
    expect_error(
        c.create_volume(empty).await,
        Code::AlreadyExists,
        &["snapshot"],
    );
    let retried = c.create_volume(req).await.expect("CreateVolume again");
    assert_eq!(
        retried.into_inner().volume.unwrap().volume_id,
        vol.volume_id
    );

    let mut restored = Lifecycle::new(&world, "pvc-restored", ext4(), "pod-restored").await;
    restored.volume = Some(vol.clone());
    restored.attach().await.expect("ControllerPublishVolume");
    restored.stage().await.expect("NodeStageVolume");
    restored.publish(false).await.expect("NodePublishVolume");
    let read = std::fs::read(Path::new(&restored.target).join("payload.bin"))
        .expect("the snapshot's file is in the restored volume");
    assert!(
        read == payload,
        "the restored file differs from what was written"
    );
    assert!(
        !Path::new(&restored.target).join("later.txt").exists(),
        "a file written after the snapshot is in the restore"
    );
    // The filesystem was grown to the larger disk at stage.
    let size = fs_size(Path::new(&restored.target)).unwrap().total_bytes;
    assert!(
        size > 11 * GIB as u64,
        "restored filesystem is {size} bytes"
    );

    // The source cannot go while it has a snapshot, and the answer says why.
    src.unpublish().await.expect("NodeUnpublishVolume");
    src.unstage().await.expect("NodeUnstageVolume");
    src.detach().await.expect("ControllerUnpublishVolume");
    expect_error(src.delete().await, Code::FailedPrecondition, &["snapshot"]);
    assert!(world.disk(&src.id()).await.is_some(), "the source is gone");

    // Delete the snapshot (twice: idempotent), then the source goes.
    delete_snapshot(&world, &taken.snapshot_id)
        .await
        .expect("DeleteSnapshot");
    delete_snapshot(&world, &taken.snapshot_id)
        .await
        .expect("DeleteSnapshot again");
    assert!(list_all(&world, "", 0).await.is_empty());
    src.delete()
        .await
        .expect("DeleteVolume after its snapshot is gone");

    // The restored volume stands on its own.
    assert_eq!(
        std::fs::read(Path::new(&restored.target).join("payload.bin")).unwrap(),
        payload
    );
    restored.unpublish().await.expect("NodeUnpublishVolume");
    restored.unstage().await.expect("NodeUnstageVolume");
    restored.detach().await.expect("ControllerUnpublishVolume");
    restored.delete().await.expect("DeleteVolume");
    assert!(world.disks().await.is_empty());
    let left = world.shutdown();
    assert!(left.is_clean(), "the run left {left:?}");
}

#[tokio::test]
async fn bad_snapshot_input_gets_the_spec_codes_and_listing_pages_through_100() {
    if skip_unless_root_and_loop() {
        return;
    }
    let world = World::start().await;
    let mut c = world.controller().await;
    let mut src = Lifecycle::new(&world, "pvc-many", ext4(), "pod-many").await;
    src.create(15, &[]).await.expect("CreateVolume");
    let mut other = Lifecycle::new(&world, "pvc-other", ext4(), "pod-other").await;
    other.create(10, &[]).await.expect("CreateVolume");

    // Sources and snapshots that do not exist.
    for missing in [
        "v1:evs-default:0b1c2d3e-0000-4000-8000-000000000000",
        "vol-1",
    ] {
        expect_error(
            c.create_snapshot(snapshot_request("snap-x", missing)).await,
            Code::NotFound,
            &["disk", "volume"],
        );
    }
    let unknown = "v1:evs-default:0b1c2d3e-0000-4000-8000-000000000000";
    delete_snapshot(&world, unknown)
        .await
        .expect("DeleteSnapshot of an unknown snapshot is OK");
    let listed = c
        .list_snapshots(csi::ListSnapshotsRequest {
            snapshot_id: unknown.into(),
            ..Default::default()
        })
        .await
        .expect("ListSnapshots of an unknown snapshot")
        .into_inner();
    assert!(listed.entries.is_empty(), "{listed:?}");
    expect_error(
        c.create_volume(restore_request(&world, "pvc-from-nothing", 10, unknown, &[]).await)
            .await,
        Code::NotFound,
        &["snapshot"],
    );
    expect_error(
        c.create_snapshot(snapshot_request("", &src.id())).await,
        Code::InvalidArgument,
        &["name"],
    );

    // Same name, another source.
    let first = c
        .create_snapshot(snapshot_request("snap-dup", &src.id()))
        .await
        .expect("CreateSnapshot")
        .into_inner()
        .snapshot
        .unwrap();
    expect_error(
        c.create_snapshot(snapshot_request("snap-dup", &other.id()))
            .await,
        Code::AlreadyExists,
        &["snap-dup"],
    );
    wait_ready(&world, &first.snapshot_id).await;
    // A restore whose limit is below the snapshot's 15 GiB, or of another disk type.
    let mut small = restore_request(&world, "pvc-small", 10, &first.snapshot_id, &[]).await;
    small.capacity_range = Some(csi::CapacityRange {
        required_bytes: 10 * GIB,
        limit_bytes: 12 * GIB,
    });
    expect_error(
        c.create_volume(small).await,
        Code::OutOfRange,
        &["capacity"],
    );
    let other_type = restore_request(
        &world,
        "pvc-sas",
        10,
        &first.snapshot_id,
        &[("everest.io/disk-volume-type", "SAS")],
    )
    .await;
    expect_error(
        c.create_volume(other_type).await,
        Code::InvalidArgument,
        &["type"],
    );

    // A hundred snapshots of one volume (and one of another), paged 7 at a time.
    let mut made = BTreeSet::from([first.snapshot_id.clone()]);
    for i in 1..SNAPSHOTS {
        let s = c
            .create_snapshot(snapshot_request(&format!("snap-{i:03}"), &src.id()))
            .await
            .expect("CreateSnapshot")
            .into_inner()
            .snapshot
            .unwrap();
        made.insert(s.snapshot_id);
    }
    let of_other = c
        .create_snapshot(snapshot_request("snap-other", &other.id()))
        .await
        .expect("CreateSnapshot of the other volume")
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(made.len(), SNAPSHOTS);
    for page in [7, 30, 0] {
        let listed = list_all(&world, &src.id(), page).await;
        assert_eq!(listed.len(), SNAPSHOTS, "page {page}: {listed:?}");
        assert_eq!(
            listed.iter().cloned().collect::<BTreeSet<_>>(),
            made,
            "page {page}"
        );
    }
    let everything = list_all(&world, "", 7).await;
    assert_eq!(everything.len(), SNAPSHOTS + 1);
    assert!(everything.contains(&of_other.snapshot_id));

    // Snapshots deleted between pages: every snapshot that exists throughout is listed once.
    let mut token = String::new();
    let mut seen = Vec::new();
    let mut deleted = BTreeSet::new();
    loop {
        let r = c
            .list_snapshots(csi::ListSnapshotsRequest {
                max_entries: 7,
                source_volume_id: src.id(),
                starting_token: token,
                ..Default::default()
            })
            .await
            .expect("ListSnapshots")
            .into_inner();
        let ids: Vec<String> = r
            .entries
            .into_iter()
            .map(|e| e.snapshot.unwrap().snapshot_id)
            .collect();
        // Delete the last one handed out (the token's anchor) and one not listed yet.
        if let Some(last) = ids.last() {
            delete_snapshot(&world, last).await.expect("DeleteSnapshot");
            deleted.insert(last.clone());
        }
        if let Some(ahead) = made
            .iter()
            .find(|s| !ids.contains(s) && !seen.contains(*s) && !deleted.contains(*s))
            .cloned()
        {
            delete_snapshot(&world, &ahead)
                .await
                .expect("DeleteSnapshot");
            deleted.insert(ahead);
        }
        seen.extend(ids);
        if r.next_token.is_empty() {
            break;
        }
        token = r.next_token;
    }
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "listed twice: {seen:?}");
    let kept: BTreeSet<String> = made.difference(&deleted).cloned().collect();
    assert!(
        kept.is_subset(&unique),
        "skipped: {:?}",
        kept.difference(&unique).collect::<Vec<_>>()
    );
    expect_error(
        c.list_snapshots(csi::ListSnapshotsRequest {
            max_entries: 7,
            starting_token: "evs-default/not-a-token".into(),
            ..Default::default()
        })
        .await,
        Code::Aborted,
        &["starting_token"],
    );

    // Clean up: the rest of the snapshots, then both volumes.
    for id in kept.iter().chain([&of_other.snapshot_id]) {
        delete_snapshot(&world, id).await.expect("DeleteSnapshot");
    }
    assert!(list_all(&world, "", 0).await.is_empty());
    src.delete().await.expect("DeleteVolume");
    other.delete().await.expect("DeleteVolume");
    let left = world.shutdown();
    assert!(left.is_clean(), "the run left {left:?}");
}

#[tokio::test]
async fn a_clone_has_the_source_data_and_leaves_no_snapshot_behind() {
    if skip_unless_root_and_loop() {
        return;
    }
    let world = World::start().await;
    let mut c = world.controller().await;
    let caps = c
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(format!("{caps:?}").contains("CloneVolume"), "{caps:?}");

    let mut src = Lifecycle::new(&world, "pvc-clone-src", ext4(), "pod-src").await;
    src.bring_up(10).await;
    write_synced(&src.target, "hello.txt", b"cloned while in use\n");

    // A clone of the volume in use, as the provisioner asks for a PVC whose dataSource is a PVC.
    let mut req = create_request("pvc-clone", 11 * GIB, ext4(), &[]);
    req.accessibility_requirements = Some(world.topology_requirement().await);
    let source = csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Volume(
            csi::volume_content_source::VolumeSource {
                volume_id: src.id(),
            },
        )),
    };
    req.volume_content_source = Some(source.clone());
    let vol = c
        .create_volume(req.clone())
        .await
        .expect("CreateVolume of a clone")
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(vol.content_source, Some(source));
    assert_eq!(vol.capacity_bytes, 11 * GIB);
    // Retried: the same clone, and still no snapshot left.
    let again = c.create_volume(req).await.expect("CreateVolume again");
    assert_eq!(again.into_inner().volume.unwrap().volume_id, vol.volume_id);
    assert!(
        world.emulator_state().await["snapshots"]
            .as_object()
            .is_none_or(|m| m.is_empty()),
        "a temporary snapshot is left: {}",
        world.emulator_state().await["snapshots"]
    );
    assert!(list_all(&world, "", 0).await.is_empty());

    let mut clone = Lifecycle::new(&world, "pvc-clone", ext4(), "pod-clone").await;
    clone.volume = Some(vol);
    clone.attach().await.expect("ControllerPublishVolume");
    clone.stage().await.expect("NodeStageVolume");
    clone.publish(false).await.expect("NodePublishVolume");
    assert_eq!(
        std::fs::read_to_string(Path::new(&clone.target).join("hello.txt")).unwrap(),
        "cloned while in use\n"
    );
    // The two are independent: a write to the clone does not reach the source.
    write_synced(&clone.target, "only-in-clone.txt", b"x");
    assert!(!Path::new(&src.target).join("only-in-clone.txt").exists());

    // The same name again, from another volume: ALREADY_EXISTS, and nothing snapshotted.
    let mut other = Lifecycle::new(&world, "pvc-clone-other", ext4(), "pod-other").await;
    other.create(10, &[]).await.expect("CreateVolume");
    let mut from_other = create_request("pvc-clone", 11 * GIB, ext4(), &[]);
    from_other.accessibility_requirements = Some(world.topology_requirement().await);
    from_other.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Volume(
            csi::volume_content_source::VolumeSource {
                volume_id: other.id(),
            },
        )),
    });
    expect_error(
        c.create_volume(from_other).await,
        Code::AlreadyExists,
        &["pvc-clone"],
    );
    other
        .delete()
        .await
        .expect("DeleteVolume of the other volume");

    // A clone of a volume that does not exist.
    let mut missing = create_request("pvc-clone-missing", 10 * GIB, ext4(), &[]);
    missing.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Volume(
            csi::volume_content_source::VolumeSource {
                volume_id: "v1:evs-default:0b1c2d3e-0000-4000-8000-000000000000".into(),
            },
        )),
    });
    expect_error(
        c.create_volume(missing).await,
        Code::NotFound,
        &["clone", "disk"],
    );

    // The source can be deleted while its clone lives on.
    for v in [&src, &clone] {
        v.unpublish().await.expect("NodeUnpublishVolume");
        v.unstage().await.expect("NodeUnstageVolume");
        v.detach().await.expect("ControllerUnpublishVolume");
        v.delete().await.expect("DeleteVolume");
    }
    assert!(world.disks().await.is_empty());
    let left = world.shutdown();
    assert!(left.is_clean(), "the run left {left:?}");
}
