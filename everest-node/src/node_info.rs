//! Who this node is: its ID (the cloud server ID) and zone, from the configuration or else the
//! instance metadata service; and how many volumes it can hold, from the backends that can
//! tell (the cloud's free disk slots) or else the configuration.

use std::time::Duration;

use everest_backend::daemon::config::NodeSection;
use everest_backend::registry::Registry;
use everest_backend::{Error, NodeBackend};

/// What NodeGetInfo reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The ID ControllerPublishVolume will attach to.
    pub node_id: String,
    /// The availability zone, reported under the zone topology key.
    pub zone: String,
    /// The most volumes the scheduler may place here.
    pub max_volumes: u32,
}

/// Timeout of one metadata request.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Metadata attempts before giving up; the service is link-local and normally answers at once.
const ATTEMPTS: u32 = 4;
/// Pause before the first retry; doubles after each failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

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

/// Uses the configured ID and zone; asks the metadata service only for what is missing.
pub async fn resolve(section: &NodeSection) -> Result<NodeInfo, Error> {
    let configured = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    let (node_id, zone) = match (configured(&section.node_id), configured(&section.zone)) {
        (Some(id), Some(zone)) => (id, zone),
        (id, zone) => {
            let md = fetch_with_retries(&section.metadata_url).await?;
            (id.unwrap_or(md.uuid), zone.unwrap_or(md.availability_zone))
        }
    };
    if node_id.is_empty() || zone.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "the metadata service at {} reported an empty server ID or zone; set node.node_id and node.zone",
            section.metadata_url
        )));
    }
    Ok(NodeInfo {
        node_id,
        zone,
        max_volumes: section.max_volumes_per_node,
    })
}

async fn fetch_with_retries(url: &str) -> Result<everest_evs::api::InstanceMetadata, Error> {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        match everest_evs::api::fetch_instance_metadata(url, ATTEMPT_TIMEOUT).await {
            Ok(md) => return Ok(md),
            Err(e) if attempt >= ATTEMPTS => {
                return Err(Error::Unavailable(format!(
                    "cannot learn this node's ID and zone from the metadata service at {url} after {ATTEMPTS} attempts ({e}); \
                     set node.node_id and node.zone (EVEREST_NODE__NODE_ID, EVEREST_NODE__ZONE) to run without it"
                )));
            }
            Err(e) => {
                tracing::warn!(url, attempt, error = %e, "metadata service did not answer; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn configured_values_skip_the_metadata_service() {
        let section = NodeSection {
            node_id: Some("server-1".into()),
            zone: Some("az1".into()),
            // Unroutable on purpose: it must not be contacted.
            metadata_url: "http://127.0.0.1:1/never".into(),
            ..NodeSection::default()
        };
        let info = resolve(&section).await.unwrap();
        assert_eq!(info.node_id, "server-1");
        assert_eq!(info.zone, "az1");
        assert_eq!(info.max_volumes, 24);
    }

    #[derive(Debug)]
    struct Slots(Result<Option<u32>, &'static str>);

    #[async_trait::async_trait]
    impl NodeBackend for Slots {
        fn kind(&self) -> everest_backend::BackendKind {
            everest_backend::BackendKind::Block
        }
        fn check_capability(
            &self,
            _: &everest_backend::capability::VolumeCapability,
        ) -> Result<(), Error> {
            Ok(())
        }
        async fn stage(&self, _: &everest_backend::backend::NodeStage) -> Result<(), Error> {
            unreachable!("not staged in this test")
        }
        async fn unstage(
            &self,
            _: &str,
            _: &everest_backend::paths::HostPath,
        ) -> Result<(), Error> {
            unreachable!("not staged in this test")
        }
        async fn publish(&self, _: &everest_backend::backend::NodePublish) -> Result<(), Error> {
            unreachable!("not published in this test")
        }
        async fn unpublish(
            &self,
            _: &str,
            _: &everest_backend::paths::HostPath,
        ) -> Result<(), Error> {
            unreachable!("not published in this test")
        }
        async fn expand(&self, _: &everest_backend::backend::NodeExpand) -> Result<u64, Error> {
            unreachable!("not expanded in this test")
        }
        async fn stats(
            &self,
            _: &str,
            _: &everest_backend::paths::HostPath,
        ) -> Result<everest_backend::backend::VolumeUsage, Error> {
            unreachable!("no stats in this test")
        }
        async fn max_volumes(&self, node_id: &str) -> Result<Option<u32>, Error> {
            assert_eq!(node_id, "server-1");
            self.0.map_err(|e| Error::Unavailable(e.into()))
        }
    }

    async fn limit(answers: Vec<Result<Option<u32>, &'static str>>) -> u32 {
        let mut registry: Registry<dyn NodeBackend> = Registry::new(None);
        for (i, a) in answers.into_iter().enumerate() {
            let name = everest_backend::BackendName::new(&format!("b{i}")).unwrap();
            registry.insert(name, std::sync::Arc::new(Slots(a)));
        }
        let info = NodeInfo {
            node_id: "server-1".into(),
            zone: "az1".into(),
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
