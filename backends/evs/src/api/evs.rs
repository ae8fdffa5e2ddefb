//! EVS disks: create, read, list, delete, extend.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use percent_encoding::percent_decode_str;
use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::EvsClient;
use super::error::{Error, Result};
use everest_cloud::lenient;
use everest_cloud::{Call, Service};

/// The most ids one `list_volumes` call may filter on.
pub const MAX_IDS_PER_LIST: usize = 60;

/// The id of an asynchronous job.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(transparent)]
pub struct JobId(pub String);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The status of a disk; unknown values are kept, not rejected.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(from = "String")]
pub enum VolumeStatus {
    /// `creating`
    Creating,
    /// `available`: not attached, usable.
    Available,
    /// `in-use`: attached.
    InUse,
    /// `error`: creation failed.
    Error,
    /// `attaching`
    Attaching,
    /// `detaching`
    Detaching,
    /// `restoring-backup`
    RestoringBackup,
    /// `backing-up`
    BackingUp,
    /// `error_restoring`
    ErrorRestoring,
    /// `uploading`
    Uploading,
    /// `downloading`
    Downloading,
    /// `extending`
    Extending,
    /// `error_extending`
    ErrorExtending,
    /// `deleting`
    Deleting,
    /// `error_deleting`
    ErrorDeleting,
    /// `rollbacking`
    Rollbacking,
    /// `error_rollbacking`
    ErrorRollbacking,
    /// `awaiting-transfer`
    AwaitingTransfer,
    /// A value this client does not know.
    Other(String),
}

const STATUS_NAMES: &[(VolumeStatus, &str)] = &[
    (VolumeStatus::Creating, "creating"),
    (VolumeStatus::Available, "available"),
    (VolumeStatus::InUse, "in-use"),
    (VolumeStatus::Error, "error"),
    (VolumeStatus::Attaching, "attaching"),
    (VolumeStatus::Detaching, "detaching"),
    (VolumeStatus::RestoringBackup, "restoring-backup"),
    (VolumeStatus::BackingUp, "backing-up"),
    (VolumeStatus::ErrorRestoring, "error_restoring"),
    (VolumeStatus::Uploading, "uploading"),
    (VolumeStatus::Downloading, "downloading"),
    (VolumeStatus::Extending, "extending"),
    (VolumeStatus::ErrorExtending, "error_extending"),
    (VolumeStatus::Deleting, "deleting"),
    (VolumeStatus::ErrorDeleting, "error_deleting"),
    (VolumeStatus::Rollbacking, "rollbacking"),
    (VolumeStatus::ErrorRollbacking, "error_rollbacking"),
    (VolumeStatus::AwaitingTransfer, "awaiting-transfer"),
];

impl VolumeStatus {
    /// The wire form, e.g. `in-use`.
    pub fn as_str(&self) -> &str {
        match self {
            VolumeStatus::Other(s) => s,
            known => STATUS_NAMES
                .iter()
                .find(|(s, _)| s == known)
                .map(|(_, name)| *name)
                .unwrap_or_default(),
        }
    }

    /// One of the `error*` states.
    pub fn is_error(&self) -> bool {
        self.as_str().starts_with("error")
    }

    /// A state from which the cloud accepts a delete.
    pub fn is_deletable(&self) -> bool {
        matches!(
            self,
            VolumeStatus::Available
                | VolumeStatus::Error
                | VolumeStatus::ErrorExtending
                | VolumeStatus::ErrorRestoring
                | VolumeStatus::ErrorRollbacking
        )
    }
}

impl From<&str> for VolumeStatus {
    fn from(s: &str) -> Self {
        STATUS_NAMES
            .iter()
            .find(|(_, name)| *name == s)
            .map(|(status, _)| status.clone())
            .unwrap_or_else(|| VolumeStatus::Other(s.to_owned()))
    }
}

impl From<String> for VolumeStatus {
    fn from(s: String) -> Self {
        VolumeStatus::from(s.as_str())
    }
}

impl fmt::Display for VolumeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One attachment of a disk to a server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    /// The attachment's id.
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub attachment_id: String,
    /// The disk.
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub volume_id: String,
    /// The server it is attached to.
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub server_id: String,
    /// The server's host name.
    #[serde(default)]
    pub host_name: Option<String>,
    /// The device name the cloud reports, e.g. `/dev/vdb` (a hint; the guest may differ).
    #[serde(default)]
    pub device: Option<String>,
    /// When it was attached.
    #[serde(default, deserialize_with = "lenient::timestamp")]
    pub attached_at: Option<DateTime<Utc>>,
}

/// A disk as EVS describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Volume {
    /// The disk id.
    pub id: String,
    /// The disk name.
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub name: String,
    /// The disk status.
    pub status: VolumeStatus,
    /// Size in GB.
    #[serde(default, deserialize_with = "lenient::flexible_u64")]
    pub size: u64,
    /// e.g. `SSD`, `GPSSD`.
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub volume_type: String,
    /// The zone.
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub availability_zone: String,
    /// Whether the disk may attach to several servers.
    #[serde(default, deserialize_with = "lenient::flexible_bool")]
    pub multiattach: bool,
    /// Key/value metadata (includes `__system__encrypted`, `hw:passthrough`, …).
    #[serde(default, deserialize_with = "lenient::string_map")]
    pub metadata: BTreeMap<String, String>,
    /// Tags.
    #[serde(default, deserialize_with = "lenient::string_map")]
    pub tags: BTreeMap<String, String>,
    /// The WWN a SCSI disk shows in the guest.
    #[serde(default)]
    pub wwn: Option<String>,
    /// Whether the disk is encrypted.
    #[serde(default, deserialize_with = "lenient::flexible_bool")]
    pub encrypted: bool,
    /// Where it is attached.
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub attachments: Vec<Attachment>,
    /// The snapshot it was made from, if any.
    #[serde(default)]
    pub snapshot_id: Option<String>,
    /// Provisioned IOPS (GPSSD2, ESSD2): EVS sends `{"total_val": N, …}`.
    #[serde(default, deserialize_with = "provisioned")]
    pub iops: Option<u64>,
    /// Provisioned throughput in MiB/s (GPSSD2), in the same shape.
    #[serde(default, deserialize_with = "provisioned")]
    pub throughput: Option<u64>,
    /// Creation time.
    #[serde(default, deserialize_with = "lenient::timestamp")]
    pub created_at: Option<DateTime<Utc>>,
}

/// A provisioned figure: `{"total_val": N}` as EVS sends it, or a bare number; anything else
/// (absent, null, another shape) reads as unknown rather than failing the whole disk.
fn provisioned<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<u64>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(v.get("total_val").unwrap_or(&v).as_u64())
}

/// What to create; serialised as the `volume` object of the create call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CreateVolume {
    /// The zone.
    pub availability_zone: String,
    /// The disk type, e.g. `SSD`.
    pub volume_type: String,
    /// The disk name.
    pub name: String,
    /// A free-text description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Size in GB.
    pub size: u64,
    /// Metadata (encryption keys, `hw:passthrough`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Tags.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Provisioned IOPS (`GPSSD2`, `ESSD2`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iops: Option<u64>,
    /// Provisioned throughput in MiB/s (`GPSSD2`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput: Option<u64>,
    /// Shared disk.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub multiattach: bool,
    /// Create from this snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Place on this dedicated storage pool (sent as a scheduler hint).
    #[serde(skip)]
    pub dedicated_storage_id: Option<String>,
}

/// The answer to a create: the job to wait for and, from newer clouds, the disk ids.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CreateAccepted {
    /// The creation job.
    pub job_id: JobId,
    /// The new disks' ids when the cloud already says them.
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub volume_ids: Vec<String>,
}

/// Filters of `list_volumes`; empty fields are not sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeFilter {
    /// Exact name.
    pub name: Option<String>,
    /// Every pair must match.
    pub metadata: BTreeMap<String, String>,
    /// At most [`MAX_IDS_PER_LIST`] ids.
    pub ids: Vec<String>,
    /// Status.
    pub status: Option<VolumeStatus>,
    /// Zone.
    pub availability_zone: Option<String>,
    /// Attached to this server.
    pub server_id: Option<String>,
    /// Page size, 1–1000.
    pub limit: Option<u32>,
    /// Skip this many.
    pub offset: Option<u32>,
    /// Start after this disk id.
    pub marker: Option<String>,
}

/// One page of disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumePage {
    /// The disks.
    pub volumes: Vec<Volume>,
    /// The total the cloud reports, if it does.
    pub count: Option<u64>,
    /// Pass as `marker` to get the next page; `None` on the last page.
    pub next_marker: Option<String>,
}

#[derive(Deserialize)]
struct VolumeEnvelope {
    volume: Volume,
}

#[derive(Deserialize)]
struct ListEnvelope {
    #[serde(default, deserialize_with = "lenient::null_default")]
    volumes: Vec<Volume>,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default, deserialize_with = "lenient::null_default")]
    volumes_links: Vec<Link>,
}

/// One entry of a listing's `volumes_links`.
#[derive(Deserialize)]
struct Link {
    #[serde(default)]
    href: String,
    #[serde(default)]
    rel: String,
}

#[derive(Deserialize)]
pub(crate) struct JobAccepted {
    pub job_id: JobId,
}

#[derive(Serialize)]
struct CreateBody<'a> {
    volume: &'a CreateVolume,
    #[serde(
        rename = "OS-SCH-HNT:scheduler_hints",
        skip_serializing_if = "Option::is_none"
    )]
    hints: Option<Hints<'a>>,
}

#[derive(Serialize)]
struct Hints<'a> {
    dedicated_storage_id: &'a str,
}

/// Checks an id that goes into a list filter's quoted id list.
pub(crate) fn check_listed_id(id: &str) -> Result<()> {
    if id.is_empty() || id.contains(['\'', ',', '[', ']']) {
        return Err(Error::InvalidInput(format!(
            "{id:?} is not a valid disk id"
        )));
    }
    Ok(())
}

/// The marker in a `next` link, or else the last disk's id when a `next` link exists.
fn next_marker(links: &[Link], volumes: &[Volume]) -> Option<String> {
    let next = links.iter().find(|l| l.rel == "next")?;
    let query = next
        .href
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default();
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "marker")
        .map(|(_, v)| percent_decode_str(v).decode_utf8_lossy().into_owned())
        .or_else(|| volumes.last().map(|v| v.id.clone()))
}

impl VolumeFilter {
    fn to_query(&self) -> Result<Vec<(String, String)>> {
        let mut q = Vec::new();
        if let Some(name) = &self.name {
            q.push(("name".into(), name.clone()));
        }
        if !self.metadata.is_empty() {
            let json = serde_json::to_string(&self.metadata)
                .map_err(|e| Error::InvalidInput(format!("metadata filter: {e}")))?;
            q.push(("metadata".into(), json));
        }
        if !self.ids.is_empty() {
            if self.ids.len() > MAX_IDS_PER_LIST {
                return Err(Error::InvalidInput(format!(
                    "{} ids in one list call; at most {MAX_IDS_PER_LIST}",
                    self.ids.len()
                )));
            }
            for id in &self.ids {
                check_listed_id(id)?;
            }
            let quoted: Vec<String> = self.ids.iter().map(|id| format!("'{id}'")).collect();
            q.push(("ids".into(), format!("[{}]", quoted.join(","))));
        }
        if let Some(status) = &self.status {
            q.push(("status".into(), status.as_str().to_owned()));
        }
        if let Some(az) = &self.availability_zone {
            q.push(("availability_zone".into(), az.clone()));
        }
        if let Some(server) = &self.server_id {
            q.push(("server_id".into(), server.clone()));
        }
        if let Some(limit) = self.limit {
            q.push(("limit".into(), limit.to_string()));
        }
        if let Some(offset) = self.offset {
            q.push(("offset".into(), offset.to_string()));
        }
        if let Some(marker) = &self.marker {
            q.push(("marker".into(), marker.clone()));
        }
        Ok(q)
    }
}

impl EvsClient {
    fn volumes_path(&self, version: &str, rest: &[&str]) -> Vec<String> {
        let mut path = vec![
            version.to_owned(),
            self.project_id().to_owned(),
            "cloudvolumes".to_owned(),
        ];
        path.extend(rest.iter().map(|s| (*s).to_owned()));
        path
    }

    /// Starts creating a disk; `client_token` (a UUID) makes a repeated request create nothing new.
    pub async fn create_volume(
        &self,
        spec: &CreateVolume,
        client_token: Option<&str>,
    ) -> Result<CreateAccepted> {
        let body = CreateBody {
            volume: spec,
            hints: spec.dedicated_storage_id.as_deref().map(|id| Hints {
                dedicated_storage_id: id,
            }),
        };
        let mut call = Call::new(
            Service::Evs,
            "create_volume",
            Method::POST,
            self.volumes_path("v2.1", &[]),
        )
        .json(&body)?;
        if let Some(token) = client_token {
            call.headers.push(("X-Client-Token", token.to_owned()));
        }
        self.transport().execute(&call).await?.json(&call)
    }

    /// Reads a disk; `None` when it does not exist.
    pub async fn get_volume(&self, id: &str) -> Result<Option<Volume>> {
        let call = Call::new(
            Service::Evs,
            "get_volume",
            Method::GET,
            self.volumes_path("v2", &[id]),
        );
        match self.transport().execute(&call).await {
            Ok(reply) => Ok(Some(reply.json::<VolumeEnvelope>(&call)?.volume)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Lists disks matching `filter` (one page).
    pub async fn list_volumes(&self, filter: &VolumeFilter) -> Result<VolumePage> {
        let mut call = Call::new(
            Service::Evs,
            "list_volumes",
            Method::GET,
            self.volumes_path("v2", &["detail"]),
        );
        call.query = filter.to_query()?;
        let list: ListEnvelope = self.transport().execute(&call).await?.json(&call)?;
        let next_marker = next_marker(&list.volumes_links, &list.volumes);
        Ok(VolumePage {
            volumes: list.volumes,
            count: list.count,
            next_marker,
        })
    }

    /// Starts deleting a disk; `None` when it is already gone.
    pub async fn delete_volume(&self, id: &str) -> Result<Option<JobId>> {
        let call = Call::new(
            Service::Evs,
            "delete_volume",
            Method::DELETE,
            self.volumes_path("v2", &[id]),
        );
        match self.transport().execute(&call).await {
            Ok(reply) => Ok(Some(reply.json::<JobAccepted>(&call)?.job_id)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Starts changing a disk's type (with the provisioned IOPS and throughput a GPSSD2 or
    /// ESSD2 disk needs): `POST /v2/{p}/volumes/{id}/retype`.
    pub async fn retype_volume(
        &self,
        id: &str,
        new_type: &str,
        iops: Option<u64>,
        throughput: Option<u64>,
    ) -> Result<JobId> {
        let mut retype = serde_json::json!({"new_type": new_type});
        if let Some(iops) = iops {
            retype["iops"] = iops.into();
        }
        if let Some(tp) = throughput {
            retype["throughput"] = tp.into();
        }
        let path = vec![
            "v2".to_owned(),
            self.project_id().to_owned(),
            "volumes".to_owned(),
            id.to_owned(),
            "retype".to_owned(),
        ];
        let call = Call::new(Service::Evs, "retype_volume", Method::POST, path)
            .json(&serde_json::json!({"os-retype": retype}))?;
        Ok(self
            .transport()
            .execute(&call)
            .await?
            .json::<JobAccepted>(&call)?
            .job_id)
    }

    /// Starts changing a GPSSD2/ESSD2 disk's provisioned IOPS (and GPSSD2 throughput):
    /// `PUT /v5/{p}/cloudvolumes/{id}/qos`.
    pub async fn modify_qos(&self, id: &str, iops: u64, throughput: Option<u64>) -> Result<JobId> {
        let mut qos = serde_json::json!({"iops": iops});
        if let Some(tp) = throughput {
            qos["throughput"] = tp.into();
        }
        let call = Call::new(
            Service::Evs,
            "modify_qos",
            Method::PUT,
            self.volumes_path("v5", &[id, "qos"]),
        )
        .json(&serde_json::json!({"qos_modify": qos}))?;
        Ok(self
            .transport()
            .execute(&call)
            .await?
            .json::<JobAccepted>(&call)?
            .job_id)
    }

    /// Starts growing a disk to `new_size_gb`.
    pub async fn extend_volume(&self, id: &str, new_size_gb: u64) -> Result<JobId> {
        let body = serde_json::json!({"os-extend": {"new_size": new_size_gb}});
        let call = Call::new(
            Service::Evs,
            "extend_volume",
            Method::POST,
            self.volumes_path("v2.1", &[id, "action"]),
        )
        .json(&body)?;
        Ok(self
            .transport()
            .execute(&call)
            .await?
            .json::<JobAccepted>(&call)?
            .job_id)
    }
}

#[cfg(test)]
mod tests;
