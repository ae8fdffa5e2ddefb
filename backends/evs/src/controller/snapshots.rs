//! EVS snapshots behind the seam: taken by request name (found again by name and metadata, so
//! a retried CreateSnapshot returns the same snapshot), ready when the cloud says `available`,
//! deleted and waited for until gone, listed in ID order with `after:<id>` tokens; and the
//! source a disk is restored from.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use everest_backend::backend::CreateVolume;
use everest_backend::capacity::GIB;
use everest_backend::snapshot::{CreateSnapshot, Snapshot as CsiSnapshot, SnapshotPage};
use everest_backend::{Error, Result};
use everest_cloud::backoff::WaitPace;

use super::placement::requisite_zones;
use super::{CLONE_OF_KEY, CSI_NAME_KEY, EvsController, MANAGED_BY_KEY, MAX_GIB, page_after};
use crate::api::{
    CreateSnapshot as ApiCreateSnapshot, Snapshot, SnapshotFilter, SnapshotStatus, Volume,
};
use crate::params::EvsParams;

/// What a disk restored from a snapshot must be: EVS makes it in the snapshot's zone, of its
/// source disk's type, at least its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Restore {
    /// The snapshot to restore.
    pub snapshot_id: String,
    /// The disk type (the source disk's).
    pub volume_type: String,
    /// The zone (the source disk's).
    pub zone: String,
    /// The size, GiB: the request's, raised to the snapshot's.
    pub gib: u64,
    /// For a clone: the disk cloned (the snapshot is a temporary one, deleted once the clone
    /// exists).
    pub clone_of: Option<String>,
}

/// The `everest.io/managed-by` value of a clone's temporary snapshot: not the driver's
/// `everest`, so ListSnapshots leaves it out.
const CLONE_SNAPSHOT_MANAGER: &str = "everest-clone";

/// The request name a clone's temporary snapshot is found by.
fn clone_snapshot_name(request_name: &str) -> String {
    format!("clone/{request_name}")
}

fn to_csi(s: &Snapshot) -> CsiSnapshot {
    CsiSnapshot {
        native_id: s.id.clone(),
        source_native_id: s.volume_id.clone(),
        size_bytes: s.size * GIB,
        // EVS always reports it; the epoch only stands in for a reply that lacks it.
        created_at: s.created_at.map_or(UNIX_EPOCH, SystemTime::from),
        ready: s.status == SnapshotStatus::Available,
    }
}

fn failed(s: &Snapshot, what: &str) -> Error {
    Error::FailedPrecondition(format!(
        "snapshot {} is in status {}, which only an operator can clear ({what}); delete it in the cloud console or ask support",
        s.id,
        s.status.as_str()
    ))
}

impl EvsController {
    async fn find_snapshot_by_request_name(&self, request_name: &str) -> Result<Option<Snapshot>> {
        let filter = SnapshotFilter {
            name: Some(self.disk_name(request_name)),
            ..SnapshotFilter::default()
        };
        let mut found: Vec<Snapshot> = self
            .client
            .list_snapshots(&filter)
            .await?
            .snapshots
            .into_iter()
            .filter(|s| s.metadata.get(CSI_NAME_KEY).map(String::as_str) == Some(request_name))
            .collect();
        if found.len() > 1 {
            return Err(Error::Internal(format!(
                "{} snapshots carry CSI name {request_name}; remove the extra ones by hand",
                found.len()
            )));
        }
        Ok(found.pop())
    }

    /// Every snapshot this driver took (of one disk, when `volume_id` is set), following the
    /// cloud's pages.
    async fn all_managed_snapshots(&self, volume_id: Option<&str>) -> Result<Vec<Snapshot>> {
        const PAGE: u32 = 1000;
        let mut all = Vec::new();
        let mut offset = 0;
        loop {
            let filter = SnapshotFilter {
                volume_id: volume_id.map(str::to_owned),
                limit: Some(PAGE),
                offset: Some(offset),
                ..SnapshotFilter::default()
            };
            let page = self.client.list_snapshots(&filter).await?;
            let got = u32::try_from(page.snapshots.len()).unwrap_or(u32::MAX);
            offset = offset.saturating_add(got);
            all.extend(
                page.snapshots.into_iter().filter(|s| {
                    s.metadata.get(MANAGED_BY_KEY).map(String::as_str) == Some("everest")
                }),
            );
            if got < PAGE {
                return Ok(all);
            }
        }
    }

    /// Polls a snapshot until `done` says so (→ its last state, `None` when gone) or the job
    /// timeout passes; transient failures slow the polling, as for disks.
    async fn wait_for_snapshot(
        &self,
        id: &str,
        what: &str,
        done: impl Fn(Option<&Snapshot>) -> bool,
    ) -> Result<Option<Snapshot>> {
        let mut pace = WaitPace::new(self.client.config(), self.config.backend.job_timeout());
        loop {
            let failed = match pace.poll(self.client.get_snapshot(id)).await {
                None => false,
                Some(Ok(s)) if done(s.as_ref()) => return Ok(s),
                Some(Ok(_)) => false,
                Some(Err(e)) if WaitPace::is_transient(&e) => true,
                Some(Err(e)) => {
                    return Err(
                        Error::from(e).context(format!("waiting for snapshot {id} to be {what}"))
                    );
                }
            };
            if !pace.pause(failed).await {
                return Err(Error::DeadlineExceeded(format!(
                    "snapshot {id} is not {what} after {:?}; retry",
                    pace.waited()
                )));
            }
        }
    }

    /// CreateSnapshot: the snapshot of this name, or a new one of the source disk (attached or
    /// not: `force`, as Kubernetes snapshots volumes in use).
    pub(super) async fn take_snapshot(&self, req: &CreateSnapshot) -> Result<CsiSnapshot> {
        if let Some(key) = req.parameters.keys().next() {
            return Err(Error::InvalidArgument(format!(
                "VolumeSnapshotClass parameter {key} is not known to backend {} (it takes none of its own)",
                self.name
            )));
        }
        if let Some(existing) = self.find_snapshot_by_request_name(&req.name).await? {
            if existing.volume_id != req.source_native_id {
                return Err(Error::AlreadyExists(format!(
                    "snapshot {} already exists as {} of disk {}, not of disk {}",
                    req.name, existing.id, existing.volume_id, req.source_native_id
                )));
            }
            if existing.status == SnapshotStatus::Error {
                return Err(failed(&existing, "its creation failed"));
            }
            return Ok(to_csi(&existing));
        }
        if self
            .client
            .get_volume(&req.source_native_id)
            .await?
            .is_none()
        {
            return Err(Error::NotFound(format!(
                "disk {} does not exist on backend {}",
                req.source_native_id, self.name
            )));
        }
        let k8s = &req.k8s;
        let description = match (&k8s.namespace, &k8s.name) {
            (Some(ns), Some(name)) => {
                format!("Kubernetes VolumeSnapshot {ns}/{name} (Everest CSI)")
            }
            _ => format!("Kubernetes snapshot {} (Everest CSI)", req.name),
        };
        let spec = ApiCreateSnapshot {
            volume_id: req.source_native_id.clone(),
            name: self.disk_name(&req.name),
            description: Some(description),
            force: true,
            metadata: BTreeMap::from([
                (CSI_NAME_KEY.to_owned(), req.name.clone()),
                (MANAGED_BY_KEY.to_owned(), "everest".to_owned()),
            ]),
        };
        let made = self.client.create_snapshot(&spec).await.map_err(|e| {
            Error::from(e).context(format!("snapshotting disk {}", req.source_native_id))
        })?;
        tracing::debug!(snapshot = %made.id, disk = %made.volume_id, status = %made.status, "took snapshot");
        Ok(to_csi(&made))
    }

    /// DeleteSnapshot: deletes it (or lets a delete in flight finish) and waits until it is gone.
    pub(super) async fn drop_snapshot(&self, id: &str) -> Result<()> {
        let Some(s) = self.client.get_snapshot(id).await? else {
            return Ok(());
        };
        match &s.status {
            SnapshotStatus::Deleting => {}
            st if st.is_deletable() => {
                self.client
                    .delete_snapshot(id)
                    .await
                    .map_err(|e| Error::from(e).context(format!("deleting snapshot {id}")))?;
            }
            SnapshotStatus::ErrorDeleting => return Err(failed(&s, "its deletion failed")),
            other => {
                return Err(Error::Unavailable(format!(
                    "snapshot {id} is {}; retry once it settles",
                    other.as_str()
                )));
            }
        }
        let left = self
            .wait_for_snapshot(id, "deleted", |s| {
                s.is_none_or(|s| s.status == SnapshotStatus::ErrorDeleting)
            })
            .await?;
        match left {
            Some(stuck) => Err(failed(&stuck, "its deletion failed")),
            None => Ok(()),
        }
    }

    /// EVS keeps a disk's snapshots with the disk and refuses to delete a disk that has any:
    /// FAILED_PRECONDITION naming them, as CSI asks of a volume that "has snapshots and the
    /// plugin doesn't treat them as independent entities".
    pub(super) async fn refuse_if_snapshotted(&self, disk_id: &str) -> Result<()> {
        let filter = SnapshotFilter {
            volume_id: Some(disk_id.to_owned()),
            limit: Some(10),
            ..SnapshotFilter::default()
        };
        let page = self.client.list_snapshots(&filter).await?;
        if page.snapshots.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = page.snapshots.iter().map(|s| s.id.as_str()).collect();
        let more = if page.count.is_some_and(|n| n > page.snapshots.len() as u64) {
            " and more"
        } else {
            ""
        };
        Err(Error::FailedPrecondition(format!(
            "disk {disk_id} has snapshots ({}{more}), and EVS deletes a disk only after its snapshots; delete those VolumeSnapshots (or restore what you need and delete them) first",
            ids.join(", ")
        )))
    }

    /// One snapshot; `None` when it does not exist.
    pub(super) async fn read_snapshot(&self, id: &str) -> Result<Option<CsiSnapshot>> {
        Ok(self.client.get_snapshot(id).await?.as_ref().map(to_csi))
    }

    /// ListSnapshots: this driver's snapshots in ID order, paged like ListVolumes.
    pub(super) async fn snapshot_page(
        &self,
        source: Option<&str>,
        starting_token: Option<&str>,
        max_entries: u32,
    ) -> Result<SnapshotPage> {
        let all = self.all_managed_snapshots(source).await?;
        let (page, next_token) = page_after(all, |s| &s.id, starting_token, max_entries)?;
        Ok(SnapshotPage {
            entries: page.iter().map(to_csi).collect(),
            next_token,
        })
    }

    /// What a disk restored from `snapshot_id` must be, checked against the request: the
    /// snapshot must exist (NOT_FOUND) and be available (UNAVAILABLE while it is being made),
    /// the StorageClass's type and zone, if it names them, must be the source disk's, and the
    /// size reaches at least the snapshot's (OUT_OF_RANGE when the limit forbids).
    pub(super) async fn restore_from(
        &self,
        req: &CreateVolume,
        snapshot_id: &str,
        params: &EvsParams,
    ) -> Result<Restore> {
        let snap = self
            .client
            .get_snapshot(snapshot_id)
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "snapshot {snapshot_id} does not exist on backend {}",
                    self.name
                ))
            })?;
        match &snap.status {
            SnapshotStatus::Available => {}
            SnapshotStatus::Creating => {
                return Err(Error::Unavailable(format!(
                    "snapshot {snapshot_id} is still being made; retry once it is ready"
                )));
            }
            _ => return Err(failed(&snap, "it cannot be restored")),
        }
        let source: Volume = self.client.get_volume(&snap.volume_id).await?.ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "the disk {} that snapshot {snapshot_id} was taken of is gone; EVS needs its type and zone to restore",
                snap.volume_id
            ))
        })?;
        let what = format!("snapshot {snapshot_id}");
        let (volume_type, zone, gib) = self.inherit(req, params, source, snap.size, &what)?;
        Ok(Restore {
            snapshot_id: snapshot_id.to_owned(),
            volume_type,
            zone,
            gib,
            clone_of: None,
        })
    }

    /// What a disk made from `source`'s content must be, checked against the request (`what`
    /// names the source in errors): EVS makes it of the source's type, in its zone, at least
    /// `min_gib`, and takes encryption from the source. Answers the type, zone and size.
    fn inherit(
        &self,
        req: &CreateVolume,
        params: &EvsParams,
        source: Volume,
        min_gib: u64,
        what: &str,
    ) -> Result<(String, String, u64)> {
        if let Some(wanted) = params
            .volume_type
            .as_ref()
            .filter(|t| **t != source.volume_type)
        {
            return Err(Error::InvalidArgument(format!(
                "the StorageClass asks for disk type {wanted}, but {what} is of a {} disk, and EVS makes a disk from it only of that type; use a StorageClass of type {} (or none)",
                source.volume_type, source.volume_type
            )));
        }
        if params.kms_key_id.is_some() {
            return Err(Error::InvalidArgument(format!(
                "a disk made from {what} takes its encryption from it; the StorageClass must not set a KMS key"
            )));
        }
        let zone = source.availability_zone;
        if let Some(fixed) = params.availability_zone.as_ref().filter(|z| **z != zone) {
            return Err(Error::InvalidArgument(format!(
                "{what} is in zone {zone}, but the StorageClass places disks in {fixed}; EVS makes a disk from it only in that zone"
            )));
        }
        let requisite = requisite_zones(req);
        if !requisite.is_empty() && !requisite.contains(&zone) {
            return Err(Error::InvalidArgument(format!(
                "{what} is in zone {zone}, which is not among the zones the claim can use ({})",
                requisite.join(", ")
            )));
        }
        let gib = req
            .capacity
            .to_gib(
                self.config.backend.default_size_gib,
                min_gib.max(super::MIN_GIB),
                MAX_GIB,
            )
            .map_err(|e| e.context(format!("making a disk from {what} of {min_gib} GiB")))?;
        Ok((source.volume_type, zone, gib))
    }

    /// A clone of disk `source_id`: EVS has no disk-to-disk copy, so the clone is restored from
    /// a temporary snapshot of the source, taken under a name derived from the request (found
    /// again on a retry) and kept out of ListSnapshots; [`EvsController::finish_clone`] deletes
    /// it once the clone exists.
    pub(super) async fn clone_source(
        &self,
        req: &CreateVolume,
        source_id: &str,
        params: &EvsParams,
    ) -> Result<Restore> {
        let source = self.client.get_volume(source_id).await?.ok_or_else(|| {
            Error::NotFound(format!(
                "disk {source_id} to clone does not exist on backend {}",
                self.name
            ))
        })?;
        // A retry that names another source is refused before anything is snapshotted.
        if let Some(existing) = self.find_by_request_name(&req.name).await?
            && !super::existing::is_failed_create(&existing)
            && existing.metadata.get(CLONE_OF_KEY).map(String::as_str) != Some(source_id)
        {
            return Err(Error::AlreadyExists(format!(
                "volume {} already exists as disk {}, which is not a clone of disk {source_id}",
                req.name, existing.id
            )));
        }
        let what = format!("disk {source_id}");
        let source_gib = source.size;
        let (volume_type, zone, gib) = self.inherit(req, params, source, source_gib, &what)?;
        let temp_name = clone_snapshot_name(&req.name);
        let snap = match self.find_snapshot_by_request_name(&temp_name).await? {
            Some(s) if s.volume_id == source_id => s,
            Some(s) => {
                return Err(Error::AlreadyExists(format!(
                    "volume {} is being cloned from disk {}, not {source_id}",
                    req.name, s.volume_id
                )));
            }
            None => {
                let spec = ApiCreateSnapshot {
                    volume_id: source_id.to_owned(),
                    name: self.disk_name(&temp_name),
                    description: Some(format!(
                        "temporary: the content of clone {} (Everest CSI)",
                        req.name
                    )),
                    force: true,
                    metadata: BTreeMap::from([
                        (CSI_NAME_KEY.to_owned(), temp_name.clone()),
                        (MANAGED_BY_KEY.to_owned(), CLONE_SNAPSHOT_MANAGER.to_owned()),
                    ]),
                };
                self.client.create_snapshot(&spec).await.map_err(|e| {
                    Error::from(e).context(format!("snapshotting disk {source_id} to clone it"))
                })?
            }
        };
        let snap = self
            .wait_for_snapshot(&snap.id, "available", |s| {
                s.is_none_or(|s| s.status != SnapshotStatus::Creating)
            })
            .await?
            .ok_or_else(|| {
                Error::Unavailable(format!(
                    "the temporary snapshot of disk {source_id} vanished; retry"
                ))
            })?;
        if snap.status != SnapshotStatus::Available {
            return Err(failed(&snap, "a temporary snapshot for a clone"));
        }
        Ok(Restore {
            snapshot_id: snap.id,
            volume_type,
            zone,
            gib,
            clone_of: Some(source_id.to_owned()),
        })
    }

    /// After a clone exists: deletes its temporary snapshot (the source may be deleted then).
    pub(super) async fn finish_clone(&self, restore: Option<&Restore>) -> Result<()> {
        match restore {
            Some(r) if r.clone_of.is_some() => self.drop_snapshot(&r.snapshot_id).await,
            _ => Ok(()),
        }
    }
}
