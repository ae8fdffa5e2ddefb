//! `everestctl status` with the real emulator behind the real EVS client (through the world's
//! daemon config file) and the cluster faked at its HTTP edge: disagreements both ways, and
//! none once the two sides agree.

mod common;

use common::{Fake, create, describe, publish, pv, stdout_json};
use everest_testsupport::{DRIVER_NAME, World, skip_unless_root_and_loop};
use serde_json::{Value, json};

const NODE: &str = "192.168.0.12";

fn node(node_id: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE,
            "labels": {"kubernetes.io/hostname": NODE, "topology.kubernetes.io/zone": "emu-az1"},
            "annotations": {
                "csi.volume.kubernetes.io/nodeid": json!({DRIVER_NAME: node_id}).to_string(),
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true"
            }
        },
        "spec": {"providerID": format!("emulator://{node_id}")},
        "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.33.1"}}
    })
}

/// A VolumeAttachment as csi-attacher leaves it; `attached` is its status.
fn attachment(pv: &str, attached: bool) -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "VolumeAttachment",
        "metadata": {
            "name": format!("csi-{pv}"),
            "annotations": {"csi.alpha.kubernetes.io/node-id": NODE},
            "finalizers": ["external-attacher/everest-csi-io"]
        },
        "spec": {"attacher": DRIVER_NAME, "nodeName": NODE, "source": {"persistentVolumeName": pv}},
        "status": {"attached": attached}
    })
}

/// `(pv, cluster, cloud)` of each row that disagrees, by PV name (rows come sorted by handle,
/// and disk IDs are random).
fn problems(report: &Value) -> Vec<(String, String, String)> {
    let mut rows: Vec<(String, String, String)> = report["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["problem"].is_null())
        .map(|r| {
            (
                r["persistent_volume"].as_str().unwrap_or("-").to_owned(),
                r["cluster"].as_str().unwrap().to_owned(),
                r["cloud"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    rows.sort();
    rows
}

#[tokio::test]
async fn status_flags_attachments_the_cluster_and_the_cloud_disagree_on() {
    if skip_unless_root_and_loop() {
        return;
    }
    let world = World::start().await;
    let fake = Fake::start().await;
    let node_id = world.node_id().await;
    let config = world.config_path();
    let config = config.to_str().expect("a UTF-8 path");

    // agreed: attached on both sides; cloud-only: attached in the cloud, no VolumeAttachment;
    // cluster-only: a VolumeAttachment says attached, the cloud has it detached.
    let agreed = create(&world, "pv-agreed").await;
    let cloud_only = create(&world, "pv-cloud-only").await;
    let cluster_only = create(&world, "pv-cluster-only").await;
    publish(&world, &agreed, &node_id).await;
    publish(&world, &cloud_only, &node_id).await;
    fake.api.put(node(&node_id));
    for (name, handle) in [
        ("pv-agreed", &agreed),
        ("pv-cloud-only", &cloud_only),
        ("pv-cluster-only", &cluster_only),
    ] {
        fake.api.put(pv(name, handle));
    }
    fake.api.put(attachment("pv-agreed", true));
    fake.api.put(attachment("pv-cluster-only", true));

    let out = fake
        .run(&["status", "--config", config, "-o", "json"])
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let report = stdout_json(&out);
    assert_eq!(report["disagreements"], 2, "{report:#}");
    assert_eq!(
        problems(&report),
        vec![
            (
                "pv-cloud-only".to_owned(),
                "none".to_owned(),
                "attached".to_owned()
            ),
            (
                "pv-cluster-only".to_owned(),
                "attached".to_owned(),
                "not attached".to_owned()
            ),
        ],
        "{report:#}"
    );
    let ok = report["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["persistent_volume"] == "pv-agreed")
        .expect("the agreed attachment is listed");
    assert_eq!(
        (ok["cluster"].as_str(), ok["cloud"].as_str()),
        (Some("attached"), Some("attached"))
    );
    assert!(ok["problem"].is_null());
    assert_eq!(ok["node"], NODE);
    assert_eq!(ok["server"], node_id.as_str());
    assert_eq!(
        report["backends"],
        json!([{"backend": "evs-default", "kind": "evs", "persistent_volumes": 3, "cloud_volumes": 3}])
    );
    let table = fake.run(&["status", "--config", config]).await;
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("MISMATCH: attached in the cloud with no VolumeAttachment"),
        "{text}"
    );
    assert!(text.contains("2 disagreement(s)"), "{text}");

    // Make the two sides agree: both disagreements go, and the status is 0.
    fake.api.put(attachment("pv-cloud-only", true));
    publish(&world, &cluster_only, &node_id).await;
    let out = fake
        .run(&["status", "--config", config, "-o", "json"])
        .await;
    assert!(out.status.success(), "{}", describe(&out));
    let report = stdout_json(&out);
    assert_eq!(report["disagreements"], 0, "{report:#}");
    assert_eq!(report["attachments"].as_array().unwrap().len(), 3);

    // A disk the cloud does not have at all.
    fake.api.put(pv(
        "pv-gone",
        "v1:evs-default:00000000-0000-4000-8000-000000000000",
    ));
    fake.api.put(attachment("pv-gone", true));
    let out = fake
        .run(&["status", "--config", config, "-o", "json"])
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert_eq!(
        problems(&stdout_json(&out)),
        vec![(
            "pv-gone".to_owned(),
            "attached".to_owned(),
            "no such disk".to_owned()
        )]
    );

    // A configuration that cannot be read is an error, not an empty cloud.
    let out = fake
        .run(&["status", "--config", "/nonexistent/everest.toml"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("configuration"));
    drop(world);
}
