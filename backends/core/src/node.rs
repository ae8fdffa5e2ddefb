//! Node-side steps every backend shares: bind-mounting a staged volume into a pod, tearing
//! mounts down idempotently, and reporting usage and health. State is read from the kernel's
//! mount table each time; nothing is remembered that could disagree with it.

use std::path::Path;

use crate::backend::VolumeUsage;
use crate::error::{Error, Result};
use crate::host::{Host, MountEntry};
use crate::paths::HostPath;

/// How a volume is published into a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishMode {
    /// Mount it read-only.
    pub readonly: bool,
    /// ReadWriteOncePod (SINGLE_NODE_SINGLE_WRITER): one target at a time on this node.
    pub single_pod: bool,
}

impl PublishMode {
    /// The mode a capability and the request's readonly flag ask for.
    pub fn of(cap: &crate::capability::VolumeCapability, readonly: bool) -> Self {
        use crate::capability::AccessMode;
        Self {
            readonly: readonly || cap.access_mode.is_read_only(),
            single_pod: cap.access_mode == AccessMode::SingleNodeSingleWriter,
        }
    }
}

/// Bind-mounts a staged filesystem (`staging`) onto the pod's `target`; a matching existing
/// publish is success, a conflicting one is ALREADY_EXISTS, and a second target of a
/// ReadWriteOncePod volume is FAILED_PRECONDITION.
pub async fn publish_filesystem(
    host: &dyn Host,
    volume: &str,
    staging: Option<&HostPath>,
    target: &HostPath,
    mode: PublishMode,
) -> Result<()> {
    // CSI's answer when a plugin that stages is asked to publish without a staging path.
    let staging = staging.ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "staging_target_path is required: volume {volume} is staged (NodeStageVolume first)"
        ))
    })?;
    let readonly = mode.readonly;
    let mounts = host.mounts().await?;
    let Some(staged) = mounts
        .iter()
        .rev()
        .find(|m| m.mount_point == staging.as_path())
    else {
        return Err(Error::FailedPrecondition(format!(
            "volume {volume} is not staged at {staging}; NodeStageVolume must succeed first"
        )));
    };
    if let Some(existing) = mounts
        .iter()
        .rev()
        .find(|m| m.mount_point == target.as_path())
    {
        return check_existing(volume, existing, &staged.source, target, readonly);
    }
    if mode.single_pod {
        let elsewhere = mounts.iter().find(|m| {
            m.device_number == staged.device_number
                && m.mount_point != staging.as_path()
                && m.mount_point != target.as_path()
        });
        refuse_second_pod(volume, elsewhere)?;
    }
    host.make_dir(target.as_path()).await?;
    host.bind_mount(staging.as_path(), target.as_path(), readonly)
        .await?;
    Ok(())
}

/// Bind-mounts a block device node onto a file at the pod's `target` (raw block volumes).
pub async fn publish_block(
    host: &dyn Host,
    volume: &str,
    device: &Path,
    target: &HostPath,
    mode: PublishMode,
) -> Result<()> {
    let readonly = mode.readonly;
    let mounts = host.mounts().await?;
    if let Some(existing) = mounts
        .iter()
        .rev()
        .find(|m| m.mount_point == target.as_path())
    {
        return check_existing(
            volume,
            existing,
            &device.to_string_lossy(),
            target,
            readonly,
        );
    }
    if mode.single_pod {
        // A bound device node shows as a mount whose root is the node's name in /dev.
        let name = device.file_name().unwrap_or_default();
        let elsewhere = mounts
            .iter()
            .find(|m| m.root.file_name() == Some(name) && m.mount_point != target.as_path());
        refuse_second_pod(volume, elsewhere)?;
    }
    // Nothing is mounted at the target, so whatever is there is a leftover (an empty directory
    // made by an older kubelet or a failed attempt, or a stale file): a device node can only be
    // bound onto a file. `remove_path` removes only files and empty directories, so no data can
    // go; anything else makes the publish fail instead.
    host.remove_path(target.as_path()).await?;
    host.make_file(target.as_path()).await?;
    host.bind_mount(device, target.as_path(), readonly).await?;
    Ok(())
}

/// ReadWriteOncePod: the volume may serve one pod at a time, so a second target waits until the
/// first is unpublished (the kubelet retries).
fn refuse_second_pod(volume: &str, elsewhere: Option<&MountEntry>) -> Result<()> {
    match elsewhere {
        Some(m) => Err(Error::FailedPrecondition(format!(
            "volume {volume} is ReadWriteOncePod (SINGLE_NODE_SINGLE_WRITER) and already published at {}; unpublish it there first",
            m.mount_point.display()
        ))),
        None => Ok(()),
    }
}

fn check_existing(
    volume: &str,
    existing: &MountEntry,
    want_source: &str,
    target: &HostPath,
    readonly: bool,
) -> Result<()> {
    // A bind of a device shows the devtmpfs "udev"/"devtmpfs" as its source, so compare what we can.
    let same_source = existing.source == want_source
        || existing
            .root
            .ends_with(Path::new(want_source).file_name().unwrap_or_default());
    if existing.is_read_only() != readonly {
        return Err(Error::AlreadyExists(format!(
            "volume {volume} is already published at {target} with readonly={}, not readonly={readonly}",
            existing.is_read_only()
        )));
    }
    // Something else mounted at the target is not this volume: answering OK would hand the pod
    // another volume's data (or none), so it is a conflict the CO must resolve.
    if !same_source {
        return Err(Error::AlreadyExists(format!(
            "{target} already has {} mounted (root {}), not volume {volume} ({want_source})",
            existing.source,
            existing.root.display()
        )));
    }
    Ok(())
}

/// Unmounts everything stacked on `path` and removes it (what NodeUnpublish owes the CO).
pub async fn unmount_and_remove(host: &dyn Host, path: &HostPath) -> Result<()> {
    unmount_all(host, path).await?;
    host.remove_path(path.as_path()).await?;
    Ok(())
}

/// Unmounts everything stacked on `path`; nothing mounted there is success.
pub async fn unmount_all(host: &dyn Host, path: &HostPath) -> Result<()> {
    // Unmount until the kernel says nothing is mounted there: a retried publish may have
    // stacked mounts. The unmount itself answers that, so the mount table is never read.
    for _ in 0..16 {
        if !host.unmount(path.as_path()).await? {
            return Ok(());
        }
    }
    Err(Error::Internal(format!(
        "{path} still has mounts after 16 unmounts; something keeps mounting there"
    )))
}

/// The newest mount at `path`, or NOT_FOUND: a path that does not exist or holds no mount holds
/// no volume (what NodeGetVolumeStats and NodeExpandVolume owe the CO for it).
pub async fn mount_at(host: &dyn Host, volume: &str, path: &HostPath) -> Result<MountEntry> {
    // The table first: a mount there proves the path exists, so only an unmounted path (the
    // rare answer) costs the look at the filesystem that says which error it is.
    if let Some(mount) = host.mounts().await?.newest_at(path.as_path()) {
        return Ok(mount.clone());
    }
    if !host.exists(path.as_path()).await? {
        return Err(Error::NotFound(format!(
            "volume path {path} of volume {volume} does not exist"
        )));
    }
    Err(Error::NotFound(format!(
        "volume {volume} is not mounted at {path}"
    )))
}

/// [`mount_at`], refusing a mount whose filesystem type does not start with `fs_type` (`nfs`,
/// `fuse`): what a path holds must be a volume of this kind (`what`, e.g. `NFS volume`) before
/// its usage is reported as the volume's.
pub async fn mount_of_kind(
    host: &dyn Host,
    volume: &str,
    path: &HostPath,
    fs_type: &str,
    what: &str,
) -> Result<MountEntry> {
    let mount = mount_at(host, volume, path).await?;
    if mount.fs_type.starts_with(fs_type) {
        Ok(mount)
    } else {
        Err(Error::NotFound(format!(
            "{path} holds a {} mount of {}, not {what} {volume}",
            mount.fs_type, mount.source
        )))
    }
}

/// Usage and health of the filesystem `mount` at `path`, which the backend has found to be this
/// volume's. A kernel that remounted it read-only (after I/O or filesystem errors) or a
/// filesystem that cannot be read any more makes the volume abnormal, not the call an error:
/// the kubelet turns the condition into an event on the pod.
pub async fn filesystem_usage(
    host: &dyn Host,
    mount: &MountEntry,
    path: &HostPath,
) -> Result<VolumeUsage> {
    let stats = match host.fs_stats(path.as_path()).await {
        Ok(stats) => stats,
        Err(e) => {
            return Ok(VolumeUsage::Lost {
                abnormal: format!(
                    "the filesystem at {path} cannot be read ({e}); check the disk and dmesg on the node"
                ),
            });
        }
    };
    // statvfs shows read-only when the mount or its superblock is: under a mount not asked to
    // be read-only, that is the superblock, which the kernel flips without a mount-table
    // event, so the (possibly cached) entry's superblock options cannot tell.
    let abnormal = (stats.read_only && !mount.mount_options.iter().any(|o| o == "ro"))
    .then(|| {
        "the filesystem was remounted read-only by the kernel (I/O or filesystem errors); check dmesg on the node".to_owned()
    });
    Ok(VolumeUsage::Filesystem { stats, abnormal })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{FakeDevice, FakeHost};
    use crate::paths::AllowedRoot;

    const RW: PublishMode = PublishMode {
        readonly: false,
        single_pod: false,
    };
    const RO: PublishMode = PublishMode {
        readonly: true,
        single_pod: false,
    };
    const ONE_POD: PublishMode = PublishMode {
        readonly: false,
        single_pod: true,
    };

    fn paths() -> (HostPath, HostPath) {
        let root = AllowedRoot::new("/var/lib/kubelet").unwrap();
        (
            root.check("/var/lib/kubelet/plugins/x/globalmount", "staging")
                .unwrap(),
            root.check("/var/lib/kubelet/pods/p/volumes/v/mount", "target")
                .unwrap(),
        )
    }

    #[tokio::test]
    async fn publish_requires_stage_and_is_idempotent() {
        let host = FakeHost::default();
        let (staging, target) = paths();
        let err = publish_filesystem(&host, "v", Some(&staging), &target, RW)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);

        host.add_device(
            Path::new("/dev/disk/by-id/x"),
            Path::new("/dev/loop0"),
            FakeDevice::formatted("ext4", 10),
        );
        host.mount(Path::new("/dev/loop0"), staging.as_path(), "ext4", &[])
            .await
            .unwrap();
        publish_filesystem(&host, "v", Some(&staging), &target, RW)
            .await
            .unwrap();
        publish_filesystem(&host, "v", Some(&staging), &target, RW)
            .await
            .unwrap();
        let binds = host
            .calls()
            .iter()
            .filter(|c| c.starts_with("bind"))
            .count();
        assert_eq!(binds, 1, "a repeated publish must not mount twice");
        let err = publish_filesystem(&host, "v", Some(&staging), &target, RO)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists);
    }

    #[tokio::test]
    async fn block_publish_replaces_an_empty_directory_at_the_target() {
        let host = FakeHost::default();
        let (_, target) = paths();
        host.add_device(
            Path::new("/dev/disk/by-id/x"),
            Path::new("/dev/loop0"),
            FakeDevice::default(),
        );
        host.make_dir(target.as_path()).await.unwrap();
        publish_block(&host, "v", Path::new("/dev/loop0"), &target, RW)
            .await
            .unwrap();
        publish_block(&host, "v", Path::new("/dev/loop0"), &target, RW)
            .await
            .unwrap();
        assert_eq!(host.mount_table().len(), 1);
        assert!(host.is_block_device(target.as_path()).await.unwrap());
    }

    #[tokio::test]
    async fn a_target_mounted_from_another_source_is_a_conflict() {
        let host = FakeHost::default();
        let (staging, target) = paths();
        for (link, dev) in [("/l0", "/dev/loop0"), ("/l1", "/dev/loop1")] {
            host.add_device(
                Path::new(link),
                Path::new(dev),
                FakeDevice::formatted("ext4", 10),
            );
        }
        host.mount(Path::new("/dev/loop0"), staging.as_path(), "ext4", &[])
            .await
            .unwrap();
        host.mount(Path::new("/dev/loop1"), target.as_path(), "ext4", &[])
            .await
            .unwrap();
        let err = publish_filesystem(&host, "v", Some(&staging), &target, RW)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
        let err = publish_block(&host, "v", Path::new("/dev/loop0"), &target, RW)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
    }

    #[tokio::test]
    async fn unmount_is_idempotent_and_removes_the_path() {
        let host = FakeHost::default();
        let (_, target) = paths();
        unmount_and_remove(&host, &target).await.unwrap();
        host.add_path(target.as_path());
        host.mount(Path::new("/dev/loop0"), target.as_path(), "ext4", &[])
            .await
            .unwrap();
        host.mount(Path::new("/dev/loop0"), target.as_path(), "ext4", &[])
            .await
            .unwrap();
        unmount_and_remove(&host, &target).await.unwrap();
        assert!(host.mount_table().is_empty());
        assert!(!host.exists(target.as_path()).await.unwrap());
    }

    #[tokio::test]
    async fn a_missing_or_unmounted_path_holds_no_volume() {
        let host = FakeHost::default();
        let (_, target) = paths();
        let err = mount_at(&host, "v", &target).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(err.to_string().contains("does not exist"), "{err}");
        host.add_path(target.as_path());
        let err = mount_at(&host, "v", &target).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(err.to_string().contains("not mounted"), "{err}");
    }

    #[tokio::test]
    async fn usage_of_a_healthy_and_of_a_kernel_read_only_filesystem() {
        let host = FakeHost::default();
        let (_, target) = paths();
        host.add_path(target.as_path());
        host.add_device(
            Path::new("/l"),
            Path::new("/dev/loop0"),
            FakeDevice::formatted("xfs", 100),
        );
        host.mount(Path::new("/dev/loop0"), target.as_path(), "xfs", &[])
            .await
            .unwrap();
        let mount = mount_at(&host, "v", &target).await.unwrap();
        match filesystem_usage(&host, &mount, &target).await.unwrap() {
            VolumeUsage::Filesystem { stats, abnormal } => {
                assert_eq!(stats.total_bytes, 100);
                assert!(abnormal.is_none());
            }
            other => panic!("unexpected {other:?}"),
        }
        // The kernel remounted the filesystem read-only under a read-write mount: the entry
        // read before does not show it (no mount-table event), statvfs does.
        host.set_superblock_read_only(target.as_path());
        match filesystem_usage(&host, &mount, &target).await.unwrap() {
            VolumeUsage::Filesystem { abnormal, .. } => {
                assert!(abnormal.unwrap().contains("read-only"));
            }
            other => panic!("unexpected {other:?}"),
        }
        // A read-only mount asked for is healthy.
        let mut asked = mount.clone();
        asked.mount_options.push("ro".into());
        match filesystem_usage(&host, &asked, &target).await.unwrap() {
            VolumeUsage::Filesystem { abnormal, .. } => assert!(abnormal.is_none()),
            other => panic!("unexpected {other:?}"),
        }
        // A filesystem that no longer answers statvfs is abnormal, not an error.
        host.unmount(target.as_path()).await.unwrap();
        match filesystem_usage(&host, &mount, &target).await.unwrap() {
            VolumeUsage::Lost { abnormal } => assert!(abnormal.contains("cannot be read")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_read_write_once_pod_volume_is_published_at_one_target_only() {
        let host = FakeHost::default();
        let (staging, target) = paths();
        let root = AllowedRoot::new("/var/lib/kubelet").unwrap();
        let second = root
            .check("/var/lib/kubelet/pods/q/volumes/v/mount", "target")
            .unwrap();
        host.add_device(
            Path::new("/dev/disk/by-id/x"),
            Path::new("/dev/loop0"),
            FakeDevice::formatted("ext4", 10),
        );
        host.mount(Path::new("/dev/loop0"), staging.as_path(), "ext4", &[])
            .await
            .unwrap();
        publish_filesystem(&host, "v", Some(&staging), &target, ONE_POD)
            .await
            .unwrap();
        // The same target again is idempotent; another target is refused, naming the first.
        publish_filesystem(&host, "v", Some(&staging), &target, ONE_POD)
            .await
            .unwrap();
        let err = publish_filesystem(&host, "v", Some(&staging), &second, ONE_POD)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.to_string().contains(&target.to_string()), "{err}");
        // ReadWriteOnce allows both; once the first pod is gone, the second may have it.
        publish_filesystem(&host, "v", Some(&staging), &second, RW)
            .await
            .unwrap();
        unmount_and_remove(&host, &second).await.unwrap();
        unmount_and_remove(&host, &target).await.unwrap();
        publish_filesystem(&host, "v", Some(&staging), &second, ONE_POD)
            .await
            .unwrap();

        // Raw block: the same rule for the device node.
        let block_target = root
            .check("/var/lib/kubelet/plugins/volumeDevices/a", "target")
            .unwrap();
        let block_second = root
            .check("/var/lib/kubelet/plugins/volumeDevices/b", "target")
            .unwrap();
        publish_block(&host, "v", Path::new("/dev/loop0"), &block_target, ONE_POD)
            .await
            .unwrap();
        let err = publish_block(&host, "v", Path::new("/dev/loop0"), &block_second, ONE_POD)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    }
}
