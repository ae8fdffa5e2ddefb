//! Controller: capabilities, CreateVolume/DeleteVolume, ValidateVolumeCapabilities, ListVolumes, publish and expand.

use super::*;

// ----------------------------------------------------------------- Controller capabilities

#[tokio::test]
async fn controller_capabilities_match_the_rpcs_that_answer() {
    let Some(world) = start().await else {
        return;
    };
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
                capacity_range: at_least(2 * GIB),
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

rejects!(
    create_volume_without_name_is_invalid_argument,
    controller.create_volume,
    |w| csi::CreateVolumeRequest {
        name: String::new(),
        ..create_request("pvc-noname", GIB, ext4(), &[])
    },
    "name"
);
rejects!(
    create_volume_without_capabilities_is_invalid_argument,
    controller.create_volume,
    |w| csi::CreateVolumeRequest {
        volume_capabilities: Vec::new(),
        ..create_request("pvc-nocaps", GIB, ext4(), &[])
    },
    "volume_capabilities"
);
// The backend may round up (EVS disks are at least 10 GiB), so ask for more than it made.
rejects!(
    create_volume_with_one_name_and_another_size_is_already_exists,
    controller.create_volume,
    volume "pvc-resized",
    |w, vol| csi::CreateVolumeRequest {
        accessibility_requirements: Some(w.topology_requirement().await),
        ..create_request("pvc-resized", vol.capacity_bytes + 10 * GIB, ext4(), &[])
    } => AlreadyExists, ["pvc-resized"]
);

#[tokio::test]
async fn create_volume_twice_with_one_name_returns_the_same_volume() {
    let Some(world) = start().await else {
        return;
    };
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

rejects!(
    delete_volume_without_id_is_invalid_argument,
    controller.delete_volume,
    |w| csi::DeleteVolumeRequest::default(),
    "volume_id"
);

#[tokio::test]
async fn delete_volume_of_a_missing_volume_is_ok() {
    let Some(world) = start().await else {
        return;
    };
    delete_volume(&world, &missing_volume_id()).await;
    shut_down_clean(world).await;
}

// ------------------------------------------------------------- ValidateVolumeCapabilities

rejects!(
    validate_volume_capabilities_without_id_is_invalid_argument,
    controller.validate_volume_capabilities,
    |w| csi::ValidateVolumeCapabilitiesRequest {
        volume_capabilities: vec![ext4()],
        ..Default::default()
    },
    "volume_id"
);
rejects!(
    validate_volume_capabilities_without_capabilities_is_invalid_argument,
    controller.validate_volume_capabilities,
    volume "pvc-validate-nocaps",
    |w, vol| csi::ValidateVolumeCapabilitiesRequest {
        volume_id: vol.volume_id.clone(),
        ..Default::default()
    },
    "volume_capabilities"
);
rejects!(
    validate_volume_capabilities_of_a_missing_volume_is_not_found,
    controller.validate_volume_capabilities,
    |w| csi::ValidateVolumeCapabilitiesRequest {
        volume_id: missing_volume_id(),
        volume_capabilities: vec![ext4()],
        ..Default::default()
    } => NotFound, [MISSING_NATIVE_ID]
);

/// ValidateVolumeCapabilities of `caps` for `vol`, which must answer OK.
async fn validate(
    world: &World,
    vol: &csi::Volume,
    caps: Vec<csi::VolumeCapability>,
) -> csi::ValidateVolumeCapabilitiesResponse {
    world
        .controller()
        .await
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: vol.volume_id.clone(),
            volume_capabilities: caps,
            volume_context: vol.volume_context.clone(),
            ..Default::default()
        })
        .await
        .expect("ValidateVolumeCapabilities answers OK")
        .into_inner()
}

#[tokio::test]
async fn validate_volume_capabilities_confirms_supported_capabilities() {
    let Some(world) = start().await else {
        return;
    };
    let vol = create_volume(&world, "pvc-validate").await;
    let resp = validate(&world, &vol, vec![ext4()]).await;
    let confirmed = resp
        .confirmed
        .unwrap_or_else(|| panic!("not confirmed: {:?}", resp.message));
    assert_eq!(confirmed.volume_capabilities, vec![ext4()]);
    delete_volume(&world, &vol.volume_id).await;
    shut_down_clean(world).await;
}

#[tokio::test]
async fn validate_volume_capabilities_leaves_unsupported_capabilities_unconfirmed() {
    let Some(world) = start().await else {
        return;
    };
    let vol = create_volume(&world, "pvc-validate-mnmw").await;
    let resp = validate(&world, &vol, vec![block_cap(Mode::MultiNodeMultiWriter)]).await;
    assert!(resp.confirmed.is_none(), "{resp:?}");
    assert!(!resp.message.is_empty(), "no reason given: {resp:?}");
    delete_volume(&world, &vol.volume_id).await;
    shut_down_clean(world).await;
}

// ------------------------------------------------------------------------- ListVolumes

/// One ListVolumes page of `max` entries from `token`: the IDs and the next token.
async fn list_page(world: &World, max: i32, token: &str) -> (Vec<String>, String) {
    let page = world
        .controller()
        .await
        .list_volumes(csi::ListVolumesRequest {
            max_entries: max,
            starting_token: token.to_owned(),
        })
        .await
        .expect("ListVolumes")
        .into_inner();
    assert!(page.entries.len() <= max as usize, "{page:?}");
    let ids = page
        .entries
        .into_iter()
        .filter_map(|e| e.volume.map(|v| v.volume_id))
        .collect();
    (ids, page.next_token)
}

#[tokio::test]
async fn list_volumes_paging_survives_volumes_coming_and_going() {
    let Some(world) = start().await else {
        return;
    };
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            create_volume(&world, &format!("pvc-churn-{i}"))
                .await
                .volume_id,
        );
    }
    let (first, mut token) = list_page(&world, 2, "").await;
    assert_eq!(first.len(), 2);
    // A volume already listed goes away, then a new one comes, while the listing is under way.
    delete_volume(&world, &first[0]).await;
    let mut seen = first.clone();
    let mut pages = 1;
    let mut newcomer = None;
    while !token.is_empty() {
        let (more, next) = list_page(&world, 2, &token).await;
        seen.extend(more);
        token = next;
        pages += 1;
        assert!(pages < 20, "ListVolumes never stops paging: {seen:?}");
        if newcomer.is_none() {
            newcomer = Some(create_volume(&world, "pvc-churn-new").await.volume_id);
        }
    }
    let newcomer = newcomer.expect("five volumes take more than one page of two");
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        seen.len(),
        "a volume was listed twice: {seen:?}"
    );
    // Every volume that existed throughout is listed exactly once: no gap.
    for id in &ids[..] {
        if *id != first[0] {
            assert!(seen.contains(id), "{id} was skipped: {seen:?}");
        }
    }
    for id in ids.iter().filter(|id| **id != first[0]).chain([&newcomer]) {
        delete_volume(&world, id).await;
    }
    shut_down_clean(world).await;
}

#[tokio::test]
async fn list_volumes_pages_through_every_volume_one_at_a_time() {
    let Some(world) = start().await else {
        return;
    };
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

rejects!(
    list_volumes_with_an_invalid_starting_token_is_aborted,
    controller.list_volumes,
    |w| csi::ListVolumesRequest {
        max_entries: 0,
        starting_token: "not-a-token-we-issued".into(),
    } => Aborted, ["starting_token"]
);
rejects!(
    list_volumes_with_negative_max_entries_is_invalid_argument,
    controller.list_volumes,
    |w| csi::ListVolumesRequest {
        max_entries: -1,
        starting_token: String::new(),
    },
    "max_entries"
);
rejects!(
    controller_get_volume_of_a_missing_volume_is_not_found,
    controller.controller_get_volume,
    |w| csi::ControllerGetVolumeRequest {
        volume_id: missing_volume_id(),
    } => NotFound, [MISSING_NATIVE_ID]
);

// ------------------------------------------------------------------- ControllerPublish

fn publish_request(volume_id: &str, node_id: &str) -> csi::ControllerPublishVolumeRequest {
    csi::ControllerPublishVolumeRequest {
        volume_id: volume_id.to_string(),
        node_id: node_id.to_string(),
        volume_capability: Some(ext4()),
        ..Default::default()
    }
}

rejects!(
    controller_publish_without_volume_id_is_invalid_argument,
    controller.controller_publish_volume,
    |w| publish_request("", &w.node_id().await),
    "volume_id"
);
rejects!(
    controller_publish_without_node_id_is_invalid_argument,
    controller.controller_publish_volume,
    volume "pvc-pub-nonode",
    |w, vol| publish_request(&vol.volume_id, ""),
    "node_id"
);
rejects!(
    controller_publish_without_capability_is_invalid_argument,
    controller.controller_publish_volume,
    volume "pvc-pub-nocap",
    |w, vol| csi::ControllerPublishVolumeRequest {
        volume_capability: None,
        ..publish_request(&vol.volume_id, &w.node_id().await)
    },
    "volume_capability"
);
rejects!(
    controller_publish_of_a_missing_volume_is_not_found,
    controller.controller_publish_volume,
    |w| publish_request(&missing_volume_id(), &w.node_id().await)
        => NotFound, [MISSING_NATIVE_ID]
);
rejects!(
    controller_publish_to_a_missing_node_is_not_found,
    controller.controller_publish_volume,
    volume "pvc-pub-nowhere",
    |w, vol| publish_request(&vol.volume_id, MISSING_NODE_ID) => NotFound, [MISSING_NODE_ID]
);
rejects!(
    controller_unpublish_without_volume_id_is_invalid_argument,
    controller.controller_unpublish_volume,
    |w| csi::ControllerUnpublishVolumeRequest {
        node_id: w.node_id().await,
        ..Default::default()
    },
    "volume_id"
);

/// ControllerUnpublishVolume of `volume_id` from this world's node, which must answer OK.
async fn unpublish_ok(world: &World, volume_id: &str, what: &str) {
    world
        .controller()
        .await
        .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
            volume_id: volume_id.to_string(),
            node_id: world.node_id().await,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("ControllerUnpublishVolume of {what}: {s:?}"));
}

#[tokio::test]
async fn controller_unpublish_of_a_volume_that_is_not_attached_is_ok() {
    let Some(world) = start().await else {
        return;
    };
    let vol = create_volume(&world, "pvc-unpub-idle").await;
    unpublish_ok(&world, &vol.volume_id, "a volume attached nowhere").await;
    delete_volume(&world, &vol.volume_id).await;
    shut_down_clean(world).await;
}

#[tokio::test]
async fn controller_unpublish_of_a_missing_volume_is_ok() {
    let Some(world) = start().await else {
        return;
    };
    unpublish_ok(&world, &missing_volume_id(), "a volume that does not exist").await;
    shut_down_clean(world).await;
}

// --------------------------------------------------------------------- ControllerExpand

rejects!(
    controller_expand_without_volume_id_is_invalid_argument,
    controller.controller_expand_volume,
    |w| csi::ControllerExpandVolumeRequest {
        capacity_range: at_least(2 * GIB),
        ..Default::default()
    },
    "volume_id"
);
rejects!(
    controller_expand_without_capacity_is_invalid_argument,
    controller.controller_expand_volume,
    volume "pvc-expand-nocap",
    |w, vol| csi::ControllerExpandVolumeRequest {
        volume_id: vol.volume_id.clone(),
        ..Default::default()
    },
    "capacity_range"
);
rejects!(
    controller_expand_of_a_missing_volume_is_not_found,
    controller.controller_expand_volume,
    |w| csi::ControllerExpandVolumeRequest {
        volume_id: missing_volume_id(),
        capacity_range: at_least(2 * GIB),
        ..Default::default()
    } => NotFound, [MISSING_NATIVE_ID]
);

// Snapshots and in-place modification: the rows of the CSI spec's error tables for
// CreateSnapshot, DeleteSnapshot, ListSnapshots and ControllerModifyVolume, on the block
// backend that offers them.
rejects!(
    create_snapshot_without_a_name_is_invalid_argument,
    controller.create_snapshot,
    |w| csi::CreateSnapshotRequest {
        source_volume_id: some_volume_id(),
        ..Default::default()
    },
    "name"
);
rejects!(
    create_snapshot_without_a_source_is_invalid_argument,
    controller.create_snapshot,
    |w| csi::CreateSnapshotRequest {
        name: "snap-conformance".into(),
        ..Default::default()
    },
    "source_volume_id"
);
rejects!(
    create_snapshot_of_a_missing_volume_is_not_found,
    controller.create_snapshot,
    |w| csi::CreateSnapshotRequest {
        name: "snap-conformance".into(),
        source_volume_id: missing_volume_id(),
        ..Default::default()
    } => NotFound, [MISSING_NATIVE_ID]
);
rejects!(
    delete_snapshot_without_an_id_is_invalid_argument,
    controller.delete_snapshot,
    |w| csi::DeleteSnapshotRequest::default(),
    "snapshot_id"
);
rejects!(
    list_snapshots_with_an_invalid_starting_token_is_aborted,
    controller.list_snapshots,
    |w| csi::ListSnapshotsRequest {
        starting_token: "not-a-token-we-issued".into(),
        ..Default::default()
    } => Aborted, ["starting_token"]
);
rejects!(
    controller_modify_volume_without_a_volume_id_is_invalid_argument,
    controller.controller_modify_volume,
    |w| csi::ControllerModifyVolumeRequest::default(),
    "volume_id"
);
rejects!(
    controller_modify_volume_of_a_missing_volume_is_not_found,
    controller.controller_modify_volume,
    |w| csi::ControllerModifyVolumeRequest {
        volume_id: missing_volume_id(),
        mutable_parameters: [("everest.io/disk-volume-type".to_owned(), "SSD".to_owned())].into(),
        ..Default::default()
    } => NotFound, [MISSING_NATIVE_ID]
);
rejects!(
    controller_modify_volume_of_an_immutable_parameter_is_invalid_argument,
    controller.controller_modify_volume,
    volume "pvc-modify-immutable",
    |w, vol| csi::ControllerModifyVolumeRequest {
        volume_id: vol.volume_id.clone(),
        mutable_parameters: [("everest.io/crypt-key-id".to_owned(), "key-1".to_owned())].into(),
        ..Default::default()
    },
    "everest.io/crypt-key-id"
);

/// DeleteSnapshot of a snapshot that does not exist is OK (the spec's idempotency row).
#[tokio::test]
async fn delete_snapshot_of_a_missing_snapshot_is_ok() {
    let Some(world) = start().await else {
        return;
    };
    let mut c = world.controller().await;
    for id in [
        format!("v1:{BACKEND}:{MISSING_NATIVE_ID}"),
        "not-ours".to_owned(),
    ] {
        c.delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("DeleteSnapshot of {id}: {e:?}"));
    }
    shut_down_clean(world).await;
}
