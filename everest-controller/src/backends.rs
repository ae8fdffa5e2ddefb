//! Builds the controller side of every configured backend instance, by `kind`.

use std::sync::Arc;

use async_trait::async_trait;
use everest_backend::daemon::config::{ControllerConfig, unknown_kind};
use everest_backend::daemon::identity::Readiness;
use everest_backend::registry::{BackendConfig, Registry};
use everest_backend::{BackendName, ControllerBackend, Error};

/// The backend kinds this binary can build.
pub const KINDS: &[&str] = &[everest_evs::KIND];

fn build_one(name: &BackendName, cfg: &BackendConfig) -> Result<Arc<dyn ControllerBackend>, Error> {
    match cfg.kind.as_str() {
        everest_evs::KIND => everest_evs::controller_from_config(name, &cfg.settings),
        other => Err(unknown_kind(name, other, KINDS)),
    }
}

/// Gives every backend kind's own metrics their help text (after the exporter is installed).
pub fn describe_metrics() {
    everest_evs::api::describe_metrics();
}

/// The registry of controller backends described by the configuration.
pub fn build(cfg: &ControllerConfig) -> Result<Registry<dyn ControllerBackend>, Error> {
    cfg.build_registry(build_one)
}

/// The controller's own readiness: its backends are built (which happens before it serves)
/// and there is at least one. Whether their cloud services answer is not asked here (see
/// `everest_backend::daemon::reachability`): a cloud outage must not make the livenessprobe
/// restart a healthy controller.
#[derive(Debug)]
pub struct ControllerReady(pub Arc<Registry<dyn ControllerBackend>>);

#[async_trait]
impl Readiness for ControllerReady {
    async fn check(&self) -> Result<(), String> {
        if self.0.iter().next().is_none() {
            return Err("no backends are configured".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_kind_names_the_supported_ones() {
        let cfg: BackendConfig =
            serde_json::from_value(serde_json::json!({"kind": "nfs"})).unwrap();
        let name = BackendName::new("files").unwrap();
        let err = build_one(&name, &cfg).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.to_string().contains("evs"), "{err}");
        assert!(err.to_string().contains("\"nfs\""), "{err}");
    }

    #[tokio::test]
    async fn ready_without_asking_the_cloud_but_not_without_backends() {
        let empty = ControllerReady(Arc::new(Registry::new(None)));
        assert!(empty.check().await.unwrap_err().contains("no backends"));
    }
}
