//! Builds the controller side of every configured backend instance, by `kind`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use everest_backend::daemon::config::{ControllerConfig, unknown_kind};
use everest_backend::daemon::identity::Readiness;
use everest_backend::registry::{BackendConfig, Registry};
use everest_backend::{BackendName, ControllerBackend, Error};

/// The backend kinds this binary can build.
pub const KINDS: &[&str] = &[everest_evs::KIND];

/// How long one backend's readiness probe may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Ready when every backend's service answers its probe.
#[derive(Debug)]
pub struct BackendsReady(pub Arc<Registry<dyn ControllerBackend>>);

#[async_trait]
impl Readiness for BackendsReady {
    async fn check(&self) -> Result<(), String> {
        let mut failures = Vec::new();
        for (name, backend) in self.0.iter() {
            match tokio::time::timeout(PROBE_TIMEOUT, backend.probe()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failures.push(format!("backend {name}: {e}")),
                Err(_) => failures.push(format!(
                    "backend {name}: probe took longer than {}s",
                    PROBE_TIMEOUT.as_secs()
                )),
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
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
}
