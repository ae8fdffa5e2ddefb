//! One `[backends.<name>]` table of kind `obs`: the S3 endpoint and how to reach it, where the
//! controller's credentials are, and what the node does by default. The controller reads every
//! key; the node uses only `runtime_dir` and `mount_options` (and the endpoint as a fallback
//! for a static volume whose context names none): it holds no cloud credentials.

use std::path::PathBuf;

use everest_backend::Error;
use serde::Deserialize;

use crate::mounter::Mounter;
use crate::volume::OnDelete;

/// The table, parsed strictly: an unknown key is an error naming it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObsConfig {
    /// The S3 endpoint URL, e.g. `https://obs.example.com` or `http://127.0.0.1:9000`.
    pub endpoint: String,
    /// The region requests are signed for (`us-east-1` when not set).
    #[serde(default = "default_region")]
    pub region: String,
    /// Path-style requests (`endpoint/bucket/key`), which most S3-compatible servers need;
    /// `false` for virtual-hosted style (`bucket.endpoint/key`).
    #[serde(default = "default_true")]
    pub path_style: bool,
    /// A PEM file of CA certificates trusted for the endpoint, besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The controller's credentials: a JSON file `{"access_key": …, "secret_key": …}` that
    /// only its owner may read. Per-volume provisioner secrets override it.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Buckets made per volume are named `<bucket_prefix>-<volume name>-<hash>`.
    #[serde(default = "default_bucket_prefix")]
    pub bucket_prefix: String,
    /// What DeleteVolume does when the StorageClass does not say: `delete` or `retain`.
    #[serde(default = "default_on_delete")]
    pub on_delete: String,
    /// The FUSE mounter used when the StorageClass does not say (`s3fs`).
    #[serde(default)]
    pub mounter: Mounter,
    /// Mount options the node always uses for this backend (checked like a StorageClass's).
    #[serde(default)]
    pub mount_options: Vec<String>,
    /// Node only: the private directory (mode 0700) where per-volume credential files live
    /// while a volume is staged.
    #[serde(default = "default_runtime_dir")]
    pub runtime_dir: PathBuf,
    /// Node only: the unix socket of the mounter supervisor (`everest-mounter`). When set, the
    /// node asks it to start and stop mounters, which then outlive the node daemon and are
    /// restarted when they die; when unset, the node starts them itself as daemons.
    #[serde(default)]
    pub supervisor_socket: Option<PathBuf>,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_true() -> bool {
    true
}

fn default_bucket_prefix() -> String {
    "everest".into()
}

fn default_on_delete() -> String {
    "delete".into()
}

fn default_runtime_dir() -> PathBuf {
    PathBuf::from("/run/everest/obs")
}

impl ObsConfig {
    /// Parses and checks the table of the instance `name`.
    pub fn parse(
        name: &str,
        settings: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, Error> {
        let bad = |e: String| Error::InvalidArgument(format!("backend {name} (kind obs): {e}"));
        let cfg: ObsConfig = serde_json::from_value(serde_json::Value::Object(settings.clone()))
            .map_err(|e| bad(e.to_string()))?;
        crate::volume::check_endpoint(&cfg.endpoint).map_err(|e| bad(format!("endpoint: {e}")))?;
        crate::volume::check_region(&cfg.region).map_err(|e| bad(format!("region: {e}")))?;
        cfg.default_on_delete().map_err(bad)?;
        let prefix_ok = !cfg.bucket_prefix.is_empty()
            && cfg.bucket_prefix.len() <= 20
            && cfg
                .bucket_prefix
                .starts_with(|c: char| c.is_ascii_lowercase())
            && cfg
                .bucket_prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !prefix_ok {
            return Err(bad(format!(
                "bucket_prefix {:?}: 1 to 20 lowercase letters, digits and '-', starting with a letter",
                cfg.bucket_prefix
            )));
        }
        if !cfg.runtime_dir.is_absolute() {
            return Err(bad(format!(
                "runtime_dir {} is not an absolute path",
                cfg.runtime_dir.display()
            )));
        }
        if let Some(sock) = &cfg.supervisor_socket
            && !sock.is_absolute()
        {
            return Err(bad(format!(
                "supervisor_socket {} is not an absolute path",
                sock.display()
            )));
        }
        cfg.mounter
            .check_options(&cfg.mount_options)
            .map_err(|e| bad(format!("mount_options: {e}")))?;
        Ok(cfg)
    }

    /// The configured default delete policy.
    pub fn default_on_delete(&self) -> Result<OnDelete, String> {
        self.on_delete
            .parse()
            .map_err(|e| format!("on_delete: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: serde_json::Value) -> Result<ObsConfig, Error> {
        ObsConfig::parse("objects", v.as_object().unwrap())
    }

    #[test]
    fn a_table_parses_with_defaults_and_a_bad_one_names_its_key() {
        let c = parse(json!({"endpoint": "http://127.0.0.1:9000"})).unwrap();
        assert_eq!(c.region, "us-east-1");
        assert!(c.path_style);
        assert_eq!(c.default_on_delete(), Ok(OnDelete::Delete));
        assert_eq!(c.mounter, Mounter::S3fs);
        for (bad, key) in [
            (json!({"endpoint": "http://h", "typo": 1}), "typo"),
            (json!({}), "endpoint"),
            (json!({"endpoint": "ftp://h"}), "endpoint"),
            (json!({"endpoint": "http://h", "region": "a b"}), "region"),
            (
                json!({"endpoint": "http://h", "on_delete": "archive"}),
                "on_delete",
            ),
            (
                json!({"endpoint": "http://h", "bucket_prefix": "Ev"}),
                "bucket_prefix",
            ),
            (
                json!({"endpoint": "http://h", "runtime_dir": "rel"}),
                "runtime_dir",
            ),
            (
                json!({"endpoint": "http://h", "mounter": "goofys"}),
                "mounter",
            ),
            (
                json!({"endpoint": "http://h", "mount_options": ["passwd_file=/x"]}),
                "mount_options",
            ),
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            let text = err.to_string();
            assert!(text.contains("objects") && text.contains(key), "{text}");
        }
    }

    #[test]
    fn unreadable_ca_and_credentials_files_stop_the_controller() {
        for (key, file) in [
            ("ca_file", "/nonexistent/ca.pem"),
            ("credentials_file", "/nonexistent/s3.json"),
        ] {
            let cfg = parse(json!({"endpoint": "https://h", key: file})).unwrap();
            let err = crate::s3::S3::new("objects", &cfg).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            let text = err.to_string();
            assert!(text.contains(key) && text.contains(file), "{text}");
        }
        // A CA file that reads is taken (its certificates are checked at connection).
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let cfg = parse(json!({"endpoint": "https://h", "ca_file": ca})).unwrap();
        crate::s3::S3::new("objects", &cfg).unwrap();
    }
}
