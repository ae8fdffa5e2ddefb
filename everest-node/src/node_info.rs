//! Who this node is: its ID and zone, from the configuration, else from a backend whose volumes
//! attach to a cloud server (which asks its cloud), else the Kubernetes node name; and how many
//! volumes it can hold, from the backends that can tell (the cloud's free disk slots) or else
//! the configuration.

use std::time::Duration;

use everest_backend::daemon::config::NodeSection;
use everest_backend::registry::Registry;
use everest_backend::{Error, NodeBackend};

/// What NodeGetInfo reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The ID ControllerPublishVolume will attach to.
    pub node_id: String,
    /// The availability zone, reported under the zone topology key; none when no backend
    /// needs one and none is configured.
    pub zone: Option<String>,
    /// The most volumes the scheduler may place here.
    pub max_volumes: u32,
}

/// How long one backend may take to say how many volumes the node holds, at start.
const LIMIT_TIMEOUT: Duration = Duration::from_secs(15);

/// Replaces the configured `max_volumes` with what the backends report (the smallest, as they
/// share the server's slots); keeps the configured value when none can tell or the cloud does
/// not answer, so a cloud outage never stops the node from starting.
pub async fn apply_backend_limits(
    mut info: NodeInfo,
    registry: &Registry<dyn NodeBackend>,
) -> NodeInfo {
    let mut reported: Option<u32> = None;
    for (name, backend) in registry.iter() {
        match tokio::time::timeout(LIMIT_TIMEOUT, backend.max_volumes(&info.node_id)).await {
            Ok(Ok(Some(n))) => reported = Some(reported.map_or(n, |r| r.min(n))),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(backend = %name, error = %e, configured = info.max_volumes, "cannot learn the server's free disk slots; using max_volumes_per_node");
            }
            Err(_) => {
                tracing::warn!(backend = %name, timeout = ?LIMIT_TIMEOUT, configured = info.max_volumes, "the cloud did not say the server's free disk slots in time; using max_volumes_per_node");
            }
        }
    }
    if let Some(n) = reported {
        if n == 0 {
            // CSI reads 0 as "no limit"; one is the closest honest answer to "full".
            tracing::warn!("this server has no free disk slot; reporting max_volumes_per_node = 1");
        }
        info.max_volumes = n.max(1);
    }
    info
}

/// The environment variable holding the Kubernetes node name (the chart sets it from
/// `spec.nodeName`).
pub const NODE_NAME_ENV: &str = "NODE_NAME";

/// The configured ID and zone; what is missing comes from the first backend that names this
/// node in its cloud (a block backend: the server its disks attach to); with no such backend,
/// the ID is the Kubernetes node name (`node_name`) and the zone stays unset unless configured.
pub async fn resolve(
    section: &NodeSection,
    registry: &Registry<dyn NodeBackend>,
    node_name: Option<String>,
) -> Result<NodeInfo, Error> {
    let configured = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    let (mut node_id, mut zone) = (configured(&section.node_id), configured(&section.zone));
    if node_id.is_none() || zone.is_none() {
        for (name, backend) in registry.iter() {
            let identity = backend
                .node_identity()
                .await
                .map_err(|e| e.context(format!("backend {name}")))?;
            if let Some(identity) = identity {
                node_id = node_id.or(Some(identity.node_id));
                zone = zone.or(Some(identity.zone));
                break;
            }
        }
    }
    let node_id = node_id
        .or_else(|| node_name.filter(|n| !n.is_empty()))
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "no node ID: set node.node_id (EVEREST_NODE__NODE_ID) or {NODE_NAME_ENV}; no configured backend names this node in a cloud"
            ))
        })?;
    Ok(NodeInfo {
        node_id,
        zone,
        max_volumes: section.max_volumes_per_node,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeNodeBackend;

    fn with(backends: Vec<FakeNodeBackend>) -> Registry<dyn NodeBackend> {
        let mut registry: Registry<dyn NodeBackend> = Registry::new(None);
        for (i, b) in backends.into_iter().enumerate() {
            let name = everest_backend::BackendName::new(&format!("b{i}")).unwrap();
            registry.insert(name, std::sync::Arc::new(b));
        }
        registry
    }

    fn file_like() -> FakeNodeBackend {
        FakeNodeBackend::default()
    }

    fn block_like() -> FakeNodeBackend {
        FakeNodeBackend {
            identity: Some(("server-9", "az9")),
            ..FakeNodeBackend::default()
        }
    }

    #[tokio::test]
    async fn configured_values_win_and_a_block_backend_fills_the_rest() {
        let section = NodeSection {
            node_id: Some("server-1".into()),
            zone: Some("az1".into()),
            ..NodeSection::default()
        };
        let info = resolve(&section, &with(vec![block_like()]), Some("k8s-node".into()))
            .await
            .unwrap();
        assert_eq!(
            (info.node_id.as_str(), info.zone.as_deref()),
            ("server-1", Some("az1"))
        );
        assert_eq!(info.max_volumes, 24);
        // Nothing configured: the backend that attaches to a cloud server names the node.
        let info = resolve(
            &NodeSection::default(),
            &with(vec![file_like(), block_like()]),
            Some("k8s-node".into()),
        )
        .await
        .unwrap();
        assert_eq!(
            (info.node_id.as_str(), info.zone.as_deref()),
            ("server-9", Some("az9"))
        );
    }

    #[tokio::test]
    async fn without_a_block_backend_the_kubernetes_node_name_is_the_id() {
        let info = resolve(
            &NodeSection::default(),
            &with(vec![file_like()]),
            Some("k8s-node".into()),
        )
        .await
        .unwrap();
        assert_eq!((info.node_id.as_str(), info.zone), ("k8s-node", None));
        let err = resolve(&NodeSection::default(), &with(vec![file_like()]), None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.to_string().contains("NODE_NAME"), "{err}");
    }

    async fn limit(answers: Vec<Result<Option<u32>, &'static str>>) -> u32 {
        let registry = with(
            answers
                .into_iter()
                .map(|slots| FakeNodeBackend {
                    slots,
                    ..FakeNodeBackend::default()
                })
                .collect(),
        );
        let info = NodeInfo {
            node_id: "server-1".into(),
            zone: Some("az1".into()),
            max_volumes: 24,
        };
        apply_backend_limits(info, &registry).await.max_volumes
    }

    #[tokio::test]
    async fn the_cloud_limit_wins_and_the_config_is_the_fallback() {
        assert_eq!(limit(vec![Ok(Some(21))]).await, 21);
        assert_eq!(limit(vec![Ok(Some(21)), Ok(Some(19)), Ok(None)]).await, 19);
        assert_eq!(limit(vec![]).await, 24);
        assert_eq!(limit(vec![Ok(None)]).await, 24);
        assert_eq!(limit(vec![Err("cloud down")]).await, 24);
        assert_eq!(limit(vec![Err("cloud down"), Ok(Some(7))]).await, 7);
        // Never 0, which CSI reads as "no limit".
        assert_eq!(limit(vec![Ok(Some(0))]).await, 1);
    }
}
