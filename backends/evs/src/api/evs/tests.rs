use super::*;

#[test]
fn every_documented_status_round_trips() {
    let all = "creating, available, in-use, error, attaching, detaching, restoring-backup, \
               backing-up, error_restoring, uploading, downloading, extending, error_extending, \
               deleting, error_deleting, rollbacking, error_rollbacking, awaiting-transfer";
    for name in all.split(", ") {
        let status = VolumeStatus::from(name);
        assert!(!matches!(status, VolumeStatus::Other(_)), "{name} unknown");
        assert_eq!(status.as_str(), name);
    }
    assert_eq!(VolumeStatus::from("in-use"), VolumeStatus::InUse);
    assert_eq!(
        VolumeStatus::from("frozen"),
        VolumeStatus::Other("frozen".into())
    );
    assert_eq!(VolumeStatus::from("frozen").as_str(), "frozen");
    assert!(VolumeStatus::ErrorExtending.is_error());
    assert!(!VolumeStatus::InUse.is_error());
    assert!(VolumeStatus::ErrorRollbacking.is_deletable());
    assert!(!VolumeStatus::InUse.is_deletable());
}

#[test]
fn volume_decodes_documented_shape_and_ignores_unknown_fields() {
    let body = r#"{"volume": {
        "id": "6b604cef-0b62-4f1b-8a5a-2b3b1e9a7d3a", "name": "pvc-1", "status": "in-use",
        "size": 40, "volume_type": "SSD", "availability_zone": "az1", "multiattach": false,
        "metadata": {"__system__encrypted": "1", "hw:passthrough": "true"},
        "tags": {"k": "v"}, "wwn": "688860300000d136fa16f48f05992360", "encrypted": true,
        "bootable": "false", "service_type": "EVS", "brand_new_field": {"x": 1},
        "attachments": [{"attachment_id": "a1", "volume_id": "6b604cef-0b62-4f1b-8a5a-2b3b1e9a7d3a",
            "server_id": "s1", "host_name": null, "device": "/dev/sdb",
            "attached_at": "2016-05-25T02:42:10.856332", "id": "x"}],
        "created_at": "2016-05-25T02:38:40.392463", "updated_at": "2016-05-25T02:42:22.856332"
    }}"#;
    let v = serde_json::from_str::<VolumeEnvelope>(body).unwrap().volume;
    assert_eq!(v.status, VolumeStatus::InUse);
    assert_eq!(v.size, 40);
    assert_eq!(v.metadata["hw:passthrough"], "true");
    assert_eq!(v.tags["k"], "v");
    assert!(v.encrypted);
    assert_eq!(v.attachments.len(), 1);
    assert_eq!(v.attachments[0].server_id, "s1");
    assert_eq!(v.attachments[0].device.as_deref(), Some("/dev/sdb"));
    assert!(v.attachments[0].host_name.is_none());
    assert_eq!(v.created_at.unwrap().timestamp(), 1_464_143_920);

    let minimal: Volume = serde_json::from_str(
        r#"{"id":"x","status":"creating","metadata":null,"attachments":null,"wwn":null}"#,
    )
    .unwrap();
    assert!(minimal.attachments.is_empty() && minimal.metadata.is_empty());
}

#[test]
fn create_body_shape() {
    let spec = CreateVolume {
        availability_zone: "az1".into(),
        volume_type: "GPSSD2".into(),
        name: "pvc-1".into(),
        size: 10,
        iops: Some(3000),
        throughput: Some(125),
        metadata: BTreeMap::from([("__system__encrypted".into(), "1".into())]),
        dedicated_storage_id: Some("dss".into()),
        ..Default::default()
    };
    let body = serde_json::to_value(CreateBody {
        volume: &spec,
        hints: Some(Hints {
            dedicated_storage_id: "dss",
        }),
    })
    .unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "volume": {"availability_zone": "az1", "volume_type": "GPSSD2", "name": "pvc-1",
                "size": 10, "iops": 3000, "throughput": 125,
                "metadata": {"__system__encrypted": "1"}},
            "OS-SCH-HNT:scheduler_hints": {"dedicated_storage_id": "dss"}
        })
    );
}

#[test]
fn filter_query() {
    let filter = VolumeFilter {
        name: Some("pvc 1".into()),
        metadata: BTreeMap::from([("k".into(), "v".into())]),
        ids: vec!["a".into(), "b".into()],
        status: Some(VolumeStatus::InUse),
        limit: Some(10),
        ..Default::default()
    };
    let q = filter.to_query().unwrap();
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("name"), Some("pvc 1"));
    assert_eq!(get("metadata"), Some(r#"{"k":"v"}"#));
    assert_eq!(get("ids"), Some("['a','b']"));
    assert_eq!(get("status"), Some("in-use"));
    assert_eq!(get("limit"), Some("10"));
    assert_eq!(get("marker"), None);

    let too_many = VolumeFilter {
        ids: (0..61).map(|i| i.to_string()).collect(),
        ..Default::default()
    };
    assert!(matches!(too_many.to_query(), Err(Error::InvalidInput(_))));
    let injected = VolumeFilter {
        ids: vec!["a','b".into()],
        ..Default::default()
    };
    assert!(injected.to_query().is_err());
}

#[test]
fn next_marker_from_links() {
    let vols: Vec<Volume> = serde_json::from_str(
        r#"[{"id":"v1","status":"available"},{"id":"v2","status":"available"}]"#,
    )
    .unwrap();
    let link = |href: &str, rel: &str| Link {
        href: href.into(),
        rel: rel.into(),
    };
    assert_eq!(
        next_marker(
            &[link(
                "https://evs/v2/p/cloudvolumes/detail?limit=2&marker=v%202",
                "next"
            )],
            &vols
        ),
        Some("v 2".into())
    );
    assert_eq!(
        next_marker(&[link("https://x/detail?limit=2", "next")], &vols),
        Some("v2".into())
    );
    assert_eq!(next_marker(&[link("https://x/", "self")], &vols), None);
    assert_eq!(next_marker(&[], &vols), None);
}
