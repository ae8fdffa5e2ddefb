//! The controller (and node) against the real emulator: idempotency as the sidecars rely on
//! it, concurrent CreateVolume, and bad input answered with the right code and a clear message.

use std::path::Path;

use everest_proto::csi::v1 as csi;
use everest_testsupport::csi::{GIB, block_cap, create_request, expect_error, mount_cap};
use everest_testsupport::host::{mount_at, mounts};
use everest_testsupport::{Daemon, Lifecycle, World, WorldOptions, skip_unless_root_and_loop};
use tonic::Code;

use csi::volume_capability::access_mode::Mode;

fn ext4() -> csi::VolumeCapability {
    mount_cap("ext4", Mode::SingleNodeWriter)
}

#[tokio::test]
async fn every_rpc_repeated_gives_the_same_answer() {
    if skip_unless_root_and_loop() {
        return;
    }
    let world = World::start().await;
    let mut c = world.controller().await;

    // CreateVolume: same name and size -> the same volume; a different size -> ALREADY_EXISTS.
    let topology = world.topology_requirement().await;
    let mut req = create_request("pvc-idem", 10 * GIB, ext4(), &[]);
    req.accessibility_requirements = Some(topology.clone());
    let first = c
        .create_volume(req.clone())
        .await
        .expect("CreateVolume")
        .into_inner();
    let again = c
        .create_volume(req.clone())
        .await
        .expect("CreateVolume again")
        .into_inner();
    let (first, again) = (first.volume.unwrap(), again.volume.unwrap());
    assert_eq!(first.volume_id, again.volume_id);
    assert_eq!(first.capacity_bytes, again.capacity_bytes);
    assert_eq!(first.accessible_topology, again.accessible_topology);
    let mut bigger = create_request("pvc-idem", 20 * GIB, ext4(), &[]);
    bigger.accessibility_requirements = Some(topology);
    expect_error(
        c.create_volume(bigger).await,
        Code::AlreadyExists,
        &["pvc-idem", "size", "capacity", "GiB"],
    );
    assert_eq!(world.disks().await.len(), 1, "repeats created extra disks");

    let mut v = Lifecycle::new(&world, "pvc-idem", ext4(), "pod-a").await;
    let third = v.create(10, &[]).await.expect("CreateVolume a third time");
    assert_eq!(third.volume_id, first.volume_id);

    // ControllerPublish twice: the same publish context.
    let ctx1 = v.attach().await.expect("ControllerPublishVolume");
    let ctx2 = v.attach().await.expect("ControllerPublishVolume again");
    assert_eq!(ctx1, ctx2, "publish context changed on repeat");

    // NodeStage / NodePublish twice: OK, and not mounted twice.
    v.stage().await.expect("NodeStageVolume");
    v.stage().await.expect("NodeStageVolume again");
    v.publish(false).await.expect("NodePublishVolume");
    v.publish(false).await.expect("NodePublishVolume again");
    for p in [&v.staging, &v.target] {
        let n = mounts()
            .iter()
            .filter(|m| m.mount_point == Path::new(p))
            .count();
        assert_eq!(n, 1, "{p} is mounted {n} times after repeated calls");
    }

    // ControllerExpand twice: the same answer, one resize.
    let e1 = v
        .controller_expand(11)
        .await
        .expect("ControllerExpandVolume");
    let e2 = v
        .controller_expand(11)
        .await
        .expect("ControllerExpandVolume again");
    assert_eq!(e1.capacity_bytes, e2.capacity_bytes);
    assert_eq!(
        world.disk(&v.id()).await.unwrap()["size"].as_u64(),
        Some(11)
    );

    // Teardown, every step twice.
    v.unpublish().await.expect("NodeUnpublishVolume");
    v.unpublish().await.expect("NodeUnpublishVolume again");
    assert!(mount_at(Path::new(&v.target)).is_none());
    v.unstage().await.expect("NodeUnstageVolume");
    v.unstage().await.expect("NodeUnstageVolume again");
    assert!(mount_at(Path::new(&v.staging)).is_none());
    v.detach().await.expect("ControllerUnpublishVolume");
    v.detach().await.expect("ControllerUnpublishVolume again");
    v.delete().await.expect("DeleteVolume");
    v.delete().await.expect("DeleteVolume of a deleted volume");
    v.detach()
        .await
        .expect("ControllerUnpublishVolume of a deleted volume must be OK");
    assert!(world.disks().await.is_empty());
    let left = world.shutdown();
    assert!(left.is_clean(), "the run left {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_create_volume_with_one_name_makes_one_disk() {
    let world = World::start().await;
    let mut req = create_request("pvc-race", 10 * GIB, ext4(), &[]);
    req.accessibility_requirements = Some(world.topology_requirement().await);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut c = world.controller().await;
        let req = req.clone();
        tasks.push(tokio::spawn(async move { c.create_volume(req).await }));
    }
    let mut ids = Vec::new();
    let mut aborted = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(r) => ids.push(r.into_inner().volume.expect("volume").volume_id),
            Err(s) if s.code() == Code::Aborted => aborted += 1,
            Err(s) => panic!("CreateVolume answered neither OK nor ABORTED: {s:?}"),
        }
    }
    eprintln!("{} OK, {aborted} ABORTED", ids.len());
    assert!(!ids.is_empty(), "every concurrent CreateVolume was ABORTED");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1, "different volume IDs for one name: {ids:?}");
    let disks = world.disks().await;
    assert_eq!(
        disks.len(),
        1,
        "expected exactly one disk, the emulator holds {disks:#?}"
    );

    // A retry after the race gets the same volume, and DeleteVolume cleans it up.
    let mut c = world.controller().await;
    let again = c
        .create_volume(req)
        .await
        .expect("CreateVolume after the race");
    assert_eq!(again.into_inner().volume.unwrap().volume_id, ids[0]);
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: ids[0].clone(),
        ..Default::default()
    })
    .await
    .expect("DeleteVolume");
    assert!(world.disks().await.is_empty());
}

#[tokio::test]
async fn bad_input_gets_the_right_code_and_a_clear_message() {
    let world = World::start().await;
    let mut c = world.controller().await;
    let mut n = world.node().await;

    // --- CreateVolume
    let mut r = create_request("pvc-bad", 10 * GIB, ext4(), &[]);
    r.name = String::new();
    expect_error(c.create_volume(r).await, Code::InvalidArgument, &["name"]);

    let mut r = create_request("pvc-bad", 10 * GIB, ext4(), &[]);
    r.volume_capabilities.clear();
    expect_error(
        c.create_volume(r).await,
        Code::InvalidArgument,
        &["capabilit"],
    );

    let mut r = create_request("pvc-bad", 10 * GIB, ext4(), &[]);
    r.volume_capabilities = vec![csi::VolumeCapability::default()];
    expect_error(
        c.create_volume(r).await,
        Code::InvalidArgument,
        &["capabilit", "access"],
    );

    let r = create_request(
        "pvc-bad",
        10 * GIB,
        block_cap(Mode::MultiNodeMultiWriter),
        &[],
    );
    expect_error(
        c.create_volume(r).await,
        Code::InvalidArgument,
        &[
            "MULTI_NODE_MULTI_WRITER",
            "access mode",
            "MultiNodeMultiWriter",
        ],
    );

    let r = create_request(
        "pvc-bad",
        10 * GIB,
        ext4(),
        &[("everest.io/backend", "nope")],
    );
    let status = c
        .create_volume(r)
        .await
        .expect_err("unknown backend must fail");
    assert!(
        matches!(status.code(), Code::InvalidArgument | Code::NotFound),
        "unknown backend: {status:?}"
    );
    assert!(status.message().contains("nope"), "{status:?}");

    let r = create_request(
        "pvc-bad",
        10 * GIB,
        ext4(),
        &[("everest.io/disk-volume-typo", "SSD")],
    );
    expect_error(
        c.create_volume(r).await,
        Code::InvalidArgument,
        &["everest.io/disk-volume-typo"],
    );

    let r = create_request("pvc-bad", 100_000 * GIB, ext4(), &[]);
    expect_error(
        c.create_volume(r).await,
        Code::OutOfRange,
        &["capacity", "size", "GiB"],
    );
    let mut r = create_request("pvc-bad", GIB, ext4(), &[]);
    r.capacity_range = Some(csi::CapacityRange {
        required_bytes: GIB,
        limit_bytes: GIB,
    });
    expect_error(
        c.create_volume(r).await,
        Code::OutOfRange,
        &["capacity", "size", "GiB"],
    );
    assert!(world.disks().await.is_empty(), "bad requests created disks");

    // --- volume IDs: one that is not ours names no volume, so removing it succeeds
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: "not-a-volume-id".into(),
        ..Default::default()
    })
    .await
    .expect("DeleteVolume of an ID that is not ours is OK");
    c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
        volume_id: "not-a-volume-id".into(),
        node_id: world.node_id().await,
        ..Default::default()
    })
    .await
    .expect("ControllerUnpublishVolume of an ID that is not ours is OK");
    let status = c
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: "v1:nope:6b5e3c1a".into(),
            ..Default::default()
        })
        .await
        .expect_err("a volume ID naming an unknown backend must fail");
    // Never OK and never NOT_FOUND: the volume may exist on a backend that is only missing from
    // this daemon's configuration, and "gone" would let the caller forget it.
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("nope"), "{status:?}");
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: "v1:evs-default:00000000-0000-4000-8000-000000000000".into(),
        ..Default::default()
    })
    .await
    .expect("DeleteVolume of a volume that does not exist is OK");

    let node_id = world.node_id().await;
    let publish = |volume_id: &str, node_id: &str| csi::ControllerPublishVolumeRequest {
        volume_id: volume_id.into(),
        node_id: node_id.into(),
        volume_capability: Some(ext4()),
        ..Default::default()
    };
    expect_error(
        c.controller_publish_volume(publish("not-a-volume-id", &node_id))
            .await,
        Code::NotFound,
        &["no such volume", "malformed"],
    );
    expect_error(
        c.controller_publish_volume(publish(
            "v1:evs-default:00000000-0000-4000-8000-000000000000",
            &node_id,
        ))
        .await,
        Code::NotFound,
        &["00000000-0000-4000-8000-000000000000"],
    );
    expect_error(
        c.controller_publish_volume(publish(
            "v1:evs-default:00000000-0000-4000-8000-000000000000",
            "",
        ))
        .await,
        Code::InvalidArgument,
        &["node"],
    );
    expect_error(
        c.controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: "not-a-volume-id".into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 20 * GIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        &["no such volume", "malformed"],
    );

    // --- node: paths outside the kubelet root, bad IDs, missing capability
    let vol = "v1:evs-default:00000000-0000-4000-8000-000000000000";
    let stage =
        |staging: &str, cap: Option<csi::VolumeCapability>, id: &str| csi::NodeStageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.into(),
            volume_capability: cap,
            ..Default::default()
        };
    let good_staging = world.staging_path("pvc-bad");
    expect_error(
        n.node_stage_volume(stage("/etc/everest-nope", Some(ext4()), vol))
            .await,
        Code::InvalidArgument,
        &["staging_target_path"],
    );
    let dotted = format!("{}/../../../etc", world.kubelet_root().display());
    expect_error(
        n.node_stage_volume(stage(&dotted, Some(ext4()), vol)).await,
        Code::InvalidArgument,
        &["staging_target_path"],
    );
    expect_error(
        n.node_stage_volume(stage(&good_staging, None, vol)).await,
        Code::InvalidArgument,
        &["capabilit"],
    );
    expect_error(
        n.node_stage_volume(stage(&good_staging, Some(ext4()), "not-a-volume-id"))
            .await,
        Code::NotFound,
        &["no such volume", "malformed"],
    );
    expect_error(
        n.node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: vol.into(),
            staging_target_path: good_staging.clone(),
            target_path: "/tmp/everest-outside-target".into(),
            volume_capability: Some(ext4()),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        &["target_path"],
    );
    expect_error(
        n.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: vol.into(),
            target_path: "/etc".into(),
        })
        .await,
        Code::InvalidArgument,
        &["target_path"],
    );
    expect_error(
        n.node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: vol.into(),
            staging_target_path: "/var/lib".into(),
        })
        .await,
        Code::InvalidArgument,
        &["staging_target_path"],
    );
    let missing = world.target_path("pod-none", "pvc-none");
    expect_error(
        n.node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: vol.into(),
            volume_path: missing,
            staging_target_path: String::new(),
        })
        .await,
        Code::NotFound,
        &["volume_path", "not", "mount"],
    );
    expect_error(
        c.validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: vol.into(),
            volume_capabilities: vec![ext4()],
            ..Default::default()
        })
        .await,
        Code::NotFound,
        &["00000000-0000-4000-8000-000000000000"],
    );
    assert!(
        Path::new("/etc").exists() && !Path::new("/tmp/everest-outside-target").exists(),
        "a rejected request touched the host"
    );

    // --- both daemons still answer
    for d in [Daemon::Controller, Daemon::Node] {
        let mut id = world.identity(d).await;
        let probe = id
            .probe(csi::ProbeRequest {})
            .await
            .unwrap_or_else(|s| panic!("{d:?} stopped answering Probe after bad input: {s}"));
        assert_ne!(probe.into_inner().ready, Some(false), "{d:?} not ready");
        let info = id
            .get_plugin_info(csi::GetPluginInfoRequest {})
            .await
            .expect("GetPluginInfo")
            .into_inner();
        assert_eq!(info.name, everest_testsupport::DRIVER_NAME);
    }
}

#[tokio::test]
async fn a_name_deleted_and_created_again_gets_a_new_disk() {
    if skip_unless_root_and_loop() {
        return;
    }
    let world = World::start().await;
    // The create token is derived from the name, and the cloud replays a token it has seen for
    // hours: the second create must notice the replayed disk is gone and make a new one.
    let mut first = Lifecycle::new(&world, "pvc-again", ext4(), "pod-a").await;
    let old = first.create(10, &[]).await.expect("CreateVolume");
    first.delete().await.expect("DeleteVolume");
    assert!(
        world.disks().await.is_empty(),
        "the first disk was not deleted"
    );

    let mut second = Lifecycle::new(&world, "pvc-again", ext4(), "pod-a").await;
    let new = second.create(10, &[]).await.expect("CreateVolume again");
    assert_ne!(new.volume_id, old.volume_id, "got the deleted disk back");
    assert_eq!(world.disks().await.len(), 1);
    second.attach().await.expect("the new disk attaches");
    second.detach().await.expect("ControllerUnpublishVolume");
    second.delete().await.expect("DeleteVolume");
}

#[tokio::test]
async fn a_controller_killed_mid_create_leaks_no_disk() {
    if skip_unless_root_and_loop() {
        return;
    }
    // Slow jobs, so the kill lands while the create job is still running in the cloud.
    let world = World::start_with(WorldOptions {
        job_latency_ms: 1500,
        ..WorldOptions::default()
    })
    .await
    .expect("start the world");
    let topology = world.topology_requirement().await;
    let mut req = create_request("pvc-crash", 10 * GIB, ext4(), &[]);
    req.accessibility_requirements = Some(topology);

    let mut first = world.controller().await;
    let pending = tokio::spawn({
        let req = req.clone();
        async move { first.create_volume(req).await }
    });
    // Wait until the cloud has the disk in `creating`, then kill the controller.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while world.disks().await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the create never reached the cloud"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    world
        .crash_and_restart(Daemon::Controller)
        .await
        .expect("restart the controller");
    let cut = pending.await.expect("join");
    assert!(cut.is_err(), "the killed controller answered: {cut:?}");

    // The provisioner retries with the same name: it must get the disk already being made.
    let volume =
        everest_testsupport::csi::retry("CreateVolume", std::time::Duration::from_secs(30), || {
            let req = req.clone();
            let world = &world;
            async move { world.controller().await.create_volume(req).await }
        })
        .await
        .expect("CreateVolume after the restart")
        .0
        .into_inner()
        .volume
        .expect("a volume");
    let disks = world.disks().await;
    assert_eq!(disks.len(), 1, "a second disk was made: {disks:?}");
    assert_eq!(
        volume.volume_id,
        format!(
            "v1:evs-default:{}",
            disks[0]["id"].as_str().expect("disk id")
        )
    );
    world
        .controller()
        .await
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: volume.volume_id,
            ..Default::default()
        })
        .await
        .expect("DeleteVolume");
    assert!(world.disks().await.is_empty());
}
