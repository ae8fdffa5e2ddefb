//! The node's backends: built by `everest_backends` from the configuration, by `kind`.

use std::sync::Arc;

use async_trait::async_trait;
use everest_backend::daemon::config::NodeConfig;
use everest_backend::daemon::identity::Readiness;
use everest_backend::host::Host;
use everest_backend::registry::Registry;
use everest_backend::{Error, NodeBackend};

/// The registry of node backends described by the configuration, all sharing `host`.
pub fn build(cfg: &NodeConfig, host: &Arc<dyn Host>) -> Result<Registry<dyn NodeBackend>, Error> {
    cfg.build_registry(|name, backend| everest_backends::node(name, backend, Arc::clone(host)))
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
            .mount_table_readable()
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

    #[tokio::test]
    async fn not_ready_without_backends() {
        let ready = NodeReady {
            host: Arc::new(FakeHost::default()),
            registry: Arc::new(Registry::new(None)),
        };
        assert!(ready.check().await.unwrap_err().contains("no backends"));
    }

    #[tokio::test]
    async fn not_ready_when_the_mount_table_cannot_be_read() {
        let host = Arc::new(FakeHost::default());
        host.fail("read mountinfo", "Input/output error");
        let ready = NodeReady {
            host: host.clone(),
            registry: Arc::new(Registry::new(None)),
        };
        let err = ready.check().await.unwrap_err();
        assert!(err.contains("cannot read the mount table"), "{err}");
        // It looks at the table without reading every mount.
        assert_eq!(host.calls(), ["read mountinfo"]);
    }
}
