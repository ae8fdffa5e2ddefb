//! ECS: attach and detach disks, and the server views a node or controller checks.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cloud::{Cloud, server_name_of};
use crate::errors::{ApiError, FaultCode};
use crate::jobs;
use crate::state::{Disk, JobAction};

/// ECS: the disk is not attached to this server.
const NOT_ATTACHED: &str = "Ecs.0111";

/// A KVM instance holds at most this many data disks.
pub const MAX_DISKS_PER_SERVER: usize = 24;

fn ecs(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::service(status, code, message)
}

/// Device names in attach order (`/dev/vda` is the system disk, not modelled).
fn device_names() -> impl Iterator<Item = String> {
    (b'b'..=b'y').map(|c| format!("/dev/vd{}", c as char))
}

fn check_server(cloud: &Cloud, project: &str, server_id: &str) -> Result<(), ApiError> {
    if project != cloud.cfg.project_id {
        return Err(ecs(
            StatusCode::BAD_REQUEST,
            "Ecs.0001",
            format!("project {project} is not known"),
        ));
    }
    if !cloud.knows_server(server_id) {
        return Err(ecs(
            StatusCode::NOT_FOUND,
            "Ecs.0114",
            format!("server {server_id} does not exist"),
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct AttachBody {
    #[serde(rename = "volumeAttachment")]
    attachment: AttachSpec,
}

#[derive(Debug, Deserialize)]
struct AttachSpec {
    #[serde(rename = "volumeId")]
    volume_id: String,
    device: Option<String>,
}

/// Starts attaching a disk to the server; returns the attachVolume job.
pub fn attach_volume(
    cloud: &Cloud,
    project: &str,
    server_id: &str,
    body: &[u8],
) -> Result<String, ApiError> {
    check_server(cloud, project, server_id)?;
    let req: AttachBody = serde_json::from_slice(body).map_err(|e| {
        ecs(
            StatusCode::BAD_REQUEST,
            "Ecs.0005",
            format!("invalid request body: {e}"),
        )
    })?;
    let id = req.attachment.volume_id;
    let mut inner = cloud.lock();
    let disk = inner.state.project_disk(project, &id).ok_or_else(|| {
        ecs(
            StatusCode::BAD_REQUEST,
            "Ecs.0103",
            format!("volume {id} does not exist"),
        )
    })?;
    if disk
        .attachment
        .as_ref()
        .is_some_and(|a| a.server_id == server_id)
    {
        return Err(ecs(
            StatusCode::BAD_REQUEST,
            "Ecs.0057",
            format!("volume {id} is already attached to server {server_id}"),
        ));
    }
    if disk.status != "available" {
        return Err(ecs(
            StatusCode::BAD_REQUEST,
            "Ecs.0103",
            format!("volume {id} is {}, not available", disk.status),
        ));
    }
    if disk.availability_zone != cloud.cfg.availability_zone {
        return Err(ecs(
            StatusCode::BAD_REQUEST,
            "Ecs.0103",
            format!(
                "volume {id} is in {} but the server is in {}",
                disk.availability_zone, cloud.cfg.availability_zone
            ),
        ));
    }
    let used = inner.state.devices_in_use(server_id);
    if used.len() >= MAX_DISKS_PER_SERVER {
        return Err(ecs(
            StatusCode::BAD_REQUEST,
            "Ecs.0104",
            format!("server {server_id} already holds {MAX_DISKS_PER_SERVER} disks"),
        ));
    }
    if let Some(dev) = &req.attachment.device
        && !device_names().any(|d| &d == dev)
    {
        return Err(ecs(
            StatusCode::BAD_REQUEST,
            "Ecs.0005",
            format!("invalid device {dev}: expected /dev/vdb../dev/vdy"),
        ));
    }
    // KVM assigns names in order and may ignore the requested one; honour it when free.
    let device = req
        .attachment
        .device
        .filter(|d| !used.contains(d))
        .or_else(|| device_names().find(|d| !used.contains(d)))
        .ok_or_else(|| ecs(StatusCode::BAD_REQUEST, "Ecs.0104", "no free device name"))?;
    let disk: Disk = disk.clone();
    if let Some(d) = inner.state.disks.get_mut(&id) {
        d.status = "attaching".to_string();
        d.updated_at = Utc::now();
    }
    let action = JobAction::AttachVolume {
        server_id: server_id.to_string(),
        device,
    };
    let job_id = jobs::submit(&mut inner, &disk, action);
    cloud.commit(&mut inner)?;
    Ok(job_id)
}

/// Starts detaching a disk from the server; returns the detachVolume job.
pub fn detach_volume(
    cloud: &Cloud,
    project: &str,
    server_id: &str,
    id: &str,
) -> Result<String, ApiError> {
    check_server(cloud, project, server_id)?;
    let mut inner = cloud.lock();
    let disk = inner.state.project_disk_mut(project, id).ok_or_else(|| {
        ecs(
            StatusCode::BAD_REQUEST,
            NOT_ATTACHED,
            format!("volume {id} is not attached"),
        )
    })?;
    if disk
        .attachment
        .as_ref()
        .is_none_or(|a| a.server_id != server_id)
    {
        return Err(ecs(
            StatusCode::BAD_REQUEST,
            NOT_ATTACHED,
            format!("volume {id} is not attached to server {server_id}"),
        ));
    }
    if disk.status != "in-use" {
        return Err(ecs(
            StatusCode::BAD_REQUEST,
            "Ecs.0103",
            format!(
                "volume {id} is {}; wait for the current operation",
                disk.status
            ),
        ));
    }
    disk.status = "detaching".to_string();
    disk.updated_at = Utc::now();
    let disk = disk.clone();
    let action = JobAction::DetachVolume {
        server_id: server_id.to_string(),
    };
    let job_id = jobs::submit(&mut inner, &disk, action);
    cloud.commit(&mut inner)?;
    Ok(job_id)
}

/// `POST /v1/{p}/cloudservers/{server_id}/attachvolume`.
pub async fn attach_handler(
    State(cloud): State<Arc<Cloud>>,
    Path((project, server_id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let job_id = attach_volume(&cloud, &project, &server_id, &body)?;
    jobs::start(cloud.clone(), job_id.clone());
    Ok(Json(json!({"job_id": job_id})))
}

/// `DELETE /v1/{p}/cloudservers/{server_id}/detachvolume/{volume_id}`.
pub async fn detach_handler(
    State(cloud): State<Arc<Cloud>>,
    Path((project, server_id, volume_id)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let job_id = detach_volume(&cloud, &project, &server_id, &volume_id)?;
    jobs::start(cloud.clone(), job_id.clone());
    Ok(Json(json!({"job_id": job_id})))
}

fn server_or_404(cloud: &Cloud, project: &str, server_id: &str) -> Result<(), ApiError> {
    check_server(cloud, project, server_id).map_err(|e| match e {
        ApiError::Service {
            status: StatusCode::NOT_FOUND,
            ..
        } => ApiError::ItemNotFound {
            // Nova's fault body: the HTTP status as a number.
            code: FaultCode::HttpStatus,
            message: "Instance could not be found".to_string(),
        },
        other => other,
    })
}

fn attached(cloud: &Cloud, server_id: &str) -> Vec<Disk> {
    let inner = cloud.lock();
    let mut disks: Vec<Disk> = inner
        .state
        .disks
        .values()
        .filter(|d| {
            d.attachment
                .as_ref()
                .is_some_and(|a| a.server_id == server_id)
        })
        .cloned()
        .collect();
    disks.sort_by(|a, b| {
        let dev = |d: &Disk| d.attachment.as_ref().map(|a| a.device.clone());
        dev(a).cmp(&dev(b))
    });
    disks
}

fn device_of(d: &Disk) -> String {
    d.attachment
        .as_ref()
        .map(|a| a.device.clone())
        .unwrap_or_default()
}

/// `GET /v2.1/{p}/servers/{id}` (Nova-compatible).
pub async fn server_handler(
    State(cloud): State<Arc<Cloud>>,
    Path((project, server_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    server_or_404(&cloud, &project, &server_id)?;
    // Nova sends `delete_on_termination` as a JSON boolean (ECS's own v1 API as a string).
    let vols: Vec<Value> = attached(&cloud, &server_id)
        .iter()
        .map(|d| json!({"id": d.id, "delete_on_termination": false}))
        .collect();
    Ok(Json(json!({"server": {
        "id": server_id,
        "name": server_name_of(&server_id),
        "status": "ACTIVE",
        "tenant_id": project,
        "OS-EXT-AZ:availability_zone": cloud.cfg.availability_zone,
        "OS-EXT-SRV-ATTR:hostname": server_name_of(&server_id),
        "OS-EXT-STS:vm_state": "active",
        "os-extended-volumes:volumes_attached": vols,
        "metadata": {},
    }})))
}

/// `GET /v1/{p}/cloudservers/{id}`: ECS's own server details.
pub async fn cloudserver_handler(
    State(cloud): State<Arc<Cloud>>,
    Path((project, server_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    check_server(&cloud, &project, &server_id)?;
    let vols: Vec<Value> = attached(&cloud, &server_id)
        .iter()
        .map(|d| {
            json!({
                "id": d.id,
                "delete_on_termination": "false",
                "bootIndex": null,
                "device": device_of(d),
            })
        })
        .collect();
    Ok(Json(json!({"server": {
        "id": server_id,
        "name": server_name_of(&server_id),
        "status": "ACTIVE",
        "tenant_id": project,
        "user_id": crate::evs::EMULATOR_USER_ID,
        "OS-EXT-AZ:availability_zone": cloud.cfg.availability_zone,
        "OS-EXT-SRV-ATTR:hostname": server_name_of(&server_id),
        "OS-EXT-STS:vm_state": "active",
        "OS-EXT-STS:power_state": 1,
        "os-extended-volumes:volumes_attached": vols,
        "metadata": {},
        "tags": [],
        "locked": false,
        "enterprise_project_id": "0",
    }})))
}

/// `GET /v1/{p}/cloudservers/{id}/os-volume_attachments`.
pub async fn cloudserver_attachments_handler(
    State(cloud): State<Arc<Cloud>>,
    Path((project, server_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    check_server(&cloud, &project, &server_id)?;
    Ok(Json(
        json!({"volumeAttachments": attachment_list(&cloud, &server_id)}),
    ))
}

fn attachment_list(cloud: &Cloud, server_id: &str) -> Vec<Value> {
    attached(cloud, server_id)
        .iter()
        .map(|d| json!({"device": device_of(d), "id": d.id, "serverId": server_id, "volumeId": d.id}))
        .collect()
}

/// `GET /v2.1/{p}/servers/{id}/os-volume_attachments`.
pub async fn attachments_handler(
    State(cloud): State<Arc<Cloud>>,
    Path((project, server_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    server_or_404(&cloud, &project, &server_id)?;
    Ok(Json(
        json!({"volumeAttachments": attachment_list(&cloud, &server_id)}),
    ))
}

/// `GET /v1/{p}/cloudservers/{id}/block_device`.
pub async fn block_device_handler(
    State(cloud): State<Arc<Cloud>>,
    Path((project, server_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    check_server(&cloud, &project, &server_id)?;
    let disks = attached(&cloud, &server_id);
    let used = cloud.lock().state.devices_in_use(&server_id).len();
    let free = MAX_DISKS_PER_SERVER.saturating_sub(used);
    let list: Vec<Value> = disks
        .iter()
        .enumerate()
        .map(|(i, d)| block_device_view(d, i, &server_id))
        .collect();
    Ok(Json(json!({
        "volumeAttachments": list,
        "attachableQuantity": {"free_scsi": free, "free_blk": free, "free_disk": free},
    })))
}

fn block_device_view(d: &Disk, index: usize, server_id: &str) -> Value {
    json!({
        "device": device_of(d),
        "id": d.id,
        "serverId": server_id,
        "volumeId": d.id,
        "size": d.size,
        "bootIndex": null,
        "bus": "virtio",
        "pciAddress": format!("0000:02:{:02x}.0", index + 1),
    })
}

/// `GET /v1/{p}/cloudservers/{id}/block_device/{volume_id}`: one attached disk.
pub async fn block_device_one_handler(
    State(cloud): State<Arc<Cloud>>,
    Path((project, server_id, volume_id)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    check_server(&cloud, &project, &server_id)?;
    let disks = attached(&cloud, &server_id);
    let (index, disk) = disks
        .iter()
        .enumerate()
        .find(|(_, d)| d.id == volume_id)
        .ok_or_else(|| {
            ecs(
                StatusCode::NOT_FOUND,
                NOT_ATTACHED,
                format!("volume {volume_id} is not attached to server {server_id}"),
            )
        })?;
    Ok(Json(
        json!({"volumeAttachment": block_device_view(disk, index, &server_id)}),
    ))
}
