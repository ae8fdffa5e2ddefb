//! Asynchronous jobs: submission, the timed runner, completion with real effects, and the API.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use chrono::Utc;
use serde_json::{Value, json};

use crate::cloud::{Cloud, Inner, server_name_of};
use crate::errors::ApiError;
use crate::state::{Attachment, Disk, Job, JobAction, JobStatus, job_time};

/// Records a new job for `disk` (status INIT) and returns its id.
pub fn submit(inner: &mut Inner, disk: &Disk, action: JobAction) -> String {
    let job_id = uuid::Uuid::new_v4().to_string();
    // An extendVolume job reports the size it grows the disk to.
    let size = match &action {
        JobAction::ExtendVolume { new_size, .. } => *new_size,
        _ => disk.size,
    };
    let job = Job {
        job_id: job_id.clone(),
        project_id: disk.project_id.clone(),
        action,
        status: JobStatus::Init,
        volume_id: disk.id.clone(),
        name: disk.name.clone(),
        size,
        volume_type: disk.volume_type.clone(),
        error_code: None,
        fail_reason: None,
        begin_time: Utc::now(),
        end_time: None,
    };
    inner.state.jobs.insert(job_id.clone(), job);
    job_id
}

/// Runs a job in the background: INIT, then RUNNING, then completion after the job latency.
pub fn start(cloud: Arc<Cloud>, job_id: String) {
    tokio::spawn(async move {
        let total = Duration::from_millis(cloud.cfg.job_latency_ms);
        tokio::time::sleep(total / 4).await;
        {
            let mut inner = cloud.lock();
            if let Some(job) = inner.state.jobs.get_mut(&job_id)
                && job.status == JobStatus::Init
            {
                job.status = JobStatus::Running;
                if let Err(e) = cloud.commit(&mut inner) {
                    tracing::warn!(%job_id, error = %e, "cannot persist RUNNING");
                }
            }
        }
        tokio::time::sleep(total - total / 4).await;
        // Completion runs losetup and file I/O: keep it off the async workers.
        let c = cloud.clone();
        let id = job_id.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || complete(&c, &id)).await {
            tracing::error!(%job_id, error = %e, "job completion panicked");
        }
    });
}

/// Restarts the runner for every job that was in flight when the emulator stopped.
pub fn resume_all(cloud: &Arc<Cloud>) {
    let pending: Vec<String> = cloud
        .lock()
        .state
        .jobs
        .values()
        .filter(|j| !j.status.finished())
        .map(|j| j.job_id.clone())
        .collect();
    for id in pending {
        tracing::info!(job_id = %id, "resuming job left in flight");
        start(cloud.clone(), id);
    }
}

/// Finishes a job: performs its effect, moves the disk to its next status, persists.
pub fn complete(cloud: &Cloud, job_id: &str) {
    let mut inner = cloud.lock();
    if inner.shutting_down {
        return;
    }
    let Some(job) = inner.state.jobs.get(job_id).cloned() else {
        return;
    };
    if job.status.finished() {
        return;
    }
    let outcome = apply(cloud, &mut inner, &job);
    if let Some(j) = inner.state.jobs.get_mut(job_id) {
        j.end_time = Some(Utc::now());
        match outcome {
            Ok(()) => j.status = JobStatus::Success,
            Err(reason) => {
                tracing::warn!(%job_id, job_type = job.action.job_type(), %reason, "job failed");
                j.status = JobStatus::Fail;
                j.error_code = Some(failure_code(&job.action).to_string());
                j.fail_reason = Some(reason);
            }
        }
    }
    if let Err(e) = cloud.commit(&mut inner) {
        tracing::error!(%job_id, error = %e, "cannot persist job completion");
    }
}

fn failure_code(action: &JobAction) -> &'static str {
    match action {
        JobAction::AttachVolume { .. } | JobAction::DetachVolume { .. } => "Ecs.0001",
        _ => "EVS.5500",
    }
}

/// Sets a disk's status and update time.
fn set_status(inner: &mut Inner, id: &str, status: &str) {
    if let Some(d) = inner.state.disks.get_mut(id) {
        d.status = status.to_string();
        d.updated_at = Utc::now();
    }
}

/// A blank sparse image, or a copy of the snapshot the disk is made from, grown to its size.
fn create_image(
    cloud: &Cloud,
    disk: &Disk,
    image: &std::path::Path,
) -> Result<(), crate::effects::EffectError> {
    let fx = &cloud.effects;
    match &disk.snapshot_id {
        None => fx.create_image(image, disk.bytes()),
        Some(snap) => {
            fx.copy_image(&cloud.snapshot_path(snap), image)?;
            fx.grow_image(image, disk.bytes()).inspect_err(|_| {
                let _ = fx.remove_image(image);
            })
        }
    }
}

fn apply(cloud: &Cloud, inner: &mut Inner, job: &Job) -> Result<(), String> {
    let id = job.volume_id.as_str();
    let disk = inner
        .state
        .disks
        .get(id)
        .cloned()
        .ok_or_else(|| format!("volume {id} vanished"))?;
    let image = cloud.image_path(id);
    let fx = &cloud.effects;
    match &job.action {
        JobAction::CreateVolume => match create_image(cloud, &disk, &image) {
            Ok(()) => {
                set_status(inner, id, "available");
                Ok(())
            }
            Err(e) => {
                set_status(inner, id, "error");
                Err(e.to_string())
            }
        },
        JobAction::DeleteVolume => match fx.remove_image(&image) {
            Ok(()) => {
                inner.state.disks.remove(id);
                Ok(())
            }
            Err(e) => {
                set_status(inner, id, "error_deleting");
                Err(e.to_string())
            }
        },
        JobAction::ExtendVolume {
            new_size,
            return_status,
        } => {
            let grown = fx
                .grow_image(&image, new_size * 1024 * 1024 * 1024)
                .and_then(|()| {
                    match disk
                        .attachment
                        .as_ref()
                        .and_then(|a| a.loop_device.as_deref())
                    {
                        Some(dev) => fx.refresh_loop(dev),
                        None => Ok(()),
                    }
                });
            match grown {
                Ok(()) => {
                    if let Some(d) = inner.state.disks.get_mut(id) {
                        d.size = *new_size;
                    }
                    set_status(inner, id, return_status);
                    Ok(())
                }
                Err(e) => {
                    set_status(inner, id, "error_extending");
                    Err(e.to_string())
                }
            }
        }
        JobAction::AttachVolume { server_id, device } => {
            // A remote server is another machine: the disk appears there, not here.
            let made = if cloud.is_local(server_id) {
                fx.attach_loop(&image).and_then(|dev| {
                    match fx.create_link(&cloud.link_path(id), &dev) {
                        Ok(()) => Ok(Some(dev)),
                        Err(e) => {
                            // Do not leak the loop device when the link cannot be made.
                            let _ = fx.detach_loop(&dev);
                            Err(e)
                        }
                    }
                })
            } else {
                Ok(None)
            };
            match made {
                Ok(dev) => {
                    let now = Utc::now();
                    if let Some(d) = inner.state.disks.get_mut(id) {
                        d.attachment = Some(Attachment {
                            attachment_id: uuid::Uuid::new_v4().to_string(),
                            server_id: server_id.clone(),
                            host_name: server_name_of(server_id),
                            device: device.clone(),
                            attached_at: now,
                            loop_device: dev,
                        });
                    }
                    set_status(inner, id, "in-use");
                    Ok(())
                }
                Err(e) => {
                    set_status(inner, id, "available");
                    Err(e.to_string())
                }
            }
        }
        JobAction::RetypeVolume {
            new_type,
            iops,
            throughput,
        } => {
            if let Some(d) = inner.state.disks.get_mut(id) {
                d.volume_type = new_type.clone();
                d.iops = *iops;
                d.throughput = *throughput;
                d.updated_at = Utc::now();
            }
            Ok(())
        }
        JobAction::ModifyQos { iops, throughput } => {
            if let Some(d) = inner.state.disks.get_mut(id) {
                d.iops = Some(*iops);
                if throughput.is_some() {
                    d.throughput = *throughput;
                }
                d.updated_at = Utc::now();
            }
            Ok(())
        }
        JobAction::DetachVolume { server_id } if !cloud.is_local(server_id) => {
            if let Some(d) = inner.state.disks.get_mut(id) {
                d.attachment = None;
            }
            set_status(inner, id, "available");
            Ok(())
        }
        JobAction::DetachVolume { .. } => {
            let removed = fx.remove_link(&cloud.link_path(id)).and_then(|()| {
                // Detach whatever loop device backs the image now (it may differ from the
                // recorded one after a host reboot).
                match fx.find_loop(&image)? {
                    Some(dev) => fx.detach_loop(&dev),
                    None => Ok(()),
                }
            });
            match removed {
                Ok(()) => {
                    if let Some(d) = inner.state.disks.get_mut(id) {
                        d.attachment = None;
                    }
                    set_status(inner, id, "available");
                    Ok(())
                }
                Err(e) => {
                    set_status(inner, id, "in-use");
                    Err(e.to_string())
                }
            }
        }
    }
}

/// The API view of a job. EVS jobs name the disk in `entities`; ECS jobs have the shape of
/// ECS's own job API (`server_id`, `sub_jobs_total`, `sub_jobs` whose entities hold
/// `server_id` and, on failure, `errorcode_message`): no disk id anywhere.
pub fn view(job: &Job) -> Value {
    let entities = match &job.action {
        JobAction::AttachVolume { server_id, .. } | JobAction::DetachVolume { server_id } => {
            let mut sub_entities = json!({"server_id": server_id});
            if let Some(reason) = &job.fail_reason {
                sub_entities["errorcode_message"] = json!(reason);
            }
            json!({
                "server_id": server_id,
                "sub_jobs_total": 1,
                "sub_jobs": [{
                    "job_id": format!("{}-1", job.job_id),
                    "job_type": job.action.job_type(),
                    "status": job.status,
                    "entities": sub_entities,
                    "begin_time": job_time(job.begin_time),
                    "end_time": job.end_time.map(job_time).unwrap_or_default(),
                    "error_code": job.error_code,
                    "fail_reason": job.fail_reason,
                }],
            })
        }
        _ => json!({
            "volume_id": job.volume_id,
            "name": job.name,
            "size": job.size,
            "volume_type": job.volume_type,
        }),
    };
    json!({
        "job_id": job.job_id,
        "job_type": job.action.job_type(),
        "status": job.status,
        "entities": entities,
        "error_code": job.error_code,
        "fail_reason": job.fail_reason,
        "begin_time": job_time(job.begin_time),
        "end_time": job.end_time.map(job_time).unwrap_or_default(),
    })
}

/// `GET /v1/{project_id}/jobs/{job_id}` (EVS and ECS jobs alike).
pub async fn get_job(
    State(cloud): State<Arc<Cloud>>,
    Path((project, job_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    cloud.check_project(&project)?;
    let inner = cloud.lock();
    inner
        .state
        .jobs
        .get(&job_id)
        .filter(|j| j.project_id == project)
        .map(|j| Json(view(j)))
        .ok_or_else(|| {
            ApiError::bad_request("Common.0011", format!("query job fail: no job {job_id}"))
        })
}
