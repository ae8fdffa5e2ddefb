//! Plumbing both daemons share, so `everest-controller` and `everest-node` stay thin and never
//! depend on each other:
//! - [`config`]: the layered configuration (defaults → TOML file → `EVEREST_` environment → flags);
//! - [`fields`]: request fields both daemons parse alike (volume ID, maps, byte counts);
//! - [`socket`]: the private CSI unix socket, with stale-socket detection and cleanup;
//! - [`server`]: serving a router on that socket until a shutdown signal;
//! - [`authority`]: lets clients in whatever HTTP/2 `:authority` they send over the socket;
//! - [`startup`]: from flags to exit code (invalid configuration, `--check-config`, serving);
//! - [`shutdown`]: the SIGTERM/SIGINT future that starts a graceful shutdown;
//! - [`logging`]: tracing output as text or JSON;
//! - [`telemetry`]: the Prometheus exporter and the one wrapper every RPC runs through;
//! - [`identity`]: the CSI Identity service, parameterised by a readiness check;
//! - [`reachability`]: each backend's service watched in the background (a gauge, never Probe).

pub mod authority;
pub mod cloud_calls;
pub mod config;
pub mod fields;
pub mod identity;
pub mod logging;
pub mod reachability;
pub mod server;
pub mod shutdown;
pub mod socket;
pub mod startup;
pub mod telemetry;
