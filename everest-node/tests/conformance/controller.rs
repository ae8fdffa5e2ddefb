//! Controller: capabilities, CreateVolume/DeleteVolume, ValidateVolumeCapabilities, ListVolumes, publish and expand.

use super::*;

// ----------------------------------------------------------------- Controller capabilities

#[tokio::test]
async fn controller_capabilities_match_the_rpcs_that_answer() {
    if skip_unless_root_and_loop() {
        return;
    }
    let world = World::start().await;
    let mut c = world.controller().await;
    let caps = controller_rpcs(&world).await;
    assert!(!caps.contains(&CtrlRpc::Unknown), "UNKNOWN advertised");
    let has = |t: CtrlRpc| caps.contains(&t);
    let not_unimplemented = |what: &str, r: Result<(), tonic::Status>| {
        if let Err(s) = r {
            assert_ne!(
                s.code(),
                Code::Unimplemented,
                "{what} is advertised but UNIMPLEMENTED: {}",
                s.message()
            );
            panic!("{what} failed: {s:?}");
        }
    };

    // Advertised RPCs answer on a real volume.
    assert!(has(CtrlRpc::CreateDeleteVolume), "{caps:?}");
    let vol = create_volume(&world, "pvc-caps").await;
    let node_id = world.node_id().await;
    if has(CtrlRpc::PublishUnpublishVolume) {
        let r = c
            .controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: vol.volume_id.clone(),
                node_id: node_id.clone(),
                volume_capability: Some(ext4()),
                volume_context: vol.volume_context.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ());
        not_unimplemented("ControllerPublishVolume", r);
    }
    if has(CtrlRpc::ListVolumes) {
        let listed = c
            .list_volumes(csi::ListVolumesRequest::default())
            .await
            .map(|r| r.into_inner());
        let entry = listed
            .as_ref()
            .ok()
            .and_then(|l| {
                l.entries
                    .iter()
                    .find(|e| e.volume.as_ref().map(|v| &v.volume_id) == Some(&vol.volume_id))
            })
            .cloned();
        not_unimplemented("ListVolumes", listed.map(|_| ()));
        let entry = entry.expect("ListVolumes lists the created volume");
        if has(CtrlRpc::ListVolumesPublishedNodes) && has(CtrlRpc::PublishUnpublishVolume) {
            let published = entry
                .status
                .map(|s| s.published_node_ids)
                .unwrap_or_default();
            assert_eq!(
                published,
                vec![node_id.clone()],
                "LIST_VOLUMES_PUBLISHED_NODES advertised, but the attached node is not listed"
            );
        }
    }
    if has(CtrlRpc::GetVolume) {
        let got = c
            .controller_get_volume(csi::ControllerGetVolumeRequest {
                volume_id: vol.volume_id.clone(),
            })
            .await
            .map(|r| r.into_inner());
        if let Ok(got) = &got {
            assert_eq!(
                got.volume.as_ref().map(|v| v.volume_id.as_str()),
                Some(vol.volume_id.as_str())
            );
            if has(CtrlRpc::VolumeCondition) {
                let cond = got.status.as_ref().and_then(|s| s.volume_condition.clone());
                assert!(
                    cond.is_some_and(|c| !c.abnormal),
                    "VOLUME_CONDITION advertised, but ControllerGetVolume has no normal condition: {got:?}"
                );
            }
        }
        not_unimplemented("ControllerGetVolume", got.map(|_| ()));
    }
    if has(CtrlRpc::ExpandVolume) {
        let r = c
            .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: vol.volume_id.clone(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: 2 * GIB,
                    limit_bytes: 0,
                }),
                volume_capability: Some(ext4()),
                ..Default::default()
            })
            .await
            .map(|_| ());
        not_unimplemented("ControllerExpandVolume", r);
    }
    if has(CtrlRpc::PublishUnpublishVolume) {
        let r = c
            .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
                volume_id: vol.volume_id.clone(),
                node_id: node_id.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ());
        not_unimplemented("ControllerUnpublishVolume", r);
    }
    delete_volume(&world, &vol.volume_id).await;

    // Unadvertised RPCs are UNIMPLEMENTED, and say which RPC.
    if !has(CtrlRpc::GetCapacity) {
        expect_error(
            c.get_capacity(csi::GetCapacityRequest::default()).await,
            Code::Unimplemented,
            &["GetCapacity"],
        );
    }
    if !has(CtrlRpc::CreateDeleteSnapshot) {
        expect_error(
            c.create_snapshot(csi::CreateSnapshotRequest {
                source_volume_id: missing_volume_id(),
                name: "snap".into(),
                ..Default::default()
            })
            .await,
            Code::Unimplemented,
            &["CreateSnapshot"],
        );
        expect_error(
            c.delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: "snap".into(),
                ..Default::default()
            })
            .await,
            Code::Unimplemented,
            &["DeleteSnapshot"],
        );
    }
    if !has(CtrlRpc::ListSnapshots) {
        expect_error(
            c.list_snapshots(csi::ListSnapshotsRequest::default()).await,
            Code::Unimplemented,
            &["ListSnapshots"],
        );
    }
    if !has(CtrlRpc::GetSnapshot) {
        expect_error(
            c.get_snapshot(csi::GetSnapshotRequest {
                snapshot_id: "snap".into(),
                ..Default::default()
            })
            .await,
            Code::Unimplemented,
            &["GetSnapshot"],
        );
    }
    if !has(CtrlRpc::ModifyVolume) {
        expect_error(
            c.controller_modify_volume(csi::ControllerModifyVolumeRequest {
                volume_id: missing_volume_id(),
                ..Default::default()
            })
            .await,
            Code::Unimplemented,
            &["ControllerModifyVolume"],
        );
    }
    shut_down_clean(world).await;
}

// ------------------------------------------------------------------- CreateVolume / Delete

#[tokio::test]
async fn create_volume_without_name_is_invalid_argument() {
    let world = World::start().await;
    let mut r = create_request("pvc-noname", GIB, ext4(), &[]);
    r.name.clear();
    expect_error(
        world.controller().await.create_volume(r).await,
        Code::InvalidArgument,
        &["name"],
    );
    shut_down_clean(world).await;
}

#[tokio::test]
async fn create_volume_without_capabilities_is_invalid_argument() {
    let world = World::start().await;
    let mut r = create_request("pvc-nocaps", GIB, ext4(), &[]);
    r.volume_capabilities.clear();
    expect_error(
        world.controller().await.create_volume(r).await,
        Code::InvalidArgument,
        &["volume_capabilities"],
    );
    shut_down_clean(world).await;
}

#[tokio::test]
async fn create_volume_twice_with_one_name_returns_the_same_volume() {
    let world = World::start().await;
    let first = create_volume(&world, "pvc-twice").await;
    let second = create_volume(&world, "pvc-twice").await;
    assert!(!first.volume_id.is_empty());
    assert_eq!(first.volume_id, second.volume_id);
    assert_eq!(first.capacity_bytes, second.capacity_bytes);
    assert!(first.capacity_bytes >= GIB, "{first:?}");
    assert_eq!(world.disks().await.len(), 1, "the repeat created a disk");
    delete_volume(&world, &first.volume_id).await;
    shut_down_clean(world).await;
}

#[tokio::test]
async fn delete_volume_without_id_is_invalid_argument() {
    let world = World::start().await;
    expect_error(
        world
            .controller()
            .await
            .delete_volume(csi::DeleteVolumeRequest::default())
            .await,
        Code::InvalidArgument,
        &["volume_id"],
    );
    shut_down_clean(world).await;
}

#[tokio::test]
async fn delete_volume_of_a_missing_volume_is_ok() {
    let world = World::start().await;
    delete_volume(&world, &missing_volume_id()).await;
    shut_down_clean(world).await;
}

// ------------------------------------------------------------- ValidateVolumeCapabilities

#[tokio::test]
async fn validate_volume_capabilities_without_id_is_invalid_argument() {
    let world = World::start().await;
    expect_error(
        world
            .controller()
            .await
            .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
                volume_capabilities: vec![ext4()],
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &["volume_id"],
    );
    shut_down_clean(world).await;
}

#[tokio::test]
async fn validate_volume_capabilities_without_capabilities_is_invalid_argument() {
    let world = World::start().await;
    let vol = create_volume(&world, "pvc-validate-nocaps").await;
    expect_error(
        world
            .controller()
            .await
            .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
                volume_id: vol.volume_id.clone(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &["volume_capabilities"],
    );
    delete_volume(&world, &vol.volume_id).await;
    shut_down_clean(world).await;
}

#[tokio::test]
async fn validate_volume_capabilities_of_a_missing_volume_is_not_found() {
    let world = World::start().await;
    expect_error(
        world
            .controller()
            .await
            .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
                volume_id: missing_volume_id(),
                volume_capabilities: vec![ext4()],
                ..Default::default()
            })
            .await,
        Code::NotFound,
        &[MISSING_NATIVE_ID],
    );
    shut_down_clean(world).await;
}

#[tokio::test]
async fn validate_volume_capabilities_confirms_supported_capabilities() {
    let world = World::start().await;
    let vol = create_volume(&world, "pvc-validate").await;
    let resp = world
        .controller()
        .await
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: vol.volume_id.clone(),
            volume_capabilities: vec![ext4()],
            volume_context: vol.volume_context.clone(),
            ..Default::default()
        })
        .await
        .expect("ValidateVolumeCapabilities")
        .into_inner();
    let confirmed = resp
        .confirmed
        .unwrap_or_else(|| panic!("not confirmed: {:?}", resp.message));
    assert_eq!(confirmed.volume_capabilities, vec![ext4()]);
    delete_volume(&world, &vol.volume_id).await;
    shut_down_clean(world).await;
}

// ------------------------------------------------------------------------- ListVolumes

#[tokio::test]
async fn list_volumes_pages_through_every_volume_one_at_a_time() {
    let world = World::start().await;
    let mut created = Vec::new();
    for name in ["pvc-list-a", "pvc-list-b", "pvc-list-c"] {
        created.push(create_volume(&world, name).await.volume_id);
    }
    let mut c = world.controller().await;
    let (mut seen, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = c
            .list_volumes(csi::ListVolumesRequest {
                max_entries: 1,
                starting_token: token.clone(),
            })
            .await
            .expect("ListVolumes")
            .into_inner();
        pages += 1;
        assert!(page.entries.len() <= 1, "max_entries=1 gave {page:?}");
        seen.extend(
            page.entries
                .into_iter()
                .filter_map(|e| e.volume.map(|v| v.volume_id)),
        );
        if page.next_token.is_empty() {
            break;
        }
        assert!(pages < 20, "ListVolumes never stops paging: {seen:?}");
        token = page.next_token;
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        seen.len(),
        "a volume was listed twice: {seen:?}"
    );
    created.sort();
    assert_eq!(sorted, created, "paging did not walk every volume");
    for id in &created {
        delete_volume(&world, id).await;
    }
    shut_down_clean(world).await;
}

#[tokio::test]
async fn list_volumes_with_an_invalid_starting_token_is_aborted() {
    let world = World::start().await;
    expect_error(
        world
            .controller()
            .await
            .list_volumes(csi::ListVolumesRequest {
                max_entries: 0,
                starting_token: "not-a-token-we-issued".into(),
            })
            .await,
        Code::Aborted,
        &["starting_token"],
    );
    shut_down_clean(world).await;
}

#[tokio::test]
async fn controller_get_volume_of_a_missing_volume_is_not_found() {
    let world = World::start().await;
    expect_error(
        world
            .controller()
            .await
            .controller_get_volume(csi::ControllerGetVolumeRequest {
                volume_id: missing_volume_id(),
            })
            .await,
        Code::NotFound,
        &[MISSING_NATIVE_ID],
    );
    shut_down_clean(world).await;
}

// ------------------------------------------------------------------- ControllerPublish

fn publish_request(volume_id: &str, node_id: &str) -> csi::ControllerPublishVolumeRequest {
    csi::ControllerPublishVolumeRequest {
        volume_id: volume_id.to_string(),
        node_id: node_id.to_string(),
        volume_capability: Some(ext4()),
        ..Default::default()
    }
}

#[tokio::test]
async fn controller_publish_without_volume_id_is_invalid_argument() {
    let world = World::start().await;
    let node = world.node_id().await;
    expect_error(
        world
            .controller()
            .await
            .controller_publish_volume(publish_request("", &node))
            .await,
        Code::InvalidArgument,
        &["volume_id"],
    );
    shut_down_clean(world).await;
}

#[tokio::test]
async fn controller_publish_without_node_id_is_invalid_argument() {
    let world = World::start().await;
    let vol = create_volume(&world, "pvc-pub-nonode").await;
    expect_error(
        world
            .controller()
            .await
            .controller_publish_volume(publish_request(&vol.volume_id, ""))
            .await,
        Code::InvalidArgument,
        &["node_id"],
    );
    delete_volume(&world, &vol.volume_id).await;
    shut_down_clean(world).await;
}

#[tokio::test]
async fn controller_publish_without_capability_is_invalid_argument() {
    let world = World::start().await;
    let vol = create_volume(&world, "pvc-pub-nocap").await;
    let node = world.node_id().await;
    let mut req = publish_request(&vol.volume_id, &node);
    req.volume_capability = None;
    expect_error(
        world
            .controller()
            .await
            .controller_publish_volume(req)
            .await,
        Code::InvalidArgument,
        &["volume_capability"],
    );
    delete_volume(&world, &vol.volume_id).await;
    shut_down_clean(world).await;
}

#[tokio::test]
async fn controller_publish_of_a_missing_volume_is_not_found() {
    let world = World::start().await;
    let node = world.node_id().await;
    expect_error(
        world
            .controller()
            .await
            .controller_publish_volume(publish_request(&missing_volume_id(), &node))
            .await,
        Code::NotFound,
        &[MISSING_NATIVE_ID],
    );
    shut_down_clean(world).await;
}

#[tokio::test]
async fn controller_publish_to_a_missing_node_is_not_found() {
    let world = World::start().await;
    let vol = create_volume(&world, "pvc-pub-nowhere").await;
    expect_error(
        world
            .controller()
            .await
            .controller_publish_volume(publish_request(&vol.volume_id, MISSING_NODE_ID))
            .await,
        Code::NotFound,
        &[MISSING_NODE_ID],
    );
    delete_volume(&world, &vol.volume_id).await;
    shut_down_clean(world).await;
}

#[tokio::test]
async fn controller_unpublish_without_volume_id_is_invalid_argument() {
    let world = World::start().await;
    let node = world.node_id().await;
    expect_error(
        world
            .controller()
            .await
            .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
                node_id: node,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &["volume_id"],
    );
    shut_down_clean(world).await;
}

#[tokio::test]
async fn controller_unpublish_of_a_volume_that_is_not_attached_is_ok() {
    let world = World::start().await;
    let vol = create_volume(&world, "pvc-unpub-idle").await;
    let node = world.node_id().await;
    world
        .controller()
        .await
        .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            node_id: node,
            ..Default::default()
        })
        .await
        .expect("ControllerUnpublishVolume of a volume attached nowhere");
    delete_volume(&world, &vol.volume_id).await;
    shut_down_clean(world).await;
}

// --------------------------------------------------------------------- ControllerExpand

#[tokio::test]
async fn controller_expand_without_volume_id_is_invalid_argument() {
    let world = World::start().await;
    expect_error(
        world
            .controller()
            .await
            .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: 2 * GIB,
                    limit_bytes: 0,
                }),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &["volume_id"],
    );
    shut_down_clean(world).await;
}

#[tokio::test]
async fn controller_expand_without_capacity_is_invalid_argument() {
    let world = World::start().await;
    let vol = create_volume(&world, "pvc-expand-nocap").await;
    expect_error(
        world
            .controller()
            .await
            .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: vol.volume_id.clone(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &["capacity_range"],
    );
    delete_volume(&world, &vol.volume_id).await;
    shut_down_clean(world).await;
}

#[tokio::test]
async fn controller_expand_of_a_missing_volume_is_not_found() {
    let world = World::start().await;
    expect_error(
        world
            .controller()
            .await
            .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: missing_volume_id(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: 2 * GIB,
                    limit_bytes: 0,
                }),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        &[MISSING_NATIVE_ID],
    );
    shut_down_clean(world).await;
}
