//! The controller side against a small stateful mock of the EVS and ECS APIs on 127.0.0.1:
//! recovery from a disk whose creation failed, detaching from a deleted node, idempotent
//! expand and delete, disks stuck in a failed state, and what counts as the same disk.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::time::Duration;

use everest_backend::backend::{
    ControllerPublish, CreateVolume, Topology, TopologyRequirement, ZONE_TOPOLOGY_KEY,
};
use everest_backend::capability::{AccessMode, AccessType, VolumeCapability};
use everest_backend::capacity::{CapacityRange, GIB};
use everest_backend::params::CommonParams;
use everest_backend::secrets::Secrets;
use everest_backend::{BackendName, ControllerBackend};
use everest_evs::api::{Credentials, EvsClient};
use everest_evs::{EvsConfig, EvsController};
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};

const PROJECT: &str = "p1";
const SECRET_KEY: &str = "mock-secret-key-value";

/// One request as the mock saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path: String,
    query: String,
    headers: HeaderMap,
    body: Value,
}

#[derive(Default)]
struct Cloud {
    /// Disks by id, as the API returns them.
    disks: BTreeMap<String, Value>,
    /// Servers that exist.
    servers: Vec<String>,
    /// Disks that vanish only after this many more reads once their delete was accepted.
    deleting: BTreeMap<String, usize>,
    /// Disks attaching to a server (not yet listed): shown `attaching` this many more reads,
    /// then `in-use` there.
    attaching: BTreeMap<String, (usize, String)>,
    /// Accepted deletes and extends fail in the cloud: the disk goes to `error_deleting` /
    /// `error_extending` (and stays there).
    fail_deletes: bool,
    fail_extends: bool,
    /// Accepted creates fail in the cloud: the disk shows `error`, its job `FAIL`.
    fail_creates: bool,
    /// Accepted attaches and detaches fail in the cloud: the disk stays as it was, the job
    /// says `FAIL`.
    fail_attaches: bool,
    fail_detaches: bool,
    /// Accepted attaches start late: the disk shows no change for this long (its job
    /// `RUNNING`), then is `in-use` on the server.
    attach_delay: Duration,
    /// Attaches that have not started yet: when they land, and the server.
    late: BTreeMap<String, (std::time::Instant, String)>,
    /// Create answers carry only the job, as older clouds answer (no `volume_ids`).
    creates_name_no_disk: bool,
    /// A snapshot of this disk appears right after the driver's first look for snapshots
    /// (taken in between by someone else): the cloud then refuses the delete.
    snapshot_races: Option<String>,
    /// Snapshot listings answered so far.
    snapshot_lists: usize,
    seen: Vec<Seen>,
    next: usize,
}

impl Cloud {
    /// A read of disk `id`: a disk being deleted shows `deleting` a few times, then is gone.
    fn read(&mut self, id: &str) -> Option<Value> {
        if let Some((lands, server)) = self.late.get(id)
            && std::time::Instant::now() >= *lands
        {
            let server = server.clone();
            self.late.remove(id);
            attach(self.disks.get_mut(id)?, &server);
        }
        if let Some((left, server)) = self.attaching.get_mut(id) {
            if *left == 0 {
                let server = server.clone();
                self.attaching.remove(id);
                attach(self.disks.get_mut(id)?, &server);
            } else {
                *left -= 1;
                let mut d = self.disks.get(id)?.clone();
                d["status"] = json!("attaching");
                return Some(d);
            }
        }
        if let Some(left) = self.deleting.get_mut(id) {
            if *left == 0 {
                self.deleting.remove(id);
                self.disks.remove(id);
                return None;
            }
            *left -= 1;
            let mut d = self.disks.get(id)?.clone();
            d["status"] = json!("deleting");
            return Some(d);
        }
        self.disks.get(id).cloned()
    }
}

type Shared = Arc<Mutex<Cloud>>;

fn disk(id: &str, name: &str, status: &str, size: u64) -> Value {
    json!({"id": id, "name": name, "status": status, "size": size, "volume_type": "SSD",
           "availability_zone": "az1", "multiattach": false,
           "metadata": {"everest.io/csi-name": name, "everest.io/managed-by": "everest"},
           "attachments": [], "created_at": "2016-05-25T02:38:40.392463"})
}

fn attach(disk: &mut Value, server: &str) {
    let id = disk["id"].clone();
    let mut attachments = disk["attachments"].as_array().cloned().unwrap_or_default();
    attachments.push(
        json!({"attachment_id": format!("att-{server}"), "volume_id": id,
                            "server_id": server, "device": "/dev/vdb"}),
    );
    disk["attachments"] = json!(attachments);
    disk["status"] = json!("in-use");
}

fn job(id: &str, volume: &str) -> Value {
    json!({"job_id": id, "job_type": "x", "status": "SUCCESS", "entities": {"volume_id": volume}})
}

fn not_found(code: &str) -> Response {
    let body = json!({"error": {"code": code, "message": format!("{code}: not found")}});
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

fn ok(body: Value) -> Response {
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn query(uri: &Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            let d = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
            (d(k), d(v))
        })
        .collect()
}

async fn handle(
    State(cloud): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut c = cloud.lock().unwrap();
    c.seen.push(Seen {
        method: method.clone(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or_default().to_owned(),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    let parts: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        // No snapshots, but for the one that races a delete (from the second listing on).
        ("GET", ["evs", "v2", PROJECT, "cloudsnapshots", "detail"]) => {
            c.snapshot_lists += 1;
            let snapshots: Vec<Value> = match &c.snapshot_races {
                Some(d) if c.snapshot_lists > 1 => {
                    vec![json!({"id": "snap-race", "status": "available", "volume_id": d})]
                }
                _ => Vec::new(),
            };
            let count = snapshots.len();
            (
                StatusCode::OK,
                axum::Json(json!({"snapshots": snapshots, "count": count})),
            )
                .into_response()
        }
        ("GET", ["evs", "v2", PROJECT, "cloudvolumes", "detail"]) => {
            let q = query(&uri);
            let ids: Vec<String> = q
                .get("ids")
                .map(|s| {
                    s.trim_matches(['[', ']'])
                        .split(',')
                        .map(|i| i.trim_matches('\'').to_owned())
                        .collect()
                })
                .unwrap_or_default();
            let wanted_meta: BTreeMap<String, String> = q
                .get("metadata")
                .map(|m| serde_json::from_str(m).unwrap())
                .unwrap_or_default();
            let all: Vec<String> = c.disks.keys().cloned().collect();
            let mut volumes = Vec::new();
            for id in all {
                let Some(d) = c.read(&id) else { continue };
                let name_ok = q.get("name").is_none_or(|n| d["name"] == json!(n));
                let ids_ok = ids.is_empty() || ids.contains(&id);
                let meta_ok = wanted_meta
                    .iter()
                    .all(|(k, v)| d["metadata"][k] == json!(v));
                if name_ok && ids_ok && meta_ok {
                    volumes.push(d);
                }
            }
            ok(json!({"volumes": volumes, "count": volumes.len()}))
        }
        ("GET", ["evs", "v2", PROJECT, "cloudvolumes", id]) => match c.read(id) {
            Some(d) => ok(json!({"volume": d})),
            None => not_found("EVS.5404"),
        },
        ("DELETE", ["evs", "v2", PROJECT, "cloudvolumes", id]) => {
            let Some(d) = c.disks.get(*id) else {
                return not_found("EVS.5404");
            };
            let status = d["status"].as_str().unwrap_or_default();
            if c.snapshot_races.as_deref() == Some(*id) {
                let body = json!({"error": {"code": "EVS.5400",
                    "message": format!("Invalid volume: Volume {id} still has 1 dependent snapshots")}});
                return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
            }
            if !matches!(status, "available" | "error") || c.deleting.contains_key(*id) {
                let body = json!({"error": {"code": "EVS.1046", "message": "bad state"}});
                return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
            }
            if c.fail_deletes {
                c.disks.get_mut(*id).unwrap()["status"] = json!("error_deleting");
            } else {
                c.deleting.insert((*id).to_owned(), 2);
            }
            ok(json!({"job_id": format!("job-delete-{id}")}))
        }
        ("POST", ["evs", "v2.1", PROJECT, "cloudvolumes"]) => {
            c.next += 1;
            let id = format!("disk-new-{}", c.next);
            let v = &c.seen.last().unwrap().body["volume"];
            let status = if c.fail_creates { "error" } else { "available" };
            let mut d = disk(
                &id,
                v["name"].as_str().unwrap(),
                status,
                v["size"].as_u64().unwrap(),
            );
            d["metadata"] = v["metadata"].clone();
            c.disks.insert(id.clone(), d);
            if c.creates_name_no_disk {
                ok(json!({"job_id": format!("job-create-{id}")}))
            } else {
                ok(json!({"job_id": format!("job-create-{id}"), "volume_ids": [id]}))
            }
        }
        ("POST", ["evs", "v2.1", PROJECT, "cloudvolumes", id, "action"]) => {
            let new_size = c.seen.last().unwrap().body["os-extend"]["new_size"].clone();
            let fail = c.fail_extends;
            let Some(d) = c.disks.get_mut(*id) else {
                return not_found("EVS.5404");
            };
            if d["size"].as_u64() >= new_size.as_u64() {
                let body =
                    json!({"error": {"code": "EVS.1015", "message": "new size must be larger"}});
                return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
            }
            if fail {
                d["status"] = json!("error_extending");
            } else {
                d["size"] = new_size;
            }
            ok(json!({"job_id": format!("job-extend-{id}")}))
        }
        ("GET", ["evs" | "ecs", "v1", PROJECT, "jobs", id]) => {
            let volume = id.rsplit_once("disk-").map(|(_, v)| format!("disk-{v}"));
            if c.fail_creates && id.starts_with("job-create-") {
                return ok(
                    json!({"job_id": id, "job_type": "createVolume", "status": "FAIL",
                                 "error_code": "EVS.5500", "fail_reason": "no capacity left",
                                 "entities": {"volume_id": volume}}),
                );
            }
            let ecs_failed = (c.fail_attaches && id.starts_with("job-attach-"))
                || (c.fail_detaches && id.starts_with("job-detach-"));
            if ecs_failed {
                return ok(
                    json!({"job_id": id, "job_type": "attachVolume", "status": "FAIL",
                                 "error_code": "Ecs.0104", "fail_reason": "no free disk slot",
                                 "entities": {"server_id": "server-1"}}),
                );
            }
            if volume.as_ref().is_some_and(|v| c.late.contains_key(v)) {
                return ok(json!({"job_id": id, "job_type": "attachVolume", "status": "RUNNING"}));
            }
            ok(job(id, volume.as_deref().unwrap_or_default()))
        }
        (
            "DELETE",
            [
                "ecs",
                "v1",
                PROJECT,
                "cloudservers",
                server,
                "detachvolume",
                id,
            ],
        ) => {
            if !c.servers.iter().any(|s| s == server) {
                return not_found("Ecs.0114");
            }
            if c.fail_detaches {
                return ok(json!({"job_id": format!("job-detach-{id}")}));
            }
            if let Some(d) = c.disks.get_mut(*id) {
                d["attachments"] = json!([]);
                d["status"] = json!("available");
            }
            ok(json!({"job_id": format!("job-detach-{id}")}))
        }
        ("GET", ["ecs", "v2.1", PROJECT, "servers", server]) => {
            if c.servers.iter().any(|s| s == server) {
                ok(json!({"server": {"id": server, "name": server, "status": "ACTIVE"}}))
            } else {
                let body = json!({"itemNotFound": {"message": "Instance could not be found", "code": 404}});
                (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
            }
        }
        ("POST", ["ecs", "v1", PROJECT, "cloudservers", server, "attachvolume"]) => {
            let server = (*server).to_owned();
            let id = c.seen.last().unwrap().body["volumeAttachment"]["volumeId"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if !c.servers.contains(&server) {
                return not_found("Ecs.0114");
            }
            let (fail, delay) = (c.fail_attaches, c.attach_delay);
            let Some(d) = c.disks.get_mut(&id) else {
                return not_found("EVS.5404");
            };
            if !delay.is_zero() {
                let lands = std::time::Instant::now() + delay;
                c.late.insert(id.clone(), (lands, server));
            } else if !fail {
                attach(d, &server);
            }
            ok(json!({"job_id": format!("job-attach-{id}")}))
        }
        _ => not_found("APIGW.0101"),
    }
}

struct Mock {
    cloud: Shared,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Mock {
    async fn start(disks: Vec<Value>, servers: &[&str]) -> Mock {
        let cloud: Shared = Arc::new(Mutex::new(Cloud {
            disks: disks
                .into_iter()
                .map(|d| (d["id"].as_str().unwrap().to_owned(), d))
                .collect(),
            servers: servers.iter().map(|s| (*s).to_owned()).collect(),
            ..Cloud::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(handle).with_state(cloud.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Mock {
            cloud,
            addr,
            server,
        }
    }

    fn controller(&self) -> EvsController {
        let table = json!({
            "project_id": PROJECT, "region": "r1", "credentials_file": "/nonexistent",
            "evs_endpoint": format!("http://{}/evs", self.addr),
            "ecs_endpoint": format!("http://{}/ecs", self.addr),
            "allow_insecure_http": true,
            "retry_base_ms": 1, "retry_cap_ms": 5, "max_retries": 1,
            "job_poll_initial_ms": 5, "job_poll_max_ms": 20,
            "job_timeout_seconds": 5, "availability_zone": "az1",
        });
        let config = EvsConfig::parse("evs", table.as_object().unwrap()).unwrap();
        let client = EvsClient::new(
            config.cloud.clone(),
            Credentials::AkSk {
                access_key: "MOCKACCESSKEY".into(),
                secret_key: SECRET_KEY.into(),
                security_token: None,
            },
        )
        .unwrap();
        EvsController::new(BackendName::new("evs").unwrap(), config, client)
    }

    fn seen(&self) -> Vec<Seen> {
        self.cloud.lock().unwrap().seen.clone()
    }

    /// `METHOD /path` of every request that changes something.
    fn writes(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter(|s| s.method != Method::GET)
            .map(|s| format!("{} {}", s.method, s.path))
            .collect()
    }

    fn disk(&self, id: &str) -> Option<Value> {
        self.cloud.lock().unwrap().disks.get(id).cloned()
    }
}

fn create_request(name: &str, gib: u64) -> CreateVolume {
    CreateVolume {
        name: name.into(),
        capacity: CapacityRange::new((gib * GIB) as i64, 0).unwrap(),
        capabilities: vec![VolumeCapability {
            access_type: AccessType::Mount {
                fs_type: "ext4".into(),
                mount_flags: vec![],
            },
            access_mode: AccessMode::SingleNodeWriter,
        }],
        common: CommonParams::default(),
        parameters: BTreeMap::new(),
        topology: None,
        source: None,
        secrets: Secrets::default(),
        cluster: Default::default(),
    }
}

#[tokio::test]
async fn create_replaces_a_disk_whose_creation_failed() {
    let mock = Mock::start(vec![disk("disk-failed", "pvc-1", "error", 10)], &[]).await;
    let c = mock.controller();

    let volume = c.create_volume(&create_request("pvc-1", 10)).await.unwrap();

    assert_eq!(volume.native_id, "disk-new-1");
    assert_eq!(
        mock.writes(),
        vec![
            "DELETE /evs/v2/p1/cloudvolumes/disk-failed",
            "POST /evs/v2.1/p1/cloudvolumes",
        ],
        "the failed disk must be deleted, then a new one created"
    );
    assert!(mock.disk("disk-failed").is_none(), "the failed disk leaked");
    let seen = mock.seen();
    let create = seen.iter().position(|s| s.method == Method::POST).unwrap();
    // A token derived from the failed disk, not the stable one whose attempt failed.
    let token = seen[create]
        .headers
        .get("x-client-token")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&token).is_ok());

    // A retry finds the new disk and creates nothing more.
    let again = c.create_volume(&create_request("pvc-1", 10)).await.unwrap();
    assert_eq!(again.native_id, "disk-new-1");
    assert_eq!(mock.writes().len(), 2, "{:?}", mock.writes());
    // The stable token of a fresh request differs from the replacement's.
    let mock2 = Mock::start(vec![], &[]).await;
    mock2
        .controller()
        .create_volume(&create_request("pvc-1", 10))
        .await
        .unwrap();
    let stable = mock2
        .seen()
        .into_iter()
        .find(|s| s.method == Method::POST)
        .unwrap()
        .headers
        .get("x-client-token")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(stable, token);
}

#[tokio::test]
async fn create_finishes_removing_a_failed_disk_already_being_deleted() {
    let mock = Mock::start(vec![disk("disk-failed", "pvc-2", "error", 10)], &[]).await;
    mock.cloud
        .lock()
        .unwrap()
        .deleting
        .insert("disk-failed".into(), 2);
    let volume = mock
        .controller()
        .create_volume(&create_request("pvc-2", 10))
        .await
        .unwrap();
    assert_eq!(volume.native_id, "disk-new-1");
    assert_eq!(mock.writes(), vec!["POST /evs/v2.1/p1/cloudvolumes"]);
}

#[tokio::test]
async fn create_never_deletes_a_usable_disk() {
    let mock = Mock::start(vec![disk("disk-ok", "pvc-3", "available", 10)], &[]).await;
    let c = mock.controller();
    assert_eq!(
        c.create_volume(&create_request("pvc-3", 10))
            .await
            .unwrap()
            .native_id,
        "disk-ok"
    );
    // A size mismatch is ALREADY_EXISTS, never a delete.
    let err = c
        .create_volume(&create_request("pvc-3", 20))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert!(mock.writes().is_empty(), "{:?}", mock.writes());
}

fn publish_request(disk: &str, node: &str) -> ControllerPublish {
    ControllerPublish {
        native_id: disk.into(),
        node_id: node.into(),
        capability: create_request("x", 1).capabilities.remove(0),
        readonly: false,
        context: BTreeMap::new(),
        secrets: Secrets::default(),
    }
}

#[tokio::test]
async fn publish_of_a_disk_attached_to_another_node_fails_at_once_naming_it() {
    let mut d = disk("disk-p", "pvc-p", "in-use", 10);
    attach(&mut d, "server-1");
    let mock = Mock::start(vec![d], &["server-1", "server-2"]).await;
    let err = mock
        .controller()
        .publish(&publish_request("disk-p", "server-2"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("server-1"), "{err}");
    assert!(mock.writes().is_empty(), "{:?}", mock.writes());
}

#[tokio::test]
async fn publish_while_the_disk_is_attaching_elsewhere_fails_when_it_lands_not_at_the_timeout() {
    let mock = Mock::start(
        vec![disk("disk-q", "pvc-q", "available", 10)],
        &["server-1", "server-2"],
    )
    .await;
    mock.cloud
        .lock()
        .unwrap()
        .attaching
        .insert("disk-q".into(), (3, "server-1".into()));
    let started = std::time::Instant::now();
    let err = mock
        .controller()
        .publish(&publish_request("disk-q", "server-2"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("server-1"), "{err}");
    // The job timeout is 5 s; the attach landed after a few polls.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(mock.writes().is_empty(), "{:?}", mock.writes());

    // An attach in flight to the node asked for is waited for, not started again.
    mock.cloud.lock().unwrap().disks.get_mut("disk-q").unwrap()["attachments"] = json!([]);
    mock.cloud
        .lock()
        .unwrap()
        .attaching
        .insert("disk-q".into(), (3, "server-2".into()));
    let ctx = mock
        .controller()
        .publish(&publish_request("disk-q", "server-2"))
        .await
        .unwrap();
    assert!(!ctx.is_empty());
    assert!(mock.writes().is_empty(), "{:?}", mock.writes());
}

#[tokio::test]
async fn a_shareable_disk_is_still_used_by_one_node_at_a_time() {
    // Every access mode EVS serves is single-node: a second node writing the same filesystem
    // would corrupt it, whether or not the cloud could attach the disk twice.
    let mut d = disk("disk-s", "pvc-s", "in-use", 10);
    d["multiattach"] = json!(true);
    attach(&mut d, "server-1");
    let mock = Mock::start(vec![d], &["server-1", "server-2"]).await;
    let err = mock
        .controller()
        .publish(&publish_request("disk-s", "server-2"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("server-1"), "{err}");
    assert!(mock.writes().is_empty(), "{:?}", mock.writes());
}

#[tokio::test]
async fn unpublish_from_a_deleted_node_is_done() {
    let mut d = disk("disk-a", "pvc-4", "in-use", 10);
    d["attachments"] = json!([{"attachment_id": "a1", "volume_id": "disk-a",
                               "server_id": "server-gone", "device": "/dev/vdb"}]);
    let mock = Mock::start(vec![d], &[]).await;
    mock.controller()
        .unpublish("disk-a", Some("server-gone"))
        .await
        .unwrap();
    assert_eq!(
        mock.writes(),
        vec!["DELETE /ecs/v1/p1/cloudservers/server-gone/detachvolume/disk-a"]
    );
}

#[tokio::test]
async fn unpublish_from_a_live_node_detaches_and_waits() {
    let mut d = disk("disk-b", "pvc-5", "in-use", 10);
    d["attachments"] = json!([{"attachment_id": "a1", "volume_id": "disk-b",
                               "server_id": "server-1", "device": "/dev/vdb"}]);
    let mock = Mock::start(vec![d], &["server-1"]).await;
    mock.controller()
        .unpublish("disk-b", Some("server-1"))
        .await
        .unwrap();
    assert_eq!(mock.disk("disk-b").unwrap()["status"], "available");
}

#[tokio::test]
async fn expand_of_a_disk_already_large_enough_is_ok_and_sends_nothing() {
    let mock = Mock::start(vec![disk("disk-c", "pvc-6", "in-use", 30)], &[]).await;
    let c = mock.controller();
    for _ in 0..2 {
        let e = c
            .expand("disk-c", CapacityRange::new((20 * GIB) as i64, 0).unwrap())
            .await
            .unwrap();
        assert_eq!(e.capacity_bytes, 30 * GIB);
    }
    assert!(mock.writes().is_empty(), "{:?}", mock.writes());
    let e = c
        .expand("disk-c", CapacityRange::new((40 * GIB) as i64, 0).unwrap())
        .await
        .unwrap();
    assert_eq!(e.capacity_bytes, 40 * GIB);
    assert_eq!(mock.writes().len(), 1);
}

#[tokio::test]
async fn delete_of_a_disk_already_deleting_waits_without_a_second_delete() {
    let mock = Mock::start(vec![disk("disk-d", "pvc-7", "available", 10)], &[]).await;
    mock.cloud
        .lock()
        .unwrap()
        .deleting
        .insert("disk-d".into(), 3);
    let c = mock.controller();
    c.delete_volume("disk-d", &Secrets::default())
        .await
        .unwrap();
    c.delete_volume("disk-d", &Secrets::default())
        .await
        .unwrap();
    assert!(mock.writes().is_empty(), "{:?}", mock.writes());
    assert!(mock.disk("disk-d").is_none());
}

#[tokio::test]
async fn errors_never_carry_the_secret_key() {
    let mock = Mock::start(vec![disk("disk-e", "pvc-8", "available", 10)], &[]).await;
    let c = mock.controller();
    let errors = [
        c.get_volume("missing").await.err(),
        c.expand("missing", CapacityRange::default()).await.err(),
        c.list_volumes(Some("bogus"), 0).await.err(),
        c.create_volume(&create_request("pvc-8", 20)).await.err(),
    ];
    for e in errors.into_iter().flatten() {
        assert!(!e.to_string().contains(SECRET_KEY), "{e}");
    }
    assert!(!format!("{c:?}").contains(SECRET_KEY));
}

/// Asserts a FAILED_PRECONDITION whose message names the disk, its status and the way out.
fn assert_stuck(err: &everest_backend::Error, disk: &str, status: &str) {
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    let msg = err.to_string();
    for part in [disk, status, "support"] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
}

#[tokio::test]
async fn delete_of_a_disk_stuck_in_error_deleting_is_failed_precondition() {
    let mock = Mock::start(vec![disk("disk-f", "pvc-9", "error_deleting", 10)], &[]).await;
    let err = mock
        .controller()
        .delete_volume("disk-f", &Secrets::default())
        .await
        .unwrap_err();
    assert_stuck(&err, "disk-f", "error_deleting");
    assert!(mock.writes().is_empty(), "{:?}", mock.writes());
}

#[tokio::test]
async fn delete_that_leaves_the_disk_in_error_deleting_is_failed_precondition() {
    let mock = Mock::start(vec![disk("disk-g", "pvc-10", "available", 10)], &[]).await;
    mock.cloud.lock().unwrap().fail_deletes = true;
    let c = mock.controller();
    let err = c
        .delete_volume("disk-g", &Secrets::default())
        .await
        .unwrap_err();
    assert_stuck(&err, "disk-g", "error_deleting");
    // The retry sends no second delete and answers the same.
    let again = c
        .delete_volume("disk-g", &Secrets::default())
        .await
        .unwrap_err();
    assert_stuck(&again, "disk-g", "error_deleting");
    assert_eq!(mock.writes(), vec!["DELETE /evs/v2/p1/cloudvolumes/disk-g"]);
}

#[tokio::test]
async fn a_snapshot_taken_while_deleting_its_disk_makes_the_refusal_failed_precondition() {
    let mock = Mock::start(vec![disk("disk-s", "pvc-s", "available", 10)], &[]).await;
    mock.cloud.lock().unwrap().snapshot_races = Some("disk-s".into());
    let err = mock
        .controller()
        .delete_volume("disk-s", &Secrets::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("snap-race"), "{err}");
    assert_eq!(mock.writes(), vec!["DELETE /evs/v2/p1/cloudvolumes/disk-s"]);
}

#[tokio::test]
async fn expand_of_a_disk_stuck_in_error_extending_is_failed_precondition() {
    let mock = Mock::start(vec![disk("disk-h", "pvc-11", "error_extending", 10)], &[]).await;
    let err = mock
        .controller()
        .expand("disk-h", CapacityRange::new((20 * GIB) as i64, 0).unwrap())
        .await
        .unwrap_err();
    assert_stuck(&err, "disk-h", "error_extending");
    assert!(mock.writes().is_empty(), "{:?}", mock.writes());
}

#[tokio::test]
async fn expand_that_leaves_the_disk_in_error_extending_is_failed_precondition() {
    let mock = Mock::start(vec![disk("disk-i", "pvc-12", "in-use", 10)], &[]).await;
    mock.cloud.lock().unwrap().fail_extends = true;
    let c = mock.controller();
    let want = CapacityRange::new((20 * GIB) as i64, 0).unwrap();
    let err = c.expand("disk-i", want).await.unwrap_err();
    assert_stuck(&err, "disk-i", "error_extending");
    let again = c.expand("disk-i", want).await.unwrap_err();
    assert_stuck(&again, "disk-i", "error_extending");
    assert_eq!(mock.writes().len(), 1, "{:?}", mock.writes());
}

fn zones(requisite: &[&str]) -> Option<TopologyRequirement> {
    let t = |z: &str| Topology::from([(ZONE_TOPOLOGY_KEY.to_owned(), z.to_owned())]);
    Some(TopologyRequirement {
        requisite: requisite.iter().map(|z| t(z)).collect(),
        preferred: requisite.iter().take(1).map(|z| t(z)).collect(),
    })
}

fn with_params(mut req: CreateVolume, params: &[(&str, &str)]) -> CreateVolume {
    req.parameters = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    req
}

#[tokio::test]
async fn existing_disk_in_another_zone_is_already_exists() {
    // The disk sits in az1.
    let mock = Mock::start(vec![disk("disk-j", "pvc-13", "available", 10)], &[]).await;
    let c = mock.controller();

    let mut req = create_request("pvc-13", 10);
    req.topology = zones(&["az2", "az3"]);
    let err = c.create_volume(&req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
    for part in ["disk-j", "az1", "az2"] {
        assert!(err.to_string().contains(part), "{part}: {err}");
    }

    let req = with_params(
        create_request("pvc-13", 10),
        &[("everest.io/availability-zone", "az2")],
    );
    let err = c.create_volume(&req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
    assert!(err.to_string().contains("az2"), "{err}");

    // A requisite that includes the disk's zone, or a matching StorageClass zone, is the same disk.
    let mut req = create_request("pvc-13", 10);
    req.topology = zones(&["az2", "az1"]);
    assert_eq!(c.create_volume(&req).await.unwrap().native_id, "disk-j");
    let req = with_params(
        create_request("pvc-13", 10),
        &[("everest.io/availability-zone", "az1")],
    );
    assert_eq!(c.create_volume(&req).await.unwrap().native_id, "disk-j");
    assert!(mock.writes().is_empty(), "{:?}", mock.writes());
}

#[tokio::test]
async fn existing_disk_with_other_encryption_is_already_exists() {
    let mut keyed = disk("disk-k", "pvc-14", "available", 10);
    keyed["metadata"]["__system__encrypted"] = json!("1");
    keyed["metadata"]["__system__cmkid"] = json!("key-1");
    let plain = disk("disk-l", "pvc-15", "available", 10);
    let mock = Mock::start(vec![keyed, plain], &[]).await;
    let c = mock.controller();
    let kms = |name: &str, key: &str| {
        with_params(
            create_request(name, 10),
            &[("everest.io/crypt-key-id", key)],
        )
    };

    let err = c.create_volume(&kms("pvc-14", "key-2")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
    for part in ["disk-k", "key-1", "key-2"] {
        assert!(err.to_string().contains(part), "{part}: {err}");
    }
    let err = c.create_volume(&kms("pvc-15", "key-2")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
    assert!(err.to_string().contains("not encrypted"), "{err}");

    assert_eq!(
        c.create_volume(&kms("pvc-14", "key-1"))
            .await
            .unwrap()
            .native_id,
        "disk-k"
    );
    assert!(mock.writes().is_empty(), "{:?}", mock.writes());

    // A disk this driver created with a key is recognised by a retry with the same key.
    let first = c.create_volume(&kms("pvc-16", "key-3")).await.unwrap();
    let again = c.create_volume(&kms("pvc-16", "key-3")).await.unwrap();
    assert_eq!(first.native_id, again.native_id);
    assert_eq!(mock.writes().len(), 1, "{:?}", mock.writes());
}

fn job_polls(mock: &Mock) -> Vec<String> {
    mock.seen()
        .into_iter()
        .filter(|s| s.path.contains("/jobs/"))
        .map(|s| s.path)
        .collect()
}

/// Creates, deletes and extends watch the disk (through the shared poller), not their job.
#[tokio::test]
async fn create_delete_and_extend_wait_on_the_disk_not_the_job() {
    let mock = Mock::start(vec![], &[]).await;
    let c = mock.controller();
    let v = c
        .create_volume(&create_request("pvc-20", 10))
        .await
        .unwrap();
    let want = CapacityRange::new((20 * GIB) as i64, 0).unwrap();
    assert_eq!(
        c.expand(&v.native_id, want).await.unwrap().capacity_bytes,
        20 * GIB
    );
    c.delete_volume(&v.native_id, &Default::default())
        .await
        .unwrap();
    assert!(mock.disk(&v.native_id).is_none());
    assert_eq!(job_polls(&mock), Vec::<String>::new());
    // Each wait looked at its disk through the list call, by id.
    let listed_by_id = mock
        .seen()
        .iter()
        .filter(|s| s.path.ends_with("/cloudvolumes/detail") && s.query.contains("ids="))
        .count();
    assert!(listed_by_id >= 3, "{listed_by_id}");
}

/// A create whose disk ends in `error` reports the job's own reason, read once.
#[tokio::test]
async fn a_failed_create_reports_the_reason_its_job_gives() {
    let mock = Mock::start(vec![], &[]).await;
    mock.cloud.lock().unwrap().fail_creates = true;
    let err = mock
        .controller()
        .create_volume(&create_request("pvc-21", 10))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("EVS.5500") && text.contains("no capacity left"),
        "{text}"
    );
    assert_eq!(
        job_polls(&mock),
        vec!["/evs/v1/p1/jobs/job-create-disk-new-1"]
    );
}

/// A cloud whose create answer names no disk: the job names it.
#[tokio::test]
async fn a_create_answer_without_disk_ids_waits_on_the_job() {
    let mock = Mock::start(vec![], &[]).await;
    mock.cloud.lock().unwrap().creates_name_no_disk = true;
    let v = mock
        .controller()
        .create_volume(&create_request("pvc-22", 10))
        .await
        .unwrap();
    assert_eq!(v.native_id, "disk-new-1");
    assert_eq!(
        job_polls(&mock),
        vec!["/evs/v1/p1/jobs/job-create-disk-new-1"]
    );
}

/// Attaches and detaches watch the disk through the shared poller, not their ECS job, and no
/// server is read: the attach call itself says when the node does not exist.
#[tokio::test]
async fn attach_and_detach_wait_on_the_disk_not_the_job() {
    let mock = Mock::start(
        vec![disk("disk-w", "pvc-w", "available", 10)],
        &["server-1"],
    )
    .await;
    let c = mock.controller();
    let ctx = c
        .publish(&publish_request("disk-w", "server-1"))
        .await
        .unwrap();
    assert!(!ctx.is_empty());
    c.unpublish("disk-w", Some("server-1")).await.unwrap();
    assert_eq!(mock.disk("disk-w").unwrap()["status"], "available");
    assert_eq!(job_polls(&mock), Vec::<String>::new());
    let servers_read = mock
        .seen()
        .iter()
        .filter(|s| s.path.contains("/servers/"))
        .count();
    assert_eq!(servers_read, 0);
}

#[tokio::test]
async fn publish_to_a_node_ecs_does_not_know_is_not_found() {
    let mock = Mock::start(vec![disk("disk-x", "pvc-x", "available", 10)], &[]).await;
    let err = mock
        .controller()
        .publish(&publish_request("disk-x", "server-gone"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    assert!(err.to_string().contains("server-gone"), "{err}");
    assert_eq!(mock.disk("disk-x").unwrap()["status"], "available");
}

/// An attach job that fails puts the disk back: the wait reads the job once and reports the
/// cloud's reason instead of waiting for the timeout.
#[tokio::test]
async fn a_failed_attach_reports_its_jobs_reason_at_once() {
    let mock = Mock::start(
        vec![disk("disk-y", "pvc-y", "available", 10)],
        &["server-1"],
    )
    .await;
    mock.cloud.lock().unwrap().fail_attaches = true;
    let started = std::time::Instant::now();
    let err = mock
        .controller()
        .publish(&publish_request("disk-y", "server-1"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("Ecs.0104") && text.contains("no free disk slot"),
        "{text}"
    );
    assert_eq!(job_polls(&mock), vec!["/ecs/v1/p1/jobs/job-attach-disk-y"]);
    // The job timeout is 5 s.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// An attach the cloud has not started when the disk is first looked at (the disk still
/// `available`): its job says it is running, so the wait goes on until the disk is attached,
/// pausing between looks at the job rather than asking in a tight loop.
#[tokio::test]
async fn an_attach_that_starts_late_is_waited_for() {
    let mock = Mock::start(
        vec![disk("disk-z", "pvc-z", "available", 10)],
        &["server-1"],
    )
    .await;
    mock.cloud.lock().unwrap().attach_delay = Duration::from_millis(300);
    let ctx = mock
        .controller()
        .publish(&publish_request("disk-z", "server-1"))
        .await
        .unwrap();
    assert!(!ctx.is_empty());
    assert_eq!(mock.disk("disk-z").unwrap()["status"], "in-use");
    // The job is looked at every 5 ms at most (the mock's first poll interval): 300 ms give
    // at most 60 looks; without the pause a loopback loop makes hundreds.
    let polls = job_polls(&mock).len();
    assert!((1..=80).contains(&polls), "{polls} looks at the job");
}

#[tokio::test]
async fn a_failed_detach_reports_its_jobs_reason_at_once() {
    let mut d = disk("disk-v", "pvc-v", "in-use", 10);
    attach(&mut d, "server-1");
    let mock = Mock::start(vec![d], &["server-1"]).await;
    mock.cloud.lock().unwrap().fail_detaches = true;
    let started = std::time::Instant::now();
    let err = mock
        .controller()
        .unpublish("disk-v", Some("server-1"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no free disk slot"), "{err}");
    assert_eq!(job_polls(&mock), vec!["/ecs/v1/p1/jobs/job-detach-disk-v"]);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
