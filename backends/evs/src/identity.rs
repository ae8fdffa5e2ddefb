//! Who this node is to EVS: its ECS server ID (what disks attach to) and zone, from the instance
//! metadata service. Only a node with an `evs` backend asks; `[node] node_id` and `zone` in the
//! daemon configuration skip the question.

use std::time::Duration;

use everest_backend::Error;
use everest_backend::backend::NodeIdentity;

use crate::api::fetch_instance_metadata;

/// Timeout of one metadata request.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts before giving up; the service is link-local and normally answers at once.
const ATTEMPTS: u32 = 4;
/// Pause before the first retry; doubles after each failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// Asks the metadata service at `url`, retrying a few times; UNAVAILABLE naming the way out
/// (configuring the ID and zone) when it never answers.
pub async fn from_metadata(url: &str) -> Result<NodeIdentity, Error> {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    let md = loop {
        match fetch_instance_metadata(url, ATTEMPT_TIMEOUT).await {
            Ok(md) => break md,
            Err(e) if attempt >= ATTEMPTS => {
                return Err(Error::Unavailable(format!(
                    "cannot learn this node's server ID and zone from the metadata service at {url} after {ATTEMPTS} attempts ({e}); \
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
    };
    if md.uuid.is_empty() || md.availability_zone.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "the metadata service at {url} reported an empty server ID or zone; set node.node_id and node.zone"
        )));
    }
    Ok(NodeIdentity {
        node_id: md.uuid,
        zone: md.availability_zone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_metadata_service_is_unavailable_naming_the_way_out() {
        tokio::time::pause();
        // Nothing listens on port 1 of loopback: every attempt is refused at once.
        let err = from_metadata("http://127.0.0.1:1/openstack/latest/meta_data.json")
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
        assert!(err.to_string().contains("node.node_id"), "{err}");
    }
}
