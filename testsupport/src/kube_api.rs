//! A stand-in for the Kubernetes API server at its HTTP edge, on a free loopback port, for the
//! real `kube` client of the daemons under test (pointed at it by [`KubeApi::write_kubeconfig`]).
//!
//! It stores objects as the API server returns them (see [`pvc`]: metadata with uid,
//! resourceVersion, creationTimestamp, managedFields; spec; status), answers `GET` of one
//! object by its real path (`/api/v1/namespaces/<ns>/persistentvolumeclaims/<name>`,
//! `/apis/storage.k8s.io/v1/volumeattachments/<name>`, …) and a missing one with a 404 `Status`
//! object as the API server writes it. It records every request, so a test can count them, and
//! can be told to answer every request with an error status.
//!
//! Kinds are a table ([`KINDS`]): adding one (PVs, VolumeAttachments, Pods and Nodes are there)
//! is one line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A kind the fake serves: its `apiVersion`, `kind`, plural resource name, and scope.
#[derive(Debug, Clone, Copy)]
pub struct KindInfo {
    /// `v1` for the core group, `<group>/<version>` otherwise.
    pub api_version: &'static str,
    /// The `kind` field.
    pub kind: &'static str,
    /// The resource name in paths.
    pub plural: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
}

/// The kinds the fake knows.
pub const KINDS: &[KindInfo] = &[
    KindInfo {
        api_version: "v1",
        kind: "PersistentVolumeClaim",
        plural: "persistentvolumeclaims",
        namespaced: true,
    },
    KindInfo {
        api_version: "v1",
        kind: "PersistentVolume",
        plural: "persistentvolumes",
        namespaced: false,
    },
    KindInfo {
        api_version: "v1",
        kind: "Pod",
        plural: "pods",
        namespaced: true,
    },
    KindInfo {
        api_version: "v1",
        kind: "Node",
        plural: "nodes",
        namespaced: false,
    },
    KindInfo {
        api_version: "storage.k8s.io/v1",
        kind: "VolumeAttachment",
        plural: "volumeattachments",
        namespaced: false,
    },
];

/// One request the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path and query.
    pub uri: String,
    /// The `Authorization` header, if sent.
    pub authorization: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    /// Objects by their API path.
    objects: std::collections::BTreeMap<String, Value>,
    requests: Vec<Recorded>,
    /// Answer every request with this HTTP status (a `Status` object), when set.
    fail_with: Option<u16>,
    resource_version: u64,
    uid: u64,
}

/// The running fake; dropping it stops it (requests then fail to connect, as with a dead
/// API server).
#[derive(Debug)]
pub struct KubeApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panicking test thread must not hide the state from the next assertion.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl KubeApi {
    /// Starts the fake on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let router = Router::new().fallback({
            let state = Arc::clone(&state);
            move |method: Method, uri: Uri, headers: HeaderMap| {
                let state = Arc::clone(&state);
                async move { answer(&state, method, uri, &headers) }
            }
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                eprintln!("fake Kubernetes API: {e}");
            }
        });
        Ok(Self {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig that points at the fake with a bearer token, returning its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let path = dir.join("kubeconfig.yaml");
        let text = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: everest-controller\n  user:\n    token: {TOKEN}\n\
             contexts:\n\
             - name: fake\n  context:\n    cluster: fake\n    user: everest-controller\n    namespace: default\n\
             current-context: fake\n",
            url = self.url()
        );
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Stores `object` (replacing one with the same path), filling in what the API server sets
    /// on create when it is missing: uid, resourceVersion, creationTimestamp. Returns it as
    /// stored. Panics on a kind not in [`KINDS`] or an object without a name.
    pub fn put(&self, mut object: Value) -> Value {
        let path = object_path(&object).unwrap_or_else(|e| panic!("{e}: {object}"));
        let mut state = lock(&self.state);
        state.resource_version += 1;
        state.uid += 1;
        let meta = object["metadata"]
            .as_object_mut()
            .expect("object_path checked metadata");
        meta.entry("uid").or_insert_with(|| json!(uid(state.uid)));
        meta.insert(
            "resourceVersion".into(),
            json!(state.resource_version.to_string()),
        );
        meta.entry("creationTimestamp")
            .or_insert_with(|| json!(timestamp()));
        state.objects.insert(path, object.clone());
        object
    }

    /// Removes the object at its API path (as a `DELETE` that finished would).
    pub fn remove(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) {
        let info = kind_info(api_version, kind).unwrap_or_else(|e| panic!("{e}"));
        lock(&self.state)
            .objects
            .remove(&path_of(info, namespace, name));
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state).requests.clone()
    }

    /// Answers every request from now on with `code` (500, 403, 429, …) as a `Status` object;
    /// `None` serves objects again.
    pub fn fail_with(&self, code: Option<u16>) {
        lock(&self.state).fail_with = code;
    }
}

impl KubeApi {
    /// Stops serving and waits until every connection is closed, including the ones a client
    /// keeps in its pool: from then on, requests fail to connect, as with a dead API server.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let waited = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
            assert!(
                waited.is_ok(),
                "the fake Kubernetes API did not stop within 10 s"
            );
        }
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        // Graceful: idle pooled connections are closed too.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The bearer token the kubeconfig carries.
pub const TOKEN: &str = "everest-test-token";

/// A PersistentVolumeClaim as the API server returns it while csi-provisioner provisions it:
/// `size` of `class`, the provisioner's annotations plus `annotations`, the protection
/// finalizer, `Pending`. uid, resourceVersion and creationTimestamp come from [`KubeApi::put`].
pub fn pvc(
    namespace: &str,
    name: &str,
    class: &str,
    size: &str,
    annotations: &[(&str, &str)],
) -> Value {
    let mut notes = serde_json::Map::new();
    for provisioner_key in [
        "volume.beta.kubernetes.io/storage-provisioner",
        "volume.kubernetes.io/storage-provisioner",
    ] {
        notes.insert(provisioner_key.into(), json!(crate::DRIVER_NAME));
    }
    for (k, v) in annotations {
        notes.insert((*k).into(), json!(v));
    }
    let now = timestamp();
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": notes,
            "finalizers": ["kubernetes.io/pvc-protection"],
            "managedFields": [
                {
                    "manager": "kubectl-create",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": now,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {
                        "f:spec": {
                            "f:accessModes": {},
                            "f:resources": {"f:requests": {".": {}, "f:storage": {}}},
                            "f:storageClassName": {},
                            "f:volumeMode": {}
                        }
                    }
                },
                {
                    "manager": "kube-controller-manager",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": now,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {
                        "f:metadata": {"f:annotations": {
                            "f:volume.beta.kubernetes.io/storage-provisioner": {},
                            "f:volume.kubernetes.io/storage-provisioner": {}
                        }}
                    }
                }
            ]
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": size}},
            "storageClassName": class,
            "volumeMode": "Filesystem"
        },
        "status": {"phase": "Pending"}
    })
}

fn answer(state: &Mutex<State>, method: Method, uri: Uri, headers: &HeaderMap) -> Response {
    let mut state = lock(state);
    state.requests.push(Recorded {
        method: method.to_string(),
        uri: uri.to_string(),
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    if let Some(code) = state.fail_with {
        return failure(code);
    }
    if method != Method::GET {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("the fake Kubernetes API serves only GET, not {method}"),
            None,
        );
    }
    let path = uri.path();
    match state.objects.get(path) {
        Some(object) => object_response(object),
        None => {
            let (plural, name) = plural_and_name(path);
            status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{plural} \"{name}\" not found"),
                Some(json!({"name": name, "kind": plural})),
            )
        }
    }
}

fn object_response(object: &Value) -> Response {
    (
        StatusCode::OK,
        api_headers(),
        serde_json::to_string(object).expect("a JSON value serializes"),
    )
        .into_response()
}

/// The headers the API server sends with every JSON answer.
fn api_headers() -> [(header::HeaderName, String); 3] {
    [
        (header::CONTENT_TYPE, "application/json".into()),
        (header::CACHE_CONTROL, "no-cache, private".into()),
        (
            header::HeaderName::from_static("audit-id"),
            uid(rand_part()),
        ),
    ]
}

/// A `Status` object with `code`, as the API server answers an error.
fn status(code: StatusCode, reason: &str, message: &str, details: Option<Value>) -> Response {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    if let Some(details) = details {
        body["details"] = details;
    }
    (code, api_headers(), body.to_string()).into_response()
}

/// The answer the API server gives for an injected failure `code`.
fn failure(code: u16) -> Response {
    let status_code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (reason, message) = match code {
        401 => ("Unauthorized", "Unauthorized".to_owned()),
        403 => (
            "Forbidden",
            "persistentvolumeclaims is forbidden: User \"system:serviceaccount:kube-system:everest-controller\" cannot get resource \"persistentvolumeclaims\" in API group \"\"".to_owned(),
        ),
        429 => ("TooManyRequests", "Too many requests, please try again later.".to_owned()),
        503 => ("ServiceUnavailable", "the server is currently unable to handle the request".to_owned()),
        504 => ("Timeout", "the server was unable to return a response in the time allotted".to_owned()),
        _ => ("InternalError", format!("Internal error occurred: etcdserver: request timed out (injected {code})")),
    };
    status(status_code, reason, &message, None)
}

fn kind_info(api_version: &str, kind: &str) -> Result<&'static KindInfo, String> {
    KINDS
        .iter()
        .find(|k| k.api_version == api_version && k.kind == kind)
        .ok_or_else(|| format!("the fake Kubernetes API does not know {api_version} {kind}"))
}

fn object_path(object: &Value) -> Result<String, String> {
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let api_version = text(&object["apiVersion"]).ok_or("no apiVersion")?;
    let kind = text(&object["kind"]).ok_or("no kind")?;
    let info = kind_info(&api_version, &kind)?;
    if !object["metadata"].is_object() {
        return Err("no metadata".into());
    }
    let name = text(&object["metadata"]["name"]).ok_or("no metadata.name")?;
    let namespace = text(&object["metadata"]["namespace"]);
    if info.namespaced != namespace.is_some() {
        return Err(format!(
            "{kind} is {}namespaced",
            if info.namespaced { "" } else { "not " }
        ));
    }
    Ok(path_of(info, namespace.as_deref(), &name))
}

fn path_of(info: &KindInfo, namespace: Option<&str>, name: &str) -> String {
    let base = if info.api_version == "v1" {
        "/api/v1".to_owned()
    } else {
        format!("/apis/{}", info.api_version)
    };
    match namespace {
        Some(ns) => format!("{base}/namespaces/{ns}/{}/{name}", info.plural),
        None => format!("{base}/{}/{name}", info.plural),
    }
}

/// The resource and name at the end of a path (`…/persistentvolumeclaims/data`).
fn plural_and_name(path: &str) -> (String, String) {
    let mut parts = path.trim_end_matches('/').rsplit('/');
    let name = parts.next().unwrap_or_default().to_owned();
    let plural = parts.next().unwrap_or_default().to_owned();
    (plural, name)
}

/// A UUID-shaped uid, unique per fake and per `n`.
fn uid(n: u64) -> String {
    let pid = u64::from(std::process::id());
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        pid & 0xffff_ffff,
        (n >> 48) & 0xffff,
        (n >> 36) & 0xfff,
        (n >> 24) & 0xfff,
        n & 0xffff_ffff_ffff
    )
}

fn rand_part() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Now, as the API server writes times (RFC 3339, seconds, UTC).
fn timestamp() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_api_layout() {
        let p = pvc("team-a", "data", "everest-ssd", "10Gi", &[]);
        assert_eq!(
            object_path(&p).unwrap(),
            "/api/v1/namespaces/team-a/persistentvolumeclaims/data"
        );
        let va = json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
                        "metadata": {"name": "csi-1"}});
        assert_eq!(
            object_path(&va).unwrap(),
            "/apis/storage.k8s.io/v1/volumeattachments/csi-1"
        );
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "namespace": "x"}});
        assert!(object_path(&node).unwrap_err().contains("not namespaced"));
        let odd = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}});
        assert!(object_path(&odd).unwrap_err().contains("does not know"));
        assert_eq!(
            plural_and_name("/api/v1/namespaces/a/persistentvolumeclaims/b"),
            ("persistentvolumeclaims".into(), "b".into())
        );
    }
}
