//! File volumes (kind `sfs`), SFS-like: NFS shares for pods on many nodes at once, in two modes
//! a StorageClass picks: `subdir` (a directory per volume on an existing NFS server) and `share`
//! (an SFS Turbo share per volume).
//! - [`config`], [`params`], [`volume`]: the backend table, StorageClass parameters, and what
//!   a volume is (a directory or a share, with its delete policy, in its ID);
//! - [`dirs`]: the directories on the NFS server, made and removed over NFSv3 from user space;
//! - [`turbo`], [`shares`]: the SFS Turbo API client, and share volumes on it;
//! - [`controller`], [`node`]: the two sides.

pub mod config;
pub mod controller;
pub mod dirs;
pub mod marks;
pub mod node;
pub mod params;
pub mod shares;
pub mod turbo;
pub mod volume;

use std::sync::Arc;

use everest_backend::backend::Capabilities;
use everest_backend::capability::{AccessMode, AccessType, VolumeCapability};
use everest_backend::host::Host;
use everest_backend::{BackendName, ControllerBackend, Error, NodeBackend};

pub use config::SfsConfig;
pub use controller::SfsController;
pub use node::SfsNode;

/// The `kind` of this backend in the daemon configuration.
pub const KIND: &str = "sfs";

/// The volume-context key holding the NFS export a volume is mounted from (`server:/path`).
pub const EXPORT_CONTEXT_KEY: &str = "everest.io/nfs-export";

/// What file volumes offer: every access mode, nothing to list; shares grow (on the controller
/// alone: NFS clients see the new size at once), directories have no size of their own.
pub fn capabilities(shares: bool) -> Capabilities {
    Capabilities {
        expand: shares,
        ..DIRECTORY_CAPABILITIES
    }
}

const DIRECTORY_CAPABILITIES: Capabilities = Capabilities {
    expand: false,
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
        AccessMode::MultiNodeSingleWriter,
        AccessMode::MultiNodeMultiWriter,
    ],
};

/// Refuses what an NFS directory cannot be: a raw block device, or a filesystem type of its own.
pub fn check_capability(cap: &VolumeCapability) -> Result<(), Error> {
    match &cap.access_type {
        AccessType::Block => Err(Error::InvalidArgument(
            "raw block volumes are not offered by file backends (an NFS directory is a filesystem)"
                .into(),
        )),
        AccessType::Mount { fs_type, .. } if !fs_type.is_empty() && !fs_type.starts_with("nfs") => {
            Err(Error::InvalidArgument(format!(
                "filesystem type {fs_type:?} cannot be asked of an NFS volume (leave it empty or nfs)"
            )))
        }
        AccessType::Mount { .. } => Ok(()),
    }
}

/// Builds the controller side of the instance `name`.
pub fn controller_from_config(
    name: &BackendName,
    settings: &serde_json::Map<String, serde_json::Value>,
) -> Result<Arc<dyn ControllerBackend>, Error> {
    let config = SfsConfig::parse(name.as_str(), settings)?;
    let dirs = match (&config.server, &config.export) {
        (Some(server), Some(export)) => Some(Arc::new(dirs::Nfs3Directories::new(
            server,
            export,
            config.base_components().map(str::to_owned),
            config.auth_uid,
            config.auth_gid,
            config.privileged_port,
        )) as Arc<dyn dirs::Directories>),
        _ => None,
    };
    let shares = match config.share_config(name.as_str())? {
        Some(share) => {
            let credentials = share.settings.credentials_file.clone().ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "backend {name} (kind sfs): credentials_file is required by the controller in mode share"
                ))
            })?;
            let client = turbo::ShareClient::from_credentials_file(
                share.cloud.clone(),
                &credentials,
                name.as_str(),
            )
            .map_err(|e| {
                Error::InvalidArgument(format!("backend {name} (kind sfs): mode share: {e}"))
            })?;
            Some(shares::Shares::new(client, share, name.clone()))
        }
        None => None,
    };
    Ok(Arc::new(SfsController::new(
        name.clone(),
        config,
        dirs,
        shares,
    )))
}

/// Builds the node side of the instance `name`; it needs no credentials.
pub fn node_from_config(
    name: &BackendName,
    settings: &serde_json::Map<String, serde_json::Value>,
    host: Arc<dyn Host>,
) -> Result<Arc<dyn NodeBackend>, Error> {
    let config = SfsConfig::parse(name.as_str(), settings)?;
    Ok(Arc::new(SfsNode::new(name.clone(), config, host)))
}
