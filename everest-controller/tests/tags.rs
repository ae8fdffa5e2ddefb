//! The marker on an EVS disk, through the real controller and the emulator: the cluster from
//! `[controller] cluster_id`, the backend instance, the PV/PVC the provisioner names, and the
//! StorageClass's own tags, all within what the EVS tag API takes.

use std::collections::BTreeMap;

use everest_backend::BackendName;
use everest_backend::marker::{self, ClusterId, Marker, Owner};
use everest_testsupport::csi::mount_cap;
use everest_testsupport::{Lifecycle, World, WorldOptions, skip_unless_root_and_loop};
use tonic::Code;

use everest_proto::csi::v1::volume_capability::access_mode::Mode;

fn tags_of(disk: &serde_json::Value) -> BTreeMap<String, String> {
    disk["tags"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_disk_carries_the_marker_and_the_claim_it_was_made_for() {
    if skip_unless_root_and_loop() {
        return;
    }
    let world = World::start_with(WorldOptions {
        controller_extra: vec!["cluster_id = \"tags-test\"".into()],
        ..WorldOptions::default()
    })
    .await
    .expect("start the world");
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    // A PVC name with dots (a DNS subdomain) the EVS tag API would refuse as it is.
    let pvc = "web.data-0";
    let mut life = Lifecycle::new(&world, "pvc-tags", cap.clone(), "pod-a").await;
    let vol = life
        .create(
            10,
            &[
                ("csi.storage.k8s.io/pv/name", "pvc-tags"),
                ("csi.storage.k8s.io/pvc/name", pvc),
                ("csi.storage.k8s.io/pvc/namespace", "shop"),
                ("everest.io/disk-tags", "team=storage"),
            ],
        )
        .await
        .expect("CreateVolume");
    let disk = world.disk(&vol.volume_id).await.expect("the disk exists");
    let tags = tags_of(&disk);
    assert_eq!(
        tags.get("team").map(String::as_str),
        Some("storage"),
        "{tags:?}"
    );
    let cluster = ClusterId::new("tags-test").unwrap();
    let backend = BackendName::new(everest_testsupport::BACKEND).unwrap();
    let Owner::Ours(mark) = Marker::owner(&tags, &cluster, &backend) else {
        panic!("the disk is not marked as this cluster's: {tags:?}");
    };
    assert!(mark.is_for_pv("pvc-tags"), "{mark:?}");
    assert_eq!(mark.pvc_namespace.as_deref(), Some("shop"));
    assert_eq!(mark.pvc_name, Some(marker::encode(pvc)));
    // Another cluster reading the same disk sees it is not its own.
    let other = ClusterId::new("other").unwrap();
    assert!(matches!(
        Marker::owner(&tags, &other, &backend),
        Owner::Elsewhere(_)
    ));
    life.delete().await.expect("DeleteVolume");

    // A StorageClass tag the EVS API would refuse, or one forging the marker, fails up front.
    for bad in ["cost.center=1", "everest-cluster=prod"] {
        let mut refused = Lifecycle::new(&world, "pvc-bad-tags", cap.clone(), "pod-a").await;
        let err = refused
            .create(10, &[("everest.io/disk-tags", bad)])
            .await
            .expect_err(bad);
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
        assert!(err.message().contains("everest.io/disk-tags"), "{err:?}");
    }
    assert!(
        world.disks().await.is_empty(),
        "a refused create made a disk"
    );
}
