//! One `[backends.<name>]` table of kind `evs`: the cloud client's settings plus the
//! backend's own (defaults for new disks, where the node finds devices, how long to wait).

use std::path::PathBuf;
use std::time::Duration;

use everest_backend::Error;
use serde::Deserialize;

use crate::api::CloudConfig;
use crate::api::config::scalar;
use crate::capabilities::FS_TYPES;

/// The backend's own keys; the rest of the table belongs to [`CloudConfig`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSettings {
    /// A JSON file (mode 0600) with `{"access_key","secret_key"}` or `{"domain","user","password"}`,
    /// read again whenever it changes.
    #[serde(deserialize_with = "scalar::path")]
    pub credentials_file: PathBuf,
    /// Disk type when the StorageClass names none.
    #[serde(default = "default_volume_type", deserialize_with = "scalar::text")]
    pub default_volume_type: String,
    /// Size when the claim asks for none.
    #[serde(default = "default_size_gib", deserialize_with = "scalar::number")]
    pub default_size_gib: u64,
    /// Zone when neither topology nor the StorageClass names one.
    #[serde(default, deserialize_with = "scalar::opt_text")]
    pub availability_zone: Option<String>,
    /// How long one create/attach/detach/extend/delete job may take.
    #[serde(default = "default_job_timeout", deserialize_with = "scalar::number")]
    pub job_timeout_seconds: u64,
    /// Where the node looks for `virtio-<id>` / `scsi-3<wwn>` links.
    #[serde(default = "default_by_id_dir", deserialize_with = "scalar::path")]
    pub by_id_dir: PathBuf,
    /// Filesystem when the volume capability names none.
    #[serde(default = "default_fs_type", deserialize_with = "scalar::text")]
    pub default_fs_type: String,
    /// How long NodeStage waits for an attached disk to show up.
    #[serde(default = "default_device_wait", deserialize_with = "scalar::number")]
    pub device_wait_seconds: u64,
    /// Where the node learns its server ID and zone, unless `[node]` configures them.
    #[serde(default = "default_metadata_url", deserialize_with = "scalar::text")]
    pub metadata_url: String,
}

/// The keys of [`BackendSettings`], so the table can be split between it and [`CloudConfig`].
const BACKEND_KEYS: &[&str] = &[
    "credentials_file",
    "default_volume_type",
    "default_size_gib",
    "availability_zone",
    "job_timeout_seconds",
    "by_id_dir",
    "default_fs_type",
    "device_wait_seconds",
    "metadata_url",
];

fn default_volume_type() -> String {
    "SSD".into()
}
fn default_size_gib() -> u64 {
    10
}
fn default_job_timeout() -> u64 {
    300
}
fn default_by_id_dir() -> PathBuf {
    PathBuf::from("/dev/disk/by-id")
}
fn default_fs_type() -> String {
    "ext4".into()
}
fn default_device_wait() -> u64 {
    30
}
fn default_metadata_url() -> String {
    crate::api::DEFAULT_METADATA_URL.to_owned()
}

impl BackendSettings {
    /// How long a job may take.
    pub fn job_timeout(&self) -> Duration {
        Duration::from_secs(self.job_timeout_seconds)
    }

    /// How long NodeStage waits for the device.
    pub fn device_wait(&self) -> Duration {
        Duration::from_secs(self.device_wait_seconds)
    }
}

/// A parsed `evs` table.
#[derive(Debug, Clone)]
pub struct EvsConfig {
    /// The API client's settings.
    pub cloud: CloudConfig,
    /// The backend's own settings.
    pub backend: BackendSettings,
}

impl EvsConfig {
    /// Splits and parses the table; an unknown key is an error that names it.
    pub fn parse(
        name: &str,
        settings: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, Error> {
        let bad = |e: String| Error::InvalidArgument(format!("backend {name} (kind evs): {e}"));
        let (mine, cloud): (serde_json::Map<_, _>, serde_json::Map<_, _>) = settings
            .clone()
            .into_iter()
            .partition(|(k, _)| BACKEND_KEYS.contains(&k.as_str()));
        let backend: BackendSettings = serde_json::from_value(serde_json::Value::Object(mine))
            .map_err(|e| bad(e.to_string()))?;
        let cloud: CloudConfig = serde_json::from_value(serde_json::Value::Object(cloud))
            .map_err(|e| bad(e.to_string()))?;
        cloud
            .validate(crate::api::SERVICES)
            .map_err(|e| bad(e.to_string()))?;
        if !FS_TYPES.contains(&backend.default_fs_type.as_str()) {
            return Err(bad(format!(
                "default_fs_type {:?} is not one of {}",
                backend.default_fs_type,
                FS_TYPES.join(", ")
            )));
        }
        Ok(Self { cloud, backend })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn table(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn splits_cloud_and_backend_keys() {
        let c = EvsConfig::parse(
            "evs-default",
            &table(json!({
                "project_id": "p1", "region": "r1", "evs_endpoint": "http://127.0.0.1:1",
                "allow_insecure_http": true,
                "credentials_file": "/etc/everest/c.json", "default_fs_type": "xfs",
                "device_wait_seconds": 5
            })),
        )
        .unwrap();
        assert_eq!(c.cloud.url(crate::api::Service::Evs), "http://127.0.0.1:1");
        assert_eq!(c.backend.default_fs_type, "xfs");
        assert_eq!(c.backend.device_wait(), Duration::from_secs(5));
    }

    #[test]
    fn rejects_unknown_keys_by_name() {
        let err = EvsConfig::parse(
            "evs-default",
            &table(json!({"project_id": "p1", "region": "r1", "credentials_file": "/c", "regoin": "x"})),
        )
        .unwrap_err();
        assert!(err.to_string().contains("regoin"), "{err}");
    }

    /// The daemons' config layer turns environment values that look numeric into numbers (and
    /// `true`/`false` into bools); a file may quote a number. Both must still parse.
    #[test]
    fn scalars_arrive_as_numbers_bools_or_strings() {
        let c = EvsConfig::parse(
            "evs-default",
            &table(json!({
                "project_id": 123456789, "region": 42, "cloud_domain": true,
                "evs_endpoint": "http://127.0.0.1:1", "ecs_endpoint": "http://127.0.0.1:2",
                "iam_endpoint": "http://127.0.0.1:3", "allow_insecure_http": "true",
                "credentials_file": 7, "default_volume_type": 1, "availability_zone": 3,
                "by_id_dir": 0, "default_fs_type": "xfs",
                "default_size_gib": "20", "job_timeout_seconds": " 60 ", "device_wait_seconds": "5",
                "request_timeout_ms": "1500", "max_retries": "2", "retry_base_ms": "10",
                "retry_cap_ms": "100", "job_poll_initial_ms": "5", "job_poll_max_ms": "50"
            })),
        )
        .unwrap();
        assert_eq!(c.cloud.project_id, "123456789");
        assert_eq!(c.cloud.region, "42");
        assert_eq!(c.cloud.cloud_domain, "true");
        assert_eq!(c.backend.credentials_file, PathBuf::from("7"));
        assert_eq!(c.backend.default_volume_type, "1");
        assert_eq!(c.backend.availability_zone.as_deref(), Some("3"));
        assert_eq!(c.backend.by_id_dir, PathBuf::from("0"));
        assert_eq!(c.backend.default_size_gib, 20);
        assert_eq!(c.backend.job_timeout(), Duration::from_secs(60));
        assert_eq!(c.backend.device_wait(), Duration::from_secs(5));
        assert_eq!(c.cloud.request_timeout, Duration::from_millis(1500));
        assert_eq!(c.cloud.max_retries, 2);
        assert_eq!(c.cloud.retry_base, Duration::from_millis(10));
        assert_eq!(c.cloud.retry_cap, Duration::from_millis(100));
        assert_eq!(c.cloud.job_poll_initial, Duration::from_millis(5));
        assert_eq!(c.cloud.job_poll_max, Duration::from_millis(50));

        // Still strict about what is neither: a table, a fraction, a word, a negative, a too-big u32.
        for (key, value) in [
            ("project_id", json!({"a": 1})),
            ("region", json!(["r"])),
            ("default_size_gib", json!("ten")),
            ("default_size_gib", json!(-1)),
            ("job_timeout_seconds", json!(1.5)),
            ("request_timeout_ms", json!("1.5")),
            ("max_retries", json!("4294967296")),
        ] {
            let mut t =
                table(json!({"project_id": "p1", "region": "r1", "credentials_file": "/c"}));
            t.insert(key.into(), value.clone());
            let err = EvsConfig::parse("evs-default", &t).unwrap_err().to_string();
            assert!(err.contains("evs-default"), "{key}={value}: {err}");
        }
    }
}
