//! What an EVS disk can be used as: one node at a time, a filesystem we can make or a raw device.

use everest_backend::Error;
use everest_backend::capability::{AccessType, VolumeCapability};

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
        if !fs_type.is_empty() && !FS_TYPES.contains(&fs_type.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "filesystem type {fs_type:?} is not supported on EVS disks; use one of {}",
                FS_TYPES.join(", ")
            )));
        }
        if let Some(bad) = mount_flags
            .iter()
            .find(|f| !ALLOWED_MOUNT_FLAGS.contains(&f.as_str()))
        {
            return Err(Error::InvalidArgument(format!(
                "mount option {bad:?} is not allowed; allowed: {}",
                ALLOWED_MOUNT_FLAGS.join(", ")
            )));
        }
    }
    Ok(())
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
        ] {
            assert_eq!(
                check_capability(&c).unwrap_err().code(),
                tonic::Code::InvalidArgument
            );
        }
    }
}
