//! The cloud's persisted state: disks, jobs, SFS Turbo shares, idempotency tokens and IAM
//! token hashes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One attachment of a disk to a server, with its host-side effects.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    /// Attachment id.
    pub attachment_id: String,
    /// The server it is attached to.
    pub server_id: String,
    /// The server's host name.
    pub host_name: String,
    /// The device name the cloud reports (`/dev/vdb`).
    pub device: String,
    /// When it was attached.
    pub attached_at: DateTime<Utc>,
    /// The loop device standing in for the virtio disk (`/dev/loopN`).
    pub loop_device: Option<String>,
}

/// A disk (EVS volume).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Disk {
    /// Volume id (UUID).
    pub id: String,
    /// Owning project.
    pub project_id: String,
    /// Creation order, for a stable listing order.
    pub seq: u64,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Size in GB (GiB).
    pub size: u64,
    /// Volume type (SSD, GPSSD, ...).
    pub volume_type: String,
    /// Zone.
    pub availability_zone: String,
    /// Status string (`creating`, `available`, `in-use`, ...).
    pub status: String,
    /// Shareable disk.
    pub multiattach: bool,
    /// Metadata key/values.
    pub metadata: BTreeMap<String, String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Provisioned IOPS (GPSSD2/ESSD2).
    pub iops: Option<u64>,
    /// Provisioned throughput in MiB/s (GPSSD2).
    pub throughput: Option<u64>,
    /// World wide name (for SCSI-style names).
    pub wwn: String,
    /// Source snapshot, if any.
    pub snapshot_id: Option<String>,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Updated at.
    pub updated_at: DateTime<Utc>,
    /// The attachment, if attached (disks are not multi-attached here).
    pub attachment: Option<Attachment>,
}

impl Disk {
    /// Whether the disk is encrypted (EVS derives this from `__system__encrypted`).
    pub fn encrypted(&self) -> bool {
        self.metadata.get("__system__encrypted").map(String::as_str) == Some("1")
    }

    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.size * 1024 * 1024 * 1024
    }
}

/// Job status values.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum JobStatus {
    /// Accepted, not started.
    Init,
    /// In progress.
    Running,
    /// Done.
    Success,
    /// Failed.
    Fail,
}

impl JobStatus {
    /// Whether the job has ended.
    pub fn finished(self) -> bool {
        matches!(self, JobStatus::Success | JobStatus::Fail)
    }
}

/// What a job does when it completes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobAction {
    /// Make the disk image, then `available`.
    CreateVolume,
    /// Remove the image and the disk.
    DeleteVolume,
    /// Grow the image (and refresh the loop device), then back to `return_status`.
    ExtendVolume {
        /// The new size in GB.
        new_size: u64,
        /// `available` or `in-use`.
        return_status: String,
    },
    /// Attach a loop device and make the by-id link, then `in-use`.
    AttachVolume {
        /// Target server.
        server_id: String,
        /// Reserved device name.
        device: String,
    },
    /// Remove the link and the loop device, then `available`.
    DetachVolume {
        /// The server it was attached to.
        server_id: String,
    },
    /// Change the disk's type (and its provisioned performance) in place.
    RetypeVolume {
        /// The new type.
        new_type: String,
        /// The new provisioned IOPS (GPSSD2/ESSD2).
        iops: Option<u64>,
        /// The new provisioned throughput (GPSSD2).
        throughput: Option<u64>,
    },
    /// Change the provisioned IOPS and throughput in place.
    ModifyQos {
        /// The new provisioned IOPS.
        iops: u64,
        /// The new provisioned throughput, if given.
        throughput: Option<u64>,
    },
}

impl JobAction {
    /// The `job_type` the API reports.
    pub fn job_type(&self) -> &'static str {
        match self {
            JobAction::CreateVolume => "createVolume",
            JobAction::DeleteVolume => "deleteVolume",
            JobAction::ExtendVolume { .. } => "extendVolume",
            JobAction::AttachVolume { .. } => "attachVolume",
            JobAction::DetachVolume { .. } => "detachVolume",
            JobAction::RetypeVolume { .. } => "retypeVolume",
            JobAction::ModifyQos { .. } => "modifyVolumeQos",
        }
    }
}

/// An asynchronous job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Job {
    /// Job id.
    pub job_id: String,
    /// Owning project.
    pub project_id: String,
    /// What it does.
    pub action: JobAction,
    /// Current status.
    pub status: JobStatus,
    /// The disk it works on.
    pub volume_id: String,
    /// Disk name/size/type at submission, reported in `entities`.
    pub name: String,
    /// Size in GB.
    pub size: u64,
    /// Volume type.
    pub volume_type: String,
    /// Error code when failed.
    pub error_code: Option<String>,
    /// Failure reason when failed.
    pub fail_reason: Option<String>,
    /// Submitted at.
    pub begin_time: DateTime<Utc>,
    /// Finished at.
    pub end_time: Option<DateTime<Utc>>,
}

/// A remembered `X-Client-Token` create request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientToken {
    /// The job it produced.
    pub job_id: String,
    /// The volumes it produced.
    pub volume_ids: Vec<String>,
    /// Hash of the request body, to detect a conflicting reuse.
    pub body_hash: String,
    /// First seen.
    pub created_at: DateTime<Utc>,
}

/// An issued IAM token, stored by hash so no usable token is ever on disk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    /// The scoped project.
    pub project_id: String,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
}

/// An operation on a share that completes after the job latency (SFS Turbo has no job API:
/// clients poll the share's `status` and `sub_status`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ShareOp {
    /// Make the directory, then status `200` (or `303` when creation fails).
    Create,
    /// Grow to `new_size` GiB, then sub_status `221`.
    Extend {
        /// The new size in GiB.
        new_size: u64,
    },
    /// Remove the directory and the share.
    Delete,
}

/// An SFS Turbo share (file system).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Share {
    /// Share id (UUID).
    pub id: String,
    /// Owning project.
    pub project_id: String,
    /// Creation order, for a stable listing order.
    pub seq: u64,
    /// Name (unique in the project).
    pub name: String,
    /// Description.
    pub description: String,
    /// Size in GiB.
    pub size: u64,
    /// `NFS`.
    pub share_proto: String,
    /// `STANDARD` or `PERFORMANCE`.
    pub share_type: String,
    /// Zone.
    pub availability_zone: String,
    /// VPC.
    pub vpc_id: String,
    /// Subnet.
    pub subnet_id: String,
    /// Security group.
    pub security_group_id: String,
    /// Metadata key/values (`crypt_key_id`, `expand_type`, ...).
    pub metadata: BTreeMap<String, String>,
    /// Tags, set through the tag API after creation (absent from older state files).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Status code string: `100` creating, `200` available, `303` create failed, ...
    pub status: String,
    /// Sub-status code string: `121` expanding, `221` expanded, `321` expand failed.
    pub sub_status: Option<String>,
    /// The operation in flight, if any.
    pub pending: Option<ShareOp>,
    /// Created at.
    pub created_at: DateTime<Utc>,
}

/// An operation on a snapshot that completes after the job latency (EVS snapshots have no
/// job: clients poll the snapshot's `status`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SnapshotOp {
    /// Copy the disk image, then `available` (or `error` when the copy fails).
    Create,
    /// Remove the copy and the snapshot (or `error_deleting`).
    Delete,
}

/// An EVS snapshot: a point-in-time copy of a disk's image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    /// Snapshot id (UUID).
    pub id: String,
    /// Owning project.
    pub project_id: String,
    /// Creation order, for a stable listing order.
    pub seq: u64,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// The source disk.
    pub volume_id: String,
    /// The source disk's size when the snapshot was taken, GiB.
    pub size: u64,
    /// The source disk's type (a disk made from the snapshot must have the same).
    pub volume_type: String,
    /// The source disk's zone.
    pub availability_zone: String,
    /// Status string (`creating`, `available`, `error`, `deleting`, `error_deleting`).
    pub status: String,
    /// Metadata key/values.
    pub metadata: BTreeMap<String, String>,
    /// The operation in flight, if any.
    pub pending: Option<SnapshotOp>,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Updated at.
    pub updated_at: DateTime<Utc>,
}

/// Everything the cloud remembers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// Disks by id.
    pub disks: BTreeMap<String, Disk>,
    /// Jobs by id.
    pub jobs: BTreeMap<String, Job>,
    /// SFS Turbo shares by id (absent in state files from before shares existed).
    #[serde(default)]
    pub shares: BTreeMap<String, Share>,
    /// EVS snapshots by id (absent in state files from before snapshots existed).
    #[serde(default)]
    pub snapshots: BTreeMap<String, Snapshot>,
    /// Idempotency tokens.
    pub client_tokens: BTreeMap<String, ClientToken>,
    /// IAM tokens by SHA-256 hex.
    pub tokens: BTreeMap<String, TokenRecord>,
    /// Next creation sequence number.
    pub next_seq: u64,
}

/// Where the state lives on disk.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// How long finished jobs, client tokens and expired IAM tokens are remembered.
const RETENTION_HOURS: i64 = 24;

impl Store {
    /// A store rooted at the state dir (creates it and `disks/`).
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("disks"))?;
        std::fs::create_dir_all(dir.join("snapshots"))?;
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    /// The state file.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The image file of a disk.
    pub fn image_path(&self, disk_id: &str) -> PathBuf {
        self.dir.join("disks").join(format!("{disk_id}.img"))
    }

    /// The image file of a snapshot (a copy of its disk's image).
    pub fn snapshot_path(&self, snapshot_id: &str) -> PathBuf {
        self.dir
            .join("snapshots")
            .join(format!("{snapshot_id}.img"))
    }

    /// Loads the state, or an empty one if there is none yet.
    pub fn load(&self) -> std::io::Result<State> {
        match std::fs::read(self.state_file()) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e),
        }
    }

    /// Writes the state atomically (temp file, rename), so a kill mid-write leaves the old
    /// state whole.
    ///
    /// No fsync: what the state must survive is the emulator's own restart, and the page cache
    /// outlives a process. An fsync per call, under the one cloud lock, made the whole cloud
    /// serial at about 7 ms a call, which a real cloud is not (60 attaches took 2.3 × a job).
    pub fn save(&self, state: &State) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(state).map_err(std::io::Error::other)?;
        let tmp = self.dir.join("state.json.tmp");
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, self.state_file())
    }
}

impl State {
    /// Drops finished jobs, client tokens and IAM tokens past retention.
    pub fn prune(&mut self, now: DateTime<Utc>) {
        let horizon = now - chrono::Duration::hours(RETENTION_HOURS);
        self.jobs
            .retain(|_, j| j.end_time.is_none_or(|end| end > horizon));
        self.client_tokens.retain(|_, t| t.created_at > horizon);
        self.tokens.retain(|_, t| t.expires_at > now);
    }

    /// A disk of `project`; another project's disk is as absent as a missing one.
    pub fn project_disk(&self, project: &str, id: &str) -> Option<&Disk> {
        self.disks.get(id).filter(|d| d.project_id == project)
    }

    /// A snapshot of `project`; another project's snapshot is as absent as a missing one.
    pub fn project_snapshot(&self, project: &str, id: &str) -> Option<&Snapshot> {
        self.snapshots.get(id).filter(|s| s.project_id == project)
    }

    /// The snapshots taken of a disk, in any status.
    pub fn snapshots_of(&self, disk_id: &str) -> Vec<&Snapshot> {
        self.snapshots
            .values()
            .filter(|s| s.volume_id == disk_id)
            .collect()
    }

    /// A share of `project`; another project's share is as absent as a missing one.
    pub fn project_share(&self, project: &str, id: &str) -> Option<&Share> {
        self.shares.get(id).filter(|s| s.project_id == project)
    }

    /// [`State::project_share`], for changing it.
    pub fn project_share_mut(&mut self, project: &str, id: &str) -> Option<&mut Share> {
        self.shares.get_mut(id).filter(|s| s.project_id == project)
    }

    /// [`State::project_disk`], for changing it.
    pub fn project_disk_mut(&mut self, project: &str, id: &str) -> Option<&mut Disk> {
        self.disks.get_mut(id).filter(|d| d.project_id == project)
    }

    /// The attachment-bearing or attaching disks of a server, with their devices.
    pub fn devices_in_use(&self, server_id: &str) -> Vec<String> {
        let attached = self
            .disks
            .values()
            .filter_map(|d| d.attachment.as_ref())
            .filter(|a| a.server_id == server_id)
            .map(|a| a.device.clone());
        let pending = self
            .jobs
            .values()
            .filter(|j| !j.status.finished())
            .filter_map(|j| match &j.action {
                JobAction::AttachVolume {
                    server_id: s,
                    device,
                } if s == server_id => Some(device.clone()),
                _ => None,
            });
        attached.chain(pending).collect()
    }
}

/// `2016-05-25T02:42:10.856332` — EVS's timestamp form (UTC, microseconds, no zone).
pub fn evs_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

/// `2016-05-25T02:42:10.856Z` — the jobs API's form (UTC, milliseconds).
pub fn job_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_and_load_round_trip_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap(), State::default());
        let mut s = State {
            next_seq: 7,
            ..State::default()
        };
        s.tokens.insert(
            "h".into(),
            TokenRecord {
                project_id: "p".into(),
                expires_at: Utc::now(),
            },
        );
        store.save(&s).unwrap();
        assert!(!dir.path().join("state.json.tmp").exists());
        assert_eq!(store.load().unwrap(), s);
    }

    #[test]
    fn evs_time_has_microseconds_and_no_zone() {
        let t = DateTime::parse_from_rfc3339("2016-05-25T02:42:10.856332Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(evs_time(t), "2016-05-25T02:42:10.856332");
    }
}
