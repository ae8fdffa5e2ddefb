//! EVS snapshots: create, read, list, delete (`/v2/{project_id}/cloudsnapshots`).

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::EvsClient;
use super::error::Result;
use everest_cloud::lenient;
use everest_cloud::{Call, Service};

/// The status of a snapshot; unknown values are kept, not rejected.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(from = "String")]
pub enum SnapshotStatus {
    /// `creating`: the copy is being made.
    Creating,
    /// `available`: a disk can be made from it.
    Available,
    /// `error`: creation failed.
    Error,
    /// `deleting`
    Deleting,
    /// `error_deleting`
    ErrorDeleting,
    /// Anything else (`rollbacking`, `backing-up`, …).
    Other(String),
}

impl SnapshotStatus {
    /// The wire form.
    pub fn as_str(&self) -> &str {
        match self {
            SnapshotStatus::Creating => "creating",
            SnapshotStatus::Available => "available",
            SnapshotStatus::Error => "error",
            SnapshotStatus::Deleting => "deleting",
            SnapshotStatus::ErrorDeleting => "error_deleting",
            SnapshotStatus::Other(s) => s,
        }
    }

    /// A state from which the cloud accepts a delete.
    pub fn is_deletable(&self) -> bool {
        matches!(self, SnapshotStatus::Available | SnapshotStatus::Error)
    }
}

impl From<String> for SnapshotStatus {
    fn from(s: String) -> Self {
        match s.as_str() {
            "creating" => SnapshotStatus::Creating,
            "available" => SnapshotStatus::Available,
            "error" => SnapshotStatus::Error,
            "deleting" => SnapshotStatus::Deleting,
            "error_deleting" => SnapshotStatus::ErrorDeleting,
            _ => SnapshotStatus::Other(s),
        }
    }
}

impl fmt::Display for SnapshotStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot as EVS describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Snapshot {
    /// The snapshot id.
    pub id: String,
    /// Its name.
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub name: String,
    /// Its status.
    pub status: SnapshotStatus,
    /// The size of its source disk when it was taken, GB.
    #[serde(default, deserialize_with = "lenient::flexible_u64")]
    pub size: u64,
    /// The disk it was taken of.
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub volume_id: String,
    /// Key/value metadata.
    #[serde(default, deserialize_with = "lenient::string_map")]
    pub metadata: BTreeMap<String, String>,
    /// Creation time.
    #[serde(default, deserialize_with = "lenient::timestamp")]
    pub created_at: Option<DateTime<Utc>>,
}

/// What to snapshot; serialised as the `snapshot` object of the create call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CreateSnapshot {
    /// The disk to snapshot.
    pub volume_id: String,
    /// The snapshot's name.
    pub name: String,
    /// A free-text description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Snapshot an attached (`in-use`) disk too.
    pub force: bool,
    /// Metadata.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// Filters of `list_snapshots`; empty fields are not sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotFilter {
    /// Exact name.
    pub name: Option<String>,
    /// Snapshots of this disk.
    pub volume_id: Option<String>,
    /// Page size, 1–1000.
    pub limit: Option<u32>,
    /// Skip this many (the snapshot listing pages by offset: the official SDK's
    /// `ListSnapshotsRequest` has `offset` and `limit`, no `marker`).
    pub offset: Option<u32>,
}

/// One page of snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPage {
    /// The snapshots.
    pub snapshots: Vec<Snapshot>,
    /// How many match the filter in all, when the cloud says.
    pub count: Option<u64>,
}

#[derive(Serialize)]
struct CreateBody<'a> {
    snapshot: &'a CreateSnapshot,
}

#[derive(Deserialize)]
struct Envelope {
    snapshot: Snapshot,
}

#[derive(Deserialize)]
struct ListEnvelope {
    #[serde(default, deserialize_with = "lenient::null_default")]
    snapshots: Vec<Snapshot>,
    #[serde(default)]
    count: Option<u64>,
}

impl SnapshotFilter {
    fn to_query(&self) -> Vec<(String, String)> {
        let mut q = Vec::new();
        if let Some(name) = &self.name {
            q.push(("name".into(), name.clone()));
        }
        if let Some(volume) = &self.volume_id {
            q.push(("volume_id".into(), volume.clone()));
        }
        if let Some(limit) = self.limit {
            q.push(("limit".into(), limit.to_string()));
        }
        if let Some(offset) = self.offset {
            q.push(("offset".into(), offset.to_string()));
        }
        q
    }
}

impl EvsClient {
    fn snapshots_path(&self, rest: &[&str]) -> Vec<String> {
        let mut path = vec![
            "v2".to_owned(),
            self.project_id().to_owned(),
            "cloudsnapshots".to_owned(),
        ];
        path.extend(rest.iter().map(|s| (*s).to_owned()));
        path
    }

    /// Starts a snapshot; the answer is the snapshot in status `creating` (no job to wait for:
    /// poll [`EvsClient::get_snapshot`]).
    pub async fn create_snapshot(&self, spec: &CreateSnapshot) -> Result<Snapshot> {
        let call = Call::new(
            Service::Evs,
            "create_snapshot",
            Method::POST,
            self.snapshots_path(&[]),
        )
        .json(&CreateBody { snapshot: spec })?;
        Ok(self
            .transport()
            .execute(&call)
            .await?
            .json::<Envelope>(&call)?
            .snapshot)
    }

    /// Reads a snapshot; `None` when it does not exist.
    pub async fn get_snapshot(&self, id: &str) -> Result<Option<Snapshot>> {
        let call = Call::new(
            Service::Evs,
            "get_snapshot",
            Method::GET,
            self.snapshots_path(&[id]),
        );
        match self.transport().execute(&call).await {
            Ok(reply) => Ok(Some(reply.json::<Envelope>(&call)?.snapshot)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Lists snapshots matching `filter` (one page).
    pub async fn list_snapshots(&self, filter: &SnapshotFilter) -> Result<SnapshotPage> {
        let mut call = Call::new(
            Service::Evs,
            "list_snapshots",
            Method::GET,
            self.snapshots_path(&["detail"]),
        );
        call.query = filter.to_query();
        let list: ListEnvelope = self.transport().execute(&call).await?.json(&call)?;
        Ok(SnapshotPage {
            snapshots: list.snapshots,
            count: list.count,
        })
    }

    /// Starts deleting a snapshot (202, no body); `false` when it is already gone.
    pub async fn delete_snapshot(&self, id: &str) -> Result<bool> {
        let call = Call::new(
            Service::Evs,
            "delete_snapshot",
            Method::DELETE,
            self.snapshots_path(&[id]),
        );
        match self.transport().execute(&call).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }
}
