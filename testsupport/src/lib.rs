//! Test support for Everest: one way to start the world (the emulator and both daemons, on
//! loopback and unix sockets, in a private temp root) and always tear it down.
//!
//! - [`world`]: [`World`], started with [`World::start`], with CSI clients, kubelet-style
//!   paths, the emulator's test endpoints and the daemons' metrics; its `Drop` stops every
//!   process, unmounts, detaches loop devices and removes the temp root, also on panic;
//! - [`csi`]: unix-socket channels, request builders, sidecar-style retries, error assertions;
//! - [`lifecycle`]: one volume through the calls of kubelet and the sidecars, step by step;
//! - [`host`]: mounts, loop devices, filesystem sizes and the skip check for tests that need root;
//! - [`nfs`]: a real NFS server (nfs-ganesha and rpcbind) in a private network namespace, and
//!   an emulator beside it whose SFS Turbo shares are exports of that server;
//! - [`kube_api`]: a fake Kubernetes API server at the HTTP edge, serving objects in the API's
//!   own JSON, for the daemons' real `kube` client;
//! - [`s3`]: a real S3 server (moto) on a free loopback port;
//! - [`process`]: child processes with captured logs, and where the workspace binaries are;
//! - [`skip`]: skipping a case the machine cannot run: counted, and a failure under `CI=true`.

pub mod csi;
pub mod garage;
pub mod host;
pub mod kube_api;
pub mod lifecycle;
pub mod nfs;
pub mod process;
pub mod s3;
pub mod skip;
pub mod world;

pub use everest_proto::csi::v1 as proto;
pub use garage::{GarageServer, skip_unless_garage};
pub use host::{skip_unless_root_and_loop, skip_without};
pub use kube_api::KubeApi;
pub use lifecycle::Lifecycle;
pub use nfs::{NfsServer, skip_unless_nfs_server};
pub use s3::{S3Server, skip_unless_s3_server};
pub use skip::skip;
pub use world::{BACKEND, DRIVER_NAME, Daemon, Leftovers, World, WorldOptions};
