//! The EVS / ECS API client: disks, snapshots, servers, jobs and batched polling, on the shared cloud
//! plumbing of [`everest_cloud`] (signing or token auth, retries, error classes).
//!
//! One [`EvsClient`] (cheap to clone) serves every call; see [`error`] for how failures map
//! to CSI codes.

pub mod ecs;
pub mod evs;
pub mod jobs;
pub mod metadata;
mod poller;
pub mod snapshots;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use ecs::{AttachableQuantity, BlockDevice, BlockDevices};
pub use everest_cloud::{
    ApiError, CloudClient, CloudConfig, Credentials, Error, ErrorClass, Result, Service,
    TransportKind, UNNAMED_BACKEND, config, describe_metrics, error, read_credentials_file, sign,
};
pub use evs::{
    Attachment, CreateAccepted, CreateVolume, JobId, MAX_IDS_PER_LIST, Volume, VolumeFilter,
    VolumePage, VolumeStatus,
};
pub use jobs::{Job, JobEntities, JobStatus, VolumeWait};
pub use metadata::{DEFAULT_METADATA_URL, InstanceMetadata, fetch_instance_metadata};
pub use snapshots::{CreateSnapshot, Snapshot, SnapshotFilter, SnapshotPage, SnapshotStatus};

/// The services the block client calls.
pub(crate) const SERVICES: &[Service] = &[Service::Evs, Service::Ecs, Service::Iam];

/// A handle on the cloud's disk, server and job APIs; clones share one connection pool, token,
/// rate limit and poller (one per backend instance: every wait of the instance shares its polls).
#[derive(Clone)]
pub struct EvsClient {
    cloud: CloudClient,
    poller: poller::Poller,
}

impl EvsClient {
    /// Validates the settings and builds the client; sends nothing yet.
    pub fn new(config: CloudConfig, credentials: Credentials) -> Result<Self> {
        Ok(EvsClient {
            cloud: CloudClient::new(config, credentials, SERVICES)?,
            poller: poller::Poller::default(),
        })
    }

    /// Like [`EvsClient::new`], with the credentials read from `path` now and again whenever
    /// the file changes (keys rotate without a restart). The file must not be readable by
    /// others (see [`read_credentials_file`]).
    pub fn from_credentials_file(config: CloudConfig, path: &Path) -> Result<Self> {
        Ok(EvsClient {
            cloud: CloudClient::from_credentials_file(config, path, SERVICES)?,
            poller: poller::Poller::default(),
        })
    }

    /// Counts this handle's calls (and clones made from it) under the backend instance `name`,
    /// e.g. `evs-default`; without it they count under [`UNNAMED_BACKEND`].
    pub fn with_backend(mut self, name: &str) -> Self {
        self.cloud = self.cloud.with_backend(name);
        self
    }

    /// The backend instance its calls are counted under.
    pub fn backend(&self) -> &str {
        self.cloud.backend()
    }

    /// The configuration in use.
    pub fn config(&self) -> &CloudConfig {
        self.cloud.config()
    }

    fn project_id(&self) -> &str {
        self.cloud.project_id()
    }

    fn transport(&self) -> &CloudClient {
        &self.cloud
    }

    fn poller(&self) -> &poller::Poller {
        &self.poller
    }

    /// This client as the poller's way to the cloud.
    fn lookup(&self) -> Arc<dyn poller::Lookup> {
        Arc::new(self.clone())
    }
}

#[async_trait]
impl poller::Lookup for EvsClient {
    async fn disks(&self, ids: Vec<String>) -> Result<Vec<Volume>> {
        let filter = VolumeFilter {
            ids,
            ..VolumeFilter::default()
        };
        Ok(self.list_volumes(&filter).await?.volumes)
    }

    async fn job(&self, service: Service, id: JobId) -> Result<Job> {
        self.get_job(service, &id).await
    }

    fn pace(&self, key: &str, deadline: Duration) -> everest_cloud::backoff::WaitPace {
        self.cloud.wait_pace(key, deadline)
    }

    fn learned(&self, key: &str, took: Duration) {
        self.cloud.record_wait(key, took);
    }

    fn backend(&self) -> &str {
        self.cloud.backend()
    }
}

impl fmt::Debug for EvsClient {
    // Only the configuration: credentials and tokens stay out of debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EvsClient")
            .field("backend", &self.backend())
            .field("config", self.config())
            .finish_non_exhaustive()
    }
}
