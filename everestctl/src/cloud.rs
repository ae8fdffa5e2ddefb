//! The cloud side of `status` and `orphans`: every `evs` backend instance of the daemons'
//! configuration file (the same file, read the same way, as `everest-controller`), asked for its
//! disks with the backend's own client. Kinds that attach nothing are listed but not asked.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use everest_backend::daemon::config::{CommonArgs, ControllerConfig};
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
    /// Size in GiB.
    pub size_gib: u64,
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
    /// Whether its cloud side was read (only kinds that attach disks are).
    pub read: bool,
}

/// What the cloud says.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CloudView {
    /// Every configured instance.
    pub backends: Vec<CloudBackend>,
    /// Every disk of every `evs` instance.
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

/// Reads the configuration at `path` (with the `EVEREST_*` environment, as the daemons do) and
/// every `evs` instance's disks.
pub async fn read(path: &Path, progress: &mut dyn Write) -> Result<CloudView> {
    read_with(&load_config(path)?, progress).await
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

/// Reads every `evs` instance's disks, with the instances `config` lists.
pub async fn read_with(config: &ControllerConfig, progress: &mut dyn Write) -> Result<CloudView> {
    let mut view = CloudView::default();
    for (name, backend) in config
        .backends()
        .map_err(|e| Error::Config(e.to_string()))?
    {
        let is_evs = backend.kind == everest_evs::KIND;
        view.backends.push(CloudBackend {
            name: name.to_string(),
            kind: backend.kind.clone(),
            read: is_evs,
        });
        if !is_evs {
            continue;
        }
        writeln!(progress, "reading the disks of backend {name}")?;
        let cloud_error = |message: String| Error::Cloud {
            backend: name.to_string(),
            message,
        };
        let evs = EvsConfig::parse(name.as_str(), &backend.settings)
            .map_err(|e| Error::Config(e.to_string()))?;
        let client =
            EvsClient::from_credentials_file(evs.cloud.clone(), &evs.backend.credentials_file)
                .map_err(|e| cloud_error(e.to_string()))?
                .with_backend(name.as_str());
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
            view.disks.extend(page.volumes.into_iter().map(|v| {
                CloudDisk {
                    backend: name.to_string(),
                    managed_by_everest: v
                        .metadata
                        .get(MANAGED_BY_KEY)
                        .is_some_and(|m| m == "everest"),
                    attached_to: v.attachments.iter().map(|a| a.server_id.clone()).collect(),
                    status: v.status.as_str().to_owned(),
                    size_gib: v.size,
                    id: v.id,
                    name: v.name,
                    tags: v.tags,
                    created_at: v.created_at,
                }
            }));
            match page.next_marker {
                Some(next) => marker = Some(next),
                None => break,
            }
        }
    }
    Ok(view)
}
