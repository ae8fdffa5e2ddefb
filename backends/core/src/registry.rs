//! The registry: backend instances by name, built from the daemon configuration. A StorageClass
//! parameter picks one for CreateVolume; every later call routes by the name in the volume ID.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::error::Error;
use crate::params::{BACKEND_KEY, CommonParams};
use crate::volume_id::{BackendName, VolumeId};

/// One `[backends.<name>]` table of the configuration: its kind and the kind's own settings.
#[derive(Debug, Clone, Deserialize)]
pub struct BackendConfig {
    /// Which backend crate builds this instance (`evs`, `sfs`, `obs`).
    pub kind: String,
    /// Everything else in the table, parsed by that backend into its typed config.
    #[serde(flatten)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

/// Backend instances of one side (controller or node), by name.
#[derive(Debug)]
pub struct Registry<B: ?Sized> {
    backends: BTreeMap<BackendName, Arc<B>>,
    default: Option<BackendName>,
}

impl<B: ?Sized> Registry<B> {
    /// An empty registry; `default` is used when a StorageClass names no backend.
    pub fn new(default: Option<BackendName>) -> Self {
        Self {
            backends: BTreeMap::new(),
            default,
        }
    }

    /// Adds an instance.
    pub fn insert(&mut self, name: BackendName, backend: Arc<B>) {
        self.backends.insert(name, backend);
    }

    /// Checks that the default names a configured instance.
    pub fn validate(&self) -> Result<(), Error> {
        match &self.default {
            Some(d) if !self.backends.contains_key(d) => Err(Error::InvalidArgument(format!(
                "default backend {d} is not configured (configured: {})",
                self.names()
            ))),
            _ => Ok(()),
        }
    }

    /// The instance a CreateVolume goes to: the one named in the parameters, else the default.
    pub fn for_params(&self, common: &CommonParams) -> Result<(BackendName, Arc<B>), Error> {
        let name = common
            .backend
            .clone()
            .or_else(|| self.default.clone())
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "no StorageClass parameter {BACKEND_KEY} and no default backend configured (configured: {})",
                    self.names()
                ))
            })?;
        let backend = self.backends.get(&name).cloned().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "StorageClass parameter {BACKEND_KEY}={name} names no configured backend (configured: {})",
                self.names()
            ))
        })?;
        Ok((name, backend))
    }

    /// The instance that owns an existing volume.
    pub fn for_volume(&self, id: &VolumeId) -> Result<Arc<B>, Error> {
        self.backends.get(id.backend()).cloned().ok_or_else(|| {
            Error::NotFound(format!(
                "volume {id} belongs to backend {}, which is not configured on this daemon (configured: {})",
                id.backend(),
                self.names()
            ))
        })
    }

    /// The instance named `name`, if configured.
    pub fn get(&self, name: &BackendName) -> Option<Arc<B>> {
        self.backends.get(name).cloned()
    }

    /// All instances, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&BackendName, &Arc<B>)> {
        self.backends.iter()
    }

    fn names(&self) -> String {
        let names: Vec<&str> = self.backends.keys().map(BackendName::as_str).collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> BackendName {
        BackendName::new(s).unwrap()
    }

    fn registry() -> Registry<str> {
        let mut r: Registry<str> = Registry::new(Some(name("evs-default")));
        r.insert(name("evs-default"), Arc::from("default"));
        r.insert(name("evs-fast"), Arc::from("fast"));
        r
    }

    #[test]
    fn picks_named_then_default() {
        let r = registry();
        let named = CommonParams {
            backend: Some(name("evs-fast")),
            ..Default::default()
        };
        assert_eq!(&*r.for_params(&named).unwrap().1, "fast");
        assert_eq!(
            &*r.for_params(&CommonParams::default()).unwrap().1,
            "default"
        );
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        let r = registry();
        let unknown = CommonParams {
            backend: Some(name("obs")),
            ..Default::default()
        };
        let err = r.for_params(&unknown).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.to_string().contains("evs-default, evs-fast"), "{err}");
        let id: VolumeId = "v1:obs:bucket".parse().unwrap();
        assert_eq!(r.for_volume(&id).unwrap_err().code(), tonic::Code::NotFound);
        let bad_default: Registry<str> = Registry::new(Some(name("nope")));
        assert!(bad_default.validate().is_err());
    }

    #[test]
    fn backend_config_keeps_the_rest_for_the_backend() {
        let c: BackendConfig = serde_json::from_value(serde_json::json!({
            "kind": "evs", "project_id": "p", "region": "r"
        }))
        .unwrap();
        assert_eq!(c.kind, "evs");
        assert_eq!(c.settings.get("region").and_then(|v| v.as_str()), Some("r"));
    }
}
