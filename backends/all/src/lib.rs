//! The one list of backend kinds. The daemons depend on this crate and name no kind themselves:
//! a `[backends.<name>]` table's `kind` picks the crate that builds the instance's controller or
//! node side here.
//!
//! Adding a kind: a new crate under `backends/`, one entry in [`KINDS`] and one arm in each of
//! [`controller`] and [`node`] (and [`describe_metrics`] if it has metrics of its own), and its
//! page under `docs/backends/`.

use std::sync::Arc;

use everest_backend::daemon::config::unknown_kind;
use everest_backend::host::Host;
use everest_backend::registry::BackendConfig;
use everest_backend::{BackendName, ControllerBackend, Error, NodeBackend};

/// Every kind a `[backends.<name>]` table may name.
pub const KINDS: &[&str] = &[everest_evs::KIND, everest_sfs::KIND, everest_obs::KIND];

/// Builds the controller side of the instance `name`.
pub fn controller(
    name: &BackendName,
    cfg: &BackendConfig,
) -> Result<Arc<dyn ControllerBackend>, Error> {
    match cfg.kind.as_str() {
        everest_evs::KIND => everest_evs::controller_from_config(name, &cfg.settings),
        everest_sfs::KIND => everest_sfs::controller_from_config(name, &cfg.settings),
        everest_obs::KIND => everest_obs::controller_from_config(name, &cfg.settings),
        other => Err(unknown_kind(name, other, KINDS)),
    }
}

/// Builds the node side of the instance `name`, on `host`.
pub fn node(
    name: &BackendName,
    cfg: &BackendConfig,
    host: Arc<dyn Host>,
) -> Result<Arc<dyn NodeBackend>, Error> {
    match cfg.kind.as_str() {
        everest_evs::KIND => everest_evs::node_from_config(name, &cfg.settings, host),
        everest_sfs::KIND => everest_sfs::node_from_config(name, &cfg.settings, host),
        everest_obs::KIND => everest_obs::node_from_config(name, &cfg.settings, host),
        other => Err(unknown_kind(name, other, KINDS)),
    }
}

/// Gives every kind's own metrics their help text (after the exporter is installed).
pub fn describe_metrics() {
    everest_evs::api::describe_metrics();
}

#[cfg(test)]
mod tests {
    use everest_backend::host::FakeHost;

    use super::*;

    #[test]
    fn every_kind_builds_both_sides_from_its_table() {
        for (name, table, kind) in [
            (
                "files",
                serde_json::json!({"kind": "sfs", "server": "10.0.0.5", "export": "/exports"}),
                everest_backend::BackendKind::File,
            ),
            (
                "objects",
                serde_json::json!({"kind": "obs", "endpoint": "http://127.0.0.1:9000"}),
                everest_backend::BackendKind::Object,
            ),
        ] {
            let name = BackendName::new(name).unwrap();
            let cfg: BackendConfig = serde_json::from_value(table).unwrap();
            let host: Arc<dyn Host> = Arc::new(FakeHost::default());
            let c = controller(&name, &cfg).unwrap();
            let n = node(&name, &cfg, host).unwrap();
            assert_eq!(c.kind(), kind);
            assert_eq!(n.capabilities(), c.capabilities());
            // The node of a file or object kind asks no cloud who it is.
            assert!(
                tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap()
                    .block_on(n.node_identity())
                    .unwrap()
                    .is_none()
            );
        }
    }

    #[test]
    fn an_unknown_kind_names_the_supported_ones() {
        let cfg: BackendConfig =
            serde_json::from_value(serde_json::json!({"kind": "nfs"})).unwrap();
        let name = BackendName::new("files").unwrap();
        let host: Arc<dyn Host> = Arc::new(FakeHost::default());
        for err in [
            controller(&name, &cfg).unwrap_err(),
            node(&name, &cfg, host).unwrap_err(),
        ] {
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            let text = err.to_string();
            assert!(text.contains("\"nfs\"") && text.contains("files"), "{text}");
            for kind in KINDS {
                assert!(text.contains(kind), "{text}");
            }
        }
    }
}
