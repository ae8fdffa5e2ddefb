//! What an EVS disk can be used as: one node at a time, a filesystem we can make or a raw device.

use std::collections::BTreeMap;

use everest_backend::Error;
use everest_backend::backend::Capabilities;
use everest_backend::capability::{AccessMode, AccessType, VolumeCapability};

/// What an EVS disk offers: it grows (and its filesystem with it), it is listed with its
/// attachments, and it serves one node at a time.
pub const CAPABILITIES: Capabilities = Capabilities {
    expand: true,
    node_expand: true,
    list: true,
    snapshots: true,
    clone: true,
    modify: true,
    access_modes: &[
        AccessMode::SingleNodeWriter,
        AccessMode::SingleNodeReaderOnly,
        AccessMode::SingleNodeSingleWriter,
        AccessMode::SingleNodeMultiWriter,
    ],
};
use everest_backend::params::FSTYPE_KEY;

/// Filesystems the node can create and grow on an EVS disk.
pub const FS_TYPES: &[&str] = &["ext4", "xfs", "ext3", "btrfs"];

/// Mount options a StorageClass or PV may add; anything else is refused so user input never
/// reaches `mount` unchecked. Options that trade the filesystem's consistency away are left
/// out on purpose: `nobarrier` (a host crash or power loss can corrupt the filesystem; newer
/// kernels refuse it on xfs anyway) and `norecovery` (mounts without replaying the journal, so
/// the workload sees an inconsistent filesystem).
pub const ALLOWED_MOUNT_FLAGS: &[&str] = &[
    "noatime",
    "nodiratime",
    "relatime",
    "strictatime",
    "lazytime",
    "discard",
    "nodiscard",
    "sync",
    "dirsync",
    "noexec",
    "nosuid",
    "nodev",
    "ro",
    "rw",
    "nouuid",
    "data=ordered",
    "data=writeback",
    "data=journal",
    "inode64",
    "largeio",
];

/// Rejects a capability an EVS disk cannot serve, naming what was asked for.
pub fn check_capability(cap: &VolumeCapability) -> Result<(), Error> {
    if cap.access_mode.is_multi_node() {
        return Err(Error::InvalidArgument(format!(
            "access mode {:?} is not supported: an EVS disk attaches to one node at a time (use ReadWriteOnce or ReadWriteOncePod)",
            cap.access_mode
        )));
    }
    if let AccessType::Mount {
        fs_type,
        mount_flags,
    } = &cap.access_type
    {
        if !fs_type.is_empty() {
            check_fs_type(fs_type, "volume capability fs_type")?;
        }
        if let Some(bad) = split_flags(mount_flags).find(|f| !ALLOWED_MOUNT_FLAGS.contains(f)) {
            return Err(Error::InvalidArgument(format!(
                "mount option {bad:?} is not allowed; allowed: {}",
                ALLOWED_MOUNT_FLAGS.join(", ")
            )));
        }
    }
    Ok(())
}

/// Each option of `mount_flags`: a PV may write several in one entry (`noatime,nodiratime`),
/// and each is checked and passed on its own.
pub fn split_flags(mount_flags: &[String]) -> impl Iterator<Item = &str> {
    mount_flags
        .iter()
        .flat_map(|f| f.split(','))
        .map(str::trim)
        .filter(|f| !f.is_empty())
}

fn check_fs_type(fs_type: &str, source: &str) -> Result<(), Error> {
    if FS_TYPES.contains(&fs_type) {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "{source} {fs_type:?} is not supported on EVS disks; use one of {}",
        FS_TYPES.join(", ")
    )))
}

/// The filesystem a new volume is to get when the StorageClass names one
/// (`csi.storage.k8s.io/fstype`, which csi-provisioner normally turns into the capability's
/// fs_type but passes on in some setups): checked at CreateVolume, and refused when a capability
/// asks for another one, so the volume cannot be made for one filesystem and staged as another.
pub fn storage_class_fs_type(
    param: Option<&str>,
    caps: &[VolumeCapability],
) -> Result<Option<String>, Error> {
    let Some(fs) = param else {
        return Ok(None);
    };
    check_fs_type(fs, &format!("StorageClass parameter {FSTYPE_KEY}"))?;
    if let Some(other) = caps
        .iter()
        .filter_map(VolumeCapability::fs_type)
        .find(|c| *c != fs)
    {
        return Err(Error::InvalidArgument(format!(
            "StorageClass parameter {FSTYPE_KEY}={fs:?} conflicts with the volume capability's fs_type {other:?}"
        )));
    }
    Ok(Some(fs.to_owned()))
}

/// The filesystem to stage a volume with, by precedence: the capability's fs_type (what the
/// kubelet passes from the PV), then the StorageClass's fstype carried in the volume context,
/// then `None` (the backend's `default_fs_type`).
pub fn requested_fs_type<'a>(
    cap: &'a VolumeCapability,
    volume_context: &'a BTreeMap<String, String>,
) -> Result<Option<&'a str>, Error> {
    if let Some(fs) = cap.fs_type() {
        return Ok(Some(fs));
    }
    match volume_context.get(FSTYPE_KEY).map(String::as_str) {
        Some("") | None => Ok(None),
        Some(fs) => {
            check_fs_type(fs, &format!("volume context {FSTYPE_KEY}"))?;
            Ok(Some(fs))
        }
    }
}

#[cfg(test)]
mod tests {
    use everest_backend::capability::AccessMode;

    use super::*;

    fn cap(fs: &str, flags: &[&str], mode: AccessMode) -> VolumeCapability {
        VolumeCapability {
            access_type: AccessType::Mount {
                fs_type: fs.into(),
                mount_flags: flags.iter().map(|s| s.to_string()).collect(),
            },
            access_mode: mode,
        }
    }

    #[test]
    fn single_node_filesystems_and_block_are_fine() {
        assert!(check_capability(&cap("xfs", &["noatime"], AccessMode::SingleNodeWriter)).is_ok());
        assert!(check_capability(&cap("", &[], AccessMode::SingleNodeSingleWriter)).is_ok());
        let block = VolumeCapability {
            access_type: AccessType::Block,
            access_mode: AccessMode::SingleNodeWriter,
        };
        assert!(check_capability(&block).is_ok());
    }

    #[test]
    fn multi_node_unknown_fs_and_odd_flags_are_refused() {
        for c in [
            cap("ext4", &[], AccessMode::MultiNodeMultiWriter),
            cap("zfs", &[], AccessMode::SingleNodeWriter),
            cap("ext4", &["remount,exec"], AccessMode::SingleNodeWriter),
            cap("ext4", &["nobarrier"], AccessMode::SingleNodeWriter),
            cap("xfs", &["norecovery"], AccessMode::SingleNodeReaderOnly),
            cap("ext4", &["noatime,suid"], AccessMode::SingleNodeWriter),
            cap("ext4", &["dev"], AccessMode::SingleNodeWriter),
        ] {
            assert_eq!(
                check_capability(&c).unwrap_err().code(),
                tonic::Code::InvalidArgument
            );
        }
    }

    #[test]
    fn a_refused_flag_is_named_even_inside_a_list() {
        let err = check_capability(&cap(
            "ext4",
            &["noatime", "nodiratime,suid"],
            AccessMode::SingleNodeWriter,
        ))
        .unwrap_err();
        assert!(err.to_string().contains("\"suid\""), "{err}");
        assert!(
            check_capability(&cap(
                "ext4",
                &["noatime,nodiratime", " discard "],
                AccessMode::SingleNodeWriter
            ))
            .is_ok()
        );
    }

    #[test]
    fn fs_type_precedence_capability_then_storage_class_then_default() {
        let ctx = BTreeMap::from([(FSTYPE_KEY.to_owned(), "xfs".to_owned())]);
        let with = cap("btrfs", &[], AccessMode::SingleNodeWriter);
        let without = cap("", &[], AccessMode::SingleNodeWriter);
        assert_eq!(requested_fs_type(&with, &ctx).unwrap(), Some("btrfs"));
        assert_eq!(requested_fs_type(&without, &ctx).unwrap(), Some("xfs"));
        assert_eq!(requested_fs_type(&without, &BTreeMap::new()).unwrap(), None);
        let bad = BTreeMap::from([(FSTYPE_KEY.to_owned(), "zfs".to_owned())]);
        let err = requested_fs_type(&without, &bad).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.to_string().contains("zfs"), "{err}");
    }

    #[test]
    fn storage_class_fs_type_is_checked_against_the_capabilities() {
        let caps = [cap("", &[], AccessMode::SingleNodeWriter)];
        assert_eq!(storage_class_fs_type(None, &caps).unwrap(), None);
        assert_eq!(
            storage_class_fs_type(Some("xfs"), &caps)
                .unwrap()
                .as_deref(),
            Some("xfs")
        );
        let ext4 = [cap("ext4", &[], AccessMode::SingleNodeWriter)];
        for (fs, caps, needle) in [("xfs", &ext4[..], "conflicts"), ("ntfs", &caps[..], "ntfs")] {
            let err = storage_class_fs_type(Some(fs), caps).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.to_string().contains(needle), "{err}");
        }
    }
}
