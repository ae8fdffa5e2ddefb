//! The names the cloud sees for a CSI volume: the disk name and the create's idempotency token.

use sha2::{Digest, Sha256};

use super::EvsController;

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
        let digest = Sha256::digest(format!("{}/{request_name}", self.name).as_bytes());
        let mut b = [0u8; 16];
        b.copy_from_slice(&digest[..16]);
        b[6] = (b[6] & 0x0f) | 0x50; // version 5-style (name-based)
        b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
        uuid::Uuid::from_bytes(b).to_string()
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
        assert!(uuid::Uuid::parse_str(&t).is_ok());
    }
}
