//! The API client against a small in-test mock cloud on 127.0.0.1: authentication on the
//! wire, retries, job polling, not-found handling and batched polling.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use everest_evs::api::sign;
use everest_evs::api::{
    CloudConfig, CreateVolume, Credentials, Error, ErrorClass, EvsClient, JobId, Service,
    TransportKind, VolumeFilter, VolumeStatus, VolumeWait, fetch_instance_metadata,
};
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};

const AK: &str = "TESTACCESSKEY";
const SK: &str = "test-secret-key-value";
const PROJECT: &str = "p1";

/// One request as the mock saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// What the mock answers.
struct Answer {
    status: u16,
    body: Value,
    headers: Vec<(&'static str, String)>,
    delay: Duration,
}

fn answer(status: u16, body: Value) -> Answer {
    Answer {
        status,
        body,
        headers: Vec::new(),
        delay: Duration::ZERO,
    }
}

/// `(request, how many earlier requests had the same method and path)` → answer.
type Responder = dyn Fn(&Seen, usize) -> Answer + Send + Sync;

enum AuthMode {
    AkSk,
    /// Only this token is accepted on non-IAM paths.
    Token(Mutex<String>),
}

struct Mock {
    auth: AuthMode,
    responder: Box<Responder>,
    seen: Mutex<Vec<Seen>>,
    auth_failures: AtomicUsize,
}

impl Mock {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    fn count(&self, method: Method, path: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.path == path)
            .count()
    }
}

fn decode_query(raw: Option<&str>) -> Vec<(String, String)> {
    raw.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let d = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
            (d(k), d(v))
        })
        .collect()
}

/// Recomputes the AK/SK signature from what arrived; `Err` says why it does not match.
fn verify_signature(seen: &Seen) -> Result<(), String> {
    let auth = seen.header("authorization").ok_or("no Authorization")?;
    let rest = auth
        .strip_prefix("SDK-HMAC-SHA256 Access=")
        .ok_or(format!("bad scheme: {auth}"))?;
    let (access, rest) = rest
        .split_once(", SignedHeaders=")
        .ok_or("no SignedHeaders")?;
    let (signed, signature) = rest.split_once(", Signature=").ok_or("no Signature")?;
    if access != AK {
        return Err(format!("wrong access key {access}"));
    }
    if signature.len() != 64 || !signature.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err("signature is not 64 hex digits".into());
    }
    let date = seen.header("x-sdk-date").ok_or("no X-Sdk-Date")?;
    let parsed = chrono::NaiveDateTime::parse_from_str(date, "%Y%m%dT%H%M%SZ")
        .map_err(|e| format!("bad X-Sdk-Date {date}: {e}"))?;
    if (chrono::Utc::now().naive_utc() - parsed)
        .num_minutes()
        .abs()
        > 15
    {
        return Err("X-Sdk-Date too far off".into());
    }
    let mut headers = Vec::new();
    for name in signed.split(';') {
        let value = seen
            .header(name)
            .ok_or(format!("signed header {name} missing"))?;
        headers.push((name.to_owned(), value.to_owned()));
    }
    let req = sign::SigningRequest {
        method: seen.method.as_str(),
        path: &seen.path,
        query: &seen.query,
        headers: &headers,
        body: &seen.body,
    };
    let expected = sign::authorization(AK, SK, &req).ok_or("cannot sign")?;
    if expected != auth {
        return Err(format!("signature mismatch: got {auth}, want {expected}"));
    }
    Ok(())
}

async fn handle(
    State(mock): State<Arc<Mock>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seen = Seen {
        method,
        path: uri.path().to_owned(),
        query: decode_query(uri.query()),
        headers,
        body,
    };
    let earlier = {
        let mut all = mock.seen.lock().unwrap();
        let n = all
            .iter()
            .filter(|s| s.method == seen.method && s.path == seen.path)
            .count();
        all.push(seen.clone());
        n
    };
    let unauthorized = |why: String| {
        mock.auth_failures.fetch_add(1, Ordering::SeqCst);
        let body = json!({"error_code": "APIGW.0301", "error_msg": why, "request_id": "r-401"});
        (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
    };
    let is_iam = seen.path.starts_with("/iam/");
    match &mock.auth {
        AuthMode::AkSk => {
            if let Err(why) = verify_signature(&seen) {
                return unauthorized(why);
            }
        }
        AuthMode::Token(valid) if !is_iam => {
            if seen.header("authorization").is_some() {
                return unauthorized("token mode must not sign".into());
            }
            let valid = valid.lock().unwrap().clone();
            if seen.header("x-auth-token") != Some(valid.as_str()) {
                return unauthorized("token rejected".into());
            }
        }
        AuthMode::Token(_) => {}
    }
    if !is_iam && seen.header("x-project-id") != Some(PROJECT) {
        return (StatusCode::BAD_REQUEST, "missing X-Project-Id").into_response();
    }
    let a = (mock.responder)(&seen, earlier);
    if !a.delay.is_zero() {
        tokio::time::sleep(a.delay).await;
    }
    let mut response =
        (StatusCode::from_u16(a.status).unwrap(), axum::Json(a.body)).into_response();
    for (name, value) in a.headers {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_str(&value).unwrap());
    }
    response
}

struct Cloud {
    mock: Arc<Mock>,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Cloud {
    async fn start(
        auth: AuthMode,
        responder: impl Fn(&Seen, usize) -> Answer + Send + Sync + 'static,
    ) -> Cloud {
        let mock = Arc::new(Mock {
            auth,
            responder: Box::new(responder),
            seen: Mutex::new(Vec::new()),
            auth_failures: AtomicUsize::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(handle).with_state(mock.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Cloud { mock, addr, server }
    }

    fn config(&self) -> CloudConfig {
        let mut c = CloudConfig::new(PROJECT, "test-region-1");
        c.evs_endpoint = Some(format!("http://{}/evs", self.addr));
        c.ecs_endpoint = Some(format!("http://{}/ecs/", self.addr));
        c.iam_endpoint = Some(format!("http://{}/iam", self.addr));
        c.allow_insecure_http = true;
        c.retry_base = Duration::from_millis(1);
        c.retry_cap = Duration::from_millis(5);
        c.max_retries = 3;
        c.request_timeout = Duration::from_secs(5);
        c.job_poll_initial = Duration::from_millis(10);
        c.job_poll_max = Duration::from_millis(40);
        c
    }

    fn aksk_client(&self) -> EvsClient {
        self.aksk_client_with(self.config())
    }

    fn aksk_client_with(&self, config: CloudConfig) -> EvsClient {
        let creds = Credentials::AkSk {
            access_key: AK.into(),
            secret_key: SK.into(),
            security_token: None,
        };
        EvsClient::new(config, creds).unwrap()
    }
}

/// IAM's answer to a password token request: `token`, valid for a day.
fn token_issued(token: String) -> Answer {
    let expires = (chrono::Utc::now() + chrono::Duration::hours(24)).to_rfc3339();
    Answer {
        headers: vec![("x-subject-token", token)],
        ..answer(
            201,
            json!({"token": {"expires_at": expires, "methods": ["password"]}}),
        )
    }
}

fn volume_json(id: &str, status: &str) -> Value {
    json!({"id": id, "name": format!("pvc-{id}"), "status": status, "size": 10,
           "volume_type": "SSD", "availability_zone": "az1", "multiattach": false,
           "metadata": {}, "attachments": [], "created_at": "2016-05-25T02:38:40.392463"})
}

fn evs_error(status: u16, code: &str) -> Answer {
    answer(
        status,
        json!({"error": {"code": code, "message": format!("{code} happened")}}),
    )
}

#[tokio::test]
async fn aksk_signed_get_volume() {
    let cloud = Cloud::start(AuthMode::AkSk, |s, _| match s.path.as_str() {
        "/evs/v2/p1/cloudvolumes/v-1" => {
            answer(200, json!({"volume": volume_json("v-1", "in-use")}))
        }
        _ => answer(
            404,
            json!({"itemNotFound": {"message": "no such path", "code": 404}}),
        ),
    })
    .await;
    let client = cloud.aksk_client();
    let v = client.get_volume("v-1").await.unwrap().unwrap();
    assert_eq!(v.status, VolumeStatus::InUse);
    assert_eq!(v.size, 10);

    let seen = cloud.mock.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(cloud.mock.auth_failures.load(Ordering::SeqCst), 0);
    let auth = seen[0].header("authorization").unwrap();
    assert!(
        auth.starts_with(&format!(
            "SDK-HMAC-SHA256 Access={AK}, SignedHeaders=host;x-project-id;x-sdk-date, Signature="
        )),
        "{auth}"
    );
    for s in &seen {
        for (_, v) in s.headers.iter() {
            assert!(
                !v.to_str().unwrap_or_default().contains(SK),
                "secret key on the wire"
            );
        }
    }
}

#[tokio::test]
async fn list_volumes_signs_escaped_query_and_pages() {
    let cloud = Cloud::start(AuthMode::AkSk, |_, _| {
        answer(
            200,
            json!({"volumes": [volume_json("a", "available"), volume_json("b", "available")],
                   "count": 5,
                   "volumes_links": [{"href": "http://x/v2/p1/cloudvolumes/detail?limit=2&marker=b", "rel": "next"}]}),
        )
    })
    .await;
    let filter = VolumeFilter {
        name: Some("pvc with space".into()),
        metadata: BTreeMap::from([("everest.io/owner".into(), "c 1".into())]),
        ids: vec!["a".into(), "b".into()],
        limit: Some(2),
        ..Default::default()
    };
    let page = cloud.aksk_client().list_volumes(&filter).await.unwrap();
    assert_eq!(page.volumes.len(), 2);
    assert_eq!(page.count, Some(5));
    assert_eq!(page.next_marker.as_deref(), Some("b"));
    assert_eq!(cloud.mock.auth_failures.load(Ordering::SeqCst), 0);
    let seen = &cloud.mock.seen()[0];
    assert_eq!(seen.path, "/evs/v2/p1/cloudvolumes/detail");
    assert_eq!(seen.query("ids"), Some("['a','b']"));
    assert_eq!(seen.query("name"), Some("pvc with space"));
    assert_eq!(
        seen.query("metadata"),
        Some(r#"{"everest.io/owner":"c 1"}"#)
    );
}

#[tokio::test]
async fn retries_throttling_and_server_errors_then_succeeds() {
    let cloud = Cloud::start(AuthMode::AkSk, |_, n| match n {
        0 => answer(
            429,
            json!({"error_code": "APIGW.0308", "error_msg": "throttled", "request_id": "r1"}),
        ),
        1 => evs_error(500, "EVS.5500"),
        2 => evs_error(503, "EVS.5503"),
        _ => answer(200, json!({"volume": volume_json("v-1", "available")})),
    })
    .await;
    let v = cloud.aksk_client().get_volume("v-1").await.unwrap();
    assert!(v.is_some());
    assert_eq!(
        cloud.mock.count(Method::GET, "/evs/v2/p1/cloudvolumes/v-1"),
        4
    );
    // Every attempt is signed afresh, so every one passed verification.
    assert_eq!(cloud.mock.auth_failures.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn gives_up_after_max_retries() {
    let cloud = Cloud::start(AuthMode::AkSk, |_, _| evs_error(500, "EVS.5500")).await;
    let mut config = cloud.config();
    config.max_retries = 2;
    let err = cloud
        .aksk_client_with(config)
        .get_volume("v-1")
        .await
        .unwrap_err();
    assert!(err.is_retryable());
    assert_eq!(err.class(), ErrorClass::Unavailable);
    assert_eq!(err.code(), Some("EVS.5500"));
    assert_eq!(cloud.mock.seen().len(), 3);
}

#[tokio::test]
async fn no_retry_on_validation_error() {
    let cloud = Cloud::start(AuthMode::AkSk, |_, _| evs_error(400, "EVS.1034")).await;
    let spec = CreateVolume {
        availability_zone: "az1".into(),
        volume_type: "SSD".into(),
        name: "pvc-1".into(),
        size: 10,
        ..Default::default()
    };
    let err = cloud
        .aksk_client()
        .create_volume(&spec, None)
        .await
        .unwrap_err();
    assert!(!err.is_retryable());
    assert_eq!(err.class(), ErrorClass::ResourceExhausted);
    match &err {
        Error::Api { api, operation, .. } => {
            assert_eq!(api.http_status, 400);
            assert_eq!(api.code, "EVS.1034");
            assert_eq!(*operation, "create_volume");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(cloud.mock.seen().len(), 1);
}

#[tokio::test]
async fn timeouts_are_retried_then_reported() {
    let cloud = Cloud::start(AuthMode::AkSk, |_, _| Answer {
        delay: Duration::from_millis(500),
        ..answer(200, json!({"volume": volume_json("v", "available")}))
    })
    .await;
    let mut config = cloud.config();
    config.request_timeout = Duration::from_millis(50);
    config.max_retries = 1;
    let err = cloud
        .aksk_client_with(config)
        .get_volume("v")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transport {
                kind: TransportKind::Timeout,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.class(), ErrorClass::DeadlineExceeded);
    assert_eq!(cloud.mock.seen().len(), 2);
}

#[tokio::test]
async fn connection_refused_is_retryable_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut config = CloudConfig::new(PROJECT, "r");
    config.evs_endpoint = Some(format!("http://{addr}"));
    config.allow_insecure_http = true;
    config.max_retries = 1;
    config.retry_base = Duration::from_millis(1);
    config.retry_cap = Duration::from_millis(1);
    let creds = Credentials::AkSk {
        access_key: AK.into(),
        secret_key: SK.into(),
        security_token: None,
    };
    let err = EvsClient::new(config, creds)
        .unwrap()
        .get_volume("v")
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Unavailable);
    assert!(!err.to_string().contains(SK));
}

#[tokio::test]
async fn not_found_becomes_none() {
    let cloud = Cloud::start(AuthMode::AkSk, |s, _| {
        if s.path.contains("/detachvolume/") {
            evs_error(400, "Ecs.0111")
        } else {
            answer(
                404,
                json!({"itemNotFound": {"message": "volume gone", "code": 404}}),
            )
        }
    })
    .await;
    let client = cloud.aksk_client();
    assert_eq!(client.get_volume("gone").await.unwrap(), None);
    assert_eq!(client.delete_volume("gone").await.unwrap(), None);
    assert_eq!(client.detach_volume("s1", "gone").await.unwrap(), None);
    let seen = cloud.mock.seen();
    assert_eq!(seen.len(), 3, "404 must not be retried");
    assert_eq!(seen[2].method, Method::DELETE);
    assert_eq!(seen[2].path, "/ecs/v1/p1/cloudservers/s1/detachvolume/gone");
    assert_eq!(seen[2].query("delete_flag"), Some("0"));
}

#[tokio::test]
async fn create_volume_sends_body_and_client_token() {
    let cloud = Cloud::start(AuthMode::AkSk, |_, _| {
        answer(200, json!({"job_id": "job-1", "volume_ids": ["v-new"]}))
    })
    .await;
    let spec = CreateVolume {
        availability_zone: "az1".into(),
        volume_type: "GPSSD2".into(),
        name: "pvc-1".into(),
        size: 20,
        iops: Some(3000),
        throughput: Some(125),
        tags: BTreeMap::from([("cluster".into(), "c1".into())]),
        ..Default::default()
    };
    let token = "4f9b6b9a-1a6c-4b5e-9a3d-2f0f0e1d2c3b";
    let accepted = cloud
        .aksk_client()
        .create_volume(&spec, Some(token))
        .await
        .unwrap();
    assert_eq!(accepted.job_id, JobId("job-1".into()));
    assert_eq!(accepted.volume_ids, vec!["v-new".to_owned()]);
    let seen = &cloud.mock.seen()[0];
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.path, "/evs/v2.1/p1/cloudvolumes");
    assert_eq!(seen.header("x-client-token"), Some(token));
    assert!(
        seen.header("authorization")
            .unwrap()
            .contains("x-client-token")
    );
    assert_eq!(seen.header("content-type"), Some("application/json"));
    let body = seen.json();
    assert_eq!(body["volume"]["name"], "pvc-1");
    assert_eq!(body["volume"]["size"], 20);
    assert_eq!(body["volume"]["iops"], 3000);
    assert_eq!(body["volume"]["tags"]["cluster"], "c1");
    assert!(body.get("OS-SCH-HNT:scheduler_hints").is_none());
}

#[tokio::test]
async fn extend_attach_and_block_devices() {
    let cloud = Cloud::start(AuthMode::AkSk, |s, _| match s.path.as_str() {
        "/ecs/v1/p1/cloudservers/s1/block_device" => answer(
            200,
            json!({"volumeAttachments": [{"id": "v1", "serverId": "s1", "volumeId": "v1",
                   "device": "/dev/vdb", "bus": "virtio", "pciAddress": "0000:02:01.0", "size": 10}],
                   "attachableQuantity": {"free_scsi": 60, "free_blk": 20, "free_disk": 20}}),
        ),
        _ => answer(202, json!({"job_id": format!("job-for-{}", s.path)})),
    })
    .await;
    let client = cloud.aksk_client();
    client.extend_volume("v1", 30).await.unwrap();
    client.attach_volume("s1", "v1").await.unwrap();
    let devices = client.block_devices("s1").await.unwrap();
    assert_eq!(devices.attachable_quantity.unwrap().free_disk, 20);
    assert_eq!(
        devices.volume_attachments[0].device.as_deref(),
        Some("/dev/vdb")
    );
    let seen = cloud.mock.seen();
    assert_eq!(seen[0].path, "/evs/v2.1/p1/cloudvolumes/v1/action");
    assert_eq!(seen[0].json(), json!({"os-extend": {"new_size": 30}}));
    assert_eq!(seen[1].path, "/ecs/v1/p1/cloudservers/s1/attachvolume");
    assert_eq!(
        seen[1].json(),
        json!({"volumeAttachment": {"volumeId": "v1"}})
    );
}

fn job_json(status: &str) -> Value {
    json!({"job_id": "j1", "job_type": "createVolume", "status": status,
           "entities": {"volume_id": "v-new", "name": "pvc-1", "size": 10},
           "error_code": null, "fail_reason": null})
}

#[tokio::test]
async fn job_init_running_success() {
    let cloud = Cloud::start(AuthMode::AkSk, |_, n| match n {
        0 => answer(200, job_json("INIT")),
        1 => answer(200, job_json("RUNNING")),
        _ => answer(200, job_json("SUCCESS")),
    })
    .await;
    let started = Instant::now();
    let job = cloud
        .aksk_client()
        .wait_for_job(Service::Evs, &JobId("j1".into()), Duration::from_secs(10))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(job.volume_id(), Some("v-new"));
    assert_eq!(cloud.mock.count(Method::GET, "/evs/v1/p1/jobs/j1"), 3);
    // Two sleeps: 10 ms then 15 ms — far below the 2 s a fixed interval would take.
    assert!(took >= Duration::from_millis(25), "{took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[tokio::test]
async fn ecs_job_failure_carries_code_and_reason() {
    let cloud = Cloud::start(AuthMode::AkSk, |_, n| {
        if n == 0 {
            answer(
                200,
                json!({"job_id": "j2", "job_type": "attachVolume", "status": "RUNNING"}),
            )
        } else {
            answer(
                200,
                json!({"job_id": "j2", "job_type": "attachVolume", "status": "FAIL",
                       "error_code": "Ecs.0104", "fail_reason": "attach limit reached",
                       "entities": {"sub_jobs": []}}),
            )
        }
    })
    .await;
    let err = cloud
        .aksk_client()
        .wait_for_job(Service::Ecs, &JobId("j2".into()), Duration::from_secs(10))
        .await
        .unwrap_err();
    match &err {
        Error::JobFailed {
            error_code,
            fail_reason,
            job_type,
            ..
        } => {
            assert_eq!(error_code.as_deref(), Some("Ecs.0104"));
            assert_eq!(fail_reason.as_deref(), Some("attach limit reached"));
            assert_eq!(job_type, "attachVolume");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(err.class(), ErrorClass::ResourceExhausted);
    assert_eq!(cloud.mock.count(Method::GET, "/ecs/v1/p1/jobs/j2"), 2);
}

#[tokio::test]
async fn job_deadline_gives_timeout() {
    let cloud = Cloud::start(AuthMode::AkSk, |_, _| answer(200, job_json("RUNNING"))).await;
    let started = Instant::now();
    let err = cloud
        .aksk_client()
        .wait_for_job(
            Service::Evs,
            &JobId("j1".into()),
            Duration::from_millis(120),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::JobTimeout { .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::DeadlineExceeded);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(cloud.mock.seen().len() >= 3);
}

/// Polls that fail transiently (429, 5xx), even more often in a row than one request retries,
/// slow a wait on an accepted job but never end it.
#[tokio::test]
async fn a_job_wait_outlasts_polls_that_exhaust_their_retries() {
    // max_retries is 3: each get_job makes 4 attempts, so 10 failures in a row exhaust it twice.
    let cloud = Cloud::start(AuthMode::AkSk, |_, n| match n {
        0 => answer(200, job_json("RUNNING")),
        1..=10 if n % 2 == 0 => throttled(),
        1..=10 => evs_error(503, "EVS.5503"),
        11 => answer(200, job_json("RUNNING")),
        _ => answer(200, job_json("SUCCESS")),
    })
    .await;
    let job = cloud
        .aksk_client()
        .wait_for_job(Service::Evs, &JobId("j1".into()), Duration::from_secs(20))
        .await
        .expect("the wait outlasts failing polls");
    assert_eq!(job.volume_id(), Some("v-new"));
    assert_eq!(cloud.mock.count(Method::GET, "/evs/v1/p1/jobs/j1"), 13);
}

/// A poll the cloud refuses for good (the job is unknown) ends the wait at once with that error.
#[tokio::test]
async fn a_job_wait_ends_on_a_permanent_poll_error() {
    let cloud = Cloud::start(AuthMode::AkSk, |_, n| match n {
        0 => answer(200, job_json("RUNNING")),
        _ => evs_error(404, "Common.0011"),
    })
    .await;
    let err = cloud
        .aksk_client()
        .wait_for_job(Service::Evs, &JobId("j1".into()), Duration::from_secs(20))
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(cloud.mock.count(Method::GET, "/evs/v1/p1/jobs/j1"), 2);
}

/// Polls failing until the deadline: the wait ends at the deadline, not before and not much
/// after, and says that the job's state is unknown because the polls failed.
#[tokio::test]
async fn failing_polls_end_the_wait_only_at_the_deadline() {
    let cloud = Cloud::start(AuthMode::AkSk, |_, _| evs_error(500, "EVS.5500")).await;
    let started = Instant::now();
    let err = cloud
        .aksk_client()
        .wait_for_job(
            Service::Evs,
            &JobId("j1".into()),
            Duration::from_millis(400),
        )
        .await
        .unwrap_err();
    let took = started.elapsed();
    match &err {
        Error::JobTimeout { last_status, .. } => {
            assert!(last_status.contains("poll failed"), "{last_status}")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(err.class(), ErrorClass::DeadlineExceeded);
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // Several polls, each with its own retries: more than one request's worth of attempts.
    assert!(cloud.mock.seen().len() > 4, "{}", cloud.mock.seen().len());
}

/// The batched disk wait tolerates failing rounds the same way.
#[tokio::test]
async fn a_disk_wait_outlasts_failing_rounds() {
    let cloud = Cloud::start(AuthMode::AkSk, |s, n| {
        if n < 9 {
            return evs_error(500, "EVS.5500");
        }
        let id = s
            .query("ids")
            .unwrap_or_default()
            .trim_matches(['[', ']', '\'']);
        answer(
            200,
            json!({"volumes": [volume_json(id, "available")], "count": 1}),
        )
    })
    .await;
    let done = cloud
        .aksk_client()
        .wait_for_volumes(
            "test",
            &["d1".to_owned()],
            |_, v| match v {
                Some(v) if v.status == VolumeStatus::Available => VolumeWait::Done,
                _ => VolumeWait::Pending,
            },
            Duration::from_secs(20),
        )
        .await
        .expect("the wait outlasts failing rounds");
    assert!(done["d1"].is_some());
}

fn throttled() -> Answer {
    Answer {
        headers: vec![("retry-after", "0".into())],
        ..answer(
            429,
            json!({"error_code": "APIGW.0308", "error_msg": "throttled", "request_id": "r"}),
        )
    }
}

#[tokio::test]
async fn wait_for_volumes_batches_sixty_ids_per_call() {
    // Round r (two list calls per round for 70 disks) shows every disk `creating` in round 0.
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let cloud = Cloud::start(AuthMode::AkSk, move |s, _| {
        let round = counter.fetch_add(1, Ordering::SeqCst) / 2;
        let raw = s.query("ids").unwrap_or_default();
        let ids: Vec<String> = raw
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|q| q.trim_matches('\'').to_owned())
            .filter(|id| id != "v-missing")
            .collect();
        let status = if round == 0 { "creating" } else { "available" };
        let vols: Vec<Value> = ids.iter().map(|id| volume_json(id, status)).collect();
        answer(200, json!({"volumes": vols, "count": ids.len()}))
    })
    .await;
    let ids: Vec<String> = (0..70).map(|i| format!("v-{i:02}")).collect();
    let done = cloud
        .aksk_client()
        .wait_for_volumes(
            "test",
            &ids,
            |_, v| match v {
                Some(v) if v.status == VolumeStatus::Available => VolumeWait::Done,
                Some(v) if v.status.is_error() => VolumeWait::Failed(v.status.to_string()),
                _ => VolumeWait::Pending,
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(done.len(), 70);
    assert!(
        done.values()
            .all(|v| v.as_ref().unwrap().status == VolumeStatus::Available)
    );
    let seen = cloud.mock.seen();
    assert_eq!(seen.len(), 4, "two rounds of two list calls");
    for s in &seen {
        assert_eq!(s.path, "/evs/v2/p1/cloudvolumes/detail");
        let n = s.query("ids").unwrap().matches(',').count() + 1;
        assert!(n <= 60, "{n} ids in one call");
    }

    // A disk that never appears keeps the wait pending until the deadline.
    let err = cloud
        .aksk_client()
        .wait_for_volumes(
            "test",
            &["v-missing".to_owned()],
            |_, v| {
                if v.is_some() {
                    VolumeWait::Done
                } else {
                    VolumeWait::Pending
                }
            },
            Duration::from_millis(60),
        )
        .await
        .unwrap_err();
    match err {
        Error::WaitTimeout { pending, .. } => assert_eq!(pending, vec!["v-missing".to_owned()]),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn token_auth_refreshes_once_on_401() {
    let issued = Arc::new(AtomicUsize::new(0));
    let issued_in_mock = issued.clone();
    let cloud = Cloud::start(AuthMode::Token(Mutex::new("tok-2".into())), move |s, _| {
        if s.path == "/iam/v3/auth/tokens" {
            let n = issued_in_mock.fetch_add(1, Ordering::SeqCst) + 1;
            token_issued(format!("tok-{n}"))
        } else {
            answer(200, json!({"volume": volume_json("v-1", "available")}))
        }
    })
    .await;
    let creds = Credentials::Password {
        domain: "acme".into(),
        user: "csi".into(),
        password: "pa55word-secret".into(),
    };
    let client = EvsClient::new(cloud.config(), creds).unwrap();
    assert!(!format!("{client:?}").contains("pa55word-secret"));

    // The first token (tok-1) is rejected; the client fetches tok-2 and retries once.
    assert!(client.get_volume("v-1").await.unwrap().is_some());
    assert_eq!(issued.load(Ordering::SeqCst), 2);
    // The refreshed token is cached: no third IAM call.
    assert!(client.clone().get_volume("v-1").await.unwrap().is_some());
    assert_eq!(issued.load(Ordering::SeqCst), 2);

    let seen = cloud.mock.seen();
    let iam = seen
        .iter()
        .find(|s| s.path == "/iam/v3/auth/tokens")
        .unwrap();
    let body = iam.json();
    assert_eq!(body["auth"]["identity"]["methods"], json!(["password"]));
    assert_eq!(body["auth"]["identity"]["password"]["user"]["name"], "csi");
    assert_eq!(
        body["auth"]["identity"]["password"]["user"]["domain"]["name"],
        "acme"
    );
    assert_eq!(body["auth"]["scope"]["project"]["id"], PROJECT);
    assert!(iam.header("x-auth-token").is_none());
    let evs: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.path.starts_with("/evs/"))
        .collect();
    assert_eq!(evs.len(), 3);
    assert_eq!(evs[0].header("x-auth-token"), Some("tok-1"));
    assert_eq!(evs[1].header("x-auth-token"), Some("tok-2"));
    assert_eq!(evs[2].header("x-auth-token"), Some("tok-2"));

    // A token that stays rejected surfaces as UNAUTHENTICATED after one refresh.
    *match &cloud.mock.auth {
        AuthMode::Token(t) => t.lock().unwrap(),
        AuthMode::AkSk => unreachable!(),
    } = "nobody-has-this".into();
    let err = client.get_volume("v-1").await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Unauthenticated);
    assert_eq!(issued.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn instance_metadata() {
    // The metadata service is unauthenticated, so it gets its own tiny server.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route(
        "/openstack/latest/meta_data.json",
        axum::routing::get(|| async {
            axum::Json(
                json!({"uuid": "s-1", "availability_zone": "az1", "project_id": "p1",
                              "name": "node-1", "hostname": "node-1", "meta": {}}),
            )
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let url = format!("http://{addr}/openstack/latest/meta_data.json");
    let meta = fetch_instance_metadata(&url, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(meta.uuid, "s-1");
    assert_eq!(meta.availability_zone, "az1");
    let missing = fetch_instance_metadata(&format!("http://{addr}/nope"), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(missing.is_not_found());
    server.abort();
}

/// Captures metric updates as `name{k=v,…}` lines.
#[derive(Default)]
struct CaptureRecorder {
    lines: Arc<Mutex<Vec<String>>>,
}

struct Sink {
    line: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl metrics::CounterFn for Sink {
    fn increment(&self, value: u64) {
        for _ in 0..value {
            self.lines.lock().unwrap().push(self.line.clone());
        }
    }
    fn absolute(&self, _value: u64) {}
}

impl metrics::HistogramFn for Sink {
    fn record(&self, value: f64) {
        assert!(value >= 0.0);
        self.lines.lock().unwrap().push(self.line.clone());
    }
}

impl CaptureRecorder {
    fn sink(&self, key: &metrics::Key) -> Arc<Sink> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        Arc::new(Sink {
            line: format!("{}{{{}}}", key.name(), labels.join(",")),
            lines: self.lines.clone(),
        })
    }
}

impl metrics::Recorder for CaptureRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.sink(key))
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::from_arc(self.sink(key))
    }
}

/// Runs `work` on a current-thread runtime with `recorder` installed (the local recorder is per
/// thread) and returns the captured lines.
fn capture_metrics<F: std::future::Future<Output = ()>>(work: F) -> Vec<String> {
    let recorder = CaptureRecorder::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || runtime.block_on(work));
    recorder.lines.lock().unwrap().clone()
}

fn throttled_once(_: &Seen, n: usize) -> Answer {
    match n {
        0 => answer(
            429,
            json!({"error_code": "APIGW.0308", "error_msg": "slow down"}),
        ),
        _ => answer(200, json!({"volume": volume_json("v-1", "available")})),
    }
}

#[test]
fn metrics_count_requests_retries_and_latency() {
    let lines = capture_metrics(async {
        let cloud = Cloud::start(AuthMode::AkSk, throttled_once).await;
        let client = cloud.aksk_client().with_backend("evs-a");
        assert_eq!(client.backend(), "evs-a");
        // Clones keep the label.
        client.clone().get_volume("v-1").await.unwrap();
    });
    let count = |line: &str| lines.iter().filter(|l| *l == line).count();
    assert_eq!(
        count(
            "everest_cloud_api_requests_total{backend=evs-a,operation=get_volume,service=evs,status=429}"
        ),
        1,
        "{lines:#?}"
    );
    assert_eq!(
        count(
            "everest_cloud_api_requests_total{backend=evs-a,operation=get_volume,service=evs,status=200}"
        ),
        1
    );
    assert_eq!(
        count(
            "everest_cloud_api_retries_total{backend=evs-a,operation=get_volume,reason=throttled,service=evs}"
        ),
        1
    );
    assert_eq!(
        count(
            "everest_cloud_api_request_duration_seconds{backend=evs-a,operation=get_volume,service=evs}"
        ),
        2
    );
    assert_eq!(lines.len(), 5, "{lines:#?}");
}

#[test]
fn metrics_of_an_unnamed_client_and_of_the_iam_call_carry_a_backend() {
    let lines = capture_metrics(async {
        let cloud = Cloud::start(AuthMode::AkSk, throttled_once).await;
        cloud.aksk_client().get_volume("v-1").await.unwrap();
        // The token request is counted under the instance whose call needed it.
        let cloud = Cloud::start(AuthMode::Token(Mutex::new("tok-1".into())), |s, _| {
            if s.path == "/iam/v3/auth/tokens" {
                token_issued("tok-1".into())
            } else {
                answer(200, json!({"volume": volume_json("v-1", "available")}))
            }
        })
        .await;
        let creds = Credentials::Password {
            domain: "acme".into(),
            user: "csi".into(),
            password: "pw".into(),
        };
        let client = EvsClient::new(cloud.config(), creds)
            .unwrap()
            .with_backend("evs-b");
        client.get_volume("v-1").await.unwrap();
    });
    let count = |line: &str| lines.iter().filter(|l| *l == line).count();
    assert_eq!(
        count(
            "everest_cloud_api_requests_total{backend=none,operation=get_volume,service=evs,status=200}"
        ),
        1,
        "{lines:#?}"
    );
    assert_eq!(
        count(
            "everest_cloud_api_requests_total{backend=evs-b,operation=create_token,service=iam,status=201}"
        ),
        1,
        "{lines:#?}"
    );
    assert_eq!(
        count(
            "everest_cloud_api_requests_total{backend=evs-b,operation=get_volume,service=evs,status=200}"
        ),
        1
    );
}

/// The daemon builds its clients through `controller_from_config`: their calls carry the
/// instance name.
#[test]
fn controller_from_config_labels_the_client_with_the_instance_name() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("evs.json");
    std::fs::write(
        &credentials,
        format!(r#"{{"access_key":"{AK}","secret_key":"{SK}"}}"#),
    )
    .unwrap();
    std::fs::set_permissions(
        &credentials,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let lines = capture_metrics(async move {
        let cloud = Cloud::start(AuthMode::AkSk, |_, _| {
            answer(200, json!({"volumes": [], "count": 0}))
        })
        .await;
        let table = json!({
            "project_id": PROJECT, "region": "test-region-1",
            "evs_endpoint": format!("http://{}/evs", cloud.addr),
            "ecs_endpoint": format!("http://{}/ecs", cloud.addr),
            "iam_endpoint": format!("http://{}/iam", cloud.addr),
            "allow_insecure_http": true,
            "credentials_file": credentials,
        });
        let name = everest_backend::BackendName::new("evs-default").unwrap();
        let controller =
            everest_evs::controller_from_config(&name, table.as_object().unwrap()).unwrap();
        controller.probe().await.unwrap();
    });
    assert!(
        lines.contains(
            &"everest_cloud_api_requests_total{backend=evs-default,operation=list_volumes,service=evs,status=200}"
                .to_owned()
        ),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn snapshot_calls_have_the_documented_shapes_and_page_by_offset() {
    use everest_evs::api::{CreateSnapshot, SnapshotFilter, SnapshotStatus};
    let snap = |id: &str, status: &str| {
        json!({"id": id, "name": "s", "status": status, "size": 10, "volume_id": "d1",
               "metadata": {"k": "v"}, "created_at": "2016-05-25T02:42:10.856332"})
    };
    let cloud = Cloud::start(AuthMode::AkSk, move |seen, _| {
        match (seen.method.as_str(), seen.path.as_str()) {
            ("POST", "/evs/v2/p1/cloudsnapshots") => {
                answer(202, json!({"snapshot": snap("s1", "creating")}))
            }
            ("GET", "/evs/v2/p1/cloudsnapshots/detail") => answer(
                200,
                json!({"snapshots": [snap("s1", "available"), snap("s2", "available")], "count": 3}),
            ),
            ("GET", "/evs/v2/p1/cloudsnapshots/s1") => {
                answer(200, json!({"snapshot": snap("s1", "available")}))
            }
            ("DELETE", "/evs/v2/p1/cloudsnapshots/s1") => answer(202, Value::Null),
            _ => answer(
                404,
                json!({"itemNotFound": {"message": "Snapshot could not be found.", "code": "EVS.5404"}}),
            ),
        }
    })
    .await;
    let c = cloud.aksk_client();
    let made = c
        .create_snapshot(&CreateSnapshot {
            volume_id: "d1".into(),
            name: "s".into(),
            force: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(made.status, SnapshotStatus::Creating);
    let body = cloud.mock.seen()[0].json();
    assert_eq!(
        body,
        json!({"snapshot": {"volume_id": "d1", "name": "s", "force": true}})
    );
    let page = c
        .list_snapshots(&SnapshotFilter {
            volume_id: Some("d1".into()),
            limit: Some(2),
            offset: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((page.snapshots.len(), page.count), (2, Some(3)));
    let seen = &cloud.mock.seen()[1];
    assert_eq!(
        (
            seen.query("volume_id"),
            seen.query("limit"),
            seen.query("offset")
        ),
        (Some("d1"), Some("2"), Some("2"))
    );
    let got = c.get_snapshot("s1").await.unwrap().unwrap();
    assert_eq!((got.size, got.volume_id.as_str()), (10, "d1"));
    assert!(got.created_at.is_some());
    assert_eq!(c.get_snapshot("gone").await.unwrap(), None);
    assert!(c.delete_snapshot("s1").await.unwrap());
    assert!(!c.delete_snapshot("gone").await.unwrap());
}

#[tokio::test]
async fn retype_and_qos_have_the_documented_paths_and_bodies() {
    let cloud = Cloud::start(AuthMode::AkSk, |_, _| answer(202, json!({"job_id": "j1"}))).await;
    let c = cloud.aksk_client();
    assert_eq!(
        c.retype_volume("d1", "GPSSD2", Some(3000), Some(125))
            .await
            .unwrap(),
        JobId("j1".into())
    );
    c.modify_qos("d1", 6000, None).await.unwrap();
    let seen = cloud.mock.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/evs/v2/p1/volumes/d1/retype")
    );
    assert_eq!(
        seen[0].json(),
        json!({"os-retype": {"new_type": "GPSSD2", "iops": 3000, "throughput": 125}})
    );
    assert_eq!(
        (seen[1].method.as_str(), seen[1].path.as_str()),
        ("PUT", "/evs/v5/p1/cloudvolumes/d1/qos")
    );
    assert_eq!(seen[1].json(), json!({"qos_modify": {"iops": 6000}}));
}

/// A 429 holds back every call of the instance, not only the one that got it; and calls draw
/// from the instance's token bucket.
#[tokio::test]
async fn a_429_slows_every_call_of_the_instance() {
    let cloud = Cloud::start(AuthMode::AkSk, |_, n| match n {
        0 => Answer {
            headers: vec![("retry-after", "1".into())],
            ..answer(
                429,
                json!({"error_code": "APIGW.0308", "error_msg": "throttled", "request_id": "r"}),
            )
        },
        _ => answer(200, json!({"volumes": [], "count": 0})),
    })
    .await;
    let mut config = cloud.config();
    config.retry_cap = Duration::from_secs(2);
    let client = cloud.aksk_client_with(config);
    let started = Instant::now();
    let all = VolumeFilter::default();
    let throttled = client.list_volumes(&all);
    let other = async {
        // Sent well after the 429 came back, by another RPC of the same instance.
        tokio::time::sleep(Duration::from_millis(200)).await;
        client
            .list_volumes(&VolumeFilter {
                name: Some("other".into()),
                ..VolumeFilter::default()
            })
            .await
            .unwrap();
        started.elapsed()
    };
    let (first, other_done) = tokio::join!(throttled, other);
    first.unwrap();
    assert!(
        other_done >= Duration::from_millis(900),
        "the other call went during the pause: {other_done:?}"
    );

    // 5 calls a second, 2 at once: the fifth of five goes after about 600 ms.
    let cloud = Cloud::start(AuthMode::AkSk, |_, _| {
        answer(200, json!({"volumes": [], "count": 0}))
    })
    .await;
    let mut config = cloud.config();
    config.rate_limit_per_second = 5;
    config.rate_limit_burst = 2;
    let client = cloud.aksk_client_with(config);
    let started = Instant::now();
    for _ in 0..5 {
        client.list_volumes(&VolumeFilter::default()).await.unwrap();
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(550), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}
