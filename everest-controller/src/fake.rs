//! A controller backend that keeps volumes in memory, for the unit tests of routing and listing.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use everest_backend::backend::{
    BackendKind, Capabilities, ControllerPublish, CreateVolume, Expanded, ListedVolume, Volume,
    VolumePage,
};
use everest_backend::capability::{AccessMode, VolumeCapability};
use everest_backend::capacity::CapacityRange;
use everest_backend::secrets::Secrets;
use everest_backend::snapshot::{CreateSnapshot, Snapshot, SnapshotPage, VolumeSource};
use everest_backend::{ControllerBackend, Error, Result};

/// Volumes by native ID; single-node access modes only, like a cloud disk. Snapshots (when
/// its capabilities say so) are kept by request name, which is also their native ID.
#[derive(Debug)]
pub struct FakeBackend {
    volumes: Mutex<BTreeMap<String, ListedVolume>>,
    snapshots: Mutex<BTreeMap<String, Snapshot>>,
    capabilities: Capabilities,
}

impl Default for FakeBackend {
    fn default() -> Self {
        Self {
            volumes: Mutex::default(),
            snapshots: Mutex::default(),
            capabilities: Capabilities {
                expand: true,
                node_expand: true,
                list: true,
                snapshots: true,
                clone: true,
                modify: true,
                access_modes: &[
                    AccessMode::SingleNodeWriter,
                    AccessMode::SingleNodeSingleWriter,
                ],
            },
        }
    }
}

impl FakeBackend {
    /// A backend holding volumes with these native IDs.
    pub fn with(ids: &[&str]) -> Self {
        let fake = Self::default();
        for id in ids {
            fake.add(id);
        }
        fake
    }

    /// A backend of a kind that neither grows nor lists its volumes and serves ReadWriteOnce only.
    pub fn limited(ids: &[&str]) -> Self {
        let fake = Self {
            capabilities: Capabilities {
                expand: false,
                node_expand: false,
                list: false,
                snapshots: false,
                clone: false,
                modify: false,
                access_modes: &[AccessMode::SingleNodeWriter],
            },
            ..Self::default()
        };
        for id in ids {
            fake.add(id);
        }
        fake
    }

    fn add(&self, id: &str) {
        let v = ListedVolume {
            volume: Volume {
                native_id: id.to_owned(),
                capacity_bytes: 1 << 30,
                context: BTreeMap::new(),
                topology: Vec::new(),
            },
            published_nodes: Vec::new(),
            abnormal: None,
        };
        self.lock().insert(id.to_owned(), v);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ListedVolume>> {
        self.volumes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl ControllerBackend for FakeBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Block
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    fn check_capabilities(&self, caps: &[VolumeCapability]) -> Result<()> {
        match caps.iter().find(|c| c.access_mode.is_multi_node()) {
            Some(c) => Err(Error::InvalidArgument(format!(
                "access mode {:?} is not supported",
                c.access_mode
            ))),
            None => Ok(()),
        }
    }

    async fn create_volume(&self, req: &CreateVolume) -> Result<Volume> {
        match &req.source {
            Some(VolumeSource::Volume(v)) => drop(self.get_volume(v).await?),
            Some(VolumeSource::Snapshot(s)) if self.get_snapshot(s).await?.is_none() => {
                return Err(Error::NotFound(format!("snapshot {s} does not exist")));
            }
            _ => {}
        }
        self.add(&req.name);
        Ok(self.lock()[&req.name].volume.clone())
    }

    async fn delete_volume(&self, native_id: &str, _: &Secrets) -> Result<()> {
        self.lock().remove(native_id);
        Ok(())
    }

    async fn publish(&self, req: &ControllerPublish) -> Result<BTreeMap<String, String>> {
        self.get_volume(&req.native_id).await?;
        Ok([("node".to_owned(), req.node_id.clone())].into())
    }

    async fn unpublish(&self, _: &str, _: Option<&str>) -> Result<()> {
        Ok(())
    }

    async fn expand(&self, native_id: &str, capacity: CapacityRange) -> Result<Expanded> {
        self.get_volume(native_id).await?;
        Ok(Expanded {
            capacity_bytes: capacity.required_bytes,
            node_expansion_required: true,
        })
    }

    async fn get_volume(&self, native_id: &str) -> Result<ListedVolume> {
        self.lock()
            .get(native_id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("volume {native_id} does not exist")))
    }

    /// Pages by position; the token is the index of the next volume.
    async fn list_volumes(&self, token: Option<&str>, max: u32) -> Result<VolumePage> {
        let start: usize = match token {
            None => 0,
            Some(t) => t
                .parse()
                .map_err(|_| Error::Aborted(format!("bad token {t:?}")))?,
        };
        let all: Vec<ListedVolume> = self.lock().values().cloned().collect();
        let end = if max == 0 {
            all.len()
        } else {
            (start + max as usize).min(all.len())
        };
        Ok(VolumePage {
            entries: all.get(start..end).unwrap_or_default().to_vec(),
            next_token: (end < all.len()).then(|| end.to_string()),
        })
    }

    async fn probe(&self) -> Result<()> {
        Ok(())
    }

    async fn modify_volume(&self, native_id: &str, _: &BTreeMap<String, String>) -> Result<()> {
        self.get_volume(native_id).await.map(drop)
    }

    async fn create_snapshot(&self, req: &CreateSnapshot) -> Result<Snapshot> {
        let source = self.get_volume(&req.source_native_id).await?;
        let mut snapshots = self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = snapshots.get(&req.name) {
            if s.source_native_id != req.source_native_id {
                return Err(Error::AlreadyExists(format!(
                    "snapshot {} is of volume {}",
                    req.name, s.source_native_id
                )));
            }
            return Ok(s.clone());
        }
        let s = Snapshot {
            native_id: req.name.clone(),
            source_native_id: req.source_native_id.clone(),
            size_bytes: source.volume.capacity_bytes,
            created_at: std::time::UNIX_EPOCH,
            ready: true,
        };
        snapshots.insert(req.name.clone(), s.clone());
        Ok(s)
    }

    async fn delete_snapshot(&self, native_id: &str, _: &Secrets) -> Result<()> {
        self.snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(native_id);
        Ok(())
    }

    async fn get_snapshot(&self, native_id: &str) -> Result<Option<Snapshot>> {
        Ok(self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(native_id)
            .cloned())
    }

    /// Pages by position, like its volumes.
    async fn list_snapshots(
        &self,
        source: Option<&str>,
        token: Option<&str>,
        max: u32,
    ) -> Result<SnapshotPage> {
        let start: usize = match token {
            None => 0,
            Some(t) => t
                .parse()
                .map_err(|_| Error::Aborted(format!("bad token {t:?}")))?,
        };
        let all: Vec<Snapshot> = self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|s| source.is_none_or(|v| s.source_native_id == v))
            .cloned()
            .collect();
        let end = if max == 0 {
            all.len()
        } else {
            (start + max as usize).min(all.len())
        };
        Ok(SnapshotPage {
            entries: all.get(start..end).unwrap_or_default().to_vec(),
            next_token: (end < all.len()).then(|| end.to_string()),
        })
    }
}
