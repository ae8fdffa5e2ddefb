//! Key rotation without a restart, against the real emulator and controller: the cloud stops
//! accepting the old keys, the controller's credentials file gets the new ones, and the very
//! same controller process carries on.

use everest_proto::csi::v1 as csi;
use everest_testsupport::csi::mount_cap;
use everest_testsupport::{Lifecycle, World, skip_unless_root_and_loop};

use csi::volume_capability::access_mode::Mode;

#[tokio::test]
async fn rotated_keys_are_used_without_a_restart() {
    if skip_unless_root_and_loop() {
        return;
    }
    let world = World::start().await;
    let pids = world.pids();
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let mut before = Lifecycle::new(&world, "pvc-before-rotation", cap.clone(), "pod-a").await;
    before.create(10, &[]).await.expect("CreateVolume");

    // The cloud rotates: the keys in the controller's file are refused now.
    let (ak, sk) = world.rotate_cloud_keys().await;
    let mut after = Lifecycle::new(&world, "pvc-after-rotation", cap, "pod-a").await;
    let refused = after
        .create(10, &[])
        .await
        .expect_err("the old keys must be refused after the rotation");
    eprintln!("with the old keys: {refused}");

    // The Secret is updated; the next call uses the new keys, in the same process.
    world.write_backend_credentials(&ak, &sk);
    after
        .create(10, &[])
        .await
        .expect("CreateVolume with the rotated keys, without a restart");
    assert_eq!(world.pids(), pids, "a daemon was restarted");
    let log = world.log("controller");
    assert!(
        log.contains("credentials file changed"),
        "no reload logged:\n{log}"
    );
    assert!(!log.contains(&sk), "the new secret key is in the log");

    after.delete().await.expect("DeleteVolume");
    before.delete().await.expect("DeleteVolume");
    assert!(world.disks().await.is_empty());
    let left = world.shutdown();
    assert!(left.is_clean(), "the run left {left:?}");
}
