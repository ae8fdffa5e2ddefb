//! Volume IDs that are not Everest's (csi-sanity sends made-up ones such as `some-vol-id`) or
//! whose backend instance this driver has no configuration for. What the spec asks:
//! - a volume that does not exist is NOT_FOUND from every call that reads or uses it;
//! - DeleteVolume and ControllerUnpublishVolume of a volume that does not exist succeed;
//! - but a well-formed ID of an unconfigured instance may still name a real volume, so those two
//!   answer FAILED_PRECONDITION naming the instance instead of a success that would forget it;
//! - NodeUnpublish and NodeUnstage tear down by path, whatever the ID.

use super::*;

/// Not Everest's: no version prefix, an unknown version, a backend name that cannot be ours.
const FOREIGN: [&str; 3] = ["some-vol-id", "v2:evs-default:x", "v1:EVS:x"];
/// Well-formed, on an instance that is not configured.
const UNCONFIGURED: &str = "v1:not-configured:0c0ffee0";

#[tokio::test]
async fn volumes_that_are_not_ours_are_not_found_and_removing_them_is_safe() {
    let Some(world) = start().await else {
        return;
    };
    let node_id = world.node_id().await;
    let target = world.target_path("pod-ids", "vol");
    let staging = world.staging_path("ids");
    std::fs::create_dir_all(&target).expect("create the target path");
    std::fs::create_dir_all(&staging).expect("create the staging path");
    let mut c = world.controller().await;
    let mut n = world.node().await;
    for id in FOREIGN.iter().copied().chain([UNCONFIGURED]) {
        let volume_id = || id.to_string();
        expect_error(
            c.controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: volume_id(),
                node_id: node_id.clone(),
                volume_capability: Some(ext4()),
                ..Default::default()
            })
            .await,
            Code::NotFound,
            &[id],
        );
        expect_error(
            c.validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
                volume_id: volume_id(),
                volume_capabilities: vec![ext4()],
                ..Default::default()
            })
            .await,
            Code::NotFound,
            &[id],
        );
        expect_error(
            c.controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: volume_id(),
                capacity_range: at_least(2 * GIB),
                ..Default::default()
            })
            .await,
            Code::NotFound,
            &[id],
        );
        expect_error(
            c.controller_get_volume(csi::ControllerGetVolumeRequest {
                volume_id: volume_id(),
            })
            .await,
            Code::NotFound,
            &[id],
        );
        expect_error(
            n.node_stage_volume(csi::NodeStageVolumeRequest {
                volume_id: volume_id(),
                staging_target_path: staging.clone(),
                volume_capability: Some(ext4()),
                ..Default::default()
            })
            .await,
            Code::NotFound,
            &[id],
        );
        expect_error(
            n.node_publish_volume(csi::NodePublishVolumeRequest {
                volume_id: volume_id(),
                staging_target_path: staging.clone(),
                target_path: target.clone(),
                volume_capability: Some(ext4()),
                ..Default::default()
            })
            .await,
            Code::NotFound,
            &[id],
        );
        expect_error(
            n.node_expand_volume(csi::NodeExpandVolumeRequest {
                volume_id: volume_id(),
                volume_path: target.clone(),
                capacity_range: at_least(2 * GIB),
                ..Default::default()
            })
            .await,
            Code::NotFound,
            &[id],
        );
        expect_error(
            n.node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: volume_id(),
                volume_path: target.clone(),
                staging_target_path: String::new(),
            })
            .await,
            Code::NotFound,
            &[id],
        );
    }

    // Removing: OK for what is not ours, FAILED_PRECONDITION for an unconfigured instance.
    for id in FOREIGN {
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("DeleteVolume {id}: {s:?}"));
        c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
            volume_id: id.into(),
            node_id: node_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("ControllerUnpublishVolume {id}: {s:?}"));
    }
    expect_error(
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: UNCONFIGURED.into(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        &["not-configured"],
    );
    expect_error(
        c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
            volume_id: UNCONFIGURED.into(),
            node_id: node_id.clone(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        &["not-configured"],
    );

    // The node tears down by path whatever the ID: the kubelet can always clean up.
    for id in FOREIGN.iter().copied().chain([UNCONFIGURED]) {
        std::fs::create_dir_all(&target).expect("create the target path");
        n.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: id.into(),
            target_path: target.clone(),
        })
        .await
        .unwrap_or_else(|s| panic!("NodeUnpublishVolume {id}: {s:?}"));
        assert!(
            !std::path::Path::new(&target).exists(),
            "{id}: target path left"
        );
        n.node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.clone(),
        })
        .await
        .unwrap_or_else(|s| panic!("NodeUnstageVolume {id}: {s:?}"));
    }
    shut_down_clean(world).await;
}

#[tokio::test]
async fn a_volume_of_an_unconfigured_instance_is_unmounted_by_path() {
    let Some(world) = start().await else {
        return;
    };
    // A real published volume, torn down under an ID whose instance the node does not know
    // (what a kubelet holding an old PV's ID does after the instance was renamed).
    let mut v = Lifecycle::new(&world, "pvc-ids", ext4(), "pod-ids").await;
    v.bring_up(1).await;
    let mut n = world.node().await;
    n.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
        volume_id: UNCONFIGURED.into(),
        target_path: v.target.clone(),
    })
    .await
    .expect("NodeUnpublishVolume by path");
    n.node_unstage_volume(csi::NodeUnstageVolumeRequest {
        volume_id: UNCONFIGURED.into(),
        staging_target_path: v.staging.clone(),
    })
    .await
    .expect("NodeUnstageVolume by path");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&v.target) && !mounts.contains(&v.staging),
        "still mounted after teardown by path"
    );
    v.detach().await.expect("ControllerUnpublishVolume");
    v.delete().await.expect("DeleteVolume");
    shut_down_clean(world).await;
}
