//! Node: bad input, state checks, NodeGetInfo/NodeGetCapabilities, and the whole sequence.

use super::*;

// ------------------------------------------------------------------------ Node: bad input

fn stage_request(world: &World) -> csi::NodeStageVolumeRequest {
    let id = some_volume_id();
    csi::NodeStageVolumeRequest {
        staging_target_path: world.staging_path(&id),
        volume_id: id,
        volume_capability: Some(ext4()),
        publish_context: HashMap::new(),
        ..Default::default()
    }
}

fn node_publish_request(world: &World) -> csi::NodePublishVolumeRequest {
    let id = some_volume_id();
    csi::NodePublishVolumeRequest {
        staging_target_path: world.staging_path(&id),
        target_path: world.target_path("pod-conformance", &id),
        volume_id: id,
        volume_capability: Some(ext4()),
        ..Default::default()
    }
}

rejects!(
    node_stage_without_volume_id_is_invalid_argument,
    node.node_stage_volume,
    |w| csi::NodeStageVolumeRequest {
        volume_id: String::new(),
        ..stage_request(&w)
    },
    "volume_id"
);
rejects!(
    node_stage_without_staging_path_is_invalid_argument,
    node.node_stage_volume,
    |w| csi::NodeStageVolumeRequest {
        staging_target_path: String::new(),
        ..stage_request(&w)
    },
    "staging_target_path"
);
rejects!(
    node_stage_without_capability_is_invalid_argument,
    node.node_stage_volume,
    |w| csi::NodeStageVolumeRequest {
        volume_capability: None,
        ..stage_request(&w)
    },
    "volume_capability"
);
rejects!(
    node_unstage_without_volume_id_is_invalid_argument,
    node.node_unstage_volume,
    |w| csi::NodeUnstageVolumeRequest {
        volume_id: String::new(),
        staging_target_path: w.staging_path(&some_volume_id()),
    },
    "volume_id"
);
rejects!(
    node_unstage_without_staging_path_is_invalid_argument,
    node.node_unstage_volume,
    |w| csi::NodeUnstageVolumeRequest {
        volume_id: some_volume_id(),
        staging_target_path: String::new(),
    },
    "staging_target_path"
);
rejects!(
    node_publish_without_volume_id_is_invalid_argument,
    node.node_publish_volume,
    |w| csi::NodePublishVolumeRequest {
        volume_id: String::new(),
        ..node_publish_request(&w)
    },
    "volume_id"
);
rejects!(
    node_publish_without_target_path_is_invalid_argument,
    node.node_publish_volume,
    |w| csi::NodePublishVolumeRequest {
        target_path: String::new(),
        ..node_publish_request(&w)
    },
    "target_path"
);
rejects!(
    node_publish_without_capability_is_invalid_argument,
    node.node_publish_volume,
    |w| csi::NodePublishVolumeRequest {
        volume_capability: None,
        ..node_publish_request(&w)
    },
    "volume_capability"
);
rejects!(
    node_unpublish_without_volume_id_is_invalid_argument,
    node.node_unpublish_volume,
    |w| csi::NodeUnpublishVolumeRequest {
        volume_id: String::new(),
        target_path: w.target_path("pod-conformance", "vol"),
    },
    "volume_id"
);
rejects!(
    node_unpublish_without_target_path_is_invalid_argument,
    node.node_unpublish_volume,
    |w| csi::NodeUnpublishVolumeRequest {
        volume_id: some_volume_id(),
        target_path: String::new(),
    },
    "target_path"
);
rejects!(
    node_expand_without_volume_id_is_invalid_argument,
    node.node_expand_volume,
    |w| csi::NodeExpandVolumeRequest {
        volume_path: w.target_path("pod-conformance", "vol"),
        ..Default::default()
    },
    "volume_id"
);
rejects!(
    node_expand_without_volume_path_is_invalid_argument,
    node.node_expand_volume,
    |w| csi::NodeExpandVolumeRequest {
        volume_id: some_volume_id(),
        ..Default::default()
    },
    "volume_path"
);
rejects!(
    node_get_volume_stats_without_volume_id_is_invalid_argument,
    node.node_get_volume_stats,
    |w| csi::NodeGetVolumeStatsRequest {
        volume_path: w.target_path("pod-conformance", "vol"),
        ..Default::default()
    },
    "volume_id"
);
rejects!(
    node_get_volume_stats_without_volume_path_is_invalid_argument,
    node.node_get_volume_stats,
    |w| csi::NodeGetVolumeStatsRequest {
        volume_id: some_volume_id(),
        ..Default::default()
    },
    "volume_path"
);

// --------------------------------------------------------------------- Node: state checks

#[tokio::test]
async fn node_get_volume_stats_on_a_missing_path_is_not_found() {
    let Some(world) = start().await else {
        return;
    };
    let vol = create_volume(&world, "pvc-stats-nowhere").await;
    // The parent exists (kubelet makes it); the path itself was never created.
    let target = world.target_path("pod-conformance", "pvc-stats-nowhere");
    assert!(!std::path::Path::new(&target).exists());
    expect_error(
        world
            .node()
            .await
            .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: vol.volume_id.clone(),
                volume_path: target.clone(),
                staging_target_path: String::new(),
            })
            .await,
        Code::NotFound,
        &[&target, &vol.volume_id, "volume_path"],
    );
    delete_volume(&world, &vol.volume_id).await;
    shut_down_clean(world).await;
}

#[tokio::test]
async fn node_unpublish_of_a_never_published_path_is_ok() {
    let Some(world) = start().await else {
        return;
    };
    let vol = create_volume(&world, "pvc-unpub-never").await;
    let target = world.target_path("pod-conformance", "pvc-unpub-never");
    world
        .node()
        .await
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            target_path: target,
        })
        .await
        .expect("NodeUnpublishVolume of a path never published");
    delete_volume(&world, &vol.volume_id).await;
    shut_down_clean(world).await;
}

#[tokio::test]
async fn node_unstage_of_a_never_staged_path_is_ok() {
    let Some(world) = start().await else {
        return;
    };
    let vol = create_volume(&world, "pvc-unstage-never").await;
    let staging = world.staging_path(&vol.volume_id);
    world
        .node()
        .await
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: staging,
        })
        .await
        .expect("NodeUnstageVolume of a path never staged");
    delete_volume(&world, &vol.volume_id).await;
    shut_down_clean(world).await;
}

#[tokio::test]
async fn node_publish_of_a_volume_not_staged_is_failed_precondition() {
    let Some(world) = start().await else {
        return;
    };
    let mut v = Lifecycle::new(&world, "pvc-unstaged", ext4(), "pod-conformance").await;
    v.create(1, &[]).await.expect("CreateVolume");
    v.attach().await.expect("ControllerPublishVolume");
    // The staging directory exists (kubelet made it), but NodeStageVolume never ran.
    expect_error(
        v.publish(false).await,
        Code::FailedPrecondition,
        &[&v.id(), "staging_target_path", "not staged", "stage"],
    );
    assert!(
        everest_testsupport::host::mount_at(std::path::Path::new(&v.target)).is_none(),
        "the failed NodePublish mounted something"
    );
    v.unpublish().await.expect("NodeUnpublishVolume");
    v.detach().await.expect("ControllerUnpublishVolume");
    v.delete().await.expect("DeleteVolume");
    shut_down_clean(world).await;
}

#[tokio::test]
async fn node_get_info_reports_id_limit_and_zone() {
    let Some(world) = start().await else {
        return;
    };
    let info = world.node_info().await;
    assert!(!info.node_id.is_empty(), "empty node_id");
    assert!(info.node_id.len() <= 256, "node_id over 256 bytes");
    assert!(info.max_volumes_per_node > 0, "{info:?}");
    let zone = info
        .accessible_topology
        .as_ref()
        .and_then(|t| t.segments.get(ZONE_KEY));
    assert!(
        zone.is_some_and(|z| !z.is_empty()),
        "no {ZONE_KEY} in {info:?}"
    );
    shut_down_clean(world).await;
}

#[tokio::test]
async fn node_get_capabilities_lists_known_rpcs_once() {
    let Some(world) = start().await else {
        return;
    };
    let caps = node_rpcs(&world).await;
    assert!(!caps.contains(&NodeRpc::Unknown), "{caps:?}");
    let mut unique = caps.clone();
    unique.sort_by_key(|c| *c as i32);
    unique.dedup();
    assert_eq!(unique.len(), caps.len(), "duplicates in {caps:?}");
    // The controller publishes, so the node must stage (kubelet needs the staging step for
    // the device the attach produced).
    assert!(caps.contains(&NodeRpc::StageUnstageVolume), "{caps:?}");
    shut_down_clean(world).await;
}

// ------------------------------------------------------------- more csi-sanity cases

#[tokio::test]
async fn node_stage_of_a_missing_volume_is_not_found() {
    let Some(world) = start().await else {
        return;
    };
    let req = stage_request(&world);
    expect_error(
        world.node().await.node_stage_volume(req).await,
        Code::NotFound,
        &[MISSING_NATIVE_ID],
    );
    shut_down_clean(world).await;
}

#[tokio::test]
async fn node_publish_without_staging_path_is_failed_precondition() {
    let Some(world) = start().await else {
        return;
    };
    let mut v = Lifecycle::new(&world, "pvc-nostaging", ext4(), "pod-conformance").await;
    v.create(1, &[]).await.expect("CreateVolume");
    v.attach().await.expect("ControllerPublishVolume");
    v.stage().await.expect("NodeStageVolume");
    let req = csi::NodePublishVolumeRequest {
        volume_id: v.id(),
        publish_context: v.publish_context.clone(),
        staging_target_path: String::new(),
        target_path: v.target.clone(),
        volume_capability: Some(ext4()),
        ..Default::default()
    };
    let result = world.node().await.node_publish_volume(req).await;
    // Clean up before asserting, so a deviation leaves nothing mounted or attached.
    v.unpublish().await.expect("NodeUnpublishVolume");
    v.unstage().await.expect("NodeUnstageVolume");
    v.detach().await.expect("ControllerUnpublishVolume");
    v.delete().await.expect("DeleteVolume");
    expect_error(result, Code::FailedPrecondition, &["staging_target_path"]);
    shut_down_clean(world).await;
}

rejects!(
    node_expand_of_a_missing_volume_is_not_found,
    node.node_expand_volume,
    |w| {
        let target = w.target_path("pod-conformance", "vol");
        std::fs::create_dir_all(&target).expect("create the volume path");
        csi::NodeExpandVolumeRequest {
            volume_id: missing_volume_id(),
            volume_path: target,
            capacity_range: at_least(2 * GIB),
            ..Default::default()
        }
    } => NotFound, [MISSING_NATIVE_ID, "volume_path", "not"]
);

#[tokio::test]
async fn node_get_volume_stats_of_a_volume_not_at_the_path_is_not_found() {
    let Some(world) = start().await else {
        return;
    };
    // The path exists but nothing is mounted there.
    let target = world.target_path("pod-conformance", "vol");
    std::fs::create_dir_all(&target).expect("create the volume path");
    expect_error(
        world
            .node()
            .await
            .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: missing_volume_id(),
                volume_path: target.clone(),
                staging_target_path: String::new(),
            })
            .await,
        Code::NotFound,
        &[MISSING_NATIVE_ID, &target],
    );
    shut_down_clean(world).await;
}

// ----------------------------------------------------------------------- the happy path

#[tokio::test]
async fn full_lifecycle_as_csi_sanity_runs_it() {
    let Some(world) = start().await else {
        return;
    };
    let node_caps = node_rpcs(&world).await;
    let mut v = Lifecycle::new(&world, "pvc-sanity", ext4(), "pod-sanity").await;
    let vol = v.create(1, &[]).await.expect("CreateVolume");
    assert!(!vol.volume_id.is_empty());
    v.attach().await.expect("ControllerPublishVolume");
    v.stage().await.expect("NodeStageVolume");
    v.publish(false).await.expect("NodePublishVolume");
    if node_caps.contains(&NodeRpc::GetVolumeStats) {
        let stats = v.stats().await.expect("NodeGetVolumeStats");
        assert!(
            stats
                .usage
                .iter()
                .any(|u| u.unit == csi::volume_usage::Unit::Bytes as i32 && u.total > 0),
            "{stats:?}"
        );
        if node_caps.contains(&NodeRpc::VolumeCondition) {
            let cond = stats.volume_condition.expect("VOLUME_CONDITION advertised");
            assert!(!cond.abnormal, "{cond:?}");
        }
    }
    if node_caps.contains(&NodeRpc::ExpandVolume) {
        // Online expansion, as csi-resizer and kubelet do it: the controller grows the disk,
        // the node grows the filesystem on the published volume.
        let gib = vol.capacity_bytes / GIB + 1;
        let grown = v
            .controller_expand(gib)
            .await
            .expect("ControllerExpandVolume");
        assert!(grown.capacity_bytes >= gib * GIB, "{grown:?}");
        match v.node_expand(gib).await {
            Ok(node) => assert!(
                node.capacity_bytes == 0 || node.capacity_bytes >= gib * GIB,
                "{node:?}"
            ),
            // The spec's answer when the filesystem cannot grow while published; a machine
            // without CAP_SYS_RESOURCE cannot grow a mounted ext4.
            Err(status) => {
                let id = v.id();
                let native = id.rsplit(':').next().unwrap_or(&id);
                expect_error(Err::<(), _>(status), Code::FailedPrecondition, &[native]);
            }
        }
    }
    v.unpublish().await.expect("NodeUnpublishVolume");
    v.unstage().await.expect("NodeUnstageVolume");
    v.detach().await.expect("ControllerUnpublishVolume");
    v.delete().await.expect("DeleteVolume");
    shut_down_clean(world).await;
}

/// A symlink planted under the kubelet dir that leads elsewhere: every node call that would
/// create, mount on or remove a path through it is refused, naming the field, and nothing
/// appears at the other end. A dangling link is refused too (what it names could be created
/// anywhere). Teardown calls included: the plugin never unmounts or removes outside its root.
#[tokio::test]
async fn paths_that_leave_the_kubelet_dir_through_a_symlink_are_refused() {
    let Some(world) = start().await else {
        return;
    };
    let outside = tempfile::tempdir().unwrap();
    let pods = world.kubelet_root().join("pods");
    std::fs::create_dir_all(&pods).unwrap();
    std::os::unix::fs::symlink(outside.path(), pods.join("evil")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("gone"), pods.join("dangling")).unwrap();
    let vol = create_volume(&world, "pvc-symlink").await;
    let mut node = world.node().await;
    for via in ["evil", "dangling"] {
        let target = pods.join(via).join("volumes/kubernetes.io~csi/pvc/mount");
        let target = target.display().to_string();
        let publish = node
            .node_publish_volume(csi::NodePublishVolumeRequest {
                volume_id: vol.volume_id.clone(),
                staging_target_path: world.staging_path(&vol.volume_id),
                target_path: target.clone(),
                volume_capability: Some(ext4()),
                ..Default::default()
            })
            .await;
        expect_error(publish, Code::InvalidArgument, &["target_path"]);
        let unpublish = node
            .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: vol.volume_id.clone(),
                target_path: target.clone(),
            })
            .await;
        expect_error(unpublish, Code::InvalidArgument, &["target_path"]);
        let stats = node
            .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: vol.volume_id.clone(),
                volume_path: target,
                ..Default::default()
            })
            .await;
        expect_error(stats, Code::InvalidArgument, &["volume_path"]);
    }
    let staging = pods.join("evil/globalmount").display().to_string();
    let stage = node
        .node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: staging.clone(),
            volume_capability: Some(ext4()),
            ..Default::default()
        })
        .await;
    expect_error(stage, Code::InvalidArgument, &["staging_target_path"]);
    let unstage = node
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: staging,
        })
        .await;
    expect_error(unstage, Code::InvalidArgument, &["staging_target_path"]);
    // The target itself a link to outside: nothing is mounted through it; taking it down
    // unlinks the link and leaves its target alone.
    let pod_dir = pods.join("p1/volumes/kubernetes.io~csi/pvc");
    std::fs::create_dir_all(&pod_dir).unwrap();
    let link = pod_dir.join("mount");
    std::os::unix::fs::symlink(outside.path(), &link).unwrap();
    let publish = node
        .node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: world.staging_path(&vol.volume_id),
            target_path: link.display().to_string(),
            volume_capability: Some(ext4()),
            ..Default::default()
        })
        .await;
    expect_error(
        publish,
        Code::InvalidArgument,
        &["target_path", "symbolic link"],
    );
    node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        target_path: link.display().to_string(),
    })
    .await
    .expect("NodeUnpublishVolume of a target that is a link");
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "the link was left"
    );
    assert!(outside.path().is_dir(), "the link's target was removed");
    let made: Vec<_> = std::fs::read_dir(outside.path()).unwrap().collect();
    assert!(
        made.is_empty(),
        "the plugin created {made:?} outside its root"
    );
    delete_volume(&world, &vol.volume_id).await;
    shut_down_clean(world).await;
}
