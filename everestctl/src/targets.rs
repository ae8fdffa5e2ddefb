//! Which Everest backend instance each kind of volume moves to: named on the command line
//! (`--backend evs=evs-default`) or read from an Everest StorageClass
//! (`--storage-class obs=everest-obs`, its `everest.io/backend` parameter and, for object
//! volumes, its node-stage Secret).

use std::collections::BTreeMap;
use std::str::FromStr;

use everest_backend::BackendName;
use everest_backend::params::BACKEND_KEY;
use k8s_openapi::api::core::v1::SecretReference;
use serde::Serialize;

use crate::cluster::Cluster;
use crate::error::{Error, Result};

/// The StorageClass parameters csi-provisioner reads for the node-stage Secret.
const STAGE_SECRET_NAME: &str = "csi.storage.k8s.io/node-stage-secret-name";
const STAGE_SECRET_NAMESPACE: &str = "csi.storage.k8s.io/node-stage-secret-namespace";

/// `<kind>=<value>` from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindValue {
    /// The Everest backend kind (`evs`, `sfs`, `obs`).
    pub kind: String,
    /// What the kind maps to.
    pub value: String,
}

impl FromStr for KindValue {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, value) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not <kind>=<name>, e.g. evs=evs-default"))?;
        if !["evs", "sfs", "obs"].contains(&kind) {
            return Err(format!("{kind:?} is not one of the kinds evs, sfs, obs"));
        }
        if value.is_empty() {
            return Err(format!("{s:?} names nothing after '='"));
        }
        Ok(Self {
            kind: kind.to_owned(),
            value: value.to_owned(),
        })
    }
}

/// Where one kind's volumes go.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    /// The backend instance, as the volume handle names it.
    #[serde(serialize_with = "as_str")]
    pub backend: BackendName,
    /// The Secret the node stages the volume with, for kinds whose node needs keys.
    pub stage_secret: Option<SecretReference>,
    /// Where the choice came from, for the plan.
    pub source: String,
}

fn as_str<S: serde::Serializer>(name: &BackendName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(name.as_str())
}

/// The target of every kind the command line covers.
#[derive(Debug, Clone, Default)]
pub struct Targets(BTreeMap<String, Target>);

impl Targets {
    /// Resolves the flags, reading each StorageClass named. A kind named twice is an error,
    /// as is a StorageClass that is not Everest's or names no backend instance.
    pub async fn resolve(
        cluster: &Cluster,
        driver_name: &str,
        backends: &[KindValue],
        storage_classes: &[KindValue],
        obs_secret: Option<&str>,
    ) -> Result<Self> {
        let mut targets = BTreeMap::new();
        let mut add = |kind: &str, target: Target| {
            if targets.insert(kind.to_owned(), target).is_some() {
                return Err(Error::Usage(format!(
                    "kind {kind} is given more than once (--backend and --storage-class together name each kind once)"
                )));
            }
            Ok(())
        };
        for kv in backends {
            let backend = BackendName::new(&kv.value)
                .map_err(|e| Error::Usage(format!("--backend {}={}: {e}", kv.kind, kv.value)))?;
            add(
                &kv.kind,
                Target {
                    backend,
                    stage_secret: None,
                    source: format!("--backend {}={}", kv.kind, kv.value),
                },
            )?;
        }
        for kv in storage_classes {
            let class = cluster.storage_class(&kv.value).await?;
            add(
                &kv.kind,
                from_storage_class(&kv.value, driver_name, &class)?,
            )?;
        }
        if let Some(secret) = obs_secret {
            let (namespace, name) = secret.split_once('/').ok_or_else(|| {
                Error::Usage(format!("--obs-secret {secret:?} is not <namespace>/<name>"))
            })?;
            let target = targets.get_mut("obs").ok_or_else(|| {
                Error::Usage(
                    "--obs-secret needs the obs kind's backend (--backend obs=<instance>)".into(),
                )
            })?;
            target.stage_secret = Some(SecretReference {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
            });
        }
        Ok(Self(targets))
    }

    /// Targets given directly (for tests and callers that already know them).
    pub fn from_map(map: BTreeMap<String, Target>) -> Self {
        Self(map)
    }

    /// The target of `kind`, if the command line gave one.
    pub fn get(&self, kind: &str) -> Option<&Target> {
        self.0.get(kind)
    }
}

fn from_storage_class(
    name: &str,
    driver_name: &str,
    class: &k8s_openapi::api::storage::v1::StorageClass,
) -> Result<Target> {
    if class.provisioner != driver_name {
        return Err(Error::Usage(format!(
            "StorageClass {name} is provisioned by {}, not by Everest ({driver_name})",
            class.provisioner
        )));
    }
    let params = class.parameters.clone().unwrap_or_default();
    let backend = params.get(BACKEND_KEY).ok_or_else(|| {
        Error::Usage(format!(
            "StorageClass {name} has no {BACKEND_KEY} parameter, so its backend is the daemon's default, which everestctl cannot see; name it with --backend"
        ))
    })?;
    let backend =
        BackendName::new(backend).map_err(|e| Error::Usage(format!("StorageClass {name}: {e}")))?;
    let stage_secret = match (
        params.get(STAGE_SECRET_NAMESPACE),
        params.get(STAGE_SECRET_NAME),
    ) {
        (Some(namespace), Some(secret)) => Some(SecretReference {
            name: Some(secret.clone()),
            namespace: Some(namespace.clone()),
        }),
        _ => None,
    };
    Ok(Target {
        backend,
        stage_secret,
        source: format!("StorageClass {name}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_values_parse_and_bad_ones_say_why() {
        assert_eq!(
            "evs=evs-default".parse::<KindValue>().unwrap(),
            KindValue {
                kind: "evs".into(),
                value: "evs-default".into()
            }
        );
        assert!(
            "evs"
                .parse::<KindValue>()
                .unwrap_err()
                .contains("<kind>=<name>")
        );
        assert!(
            "disk=x"
                .parse::<KindValue>()
                .unwrap_err()
                .contains("not one of")
        );
        assert!("obs=".parse::<KindValue>().unwrap_err().contains("nothing"));
    }

    #[test]
    fn storage_classes_must_be_everest_and_name_a_backend() {
        use k8s_openapi::api::storage::v1::StorageClass;
        let class = |provisioner: &str, params: &[(&str, &str)]| StorageClass {
            provisioner: provisioner.into(),
            parameters: Some(
                params
                    .iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect(),
            ),
            ..Default::default()
        };
        let ok = from_storage_class(
            "everest-obs",
            "everest.csi.io",
            &class(
                "everest.csi.io",
                &[
                    (BACKEND_KEY, "obs-main"),
                    (STAGE_SECRET_NAME, "keys"),
                    (STAGE_SECRET_NAMESPACE, "kube-system"),
                ],
            ),
        )
        .unwrap();
        assert_eq!(ok.backend.as_str(), "obs-main");
        assert_eq!(ok.stage_secret.unwrap().name.as_deref(), Some("keys"));
        let foreign = from_storage_class(
            "sas",
            "everest.csi.io",
            &class("flexvolume-huawei.com/fuxivol", &[]),
        )
        .unwrap_err();
        assert!(foreign.to_string().contains("not by Everest"), "{foreign}");
        let unnamed =
            from_storage_class("x", "everest.csi.io", &class("everest.csi.io", &[])).unwrap_err();
        assert!(unnamed.to_string().contains("--backend"), "{unnamed}");
    }
}
