//! A minimal CSI plugin: Identity plus the read-only part of Node, served on
//! a unix socket with the generated tonic servers.
//!
//! It exists to check the generated code against an independent CSI client
//! (`tests/official_client/csi_probe.py`) before the real daemons exist:
//!
//! ```text
//! cargo run -p everest-proto --example identity_echo -- /tmp/csi.sock [NODE_ID]
//! ```
//!
//! An empty NODE_ID makes NodeGetInfo answer without the required field, so
//! the probe's failure path can be exercised too.

use std::{error::Error, os::unix::fs::PermissionsExt, path::PathBuf};

use everest_proto::{
    CSI_SPEC_VERSION,
    csi::v1::{
        GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
        GetPluginInfoResponse, NodeExpandVolumeRequest, NodeExpandVolumeResponse,
        NodeGetCapabilitiesRequest, NodeGetCapabilitiesResponse, NodeGetInfoRequest,
        NodeGetInfoResponse, NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse,
        NodePublishVolumeRequest, NodePublishVolumeResponse, NodeServiceCapability,
        NodeStageVolumeRequest, NodeStageVolumeResponse, NodeUnpublishVolumeRequest,
        NodeUnpublishVolumeResponse, NodeUnstageVolumeRequest, NodeUnstageVolumeResponse,
        PluginCapability, ProbeRequest, ProbeResponse, Topology,
        identity_server::{Identity, IdentityServer},
        node_server::{Node, NodeServer},
        node_service_capability, plugin_capability,
    },
};
use tokio::{net::UnixListener, signal::unix::SignalKind};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status, transport::Server};

struct Plugin {
    node_id: String,
}

#[tonic::async_trait]
impl Identity for Plugin {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: "example.csi.everest.io".into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: [("csi-spec".to_string(), CSI_SPEC_VERSION.to_string())].into(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        use plugin_capability::{Service, Type, service};
        let service = |t: service::Type| PluginCapability {
            r#type: Some(Type::Service(Service { r#type: t.into() })),
        };
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities: vec![
                service(service::Type::ControllerService),
                service(service::Type::VolumeAccessibilityConstraints),
            ],
        }))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse { ready: Some(true) }))
    }
}

#[tonic::async_trait]
impl Node for Plugin {
    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        use node_service_capability::{Rpc, Type, rpc};
        let rpc = |t: rpc::Type| NodeServiceCapability {
            r#type: Some(Type::Rpc(Rpc { r#type: t.into() })),
        };
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: vec![
                rpc(rpc::Type::StageUnstageVolume),
                rpc(rpc::Type::GetVolumeStats),
                rpc(rpc::Type::ExpandVolume),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 24,
            accessible_topology: Some(Topology {
                segments: [("topology.everest.io/zone".to_string(), "az1".to_string())].into(),
            }),
        }))
    }

    async fn node_stage_volume(
        &self,
        _: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        Err(Status::unimplemented("example plugin: NodeStageVolume"))
    }

    async fn node_unstage_volume(
        &self,
        _: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        Err(Status::unimplemented("example plugin: NodeUnstageVolume"))
    }

    async fn node_publish_volume(
        &self,
        _: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        Err(Status::unimplemented("example plugin: NodePublishVolume"))
    }

    async fn node_unpublish_volume(
        &self,
        _: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        Err(Status::unimplemented("example plugin: NodeUnpublishVolume"))
    }

    async fn node_get_volume_stats(
        &self,
        _: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        Err(Status::unimplemented("example plugin: NodeGetVolumeStats"))
    }

    async fn node_expand_volume(
        &self,
        _: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented("example plugin: NodeExpandVolume"))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args_os().skip(1);
    let socket = PathBuf::from(args.next().ok_or("usage: identity_echo SOCKET [NODE_ID]")?);
    let node_id = match args.next() {
        Some(id) => id.into_string().map_err(|_| "NODE_ID is not UTF-8")?,
        None => "everest-example-node".to_string(),
    };

    // A leftover socket from an earlier run would make bind fail.
    if socket.exists() {
        std::fs::remove_file(&socket)?;
    }
    let listener = UnixListener::bind(&socket)?;
    // Only root (kubelet, the sidecars) should talk to a CSI socket.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    eprintln!(
        "identity_echo: serving CSI {CSI_SPEC_VERSION} on {}",
        socket.display()
    );

    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
    };
    let plugin = std::sync::Arc::new(Plugin { node_id });
    Server::builder()
        .add_service(IdentityServer::from_arc(plugin.clone()))
        .add_service(NodeServer::from_arc(plugin))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    std::fs::remove_file(&socket)?;
    Ok(())
}
