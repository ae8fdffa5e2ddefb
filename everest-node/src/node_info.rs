//! Who this node is: its ID (the cloud server ID) and zone, from the configuration or else the
//! instance metadata service.

use std::time::Duration;

use everest_backend::Error;
use everest_backend::daemon::config::NodeSection;

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
}
