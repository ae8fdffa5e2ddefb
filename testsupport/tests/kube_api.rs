//! The fake Kubernetes API answers the real `kube` client the way the API server does: objects
//! it parses into the `k8s-openapi` types with the fields the server always sets, a missing
//! object as a 404 `Status` the client reads as such, injected failures, and a stop that the
//! client sees as a dead server.

use everest_testsupport::kube_api::{self, KubeApi, TOKEN};
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim};
use kube::Api;
use serde_json::json;

async fn client(api: &KubeApi, dir: &tempfile::TempDir) -> kube::Client {
    let path = api.write_kubeconfig(dir.path()).unwrap();
    let file = kube::config::Kubeconfig::read_from(&path).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .unwrap();
    config.default_retry = false;
    kube::Client::try_from(config).unwrap()
}

#[tokio::test]
async fn serves_claims_as_the_api_server_does() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start().await.unwrap();
    let client = client(&api, &dir).await;
    let stored = api.put(kube_api::pvc(
        "team-a",
        "data",
        "everest-ssd",
        "10Gi",
        &[("everest.io/disk-iops", "3000")],
    ));
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "team-a");
    let pvc = pvcs.get("data").await.expect("GET the claim");
    let meta = &pvc.metadata;
    assert_eq!(meta.uid.as_deref(), stored["metadata"]["uid"].as_str());
    assert_eq!(
        meta.uid.as_deref().map(str::len),
        Some(36),
        "a UUID-shaped uid"
    );
    assert!(meta.resource_version.is_some());
    assert!(meta.creation_timestamp.is_some(), "parsed as a time");
    assert!(!meta.managed_fields.clone().unwrap_or_default().is_empty());
    let notes = meta.annotations.clone().unwrap_or_default();
    assert_eq!(notes["everest.io/disk-iops"], "3000");
    assert_eq!(
        notes["volume.kubernetes.io/storage-provisioner"],
        everest_testsupport::DRIVER_NAME
    );
    let spec = pvc.spec.expect("spec");
    assert_eq!(spec.storage_class_name.as_deref(), Some("everest-ssd"));
    let size = &spec.resources.unwrap().requests.unwrap()["storage"];
    assert_eq!(size.0, "10Gi");
    assert_eq!(pvc.status.unwrap().phase.as_deref(), Some("Pending"));

    // Every write gets a new resourceVersion, as the API server's do.
    let again = api.put(kube_api::pvc("team-a", "data", "everest-ssd", "20Gi", &[]));
    assert_ne!(
        again["metadata"]["resourceVersion"],
        stored["metadata"]["resourceVersion"]
    );

    // Cluster-scoped kinds live at their own paths.
    api.put(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}));
    let nodes: Api<Node> = Api::all(client.clone());
    assert_eq!(
        nodes.get("node-1").await.unwrap().metadata.name.as_deref(),
        Some("node-1")
    );

    let requests = api.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].method, "GET");
    assert_eq!(
        requests[0].uri,
        "/api/v1/namespaces/team-a/persistentvolumeclaims/data"
    );
    assert_eq!(requests[1].uri, "/api/v1/nodes/node-1");
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
}

#[tokio::test]
async fn missing_objects_and_failures_are_status_objects() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start().await.unwrap();
    let client = client(&api, &dir).await;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client, "team-a");

    match pvcs.get("nothing").await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 404);
            assert_eq!(status.reason, "NotFound");
            assert_eq!(
                status.message,
                "persistentvolumeclaims \"nothing\" not found"
            );
            assert!(status.is_failure());
        }
        other => panic!("expected a 404 Status, got {other:?}"),
    }

    api.put(kube_api::pvc("team-a", "gone", "c", "1Gi", &[]));
    api.remove("v1", "PersistentVolumeClaim", Some("team-a"), "gone");
    assert!(
        pvcs.get("gone").await.is_err(),
        "a removed claim is still served"
    );

    for (code, reason) in [
        (500, "InternalError"),
        (403, "Forbidden"),
        (503, "ServiceUnavailable"),
    ] {
        api.fail_with(Some(code));
        match pvcs.get("nothing").await {
            Err(kube::Error::Api(status)) => {
                assert_eq!((status.code, status.reason.as_str()), (code, reason));
            }
            other => panic!("expected a {code} Status, got {other:?}"),
        }
    }
    api.fail_with(None);
    assert_eq!(
        api.requests().len(),
        5,
        "one request per call: {:?}",
        api.requests()
    );

    api.stop().await;
    match pvcs.get("nothing").await {
        Err(kube::Error::Api(status)) => panic!("a stopped API answered {status:?}"),
        Err(_) => {}
        Ok(pvc) => panic!("a stopped API served {pvc:?}"),
    }
}

#[track_caller]
fn status_of<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(s)) => (s.code, s.reason),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn pv(name: &str) -> k8s_openapi::api::core::v1::PersistentVolume {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name, "finalizers": ["kubernetes.io/pv-protection"]},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "csi": {"driver": "everest.csi.io", "volumeHandle": "v1:evs-default:d1"},
                 "persistentVolumeReclaimPolicy": "Delete"}
    }))
    .unwrap()
}

#[tokio::test]
async fn writes_follow_the_api_servers_rules() {
    use k8s_openapi::api::core::v1::PersistentVolume;
    use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};

    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start().await.unwrap();
    let pvs: Api<PersistentVolume> = Api::all(client(&api, &dir).await);

    // Create: the server's fields filled in; a second create of the name is AlreadyExists.
    let created = pvs.create(&PostParams::default(), &pv("a")).await.unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.resource_version.is_some());
    assert_eq!(
        status_of(pvs.create(&PostParams::default(), &pv("a")).await),
        (409, "AlreadyExists".into())
    );
    pvs.create(&PostParams::default(), &pv("b")).await.unwrap();

    // List: a PersistentVolumeList whose items carry no kind or apiVersion.
    let list = pvs.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 2);
    let raw = reqwest::get(format!("{}/api/v1/persistentvolumes", api.url()))
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(raw["kind"], "PersistentVolumeList");
    assert!(raw["items"][0]["kind"].is_null() && raw["items"][0]["apiVersion"].is_null());

    // Merge patch: a stale resourceVersion is a Conflict, a current one applies.
    let stale = json!({"metadata": {"resourceVersion": "999"}, "spec": {"persistentVolumeReclaimPolicy": "Retain"}});
    assert_eq!(
        status_of(
            pvs.patch("a", &PatchParams::default(), &Patch::Merge(&stale))
                .await
        ),
        (409, "Conflict".into())
    );
    let current = json!({"metadata": {"resourceVersion": created.metadata.resource_version},
                         "spec": {"persistentVolumeReclaimPolicy": "Retain"}});
    let patched = pvs
        .patch("a", &PatchParams::default(), &Patch::Merge(&current))
        .await
        .unwrap();
    assert_eq!(
        patched
            .spec
            .unwrap()
            .persistent_volume_reclaim_policy
            .as_deref(),
        Some("Retain")
    );

    // A PV's volume source is immutable.
    let source = json!({"spec": {"csi": {"driver": "everest.csi.io", "volumeHandle": "v1:evs-default:other"}}});
    assert_eq!(
        status_of(
            pvs.patch("a", &PatchParams::default(), &Patch::Merge(&source))
                .await
        ),
        (422, "Invalid".into())
    );

    // Delete: a wrong uid precondition is refused; with a finalizer the PV stays, marked,
    // until a write empties its finalizers.
    let wrong = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some("not-it".into()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    assert_eq!(
        status_of(pvs.delete("a", &wrong).await),
        (409, "Conflict".into())
    );
    pvs.delete("a", &DeleteParams::default()).await.unwrap();
    let marked = pvs.get("a").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    let release = json!({"metadata": {"finalizers": []}});
    pvs.patch("a", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .unwrap();
    assert!(pvs.get_opt("a").await.unwrap().is_none());
    assert_eq!(
        api.deleted().len(),
        1,
        "only the DELETE whose preconditions held reached it"
    );

    // Writes cut off after a budget; reads go on.
    api.fail_writes_after(Some(0));
    assert_eq!(
        status_of(pvs.delete("b", &DeleteParams::default()).await),
        (503, "ServiceUnavailable".into())
    );
    assert!(pvs.get("b").await.is_ok());
    api.fail_writes_after(None);

    // A frozen object takes writes without changing.
    api.freeze("v1", "PersistentVolume", None, "b");
    let retain = json!({"spec": {"persistentVolumeReclaimPolicy": "Retain"}});
    let answer = pvs
        .patch("b", &PatchParams::default(), &Patch::Merge(&retain))
        .await
        .unwrap();
    assert_eq!(
        answer
            .spec
            .unwrap()
            .persistent_volume_reclaim_policy
            .as_deref(),
        Some("Delete")
    );
}
