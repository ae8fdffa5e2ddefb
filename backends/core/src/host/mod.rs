//! Everything that touches the machine sits behind [`Host`], so node logic is unit-testable with
//! `FakeHost` and the real [`LinuxHost`] is exercised by integration tests on loop devices.
//!
//! Without the `test-util` feature the fake is not part of the API, so production code cannot
//! reach it (checked by `cargo test -p everest-backend --doc`, where nothing enables the feature):
#![cfg_attr(not(feature = "test-util"), doc = "```compile_fail")]
#![cfg_attr(feature = "test-util", doc = "```ignore")]
//! let host = everest_backend::host::FakeHost::default();
//! ```

mod command;
// The fake is for tests only: built for this crate's own tests, and for other crates' tests
// through the `test-util` feature of their dev-dependencies, never into the daemons.
#[cfg(any(test, feature = "test-util"))]
mod fake;
mod linux;
mod mountinfo;
mod sysfs;

use std::path::{Path, PathBuf};

use async_trait::async_trait;

pub use command::{CommandKind, HostSettings};
#[cfg(any(test, feature = "test-util"))]
pub use fake::{FakeDevice, FakeHost};
pub use linux::LinuxHost;
pub use mountinfo::{MountEntry, MountTable, parse_mountinfo, parse_mountinfo_bytes};

/// A host operation that failed: which command or call, and what it said.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{operation} failed: {detail}")]
pub struct HostError {
    /// The program and its arguments, or the system call, that failed.
    pub operation: String,
    /// Exit status and the program's own error output.
    pub detail: String,
    /// Whether it was stopped at its time limit (and so may be retried).
    pub timed_out: bool,
}

impl HostError {
    /// Builds an error for `operation` with `detail`.
    pub fn new(operation: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            operation: operation.into(),
            detail: detail.into(),
            timed_out: false,
        }
    }

    /// The error for `operation` stopped after running for `limit`.
    pub fn timed_out(operation: impl Into<String>, limit: std::time::Duration) -> Self {
        Self {
            operation: operation.into(),
            detail: format!(
                "did not finish within {}s and was stopped; the retry finds what it completed",
                limit.as_secs_f32()
            ),
            timed_out: true,
        }
    }
}

/// Filesystem usage, as `statvfs` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FsStats {
    /// Total bytes.
    pub total_bytes: u64,
    /// Bytes available to unprivileged users.
    pub available_bytes: u64,
    /// Bytes in use.
    pub used_bytes: u64,
    /// Total inodes.
    pub total_inodes: u64,
    /// Free inodes.
    pub free_inodes: u64,
    /// Inodes in use.
    pub used_inodes: u64,
    /// Whether the filesystem is mounted read-only.
    pub read_only: bool,
}

/// A FUSE mounter to start: the program and its arguments (which must carry no secret: they show
/// in `ps`; credentials go in a file, see [`Host::write_private_file`]), and the filesystem type
/// the kernel shows for the mount it makes (`fuse.s3fs`), which proves the mount is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuseMount {
    /// The mounter, e.g. `s3fs`.
    pub program: String,
    /// Its arguments, already checked (mount options against the mounter's allowlist).
    pub args: Vec<String>,
    /// The mount's type in mountinfo, e.g. `fuse.s3fs`.
    pub fs_type: String,
    /// Variables taken out of the mounter's environment.
    pub env_remove: Vec<String>,
}

/// The machine as the node plugin sees it.
#[async_trait]
pub trait Host: Send + Sync + std::fmt::Debug {
    /// The parsed `/proc/self/mountinfo`, as the kernel shows it now. The real host reads and
    /// parses it again only when the kernel says it changed (see [`LinuxHost`]), so a caller
    /// holds one table per call and passes it down rather than asking twice.
    async fn mounts(&self) -> Result<MountTable, HostError>;
    /// Whether the mount table can be read at all: its first line, without reading and parsing
    /// every mount (what a Probe asks, many times a minute, on a node with hundreds of mounts).
    async fn mount_table_readable(&self) -> Result<(), HostError>;
    /// Mounts `source` of type `fs_type` on `target` with `options`.
    async fn mount(
        &self,
        source: &Path,
        target: &Path,
        fs_type: &str,
        options: &[String],
    ) -> Result<(), HostError>;
    /// Mounts the NFS export `export` on `target` with `options` (already checked, see
    /// [`crate::nfs::mount_options`]).
    async fn mount_nfs(
        &self,
        export: &crate::nfs::NfsExport,
        target: &Path,
        options: &[String],
    ) -> Result<(), HostError>;
    /// Runs the FUSE mounter `mount`, which mounts at `target` and leaves its daemon running;
    /// an error unless a mount of `mount.fs_type` is at `target` afterwards.
    async fn mount_fuse(&self, mount: &FuseMount, target: &Path) -> Result<(), HostError>;
    /// Unmounts the FUSE mount at `target` (`fusermount -u`), lazily (`-z`) when that fails, as
    /// it does for a mount whose daemon died ("transport endpoint is not connected") or is busy.
    async fn unmount_fuse(&self, target: &Path) -> Result<(), HostError>;
    /// Writes `contents` to `path`, readable by the owner only (0600), in a directory that is
    /// made private (0700) if it does not exist: where a mounter's credentials go.
    async fn write_private_file(&self, path: &Path, contents: &[u8]) -> Result<(), HostError>;
    /// Whether the kernel can mount filesystems of `fs_type` (it is in `/proc/filesystems`).
    async fn kernel_supports(&self, fs_type: &str) -> Result<bool, HostError>;
    /// Bind-mounts `source` onto `target`, read-only when asked.
    async fn bind_mount(
        &self,
        source: &Path,
        target: &Path,
        read_only: bool,
    ) -> Result<(), HostError>;
    /// Unmounts the newest mount at `target`, never following a symlink at `target` itself;
    /// `false` when nothing is mounted there (or the path does not exist), so a caller can
    /// unmount until nothing is left without reading the mount table.
    async fn unmount(&self, target: &Path) -> Result<bool, HostError>;
    /// The filesystem type on `device`, or `None` when it is blank (probes the device itself).
    async fn filesystem_of(&self, device: &Path) -> Result<Option<String>, HostError>;
    /// Creates a filesystem of `fs_type` on `device`.
    async fn mkfs(&self, device: &Path, fs_type: &str) -> Result<(), HostError>;
    /// Erases the filesystem signatures on `device` (`wipefs -a`): only for undoing an mkfs
    /// that was stopped part-way on a device that was blank before it.
    async fn wipe_signatures(&self, device: &Path) -> Result<(), HostError>;
    /// The size of the filesystem on `device`, in bytes, as the filesystem itself records it
    /// (never the device's size): what decides a grow and proves it happened.
    /// `mount_point` is where it is mounted, if it is: a mounted xfs keeps its superblock in
    /// its own cache, so only the kernel (not the device) knows its size after a grow.
    async fn filesystem_size(
        &self,
        device: &Path,
        fs_type: &str,
        mount_point: Option<&Path>,
    ) -> Result<u64, HostError>;
    /// Grows the filesystem to fill `device`: offline for ext4 (`mount_point` = None), online for xfs/btrfs/ext4 when mounted.
    async fn grow_filesystem(
        &self,
        device: &Path,
        fs_type: &str,
        mount_point: Option<&Path>,
    ) -> Result<(), HostError>;
    /// The `major:minor` of the block device node `device` (its `st_rdev`), written as mountinfo
    /// writes a mount's device, so a mount can be matched to a device whatever its name.
    async fn device_number(&self, device: &Path) -> Result<String, HostError>;
    /// The size of a block device in bytes.
    async fn device_size(&self, device: &Path) -> Result<u64, HostError>;
    /// Resolves a symlink such as `/dev/disk/by-id/virtio-…` to the block device it names, or `None`.
    async fn resolve_device(&self, link: &Path) -> Result<Option<PathBuf>, HostError>;
    /// The names in `dir` (a by-id directory) that lead to the block device numbered
    /// `device_number` now: what udev keeps for a device that is present, and removes with it.
    async fn links_to(&self, dir: &Path, device_number: &str) -> Result<Vec<PathBuf>, HostError>;
    /// Asks the kernel to re-read a disk's size after an expand (SCSI disks); `false` when the
    /// disk needs no rescan (virtio).
    async fn rescan_device(&self, device: &Path) -> Result<bool, HostError>;
    /// The disk whose kernel-reported serial is `serial` (`/sys/block/*/serial`), for when no
    /// by-id link names it (no udev).
    async fn device_by_serial(&self, serial: &str) -> Result<Option<PathBuf>, HostError>;
    /// `statvfs` on a mounted path.
    async fn fs_stats(&self, path: &Path) -> Result<FsStats, HostError>;
    /// Whether `path` is (or has bind-mounted over it) a block device node.
    async fn is_block_device(&self, path: &Path) -> Result<bool, HostError>;
    /// Whether a path exists (without following a final symlink's target).
    async fn exists(&self, path: &Path) -> Result<bool, HostError>;
    /// Where `path` really leads: its longest existing ancestor with every symlink followed,
    /// and the rest as written. A dangling symlink along it is an error (what it names could be
    /// created anywhere).
    async fn resolve_existing(&self, path: &Path) -> Result<PathBuf, HostError>;
    /// Whether `path` itself is a symbolic link (not followed; a missing path is not, and
    /// neither is a mount point whose filesystem no longer answers).
    async fn is_symlink(&self, path: &Path) -> Result<bool, HostError>;
    /// Creates a directory and its parents.
    async fn make_dir(&self, path: &Path) -> Result<(), HostError>;
    /// Creates an empty file (the bind target for a raw block volume), parents included.
    async fn make_file(&self, path: &Path) -> Result<(), HostError>;
    /// Removes an empty directory or a file; a missing path is fine.
    async fn remove_path(&self, path: &Path) -> Result<(), HostError>;
}

/// The mount entries whose mount point is exactly `path`, newest last.
pub async fn mounts_at(host: &dyn Host, path: &Path) -> Result<Vec<MountEntry>, HostError> {
    Ok(host.mounts().await?.at(path).cloned().collect())
}

/// A mount being replaced (a FUSE mount whose mounter died): what its binds show in mountinfo,
/// so they can be found again after the mount itself is gone from its own path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LostMount {
    /// Its `major:minor` (anonymous for FUSE, never reused while a bind still holds it).
    pub device_number: String,
    /// Its filesystem type.
    pub fs_type: String,
}

impl LostMount {
    /// The newest mount at `path`, as one about to be replaced.
    pub async fn at(host: &dyn Host, path: &Path) -> Result<Option<Self>, HostError> {
        Ok(mounts_at(host, path).await?.pop().map(|m| Self {
            device_number: m.device_number,
            fs_type: m.fs_type,
        }))
    }

    /// Its binds still in place: every mount point other than `path` whose newest mount is it,
    /// bound whole (a pod's publish target). Binds of a subtree (a kubelet subPath) are left
    /// out: the subtree is a path inside the volume, which its users can make a symlink, and a
    /// privileged bind through it could reach anything on the host.
    pub async fn binds(&self, host: &dyn Host, path: &Path) -> Result<Vec<MountEntry>, HostError> {
        let all = host.mounts().await?;
        // Only the newest mount at each point is what a process opening it reaches.
        let mut newest: Vec<&MountEntry> = Vec::new();
        for m in all.iter() {
            newest.retain(|n| n.mount_point != m.mount_point);
            newest.push(m);
        }
        Ok(newest
            .into_iter()
            .filter(|m| {
                m.mount_point != path
                    && m.device_number == self.device_number
                    && m.fs_type == self.fs_type
                    && m.root == Path::new("/")
            })
            .cloned()
            .collect())
    }
}

/// Binds the (new) mount at `path` over each of `binds`, the whole-volume binds a
/// [`LostMount`] had, read-only where the old bind was; logs each, and answers how many were
/// bound. Stacked, not swapped: a container that sees the old bind through mount propagation
/// (HostToContainer) sees the new one on top of it, and unmounting the old first would take
/// the container's view away.
pub async fn bind_again(host: &dyn Host, path: &Path, binds: &[MountEntry]) -> usize {
    let mut bound = 0;
    for bind in binds {
        let point = bind.mount_point.display();
        match host
            .bind_mount(path, &bind.mount_point, bind.is_read_only())
            .await
        {
            Ok(()) => {
                bound += 1;
                tracing::info!(mount = %path.display(), bind = %point, "bound the new mount over a pod's dead bind of the old one");
            }
            Err(e) => {
                tracing::warn!(mount = %path.display(), bind = %point, error = %e, "cannot bind the new mount again; that pod keeps the dead mount until it is published again");
            }
        }
    }
    bound
}

/// Whether `mount` is a filesystem on the block device numbered `device_number`.
///
/// mountinfo names a mount's device by number, which stays right when device names move
/// (`/dev/vdb` → `/dev/vdc` after a re-attach). btrfs is the exception: it shows an anonymous
/// number (`0:NN`), so for those the device its source names is asked instead.
pub async fn is_mount_of(
    host: &dyn Host,
    mount: &MountEntry,
    device_number: &str,
) -> Result<bool, HostError> {
    if mount.device_number == device_number {
        return Ok(true);
    }
    if !mount.device_number.starts_with("0:") || !mount.source.starts_with('/') {
        return Ok(false);
    }
    let source = Path::new(&mount.source);
    // A source whose node is gone (a hot-removed disk) or is no block device is not our device.
    if !host.is_block_device(source).await? {
        return Ok(false);
    }
    Ok(host.device_number(source).await? == device_number)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fuse(target: &str) -> FuseMount {
        FuseMount {
            program: "s3fs".into(),
            args: vec!["bucket".into(), target.into()],
            fs_type: "fuse.s3fs".into(),
            env_remove: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_lost_mount_finds_its_whole_binds_even_after_it_is_gone() {
        let host = FakeHost::default();
        let (stage, other) = (Path::new("/stage/a"), Path::new("/stage/b"));
        host.mount_fuse(&fuse("/stage/a"), stage).await.unwrap();
        host.mount_fuse(&fuse("/stage/b"), other).await.unwrap();
        for (t, ro) in [("/pods/1", false), ("/pods/2", true), ("/pods/3", false)] {
            host.bind_mount(stage, Path::new(t), ro).await.unwrap();
        }
        host.bind_mount(other, Path::new("/pods/4"), false)
            .await
            .unwrap();
        // /pods/3 is covered by another volume's bind: what it serves is not this mount.
        host.bind_mount(other, Path::new("/pods/3"), false)
            .await
            .unwrap();
        let lost = LostMount::at(&host, stage).await.unwrap().unwrap();
        assert!(
            LostMount::at(&host, Path::new("/nothing"))
                .await
                .unwrap()
                .is_none()
        );

        // Found by its number, also once the mount at its own path is gone.
        host.unmount_fuse(stage).await.unwrap();
        let binds = lost.binds(&host, stage).await.unwrap();
        let points: Vec<_> = binds.iter().map(|b| b.mount_point.clone()).collect();
        assert_eq!(points, [PathBuf::from("/pods/1"), PathBuf::from("/pods/2")]);
        assert!(binds[1].is_read_only() && !binds[0].is_read_only());

        // Bound again, a bind is stacked over the old one, read-only as it was.
        host.mount_fuse(&fuse("/stage/a"), stage).await.unwrap();
        assert_eq!(bind_again(&host, stage, &binds).await, 2);
        let at = mounts_at(&host, Path::new("/pods/2")).await.unwrap();
        assert_eq!(at.len(), 2);
        assert!(at[1].is_read_only());
    }

    #[tokio::test]
    async fn a_subtree_bind_is_never_bound_again() {
        let host = FakeHost::default();
        let stage = Path::new("/stage/a");
        host.mount_fuse(&fuse("/stage/a"), stage).await.unwrap();
        host.bind_mount(stage, Path::new("/pods/1"), false)
            .await
            .unwrap();
        let lost = LostMount::at(&host, stage).await.unwrap().unwrap();
        // A kubelet subPath: the same filesystem, another root.
        host.add_subtree_bind(stage, Path::new("/pods/sub"), Path::new("/data/link"));
        let points: Vec<_> = lost
            .binds(&host, stage)
            .await
            .unwrap()
            .into_iter()
            .map(|b| b.mount_point)
            .collect();
        assert_eq!(points, [PathBuf::from("/pods/1")]);
    }
}
