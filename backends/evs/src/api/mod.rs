//! The EVS / ECS / IAM API client: signing or token auth, retries, jobs, batched polling.
//!
//! One [`EvsClient`] (cheap to clone) serves every call; see [`error`] for how failures map
//! to CSI codes.

mod auth;
mod backoff;
pub mod config;
mod credentials;
pub mod ecs;
pub mod error;
pub mod evs;
mod http;
pub mod jobs;
mod lenient;
pub mod metadata;
pub mod sign;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

pub use config::{CloudConfig, Credentials};
pub use credentials::read_credentials_file;
pub use ecs::{AttachableQuantity, AttachedVolume, BlockDevice, BlockDevices, Server};
pub use error::{ApiError, Error, ErrorClass, Result, TransportKind};
pub use evs::{
    Attachment, CreateAccepted, CreateVolume, JobId, MAX_IDS_PER_LIST, Volume, VolumeFilter,
    VolumePage, VolumeStatus,
};
pub use http::{Service, describe_metrics};
pub use jobs::{Job, JobEntities, JobStatus, VolumeWait};
pub use metadata::{DEFAULT_METADATA_URL, InstanceMetadata, fetch_instance_metadata};

use credentials::AuthSource;
use http::{Bound, Transport};

/// The `backend` metric label of a client that was not given its instance name.
pub const UNNAMED_BACKEND: &str = "none";

/// A handle on the cloud's disk, server and job APIs; clones share one connection pool and token.
#[derive(Clone)]
pub struct EvsClient {
    transport: Arc<Transport>,
    /// The backend instance, as the `backend` label of the cloud API metrics.
    backend: Arc<str>,
}

impl EvsClient {
    /// Validates the settings and builds the client; sends nothing yet.
    pub fn new(config: CloudConfig, credentials: Credentials) -> Result<Self> {
        Self::with_auth(config, AuthSource::fixed(credentials)?)
    }

    /// Like [`EvsClient::new`], with the credentials read from `path` now and again whenever
    /// the file changes (keys rotate without a restart). The file must not be readable by
    /// others (see [`read_credentials_file`]).
    pub fn from_credentials_file(config: CloudConfig, path: &Path) -> Result<Self> {
        Self::with_auth(config, AuthSource::file(path)?)
    }

    fn with_auth(config: CloudConfig, auth: AuthSource) -> Result<Self> {
        Ok(EvsClient {
            transport: Arc::new(Transport::new(config, auth)?),
            backend: Arc::from(UNNAMED_BACKEND),
        })
    }

    /// Counts this handle's calls (and clones made from it) under the backend instance `name`,
    /// e.g. `evs-default`; without it they count under [`UNNAMED_BACKEND`].
    pub fn with_backend(mut self, name: &str) -> Self {
        self.backend = Arc::from(name);
        self
    }

    /// The backend instance its calls are counted under.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The configuration in use.
    pub fn config(&self) -> &CloudConfig {
        self.transport.config()
    }

    fn project_id(&self) -> &str {
        &self.transport.config().project_id
    }

    fn transport(&self) -> Bound<'_> {
        self.transport.bound(&self.backend)
    }
}

impl fmt::Debug for EvsClient {
    // Only the configuration: credentials and tokens stay out of debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EvsClient")
            .field("backend", &self.backend)
            .field("config", self.config())
            .finish_non_exhaustive()
    }
}
