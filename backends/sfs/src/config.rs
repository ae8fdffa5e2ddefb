//! One `[backends.<name>]` table of kind `sfs`, for one or both modes:
//! - `subdir` (keys `server`, `export`, `base_dir`, …): volumes are directories under `base_dir`
//!   of the export `export` on the NFS server `server`, made by the controller over NFSv3 from
//!   user space (no mount, no privilege);
//! - `share` (keys `vpc_id`, `subnet_id`, …, plus the cloud client's `project_id`, `region`,
//!   endpoints, …): a share per volume through the SFS Turbo API.
//!
//! The table is flat, as an `evs` one is: the keys below are the backend's own, every other
//! key belongs to the cloud client ([`CloudConfig`]) of mode `share`.
//!
//! The node reads only `mount_options`: everything else it needs travels with the volume.

use std::path::PathBuf;
use std::time::Duration;

use everest_backend::Error;
use everest_backend::nfs::NfsExport;
use everest_cloud::CloudConfig;
use everest_cloud::config::scalar;
use serde::Deserialize;

use crate::volume::{OnDelete, check_component};

/// The table, parsed strictly: an unknown key is an error naming it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SfsConfig {
    /// Mode `subdir`: the NFS server holding the volumes, an IP address or a host name.
    #[serde(default)]
    pub server: Option<String>,
    /// Mode `subdir`: the export on it (what MOUNT is asked for), e.g. `/exports`.
    #[serde(default)]
    pub export: Option<String>,
    /// Where the volume directories go inside the export, e.g. `k8s/volumes`; the export's
    /// root when empty. It must exist.
    #[serde(default)]
    pub base_dir: String,
    /// What DeleteVolume does when the StorageClass does not say: `delete`, `retain`, `archive`.
    #[serde(default = "default_on_delete")]
    pub on_delete: String,
    /// The AUTH_UNIX identity the controller speaks NFS as; the server must not squash it if
    /// directories are to be owned by the uid/gid a StorageClass asks for.
    #[serde(default)]
    pub auth_uid: u32,
    /// See `auth_uid`.
    #[serde(default)]
    pub auth_gid: u32,
    /// Connect from a port below 1024, for servers that insist (needs CAP_NET_BIND_SERVICE).
    #[serde(default)]
    pub privileged_port: bool,
    /// Mount options the node always uses for this backend (checked like a StorageClass's).
    #[serde(default)]
    pub mount_options: Vec<String>,
    /// Mode `share`: the share keys and the cloud client's, when any is set; parsed by
    /// [`ShareConfig::parse`].
    #[serde(skip)]
    pub share: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The keys of mode `subdir` and of both modes; the others are mode `share`'s.
const OWN_KEYS: &[&str] = &[
    "server",
    "export",
    "base_dir",
    "on_delete",
    "auth_uid",
    "auth_gid",
    "privileged_port",
    "mount_options",
];

/// Mode `share`'s own keys: where shares go; the rest of its table is [`CloudConfig`]'s.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareSettings {
    /// A JSON file (mode 0600) with `{"access_key","secret_key"}` or `{"domain","user","password"}`,
    /// read again whenever it changes. Only the controller reads it.
    #[serde(default, deserialize_with = "scalar::opt_path")]
    pub credentials_file: Option<PathBuf>,
    /// The zone new shares go to.
    #[serde(deserialize_with = "scalar::text")]
    pub availability_zone: String,
    /// The VPC the nodes reach the shares from.
    #[serde(deserialize_with = "scalar::text")]
    pub vpc_id: String,
    /// The subnet of the shares' export addresses.
    #[serde(deserialize_with = "scalar::text")]
    pub subnet_id: String,
    /// The security group guarding the shares.
    #[serde(deserialize_with = "scalar::text")]
    pub security_group_id: String,
    /// The share type when the StorageClass names none: `STANDARD` or `PERFORMANCE`.
    #[serde(default = "default_share_type", deserialize_with = "scalar::text")]
    pub share_type: String,
    /// How long CreateVolume, ControllerExpandVolume and DeleteVolume wait for a share to
    /// settle before answering DEADLINE_EXCEEDED (the provisioner retries and finds it again).
    #[serde(default = "default_wait", deserialize_with = "scalar::number")]
    pub wait_timeout_seconds: u64,
}

const SHARE_KEYS: &[&str] = &[
    "credentials_file",
    "availability_zone",
    "vpc_id",
    "subnet_id",
    "security_group_id",
    "share_type",
    "wait_timeout_seconds",
];

/// The share types on sale.
pub const SHARE_TYPES: &[&str] = &["STANDARD", "PERFORMANCE"];

fn default_share_type() -> String {
    "STANDARD".into()
}
fn default_wait() -> u64 {
    600
}

/// A parsed `share` sub-table.
#[derive(Debug, Clone)]
pub struct ShareConfig {
    /// The API client's settings.
    pub cloud: CloudConfig,
    /// Where shares go.
    pub settings: ShareSettings,
}

impl ShareConfig {
    /// Splits and parses the sub-table; `bad` names the backend in the error.
    fn parse(
        table: &serde_json::Map<String, serde_json::Value>,
        bad: impl Fn(String) -> Error,
    ) -> Result<Self, Error> {
        let (mine, cloud): (serde_json::Map<_, _>, serde_json::Map<_, _>) = table
            .clone()
            .into_iter()
            .partition(|(k, _)| SHARE_KEYS.contains(&k.as_str()));
        // The cloud part first: a key unknown to both sides is reported by name there.
        let cloud: CloudConfig = serde_json::from_value(serde_json::Value::Object(cloud))
            .map_err(|e| bad(format!("mode share: {e}")))?;
        let settings: ShareSettings = serde_json::from_value(serde_json::Value::Object(mine))
            .map_err(|e| bad(format!("mode share: {e}")))?;
        cloud
            .validate(crate::turbo::SERVICES)
            .map_err(|e| bad(format!("mode share: {e}")))?;
        if !SHARE_TYPES.contains(&settings.share_type.as_str()) {
            return Err(bad(format!(
                "mode share: share_type {:?} is not one of {}",
                settings.share_type,
                SHARE_TYPES.join(", ")
            )));
        }
        if settings.wait_timeout_seconds == 0 {
            return Err(bad(
                "mode share: wait_timeout_seconds must be positive".into()
            ));
        }
        Ok(Self { cloud, settings })
    }

    /// How long one wait on a share may last.
    pub fn wait_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.wait_timeout_seconds)
    }
}

fn default_on_delete() -> String {
    "delete".into()
}

impl SfsConfig {
    /// Parses and checks the table of the instance `name`.
    pub fn parse(
        name: &str,
        settings: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, Error> {
        let bad = |e: String| Error::InvalidArgument(format!("backend {name} (kind sfs): {e}"));
        let (own, share): (serde_json::Map<_, _>, serde_json::Map<_, _>) = settings
            .clone()
            .into_iter()
            .partition(|(k, _)| OWN_KEYS.contains(&k.as_str()));
        let mut cfg: SfsConfig = serde_json::from_value(serde_json::Value::Object(own))
            .map_err(|e| bad(e.to_string()))?;
        cfg.share = (!share.is_empty()).then_some(share);
        match (&cfg.server, &cfg.export) {
            (Some(_), Some(_)) => {
                cfg.root_export().map_err(|e| bad(e.to_string()))?;
            }
            (None, None) if cfg.share.is_some() => {}
            (None, None) => {
                return Err(bad(
                    "configures no mode: set server and export (mode subdir), or \
                     project_id, region, vpc_id, subnet_id, security_group_id and \
                     availability_zone (mode share), or both"
                        .into(),
                ));
            }
            _ => return Err(bad("server and export go together (mode subdir)".into())),
        }
        if let Some(table) = &cfg.share {
            ShareConfig::parse(table, bad)?;
        }
        cfg.default_on_delete().map_err(bad)?;
        if !cfg.base_dir.is_empty() {
            for c in cfg.base_dir.split('/') {
                check_component(c).map_err(|why| bad(format!("base_dir: {why}")))?;
            }
        }
        everest_backend::nfs::mount_options(&cfg.mount_options, false)
            .map_err(|e| bad(format!("mount_options: {e}")))?;
        Ok(cfg)
    }

    /// The export itself, `server:/export`; FAILED_PRECONDITION when mode `subdir` is not
    /// configured.
    pub fn root_export(&self) -> Result<NfsExport, Error> {
        match (&self.server, &self.export) {
            (Some(server), Some(export)) => format!("{server}:{export}").parse(),
            _ => Err(Error::FailedPrecondition(
                "this backend has no NFS server configured for directory volumes (mode subdir)"
                    .into(),
            )),
        }
    }

    /// The parsed `share` sub-table, when mode `share` is configured.
    pub fn share_config(&self, backend: &str) -> Result<Option<ShareConfig>, Error> {
        let bad = |e: String| Error::InvalidArgument(format!("backend {backend} (kind sfs): {e}"));
        self.share
            .as_ref()
            .map(|table| ShareConfig::parse(table, bad))
            .transpose()
    }

    /// The export path a volume directory is mounted from, `server:/export/base/dir`.
    pub fn volume_export(&self, dir: &str) -> Result<NfsExport, Error> {
        let mut export = self.root_export()?;
        for part in self.base_components().chain(dir.split('/')) {
            export = export.join(part)?;
        }
        Ok(export)
    }

    /// The base directory's components.
    pub fn base_components(&self) -> impl Iterator<Item = &str> {
        self.base_dir.split('/').filter(|c| !c.is_empty())
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
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<SfsConfig, Error> {
        SfsConfig::parse("nfs-home", v.as_object().unwrap())
    }

    #[test]
    fn a_table_parses_and_a_bad_one_names_its_key() {
        let c = parse(json!({"server": "10.0.0.5", "export": "/exports", "base_dir": "k8s/vols"}))
            .unwrap();
        assert_eq!(
            c.volume_export("pvc-1").unwrap().to_string(),
            "10.0.0.5:/exports/k8s/vols/pvc-1"
        );
        assert_eq!(c.default_on_delete(), Ok(OnDelete::Delete));
        for (bad, key) in [
            (
                json!({"server": "10.0.0.5", "export": "/e", "typo": 1}),
                "typo",
            ),
            (json!({"server": "10.0.0.5"}), "export"),
            (json!({}), "no mode"),
            (json!({"region": "r"}), "mode share"),
            (share_table(json!({"share_type": "GOLD"})), "share_type"),
            (
                share_table(json!({"evs_endpoint": "https://x"})),
                "evs_endpoint",
            ),
            (share_table(json!({"sever": "typo"})), "sever"),
            (json!({"server": "a b", "export": "/e"}), "server"),
            (
                json!({"server": "h", "export": "/e", "base_dir": "../x"}),
                "base_dir",
            ),
            (
                json!({"server": "h", "export": "/e", "on_delete": "keep"}),
                "on_delete",
            ),
            (
                json!({"server": "h", "export": "/e", "mount_options": ["suid"]}),
                "mount_options",
            ),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(
                err.contains("nfs-home") && err.contains(key) || err.contains("invalid"),
                "{err}"
            );
        }
    }

    fn share_table(extra: serde_json::Value) -> serde_json::Value {
        let mut t = json!({
            "project_id": "p1", "region": "r1", "availability_zone": "az1",
            "vpc_id": "v", "subnet_id": "s", "security_group_id": "g",
            "credentials_file": "/etc/everest/sfs.json",
        });
        t.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        t
    }

    #[test]
    fn a_share_only_table_parses_and_has_no_subdir_mode() {
        let c = parse(share_table(json!({"wait_timeout_seconds": "30"}))).unwrap();
        let share = c.share_config("nfs-home").unwrap().expect("share mode");
        assert_eq!(share.settings.share_type, "STANDARD");
        assert_eq!(share.wait_timeout(), Duration::from_secs(30));
        assert_eq!(
            share.cloud.url(everest_cloud::Service::SfsTurbo),
            "https://sfs-turbo.r1.myhuaweicloud.com"
        );
        let err = c.root_export().unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        let both = parse(share_table(json!({"server": "h", "export": "/e"}))).unwrap();
        assert!(both.root_export().is_ok() && both.share.is_some());
    }
}
