//! The instance metadata service: who this node is and where it runs.

use std::time::Duration;

use serde::Deserialize;

use super::error::{ApiError, Error, Result, TransportKind};

/// The documented metadata URL of an OpenStack-style instance.
pub const DEFAULT_METADATA_URL: &str = "http://169.254.169.254/openstack/latest/meta_data.json";

/// What a node needs to know about itself.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InstanceMetadata {
    /// The server id; the CSI node id.
    pub uuid: String,
    /// The zone; the node's topology.
    pub availability_zone: String,
    /// The project the server belongs to.
    #[serde(default)]
    pub project_id: Option<String>,
    /// The server name.
    #[serde(default)]
    pub name: Option<String>,
}

const SERVICE: &str = "metadata";
const OPERATION: &str = "get_instance_metadata";

/// Reads `meta_data.json` from `url` (one attempt; the caller decides whether to retry).
pub async fn fetch_instance_metadata(url: &str, timeout: Duration) -> Result<InstanceMetadata> {
    let transport = |kind, message: String| Error::Transport {
        service: SERVICE,
        operation: OPERATION,
        kind,
        message,
    };
    let client = reqwest::Client::builder()
        .timeout(timeout)
        // The metadata service is link-local; a proxy would answer for the wrong machine.
        .no_proxy()
        .build()
        .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| transport(TransportKind::of(&e), e.to_string()))?;
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .map_err(|e| transport(TransportKind::of(&e), e.to_string()))?;
    if !(200..300).contains(&status) {
        return Err(Error::Api {
            service: SERVICE,
            operation: OPERATION,
            api: ApiError::from_body(status, &body, None),
        });
    }
    let meta: InstanceMetadata = serde_json::from_slice(&body).map_err(|e| Error::Decode {
        service: SERVICE,
        operation: OPERATION,
        message: e.to_string(),
    })?;
    if meta.uuid.is_empty() || meta.availability_zone.is_empty() {
        return Err(Error::Decode {
            service: SERVICE,
            operation: OPERATION,
            message: "uuid or availability_zone is empty".into(),
        });
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_documented_fields_and_ignores_the_rest() {
        let m: InstanceMetadata = serde_json::from_str(
            r#"{"uuid":"s1","availability_zone":"az1","project_id":"p1","name":"node-1",
                "hostname":"node-1.novalocal","meta":{"k":"v"},"launch_index":0}"#,
        )
        .unwrap();
        assert_eq!(m.uuid, "s1");
        assert_eq!(m.project_id.as_deref(), Some("p1"));
        assert!(serde_json::from_str::<InstanceMetadata>(r#"{"uuid":"s1"}"#).is_err());
    }
}
