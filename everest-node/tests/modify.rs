//! ControllerModifyVolume (VolumeAttributesClass) through the real daemons and emulator, as
//! csi-resizer calls it: a disk in use changes type and provisioned performance online and the
//! cloud shows it, the data stays; what cannot change gets INVALID_ARGUMENT naming it.

use std::io::Write;
use std::path::Path;

use everest_proto::csi::v1 as csi;
use everest_testsupport::csi::{expect_error, mount_cap};
use everest_testsupport::{Lifecycle, World, skip_unless_root_and_loop};
use tonic::Code;

use csi::volume_capability::access_mode::Mode;

fn modify_request(volume_id: &str, params: &[(&str, &str)]) -> csi::ControllerModifyVolumeRequest {
    csi::ControllerModifyVolumeRequest {
        volume_id: volume_id.into(),
        mutable_parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_disk_in_use_changes_type_and_performance_online() {
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
    assert!(format!("{caps:?}").contains("ModifyVolume"), "{caps:?}");

    let mut v = Lifecycle::new(
        &world,
        "pvc-vac",
        mount_cap("ext4", Mode::SingleNodeWriter),
        "pod-vac",
    )
    .await;
    v.bring_up(10).await;
    let file = Path::new(&v.target).join("kept.txt");
    let mut f = std::fs::File::create(&file).unwrap();
    f.write_all(b"still here\n").unwrap();
    f.sync_all().unwrap();
    drop(f);
    let disk = world.disk(&v.id()).await.unwrap();
    assert_eq!(disk["volume_type"], "SSD", "{disk}");

    // Type, online (the disk stays attached), twice: the second is already so.
    for _ in 0..2 {
        c.controller_modify_volume(modify_request(
            &v.id(),
            &[("everest.io/disk-volume-type", "ESSD")],
        ))
        .await
        .expect("ControllerModifyVolume to ESSD");
    }
    let disk = world.disk(&v.id()).await.unwrap();
    assert_eq!(disk["volume_type"], "ESSD", "{disk}");
    assert_eq!(disk["status"], "in-use", "{disk}");

    // To GPSSD2 with its provisioned figures, then new figures alone.
    c.controller_modify_volume(modify_request(
        &v.id(),
        &[
            ("everest.io/disk-volume-type", "GPSSD2"),
            ("everest.io/disk-iops", "3000"),
            ("everest.io/disk-throughput", "125"),
        ],
    ))
    .await
    .expect("ControllerModifyVolume to GPSSD2");
    c.controller_modify_volume(modify_request(
        &v.id(),
        &[
            ("everest.io/disk-iops", "6000"),
            ("everest.io/disk-throughput", "250"),
        ],
    ))
    .await
    .expect("ControllerModifyVolume of IOPS and throughput");
    let disk = world.disk(&v.id()).await.unwrap();
    assert_eq!(disk["volume_type"], "GPSSD2", "{disk}");
    assert_eq!(disk["iops"], 6000, "{disk}");
    assert_eq!(disk["throughput"], 250, "{disk}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "still here\n");

    // What cannot change, what is unknown, what the cloud refuses, and what does not exist.
    expect_error(
        c.controller_modify_volume(modify_request(
            &v.id(),
            &[("everest.io/crypt-key-id", "k1")],
        ))
        .await,
        Code::InvalidArgument,
        &["everest.io/crypt-key-id"],
    );
    expect_error(
        c.controller_modify_volume(modify_request(&v.id(), &[("everest.io/speed", "fast")]))
            .await,
        Code::InvalidArgument,
        &["everest.io/speed"],
    );
    expect_error(
        c.controller_modify_volume(modify_request(
            &v.id(),
            &[("everest.io/disk-volume-type", "SAS")],
        ))
        .await,
        Code::InvalidArgument,
        &["SAS"],
    );
    expect_error(
        c.controller_modify_volume(modify_request(
            "v1:evs-default:0b1c2d3e-0000-4000-8000-000000000000",
            &[("everest.io/disk-volume-type", "ESSD")],
        ))
        .await,
        Code::NotFound,
        &["does not exist"],
    );
    let disk = world.disk(&v.id()).await.unwrap();
    assert_eq!(
        disk["volume_type"], "GPSSD2",
        "a refused change changed the disk: {disk}"
    );

    v.unpublish().await.expect("NodeUnpublishVolume");
    v.unstage().await.expect("NodeUnstageVolume");
    v.detach().await.expect("ControllerUnpublishVolume");
    v.delete().await.expect("DeleteVolume");
    let left = world.shutdown();
    assert!(left.is_clean(), "the run left {left:?}");
}
