//! PVC annotations through the real controller, emulator and `kube` client, with the
//! Kubernetes API faked at its HTTP edge (`everest_testsupport::kube_api`): what a claim may
//! override, what it may not, and that the API server is asked exactly once per CreateVolume
//! when the StorageClass allows annotations, and never otherwise.

use everest_proto::csi::v1 as csi;
use everest_testsupport::csi::{GIB, create_request, expect_error, mount_cap};
use everest_testsupport::kube_api::{self, KubeApi, TOKEN};
use everest_testsupport::{World, WorldOptions, skip_unless_root_and_loop};
use tonic::Code;

use csi::volume_capability::access_mode::Mode;

const ALLOW: &str = "everest.io/allowed-pvc-annotations";
const CLASS: &str = "everest-ssd";

/// The fake API and a world whose controller reads it through a kubeconfig.
async fn start(dir: &tempfile::TempDir) -> (KubeApi, World) {
    let api = KubeApi::start()
        .await
        .expect("start the fake Kubernetes API");
    let kubeconfig = api.write_kubeconfig(dir.path()).expect("write kubeconfig");
    let opts = WorldOptions {
        controller_extra: vec![
            "kubernetes = \"kubeconfig\"".into(),
            format!("kubeconfig = \"{}\"", kubeconfig.display()),
        ],
        ..WorldOptions::default()
    };
    let world = World::start_with(opts)
        .await
        .unwrap_or_else(|e| panic!("cannot start the world: {e}"));
    (api, world)
}

/// CreateVolume as csi-provisioner sends it for claim `namespace/claim` of a class with `params`.
fn request(
    name: &str,
    namespace: &str,
    claim: &str,
    params: &[(&str, &str)],
) -> csi::CreateVolumeRequest {
    let mut req = create_request(
        name,
        10 * GIB,
        mount_cap("ext4", Mode::SingleNodeWriter),
        params,
    );
    req.parameters
        .insert("csi.storage.k8s.io/pvc/name".into(), claim.into());
    req.parameters
        .insert("csi.storage.k8s.io/pvc/namespace".into(), namespace.into());
    req
}

fn pvc_path(namespace: &str, claim: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}")
}

/// Asserts that `result` failed with `code` and that its message names every one of `all`.
#[track_caller]
fn fails<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, all: &[&str]) {
    let msg = expect_error(result, code, all);
    for needle in all {
        assert!(
            msg.contains(needle),
            "the message {msg:?} does not name {needle:?}"
        );
    }
}

/// The requests the fake saw, as `METHOD path`.
fn seen(api: &KubeApi) -> Vec<String> {
    api.requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.uri))
        .collect()
}

#[tokio::test]
async fn allowed_annotations_override_the_class_with_one_get_per_create() {
    if skip_unless_root_and_loop() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (api, world) = start(&dir).await;
    let mut c = world.controller().await;
    let class = [
        ("everest.io/disk-volume-type", "SSD"),
        (ALLOW, "everest.io/disk-volume-type,everest.io/disk-iops"),
    ];
    api.put(kube_api::pvc(
        "team-a",
        "fast",
        CLASS,
        "10Gi",
        &[
            ("everest.io/disk-volume-type", "ESSD2"),
            ("everest.io/disk-iops", "5000"),
            // Not Everest's: ignored, whatever it says.
            ("backup.example.com/schedule", "nightly"),
            ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
        ],
    ));
    api.put(kube_api::pvc("team-a", "plain", CLASS, "10Gi", &[]));

    let req = request("pvc-fast", "team-a", "fast", &class);
    let made = c
        .create_volume(req.clone())
        .await
        .expect("CreateVolume with allowed annotations")
        .into_inner()
        .volume
        .unwrap();
    let disk = world.disk(&made.volume_id).await.expect("the disk exists");
    assert_eq!(disk["volume_type"], "ESSD2", "{disk:#}");
    assert_eq!(disk["iops"], 5000, "{disk:#}");
    let requests = api.requests();
    assert_eq!(seen(&api), [format!("GET {}", pvc_path("team-a", "fast"))]);
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str()),
        "the kubeconfig's credentials were not sent"
    );

    // The provisioner's retry of the same call reads the claim again: one GET per call, no cache.
    let again = c
        .create_volume(req)
        .await
        .expect("CreateVolume repeated")
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again.volume_id, made.volume_id);
    assert_eq!(api.requests().len(), 2, "{:?}", seen(&api));

    // A claim without annotations gets the class's settings.
    let plain = c
        .create_volume(request("pvc-plain", "team-a", "plain", &class))
        .await
        .expect("CreateVolume without annotations")
        .into_inner()
        .volume
        .unwrap();
    let disk = world.disk(&plain.volume_id).await.expect("the disk exists");
    assert_eq!(disk["volume_type"], "SSD", "{disk:#}");
    assert!(disk["iops"].is_null(), "{disk:#}");
    assert_eq!(api.requests().len(), 3, "{:?}", seen(&api));
}

#[tokio::test]
async fn refused_annotations_are_invalid_argument_naming_them_and_make_no_disk() {
    if skip_unless_root_and_loop() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (api, world) = start(&dir).await;
    let mut c = world.controller().await;
    let class = [
        ("everest.io/disk-volume-type", "SSD"),
        (ALLOW, "everest.io/disk-volume-type,everest.io/disk-iops"),
    ];
    // (claim, its everest.io annotation, what the error must also say)
    let cases = [
        (
            "escalate",
            ("everest.io/crypt-key-id", "kms-key-1"),
            "not allowed by the StorageClass",
        ),
        (
            "typo",
            ("everest.io/disk-iop", "5000"),
            "not allowed by the StorageClass",
        ),
        ("empty", ("everest.io/disk-iops", ""), "the value is empty"),
        ("spaces", ("everest.io/disk-volume-type", "SSD "), "spaces"),
        // Well formed, but not a number: the backend's parser refuses it, and the message
        // still names the claim.
        ("words", ("everest.io/disk-iops", "lots"), "invalid digit"),
        (
            "unknown-type",
            ("everest.io/disk-volume-type", "NVME"),
            "is not one of",
        ),
    ];
    for (claim, (key, value), says) in cases {
        api.put(kube_api::pvc(
            "team-b",
            claim,
            CLASS,
            "10Gi",
            &[(key, value)],
        ));
        let name = format!("pvc-{claim}");
        fails(
            c.create_volume(request(&name, "team-b", claim, &class))
                .await,
            Code::InvalidArgument,
            &[key, &format!("team-b/{claim}"), says],
        );
    }
    assert_eq!(api.requests().len(), cases.len(), "{:?}", seen(&api));
    assert!(world.disks().await.is_empty(), "a refused claim got a disk");

    // A class cannot allow what no claim may own.
    for (list, says) in [
        ("everest.io/backend", "cannot be set by a PVC annotation"),
        ("csi.storage.k8s.io/fstype", "not an everest.io/<name> key"),
    ] {
        fails(
            c.create_volume(request(
                "pvc-bad-class",
                "team-b",
                "escalate",
                &[(ALLOW, list)],
            ))
            .await,
            Code::InvalidArgument,
            &[ALLOW, says],
        );
    }
    assert_eq!(
        api.requests().len(),
        cases.len(),
        "a bad class still asked the API"
    );
}

#[tokio::test]
async fn without_an_allowlist_annotations_are_ignored_and_the_api_is_never_asked() {
    if skip_unless_root_and_loop() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (api, world) = start(&dir).await;
    let mut c = world.controller().await;
    api.put(kube_api::pvc(
        "team-c",
        "wishful",
        CLASS,
        "10Gi",
        &[
            ("everest.io/disk-volume-type", "ESSD"),
            ("everest.io/not-a-parameter", "x"),
        ],
    ));
    let made = c
        .create_volume(request(
            "pvc-wishful",
            "team-c",
            "wishful",
            &[("everest.io/disk-volume-type", "SSD")],
        ))
        .await
        .expect("CreateVolume of a class without an allowlist")
        .into_inner()
        .volume
        .unwrap();
    let disk = world.disk(&made.volume_id).await.expect("the disk exists");
    assert_eq!(disk["volume_type"], "SSD", "{disk:#}");
    assert!(seen(&api).is_empty(), "{:?}", seen(&api));
}

#[tokio::test]
async fn api_failures_are_retryable_and_make_no_disk_and_a_gone_claim_is_final() {
    if skip_unless_root_and_loop() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (api, world) = start(&dir).await;
    let mut c = world.controller().await;
    let class = [
        ("everest.io/disk-volume-type", "SSD"),
        (ALLOW, "everest.io/disk-volume-type"),
    ];
    api.put(kube_api::pvc(
        "team-d",
        "data",
        CLASS,
        "10Gi",
        &[("everest.io/disk-volume-type", "ESSD")],
    ));

    // Errors the client would retry by default (503) are not retried: one GET per call.
    // Refused credentials and missing RBAC are final and name the fix.
    for (code, want, words) in [
        (500, Code::Unavailable, "retry later"),
        (503, Code::Unavailable, "retry later"),
        (401, Code::FailedPrecondition, "persistentvolumeclaims"),
        (403, Code::FailedPrecondition, "persistentvolumeclaims"),
    ] {
        api.fail_with(Some(code));
        let before = api.requests().len();
        fails(
            c.create_volume(request("pvc-data", "team-d", "data", &class))
                .await,
            want,
            &["team-d/data", "no volume was made", words],
        );
        assert_eq!(
            api.requests().len(),
            before + 1,
            "HTTP {code}: {:?}",
            seen(&api)
        );
    }
    api.fail_with(None);

    // The claim was deleted while the provisioner was at it: final, nothing made.
    fails(
        c.create_volume(request("pvc-gone", "team-d", "gone", &class))
            .await,
        Code::FailedPrecondition,
        &["team-d/gone", "does not exist"],
    );

    // The provisioner did not send the claim (no --extra-create-metadata).
    let mut anonymous = request("pvc-anon", "team-d", "data", &class);
    anonymous.parameters.remove("csi.storage.k8s.io/pvc/name");
    anonymous
        .parameters
        .remove("csi.storage.k8s.io/pvc/namespace");
    let before = api.requests().len();
    fails(
        c.create_volume(anonymous).await,
        Code::FailedPrecondition,
        &["--extra-create-metadata"],
    );
    assert_eq!(api.requests().len(), before);

    // The API server goes away.
    let requests = api.requests().len();
    api.stop().await;
    fails(
        c.create_volume(request("pvc-data", "team-d", "data", &class))
            .await,
        Code::Unavailable,
        &["team-d/data", "no volume was made"],
    );
    // Four failures and the missing claim; the anonymous request asked nothing.
    assert_eq!(requests, 5, "{requests} requests");
    assert!(
        world.disks().await.is_empty(),
        "a disk was made without the claim's settings"
    );
}
