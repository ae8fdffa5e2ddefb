//! Everest's local cloud: the EVS, ECS, jobs, SFS Turbo, IAM token and instance-metadata APIs,
//! modelled on the facts file alone, with real effects on the host (sparse image files,
//! loop devices and `virtio-*` by-id links; snapshots as image copies; a directory per share, exported by an NFS server)
//! and injectable faults.

pub mod auth;
pub mod cloud;
pub mod config;
pub mod ecs;
pub mod effects;
pub mod errors;
pub mod evs;
pub mod evs_list;
pub mod evs_modify;
pub mod evs_snapshots;
pub mod faults;
pub mod iam;
pub mod jobs;
pub mod metadata;
pub mod server;
pub mod sfs;
pub mod sfs_tags;
pub mod state;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod sfs_tests;
#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod tests;

pub use config::Config;
pub use server::{ServeError, router, serve};
