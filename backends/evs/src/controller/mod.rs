//! The controller side of EVS: disks are created, attached, extended and deleted through the
//! cloud API. Every operation first reads the disk's current state, so a retried call (after a
//! timeout, a leader change or a controller crash) finishes the job instead of repeating it.

use std::collections::BTreeMap;
use std::future::Future;

use async_trait::async_trait;
use everest_backend::backend::{
    BackendKind, Capabilities, ControllerBackend, ControllerPublish, CreateVolume, Expanded,
    ListedVolume, Topology, Volume as CsiVolume, VolumePage as CsiPage, ZONE_TOPOLOGY_KEY,
};
use everest_backend::capability::VolumeCapability;
use everest_backend::capacity::{CapacityRange, GIB};
use everest_backend::marker::EVS_TAGS;
use everest_backend::params::FSTYPE_KEY;
use everest_backend::secrets::Secrets;
use everest_backend::snapshot::{
    CreateSnapshot, Snapshot as CsiSnapshot, SnapshotPage, VolumeSource,
};
use everest_backend::{BackendName, Error, Result};

use crate::api::{
    self, Attachment, CreateVolume as ApiCreate, EvsClient, Job, JobId, Service, Volume,
    VolumeFilter, VolumeStatus, VolumeWait,
};
use crate::capabilities::{check_capability, storage_class_fs_type};
use crate::config::EvsConfig;
use crate::params::EvsParams;

mod effect;
mod existing;
mod modify;
mod naming;
mod placement;
mod snapshots;

use effect::Effect;
use existing::{is_failed_create, stuck_in_error};

/// Metadata key holding the CSI request name a disk was created for (the idempotency key).
pub const CSI_NAME_KEY: &str = "everest.io/csi-name";
/// Metadata key naming the disk a clone was made from.
pub const CLONE_OF_KEY: &str = "everest.io/clone-of";
/// Metadata key marking disks this driver manages, for ListVolumes.
pub const MANAGED_BY_KEY: &str = "everest.io/managed-by";
/// Publish-context key: the disk's WWN, for SCSI (passthrough) disks.
pub const WWN_CONTEXT_KEY: &str = "everest.io/wwn";
/// Publish-context key: the device path the cloud reports (informational; the node trusts by-id links).
pub const DEVICE_CONTEXT_KEY: &str = "DevicePath";
/// Disk metadata key: `1` when the disk is encrypted.
const ENCRYPTED_KEY: &str = "__system__encrypted";
/// Disk metadata key: the KMS key an encrypted disk uses.
const CMK_ID_KEY: &str = "__system__cmkid";
/// The ECS code for "this server does not exist" (the node was deleted).
const SERVER_GONE_CODE: &str = "Ecs.0114";
/// ListVolumes tokens of this backend: `after:<the last disk ID listed>`.
const LIST_TOKEN_PREFIX: &str = "after:";
/// EVS data disks are 10–32768 GB.
const MIN_GIB: u64 = 10;
const MAX_GIB: u64 = 32768;

/// The controller side of one `evs` backend instance.
#[derive(Debug)]
pub struct EvsController {
    name: BackendName,
    client: EvsClient,
    config: EvsConfig,
}

impl EvsController {
    /// Builds the controller side from a parsed config and a client.
    pub fn new(name: BackendName, config: EvsConfig, client: EvsClient) -> Self {
        Self {
            name,
            client,
            config,
        }
    }

    async fn find_by_request_name(&self, request_name: &str) -> Result<Option<Volume>> {
        let filter = VolumeFilter {
            name: Some(self.disk_name(request_name)),
            metadata: BTreeMap::from([(CSI_NAME_KEY.to_owned(), request_name.to_owned())]),
            ..VolumeFilter::default()
        };
        let mut found: Vec<Volume> = self
            .client
            .list_volumes(&filter)
            .await?
            .volumes
            .into_iter()
            .filter(|v| v.metadata.get(CSI_NAME_KEY).map(String::as_str) == Some(request_name))
            .collect();
        if found.len() > 1 {
            return Err(Error::Internal(format!(
                "{} disks carry CSI name {request_name}; remove the extra ones by hand",
                found.len()
            )));
        }
        Ok(found.pop())
    }

    async fn get(&self, disk_id: &str) -> Result<Volume> {
        self.client.get_volume(disk_id).await?.ok_or_else(|| {
            Error::NotFound(format!(
                "disk {disk_id} does not exist on backend {}",
                self.name
            ))
        })
    }

    /// Waits until the disk is in a state `done` accepts; `None` from the cloud means gone.
    async fn wait_until(
        &self,
        disk_id: &str,
        what: &str,
        done: impl Fn(Option<&Volume>) -> VolumeWait + Send + 'static,
    ) -> Result<Option<Volume>> {
        self.client
            .wait_for_volume(what, disk_id, done, self.config.backend.job_timeout())
            .await
            .map_err(|e| Error::from(e).context(format!("waiting for disk {disk_id} to be {what}")))
    }

    /// Every disk this driver manages, following the cloud's pages (1000 disks a call).
    async fn all_managed_disks(&self) -> Result<Vec<Volume>> {
        let mut disks = Vec::new();
        let mut marker = None;
        loop {
            let filter = VolumeFilter {
                metadata: BTreeMap::from([(MANAGED_BY_KEY.to_owned(), "everest".to_owned())]),
                limit: Some(1000),
                marker: marker.take(),
                ..VolumeFilter::default()
            };
            let page = self.client.list_volumes(&filter).await?;
            disks.extend(page.volumes);
            match page.next_marker {
                Some(next) => marker = Some(next),
                None => return Ok(disks),
            }
        }
    }

    /// Waits until the disk satisfies `ready`; an error status or a vanished disk ends the wait.
    async fn settle(
        &self,
        disk_id: &str,
        what: &str,
        ready: impl Fn(&Volume) -> bool + Send + 'static,
    ) -> Result<Volume> {
        self.wait_until(disk_id, what, move |v| match v {
            Some(v) if ready(v) => VolumeWait::Done,
            Some(v) if v.status.is_error() => {
                VolumeWait::Failed(format!("status {}", v.status.as_str()))
            }
            Some(_) => VolumeWait::Pending,
            None => VolumeWait::Failed("the disk disappeared".into()),
        })
        .await?
        .ok_or_else(|| Error::NotFound(format!("disk {disk_id} disappeared while becoming {what}")))
    }

    /// Starts an asynchronous cloud operation and waits for its job; `None` means there was
    /// nothing to do (e.g. the disk was already detached). Errors say what was attempted.
    async fn run_job(
        &self,
        service: Service,
        what: &str,
        start: impl Future<Output = api::Result<Option<JobId>>>,
    ) -> Result<Option<Job>> {
        let attempted = |e: api::Error| Error::from(e).context(what);
        let Some(job) = start.await.map_err(attempted)? else {
            return Ok(None);
        };
        self.client
            .wait_for_job(service, &job, self.config.backend.job_timeout())
            .await
            .map(Some)
            .map_err(attempted)
    }

    /// Starts attaching the disk to the node (→ the ECS job). A node ECS does not know is
    /// NOT_FOUND, as CSI wants; the attach call says so, so no separate server read is needed.
    async fn start_attach(&self, disk_id: &str, node_id: &str) -> Result<JobId> {
        self.client
            .attach_volume(node_id, disk_id)
            .await
            .map_err(|e| {
                if e.code()
                    .is_some_and(|c| c.eq_ignore_ascii_case(SERVER_GONE_CODE))
                {
                    Error::NotFound(format!("node {node_id} is not a server of this project"))
                } else {
                    Error::from(e).context(format!("attaching disk {disk_id} to node {node_id}"))
                }
            })
    }

    /// Sends one create with `token` and waits until the disk is usable; `None` when the disk
    /// the create names no longer exists.
    ///
    /// The wait watches the disk, not the job: disks share their polls with every other wait
    /// of the instance (60 to a call), jobs cannot.
    async fn create_disk(
        &self,
        create: &ApiCreate,
        token: &str,
        what: &str,
    ) -> Result<Option<Volume>> {
        let attempted = |e: api::Error| Error::from(e).context(what);
        let accepted = self
            .client
            .create_volume(create, Some(token))
            .await
            .map_err(attempted)?;
        let Some(disk_id) = accepted.volume_ids.first().cloned() else {
            // An older cloud names the new disk only in its job.
            return self.create_disk_by_job(&accepted.job_id, None, what).await;
        };
        let seen = self
            .client
            .wait_for_volume(
                "created",
                &disk_id,
                |v| match v {
                    // A replayed create's disk may be attached by now.
                    Some(v) if is_usable(v) => VolumeWait::Done,
                    Some(v) if v.status.is_error() => {
                        VolumeWait::Failed(format!("status {}", v.status.as_str()))
                    }
                    Some(_) => VolumeWait::Pending,
                    None => VolumeWait::Done,
                },
                self.config.backend.job_timeout(),
            )
            .await;
        match seen {
            Ok(Some(disk)) => Ok(Some(disk)),
            // Not listed: deleted since (a replayed token), or not listed yet by a cloud that
            // lists late. Creating anew on a guess could leak a disk: the job says which.
            Ok(None) => {
                self.create_disk_by_job(&accepted.job_id, Some(disk_id), what)
                    .await
            }
            // The job carries the cloud's reason; it has ended, so this is one call.
            Err(failed @ api::Error::ResourceFailed { .. }) => {
                match self
                    .client
                    .wait_for_job(
                        Service::Evs,
                        &accepted.job_id,
                        self.config.backend.job_timeout(),
                    )
                    .await
                {
                    Err(job_failed) => Err(attempted(job_failed)),
                    Ok(_) => Err(attempted(failed)),
                }
            }
            Err(e) => Err(attempted(e)),
        }
    }

    /// Waits for a create's job, then reads the disk it made (`known` when the create's answer
    /// named it); `None` when that disk no longer exists.
    async fn create_disk_by_job(
        &self,
        job: &JobId,
        known: Option<String>,
        what: &str,
    ) -> Result<Option<Volume>> {
        let job = self
            .run_job(Service::Evs, what, async { Ok(Some(job.clone())) })
            .await?
            .ok_or_else(|| Error::Internal(format!("{what}: the cloud returned no job")))?;
        let disk_id = job
            .volume_id()
            .map(str::to_owned)
            .or(known)
            .ok_or_else(|| {
                Error::Internal(format!(
                    "{what}: job {} succeeded without naming the disk",
                    job.job_id
                ))
            })?;
        Ok(self.client.get_volume(&disk_id).await?)
    }

    fn to_csi(&self, v: &Volume) -> CsiVolume {
        CsiVolume {
            native_id: v.id.clone(),
            capacity_bytes: v.size * GIB,
            context: BTreeMap::from([(
                "everest.io/disk-volume-type".to_owned(),
                v.volume_type.clone(),
            )]),
            topology: vec![Topology::from([(
                ZONE_TOPOLOGY_KEY.to_owned(),
                v.availability_zone.clone(),
            )])],
        }
    }

    fn listed(&self, v: &Volume) -> ListedVolume {
        ListedVolume {
            volume: self.to_csi(v),
            published_nodes: v.attachments.iter().map(|a| a.server_id.clone()).collect(),
            abnormal: v
                .status
                .is_error()
                .then(|| format!("disk {} is in status {}", v.id, v.status.as_str())),
        }
    }

    fn publish_context(v: &Volume, attachment: &Attachment) -> BTreeMap<String, String> {
        let mut ctx = BTreeMap::new();
        if let Some(device) = &attachment.device {
            ctx.insert(DEVICE_CONTEXT_KEY.to_owned(), device.clone());
        }
        if let Some(wwn) = v.wwn.as_ref().filter(|w| !w.is_empty()) {
            ctx.insert(WWN_CONTEXT_KEY.to_owned(), wwn.clone());
        }
        ctx
    }

    /// Deletes a disk (unless its delete is already `in_progress`) and waits until it is gone.
    async fn remove_disk(&self, disk_id: &str, in_progress: bool) -> Result<()> {
        if !in_progress {
            // The disk's own status says how the delete ends (gone, or `error_deleting`): its
            // job need not be polled, and the disk's looks are shared with other waits.
            self.client
                .delete_volume(disk_id)
                .await
                .map_err(|e| Error::from(e).context(format!("deleting disk {disk_id}")))?;
        }
        // A disk that falls into `error_deleting` ends the wait as seen, to be reported as stuck.
        match self
            .wait_until(disk_id, "deleted", |v| match v {
                None => VolumeWait::Done,
                Some(v) if v.status == VolumeStatus::ErrorDeleting => VolumeWait::Done,
                Some(_) => VolumeWait::Pending,
            })
            .await?
        {
            Some(stuck) => Err(stuck_in_error(&stuck, "DeleteVolume")),
            None => Ok(()),
        }
    }
}

/// One page of `items` in ID order after the token's ID (`after:<id>`), at most `max` of them
/// (0: all), and the token for the next page. Items created or deleted while a listing pages
/// through neither shift a page (as an offset would) nor break the listing (as a cloud
/// `marker` naming a deleted item would): an item that exists throughout is listed once.
fn page_after<T>(
    mut items: Vec<T>,
    id: impl Fn(&T) -> &String,
    starting_token: Option<&str>,
    max: u32,
) -> Result<(Vec<T>, Option<String>)> {
    let after = match starting_token {
        None | Some("") => None,
        Some(t) => Some(t.strip_prefix(LIST_TOKEN_PREFIX).ok_or_else(|| {
            Error::Aborted(format!(
                "starting_token {t:?} is not one this backend issued"
            ))
        })?),
    };
    items.sort_by(|a, b| id(a).cmp(id(b)));
    items.retain(|i| after.is_none_or(|a| id(i).as_str() > a));
    let take = if max == 0 {
        items.len()
    } else {
        items.len().min(max as usize)
    };
    let more = take < items.len();
    items.truncate(take);
    let next = more
        .then(|| {
            items
                .last()
                .map(|i| format!("{LIST_TOKEN_PREFIX}{}", id(i)))
        })
        .flatten();
    Ok((items, next))
}

/// Settled and usable: not creating, extending, attaching or detaching.
fn is_usable(v: &Volume) -> bool {
    matches!(v.status, VolumeStatus::Available | VolumeStatus::InUse)
}

#[async_trait]
impl ControllerBackend for EvsController {
    fn kind(&self) -> BackendKind {
        BackendKind::Block
    }

    fn capabilities(&self) -> Capabilities {
        crate::capabilities::CAPABILITIES
    }

    fn check_capabilities(&self, caps: &[VolumeCapability]) -> Result<()> {
        caps.iter().try_for_each(check_capability)
    }

    async fn create_volume(&self, req: &CreateVolume) -> Result<CsiVolume> {
        let params = EvsParams::parse(&req.parameters, self.name.as_str())?;
        let restore = match &req.source {
            None => None,
            Some(VolumeSource::Snapshot(id)) => Some(self.restore_from(req, id, &params).await?),
            Some(VolumeSource::Volume(src)) => Some(self.clone_source(req, src, &params).await?),
        };
        let gib = match &restore {
            Some(r) => r.gib,
            None => req
                .capacity
                .to_gib(self.config.backend.default_size_gib, MIN_GIB, MAX_GIB)?,
        };
        self.check_capabilities(&req.capabilities)?;
        let fs_type = storage_class_fs_type(req.common.fs_type.as_deref(), &req.capabilities)?;
        // The node formats with it when the capability it gets names no filesystem.
        let to_csi = |disk: &Volume| {
            let mut v = self.to_csi(disk);
            if let Some(fs) = &fs_type {
                v.context.insert(FSTYPE_KEY.to_owned(), fs.clone());
            }
            v
        };

        let mut token = self.client_token(&req.name);
        if let Some(existing) = self.find_by_request_name(&req.name).await? {
            if !is_failed_create(&existing) {
                self.check_existing(req, &existing, gib, &params, restore.as_ref())?;
                let ready = self.settle(&existing.id, "available", is_usable).await?;
                self.finish_clone(restore.as_ref()).await?;
                return Ok(to_csi(&ready));
            }
            // The cloud failed to create this disk: it never held data and will never become
            // available, so settling on it would fail on every retry while it leaks. Remove it
            // (or finish removing it, after a retry) and create anew.
            tracing::warn!(disk = %existing.id, status = %existing.status, volume = %req.name, "removing a disk whose creation failed");
            self.remove_disk(&existing.id, existing.status == VolumeStatus::Deleting)
                .await?;
            // The stable token belongs to the attempt that failed: replayed, it could only answer
            // with that failed job. A token derived from the failed disk keeps HTTP retries of
            // this new create idempotent without replaying the old one.
            token = self.client_token(&format!("{}\n{}", req.name, existing.id));
        }

        let zone = match &restore {
            Some(r) => r.zone.clone(),
            None => self.zone(req, &params)?,
        };
        let mut metadata = BTreeMap::from([
            (CSI_NAME_KEY.to_owned(), req.name.clone()),
            (MANAGED_BY_KEY.to_owned(), "everest".to_owned()),
        ]);
        if let Some(source) = restore.as_ref().and_then(|r| r.clone_of.as_ref()) {
            metadata.insert(CLONE_OF_KEY.to_owned(), source.clone());
        }
        if let Some(kms) = &params.kms_key_id {
            metadata.insert(ENCRYPTED_KEY.into(), "1".into());
            metadata.insert(CMK_ID_KEY.into(), kms.clone());
        }
        // Everest's marker (cluster, instance, PV/PVC) and the StorageClass's own tags, within
        // what the EVS tag API takes; a StorageClass tag it would refuse fails here, by name.
        let tags = req
            .marker(&self.name)
            .with_user_tags(&params.tag_map()?, &EVS_TAGS)
            .map_err(|e| e.context("StorageClass parameter everest.io/disk-tags"))?;
        let volume_type = match &restore {
            Some(r) => r.volume_type.clone(),
            None => params
                .volume_type
                .clone()
                .unwrap_or_else(|| self.config.backend.default_volume_type.clone()),
        };
        let create = ApiCreate {
            availability_zone: zone,
            volume_type,
            snapshot_id: restore.as_ref().map(|r| r.snapshot_id.clone()),
            name: self.disk_name(&req.name),
            description: Some(format!("Kubernetes volume {} (Everest CSI)", req.name)),
            size: gib,
            metadata,
            tags,
            iops: params.iops,
            throughput: params.throughput,
            ..ApiCreate::default()
        };
        let what = format!("creating disk for volume {}", req.name);
        let disk = match self.create_disk(&create, &token, &what).await? {
            Some(disk) => disk,
            // The cloud replayed an earlier create with this token whose disk has been deleted
            // since (the same request name re-created within the token's lifetime): start afresh.
            None => self
                .create_disk(&create, &uuid::Uuid::new_v4().to_string(), &what)
                .await?
                .ok_or_else(|| {
                    Error::Unavailable(format!("{what}: the new disk vanished; retry"))
                })?,
        };
        self.finish_clone(restore.as_ref()).await?;
        tracing::debug!(disk = %disk.id, size_gib = disk.size, zone = %disk.availability_zone, "created disk");
        Ok(to_csi(&disk))
    }

    async fn delete_volume(&self, disk_id: &str, _secrets: &Secrets) -> Result<()> {
        let Some(disk) = self.client.get_volume(disk_id).await? else {
            return Ok(());
        };
        if !disk.attachments.is_empty() {
            let nodes: Vec<&str> = disk
                .attachments
                .iter()
                .map(|a| a.server_id.as_str())
                .collect();
            return Err(Error::FailedPrecondition(format!(
                "disk {disk_id} is still attached to node(s) {}; ControllerUnpublishVolume first",
                nodes.join(", ")
            )));
        }
        if disk.status.is_error() && !disk.status.is_deletable() {
            return Err(stuck_in_error(&disk, "DeleteVolume"));
        }
        self.refuse_if_snapshotted(disk_id).await?;
        if disk.status != VolumeStatus::Deleting && !disk.status.is_deletable() {
            return Err(Error::Unavailable(format!(
                "disk {disk_id} is {}; retry once it settles",
                disk.status.as_str()
            )));
        }
        if let Err(e) = self
            .remove_disk(disk_id, disk.status == VolumeStatus::Deleting)
            .await
        {
            // A snapshot taken since the look above makes the cloud refuse with a generic code:
            // answer with the reason instead.
            self.refuse_if_snapshotted(disk_id).await?;
            return Err(e);
        }
        tracing::debug!(disk = %disk_id, "deleted disk");
        Ok(())
    }

    async fn publish(&self, req: &ControllerPublish) -> Result<BTreeMap<String, String>> {
        check_capability(&req.capability)?;
        let mut disk = self.get(&req.native_id).await?;
        // An attach in flight lists no attachment yet, so where it is going is unknown: wait
        // for it to land (never longer than the job timeout), then decide with the answer.
        if disk.status == VolumeStatus::Attaching && disk.attachments.is_empty() {
            disk = self
                .settle(&disk.id, "done attaching", |v| {
                    v.status != VolumeStatus::Attaching || !v.attachments.is_empty()
                })
                .await?;
        }
        let mut jobs = Vec::new();
        if let Some(a) = disk.attachments.iter().find(|a| a.server_id == req.node_id) {
            if disk.status == VolumeStatus::InUse {
                return Ok(Self::publish_context(&disk, a));
            }
        } else if let Some(other) = disk.attachments.first() {
            // Fail at once: waiting would only time out, and the attacher retries anyway. Even a
            // shareable (multiattach) disk: every access mode EVS serves is single-node, and two
            // nodes writing one ext4/xfs would corrupt it.
            return Err(Error::FailedPrecondition(format!(
                "disk {} is attached to node {}; an EVS volume is used by one node at a time (detach it there first)",
                disk.id, other.server_id
            )));
        } else if disk.status != VolumeStatus::Attaching {
            if disk.status != VolumeStatus::Available {
                return Err(Error::Unavailable(format!(
                    "disk {} is {}; retry once it is available",
                    disk.id,
                    disk.status.as_str()
                )));
            }
            jobs.push(self.start_attach(&disk.id, &req.node_id).await?);
        }
        let node = req.node_id.clone();
        let doing = format!("attaching disk {} to node {}", disk.id, req.node_id);
        let attached = self
            .await_effect(&disk.id, "attached", &doing, jobs, move |v| match v {
                // Gone: the wait ends, and the answer below is NOT_FOUND.
                None => Effect::Landed,
                Some(v)
                    if v.status == VolumeStatus::InUse
                        && v.attachments.iter().any(|a| a.server_id == node) =>
                {
                    Effect::Landed
                }
                Some(v) if v.status.is_error() => {
                    Effect::Failed(format!("status {}", v.status.as_str()))
                }
                Some(v) if v.status == VolumeStatus::Available && v.attachments.is_empty() => {
                    Effect::Unseen
                }
                Some(_) => Effect::Underway,
            })
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!("disk {} disappeared while being attached", disk.id))
            })?;
        let attachment = attached
            .attachments
            .iter()
            .find(|a| a.server_id == req.node_id)
            .ok_or_else(|| Error::Internal(format!("disk {} lost its attachment", disk.id)))?;
        tracing::debug!(disk = %disk.id, node = %req.node_id, "attached disk");
        Ok(Self::publish_context(&attached, attachment))
    }

    async fn unpublish(&self, disk_id: &str, node_id: Option<&str>) -> Result<()> {
        let Some(disk) = self.client.get_volume(disk_id).await? else {
            return Ok(());
        };
        let mut nodes: Vec<String> = disk
            .attachments
            .iter()
            .map(|a| a.server_id.clone())
            .filter(|s| node_id.is_none_or(|n| n == s))
            .collect();
        let mut jobs = Vec::new();
        if disk.status != VolumeStatus::Detaching {
            let mut gone = Vec::new();
            for node in &nodes {
                match self.client.detach_volume(node, disk_id).await {
                    // The server no longer exists: nothing is attached to a deleted node, and
                    // CSI wants OK when the node cannot be found, or the VolumeAttachment (and
                    // with it the disk) stays stuck forever.
                    Err(e)
                        if e.code()
                            .is_some_and(|c| c.eq_ignore_ascii_case(SERVER_GONE_CODE)) =>
                    {
                        tracing::warn!(disk = %disk_id, node = %node, "node is gone; counting the disk as detached from it");
                        gone.push(node.clone());
                    }
                    Err(e) => {
                        return Err(Error::from(e)
                            .context(format!("detaching disk {disk_id} from node {node}")));
                    }
                    Ok(job) => jobs.extend(job),
                }
            }
            // The cloud may list a deleted server's attachment for a while; do not wait on it.
            nodes.retain(|n| !gone.contains(n));
        }
        if !nodes.is_empty() {
            let detached = nodes.clone();
            let doing = format!("detaching disk {disk_id} from {}", nodes.join(", "));
            self.await_effect(disk_id, "detached", &doing, jobs, move |v| match v {
                None => Effect::Landed,
                Some(v)
                    if v.attachments
                        .iter()
                        .any(|a| detached.contains(&a.server_id)) =>
                {
                    if v.status == VolumeStatus::InUse {
                        Effect::Unseen
                    } else {
                        Effect::Underway
                    }
                }
                Some(v) if v.status == VolumeStatus::Detaching => Effect::Underway,
                Some(_) => Effect::Landed,
            })
            .await?;
            tracing::debug!(disk = %disk_id, nodes = ?nodes, "detached disk");
        }
        Ok(())
    }

    async fn expand(&self, disk_id: &str, capacity: CapacityRange) -> Result<Expanded> {
        let gib = capacity.to_gib(self.config.backend.default_size_gib, MIN_GIB, MAX_GIB)?;
        let disk = self.get(disk_id).await?;
        if disk.status.is_error() {
            return Err(stuck_in_error(&disk, "ControllerExpandVolume"));
        }
        if disk.size < gib {
            if !is_usable(&disk) {
                return Err(Error::Unavailable(format!(
                    "disk {disk_id} is {}; retry once it settles",
                    disk.status.as_str()
                )));
            }
            // As for a delete, the disk's status says how the extend ends (the new size, or
            // `error_extending`), so only the disk is watched.
            self.client.extend_volume(disk_id, gib).await.map_err(|e| {
                Error::from(e).context(format!("extending disk {disk_id} to {gib} GiB"))
            })?;
        }
        // A disk that falls into an error state ends the wait as seen, to be reported as stuck.
        let disk = self
            .wait_until(disk_id, "extended", move |v| match v {
                Some(v) if (v.size >= gib && is_usable(v)) || v.status.is_error() => {
                    VolumeWait::Done
                }
                Some(_) => VolumeWait::Pending,
                None => VolumeWait::Failed("the disk disappeared".into()),
            })
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!("disk {disk_id} disappeared while being extended"))
            })?;
        if disk.status.is_error() {
            return Err(stuck_in_error(&disk, "ControllerExpandVolume"));
        }
        Ok(Expanded {
            capacity_bytes: disk.size * GIB,
            node_expansion_required: true,
        })
    }

    async fn get_volume(&self, disk_id: &str) -> Result<ListedVolume> {
        let disk = self.get(disk_id).await?;
        Ok(self.listed(&disk))
    }

    /// Pages by disk ID (see [`page_after`]).
    async fn list_volumes(
        &self,
        starting_token: Option<&str>,
        max_entries: u32,
    ) -> Result<CsiPage> {
        let disks = self.all_managed_disks().await?;
        let (page, next_token) = page_after(disks, |d| &d.id, starting_token, max_entries)?;
        Ok(CsiPage {
            entries: page.iter().map(|v| self.listed(v)).collect(),
            next_token,
        })
    }

    async fn modify_volume(
        &self,
        native_id: &str,
        parameters: &BTreeMap<String, String>,
    ) -> Result<()> {
        self.change_volume(native_id, parameters).await
    }

    async fn create_snapshot(&self, req: &CreateSnapshot) -> Result<CsiSnapshot> {
        self.take_snapshot(req).await
    }

    async fn delete_snapshot(&self, native_id: &str, _secrets: &Secrets) -> Result<()> {
        self.drop_snapshot(native_id).await
    }

    async fn get_snapshot(&self, native_id: &str) -> Result<Option<CsiSnapshot>> {
        self.read_snapshot(native_id).await
    }

    async fn list_snapshots(
        &self,
        source: Option<&str>,
        starting_token: Option<&str>,
        max_entries: u32,
    ) -> Result<SnapshotPage> {
        self.snapshot_page(source, starting_token, max_entries)
            .await
    }

    async fn probe(&self) -> Result<()> {
        let filter = VolumeFilter {
            limit: Some(1),
            ..VolumeFilter::default()
        };
        self.client
            .list_volumes(&filter)
            .await
            .map(drop)
            .map_err(|e: api::Error| {
                Error::Unavailable(format!(
                    "EVS API of backend {} does not answer: {e}",
                    self.name
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::page_after;

    #[test]
    fn pages_cut_by_id_survive_changes_between_calls() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (page, next) = page_after(ids(&["c", "a", "b"]), |s| s, None, 2).unwrap();
        assert_eq!((page, next.as_deref()), (ids(&["a", "b"]), Some("after:b")));
        // "b" deleted and "aa" created meanwhile: the next page still starts after "b".
        let (page, next) = page_after(ids(&["a", "aa", "c"]), |s| s, Some("after:b"), 2).unwrap();
        assert_eq!((page, next), (ids(&["c"]), None));
        let (all, next) = page_after(ids(&["b", "a"]), |s| s, Some(""), 0).unwrap();
        assert_eq!((all, next), (ids(&["a", "b"]), None));
        let err = page_after(ids(&["a"]), |s| s, Some("b"), 1).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Aborted);
    }
}
