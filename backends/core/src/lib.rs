//! The shared core of every Everest backend:
//! - [`backend`]: the controller-side and node-side traits and their request types;
//! - [`registry`]: backend instances by name, chosen by StorageClass parameter or volume ID;
//! - [`volume_id`]: the versioned `v1:<backend>:<native id>` volume ID;
//! - [`snapshot`]: snapshot IDs (the same form), snapshots and their requests;
//! - [`marker`]: the mark every backend leaves on what it creates (cluster, instance, PV/PVC);
//! - [`params`]: typed StorageClass parameters that reject unknown keys;
//! - [`capability`], [`capacity`]: access modes and sizes, parsed once from CSI messages;
//! - [`error`]: the one error type and its one mapping to a gRPC status;
//! - [`inflight`]: per-volume serialization (ABORTED for a conflicting call);
//! - [`host`]: everything that touches the machine, with a Linux and a fake implementation;
//! - [`node`]: node-side steps every backend shares (bind-publish, teardown, usage);
//! - [`nfs`]: NFS exports, their mount options and staging them, for every file backend;
//! - [`paths`], [`secrets`]: checked host paths and redacted request secrets;
//! - [`daemon`]: what both daemons share (config, socket, signals, logging, telemetry, Identity).

pub mod backend;
pub mod capability;
pub mod capacity;
pub mod daemon;
pub mod error;
pub mod host;
pub mod inflight;
pub mod marker;
pub mod nfs;
pub mod node;
pub mod outside;
pub mod params;
pub mod paths;
pub mod registry;
pub mod secrets;
pub mod snapshot;
pub mod volume_id;

pub use backend::{BackendKind, ControllerBackend, NodeBackend};
pub use error::{Error, Result};
pub use snapshot::SnapshotId;
pub use volume_id::{BackendName, VolumeId};
