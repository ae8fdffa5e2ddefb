//! Object volumes (kind `obs`), OBS-like: S3 buckets for pods on many nodes at once.
//! - [`config`], [`params`], [`volume`]: the backend table, StorageClass parameters, and what
//!   a volume is (a bucket, or a prefix in one, with its delete policy, in its ID);
//! - [`credentials`]: access keys from a private file or from CSI secrets, never shown;
//! - [`s3`]: the S3 calls the controller makes, through `aws-sdk-s3`, and their errors;
//! - [`mounter`]: the FUSE mounters (s3fs, rclone), their option allowlists and command lines;
//! - [`controller`], [`node`]: the two sides;
//! - [`supervisor`]: `everest-mounter`, which keeps the FUSE mounters alive as its children,
//!   apart from the node daemon, and what the node asks it.

pub mod config;
pub mod controller;
pub mod credentials;
pub mod mounter;
pub mod node;
pub mod params;
pub mod s3;
pub mod supervisor;
pub mod volume;

use std::sync::Arc;

use everest_backend::backend::Capabilities;
use everest_backend::capability::{AccessMode, AccessType, VolumeCapability};
use everest_backend::host::Host;
use everest_backend::{BackendName, ControllerBackend, Error, NodeBackend};

pub use config::ObsConfig;
pub use controller::ObsController;
pub use node::ObsNode;

/// The `kind` of this backend in the daemon configuration.
pub const KIND: &str = "obs";

/// The volume-context keys the controller writes and the node reads (a static PV may set them
/// in `volumeAttributes`; the node falls back to its backend table for the endpoint, region,
/// path style and mounter).
pub mod context {
    /// The S3 endpoint URL.
    pub const ENDPOINT: &str = "everest.io/obs-endpoint";
    /// The region requests are signed for.
    pub const REGION: &str = "everest.io/obs-region";
    /// `true` for path-style requests.
    pub const PATH_STYLE: &str = "everest.io/obs-path-style";
    /// The bucket (also in the volume ID).
    pub const BUCKET: &str = "everest.io/obs-bucket";
    /// The prefix in the bucket, for a prefix volume (also in the volume ID).
    pub const PREFIX: &str = "everest.io/obs-prefix";
    /// The FUSE mounter.
    pub const MOUNTER: &str = "everest.io/obs-mounter";
}

/// What a bucket offers: shared by many nodes, read-write or read-only; expansion only records
/// the new size (nothing on the node grows); no listing.
pub const CAPABILITIES: Capabilities = Capabilities {
    expand: true,
    node_expand: false,
    list: false,
    snapshots: false,
    clone: false,
    modify: false,
    access_modes: &[
        AccessMode::SingleNodeWriter,
        AccessMode::SingleNodeReaderOnly,
        AccessMode::SingleNodeSingleWriter,
        AccessMode::SingleNodeMultiWriter,
        AccessMode::MultiNodeReaderOnly,
        AccessMode::MultiNodeMultiWriter,
    ],
};

/// Refuses what a FUSE-mounted bucket cannot be: a raw block device, a filesystem type other
/// than a mounter's name, or a single writer among many nodes (nothing could enforce it).
pub fn check_capability(cap: &VolumeCapability) -> Result<(), Error> {
    if !CAPABILITIES.access_modes.contains(&cap.access_mode) {
        return Err(Error::InvalidArgument(format!(
            "access mode {:?} is not offered by object backends (ReadWriteOnce, ReadOnlyMany and ReadWriteMany are)",
            cap.access_mode
        )));
    }
    match &cap.access_type {
        AccessType::Block => Err(Error::InvalidArgument(
            "raw block volumes are not offered by object backends (a bucket is mounted as a filesystem)"
                .into(),
        )),
        AccessType::Mount { fs_type, .. }
            if !fs_type.is_empty() && fs_type.parse::<mounter::Mounter>().is_err() =>
        {
            Err(Error::InvalidArgument(format!(
                "filesystem type {fs_type:?} cannot be asked of an object volume (leave it empty or name the mounter, s3fs or rclone)"
            )))
        }
        AccessType::Mount { .. } => Ok(()),
    }
}

/// Builds the controller side of the instance `name` (reads its credentials file now).
pub fn controller_from_config(
    name: &BackendName,
    settings: &serde_json::Map<String, serde_json::Value>,
) -> Result<Arc<dyn ControllerBackend>, Error> {
    let config = ObsConfig::parse(name.as_str(), settings)?;
    Ok(Arc::new(ObsController::new(name.clone(), config)?))
}

/// Builds the node side of the instance `name`; it holds no credentials of its own.
pub fn node_from_config(
    name: &BackendName,
    settings: &serde_json::Map<String, serde_json::Value>,
    host: Arc<dyn Host>,
) -> Result<Arc<dyn NodeBackend>, Error> {
    let config = ObsConfig::parse(name.as_str(), settings)?;
    Ok(Arc::new(ObsNode::new(name.clone(), config, host)))
}
