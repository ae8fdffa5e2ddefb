//! EVS: create, get, delete and extend disks (listing lives in `evs_list`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::sha256_hex;
use crate::cloud::Cloud;
use crate::errors::ApiError;
use crate::jobs;
use crate::state::{ClientToken, Disk, JobAction, evs_time};

/// Volume types EVS sells.
pub const VOLUME_TYPES: &[&str] = &["SAS", "SSD", "GPSSD", "ESSD", "GPSSD2", "ESSD2", "SATA"];
/// Smallest data disk, GB.
pub const MIN_SIZE: u64 = 10;
/// Largest data disk, GB.
pub const MAX_SIZE: u64 = 32768;
/// The IAM user id reported as every disk's `user_id` (the emulator has one user).
pub const EMULATOR_USER_ID: &str = "0c1e2d3f4a5b6c7d8e9f0a1b2c3d4e5f";
/// How long an `X-Client-Token` stays valid.
const CLIENT_TOKEN_HOURS: i64 = 8;

#[derive(Debug, Deserialize)]
struct CreateBody {
    volume: CreateVolume,
}

/// The `volume` object of a create request (unknown fields are ignored, as EVS does).
#[derive(Debug, Deserialize)]
pub struct CreateVolume {
    availability_zone: Option<String>,
    volume_type: Option<String>,
    name: Option<String>,
    description: Option<String>,
    size: Option<u64>,
    count: Option<u64>,
    snapshot_id: Option<String>,
    backup_id: Option<String>,
    #[serde(rename = "imageRef")]
    image_ref: Option<String>,
    multiattach: Option<bool>,
    metadata: Option<BTreeMap<String, String>>,
    tags: Option<BTreeMap<String, String>>,
    iops: Option<u64>,
    throughput: Option<u64>,
}

/// The answer to a create: the job and the new volume ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The createVolume job.
    pub job_id: String,
    /// The new disk ids.
    pub volume_ids: Vec<String>,
    /// Whether this was a replay of an earlier `X-Client-Token` request.
    pub replayed: bool,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("EVS.1009", message)
}

/// Validates a create request against the rules EVS applies.
fn validate(cloud: &Cloud, v: &CreateVolume) -> Result<(), ApiError> {
    let zone = v
        .availability_zone
        .as_deref()
        .ok_or_else(|| invalid("invalid volumeForCreate! availability_zone is required"))?;
    if !cloud.cfg.zones().iter().any(|z| z == zone) {
        return Err(ApiError::bad_request(
            "EVS.1036",
            format!("invalid availability_zone {zone}"),
        ));
    }
    let vt = v
        .volume_type
        .as_deref()
        .ok_or_else(|| invalid("invalid volumeForCreate! volume_type is required"))?;
    if !VOLUME_TYPES.contains(&vt) {
        return Err(ApiError::bad_request(
            "EVS.1020",
            format!(
                "invalid volume_type {vt}; one of {}",
                VOLUME_TYPES.join(", ")
            ),
        ));
    }
    let sources = [&v.snapshot_id, &v.backup_id, &v.image_ref]
        .iter()
        .filter(|s| s.is_some())
        .count();
    if sources > 1 {
        return Err(invalid(
            "only one of snapshot_id, backup_id and imageRef may be given",
        ));
    }
    if v.backup_id.is_some() || v.image_ref.is_some() {
        // Backups and images are not modelled, so any id names nothing.
        return Err(ApiError::bad_request(
            "EVS.1006",
            "the backup or image to create from does not exist",
        ));
    }
    match v.size {
        Some(s) if (MIN_SIZE..=MAX_SIZE).contains(&s) => {}
        Some(s) => {
            return Err(ApiError::bad_request(
                "EVS.1010",
                format!("invalid volume size {s}: data disks are {MIN_SIZE}-{MAX_SIZE} GB"),
            ));
        }
        None => {
            return Err(ApiError::bad_request(
                "EVS.1010",
                "invalid volume size: size is required",
            ));
        }
    }
    if v.count.unwrap_or(1) != 1 {
        return Err(invalid(
            "count other than 1 is not supported by the emulator",
        ));
    }
    if vt == "GPSSD2" && (v.iops.is_none() || v.throughput.is_none()) {
        return Err(invalid("GPSSD2 disks need iops and throughput"));
    }
    if vt == "ESSD2" && v.iops.is_none() {
        return Err(invalid("ESSD2 disks need iops"));
    }
    if let Some(name) = &v.name
        && name.chars().count() > 255
    {
        return Err(ApiError::bad_request(
            "EVS.1003",
            "invalid volume name! at most 255 characters",
        ));
    }
    if let Some(tags) = &v.tags {
        check_tags(tags)?;
    }
    let md = v.metadata.as_ref();
    if md
        .and_then(|m| m.get("__system__encrypted"))
        .map(String::as_str)
        == Some("1")
        && md.and_then(|m| m.get("__system__cmkid")).is_none()
    {
        return Err(invalid("__system__encrypted needs __system__cmkid"));
    }
    Ok(())
}

/// Most tags one disk carries.
const MAX_TAGS: usize = 10;

/// EVS disk tags as the API reference states them: at most 10; keys 1–36 and values 0–43
/// characters, each only letters, digits, `-` and `_`. A request breaking any of it is refused
/// whole, as the real service does, so a client cannot rely on a tag being cut or dropped.
fn check_tags(tags: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if tags.len() > MAX_TAGS {
        return Err(invalid(format!(
            "invalid tags! at most {MAX_TAGS} tags, got {}",
            tags.len()
        )));
    }
    for (key, value) in tags {
        if key.is_empty() || key.chars().count() > 36 || !key.chars().all(ok_char) {
            return Err(invalid(format!(
                "invalid tag key {key:?}! 1-36 letters, digits, '-' or '_'"
            )));
        }
        if value.chars().count() > 43 || !value.chars().all(ok_char) {
            return Err(invalid(format!(
                "invalid tag value {value:?} of key {key}! at most 43 letters, digits, '-' or '_'"
            )));
        }
    }
    Ok(())
}

/// A disk made from a snapshot: the snapshot must be `available` (EVS.2043) and in the disk's
/// zone (EVS.2054), the disk of its source's type (EVS.2096) and at least its size, and neither
/// encrypted nor SCSI by metadata (EVS.1043: it inherits those from the snapshot).
fn check_snapshot_source(
    state: &crate::state::State,
    project: &str,
    snapshot_id: &str,
    v: &CreateVolume,
) -> Result<(), ApiError> {
    let snap = state
        .project_snapshot(project, snapshot_id)
        .ok_or_else(|| {
            ApiError::bad_request(
                "EVS.2045",
                format!("invalid snapshot_id! snapshot {snapshot_id} does not exist"),
            )
        })?;
    if snap.status != "available" {
        return Err(ApiError::bad_request(
            "EVS.2043",
            format!(
                "The status of snapshot is not available or backing-up. snapshot {snapshot_id} is {}",
                snap.status
            ),
        ));
    }
    if v.availability_zone.as_deref() != Some(snap.availability_zone.as_str()) {
        return Err(ApiError::bad_request(
            "EVS.2054",
            format!(
                "Cannot create volume from snapshot as the az is invalid! snapshot {snapshot_id} is in {}",
                snap.availability_zone
            ),
        ));
    }
    if v.volume_type.as_deref() != Some(snap.volume_type.as_str()) {
        return Err(ApiError::bad_request(
            "EVS.2096",
            format!(
                "Target volumeType[{}] is not matched with snapshot[{}] !",
                v.volume_type.as_deref().unwrap_or_default(),
                snap.volume_type
            ),
        ));
    }
    if v.size.is_some_and(|s| s < snap.size) {
        return Err(ApiError::bad_request(
            "EVS.1010",
            format!(
                "invalid volume size! a disk made from snapshot {snapshot_id} needs at least {} GB",
                snap.size
            ),
        ));
    }
    let md = v.metadata.as_ref();
    if ["__system__encrypted", "__system__cmkid", "hw:passthrough"]
        .iter()
        .any(|k| md.is_some_and(|m| m.contains_key(*k)))
    {
        return Err(ApiError::bad_request(
            "EVS.1043",
            "encrypt and cmk and passthrougth in metadata is not support when create volume from snapshot or image!",
        ));
    }
    Ok(())
}

/// Creates a disk (status `creating`) and its createVolume job.
pub fn create_volume(
    cloud: &Cloud,
    project: &str,
    body: &[u8],
    client_token: Option<&str>,
) -> Result<Created, ApiError> {
    cloud.check_project(project)?;
    let req: CreateBody = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("invalid volumeForCreate! {e}")))?;
    let body_hash = sha256_hex(body);
    let now = Utc::now();
    let mut inner = cloud.lock();
    if let Some(token) = client_token {
        if uuid::Uuid::parse_str(token).is_err() {
            return Err(ApiError::bad_request(
                "EVS.2218",
                "invalid X-Client-Token in header: not a UUID",
            ));
        }
        if let Some(seen) = inner.state.client_tokens.get(token) {
            if now - seen.created_at > chrono::Duration::hours(CLIENT_TOKEN_HOURS) {
                return Err(ApiError::bad_request(
                    "EVS.2220",
                    "idempotent request over 8 hours from the first request",
                ));
            }
            if seen.body_hash != body_hash {
                return Err(ApiError::bad_request(
                    "EVS.2219",
                    "url/project id/body conflict with X-Client-Token",
                ));
            }
            return Ok(Created {
                job_id: seen.job_id.clone(),
                volume_ids: seen.volume_ids.clone(),
                replayed: true,
            });
        }
    }
    validate(cloud, &req.volume)?;
    if let Some(snapshot_id) = &req.volume.snapshot_id {
        check_snapshot_source(&inner.state, project, snapshot_id, &req.volume)?;
    }
    if let Some(max) = cloud.cfg.max_disks {
        let used = inner
            .state
            .disks
            .values()
            .filter(|d| d.project_id == project)
            .count();
        if used >= max {
            return Err(ApiError::bad_request(
                "EVS.1034",
                format!("quota exceeded: the project may hold {max} disks"),
            ));
        }
    }
    let v = req.volume;
    let id = uuid::Uuid::new_v4().to_string();
    let seq = inner.state.next_seq;
    inner.state.next_seq += 1;
    let disk = Disk {
        id: id.clone(),
        project_id: project.to_string(),
        seq,
        name: v.name.unwrap_or_default(),
        description: v.description.unwrap_or_default(),
        size: v.size.unwrap_or(MIN_SIZE),
        volume_type: v.volume_type.unwrap_or_default(),
        availability_zone: v.availability_zone.unwrap_or_default(),
        status: "creating".to_string(),
        multiattach: v.multiattach.unwrap_or(false),
        metadata: v.metadata.unwrap_or_default(),
        tags: v.tags.unwrap_or_default(),
        iops: v.iops,
        throughput: v.throughput,
        wwn: format!(
            "688860300{}",
            &uuid::Uuid::new_v4().simple().to_string()[..23]
        ),
        snapshot_id: v.snapshot_id,
        created_at: now,
        updated_at: now,
        attachment: None,
    };
    let job_id = jobs::submit(&mut inner, &disk, JobAction::CreateVolume);
    inner.state.disks.insert(id.clone(), disk);
    if let Some(token) = client_token {
        inner.state.client_tokens.insert(
            token.to_string(),
            ClientToken {
                job_id: job_id.clone(),
                volume_ids: vec![id.clone()],
                body_hash,
                created_at: now,
            },
        );
    }
    cloud.commit(&mut inner)?;
    Ok(Created {
        job_id,
        volume_ids: vec![id],
        replayed: false,
    })
}

/// Statuses a disk may be deleted from.
const DELETABLE: &[&str] = &[
    "available",
    "error",
    "error_extending",
    "error_restoring",
    "error_rollbacking",
];

fn not_found(id: &str) -> ApiError {
    ApiError::evs_not_found(format!("Volume {id} could not be found."))
}

/// Starts deleting a disk; returns the deleteVolume job.
pub fn delete_volume(cloud: &Cloud, project: &str, id: &str) -> Result<String, ApiError> {
    cloud.check_project(project)?;
    let mut inner = cloud.lock();
    let dependents = inner.state.snapshots_of(id).len();
    let disk = inner
        .state
        .project_disk_mut(project, id)
        .ok_or_else(|| not_found(id))?;
    if dependents > 0 {
        // Cinder's rule, passed through with EVS's generic code: snapshots live on the disk's
        // storage, so they go first.
        return Err(ApiError::bad_request(
            "EVS.5400",
            format!(
                "Invalid volume: Volume {id} still has {dependents} dependent snapshots; delete them first"
            ),
        ));
    }
    if !DELETABLE.contains(&disk.status.as_str()) {
        return Err(ApiError::bad_request(
            "EVS.1046",
            format!(
                "volume {id} is {}; it can be deleted only when {}",
                disk.status,
                DELETABLE.join("/")
            ),
        ));
    }
    disk.status = "deleting".to_string();
    disk.updated_at = Utc::now();
    let disk = disk.clone();
    let job_id = jobs::submit(&mut inner, &disk, JobAction::DeleteVolume);
    cloud.commit(&mut inner)?;
    Ok(job_id)
}

#[derive(Debug, Deserialize)]
struct ActionBody {
    #[serde(rename = "os-extend")]
    extend: Option<ExtendBody>,
}

#[derive(Debug, Deserialize)]
struct ExtendBody {
    new_size: u64,
}

/// Starts growing a disk; returns the extendVolume job.
pub fn extend_volume(
    cloud: &Cloud,
    project: &str,
    id: &str,
    body: &[u8],
) -> Result<String, ApiError> {
    cloud.check_project(project)?;
    let req: ActionBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("EVS.1011", format!("null extendVolumeReq! {e}")))?;
    let new_size = req
        .extend
        .ok_or_else(|| ApiError::bad_request("EVS.1011", "only the os-extend action is supported"))?
        .new_size;
    let mut inner = cloud.lock();
    let disk = inner
        .state
        .project_disk_mut(project, id)
        .ok_or_else(|| not_found(id))?;
    if disk.status != "available" && disk.status != "in-use" {
        return Err(ApiError::bad_request(
            "EVS.1064",
            format!(
                "volume {id} is {}; it can be extended only when available or in-use",
                disk.status
            ),
        ));
    }
    if new_size <= disk.size {
        return Err(ApiError::bad_request(
            "EVS.1015",
            format!(
                "new volume size {new_size} must be greater than old size {}",
                disk.size
            ),
        ));
    }
    if new_size > MAX_SIZE {
        return Err(ApiError::bad_request(
            "EVS.1010",
            format!("invalid volume size {new_size}"),
        ));
    }
    let return_status = std::mem::replace(&mut disk.status, "extending".to_string());
    disk.updated_at = Utc::now();
    let disk = disk.clone();
    let action = JobAction::ExtendVolume {
        new_size,
        return_status,
    };
    let job_id = jobs::submit(&mut inner, &disk, action);
    cloud.commit(&mut inner)?;
    Ok(job_id)
}

/// The API view of a disk.
pub fn view(disk: &Disk, base: &str) -> Value {
    let attachments: Vec<Value> = disk
        .attachment
        .iter()
        .map(|a| {
            json!({
                "attachment_id": a.attachment_id,
                "id": disk.id,
                "volume_id": disk.id,
                "server_id": a.server_id,
                "host_name": a.host_name,
                "device": a.device,
                "attached_at": evs_time(a.attached_at),
            })
        })
        .collect();
    let mut v = json!({
        "id": disk.id,
        "name": disk.name,
        "description": disk.description,
        "status": disk.status,
        "size": disk.size,
        "volume_type": disk.volume_type,
        "availability_zone": disk.availability_zone,
        "multiattach": disk.multiattach,
        "shareable": disk.multiattach.to_string(),
        "bootable": "false",
        "encrypted": disk.encrypted(),
        "metadata": disk.metadata,
        "tags": disk.tags,
        "wwn": disk.wwn,
        "service_type": "EVS",
        "attachments": attachments,
        "snapshot_id": disk.snapshot_id,
        "source_volid": null,
        "replication_status": "disabled",
        "os-vol-tenant-attr:tenant_id": disk.project_id,
        // Reserved or unmodelled fields, present with the types the official SDK models.
        "os-vol-host-attr:host": format!("emu-pool#{}", disk.volume_type),
        "user_id": EMULATOR_USER_ID,
        "enterprise_project_id": "0",
        // What a non-SCSI disk reports for in-guest mapping: the virtio serial.
        "serial_number": disk.id.chars().take(20).collect::<String>(),
        "volume_image_metadata": {},
        "consistencygroup_id": null,
        "dedicated_storage_id": null,
        "dedicated_storage_name": null,
        "os-volume-replication:extended_status": null,
        "os-vol-mig-status-attr:migstat": null,
        "os-vol-mig-status-attr:name_id": null,
        "created_at": evs_time(disk.created_at),
        "updated_at": evs_time(disk.updated_at),
        "links": [
            {"href": format!("{base}/v2/{}/cloudvolumes/{}", disk.project_id, disk.id), "rel": "self"},
        ],
    });
    if let Some(iops) = disk.iops {
        v["iops"] = json!({"total_val": iops, "id": disk.id, "frozened": false});
    }
    if let Some(tp) = disk.throughput {
        v["throughput"] = json!({"total_val": tp, "id": disk.id, "frozened": false});
    }
    v
}

/// `http://host` from the request, for links.
pub fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

/// `POST /v2.1/{p}/cloudvolumes`.
pub async fn create_handler(
    State(cloud): State<Arc<Cloud>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let token = headers.get("x-client-token").and_then(|t| t.to_str().ok());
    let created = create_volume(&cloud, &project, &body, token)?;
    if !created.replayed {
        jobs::start(cloud.clone(), created.job_id.clone());
    }
    Ok(Json(
        json!({"job_id": created.job_id, "volume_ids": created.volume_ids}),
    ))
}

/// `GET /v2/{p}/cloudvolumes/{id}`.
pub async fn get_handler(
    State(cloud): State<Arc<Cloud>>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    cloud.check_project(&project)?;
    let inner = cloud.lock();
    let disk = inner
        .state
        .project_disk(&project, &id)
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(json!({"volume": view(disk, &base_url(&headers))})))
}

/// `DELETE /v2/{p}/cloudvolumes/{id}`.
pub async fn delete_handler(
    State(cloud): State<Arc<Cloud>>,
    Path((project, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let job_id = delete_volume(&cloud, &project, &id)?;
    jobs::start(cloud.clone(), job_id.clone());
    Ok(Json(json!({"job_id": job_id})))
}

/// `POST /v2.1/{p}/cloudvolumes/{id}/action`.
pub async fn action_handler(
    State(cloud): State<Arc<Cloud>>,
    Path((project, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let job_id = extend_volume(&cloud, &project, &id, &body)?;
    jobs::start(cloud.clone(), job_id.clone());
    Ok((StatusCode::ACCEPTED, Json(json!({"job_id": job_id}))))
}
