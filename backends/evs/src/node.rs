//! The node side of EVS: find the attached disk, format it only if it is blank, mount it at the
//! staging path, bind it into pods, and grow the filesystem after an expand. What is mounted
//! where is read from the kernel every time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use everest_backend::backend::{
    BackendKind, Capabilities, NodeBackend, NodeExpand, NodeIdentity, NodePublish, NodeStage,
    VolumeUsage,
};
use everest_backend::capability::VolumeCapability;
use everest_backend::capacity::CapacityRange;
use everest_backend::host::{Host, HostError, is_mount_of, mounts_at};
use everest_backend::node::{
    PublishMode, filesystem_usage, mount_at, publish_block, publish_filesystem, unmount_all,
    unmount_and_remove,
};
use everest_backend::paths::HostPath;
use everest_backend::{Error, Result};

use crate::api::{EvsClient, VolumeFilter};
use crate::capabilities::{check_capability, requested_fs_type, split_flags};
use crate::config::EvsConfig;
use crate::controller::MANAGED_BY_KEY;
use crate::device::find_device;

/// A filesystem smaller than its device by more than this is grown (tools round to blocks).
const GROW_SLACK_BYTES: u64 = 1 << 20;
/// Publishing a raw block volume happens after stage found the device; wait only briefly.
const PUBLISH_DEVICE_WAIT: Duration = Duration::from_secs(5);

/// The node side of one `evs` backend instance.
#[derive(Debug)]
pub struct EvsNode {
    config: EvsConfig,
    host: Arc<dyn Host>,
    /// Only for the server's disk slots (NodeGetInfo), when the node has credentials.
    client: Option<EvsClient>,
    /// One lock per device, held by a format from start to finish (see `ensure_filesystem`).
    formats: DeviceLocks,
}

/// Per-device async locks.
type DeviceLocks =
    std::sync::Mutex<std::collections::HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>;

impl EvsNode {
    /// Builds the node side on `host`.
    pub fn new(config: EvsConfig, host: Arc<dyn Host>) -> Self {
        Self {
            config,
            host,
            client: None,
            formats: DeviceLocks::default(),
        }
    }

    /// Lets the node ask the cloud how many disks its server can still take.
    pub fn with_client(mut self, client: EvsClient) -> Self {
        self.client = Some(client);
        self
    }

    fn by_id_dir(&self) -> &Path {
        &self.config.backend.by_id_dir
    }

    /// Decides the filesystem and creates it only on a blank device; never reformats, and never
    /// writes to a disk staged read-only. Says whether it was just made (and so already fills
    /// the device).
    async fn ensure_filesystem(
        &self,
        disk: &str,
        device: &Path,
        requested: Option<&str>,
        read_only: bool,
    ) -> Result<(String, bool)> {
        // A format runs in a task of its own that holds this device's lock until it is done
        // (or, stopped at its limit, undone): a kubelet that gives up on the call drops this
        // future, not the format, and its retry waits here instead of finding a half-written
        // signature and refusing to format a disk that holds no data.
        let lock = {
            let mut locks = self
                .formats
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(locks.entry(device.to_owned()).or_default())
        };
        let held = lock.lock_owned().await;
        match self.host.filesystem_of(device).await? {
            None if read_only => Err(Error::FailedPrecondition(format!(
                "disk {disk} is blank and is staged read-only: a read-only volume is never formatted, so there is nothing to mount; stage it read-write once (or fill it from a snapshot) first"
            ))),
            None => {
                let fs = requested
                    .unwrap_or(&self.config.backend.default_fs_type)
                    .to_owned();
                tracing::info!(disk, device = %device.display(), fs = %fs, "formatting blank disk");
                let host = Arc::clone(&self.host);
                let (device, made, disk_id) = (device.to_owned(), fs.clone(), disk.to_owned());
                let format = tokio::spawn(async move {
                    let _held = held;
                    match host.mkfs(&device, &made).await {
                        // The stopped mkfs may have left a signature with no filesystem behind
                        // it, which the retry would take for data and never format. The disk
                        // was blank a moment ago and the tool is dead: wipe what it wrote.
                        Err(e) if e.timed_out => {
                            if let Err(w) = host.wipe_signatures(&device).await {
                                tracing::warn!(disk = %disk_id, error = %w, "could not wipe what a stopped mkfs wrote");
                            }
                            Err(e)
                        }
                        done => done,
                    }
                });
                // The format runs in its own task, outside this RPC's: its wait is counted here.
                match everest_backend::outside::outside(format).await {
                    Ok(done) => done.map(|()| (fs, true)).map_err(Error::from),
                    Err(e) => Err(Error::Internal(format!(
                        "formatting disk {disk} did not finish: {e}"
                    ))),
                }
            }
            Some(existing) if requested.is_none_or(|r| r == existing) => Ok((existing, false)),
            Some(existing) => Err(Error::FailedPrecondition(format!(
                "disk {disk} already holds {existing}, but the volume asks for {}; refusing to reformat a disk that has data",
                requested.unwrap_or_default()
            ))),
        }
    }

    /// Grows a freshly mounted xfs/btrfs when the disk was expanded while it was not staged.
    async fn grow_mounted(
        &self,
        disk: &str,
        device: &Path,
        fs: &str,
        staging: &Path,
    ) -> Result<()> {
        if self.needs_grow(device, fs, Some(staging)).await? {
            tracing::info!(disk, fs = %fs, "growing filesystem online after mount");
            self.grow(disk, device, fs, Some(staging)).await?;
        }
        Ok(())
    }

    /// Grows the filesystem, then measures it again: a tool that exits 0 without growing
    /// (or a filesystem it cannot grow) is an error, never a resize reported as done.
    async fn grow(
        &self,
        disk: &str,
        device: &Path,
        fs: &str,
        mount_point: Option<&Path>,
    ) -> std::result::Result<(), GrowError> {
        self.host
            .grow_filesystem(device, fs, mount_point)
            .await
            .map_err(GrowError::Tool)?;
        let device_size = self.host.device_size(device).await?;
        let fs_size = self.host.filesystem_size(device, fs, mount_point).await?;
        if device_size > fs_size + GROW_SLACK_BYTES {
            return Err(GrowError::Other(Error::Internal(format!(
                "growing the {fs} filesystem of disk {disk} reported success, but it still holds {fs_size} bytes of the {device_size}-byte device"
            ))));
        }
        Ok(())
    }

    /// Looks at what is mounted at the staging path already: `true` when it is this disk staged
    /// as asked (nothing to do), `false` when nothing is (or no longer anything is) mounted
    /// there, and ALREADY_EXISTS for a stage that is incompatible with the request.
    ///
    /// Mounts are matched to the disk by device number, not by name: names move on a re-attach
    /// (`/dev/vdb` → `/dev/vdc`, a new loop device) and may be spelt differently.
    ///
    /// A mount there from another device is, in practice, this disk under a device it no longer
    /// has: the kubelet derives the staging path from the volume ID, and a disk detached while
    /// staged stays mounted on its old device (a loop device only gets auto-clear and lives on
    /// until unmounted; a hot-removed virtio disk leaves a dead mount), while the re-attached
    /// disk comes back with a new name and number. Answering OK would serve pods the old device;
    /// mounting the new device beside the old mount would run two instances of one filesystem
    /// on one disk, which ext4 does not refuse and which corrupts it. So:
    /// - if nothing but the staging path holds the old filesystem (no pod publish is bound to
    ///   it), the stale mount is unmounted and the disk staged afresh from its current device;
    /// - if pods still use it, ALREADY_EXISTS says so; once the kubelet has unpublished them the
    ///   next NodeStage recovers.
    ///
    /// A mount there that is not a block filesystem (a tmpfs, say) is never unmounted.
    async fn check_existing_stage(
        &self,
        req: &NodeStage,
        requested: Option<&str>,
        device: &Path,
        wants_read_only: bool,
    ) -> Result<bool> {
        let disk = req.native_id.as_str();
        let staging = req.staging.as_path();
        let mounts = self.host.mounts().await?;
        let Some(m) = mounts.iter().rev().find(|m| m.mount_point == staging) else {
            return Ok(false);
        };
        let number = self.host.device_number(device).await?;
        if !is_mount_of(self.host.as_ref(), m, &number).await? {
            let users: Vec<String> = mounts
                .iter()
                .filter(|o| o.device_number == m.device_number && o.mount_point != staging)
                .map(|o| o.mount_point.display().to_string())
                .collect();
            if !STAGED_FILESYSTEMS.contains(&m.fs_type.as_str()) || !users.is_empty() {
                let in_use = if users.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; it is still in use at {} (pods must be unpublished before it can be replaced)",
                        users.join(", ")
                    )
                };
                return Err(Error::AlreadyExists(format!(
                    "staging path {} already has {} ({}, device {}) mounted, not disk {disk} ({}, device {number}){in_use}",
                    req.staging,
                    m.source,
                    m.fs_type,
                    m.device_number,
                    device.display()
                )));
            }
            tracing::warn!(
                disk,
                stale = %m.source,
                stale_device = %m.device_number,
                device = %device.display(),
                "the staging mount is on a device this disk no longer has (re-attached); unmounting it to stage again"
            );
            unmount_all(self.host.as_ref(), &req.staging).await?;
            return Ok(false);
        }
        if let Some(fs) = requested
            && fs != m.fs_type
        {
            return Err(Error::AlreadyExists(format!(
                "disk {disk} is staged at {} as {}, not {fs}",
                req.staging, m.fs_type
            )));
        }
        if m.is_read_only() != wants_read_only {
            let how = |ro: bool| if ro { "read-only" } else { "read-write" };
            return Err(Error::AlreadyExists(format!(
                "disk {disk} is staged at {} {}, but the volume capability asks for {}; unstage it first",
                req.staging,
                how(m.is_read_only()),
                how(wants_read_only)
            )));
        }
        Ok(true)
    }

    /// Has a SCSI disk re-read its size (a virtio disk sees a new size by itself), so an expand
    /// reaches the guest without waiting for anyone else to rescan.
    async fn rescan(&self, disk: &str, device: &Path) -> Result<()> {
        if self.host.rescan_device(device).await? {
            tracing::info!(disk, device = %device.display(), "asked the kernel to rescan the disk's size");
        }
        Ok(())
    }

    /// Whether the filesystem on `device` is smaller than the device (after a controller expand),
    /// by the size the filesystem records.
    async fn needs_grow(
        &self,
        device: &Path,
        fs: &str,
        mount_point: Option<&Path>,
    ) -> Result<bool> {
        let device_size = self.host.device_size(device).await?;
        let fs_size = self.host.filesystem_size(device, fs, mount_point).await?;
        Ok(device_size > fs_size + GROW_SLACK_BYTES)
    }

    /// The device number the disk has on this node now, without waiting; `None` when the disk
    /// does not show (detached, or its device removed).
    async fn current_device_number(&self, disk: &str) -> Result<Option<String>> {
        let no_context = std::collections::BTreeMap::new();
        match find_device(
            self.host.as_ref(),
            self.by_id_dir(),
            disk,
            &no_context,
            Duration::ZERO,
        )
        .await
        {
            Ok(device) => Ok(Some(self.host.device_number(&device).await?)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The filesystems stage creates or mounts; only such a mount is ever replaced at a staging path.
const STAGED_FILESYSTEMS: &[&str] = &["ext2", "ext3", "ext4", "xfs", "btrfs"];

/// Why a grow failed: the tool itself (which for ext online has its own message), or anything
/// else (measuring, or a grow that did not grow).
enum GrowError {
    Tool(HostError),
    Other(Error),
}

impl From<HostError> for GrowError {
    fn from(e: HostError) -> Self {
        GrowError::Other(e.into())
    }
}

impl From<GrowError> for Error {
    fn from(e: GrowError) -> Self {
        match e {
            GrowError::Tool(e) => e.into(),
            GrowError::Other(e) => e,
        }
    }
}

fn is_ext(fs: &str) -> bool {
    matches!(fs, "ext2" | "ext3" | "ext4")
}

fn mount_options(cap: &VolumeCapability) -> Vec<String> {
    let mut opts: Vec<String> = match &cap.access_type {
        everest_backend::capability::AccessType::Mount { mount_flags, .. } => {
            split_flags(mount_flags).map(str::to_owned).collect()
        }
        everest_backend::capability::AccessType::Block => Vec::new(),
    };
    if cap.access_mode.is_read_only() {
        // A read-only access mode wins over a StorageClass "rw": drop it rather than rely on
        // mount taking the last of two conflicting options.
        opts.retain(|o| o != "rw");
        if !opts.iter().any(|o| o == "ro") {
            opts.push("ro".into());
        }
    }
    opts
}

/// Whether the staging mount will be read-only (by access mode or by a mount option).
fn mounts_read_only(opts: &[String]) -> bool {
    opts.iter().any(|o| o == "ro")
}

/// The device size, or UNAVAILABLE while the guest does not see the size asked for yet.
///
/// The kubelet records a resize as finished on success whatever size is returned, so
/// succeeding before the guest sees the larger disk would leave the filesystem small for good.
fn check_device_grew(disk: &str, device_size: u64, capacity: &CapacityRange) -> Result<u64> {
    if device_size < capacity.required_bytes {
        return Err(Error::Unavailable(format!(
            "disk {disk} still shows {device_size} bytes on this node, less than the {} requested; the larger size has not reached the guest yet, retry",
            capacity.required_bytes
        )));
    }
    Ok(device_size)
}

fn ext_online_grow_failed(disk: &str, e: HostError) -> Error {
    Error::FailedPrecondition(format!(
        "growing the ext filesystem of disk {disk} online failed ({e}); the volume stays mounted and usable at its old size, and the filesystem is grown at the next NodeStageVolume (restart the pod to get there)"
    ))
}

#[async_trait]
impl NodeBackend for EvsNode {
    fn kind(&self) -> BackendKind {
        BackendKind::Block
    }

    fn capabilities(&self) -> Capabilities {
        crate::capabilities::CAPABILITIES
    }

    fn check_capability(&self, cap: &VolumeCapability) -> Result<()> {
        check_capability(cap)
    }

    async fn stage(&self, req: &NodeStage) -> Result<()> {
        check_capability(&req.capability)?;
        let requested = requested_fs_type(&req.capability, &req.volume_context)?;
        let disk = req.native_id.as_str();
        let device = find_device(
            self.host.as_ref(),
            self.by_id_dir(),
            disk,
            &req.publish_context,
            self.config.backend.device_wait(),
        )
        .await?;
        if req.capability.is_block() {
            // Raw block volumes are published straight from the device node; nothing to mount.
            return Ok(());
        }
        let staging = req.staging.as_path();
        let options = mount_options(&req.capability);
        if self
            .check_existing_stage(req, requested, &device, mounts_read_only(&options))
            .await?
        {
            return Ok(());
        }
        let (fs, formatted) = self
            .ensure_filesystem(disk, &device, requested, mounts_read_only(&options))
            .await?;
        // A read-only volume is never written to: no fsck/resize2fs before mounting, and no
        // xfs_growfs/btrfs resize on a read-only mount (which fails and would block every stage).
        // It is grown at the first read-write stage. A filesystem just made fills its disk.
        let may_grow = !formatted && !mounts_read_only(&options);
        // ext cannot grow online on every host; grow it here, unmounted, after an expand.
        if may_grow && is_ext(&fs) && self.needs_grow(&device, &fs, None).await? {
            tracing::info!(disk, "growing ext filesystem offline before mounting");
            self.grow(disk, &device, &fs, None).await?;
        }
        self.host.make_dir(staging).await?;
        self.host.mount(&device, staging, &fs, &options).await?;
        if may_grow && !is_ext(&fs) {
            // A failed NodeStage counts as "not staged" to the kubelet, which then never sends
            // NodeUnstage for it: leave nothing mounted behind an error, or the mount leaks and
            // the disk is later detached from under it.
            if let Err(e) = self.grow_mounted(disk, &device, &fs, staging).await {
                if let Err(u) = self.host.unmount(staging).await {
                    tracing::warn!(disk, error = %u, "could not undo the mount of a failed stage");
                }
                return Err(e);
            }
        }
        tracing::debug!(disk, device = %device.display(), staging = %req.staging, fs = %fs, "staged");
        Ok(())
    }

    async fn unstage(&self, _disk: &str, staging: &HostPath) -> Result<()> {
        // The staging directory belongs to the kubelet; only our mounts on it are undone.
        unmount_all(self.host.as_ref(), staging).await
    }

    async fn publish(&self, req: &NodePublish) -> Result<()> {
        check_capability(&req.capability)?;
        let mode = PublishMode::of(&req.capability, req.readonly);
        if req.capability.is_block() {
            let device = find_device(
                self.host.as_ref(),
                self.by_id_dir(),
                &req.native_id,
                &req.publish_context,
                PUBLISH_DEVICE_WAIT,
            )
            .await?;
            return publish_block(
                self.host.as_ref(),
                &req.native_id,
                &device,
                &req.target,
                mode,
            )
            .await;
        }
        publish_filesystem(
            self.host.as_ref(),
            &req.native_id,
            req.staging.as_ref(),
            &req.target,
            mode,
        )
        .await
    }

    async fn unpublish(&self, _disk: &str, target: &HostPath) -> Result<()> {
        unmount_and_remove(self.host.as_ref(), target).await
    }

    async fn expand(&self, req: &NodeExpand) -> Result<u64> {
        let disk = req.native_id.as_str();
        let path = req.volume_path.as_path();
        if req
            .capability
            .as_ref()
            .is_some_and(VolumeCapability::is_block)
            || self.host.is_block_device(path).await?
        {
            // A raw device has no filesystem to grow, but must show the new size too.
            self.rescan(disk, path).await?;
            let size = self.host.device_size(path).await?;
            return check_device_grew(disk, size, &req.capacity);
        }
        let mount = mounts_at(self.host.as_ref(), path)
            .await?
            .pop()
            .ok_or_else(|| {
                Error::NotFound(format!("disk {disk} is not mounted at {}", req.volume_path))
            })?;
        let device = PathBuf::from(&mount.source);
        // The mount's source is only a name: make sure it still names the mounted device, so a
        // name the kernel re-used for another disk can never get that disk's filesystem grown.
        let still_ours = match self.host.device_number(&device).await {
            Ok(number) => is_mount_of(self.host.as_ref(), &mount, &number).await?,
            Err(_) => false,
        };
        if !still_ours {
            return Err(Error::FailedPrecondition(format!(
                "disk {disk} is mounted at {} from {}, which no longer names that device (the disk was re-attached); unpublish and unstage it, then stage again",
                req.volume_path, mount.source
            )));
        }
        self.rescan(disk, &device).await?;
        let device_size = self.host.device_size(&device).await?;
        check_device_grew(disk, device_size, &req.capacity)?;
        if self.needs_grow(&device, &mount.fs_type, Some(path)).await? {
            let grown = self.grow(disk, &device, &mount.fs_type, Some(path)).await;
            match grown {
                Ok(()) => tracing::debug!(disk, fs = %mount.fs_type, "grew filesystem online"),
                Err(GrowError::Tool(e)) if is_ext(&mount.fs_type) => {
                    return Err(ext_online_grow_failed(disk, e));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(device_size)
    }

    /// Disks attach to the ECS server this node runs on: its ID and zone come from the
    /// instance metadata service.
    async fn node_identity(&self) -> Result<Option<NodeIdentity>> {
        crate::identity::from_metadata(&self.config.backend.metadata_url)
            .await
            .map(Some)
    }

    /// The server's free disk slots plus the Everest disks attached to it now: the disks it
    /// holds that Everest does not manage (the system disk, disks attached by hand) are what
    /// the scheduler must not count on.
    async fn max_volumes(&self, node_id: &str) -> Result<Option<u32>> {
        let Some(client) = &self.client else {
            return Ok(None);
        };
        let devices = client.block_devices(node_id).await?;
        let Some(slots) = devices.attachable_quantity else {
            return Ok(None);
        };
        let managed = client
            .list_volumes(&VolumeFilter {
                server_id: Some(node_id.to_owned()),
                metadata: [(MANAGED_BY_KEY.to_owned(), "everest".to_owned())].into(),
                limit: Some(1000),
                ..VolumeFilter::default()
            })
            .await?
            .volumes
            .len() as u64;
        Ok(Some(
            u32::try_from(slots.free_disk + managed).unwrap_or(u32::MAX),
        ))
    }

    async fn stats(&self, disk: &str, volume_path: &HostPath) -> Result<VolumeUsage> {
        let path = volume_path.as_path();
        let raw_block = self.host.is_block_device(path).await?;
        let mount = if raw_block {
            None
        } else {
            let mount = mount_at(self.host.as_ref(), disk, volume_path).await?;
            if !mount.source.starts_with('/')
                || !STAGED_FILESYSTEMS.contains(&mount.fs_type.as_str())
            {
                return Err(Error::NotFound(format!(
                    "{volume_path} holds a {} mount of {}, not disk {disk}",
                    mount.fs_type, mount.source
                )));
            }
            Some(mount)
        };
        // The device the path uses: the bound node itself (raw block), or the mount's source.
        // Asked only when it decides something: a mount is matched by its own number.
        let used = async || {
            let source = mount
                .as_ref()
                .map_or_else(|| path.to_owned(), |m| PathBuf::from(&m.source));
            match self.host.device_number(&source).await {
                Ok(n) => Some(n),
                Err(_) if raw_block => None,
                // A mount whose source node is gone (hot-unplugged) still shows its number.
                Err(_) => mount.as_ref().map(|m| m.device_number.clone()),
            }
        };
        let current = self.current_device_number(disk).await?;
        let ours = match (&current, &mount) {
            (Some(c), Some(m)) => is_mount_of(self.host.as_ref(), m, c).await?,
            (Some(c), None) => used().await.is_some_and(|u| &u == c),
            (None, _) => false,
        };
        if ours {
            return match mount {
                Some(m) => filesystem_usage(self.host.as_ref(), &m, volume_path).await,
                None => Ok(VolumeUsage::Block {
                    total_bytes: self.host.device_size(path).await?,
                    abnormal: None,
                }),
            };
        }
        // Not found as this disk's device: ask what names the used device still has.
        let names = match &used().await {
            Some(n) => self.host.links_to(self.by_id_dir(), n).await?,
            None => Vec::new(),
        };
        match judge_unmatched(current.is_some(), &names) {
            Unmatched::Another(name) => Err(Error::NotFound(format!(
                "{volume_path} holds another disk ({}), not disk {disk}",
                name.display()
            ))),
            Unmatched::Gone => Ok(VolumeUsage::Lost {
                abnormal: format!(
                    "disk {disk} is no longer attached to this node, but {volume_path} still uses it; the pod's I/O fails until the volume is unpublished, unstaged and attached again"
                ),
            }),
            Unmatched::Stale => Ok(VolumeUsage::Lost {
                abnormal: format!(
                    "{volume_path} still uses the device disk {disk} had before it was re-attached; restart the pod so the volume is staged again from its current device"
                ),
            }),
            // Present under a name that cannot be tied to the disk ID (a SCSI disk's WWN):
            // the device is there, so its figures are what the pod sees.
            Unmatched::Unproven => match mount {
                Some(m) => filesystem_usage(self.host.as_ref(), &m, volume_path).await,
                None => Ok(VolumeUsage::Block {
                    total_bytes: self.host.device_size(path).await?,
                    abnormal: None,
                }),
            },
        }
    }
}

/// What a device in use at a volume path is, when it is not where this disk's ID leads.
#[derive(Debug, PartialEq, Eq)]
enum Unmatched {
    /// It is another virtio disk (its by-id name says so): the path holds no volume of ours.
    Another(PathBuf),
    /// It has no by-id name any more: the disk went away under the mount.
    Gone,
    /// The disk is elsewhere now and this device has no name: left from before a re-attach.
    Stale,
    /// It is named only in a form the disk ID does not give (SCSI `scsi-3<wwn>`).
    Unproven,
}

/// Decides [`Unmatched`] from whether the disk was found elsewhere and the used device's names.
fn judge_unmatched(found_elsewhere: bool, names: &[PathBuf]) -> Unmatched {
    let is_virtio = |p: &&PathBuf| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("virtio-"))
    };
    if let Some(other) = names.iter().find(is_virtio) {
        return Unmatched::Another(other.clone());
    }
    match (names.is_empty(), found_elsewhere) {
        (true, true) => Unmatched::Stale,
        (true, false) => Unmatched::Gone,
        // A device named only by WWN while this (virtio-named) disk is elsewhere: another disk.
        (false, true) => Unmatched::Another(names[0].clone()),
        (false, false) => Unmatched::Unproven,
    }
}

#[cfg(test)]
mod host_tests;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use everest_backend::capability::{AccessMode, AccessType};
    use everest_backend::host::{FakeDevice, FakeHost};
    use everest_backend::paths::AllowedRoot;
    use everest_backend::secrets::Secrets;

    use super::*;

    const GIB: u64 = 1 << 30;

    fn setup(fs: Option<&str>) -> (Arc<FakeHost>, EvsNode) {
        let host = Arc::new(FakeHost::default());
        host.add_device(
            Path::new("/by-id/virtio-disk-1"),
            Path::new("/dev/loop3"),
            FakeDevice {
                size: 10 * GIB,
                fs_type: fs.map(str::to_owned),
                fs_size: if fs.is_some() { 10 * GIB } else { 0 },
                serial: None,
            },
        );
        let table = serde_json::json!({"project_id": "p", "region": "r", "credentials_file": "/x", "by_id_dir": "/by-id", "device_wait_seconds": 0});
        let config = EvsConfig::parse("evs", table.as_object().unwrap()).unwrap();
        let node = EvsNode::new(config, host.clone());
        (host, node)
    }

    fn stage_req(fs: &str) -> NodeStage {
        let root = AllowedRoot::new("/var/lib/kubelet").unwrap();
        NodeStage {
            native_id: "disk-1".into(),
            publish_context: BTreeMap::new(),
            staging: root
                .check("/var/lib/kubelet/plugins/g/globalmount", "staging")
                .unwrap(),
            capability: VolumeCapability {
                access_type: AccessType::Mount {
                    fs_type: fs.into(),
                    mount_flags: vec![],
                },
                access_mode: AccessMode::SingleNodeWriter,
            },
            volume_context: BTreeMap::new(),
            secrets: Secrets::default(),
        }
    }

    #[tokio::test]
    async fn stats_answer_only_for_this_disk_and_report_a_gone_device() {
        let (host, node) = setup(Some("xfs"));
        let req = stage_req("xfs");
        // Nothing mounted at an existing path, or no path: not this volume.
        host.add_path(req.staging.as_path());
        for disk in ["disk-1", "disk-2"] {
            let err = node.stats(disk, &req.staging).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
        }
        node.stage(&req).await.unwrap();
        match node.stats("disk-1", &req.staging).await.unwrap() {
            VolumeUsage::Filesystem { stats, abnormal } => {
                assert_eq!(stats.total_bytes, 10 * GIB);
                assert!(abnormal.is_none());
            }
            other => panic!("unexpected {other:?}"),
        }
        // Another disk asked about this path: what is mounted there is disk-1, by its name.
        host.add_device(
            Path::new("/by-id/virtio-disk-2"),
            Path::new("/dev/loop4"),
            FakeDevice::formatted("xfs", GIB),
        );
        let err = node.stats("disk-2", &req.staging).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
        assert!(err.to_string().contains("virtio-disk-1"), "{err}");
        // The disk is detached under the mount: its device and its names are gone.
        host.remove_device(Path::new("/dev/loop3"));
        match node.stats("disk-1", &req.staging).await.unwrap() {
            VolumeUsage::Lost { abnormal } => {
                assert!(abnormal.contains("no longer attached"), "{abnormal}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn stats_tell_a_stale_device_from_a_scsi_disk_named_only_by_wwn() {
        let (host, node) = setup(Some("xfs"));
        let req = stage_req("xfs");
        node.stage(&req).await.unwrap();
        // Re-attached under a new device: the name moved, the mount stayed on the old one.
        host.add_device(
            Path::new("/by-id/virtio-disk-1"),
            Path::new("/dev/loop5"),
            FakeDevice::formatted("xfs", 10 * GIB),
        );
        match node.stats("disk-1", &req.staging).await.unwrap() {
            VolumeUsage::Lost { abnormal } => {
                assert!(abnormal.contains("re-attached"), "{abnormal}")
            }
            other => panic!("unexpected {other:?}"),
        }

        // A SCSI disk: only its WWN names it, which the disk ID alone does not give.
        let (host, node) = setup(None);
        host.add_device(
            Path::new("/by-id/scsi-36001405abc"),
            Path::new("/dev/sdb"),
            FakeDevice::formatted("xfs", 5 * GIB),
        );
        host.add_path(req.staging.as_path());
        host.mount(Path::new("/dev/sdb"), req.staging.as_path(), "xfs", &[])
            .await
            .unwrap();
        match node.stats("disk-scsi", &req.staging).await.unwrap() {
            VolumeUsage::Filesystem { stats, abnormal } => {
                assert_eq!(stats.total_bytes, 5 * GIB);
                assert!(
                    abnormal.is_none(),
                    "a healthy SCSI disk reported {abnormal:?}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        // ... and when that name goes with the device, the disk is gone.
        host.remove_device(Path::new("/dev/sdb"));
        match node.stats("disk-scsi", &req.staging).await.unwrap() {
            VolumeUsage::Lost { abnormal } => assert!(abnormal.contains("no longer attached")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn stats_of_a_path_holding_something_else_are_not_found() {
        let (host, node) = setup(Some("xfs"));
        let req = stage_req("xfs");
        host.add_path(req.staging.as_path());
        host.mount(Path::new("tmpfs"), req.staging.as_path(), "tmpfs", &[])
            .await
            .unwrap();
        let err = node.stats("disk-1", &req.staging).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
        assert!(err.to_string().contains("tmpfs"), "{err}");
    }

    #[tokio::test]
    async fn a_format_outlives_a_dropped_call_and_the_retry_waits_for_it() {
        let (host, node) = setup(None);
        let node = Arc::new(node);
        let req = stage_req("xfs");
        let mkfs_calls = || {
            host.calls()
                .iter()
                .filter(|c| c.starts_with("mkfs"))
                .count()
        };
        host.hold_mkfs();
        let first = tokio::spawn({
            let (node, req) = (Arc::clone(&node), req.clone());
            async move { node.stage(&req).await }
        });
        while mkfs_calls() == 0 {
            tokio::task::yield_now().await;
        }
        // The kubelet gives up on the call while mkfs runs: its future is dropped.
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        let retry = tokio::spawn({
            let (node, req) = (Arc::clone(&node), req.clone());
            async move { node.stage(&req).await }
        });
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            mkfs_calls(),
            1,
            "the retry formatted beside the running format"
        );
        assert!(
            host.mount_table().is_empty(),
            "mounted before the format ended"
        );
        host.finish_mkfs();
        retry.await.unwrap().unwrap();
        assert_eq!(mkfs_calls(), 1, "{:?}", host.calls());
        assert_eq!(host.mount_table().len(), 1);
        assert_eq!(
            host.device(Path::new("/dev/loop3"))
                .unwrap()
                .fs_type
                .as_deref(),
            Some("xfs")
        );
    }

    #[tokio::test]
    async fn formats_a_blank_disk_once_and_stages_idempotently() {
        let (host, node) = setup(None);
        node.stage(&stage_req("xfs")).await.unwrap();
        node.stage(&stage_req("xfs")).await.unwrap();
        let mkfs: Vec<String> = host
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("mkfs"))
            .collect();
        assert_eq!(mkfs, vec!["mkfs xfs /dev/loop3"]);
        assert_eq!(host.mount_table().len(), 1);
    }

    #[tokio::test]
    async fn a_freshly_made_filesystem_is_not_measured_for_a_grow() {
        for fs in ["xfs", "ext4"] {
            let (host, node) = setup(None);
            node.stage(&stage_req(fs)).await.unwrap();
            let calls = host.calls();
            assert!(
                !calls
                    .iter()
                    .any(|c| c.starts_with("fssize") || c.starts_with("grow")),
                "{fs}: {calls:?}"
            );
        }
    }

    #[tokio::test]
    async fn never_formats_a_disk_that_has_a_filesystem() {
        let (host, node) = setup(Some("ext4"));
        node.stage(&stage_req("")).await.unwrap();
        assert!(!host.calls().iter().any(|c| c.starts_with("mkfs")));
        assert_eq!(host.mount_table()[0].fs_type, "ext4");

        let (host, node) = setup(Some("ext4"));
        let err = node.stage(&stage_req("xfs")).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(!host.calls().iter().any(|c| c.starts_with("mkfs")));
        assert!(host.mount_table().is_empty());
    }

    #[tokio::test]
    async fn grows_ext4_offline_at_stage_when_the_disk_grew() {
        let (host, node) = setup(Some("ext4"));
        host.resize_device(Path::new("/dev/loop3"), 20 * GIB);
        node.stage(&stage_req("ext4")).await.unwrap();
        let calls = host.calls();
        let grow = calls
            .iter()
            .position(|c| c == "grow ext4 /dev/loop3 offline")
            .expect("offline grow");
        let mount = calls
            .iter()
            .position(|c| c.starts_with("mount /dev/loop3"))
            .unwrap();
        assert!(grow < mount, "grow must happen before mount: {calls:?}");
    }

    #[tokio::test]
    async fn failed_online_ext4_grow_is_a_clear_error_and_keeps_the_mount() {
        let (host, node) = setup(Some("ext4"));
        let req = stage_req("ext4");
        node.stage(&req).await.unwrap();
        host.resize_device(Path::new("/dev/loop3"), 20 * GIB);
        host.fail("grow ext4", "Permission denied to resize filesystem");
        let err = node
            .expand(&NodeExpand {
                native_id: "disk-1".into(),
                volume_path: req.staging.clone(),
                staging: None,
                capacity: Default::default(),
                capability: Some(req.capability.clone()),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.to_string().contains("next NodeStageVolume"), "{err}");
        assert_eq!(host.mount_table().len(), 1, "the mount must stay");
    }

    fn read_only(mut req: NodeStage) -> NodeStage {
        req.capability.access_mode = AccessMode::SingleNodeReaderOnly;
        req
    }

    #[tokio::test]
    async fn read_only_stage_never_grows_or_writes() {
        for fs in ["xfs", "ext4"] {
            let (host, node) = setup(Some(fs));
            host.resize_device(Path::new("/dev/loop3"), 20 * GIB);
            node.stage(&read_only(stage_req(fs))).await.unwrap();
            let calls = host.calls();
            assert!(
                !calls.iter().any(|c| c.starts_with("grow")),
                "{fs}: a read-only volume must not be grown: {calls:?}"
            );
            assert!(host.mount_table()[0].is_read_only());
        }
    }

    #[test]
    fn read_only_mode_drops_a_conflicting_rw_option() {
        let mut cap = read_only(stage_req("ext4")).capability;
        cap.access_type = AccessType::Mount {
            fs_type: "ext4".into(),
            mount_flags: vec!["rw".into(), "noatime".into()],
        };
        assert_eq!(mount_options(&cap), vec!["noatime", "ro"]);
    }

    #[tokio::test]
    async fn expand_never_grows_a_device_that_only_shares_the_old_name() {
        let (host, node) = setup(Some("xfs"));
        let req = stage_req("xfs");
        node.stage(&req).await.unwrap();
        // The disk goes away and the kernel gives its name to another, larger disk.
        host.replace_device(
            Path::new("/dev/loop3"),
            FakeDevice {
                size: 20 * GIB,
                fs_type: Some("xfs".into()),
                fs_size: 10 * GIB,
                serial: None,
            },
        );
        let expand = NodeExpand {
            native_id: "disk-1".into(),
            volume_path: req.staging.clone(),
            staging: None,
            capacity: CapacityRange::new((20 * GIB) as i64, 0).unwrap(),
            capability: Some(req.capability.clone()),
        };
        let err = node.expand(&expand).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
        assert!(err.to_string().contains("no longer names"), "{err}");
        assert!(
            !host.calls().iter().any(|c| c.starts_with("grow")),
            "grew another disk: {:?}",
            host.calls()
        );
    }

    #[tokio::test]
    async fn expand_waits_until_the_guest_sees_the_new_size() {
        let (host, node) = setup(Some("xfs"));
        let req = stage_req("xfs");
        node.stage(&req).await.unwrap();
        let expand = NodeExpand {
            native_id: "disk-1".into(),
            volume_path: req.staging.clone(),
            staging: None,
            capacity: CapacityRange::new((20 * GIB) as i64, 0).unwrap(),
            capability: Some(req.capability.clone()),
        };
        let err = node.expand(&expand).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
        host.resize_device(Path::new("/dev/loop3"), 20 * GIB);
        assert_eq!(node.expand(&expand).await.unwrap(), 20 * GIB);
        assert_eq!(
            host.device(Path::new("/dev/loop3")).unwrap().fs_size,
            20 * GIB
        );
    }

    /// The disk comes back under another device node (detach and re-attach while staged).
    fn reattach(host: &FakeHost, new_device: &str) {
        let old = host
            .device(Path::new("/dev/loop3"))
            .expect("the first device");
        host.add_device(
            Path::new("/by-id/virtio-disk-1"),
            Path::new(new_device),
            old,
        );
    }

    fn sources(host: &FakeHost) -> Vec<(String, String)> {
        host.mount_table()
            .into_iter()
            .map(|m| (m.source, m.mount_point.display().to_string()))
            .collect()
    }

    #[tokio::test]
    async fn a_stale_staging_mount_of_a_reattached_disk_is_replaced() {
        let (host, node) = setup(Some("ext4"));
        let req = stage_req("ext4");
        node.stage(&req).await.unwrap();
        reattach(&host, "/dev/loop4");
        node.stage(&req).await.unwrap();
        assert_eq!(
            sources(&host),
            vec![("/dev/loop4".into(), req.staging.to_string())],
            "the stale mount must give way to the disk's current device: {:?}",
            host.calls()
        );
        node.stage(&req).await.unwrap();
        assert_eq!(host.mount_table().len(), 1);

        // A hot-removed virtio disk: the old node is gone, the mount stays.
        let (host, node) = setup(Some("xfs"));
        node.stage(&stage_req("xfs")).await.unwrap();
        host.remove_device(Path::new("/dev/loop3"));
        reattach_from(&host, "/dev/vdc");
        node.stage(&stage_req("xfs")).await.unwrap();
        assert_eq!(host.mount_table()[0].source, "/dev/vdc");
        assert_eq!(host.mount_table().len(), 1);
    }

    fn reattach_from(host: &FakeHost, new_device: &str) {
        host.add_device(
            Path::new("/by-id/virtio-disk-1"),
            Path::new(new_device),
            FakeDevice::formatted("xfs", 10 * GIB),
        );
    }

    #[tokio::test]
    async fn a_stale_staging_mount_still_used_by_pods_is_refused_and_kept() {
        let (host, node) = setup(Some("ext4"));
        let req = stage_req("ext4");
        node.stage(&req).await.unwrap();
        let target = AllowedRoot::new("/var/lib/kubelet")
            .unwrap()
            .check("/var/lib/kubelet/pods/p/volumes/v/mount", "target")
            .unwrap();
        host.bind_mount(req.staging.as_path(), target.as_path(), false)
            .await
            .unwrap();
        reattach(&host, "/dev/loop4");
        let err = node.stage(&req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
        assert!(err.to_string().contains(&target.to_string()), "{err}");
        assert!(
            !host.calls().iter().any(|c| c.contains("/dev/loop4")),
            "the new device must not be mounted beside the live old filesystem: {:?}",
            host.calls()
        );
        assert_eq!(host.mount_table().len(), 2);
        // Once the pod is unpublished, the next stage recovers.
        host.unmount(target.as_path()).await.unwrap();
        node.stage(&req).await.unwrap();
        assert_eq!(host.mount_table()[0].source, "/dev/loop4");
    }

    #[tokio::test]
    async fn a_foreign_mount_at_the_staging_path_is_never_unmounted() {
        let (host, node) = setup(Some("ext4"));
        let req = stage_req("ext4");
        host.mount(Path::new("tmpfs"), req.staging.as_path(), "tmpfs", &[])
            .await
            .unwrap();
        let err = node.stage(&req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
        assert_eq!(host.mount_table().len(), 1);
        assert!(!host.calls().iter().any(|c| c.starts_with("umount")));
    }

    #[tokio::test]
    async fn a_staging_mount_is_recognised_by_device_number_not_spelling() {
        let (host, node) = setup(Some("ext4"));
        let req = stage_req("ext4");
        // Mounted through the by-id link: mountinfo shows that name, but it is the same device.
        host.mount(
            Path::new("/by-id/virtio-disk-1"),
            req.staging.as_path(),
            "ext4",
            &[],
        )
        .await
        .unwrap();
        node.stage(&req).await.unwrap();
        assert_eq!(host.mount_table().len(), 1, "{:?}", host.calls());

        // btrfs shows an anonymous device number; its source still names the device.
        let (host, node) = setup(Some("btrfs"));
        node.stage(&stage_req("btrfs")).await.unwrap();
        assert!(host.mount_table()[0].device_number.starts_with("0:"));
        node.stage(&stage_req("btrfs")).await.unwrap();
        assert_eq!(host.mount_table().len(), 1, "{:?}", host.calls());
    }

    #[tokio::test]
    async fn a_stage_with_the_other_read_only_mode_is_already_exists() {
        let (_, node) = setup(Some("ext4"));
        node.stage(&stage_req("ext4")).await.unwrap();
        let err = node.stage(&read_only(stage_req("ext4"))).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
        assert!(err.to_string().contains("read-write"), "{err}");

        let (_, node) = setup(Some("ext4"));
        node.stage(&read_only(stage_req("ext4"))).await.unwrap();
        node.stage(&read_only(stage_req("ext4"))).await.unwrap();
        let err = node.stage(&stage_req("ext4")).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
        assert!(err.to_string().contains("read-only"), "{err}");
    }

    #[tokio::test]
    async fn a_stage_that_fails_after_mounting_leaves_nothing_mounted() {
        let (host, node) = setup(Some("xfs"));
        host.resize_device(Path::new("/dev/loop3"), 20 * GIB);
        host.fail("grow xfs", "xfs_growfs: XFS_IOC_FSGROWFSDATA xfsctl failed");
        let err = node.stage(&stage_req("xfs")).await.unwrap_err();
        assert!(err.to_string().contains("xfs_growfs"), "{err}");
        assert!(
            host.mount_table().is_empty(),
            "the kubelet sends no NodeUnstage after a failed stage; the mount would leak: {:?}",
            host.mount_table()
        );
    }

    #[tokio::test]
    async fn missing_device_is_not_found() {
        let (_, node) = setup(None);
        let mut req = stage_req("ext4");
        req.native_id = "other-disk".into();
        assert_eq!(
            node.stage(&req).await.unwrap_err().code(),
            tonic::Code::NotFound
        );
    }
}
