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
