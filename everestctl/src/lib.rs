//! `everestctl`: what an operator runs against a cluster that uses Everest.
//!
//! - [`flexvolume`]: Huawei CCE's FlexVolume drivers and how each of their PVs translates into
//!   an Everest CSI volume;
//! - [`targets`]: which Everest backend instance each kind of volume moves to (flags or a
//!   StorageClass);
//! - [`migration`]: the migration plan, derived from the cluster's state alone, so a run that
//!   was interrupted picks up where it stopped;
//! - [`apply`]: carrying a plan out, one checked step at a time;
//! - [`status`]: attachments as the cluster and the cloud see them, and where they disagree;
//! - [`orphans`]: volumes Everest made for this cluster whose PV is gone, by their marker;
//! - [`deletion`]: deleting those through each backend's own delete, after a confirmation;
//! - [`cloud`]: the cloud side of `status` and `orphans`, read with the daemons' configuration
//!   file;
//! - [`age`]: ages as people write and read them;
//! - [`cluster`]: the Kubernetes API calls everything above makes;
//! - [`output`]: tables for people, JSON for programs.

pub mod age;
pub mod apply;
pub mod cloud;
pub mod cluster;
pub mod deletion;
pub mod error;
pub mod flexvolume;
pub mod migration;
pub mod orphans;
pub mod output;
pub mod status;
pub mod targets;

pub use error::{Error, Result};

/// The CSI driver name Everest registers when its configuration names no other.
pub const DEFAULT_DRIVER_NAME: &str = everest_backend::daemon::config::DEFAULT_DRIVER_NAME;
