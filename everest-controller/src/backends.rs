//! The controller's backends: built by `everest_backends` from the configuration, by `kind`.

use async_trait::async_trait;
use everest_backend::daemon::config::ControllerConfig;
use everest_backend::daemon::identity::Readiness;
use everest_backend::registry::Registry;
use everest_backend::{ControllerBackend, Error};

/// The registry of controller backends described by the configuration.
pub fn build(cfg: &ControllerConfig) -> Result<Registry<dyn ControllerBackend>, Error> {
    cfg.build_registry(everest_backends::controller)
}

/// The controller's own readiness: it is serving, which it does only once every configured
/// backend was built. Whether their cloud services answer is not asked here (see
/// `everest_backend::daemon::reachability`): a cloud outage must not make the livenessprobe
/// restart a healthy controller, which would only lose the work in flight.
#[derive(Debug)]
pub struct ControllerReady;

#[async_trait]
impl Readiness for ControllerReady {
    async fn check(&self) -> Result<(), String> {
        Ok(())
    }
}
