//! An object volume through the real daemons over their CSI sockets, as the sidecars and the
//! kubelet drive it: the world's block backend plus an `obs` backend against a moto server, a
//! real s3fs mount, the keys passed as CSI secrets. The daemons name no kind: this proves the
//! seam carries the object kind end to end, and that no daemon log shows the secret key.

use std::collections::HashMap;
use std::path::Path;

use csi::volume_capability::access_mode::Mode;
use everest_testsupport::csi::{GIB, create_request, expect_error, mount_cap};
use everest_testsupport::proto as csi;
use everest_testsupport::{
    Daemon, S3Server, World, WorldOptions, skip_unless_s3_server, skip_without,
};
use tonic::Code;

mod common;
use common::write_credentials;

const AK: &str = "AKIADAEMONTEST";
const SK: &str = "sk-daemon-never-logged-9b7e";

fn node_secrets() -> HashMap<String, String> {
    HashMap::from([
        ("access.key".to_owned(), AK.to_owned()),
        ("secret.key".to_owned(), SK.to_owned()),
    ])
}

#[tokio::test]
async fn an_object_volume_goes_through_both_daemons() {
    if skip_without("s3fs", "s3fs") || skip_unless_s3_server() {
        return;
    }
    if rustix::process::geteuid().as_raw() != 0 || !Path::new("/dev/fuse").exists() {
        everest_testsupport::skip("FUSE mounts need root and /dev/fuse");
        return;
    }
    let server = S3Server::start().expect("start moto");
    let keys = tempfile::tempdir().unwrap();
    let creds = keys.path().join("obs.json");
    write_credentials(&creds, AK, SK);
    let opts = WorldOptions {
        extra_config: [
            "[backends.objects]".to_owned(),
            "kind = \"obs\"".to_owned(),
            format!("endpoint = \"{}\"", server.endpoint()),
            format!("credentials_file = \"{}\"", creds.display()),
            format!("runtime_dir = \"{}\"", keys.path().join("run").display()),
        ]
        .join("\n"),
        ..WorldOptions::default()
    };
    let world = World::start_with(opts).await.expect("start the world");
    let mut controller = world.controller().await;
    let mut node = world.node().await;
    let cap = mount_cap("", Mode::MultiNodeMultiWriter);

    // A parameter the object kind does not know, and a block capability: refused.
    let bad = create_request(
        "pvc-bad",
        GIB,
        cap.clone(),
        &[
            ("everest.io/backend", "objects"),
            ("everest.io/disk-volume-type", "SSD"),
        ],
    );
    expect_error(
        controller.create_volume(bad).await,
        Code::InvalidArgument,
        &["disk-volume-type"],
    );

    let req = create_request(
        "pvc-obj",
        GIB,
        cap.clone(),
        &[("everest.io/backend", "objects")],
    );
    let vol = controller
        .create_volume(req.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert!(
        vol.volume_id.starts_with("v1:objects:d~everest-pvc-obj-"),
        "{}",
        vol.volume_id
    );
    let again = controller
        .create_volume(req)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again.volume_id, vol.volume_id);
    // The S3 calls are counted with the cloud calls, by operation and status.
    let metrics = world
        .metrics(Daemon::Controller)
        .await
        .expect("controller metrics");
    for operation in ["CreateBucket", "HeadBucket", "PutBucketTagging"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("everest_cloud_api_requests_total{")
                    && l.contains("service=\"s3\"")
                    && l.contains(&format!("operation=\"{operation}\""))
                    && l.contains("backend=\"objects\"")),
            "no S3 {operation} counted:\n{metrics}"
        );
    }
    let bucket = vol.volume_context["everest.io/obs-bucket"].clone();
    assert_eq!(vol.capacity_bytes, GIB);

    // Nothing to attach: ControllerPublish answers at once.
    controller
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            node_id: world.node_id().await,
            volume_capability: Some(cap.clone()),
            volume_context: vol.volume_context.clone(),
            ..Default::default()
        })
        .await
        .unwrap();

    let staging = world.staging_path(&vol.volume_id);
    let target = world.target_path("pod-1", "data");
    let stage = csi::NodeStageVolumeRequest {
        volume_id: vol.volume_id.clone(),
        staging_target_path: staging.clone(),
        volume_capability: Some(cap.clone()),
        volume_context: vol.volume_context.clone(),
        secrets: node_secrets(),
        ..Default::default()
    };
    let mut no_secrets = stage.clone();
    no_secrets.secrets.clear();
    expect_error(
        node.node_stage_volume(no_secrets).await,
        Code::InvalidArgument,
        &["access.key"],
    );
    let mut smuggled = stage.clone();
    smuggled.volume_capability = Some(csi::VolumeCapability {
        access_type: Some(csi::volume_capability::AccessType::Mount(
            csi::volume_capability::MountVolume {
                mount_flags: vec!["ro,passwd_file=/etc/shadow".into()],
                ..Default::default()
            },
        )),
        ..cap.clone()
    });
    expect_error(
        node.node_stage_volume(smuggled).await,
        Code::InvalidArgument,
        &["comma"],
    );

    node.node_stage_volume(stage.clone()).await.unwrap();
    node.node_stage_volume(stage.clone()).await.unwrap();
    node.node_publish_volume(csi::NodePublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        staging_target_path: staging.clone(),
        target_path: target.clone(),
        volume_capability: Some(cap.clone()),
        volume_context: vol.volume_context.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    std::fs::write(Path::new(&target).join("through-daemons.txt"), "ok").unwrap();
    let admin = everest_obs::s3::S3::new(
        "admin",
        &everest_obs::ObsConfig::parse(
            "admin",
            serde_json::json!({"endpoint": server.endpoint(), "credentials_file": creds})
                .as_object()
                .unwrap(),
        )
        .unwrap(),
    )
    .unwrap()
    .client(None)
    .unwrap();
    // The bucket names the PV and PVC it was made for (csi-provisioner's extra metadata).
    let tags = admin
        .get_bucket_tagging()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let tag = |k: &str| {
        tags.tag_set()
            .iter()
            .find(|t| t.key() == k)
            .map(|t| t.value().to_owned())
    };
    assert_eq!(tag("everest-pv-name").as_deref(), Some("pvc-obj"));
    assert_eq!(tag("everest-pvc-name").as_deref(), Some("claim-pvc-obj"));
    assert_eq!(tag("everest-pvc-namespace").as_deref(), Some("default"));
    assert_eq!(tag("everest-created-by").as_deref(), Some("everest"));
    // The controller's cluster (no cluster_id configured: `default`) and its instance.
    assert_eq!(tag("everest-cluster").as_deref(), Some("default"));
    assert_eq!(tag("everest-backend").as_deref(), Some("objects"));
    let got = admin
        .get_object()
        .bucket(&bucket)
        .key("through-daemons.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().as_ref(),
        b"ok"
    );
    // everest-node dies (SIGKILL) and comes back: the mounter is not its child, so the
    // mount goes on serving reads and writes, and a repeated stage finds it in place.
    world
        .crash_and_restart(Daemon::Node)
        .await
        .expect("restart the node plugin");
    let mut node = world.node().await;
    assert_eq!(
        std::fs::read_to_string(Path::new(&target).join("through-daemons.txt")).unwrap(),
        "ok"
    );
    std::fs::write(Path::new(&target).join("after-restart.txt"), "still").unwrap();
    node.node_stage_volume(stage).await.unwrap();
    let got = admin
        .get_object()
        .bucket(&bucket)
        .key("after-restart.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().as_ref(),
        b"still"
    );
    let stats = node
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: vol.volume_id.clone(),
            volume_path: target.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!stats.usage.is_empty());

    node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        target_path: target.clone(),
    })
    .await
    .unwrap();
    node.node_unstage_volume(csi::NodeUnstageVolumeRequest {
        volume_id: vol.volume_id.clone(),
        staging_target_path: staging.clone(),
    })
    .await
    .unwrap();
    assert!(
        std::fs::read_dir(keys.path().join("run"))
            .unwrap()
            .next()
            .is_none(),
        "a credentials file is left"
    );
    controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: vol.volume_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        admin.head_bucket().bucket(&bucket).send().await.is_err(),
        "the bucket is left"
    );

    for daemon in ["controller", "node"] {
        let log = world.log(daemon);
        assert!(!log.contains(SK), "the {daemon} log shows the secret key");
        assert!(!log.is_empty());
    }
    let leftovers = world.shutdown();
    assert!(leftovers.is_clean(), "{leftovers:?}");
}
