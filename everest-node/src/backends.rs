//! Builds the node side of every configured backend instance, by `kind`.

use std::sync::Arc;

use async_trait::async_trait;
use everest_backend::daemon::config::{NodeConfig, unknown_kind};
use everest_backend::daemon::identity::Readiness;
use everest_backend::host::Host;
use everest_backend::registry::{BackendConfig, Registry};
use everest_backend::{BackendName, Error, NodeBackend};

/// The backend kinds this binary can build.
pub const KINDS: &[&str] = &[everest_evs::KIND];

fn build_one(
    name: &BackendName,
    cfg: &BackendConfig,
    host: Arc<dyn Host>,
) -> Result<Arc<dyn NodeBackend>, Error> {
    match cfg.kind.as_str() {
        everest_evs::KIND => everest_evs::node_from_config(name, &cfg.settings, host),
        other => Err(unknown_kind(name, other, KINDS)),
    }
}

/// Gives every backend kind's own metrics their help text (after the exporter is installed): a
/// node with cloud credentials calls the cloud for its disk slots.
pub fn describe_metrics() {
    everest_evs::api::describe_metrics();
}

/// The registry of node backends described by the configuration, all sharing `host`.
pub fn build(cfg: &NodeConfig, host: &Arc<dyn Host>) -> Result<Registry<dyn NodeBackend>, Error> {
    cfg.build_registry(|name, backend| build_one(name, backend, Arc::clone(host)))
}

/// Ready when the mount table is readable and at least one backend is configured (backends are
/// built before serving, so every configured one exists).
#[derive(Debug)]
pub struct NodeReady {
    /// The host whose mount table must be readable.
    pub host: Arc<dyn Host>,
    /// The node backends.
    pub registry: Arc<Registry<dyn NodeBackend>>,
}

#[async_trait]
impl Readiness for NodeReady {
    async fn check(&self) -> Result<(), String> {
        self.host
            .mounts()
            .await
            .map_err(|e| format!("cannot read the mount table: {e}"))?;
        if self.registry.iter().next().is_none() {
            return Err("no backends are configured".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use everest_backend::host::FakeHost;

    #[test]
    fn unknown_kind_names_the_supported_ones() {
        let cfg: BackendConfig =
            serde_json::from_value(serde_json::json!({"kind": "nfs"})).unwrap();
        let name = BackendName::new("files").unwrap();
        let host: Arc<dyn Host> = Arc::new(FakeHost::default());
        let err = build_one(&name, &cfg, host).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.to_string().contains("evs"), "{err}");
    }

    #[tokio::test]
    async fn not_ready_without_backends() {
        let ready = NodeReady {
            host: Arc::new(FakeHost::default()),
            registry: Arc::new(Registry::new(None)),
        };
        assert!(ready.check().await.unwrap_err().contains("no backends"));
    }
}
