//! SFS Turbo: create, show, list, expand and delete shares. Each share is a directory under the
//! export root, so an NFS server exporting that root makes every share a real NFS export.
//!
//! Operations are asynchronous as in the real service, but without a job API: clients poll
//! `status` (`100` → `200`) and `sub_status` (`121` → `221`) of the share itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cloud::Cloud;
use crate::errors::ApiError;
use crate::state::{Share, ShareOp};

/// Share types sold (the classic ones, whose sizes are 500–32768 GiB).
pub const SHARE_TYPES: &[&str] = &["STANDARD", "PERFORMANCE"];
/// Smallest share, GiB.
pub const MIN_SIZE: u64 = 500;
/// Largest share, GiB.
pub const MAX_SIZE: u64 = 32768;
/// Smallest growth of one expansion, GiB.
pub const MIN_EXTEND_STEP: u64 = 100;

/// Status codes (strings on the wire).
pub mod status {
    /// Creating.
    pub const CREATING: &str = "100";
    /// Available (mountable).
    pub const AVAILABLE: &str = "200";
    /// Creation failed.
    pub const CREATE_FAILED: &str = "303";
    /// Sub-status: expanding.
    pub const EXPANDING: &str = "121";
    /// Sub-status: expanded.
    pub const EXPANDED: &str = "221";
}

pub(crate) fn param_error(message: impl Into<String>) -> ApiError {
    ApiError::sfs(StatusCode::BAD_REQUEST, "SFS.TURBO.0001", message)
}

pub(crate) fn not_found(id: &str) -> ApiError {
    ApiError::sfs(
        StatusCode::NOT_FOUND,
        "SFS.TURBO.0002",
        format!("share {id} not exist"),
    )
}

fn busy(id: &str, what: &str) -> ApiError {
    ApiError::sfs(
        StatusCode::BAD_REQUEST,
        "SFS.TURBO.0011",
        format!("share {id} is {what}; wait until that operation is complete and try again"),
    )
}

fn invalid_size(message: impl Into<String>) -> ApiError {
    ApiError::sfs(StatusCode::BAD_REQUEST, "SFS.TURBO.0008", message)
}

/// Rejects a project this cloud does not know.
pub(crate) fn check_project(cloud: &Cloud, project: &str) -> Result<(), ApiError> {
    if project == cloud.cfg.project_id {
        Ok(())
    } else {
        Err(param_error(format!("project {project} is not known")))
    }
}

#[derive(Debug, Deserialize)]
struct CreateBody {
    share: CreateShare,
}

/// The `share` object of a create request (unknown fields are ignored).
#[derive(Debug, Deserialize)]
struct CreateShare {
    name: Option<String>,
    description: Option<String>,
    share_proto: Option<String>,
    share_type: Option<String>,
    size: Option<u64>,
    availability_zone: Option<String>,
    vpc_id: Option<String>,
    subnet_id: Option<String>,
    security_group_id: Option<String>,
    metadata: Option<BTreeMap<String, String>>,
}

/// 4–64 characters, a letter first, then letters, digits, `-` and `_`.
fn valid_name(name: &str) -> bool {
    let len = name.chars().count();
    (4..=64).contains(&len)
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn required<'a>(value: &'a Option<String>, field: &str) -> Result<&'a str, ApiError> {
    value
        .as_deref()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| param_error(format!("{field} is required")))
}

fn validate(cloud: &Cloud, s: &CreateShare) -> Result<(), ApiError> {
    let name = required(&s.name, "name")?;
    if !valid_name(name) {
        return Err(ApiError::sfs(
            StatusCode::BAD_REQUEST,
            "SFS.TURBO.0003",
            format!(
                "invalid name {name:?}: 4-64 characters, a letter first, then letters, digits, - and _"
            ),
        ));
    }
    if required(&s.share_proto, "share_proto")? != "NFS" {
        return Err(param_error("share_proto must be NFS"));
    }
    let share_type = required(&s.share_type, "share_type")?;
    if !SHARE_TYPES.contains(&share_type) {
        return Err(ApiError::sfs(
            StatusCode::BAD_REQUEST,
            "SFS.TURBO.0007",
            format!(
                "invalid share type {share_type}; one of {}",
                SHARE_TYPES.join(", ")
            ),
        ));
    }
    match s.size {
        Some(size) if (MIN_SIZE..=MAX_SIZE).contains(&size) => {}
        Some(size) => {
            return Err(invalid_size(format!(
                "invalid size {size}: {MIN_SIZE}-{MAX_SIZE} GiB"
            )));
        }
        None => return Err(invalid_size("size is required")),
    }
    let zone = required(&s.availability_zone, "availability_zone")?;
    if !cloud.cfg.zones().iter().any(|z| z == zone) {
        return Err(param_error(format!("invalid availability_zone {zone}")));
    }
    required(&s.vpc_id, "vpc_id").map_err(|_| {
        ApiError::sfs(
            StatusCode::BAD_REQUEST,
            "SFS.TURBO.0004",
            "invalid vpc: vpc_id is required",
        )
    })?;
    required(&s.subnet_id, "subnet_id").map_err(|_| {
        ApiError::sfs(
            StatusCode::BAD_REQUEST,
            "SFS.TURBO.0006",
            "invalid subnet: subnet_id is required",
        )
    })?;
    required(&s.security_group_id, "security_group_id")?;
    Ok(())
}

/// Accepts a share (status `100`); the caller starts its completion with [`start`].
pub fn create_share(cloud: &Cloud, project: &str, body: &[u8]) -> Result<Share, ApiError> {
    check_project(cloud, project)?;
    let req: CreateBody = serde_json::from_slice(body)
        .map_err(|e| param_error(format!("invalid request body: {e}")))?;
    validate(cloud, &req.share)?;
    let s = req.share;
    let name = s.name.unwrap_or_default();
    let mut inner = cloud.lock();
    let mine = || {
        inner
            .state
            .shares
            .values()
            .filter(|x| x.project_id == project)
    };
    if mine().any(|x| x.name == name) {
        return Err(ApiError::sfs(
            StatusCode::CONFLICT,
            "SFS.TURBO.0009",
            format!("name {name} has existed"),
        ));
    }
    if let Some(max) = cloud.cfg.max_shares
        && mine().count() >= max
    {
        return Err(ApiError::sfs(
            StatusCode::BAD_REQUEST,
            "SFS.TURBO.0010",
            format!("quota exceeds: the project may hold {max} shares"),
        ));
    }
    let seq = inner.state.next_seq;
    inner.state.next_seq += 1;
    let share = Share {
        id: uuid::Uuid::new_v4().to_string(),
        project_id: project.to_string(),
        seq,
        name,
        description: s.description.unwrap_or_default(),
        size: s.size.unwrap_or(MIN_SIZE),
        share_proto: s.share_proto.unwrap_or_default(),
        share_type: s.share_type.unwrap_or_default(),
        availability_zone: s.availability_zone.unwrap_or_default(),
        vpc_id: s.vpc_id.unwrap_or_default(),
        subnet_id: s.subnet_id.unwrap_or_default(),
        security_group_id: s.security_group_id.unwrap_or_default(),
        metadata: s.metadata.unwrap_or_default(),
        tags: BTreeMap::new(),
        status: status::CREATING.to_string(),
        sub_status: None,
        pending: Some(ShareOp::Create),
        created_at: Utc::now(),
    };
    inner.state.shares.insert(share.id.clone(), share.clone());
    cloud.commit(&mut inner)?;
    Ok(share)
}

/// Starts deleting a share. Returns whether a deletion was started (`false`: one already runs).
pub fn delete_share(cloud: &Cloud, project: &str, id: &str) -> Result<bool, ApiError> {
    check_project(cloud, project)?;
    let mut inner = cloud.lock();
    let share = inner
        .state
        .project_share_mut(project, id)
        .ok_or_else(|| not_found(id))?;
    match share.pending {
        // A repeated delete is accepted again, as a retried request must be.
        Some(ShareOp::Delete) => return Ok(false),
        Some(ShareOp::Create) => return Err(busy(id, "being created")),
        Some(ShareOp::Extend { .. }) => return Err(busy(id, "being expanded")),
        None => {}
    }
    share.pending = Some(ShareOp::Delete);
    cloud.commit(&mut inner)?;
    Ok(true)
}

#[derive(Debug, Deserialize)]
struct ActionBody {
    extend: Option<ExtendBody>,
}

#[derive(Debug, Deserialize)]
struct ExtendBody {
    new_size: u64,
}

/// Starts expanding a share (sub_status `121`); returns it.
pub fn extend_share(
    cloud: &Cloud,
    project: &str,
    id: &str,
    body: &[u8],
) -> Result<Share, ApiError> {
    check_project(cloud, project)?;
    let req: ActionBody = serde_json::from_slice(body)
        .map_err(|e| param_error(format!("invalid request body: {e}")))?;
    let new_size = req
        .extend
        .ok_or_else(|| param_error("only the extend action is supported"))?
        .new_size;
    let mut inner = cloud.lock();
    let share = inner
        .state
        .project_share_mut(project, id)
        .ok_or_else(|| not_found(id))?;
    match share.pending {
        Some(ShareOp::Create) => return Err(busy(id, "being created")),
        Some(ShareOp::Extend { .. }) => return Err(busy(id, "being expanded")),
        Some(ShareOp::Delete) => return Err(busy(id, "being deleted")),
        None => {}
    }
    if share.status != status::AVAILABLE {
        return Err(busy(id, &format!("in status {}", share.status)));
    }
    if new_size < share.size + MIN_EXTEND_STEP {
        return Err(invalid_size(format!(
            "new size {new_size} must exceed the current {} GiB by at least {MIN_EXTEND_STEP} GiB",
            share.size
        )));
    }
    if new_size > MAX_SIZE {
        return Err(invalid_size(format!(
            "new size {new_size} is over {MAX_SIZE} GiB"
        )));
    }
    share.pending = Some(ShareOp::Extend { new_size });
    share.sub_status = Some(status::EXPANDING.to_string());
    let share = share.clone();
    cloud.commit(&mut inner)?;
    Ok(share)
}

/// Completes the share's pending operation after the job latency, off the async workers.
pub fn start(cloud: Arc<Cloud>, id: String) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(cloud.cfg.job_latency_ms)).await;
        let c = cloud.clone();
        let share_id = id.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || complete(&c, &share_id)).await {
            tracing::error!(share_id = %id, error = %e, "share completion panicked");
        }
    });
}

/// Restarts the completion of every share operation in flight when the emulator stopped.
pub fn resume_all(cloud: &Arc<Cloud>) {
    let pending: Vec<String> = cloud
        .lock()
        .state
        .shares
        .values()
        .filter(|s| s.pending.is_some())
        .map(|s| s.id.clone())
        .collect();
    for id in pending {
        tracing::info!(share_id = %id, "resuming share operation left in flight");
        start(cloud.clone(), id);
    }
}

/// Finishes a share's pending operation: its effect on the host, then its next status.
pub fn complete(cloud: &Cloud, id: &str) {
    let fail_rate = cloud
        .faults
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .share_create_fail_rate;
    let mut inner = cloud.lock();
    if inner.shutting_down {
        return;
    }
    let Some(share) = inner.state.shares.get(id).cloned() else {
        return;
    };
    let dir = cloud.share_dir(id);
    let fx = &cloud.effects;
    match share.pending {
        None => return,
        Some(ShareOp::Create) => {
            let failed = fail_rate > 0.0 && rand::random::<f64>() < fail_rate;
            let made = if failed {
                Err("injected fault".to_string())
            } else {
                fx.create_share_dir(&dir).map_err(|e| e.to_string())
            };
            let s = inner.state.shares.get_mut(id).expect("share read above");
            s.pending = None;
            match made {
                Ok(()) => s.status = status::AVAILABLE.to_string(),
                Err(reason) => {
                    tracing::warn!(share_id = %id, %reason, "share creation failed");
                    s.status = status::CREATE_FAILED.to_string();
                }
            }
        }
        Some(ShareOp::Extend { new_size }) => {
            // A directory has no size of its own: only the API's view grows.
            let s = inner.state.shares.get_mut(id).expect("share read above");
            s.pending = None;
            s.size = new_size;
            s.sub_status = Some(status::EXPANDED.to_string());
        }
        Some(ShareOp::Delete) => match fx.remove_share_dir(&dir) {
            Ok(()) => {
                inner.state.shares.remove(id);
            }
            Err(e) => {
                // Left pending: a restart retries, and the share stays visible meanwhile.
                tracing::error!(share_id = %id, error = %e, "cannot remove share directory");
                return;
            }
        },
    }
    if let Err(e) = cloud.commit(&mut inner) {
        tracing::error!(share_id = %id, error = %e, "cannot persist share completion");
    }
}

/// SFS Turbo's time form (UTC, seconds, no zone).
fn share_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// GiB as SFS Turbo writes sizes: a string with two decimals.
fn gib(size: u64) -> String {
    format!("{size}.00")
}

/// The API view of a share (unwrapped, as `GET` and the list entries show it).
pub fn view(cloud: &Cloud, share: &Share) -> Value {
    let mut v = json!({
        "id": share.id,
        "name": share.name,
        "status": share.status,
        "size": gib(share.size),
        // Not measured: a directory has no capacity of its own.
        "avail_capacity": gib(share.size),
        "export_location": cloud.cfg.export_location(&share.id),
        "share_proto": share.share_proto,
        "share_type": share.share_type,
        "availability_zone": share.availability_zone,
        "az_name": share.availability_zone,
        "region": cloud.cfg.region,
        "vpc_id": share.vpc_id,
        "subnet_id": share.subnet_id,
        "security_group_id": share.security_group_id,
        "pay_model": "0",
        "enterprise_project_id": "0",
        "version": "1.0.0",
        "tags": [],
        "created_at": share_time(share.created_at),
    });
    // Set at creation through metadata; absent otherwise.
    for key in ["crypt_key_id", "expand_type"] {
        if let Some(value) = share.metadata.get(key) {
            v[key] = json!(value);
        }
    }
    if let Some(sub) = &share.sub_status {
        v["sub_status"] = json!(sub);
    }
    if share.status == status::CREATING {
        v["action_progress"] = json!({"CREATING": "50%"});
    }
    v
}

/// `POST /v1/{p}/sfs-turbo/shares` → 202 `{"id","name","status"}`.
pub async fn create_handler(
    State(cloud): State<Arc<Cloud>>,
    Path(project): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let share = create_share(&cloud, &project, &body)?;
    start(cloud.clone(), share.id.clone());
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": share.id, "name": share.name, "status": share.status})),
    ))
}

/// `GET /v1/{p}/sfs-turbo/shares/{id}`.
pub async fn get_handler(
    State(cloud): State<Arc<Cloud>>,
    Path((project, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    check_project(&cloud, &project)?;
    let inner = cloud.lock();
    let share = inner
        .state
        .project_share(&project, &id)
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(view(&cloud, share)))
}

fn number(query: &HashMap<String, String>, key: &str) -> Result<Option<usize>, ApiError> {
    query
        .get(key)
        .map(|v| {
            v.parse::<usize>()
                .map_err(|_| param_error(format!("invalid {key} {v:?}")))
        })
        .transpose()
}

/// The shares of a project in creation order, paged by `limit` (≥ 1) and `offset`.
pub fn list_shares(
    cloud: &Cloud,
    project: &str,
    query: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    check_project(cloud, project)?;
    let limit = number(query, "limit")?;
    if limit == Some(0) {
        return Err(param_error("invalid limit 0"));
    }
    let offset = number(query, "offset")?.unwrap_or(0);
    let inner = cloud.lock();
    let mut all: Vec<&Share> = inner
        .state
        .shares
        .values()
        .filter(|s| s.project_id == project)
        .collect();
    all.sort_by_key(|s| s.seq);
    let count = all.len();
    let page: Vec<Value> = all
        .into_iter()
        .skip(offset)
        .take(limit.unwrap_or(usize::MAX))
        .map(|s| view(cloud, s))
        .collect();
    Ok(json!({"shares": page, "count": count}))
}

/// `GET /v1/{p}/sfs-turbo/shares/detail?limit&offset` → `{"shares","count"}`.
pub async fn list_handler(
    State(cloud): State<Arc<Cloud>>,
    Path(project): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    list_shares(&cloud, &project, &query).map(Json)
}

/// `DELETE /v1/{p}/sfs-turbo/shares/{id}` → 202, no body.
pub async fn delete_handler(
    State(cloud): State<Arc<Cloud>>,
    Path((project, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    if delete_share(&cloud, &project, &id)? {
        start(cloud.clone(), id);
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `POST /v1/{p}/sfs-turbo/shares/{id}/action` `{"extend":{"new_size"}}` → 202 `{"id","name"}`.
pub async fn action_handler(
    State(cloud): State<Arc<Cloud>>,
    Path((project, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let share = extend_share(&cloud, &project, &id, &body)?;
    start(cloud.clone(), share.id.clone());
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": share.id, "name": share.name})),
    ))
}
