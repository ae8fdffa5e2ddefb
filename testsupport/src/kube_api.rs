//! A stand-in for the Kubernetes API server at its HTTP edge, on a free loopback port, for the
//! real `kube` client of the daemons under test (pointed at it by [`KubeApi::write_kubeconfig`]).
//!
//! It stores objects as the API server returns them (see [`pvc`]: metadata with uid,
//! resourceVersion, creationTimestamp, managedFields; spec; status) and serves them at their
//! real paths (`/api/v1/namespaces/<ns>/persistentvolumeclaims/<name>`,
//! `/apis/storage.k8s.io/v1/volumeattachments/<name>`, …) with the verbs a client uses:
//! - `GET` of one object, and of a collection (`/api/v1/persistentvolumes`, `/api/v1/pods`
//!   across namespaces, `/api/v1/namespaces/<ns>/pods`) as a `<Kind>List` whose items carry no
//!   `kind`/`apiVersion`, as the API server writes them;
//! - `POST` to a collection (201; 409 `AlreadyExists`), `PUT` (replace, with the
//!   resourceVersion checked: 409 `Conflict`), `PATCH` as a JSON merge patch (a
//!   `metadata.resourceVersion` in the patch is checked the same way);
//! - `DELETE` with `DeleteOptions.preconditions` (uid, resourceVersion); an object with
//!   finalizers only gets a `deletionTimestamp`, and goes when a write empties its finalizers;
//! - immutable fields are refused with 422 `Invalid` as the API server's validation does: a
//!   PV's volume source, a bound PVC's spec other than its requests.
//!
//! A missing object is a 404 `Status` object as the API server writes it. The fake records
//! every request, so a test can count them; it can answer every request with an error status,
//! fail every write after the first N (an API server that dies part-way through a run), or
//! accept writes to an object without applying them (a webhook that reverts a change).
//!
//! Kinds are a table ([`KINDS`]): adding one is one line.

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
    KindInfo {
        api_version: "storage.k8s.io/v1",
        kind: "StorageClass",
        plural: "storageclasses",
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
    /// How many more writes succeed before every write fails with 503, when set.
    writes_left: Option<usize>,
    /// Paths whose writes are answered as if applied, but are not.
    frozen: std::collections::BTreeSet<String>,
    /// Objects as they were when a `DELETE` reached them.
    deleted: Vec<Value>,
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
            move |method: Method, uri: Uri, headers: HeaderMap, body: axum::body::Bytes| {
                let state = Arc::clone(&state);
                async move { answer(&state, method, uri, &headers, &body) }
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

    /// Lets `n` more writes (POST, PUT, PATCH, DELETE) through, then answers every write with
    /// 503 (reads still work); `None` lifts the limit.
    pub fn fail_writes_after(&self, n: Option<usize>) {
        lock(&self.state).writes_left = n;
    }

    /// Answers writes to the object at its API path as if applied, without applying them
    /// (as when an admission webhook reverts the change).
    pub fn freeze(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) {
        let info = kind_info(api_version, kind).unwrap_or_else(|e| panic!("{e}"));
        lock(&self.state)
            .frozen
            .insert(path_of(info, namespace, name));
    }

    /// The object at its API path, as stored.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let info = kind_info(api_version, kind).unwrap_or_else(|e| panic!("{e}"));
        lock(&self.state)
            .objects
            .get(&path_of(info, namespace, name))
            .cloned()
    }

    /// Every stored object of a kind, in path order.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let info = kind_info(api_version, kind).unwrap_or_else(|e| panic!("{e}"));
        lock(&self.state)
            .objects
            .iter()
            .filter(|(path, _)| route(path).is_some_and(|r| r.info.kind == info.kind))
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Every object a `DELETE` reached, as it was just before.
    pub fn deleted(&self) -> Vec<Value> {
        lock(&self.state).deleted.clone()
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

fn answer(
    state: &Mutex<State>,
    method: Method,
    uri: Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
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
    let path = uri.path().trim_end_matches('/').to_owned();
    let Some(route) = route(&path) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
            None,
        );
    };
    if method != Method::GET {
        match state.writes_left {
            Some(0) => return failure(503),
            Some(ref mut n) => *n -= 1,
            None => {}
        }
    }
    let body: Option<Value> = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => Some(v),
            Err(e) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("the body of the request was in an unknown format: {e}"),
                    None,
                );
            }
        }
    };
    match (method, route.name.as_deref()) {
        (Method::GET, None) => list_response(&state, &route),
        (Method::GET, Some(name)) => match state.objects.get(&path) {
            Some(object) => object_response(StatusCode::OK, object),
            None => not_found(route.info, name),
        },
        (Method::POST, None) => create(&mut state, &route, body),
        (Method::PUT, Some(name)) => {
            let name = name.to_owned();
            write(&mut state, &path, route.info, &name, |_| {
                body.ok_or_else(|| "a replace needs the object".to_owned())
            })
        }
        (Method::PATCH, Some(name)) => {
            let name = name.to_owned();
            let merge = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.starts_with("application/merge-patch+json"));
            if !merge {
                return status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    "the fake Kubernetes API takes only application/merge-patch+json patches",
                    None,
                );
            }
            write(&mut state, &path, route.info, &name, |current| {
                let patch = body.ok_or_else(|| "a patch needs a body".to_owned())?;
                let mut patched = current.clone();
                merge_patch(&mut patched, &patch);
                // A resourceVersion in a merge patch is a precondition, as for a replace.
                if patch["metadata"]["resourceVersion"].is_null() {
                    patched["metadata"]["resourceVersion"] =
                        current["metadata"]["resourceVersion"].clone();
                }
                Ok(patched)
            })
        }
        (Method::DELETE, Some(name)) => {
            let name = name.to_owned();
            delete(&mut state, &path, route.info, &name, body)
        }
        (method, _) => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("the server does not allow this method on the requested resource ({method})"),
            None,
        ),
    }
}

/// Where a path points: a kind, a namespace (for namespaced kinds, absent for a list across
/// namespaces), and a name (absent for a collection).
struct Route {
    info: &'static KindInfo,
    namespace: Option<String>,
    name: Option<String>,
}

fn route(path: &str) -> Option<Route> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_owned(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (api_version, rest) = rest;
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (plural, name) = match rest {
        [plural] => (*plural, None),
        [plural, name] => (*plural, Some((*name).to_owned())),
        _ => return None,
    };
    let info = KINDS
        .iter()
        .find(|k| k.api_version == api_version && k.plural == plural)?;
    // A cluster-scoped kind has no namespaced path; a namespaced object has no cluster path.
    if (!info.namespaced && namespace.is_some())
        || (info.namespaced && namespace.is_none() && name.is_some())
    {
        return None;
    }
    Some(Route {
        info,
        namespace,
        name,
    })
}

fn list_response(state: &State, wanted: &Route) -> Response {
    let items: Vec<Value> = state
        .objects
        .iter()
        .filter(|(path, _)| {
            route(path).is_some_and(|r| {
                r.info.kind == wanted.info.kind
                    && (wanted.namespace.is_none() || r.namespace == wanted.namespace)
            })
        })
        .map(|(_, object)| {
            // List items carry no kind or apiVersion: the list's own say what they are.
            let mut item = object.clone();
            if let Some(map) = item.as_object_mut() {
                map.remove("kind");
                map.remove("apiVersion");
            }
            item
        })
        .collect();
    let list = json!({
        "kind": format!("{}List", wanted.info.kind),
        "apiVersion": wanted.info.api_version,
        "metadata": {"resourceVersion": state.resource_version.to_string()},
        "items": items,
    });
    object_response(StatusCode::OK, &list)
}

fn create(state: &mut State, route: &Route, body: Option<Value>) -> Response {
    let Some(mut object) = body else {
        return bad_request("a create needs the object");
    };
    if object["kind"].is_null() {
        object["kind"] = json!(route.info.kind);
        object["apiVersion"] = json!(route.info.api_version);
    }
    if let (Some(ns), true) = (&route.namespace, object["metadata"]["namespace"].is_null()) {
        object["metadata"]["namespace"] = json!(ns);
    }
    let path = match object_path(&object) {
        Ok(p) => p,
        Err(e) => return bad_request(&e),
    };
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if state.objects.contains_key(&path) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("{} \"{name}\" already exists", route.info.plural),
            Some(json!({"name": name, "kind": route.info.plural})),
        );
    }
    if !object["metadata"]["resourceVersion"].is_null() {
        return bad_request("resourceVersion should not be set on objects to be created");
    }
    state.resource_version += 1;
    state.uid += 1;
    let meta = &mut object["metadata"];
    meta["uid"] = json!(uid(state.uid));
    meta["resourceVersion"] = json!(state.resource_version.to_string());
    meta["creationTimestamp"] = json!(timestamp());
    if object["kind"] == "PersistentVolume" {
        object["status"] = json!({"phase": "Pending"});
    }
    state.objects.insert(path, object.clone());
    object_response(StatusCode::CREATED, &object)
}

/// A replace or a patch: `change` turns the stored object into the new one.
fn write(
    state: &mut State,
    path: &str,
    info: &'static KindInfo,
    name: &str,
    change: impl FnOnce(&Value) -> Result<Value, String>,
) -> Response {
    let Some(current) = state.objects.get(path).cloned() else {
        return not_found(info, name);
    };
    let mut next = match change(&current) {
        Ok(v) => v,
        Err(why) => return bad_request(&why),
    };
    let sent = next["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if sent.is_empty() {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            &format!(
                "{} \"{name}\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
                info.kind
            ),
            Some(json!({"name": name, "kind": info.kind})),
        );
    }
    if sent
        != current["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
    {
        return conflict(info, name);
    }
    if let Err(why) = immutable_fields_kept(info, &current, &next) {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            &format!("{} \"{name}\" is invalid: {why}", info.kind),
            Some(json!({"name": name, "kind": info.kind})),
        );
    }
    if state.frozen.contains(path) {
        return object_response(StatusCode::OK, &current);
    }
    // What the client cannot change: identity, and the server's own bookkeeping.
    for key in ["uid", "creationTimestamp", "deletionTimestamp"] {
        next["metadata"][key] = current["metadata"][key].clone();
    }
    if let Some(meta) = next["metadata"].as_object_mut() {
        meta.retain(|_, v| !v.is_null());
    }
    state.resource_version += 1;
    next["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
    let finalized = next["metadata"]["finalizers"]
        .as_array()
        .is_none_or(Vec::is_empty);
    if !next["metadata"]["deletionTimestamp"].is_null() && finalized {
        state.objects.remove(path);
    } else {
        state.objects.insert(path.to_owned(), next.clone());
    }
    object_response(StatusCode::OK, &next)
}

/// What the API server's validation refuses to change on an update.
fn immutable_fields_kept(info: &KindInfo, old: &Value, new: &Value) -> Result<(), String> {
    match info.kind {
        "PersistentVolume" => {
            let sources = |v: &Value| {
                v["spec"]
                    .as_object()
                    .map(|spec| {
                        spec.iter()
                            .filter(|(k, _)| {
                                !matches!(
                                    k.as_str(),
                                    "capacity"
                                        | "accessModes"
                                        | "claimRef"
                                        | "persistentVolumeReclaimPolicy"
                                        | "storageClassName"
                                        | "mountOptions"
                                        | "volumeMode"
                                        | "nodeAffinity"
                                        | "volumeAttributesClassName"
                                )
                            })
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect::<serde_json::Map<_, _>>()
                    })
                    .unwrap_or_default()
            };
            if sources(old) != sources(new) {
                return Err("spec.persistentvolumesource: Forbidden: spec.persistentvolumesource is immutable after creation".into());
            }
        }
        "PersistentVolumeClaim" => {
            let without_requests = |v: &Value| {
                let mut spec = v["spec"].clone();
                if let Some(r) = spec.get_mut("resources").and_then(Value::as_object_mut) {
                    r.remove("requests");
                }
                spec
            };
            if !old["spec"]["volumeName"].is_null()
                && without_requests(old) != without_requests(new)
            {
                return Err("spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims".into());
            }
        }
        _ => {}
    }
    Ok(())
}

fn delete(
    state: &mut State,
    path: &str,
    info: &'static KindInfo,
    name: &str,
    options: Option<Value>,
) -> Response {
    let Some(current) = state.objects.get(path).cloned() else {
        return not_found(info, name);
    };
    let pre = options.as_ref().map(|o| &o["preconditions"]);
    if let Some(want) = pre.and_then(|p| p["uid"].as_str())
        && want != current["metadata"]["uid"].as_str().unwrap_or_default()
    {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Precondition failed: UID in precondition: {want}, UID in object meta: {}",
                current["metadata"]["uid"].as_str().unwrap_or_default()
            ),
            Some(json!({"name": name, "kind": info.plural})),
        );
    }
    if let Some(want) = pre.and_then(|p| p["resourceVersion"].as_str())
        && want
            != current["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
    {
        return conflict(info, name);
    }
    state.deleted.push(current.clone());
    if state.frozen.contains(path) {
        return object_response(StatusCode::OK, &current);
    }
    let has_finalizers = current["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    if has_finalizers {
        let mut marked = current;
        if marked["metadata"]["deletionTimestamp"].is_null() {
            state.resource_version += 1;
            marked["metadata"]["deletionTimestamp"] = json!(timestamp());
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            marked["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
            state.objects.insert(path.to_owned(), marked.clone());
        }
        return object_response(StatusCode::OK, &marked);
    }
    state.objects.remove(path);
    object_response(StatusCode::OK, &current)
}

/// RFC 7386: objects merge key by key, `null` removes a key, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch_map) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let map = target.as_object_mut().expect("made an object above");
    for (key, value) in patch_map {
        if value.is_null() {
            map.remove(key);
        } else {
            merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn not_found(info: &KindInfo, name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{} \"{name}\" not found", info.plural),
        Some(json!({"name": name, "kind": info.plural})),
    )
}

fn conflict(info: &KindInfo, name: &str) -> Response {
    status(
        StatusCode::CONFLICT,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            info.plural
        ),
        Some(json!({"name": name, "kind": info.plural})),
    )
}

fn bad_request(message: &str) -> Response {
    status(StatusCode::BAD_REQUEST, "BadRequest", message, None)
}

fn object_response(code: StatusCode, object: &Value) -> Response {
    (
        code,
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
        let r = route("/api/v1/namespaces/a/persistentvolumeclaims/b").unwrap();
        assert_eq!(
            (r.info.kind, r.namespace.as_deref(), r.name.as_deref()),
            ("PersistentVolumeClaim", Some("a"), Some("b"))
        );
        let all = route("/api/v1/pods").unwrap();
        assert_eq!(
            (all.info.kind, all.namespace, all.name),
            ("Pod", None, None)
        );
        assert!(route("/api/v1/namespaces/a/persistentvolumes/x").is_none());
        assert!(route("/api/v1/secrets").is_none());
    }

    #[test]
    fn merge_patches_follow_rfc_7386() {
        let mut doc = json!({"a": {"b": 1, "c": [1, 2]}, "d": "x"});
        merge_patch(&mut doc, &json!({"a": {"b": null, "c": [3]}, "e": true}));
        assert_eq!(doc, json!({"a": {"c": [3]}, "d": "x", "e": true}));
    }
}
