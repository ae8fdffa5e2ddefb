//! The cloud side of `status` and `orphans`: every backend instance of the daemons'
//! configuration file (the same file, read the same way, as `everest-controller`). `evs`
//! instances are asked for their disks with the backend's own client (for both commands); for
//! `orphans`, the other kinds' instances are built as the controller builds them and asked for
//! the volumes they find by their marker ([`ControllerBackend::marked_volumes`]), so shares,
//! NFS directories, buckets and prefixes are read by the code that made them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use everest_backend::BackendName;
use everest_backend::ControllerBackend;
use everest_backend::capacity::GIB;
use everest_backend::daemon::config::{CommonArgs, ControllerConfig};
use everest_backend::marker::DeletePolicy;
use everest_backend::registry::BackendConfig;
use everest_evs::api::{EvsClient, VolumeFilter};
use everest_evs::config::EvsConfig;
use everest_evs::controller::MANAGED_BY_KEY;
use serde::{Serialize, Serializer};

use crate::error::{Error, Result};

/// One disk as the cloud reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CloudDisk {
    /// The backend instance it was read through.
    pub backend: String,
    /// The disk ID (the native part of its volume handle).
    pub id: String,
    /// The disk's name in the cloud.
    pub name: String,
    /// Size in bytes, where the service has one (a directory, a bucket have none).
    pub size_bytes: Option<u64>,
    /// The cloud's status word (`available`, `in-use`, …).
    pub status: String,
    /// Whether Everest created it (its metadata says so).
    pub managed_by_everest: bool,
    /// The servers it is attached to.
    pub attached_to: Vec<String>,
    /// Its tags, where Everest keeps its marker (see `docs/tags.md`).
    pub tags: BTreeMap<String, String>,
    /// When it was created, if the cloud says.
    #[serde(serialize_with = "rfc3339")]
    pub created_at: Option<DateTime<Utc>>,
    /// Other native IDs naming the same volume (its handle with another delete policy).
    pub aliases: Vec<String>,
    /// What the backend's delete does with it: always `delete` for a disk; for the other kinds
    /// what the marker records (`None`: it records nothing).
    pub on_delete: Option<DeletePolicy>,
}

/// A time as RFC 3339 in UTC, to the second (`2026-12-03T02:38:00Z`).
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn rfc3339<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    t.as_ref().map(format_time).serialize(s)
}

/// One configured backend instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CloudBackend {
    /// The instance name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Whether its cloud side was read.
    pub read: bool,
    /// Why reading it failed, when it was asked and failed.
    pub error: Option<String>,
}

/// What the cloud says.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CloudView {
    /// Every configured instance.
    pub backends: Vec<CloudBackend>,
    /// Every disk of every `evs` instance (and, for `orphans`, every volume the other
    /// instances found by marker).
    pub disks: Vec<CloudDisk>,
}

impl CloudView {
    /// The disk `id` of `backend`, if the cloud has it.
    pub fn disk(&self, backend: &str, id: &str) -> Option<&CloudDisk> {
        self.disks
            .iter()
            .find(|d| d.backend == backend && d.id == id)
    }

    /// Whether `backend` is configured and its disks were read.
    pub fn was_read(&self, backend: &str) -> bool {
        self.backends.iter().any(|b| b.name == backend && b.read)
    }
}

/// Which instances to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Only `evs` instances: the attachments `status` compares.
    Disks,
    /// Every instance, each kind for the volumes it marked (`orphans`).
    Everything,
}

/// Reads the configuration at `path` (with the `EVEREST_*` environment, as the daemons do) and
/// every `evs` instance's disks.
pub async fn read(path: &Path, progress: &mut dyn Write) -> Result<CloudView> {
    read_with(&load_config(path)?, Reach::Disks, progress).await
}

/// Reads the configuration at `path` as the controller does: the file, then the `EVEREST_*`
/// environment.
pub fn load_config(path: &Path) -> Result<ControllerConfig> {
    let args = CommonArgs {
        config: Some(path.to_owned()),
        ..CommonArgs::default()
    };
    ControllerConfig::load(&args, std::env::vars())
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// Reads what `reach` says of the instances `config` lists. A failing `evs` instance stops
/// the command (as before); another kind's failure is recorded on its instance and the others
/// are read, so one unreachable NFS server does not hide every other orphan.
pub async fn read_with(
    config: &ControllerConfig,
    reach: Reach,
    progress: &mut dyn Write,
) -> Result<CloudView> {
    let mut view = CloudView::default();
    for (name, backend) in config
        .backends()
        .map_err(|e| Error::Config(e.to_string()))?
    {
        let is_evs = backend.kind == everest_evs::KIND;
        let mut entry = CloudBackend {
            name: name.to_string(),
            kind: backend.kind.clone(),
            read: false,
            error: None,
        };
        if is_evs {
            writeln!(progress, "reading the disks of backend {name}")?;
            view.disks.extend(read_disks(&name, backend).await?);
            entry.read = true;
        } else if reach == Reach::Everything {
            writeln!(progress, "reading the volumes of backend {name}")?;
            match read_marked(&name, backend).await {
                Ok(found) => {
                    view.disks.extend(found);
                    entry.read = true;
                }
                Err(e) => entry.error = Some(e.to_string()),
            }
        }
        view.backends.push(entry);
    }
    Ok(view)
}

/// The volumes the instance finds by marker, through its controller side.
async fn read_marked(name: &BackendName, backend: &BackendConfig) -> Result<Vec<CloudDisk>> {
    let cloud_error = |message: String| Error::Cloud {
        backend: name.to_string(),
        message,
    };
    let controller: std::sync::Arc<dyn ControllerBackend> =
        everest_backends::controller(name, backend)
            .map_err(|e| cloud_error(format!("building its controller side: {e}")))?;
    let found = controller
        .marked_volumes()
        .await
        .map_err(|e| cloud_error(format!("listing its volumes: {e}")))?;
    Ok(found
        .into_iter()
        .map(|v| CloudDisk {
            backend: name.to_string(),
            id: v.native_id,
            name: v.name,
            size_bytes: v.size_bytes,
            status: String::new(),
            managed_by_everest: v.tags.contains_key(everest_backend::marker::CREATED_BY_KEY),
            // Nothing of these kinds is attached to a server.
            attached_to: Vec::new(),
            tags: v.tags,
            created_at: v.created_at.map(DateTime::<Utc>::from),
            aliases: v.aliases,
            on_delete: v.on_delete,
        })
        .collect())
}

/// Every disk of the `evs` instance `name`.
async fn read_disks(name: &BackendName, backend: &BackendConfig) -> Result<Vec<CloudDisk>> {
    let cloud_error = |message: String| Error::Cloud {
        backend: name.to_string(),
        message,
    };
    let evs = EvsConfig::parse(name.as_str(), &backend.settings)
        .map_err(|e| Error::Config(e.to_string()))?;
    let client = EvsClient::from_credentials_file(evs.cloud.clone(), &evs.backend.credentials_file)
        .map_err(|e| cloud_error(e.to_string()))?
        .with_backend(name.as_str());
    let mut disks = Vec::new();
    let mut marker = None;
    loop {
        let filter = VolumeFilter {
            limit: Some(1000),
            marker: marker.take(),
            ..VolumeFilter::default()
        };
        let page = client
            .list_volumes(&filter)
            .await
            .map_err(|e| cloud_error(format!("listing disks: {e}")))?;
        disks.extend(page.volumes.into_iter().map(|v| {
            CloudDisk {
                backend: name.to_string(),
                managed_by_everest: v
                    .metadata
                    .get(MANAGED_BY_KEY)
                    .is_some_and(|m| m == "everest"),
                attached_to: v.attachments.iter().map(|a| a.server_id.clone()).collect(),
                status: v.status.as_str().to_owned(),
                size_bytes: Some(v.size.saturating_mul(GIB)),
                id: v.id,
                name: v.name,
                tags: v.tags,
                created_at: v.created_at,
                aliases: Vec::new(),
                // A disk's DeleteVolume always deletes it: its handle has no policy.
                on_delete: Some(DeletePolicy::Delete),
            }
        }));
        match page.next_marker {
            Some(next) => marker = Some(next),
            None => return Ok(disks),
        }
    }
}
