//! EVS snapshots: create, show, list, delete. A snapshot is a copy of its disk's image (a
//! reflink where the filesystem allows, else a sparse copy); a disk created with its
//! `snapshot_id` starts with that content (see `jobs`), and a disk that has snapshots cannot
//! be deleted.
//!
//! Like shares, snapshots have no job: clients poll the snapshot's `status`
//! (`creating` → `available`, `deleting` → gone).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cloud::Cloud;
use crate::errors::ApiError;
use crate::evs::base_url;
use crate::evs_list::next_link;
use crate::state::{Snapshot, SnapshotOp, evs_time};

/// Statuses a snapshot may be deleted from.
pub const DELETABLE: &[&str] = &["available", "error"];
/// Largest page of a listing (and the default).
pub const MAX_LIMIT: usize = 1000;

#[derive(Debug, Deserialize)]
struct CreateBody {
    snapshot: CreateSnapshot,
}

/// The `snapshot` object of a create request (unknown fields are ignored).
#[derive(Debug, Deserialize)]
struct CreateSnapshot {
    volume_id: Option<String>,
    name: Option<String>,
    description: Option<String>,
    force: Option<bool>,
    metadata: Option<BTreeMap<String, String>>,
}

/// The 404 EVS answers for a snapshot it does not have.
pub fn not_found(id: &str) -> ApiError {
    ApiError::evs_not_found(format!("Snapshot {id} could not be found."))
}

/// The published EVS error table has no code of its own for an invalid snapshot request
/// (a disk in the wrong state, one with dependent snapshots); the Cinder-derived checks answer
/// with the generic `EVS.5400`.
fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("EVS.5400", message)
}

/// Records a snapshot of a disk (status `creating`); the copy is made when it completes.
pub fn create_snapshot(cloud: &Cloud, project: &str, body: &[u8]) -> Result<Snapshot, ApiError> {
    cloud.check_project(project)?;
    let req: CreateBody = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("Malformed request body: {e}")))?;
    let s = req.snapshot;
    let volume_id = s
        .volume_id
        .ok_or_else(|| invalid("Invalid input received: volume_id is required"))?;
    if let Some(name) = &s.name
        && name.chars().count() > 255
    {
        return Err(invalid("invalid snapshot name! at most 255 characters"));
    }
    let mut inner = cloud.lock();
    let disk = inner
        .state
        .project_disk(project, &volume_id)
        .ok_or_else(|| ApiError::evs_not_found(format!("Volume {volume_id} could not be found.")))?
        .clone();
    let force = s.force.unwrap_or(false);
    let ok = disk.status == "available" || (force && disk.status == "in-use");
    if !ok {
        return Err(invalid(format!(
            "Invalid volume: volume {volume_id} is {}; a snapshot is taken of an available disk, or of an in-use one with force=true",
            disk.status
        )));
    }
    if let Some(max) = cloud.cfg.max_snapshots {
        let used = inner
            .state
            .snapshots
            .values()
            .filter(|s| s.project_id == project)
            .count();
        if used >= max {
            return Err(ApiError::service(
                StatusCode::PAYLOAD_TOO_LARGE,
                "EVS.5413",
                format!("Insufficient snapshot quota: the project may hold {max} snapshots"),
            ));
        }
    }
    let now = Utc::now();
    let seq = inner.state.next_seq;
    inner.state.next_seq += 1;
    let snap = Snapshot {
        id: uuid::Uuid::new_v4().to_string(),
        project_id: project.to_string(),
        seq,
        name: s.name.unwrap_or_default(),
        description: s.description.unwrap_or_default(),
        volume_id,
        size: disk.size,
        volume_type: disk.volume_type.clone(),
        availability_zone: disk.availability_zone.clone(),
        status: "creating".to_string(),
        metadata: s.metadata.unwrap_or_default(),
        pending: Some(SnapshotOp::Create),
        created_at: now,
        updated_at: now,
    };
    inner.state.snapshots.insert(snap.id.clone(), snap.clone());
    cloud.commit(&mut inner)?;
    Ok(snap)
}

/// Starts deleting a snapshot (`deleting`); only from `available` or `error` (EVS.1047).
pub fn delete_snapshot(cloud: &Cloud, project: &str, id: &str) -> Result<(), ApiError> {
    cloud.check_project(project)?;
    let mut inner = cloud.lock();
    let snap = inner
        .state
        .snapshots
        .get_mut(id)
        .filter(|s| s.project_id == project)
        .ok_or_else(|| not_found(id))?;
    if !DELETABLE.contains(&snap.status.as_str()) {
        return Err(ApiError::bad_request(
            "EVS.1047",
            format!(
                "snapshot status must be available or error when delete snapshot! snapshot {id} is {}",
                snap.status
            ),
        ));
    }
    snap.status = "deleting".to_string();
    snap.pending = Some(SnapshotOp::Delete);
    snap.updated_at = Utc::now();
    cloud.commit(&mut inner)
}

/// Completes a snapshot's pending operation after the job latency, off the async workers.
pub fn start(cloud: Arc<Cloud>, id: String) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(cloud.cfg.job_latency_ms)).await;
        let c = cloud.clone();
        let snapshot_id = id.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || complete(&c, &snapshot_id)).await {
            tracing::error!(snapshot_id = %id, error = %e, "snapshot completion panicked");
        }
    });
}

/// Restarts the completion of every snapshot operation in flight when the emulator stopped.
pub fn resume_all(cloud: &Arc<Cloud>) {
    let pending: Vec<String> = cloud
        .lock()
        .state
        .snapshots
        .values()
        .filter(|s| s.pending.is_some())
        .map(|s| s.id.clone())
        .collect();
    for id in pending {
        tracing::info!(snapshot_id = %id, "resuming snapshot operation left in flight");
        start(cloud.clone(), id);
    }
}

/// Finishes a snapshot's pending operation: the copy (or its removal), then the next status.
pub fn complete(cloud: &Cloud, id: &str) {
    let mut inner = cloud.lock();
    if inner.shutting_down {
        return;
    }
    let Some(snap) = inner.state.snapshots.get(id).cloned() else {
        return;
    };
    let image = cloud.snapshot_path(id);
    let fx = &cloud.effects;
    match snap.pending {
        None => return,
        Some(SnapshotOp::Create) => {
            // A retried completion (after a restart mid-copy) starts from a clean slate.
            let copied = fx
                .remove_image(&image)
                .and_then(|()| fx.copy_image(&cloud.image_path(&snap.volume_id), &image));
            let status = match copied {
                Ok(()) => "available",
                Err(e) => {
                    tracing::warn!(snapshot_id = %id, error = %e, "snapshot copy failed");
                    "error"
                }
            };
            if let Some(s) = inner.state.snapshots.get_mut(id) {
                s.status = status.to_string();
                s.pending = None;
                s.updated_at = Utc::now();
            }
        }
        Some(SnapshotOp::Delete) => match fx.remove_image(&image) {
            Ok(()) => {
                inner.state.snapshots.remove(id);
            }
            Err(e) => {
                tracing::warn!(snapshot_id = %id, error = %e, "snapshot removal failed");
                if let Some(s) = inner.state.snapshots.get_mut(id) {
                    s.status = "error_deleting".to_string();
                    s.pending = None;
                    s.updated_at = Utc::now();
                }
            }
        },
    }
    if let Err(e) = cloud.commit(&mut inner) {
        tracing::error!(snapshot_id = %id, error = %e, "cannot persist snapshot completion");
    }
}

/// The API view of a snapshot.
pub fn view(s: &Snapshot, base: &str) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "description": s.description,
        "status": s.status,
        "size": s.size,
        "volume_id": s.volume_id,
        "metadata": s.metadata,
        "created_at": evs_time(s.created_at),
        "updated_at": evs_time(s.updated_at),
        "service_type": "EVS",
        "os-extended-snapshot-attributes:project_id": s.project_id,
        "os-extended-snapshot-attributes:progress": if s.status == "available" { "100%" } else { "0%" },
        "links": [
            {"href": format!("{base}/v2/{}/cloudsnapshots/{}", s.project_id, s.id), "rel": "self"},
        ],
    })
}

/// A parsed snapshot listing query.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ListQuery {
    name: Option<String>,
    status: Option<String>,
    volume_id: Option<String>,
    id: Option<String>,
    availability_zone: Option<String>,
    limit: usize,
    offset: usize,
    marker: Option<String>,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_query("EVS.5400", message)
}

impl ListQuery {
    /// Parses the query parameters; unknown filters are ignored, as the real API does.
    pub fn parse(params: &BTreeMap<String, String>) -> Result<Self, ApiError> {
        let mut q = ListQuery {
            limit: MAX_LIMIT,
            ..ListQuery::default()
        };
        for (k, v) in params {
            match k.as_str() {
                "name" => q.name = Some(v.clone()),
                "status" => q.status = Some(v.clone()),
                "volume_id" => q.volume_id = Some(v.clone()),
                "id" => q.id = Some(v.clone()),
                "availability_zone" => q.availability_zone = Some(v.clone()),
                "marker" => q.marker = Some(v.clone()),
                "limit" => {
                    q.limit = v
                        .parse()
                        .map_err(|_| bad("limit param must be an integer."))?;
                    if q.limit == 0 {
                        return Err(bad("limit param must be positive."));
                    }
                    if q.limit > MAX_LIMIT {
                        return Err(ApiError::bad_request(
                            "EVS.2142",
                            "invalid filter limit, can not greater than 1000.",
                        ));
                    }
                }
                "offset" => {
                    q.offset = v
                        .parse()
                        .map_err(|_| bad("offset param must be an integer."))?
                }
                _ => {}
            }
        }
        Ok(q)
    }

    fn matches(&self, s: &Snapshot) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        eq(&self.name, &s.name)
            && eq(&self.status, &s.status)
            && eq(&self.volume_id, &s.volume_id)
            && eq(&self.id, &s.id)
            && eq(&self.availability_zone, &s.availability_zone)
    }

    /// Filters, orders newest first (creation order breaks ties) and pages; returns the page,
    /// the count of all matches and whether more follow.
    pub fn apply<'a>(
        &self,
        snapshots: impl Iterator<Item = &'a Snapshot>,
    ) -> Result<(Vec<&'a Snapshot>, usize, bool), ApiError> {
        let mut all: Vec<&Snapshot> = snapshots.filter(|s| self.matches(s)).collect();
        all.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.seq.cmp(&a.seq)));
        let count = all.len();
        let start = match &self.marker {
            Some(m) => {
                all.iter().position(|s| &s.id == m).ok_or_else(|| {
                    ApiError::bad_request("EVS.1024", format!("invalid filter marker! {m}"))
                })? + 1
            }
            None => 0,
        } + self.offset;
        let rest: Vec<&Snapshot> = all.into_iter().skip(start).collect();
        let more = rest.len() > self.limit;
        Ok((rest.into_iter().take(self.limit).collect(), count, more))
    }
}

/// `POST /v2/{p}/cloudsnapshots` → 202 `{"snapshot": {...}}`.
pub async fn create_handler(
    State(cloud): State<Arc<Cloud>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let snap = create_snapshot(&cloud, &project, &body)?;
    start(cloud.clone(), snap.id.clone());
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"snapshot": view(&snap, &base_url(&headers))})),
    ))
}

/// `GET /v2/{p}/cloudsnapshots/{id}`.
pub async fn get_handler(
    State(cloud): State<Arc<Cloud>>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    cloud.check_project(&project)?;
    let inner = cloud.lock();
    let snap = inner
        .state
        .project_snapshot(&project, &id)
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(json!({"snapshot": view(snap, &base_url(&headers))})))
}

/// `GET /v2/{p}/cloudsnapshots/detail` → `{"snapshots", "count", "snapshots_links"}`.
pub async fn list_handler(
    State(cloud): State<Arc<Cloud>>,
    Path(project): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    cloud.check_project(&project)?;
    let q = ListQuery::parse(&params)?;
    let base = base_url(&headers);
    let inner = cloud.lock();
    let (page, count, more) = q.apply(
        inner
            .state
            .snapshots
            .values()
            .filter(|s| s.project_id == project),
    )?;
    let snapshots: Vec<Value> = page.iter().map(|s| view(s, &base)).collect();
    let mut out = json!({"snapshots": snapshots, "count": count});
    if more && let Some(last) = page.last() {
        out["snapshots_links"] = json!([{"href": next_link(&base, &project, "cloudsnapshots", &params, &last.id), "rel": "next"}]);
    }
    Ok(Json(out))
}

/// `DELETE /v2/{p}/cloudsnapshots/{id}` → 202, no body.
pub async fn delete_handler(
    State(cloud): State<Arc<Cloud>>,
    Path((project, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    delete_snapshot(&cloud, &project, &id)?;
    start(cloud.clone(), id);
    Ok(StatusCode::ACCEPTED.into_response())
}
