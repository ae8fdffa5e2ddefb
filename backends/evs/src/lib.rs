//! Block volumes on an EVS-like cloud disk API:
//! - [`api`]: the EVS/ECS/IAM HTTP client (signing, tokens, retries, jobs, batched polling);
//! - [`controller`]: create, attach, extend, delete disks — the controller side;
//! - [`node`], [`device`]: find the attached disk, format if blank, mount, grow — the node side;
//! - [`config`], [`params`], [`capabilities`]: the backend table, StorageClass parameters, what a disk supports.

pub mod api;
pub mod capabilities;
pub mod config;
pub mod controller;
pub mod device;
pub mod identity;
pub mod node;
pub mod params;

use std::sync::Arc;

use everest_backend::host::Host;
use everest_backend::{BackendName, ControllerBackend, Error, NodeBackend};

pub use config::EvsConfig;
pub use controller::EvsController;
pub use node::EvsNode;

/// The `kind` of this backend in the daemon configuration.
pub const KIND: &str = "evs";

/// Builds the controller side of the instance `name` from its configuration table.
pub fn controller_from_config(
    name: &BackendName,
    settings: &serde_json::Map<String, serde_json::Value>,
) -> Result<Arc<dyn ControllerBackend>, Error> {
    let config = EvsConfig::parse(name.as_str(), settings)?;
    let client = api::EvsClient::from_credentials_file(
        config.cloud.clone(),
        &config.backend.credentials_file,
    )
    .map_err(|e| Error::InvalidArgument(format!("backend {name}: {e}")))?
    .with_backend(name.as_str());
    Ok(Arc::new(EvsController::new(name.clone(), config, client)))
}

/// Builds the node side of the instance `name`. The node needs no cloud credentials to serve
/// volumes; when its credentials file is there anyway, it asks the cloud for its server's free
/// disk slots (NodeGetInfo's max_volumes_per_node) and for nothing else.
pub fn node_from_config(
    name: &BackendName,
    settings: &serde_json::Map<String, serde_json::Value>,
    host: Arc<dyn Host>,
) -> Result<Arc<dyn NodeBackend>, Error> {
    let config = EvsConfig::parse(name.as_str(), settings)?;
    let node = EvsNode::new(config.clone(), host);
    if !config.backend.credentials_file.exists() {
        return Ok(Arc::new(node));
    }
    let client = api::EvsClient::from_credentials_file(
        config.cloud.clone(),
        &config.backend.credentials_file,
    )
    .map_err(|e| Error::InvalidArgument(format!("backend {name}: {e}")))?
    .with_backend(name.as_str());
    Ok(Arc::new(node.with_client(client)))
}
