//! EVS: changing a disk in place — its type (`POST /v2/{p}/volumes/{id}/retype`) and its
//! provisioned IOPS and throughput (`PUT /v5/{p}/cloudvolumes/{id}/qos`), each an asynchronous
//! job whose effect lands when it completes.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cloud::Cloud;
use crate::errors::ApiError;
use crate::jobs;
use crate::state::JobAction;

/// The types a disk can be changed to.
pub const RETYPE_TARGETS: &[&str] = &["SAS", "GPSSD", "SSD", "ESSD", "GPSSD2", "ESSD2"];
/// Types on SAS-backed storage: a disk on SSD-backed storage cannot move to them.
const SAS_BACKED: &[&str] = &["SAS", "SATA"];

#[derive(Debug, Deserialize)]
struct RetypeBody {
    #[serde(rename = "os-retype")]
    retype: Retype,
}

#[derive(Debug, Deserialize)]
struct Retype {
    new_type: String,
    iops: Option<u64>,
    throughput: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct QosBody {
    qos_modify: Qos,
}

#[derive(Debug, Deserialize)]
struct Qos {
    iops: u64,
    throughput: Option<u64>,
}

/// The published table's code for a refused retype precheck (EVS.2088).
fn refused(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("EVS.2088", message)
}

/// Checks the disk can be changed now: it exists and is `available` or `in-use`.
fn changeable(cloud: &Cloud, project: &str, id: &str) -> Result<crate::state::Disk, ApiError> {
    cloud.check_project(project)?;
    let inner = cloud.lock();
    let disk = inner
        .state
        .project_disk(project, id)
        .ok_or_else(|| ApiError::evs_not_found(format!("Volume {id} could not be found.")))?
        .clone();
    if disk.status != "available" && disk.status != "in-use" {
        return Err(refused(format!(
            "volume {id} is {}; it can be changed only when available or in-use",
            disk.status
        )));
    }
    Ok(disk)
}

/// Starts changing a disk's type; returns the retypeVolume job.
pub fn retype_volume(
    cloud: &Cloud,
    project: &str,
    id: &str,
    body: &[u8],
) -> Result<String, ApiError> {
    let req: RetypeBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("EVS.2108", format!("Request body is invalid. {e}")))?;
    let r = req.retype;
    let disk = changeable(cloud, project, id)?;
    if !RETYPE_TARGETS.contains(&r.new_type.as_str()) {
        return Err(ApiError::bad_request(
            "EVS.1020",
            format!(
                "invalid volume type {}; one of {}",
                r.new_type,
                RETYPE_TARGETS.join(", ")
            ),
        ));
    }
    if r.new_type == disk.volume_type {
        return Err(refused(format!("volume {id} is already {}", r.new_type)));
    }
    if SAS_BACKED.contains(&r.new_type.as_str()) && !SAS_BACKED.contains(&disk.volume_type.as_str())
    {
        return Err(ApiError::bad_request(
            "EVS.2087",
            format!(
                "retype failed. a {} disk is SSD-backed and cannot become {}",
                disk.volume_type, r.new_type
            ),
        ));
    }
    if r.new_type == "GPSSD2" && (r.iops.is_none() || r.throughput.is_none()) {
        return Err(refused("GPSSD2 needs iops and throughput"));
    }
    if r.new_type == "ESSD2" && r.iops.is_none() {
        return Err(refused("ESSD2 needs iops"));
    }
    let action = JobAction::RetypeVolume {
        new_type: r.new_type,
        iops: r.iops,
        throughput: r.throughput,
    };
    let mut inner = cloud.lock();
    let job_id = jobs::submit(&mut inner, &disk, action);
    cloud.commit(&mut inner)?;
    Ok(job_id)
}

/// Starts changing a GPSSD2 (IOPS and throughput) or ESSD2 (IOPS) disk's provisioned
/// performance; returns the job.
pub fn modify_qos(cloud: &Cloud, project: &str, id: &str, body: &[u8]) -> Result<String, ApiError> {
    let req: QosBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("EVS.2108", format!("Request body is invalid. {e}")))?;
    let q = req.qos_modify;
    let disk = changeable(cloud, project, id)?;
    match disk.volume_type.as_str() {
        "GPSSD2" => {}
        "ESSD2" if q.throughput.is_none() => {}
        "ESSD2" => return Err(refused("an ESSD2 disk has no provisioned throughput")),
        other => {
            return Err(refused(format!(
                "a {other} disk has no provisioned performance to change (GPSSD2 and ESSD2 only)"
            )));
        }
    }
    let action = JobAction::ModifyQos {
        iops: q.iops,
        throughput: q.throughput,
    };
    let mut inner = cloud.lock();
    let job_id = jobs::submit(&mut inner, &disk, action);
    cloud.commit(&mut inner)?;
    Ok(job_id)
}

/// `POST /v2/{p}/volumes/{id}/retype` → 202 `{"job_id"}`.
pub async fn retype_handler(
    State(cloud): State<Arc<Cloud>>,
    Path((project, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let job_id = retype_volume(&cloud, &project, &id, &body)?;
    jobs::start(cloud.clone(), job_id.clone());
    Ok((StatusCode::ACCEPTED, Json(json!({"job_id": job_id}))))
}

/// `PUT /v5/{p}/cloudvolumes/{id}/qos` → 202 `{"job_id"}`.
pub async fn qos_handler(
    State(cloud): State<Arc<Cloud>>,
    Path((project, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let job_id = modify_qos(&cloud, &project, &id, &body)?;
    jobs::start(cloud.clone(), job_id.clone());
    Ok((StatusCode::ACCEPTED, Json(json!({"job_id": job_id}))))
}
