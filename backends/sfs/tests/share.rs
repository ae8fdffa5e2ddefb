//! Share volumes (mode `share`) against the emulator's SFS Turbo API, whose shares are real NFS
//! exports of an nfs-ganesha (both in a private network namespace, `ShareCloud`). The
//! controller runs on a thread inside the namespace: it creates a share per volume, a file is
//! written into the share over NFS (user-space client) and read back from the export directory
//! on disk, the share grows by the API's minimum step, and deletion removes it. Faults injected
//! into the API (server errors, throttling, failed creations) cost retries, never a leaked
//! share. The controller mounts nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use everest_backend::BackendName;
use everest_backend::backend::{ControllerBackend, ControllerPublish, CreateVolume};
use everest_backend::capability::{AccessMode, VolumeCapability};
use everest_backend::capacity::{CapacityRange, GIB};
use everest_backend::marker::{self, ClusterId, Marker, Owner};
use everest_backend::params::K8sMeta;
use everest_backend::secrets::Secrets;
use everest_testsupport::nfs::{NfsServer, ShareCloud, skip_unless_nfs_server};

const PSEUDO: &str = "/sfs-turbo";

fn cap() -> VolumeCapability {
    VolumeCapability::mount(AccessMode::MultiNodeMultiWriter, &[])
}

/// A CreateVolume of mode share for `gib` GiB.
fn create(name: &str, gib: u64, params: &[(&str, &str)]) -> CreateVolume {
    let mut all = vec![("everest.io/sfs-mode", "share")];
    all.extend_from_slice(params);
    CreateVolume::for_test(name, gib * GIB, cap(), &all)
}

/// A real nfs-ganesha exporting a temp dir, and the emulator making its SFS Turbo shares there
/// with jobs of `job_latency_ms`. Bound as `let (root, server, cloud) = …`, they are dropped
/// emulator first, then the server, then the dir.
fn start_shares(job_latency_ms: &str) -> (tempfile::TempDir, NfsServer, ShareCloud) {
    let root = tempfile::tempdir().unwrap();
    let server = NfsServer::start(root.path(), PSEUDO).expect("start nfs-ganesha");
    let cloud =
        ShareCloud::start(&server, &["--job-latency-ms", job_latency_ms]).expect("the emulator");
    (root, server, cloud)
}

fn controller(cloud: &ShareCloud, extra: serde_json::Value) -> Arc<dyn ControllerBackend> {
    let mut share = cloud.share_table();
    share
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let table = share;
    everest_sfs::controller_from_config(
        &BackendName::new("sfs-turbo").unwrap(),
        table.as_object().unwrap(),
    )
    .expect("the controller side")
}

/// A client of the same API, to look at what the controller left.
fn share_client(cloud: &ShareCloud) -> everest_sfs::turbo::ShareClient {
    let table = cloud.share_table();
    let config = everest_sfs::SfsConfig::parse("check", table.as_object().unwrap())
        .unwrap()
        .share_config("check")
        .unwrap()
        .unwrap();
    everest_sfs::turbo::ShareClient::from_credentials_file(
        config.cloud,
        &cloud.credentials_file(),
        "check",
    )
    .unwrap()
}

/// Waits until the API holds no share of `name` (deletions finish asynchronously).
async fn gone(api: &everest_sfs::turbo::ShareClient, name: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = api.find_by_name(name).await.expect("list shares");
        if left.is_none() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "share {name} leaked: {left:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn faults(cloud: &ShareCloud, body: serde_json::Value) {
    let r = reqwest::Client::new()
        .put(format!("{}/_emulator/faults", cloud.url))
        .json(&body)
        .send()
        .await
        .expect("PUT /_emulator/faults");
    assert!(r.status().is_success(), "{}", r.status());
}

/// The shares the emulator holds (its directories under the export root).
fn share_dirs(root: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn nfs_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(" - nfs"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_share_per_volume_from_create_to_delete_with_data_written_over_nfs() {
    if skip_unless_nfs_server() {
        return;
    }
    let (root, server, cloud) = start_shares("50");
    let controller = controller(&cloud, serde_json::json!({}));
    let mounts_before = nfs_mounts();

    let (made, kept) = server.block_on_inside(async {
        controller.probe().await.expect("the API answers");
        let made = controller
            .create_volume(&create("pvc-share-1", 1, &[]))
            .await
            .expect("CreateVolume");
        // The smallest share there is, whatever less was asked for.
        assert_eq!(made.capacity_bytes, 500 * GIB);
        assert!(made.native_id.starts_with("sd~"), "{}", made.native_id);
        // Again, and five at once for another name: one share each.
        assert_eq!(
            controller
                .create_volume(&create("pvc-share-1", 1, &[]))
                .await
                .unwrap(),
            made
        );
        let racing: Vec<_> = (0..5)
            .map(|_| {
                let c = controller.clone();
                tokio::spawn(async move { c.create_volume(&create("pvc-race", 1, &[])).await })
            })
            .collect();
        let mut raced = Vec::new();
        for r in racing {
            raced.push(
                r.await
                    .unwrap()
                    .expect("concurrent CreateVolume of one name"),
            );
        }
        assert!(raced.windows(2).all(|w| w[0] == w[1]), "{raced:?}");
        // The same name with a size the share does not have, or another type: ALREADY_EXISTS.
        let err = controller
            .create_volume(&create("pvc-share-1", 700, &[]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
        let err = controller
            .create_volume(&create(
                "pvc-share-1",
                1,
                &[("everest.io/share-type", "PERFORMANCE")],
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
        // A limit under the smallest share: OUT_OF_RANGE.
        let mut small = create("pvc-small", 1, &[]);
        small.capacity = CapacityRange::new(GIB as i64, (10 * GIB) as i64).unwrap();
        let err = controller.create_volume(&small).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");

        // Grow: at least the 100 GiB step; asking again for less is a no-op.
        let grown = controller
            .expand(
                &made.native_id,
                CapacityRange::new((550 * GIB) as i64, 0).unwrap(),
            )
            .await
            .expect("ControllerExpandVolume");
        assert_eq!(grown.capacity_bytes, 600 * GIB);
        assert!(!grown.node_expansion_required);
        let again = controller
            .expand(
                &made.native_id,
                CapacityRange::new((520 * GIB) as i64, 0).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(again.capacity_bytes, 600 * GIB);

        // ControllerPublish attaches nothing and hands the node the export.
        let published = controller
            .publish(&ControllerPublish {
                native_id: made.native_id.clone(),
                node_id: "node-1".into(),
                capability: cap(),
                readonly: false,
                context: BTreeMap::new(),
                secrets: Secrets::default(),
            })
            .await
            .expect("ControllerPublish");
        assert_eq!(
            published["everest.io/nfs-export"],
            made.context["everest.io/nfs-export"]
        );
        for v in raced.iter().take(1) {
            controller
                .delete_volume(&v.native_id, &Secrets::default())
                .await
                .expect("DeleteVolume of the raced share");
        }
        let kept = controller
            .create_volume(&create(
                "pvc-kept",
                1,
                &[("everest.io/on-delete", "retain")],
            ))
            .await
            .unwrap();
        assert!(kept.native_id.starts_with("sr~"));
        (made, kept)
    });

    // Write into the share over NFSv3 at its export location; read it back on the server's disk.
    let share_id = made.native_id.trim_start_matches("sd~").to_owned();
    let export = &made.context["everest.io/nfs-export"];
    assert_eq!(export, &format!("127.0.0.1:{PSEUDO}/{share_id}"));
    let scratch = tempfile::tempdir().unwrap();
    let payload = scratch.path().join("payload.txt");
    std::fs::write(&payload, "written over NFS into a share\n").unwrap();
    server
        .nfs_cp_to(&payload, &format!("{share_id}/hello.txt"))
        .expect("nfs-cp into the share");
    assert_eq!(
        std::fs::read_to_string(root.path().join(&share_id).join("hello.txt")).unwrap(),
        "written over NFS into a share\n"
    );

    let kept_id = kept.native_id.trim_start_matches("sr~").to_owned();
    server.block_on_inside(async {
        controller
            .delete_volume(&made.native_id, &Secrets::default())
            .await
            .expect("DeleteVolume");
        // Gone: still OK; an unknown share too; and a retained one stays.
        controller
            .delete_volume(&made.native_id, &Secrets::default())
            .await
            .unwrap();
        controller
            .delete_volume("sd~0000-not-a-share", &Secrets::default())
            .await
            .unwrap();
        controller
            .delete_volume(&kept.native_id, &Secrets::default())
            .await
            .unwrap();
        let err = controller
            .expand(
                &made.native_id,
                CapacityRange::new((700 * GIB) as i64, 0).unwrap(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    });
    assert!(
        !root.path().join(&share_id).exists(),
        "the share's export is gone"
    );
    assert_eq!(
        share_dirs(root.path()),
        [kept_id],
        "only the retained share is left"
    );
    assert_eq!(nfs_mounts(), mounts_before, "the controller mounted NFS");
}

#[test]
fn faults_on_the_share_api_cost_retries_and_leak_nothing() {
    if skip_unless_nfs_server() {
        return;
    }
    let (root, server, cloud) = start_shares("20");
    // Enough retries that the faults below cannot plausibly exhaust them: a call fails with
    // 0.3 (throttled) + 0.7 × 0.3 (server error) = 0.51, so 21 attempts all fail with
    // 0.51^21 < 1e-6 per call. With 9 attempts (0.51^9 = 0.002 per call, a few dozen calls)
    // this test failed in a few per cent of runs.
    let controller = controller(
        &cloud,
        serde_json::json!({"max_retries": 20, "retry_base_ms": 5, "retry_cap_ms": 40}),
    );
    server.block_on_inside(async {
        // Every creation fails: CreateVolume is UNAVAILABLE (the provisioner retries) and the
        // failed share is deleted again.
        faults(&cloud, serde_json::json!({"share_create_fail_rate": 1.0})).await;
        let err = controller
            .create_volume(&create("pvc-unlucky", 1, &[]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
        // The failed share is deleted without another call.
        let api = share_client(&cloud);
        gone(&api, "pvc-unlucky").await;
        // Server errors and throttling on every call: retries absorb them.
        faults(
            &cloud,
            serde_json::json!({"error_rate": 0.3, "throttle_rate": 0.3}),
        )
        .await;
        let v = controller
            .create_volume(&create("pvc-unlucky", 1, &[]))
            .await
            .expect("CreateVolume through faults");
        controller
            .delete_volume(&v.native_id, &Secrets::default())
            .await
            .expect("DeleteVolume through faults");
        faults(&cloud, serde_json::json!({})).await;
        // The API itself holds no share any more (the failed one included), once the
        // emulator's asynchronous deletions have run.
        let api = share_client(&cloud);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let left = api.find_by_name("pvc-unlucky").await.expect("list shares");
            if left.is_none() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "a share leaked: {left:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
    // Deletions finish asynchronously in the emulator; wait for its last one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !share_dirs(root.path()).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        share_dirs(root.path()),
        Vec::<String>::new(),
        "a share leaked"
    );
}

/// A CreateVolume as csi-provisioner sends it with `--extra-create-metadata`, from `cluster`.
fn create_for_claim(name: &str, cluster: &str) -> CreateVolume {
    let mut req = create(name, 1, &[]);
    req.cluster = ClusterId::new(cluster).unwrap();
    req.common.k8s = K8sMeta {
        pv_name: Some(name.to_owned()),
        pvc_name: Some(format!("claim.{name}")),
        pvc_namespace: Some("shop".to_owned()),
    };
    req
}

#[test]
fn a_share_carries_the_marker_and_another_clusters_share_is_not_taken() {
    if skip_unless_nfs_server() {
        return;
    }
    let (_root, server, cloud) = start_shares("50");
    let controller = controller(&cloud, serde_json::json!({}));
    let api = share_client(&cloud);
    let backend = BackendName::new("sfs-turbo").unwrap();
    let prod = ClusterId::new("prod").unwrap();
    server.block_on_inside(async {
        let made = controller
            .create_volume(&create_for_claim("pvc-tagged", "prod"))
            .await
            .expect("CreateVolume");
        let share = api
            .find_by_name("pvc-tagged")
            .await
            .unwrap()
            .expect("the share");
        let tags = api
            .tags(&share.id)
            .await
            .unwrap()
            .expect("the share's tags");
        let Owner::Ours(mark) = Marker::owner(&tags, &prod, &backend) else {
            panic!("share {} is not marked as prod's: {tags:?}", share.id);
        };
        assert!(mark.is_for_pv("pvc-tagged"), "{mark:?}");
        assert_eq!(mark.pvc_name, Some(marker::encode("claim.pvc-tagged")));
        assert_eq!(mark.pvc_namespace.as_deref(), Some("shop"));
        // The policy the volume ID carries is recorded too, for when the PV is gone.
        assert_eq!(mark.on_delete, Some(marker::DeletePolicy::Delete));
        // The retry of the same request finds its own share and leaves the marker as it is.
        assert_eq!(
            controller
                .create_volume(&create_for_claim("pvc-tagged", "prod"))
                .await
                .unwrap(),
            made
        );
        assert_eq!(api.tags(&share.id).await.unwrap().unwrap(), tags);

        // Another cluster sharing the project asks for the same name: refused, not taken over.
        let err = controller
            .create_volume(&create_for_claim("pvc-tagged", "staging"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
        assert!(err.to_string().contains("of cluster prod"), "{err}");
        assert_eq!(api.tags(&share.id).await.unwrap().unwrap(), tags);

        controller
            .delete_volume(&made.native_id, &Secrets::default())
            .await
            .expect("DeleteVolume");
        gone(&api, "pvc-tagged").await;
    });
    drop(cloud);
    drop(server);
}
