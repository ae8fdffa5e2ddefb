//! The names the cloud sees for a CSI volume: the disk name and the create's idempotency token.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::EvsController;

/// The name space of Everest's create tokens (RFC 9562 name-based UUIDs): fixed forever, so a
/// retried create names the same token.
const CLIENT_TOKEN_NAMESPACE: Uuid = uuid::uuid!("6f1d3c2a-8e0b-4c57-9a3e-2d4b7e915c08");

impl EvsController {
    /// The disk name for a CSI request name: the name itself when EVS accepts it, else a digest.
    pub(super) fn disk_name(&self, request_name: &str) -> String {
        let plain = request_name.len() <= 64
            && request_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if plain {
            request_name.to_owned()
        } else {
            format!(
                "everest-{}",
                &hex::encode(Sha256::digest(request_name.as_bytes()))[..40]
            )
        }
    }

    /// A stable `X-Client-Token` per backend and request name, so a create resent after a
    /// controller crash is recognised by the cloud instead of making a second disk.
    pub(super) fn client_token(&self, request_name: &str) -> String {
        let name = format!("{}/{request_name}", self.name);
        Uuid::new_v5(&CLIENT_TOKEN_NAMESPACE, name.as_bytes()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use everest_backend::BackendName;

    use super::*;
    use crate::api::{self, EvsClient};
    use crate::config::EvsConfig;

    fn controller() -> EvsController {
        let table = serde_json::json!({"project_id": "p", "region": "r", "credentials_file": "/nonexistent"});
        let config = EvsConfig::parse("evs", table.as_object().unwrap()).unwrap();
        let client = EvsClient::new(
            config.cloud.clone(),
            api::Credentials::AkSk {
                access_key: "a".into(),
                secret_key: "b".into(),
                security_token: None,
            },
        )
        .unwrap();
        EvsController::new(BackendName::new("evs").unwrap(), config, client)
    }

    #[test]
    fn disk_names_are_stable_and_valid() {
        let c = controller();
        assert_eq!(c.disk_name("pvc-1234"), "pvc-1234");
        let long = "x".repeat(100);
        let n = c.disk_name(&long);
        assert!(n.len() <= 64 && n.starts_with("everest-"));
        assert_eq!(n, c.disk_name(&long));
        assert_ne!(c.disk_name("a b"), c.disk_name("a c"));
    }

    #[test]
    fn client_token_is_a_stable_uuid_per_name() {
        let c = controller();
        let t = c.client_token("pvc-1");
        assert_eq!(t, c.client_token("pvc-1"));
        assert_ne!(t, c.client_token("pvc-2"));
        let parsed = Uuid::parse_str(&t).unwrap();
        assert_eq!(parsed.get_version(), Some(uuid::Version::Sha1));
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
    }
}
