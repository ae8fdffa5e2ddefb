//! Volume capabilities: how a workload wants to use a volume, parsed once from the CSI message.

use everest_proto::csi::v1 as csi;
use everest_proto::csi::v1::volume_capability::access_mode::Mode;

use crate::error::Error;

/// How the volume is presented to the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessType {
    /// A filesystem mounted at the target path.
    Mount {
        /// The filesystem type; empty means the backend's default.
        fs_type: String,
        /// Extra mount options, checked against the backend's allowlist before use.
        mount_flags: Vec<String>,
    },
    /// A raw block device at the target path.
    Block,
}

/// Who may use the volume at once (the CSI access modes, without UNKNOWN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessMode {
    /// ReadWriteOnce.
    SingleNodeWriter,
    /// ReadOnly on one node.
    SingleNodeReaderOnly,
    /// ReadOnlyMany.
    MultiNodeReaderOnly,
    /// Many readers, one writer.
    MultiNodeSingleWriter,
    /// ReadWriteMany.
    MultiNodeMultiWriter,
    /// ReadWriteOncePod.
    SingleNodeSingleWriter,
    /// ReadWriteOnce shared by pods on one node.
    SingleNodeMultiWriter,
}

impl AccessMode {
    /// Whether the mode allows attaching to more than one node.
    pub fn is_multi_node(self) -> bool {
        matches!(
            self,
            AccessMode::MultiNodeReaderOnly
                | AccessMode::MultiNodeSingleWriter
                | AccessMode::MultiNodeMultiWriter
        )
    }

    /// Whether the mode only ever reads.
    pub fn is_read_only(self) -> bool {
        matches!(
            self,
            AccessMode::SingleNodeReaderOnly | AccessMode::MultiNodeReaderOnly
        )
    }
}

/// One requested capability: access type plus access mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeCapability {
    /// Filesystem or raw block.
    pub access_type: AccessType,
    /// Who may use it at once.
    pub access_mode: AccessMode,
}

impl VolumeCapability {
    /// The filesystem type asked for, if this is a mount capability with one set.
    pub fn fs_type(&self) -> Option<&str> {
        match &self.access_type {
            AccessType::Mount { fs_type, .. } if !fs_type.is_empty() => Some(fs_type),
            _ => None,
        }
    }

    /// Whether this asks for a raw block device.
    pub fn is_block(&self) -> bool {
        self.access_type == AccessType::Block
    }

    /// A filesystem capability with `mode`, mount flags `flags`, and no filesystem type.
    pub fn mount(mode: AccessMode, flags: &[&str]) -> Self {
        Self {
            access_type: AccessType::Mount {
                fs_type: String::new(),
                mount_flags: flags.iter().map(|f| (*f).to_owned()).collect(),
            },
            access_mode: mode,
        }
    }
}

impl TryFrom<&csi::VolumeCapability> for VolumeCapability {
    type Error = Error;

    fn try_from(cap: &csi::VolumeCapability) -> Result<Self, Error> {
        let access_type = match &cap.access_type {
            Some(csi::volume_capability::AccessType::Mount(m)) => AccessType::Mount {
                fs_type: m.fs_type.clone(),
                mount_flags: m.mount_flags.clone(),
            },
            Some(csi::volume_capability::AccessType::Block(_)) => AccessType::Block,
            None => {
                return Err(Error::InvalidArgument(
                    "volume_capability.access_type is missing: set mount or block".into(),
                ));
            }
        };
        let mode = cap
            .access_mode
            .as_ref()
            .map(|m| Mode::try_from(m.mode).unwrap_or(Mode::Unknown))
            .unwrap_or(Mode::Unknown);
        let access_mode = match mode {
            Mode::SingleNodeWriter => AccessMode::SingleNodeWriter,
            Mode::SingleNodeReaderOnly => AccessMode::SingleNodeReaderOnly,
            Mode::MultiNodeReaderOnly => AccessMode::MultiNodeReaderOnly,
            Mode::MultiNodeSingleWriter => AccessMode::MultiNodeSingleWriter,
            Mode::MultiNodeMultiWriter => AccessMode::MultiNodeMultiWriter,
            Mode::SingleNodeSingleWriter => AccessMode::SingleNodeSingleWriter,
            Mode::SingleNodeMultiWriter => AccessMode::SingleNodeMultiWriter,
            Mode::Unknown => {
                return Err(Error::InvalidArgument(
                    "volume_capability.access_mode is missing or UNKNOWN".into(),
                ));
            }
        };
        Ok(Self {
            access_type,
            access_mode,
        })
    }
}

/// Parses a list of capabilities; an empty list is INVALID_ARGUMENT, as CSI requires.
pub fn parse_capabilities(caps: &[csi::VolumeCapability]) -> Result<Vec<VolumeCapability>, Error> {
    if caps.is_empty() {
        return Err(Error::InvalidArgument(
            "volume_capabilities must not be empty".into(),
        ));
    }
    caps.iter().map(VolumeCapability::try_from).collect()
}

/// Parses the single capability of a node or publish request, which CSI makes mandatory.
pub fn parse_capability(cap: Option<&csi::VolumeCapability>) -> Result<VolumeCapability, Error> {
    cap.ok_or_else(|| Error::InvalidArgument("volume_capability is required".into()))
        .and_then(VolumeCapability::try_from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(fs: &str, mode: Mode) -> csi::VolumeCapability {
        csi::VolumeCapability {
            access_type: Some(csi::volume_capability::AccessType::Mount(
                csi::volume_capability::MountVolume {
                    fs_type: fs.into(),
                    ..Default::default()
                },
            )),
            access_mode: Some(csi::volume_capability::AccessMode { mode: mode as i32 }),
        }
    }

    #[test]
    fn parses_mount_and_block() {
        let cap = VolumeCapability::try_from(&mount("xfs", Mode::SingleNodeWriter)).unwrap();
        assert_eq!(cap.fs_type(), Some("xfs"));
        assert_eq!(cap.access_mode, AccessMode::SingleNodeWriter);
        let block = csi::VolumeCapability {
            access_type: Some(csi::volume_capability::AccessType::Block(
                csi::volume_capability::BlockVolume {},
            )),
            access_mode: Some(csi::volume_capability::AccessMode {
                mode: Mode::MultiNodeReaderOnly as i32,
            }),
        };
        let cap = VolumeCapability::try_from(&block).unwrap();
        assert!(cap.is_block());
        assert!(cap.access_mode.is_multi_node() && cap.access_mode.is_read_only());
    }

    #[test]
    fn rejects_missing_parts() {
        assert!(parse_capabilities(&[]).is_err());
        assert!(parse_capability(None).is_err());
        let unknown = mount("ext4", Mode::Unknown);
        assert_eq!(
            VolumeCapability::try_from(&unknown).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let no_type = csi::VolumeCapability {
            access_type: None,
            access_mode: Some(csi::volume_capability::AccessMode { mode: 1 }),
        };
        assert!(VolumeCapability::try_from(&no_type).is_err());
    }
}
