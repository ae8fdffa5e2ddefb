//! One `[backends.<name>]` table of kind `sfs`. Mode `subdir` (the one built so far): volumes
//! are directories under `base_dir` of the export `export` on the NFS server `server`, made by
//! the controller over NFSv3 from user space (no mount, no privilege), mounted by the node.

use everest_backend::Error;
use everest_backend::nfs::NfsExport;
use serde::Deserialize;

use crate::volume::{OnDelete, check_component};

/// The table, parsed strictly: an unknown key is an error naming it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SfsConfig {
    /// The NFS server holding the volumes: an IP address or a host name.
    pub server: String,
    /// The export on it (what MOUNT is asked for), e.g. `/exports`.
    pub export: String,
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
        let cfg: SfsConfig = serde_json::from_value(serde_json::Value::Object(settings.clone()))
            .map_err(|e| bad(e.to_string()))?;
        cfg.root_export().map_err(|e| bad(e.to_string()))?;
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

    /// The export itself, `server:/export`.
    pub fn root_export(&self) -> Result<NfsExport, Error> {
        format!("{}:{}", self.server, self.export).parse()
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
}
