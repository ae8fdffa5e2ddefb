//! The CSI Identity service both daemons serve: name, version, capabilities and readiness.

use std::sync::Arc;

use async_trait::async_trait;
use everest_proto::csi::v1 as csi;
use everest_proto::csi::v1::identity_server::Identity;
use everest_proto::csi::v1::plugin_capability::{self, service, volume_expansion};
use tonic::{Request, Response, Status};

use super::telemetry::{NO_BACKEND, observe};

/// Decides whether the daemon can serve requests right now.
#[async_trait]
pub trait Readiness: Send + Sync + 'static {
    /// `Err` with the reason when the daemon is not ready; never a reason containing a secret.
    async fn check(&self) -> Result<(), String>;
}

/// Identity, parameterised by the readiness of the side serving it. Both daemons describe the
/// same plugin (see [`plugin_capabilities`]).
#[derive(Clone)]
pub struct IdentityService {
    name: String,
    vendor_version: String,
    readiness: Arc<dyn Readiness>,
}

impl IdentityService {
    /// An Identity service reporting `name` (the driver name) and `vendor_version`.
    pub fn new(name: String, vendor_version: &str, readiness: Arc<dyn Readiness>) -> Self {
        Self {
            name,
            vendor_version: vendor_version.to_owned(),
            readiness,
        }
    }
}

/// The plugin's capabilities. Both daemons answer with these, whichever socket is asked: CSI
/// clients (the sidecars, the kubelet, csi-sanity) read plugin capabilities from the endpoint
/// they happen to hold, and a node socket that hid CONTROLLER_SERVICE would tell them the
/// plugin has no controller.
pub fn plugin_capabilities() -> Vec<csi::PluginCapability> {
    vec![
        service_capability(service::Type::ControllerService),
        service_capability(service::Type::VolumeAccessibilityConstraints),
        expansion_capability(volume_expansion::Type::Online),
    ]
}

/// A `Service` plugin capability.
pub fn service_capability(t: service::Type) -> csi::PluginCapability {
    csi::PluginCapability {
        r#type: Some(plugin_capability::Type::Service(
            plugin_capability::Service { r#type: t.into() },
        )),
    }
}

/// A `VolumeExpansion` plugin capability.
pub fn expansion_capability(t: volume_expansion::Type) -> csi::PluginCapability {
    csi::PluginCapability {
        r#type: Some(plugin_capability::Type::VolumeExpansion(
            plugin_capability::VolumeExpansion { r#type: t.into() },
        )),
    }
}

const SERVICE: &str = "identity";

#[async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        observe(SERVICE, "GetPluginInfo", "", NO_BACKEND, async {
            Ok(Response::new(csi::GetPluginInfoResponse {
                name: self.name.clone(),
                vendor_version: self.vendor_version.clone(),
                manifest: [(
                    "csi-spec".to_owned(),
                    everest_proto::CSI_SPEC_VERSION.to_owned(),
                )]
                .into(),
            }))
        })
        .await
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        observe(SERVICE, "GetPluginCapabilities", "", NO_BACKEND, async {
            Ok(Response::new(csi::GetPluginCapabilitiesResponse {
                capabilities: plugin_capabilities(),
            }))
        })
        .await
    }

    async fn probe(
        &self,
        _: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        observe(SERVICE, "Probe", "", NO_BACKEND, async {
            // Not ready is an answer, not an error: the liveness probe sidecar reads `ready`.
            let ready = match self.readiness.check().await {
                Ok(()) => true,
                Err(reason) => {
                    tracing::warn!(reason, "not ready");
                    false
                }
            };
            Ok(Response::new(csi::ProbeResponse { ready: Some(ready) }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Result<(), String>);

    #[async_trait]
    impl Readiness for Fixed {
        async fn check(&self) -> Result<(), String> {
            self.0.clone()
        }
    }

    fn identity(ready: Result<(), String>) -> IdentityService {
        IdentityService::new("everest.csi.io".into(), "0.1.0", Arc::new(Fixed(ready)))
    }

    #[tokio::test]
    async fn probe_reports_readiness_without_failing() {
        let ok = identity(Ok(()))
            .probe(Request::new(csi::ProbeRequest {}))
            .await;
        assert_eq!(ok.unwrap().into_inner().ready, Some(true));
        let not = identity(Err("cloud unreachable".into()))
            .probe(Request::new(csi::ProbeRequest {}))
            .await;
        assert_eq!(not.unwrap().into_inner().ready, Some(false));
    }

    #[tokio::test]
    async fn info_and_capabilities() {
        let id = identity(Ok(()));
        let info = id
            .get_plugin_info(Request::new(csi::GetPluginInfoRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.name, "everest.csi.io");
        assert_eq!(info.vendor_version, "0.1.0");
        let caps = id
            .get_plugin_capabilities(Request::new(csi::GetPluginCapabilitiesRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(caps.capabilities, plugin_capabilities());
        assert_eq!(caps.capabilities.len(), 3);
    }
}
