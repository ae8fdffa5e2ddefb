//! The CSI Node service: each RPC validates (`requests`), claims the volume, and hands the
//! domain request to the node side of the volume's backend.

use std::sync::Arc;

use everest_backend::backend::{VolumeUsage, ZONE_TOPOLOGY_KEY};
use everest_backend::daemon::fields::{backend_label, signed_bytes};
use everest_backend::daemon::telemetry::{NO_BACKEND, observe};
use everest_backend::inflight::InFlight;
use everest_backend::paths::AllowedRoot;
use everest_backend::registry::Registry;
use everest_backend::{NodeBackend, VolumeId};
use everest_proto::csi::v1 as csi;
use everest_proto::csi::v1::node_server::Node;
use everest_proto::csi::v1::node_service_capability::{Rpc, Type, rpc};
use tonic::{Request, Response, Status};

use crate::node_info::NodeInfo;
use crate::requests;

const SERVICE: &str = "node";

/// The Node service over a registry of node backends.
#[derive(Debug, Clone)]
pub struct NodeService {
    registry: Arc<Registry<dyn NodeBackend>>,
    root: AllowedRoot,
    info: NodeInfo,
    busy: InFlight<VolumeId>,
}

impl NodeService {
    /// A service for this node, accepting only paths under `root`.
    pub fn new(
        registry: Arc<Registry<dyn NodeBackend>>,
        root: AllowedRoot,
        info: NodeInfo,
    ) -> Self {
        Self {
            registry,
            root,
            info,
            busy: InFlight::default(),
        }
    }

    /// The `backend` label for a request whose volume ID parsed (`None` when it did not).
    fn label(&self, id: Option<&VolumeId>) -> String {
        backend_label(&self.registry, id)
    }
}

/// NodeGetVolumeStats' answer from the backend's usage figures.
pub fn stats_response(usage: VolumeUsage) -> csi::NodeGetVolumeStatsResponse {
    use csi::volume_usage::Unit;
    let entry = |unit: Unit, available: u64, total: u64, used: u64| csi::VolumeUsage {
        available: signed_bytes(available),
        total: signed_bytes(total),
        used: signed_bytes(used),
        unit: unit.into(),
    };
    let (usage, abnormal) = match usage {
        VolumeUsage::Filesystem { stats, abnormal } => (
            vec![
                entry(
                    Unit::Bytes,
                    stats.available_bytes,
                    stats.total_bytes,
                    stats.used_bytes,
                ),
                entry(
                    Unit::Inodes,
                    stats.free_inodes,
                    stats.total_inodes,
                    stats.used_inodes,
                ),
            ],
            abnormal,
        ),
        VolumeUsage::Block {
            total_bytes,
            abnormal,
        } => (vec![entry(Unit::Bytes, 0, total_bytes, 0)], abnormal),
        VolumeUsage::Lost { abnormal } => (Vec::new(), Some(abnormal)),
    };
    csi::NodeGetVolumeStatsResponse {
        usage,
        volume_condition: Some(csi::VolumeCondition {
            abnormal: abnormal.is_some(),
            message: abnormal.unwrap_or_default(),
        }),
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        request: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        let req = request.into_inner();
        let raw_id = req.volume_id.clone();
        let parsed = requests::stage(req, &self.root);
        let label = self.label(parsed.as_ref().ok().map(|(id, _)| id));
        observe(SERVICE, "NodeStageVolume", &raw_id, &label, async {
            let (id, stage) = parsed?;
            let backend = self.registry.for_volume(&id)?;
            backend.check_capability(&stage.capability)?;
            let _claim = self.busy.claim(&id)?;
            backend.stage(&stage).await?;
            Ok(Response::new(csi::NodeStageVolumeResponse {}))
        })
        .await
    }

    async fn node_unstage_volume(
        &self,
        request: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        let req = request.into_inner();
        let parsed = requests::unstage(&req, &self.root);
        let label = self.label(parsed.as_ref().ok().map(|(id, _)| id));
        observe(
            SERVICE,
            "NodeUnstageVolume",
            &req.volume_id,
            &label,
            async {
                let (id, staging) = parsed?;
                let backend = self.registry.for_volume(&id)?;
                let _claim = self.busy.claim(&id)?;
                backend.unstage(id.native(), &staging).await?;
                Ok(Response::new(csi::NodeUnstageVolumeResponse {}))
            },
        )
        .await
    }

    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let raw_id = req.volume_id.clone();
        let parsed = requests::publish(req, &self.root);
        let label = self.label(parsed.as_ref().ok().map(|(id, _)| id));
        observe(SERVICE, "NodePublishVolume", &raw_id, &label, async {
            let (id, publish) = parsed?;
            let backend = self.registry.for_volume(&id)?;
            backend.check_capability(&publish.capability)?;
            let _claim = self.busy.claim(&id)?;
            backend.publish(&publish).await?;
            Ok(Response::new(csi::NodePublishVolumeResponse {}))
        })
        .await
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let parsed = requests::unpublish(&req, &self.root);
        let label = self.label(parsed.as_ref().ok().map(|(id, _)| id));
        observe(
            SERVICE,
            "NodeUnpublishVolume",
            &req.volume_id,
            &label,
            async {
                let (id, target) = parsed?;
                let backend = self.registry.for_volume(&id)?;
                let _claim = self.busy.claim(&id)?;
                backend.unpublish(id.native(), &target).await?;
                Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
            },
        )
        .await
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        let req = request.into_inner();
        let parsed = requests::stats(&req, &self.root);
        let label = self.label(parsed.as_ref().ok().map(|(id, _)| id));
        observe(
            SERVICE,
            "NodeGetVolumeStats",
            &req.volume_id,
            &label,
            async {
                let (id, path) = parsed?;
                let backend = self.registry.for_volume(&id)?;
                // No claim: stats only read, and the kubelet polls them; claiming would turn a
                // concurrent stage or publish into a spurious ABORTED.
                let usage = backend.stats(id.native(), &path).await?;
                Ok(Response::new(stats_response(usage)))
            },
        )
        .await
    }

    async fn node_expand_volume(
        &self,
        request: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        let parsed = requests::expand(&req, &self.root);
        let label = self.label(parsed.as_ref().ok().map(|(id, _)| id));
        observe(SERVICE, "NodeExpandVolume", &req.volume_id, &label, async {
            let (id, expand) = parsed?;
            let backend = self.registry.for_volume(&id)?;
            let _claim = self.busy.claim(&id)?;
            let bytes = backend.expand(&expand).await?;
            Ok(Response::new(csi::NodeExpandVolumeResponse {
                capacity_bytes: signed_bytes(bytes),
            }))
        })
        .await
    }

    async fn node_get_capabilities(
        &self,
        _: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        observe(SERVICE, "NodeGetCapabilities", "", NO_BACKEND, async {
            let rpc = |t: rpc::Type| csi::NodeServiceCapability {
                r#type: Some(Type::Rpc(Rpc { r#type: t.into() })),
            };
            Ok(Response::new(csi::NodeGetCapabilitiesResponse {
                capabilities: vec![
                    rpc(rpc::Type::StageUnstageVolume),
                    rpc(rpc::Type::GetVolumeStats),
                    rpc(rpc::Type::ExpandVolume),
                    rpc(rpc::Type::VolumeCondition),
                    rpc(rpc::Type::SingleNodeMultiWriter),
                ],
            }))
        })
        .await
    }

    async fn node_get_info(
        &self,
        _: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        observe(SERVICE, "NodeGetInfo", "", NO_BACKEND, async {
            Ok(Response::new(csi::NodeGetInfoResponse {
                node_id: self.info.node_id.clone(),
                max_volumes_per_node: i64::from(self.info.max_volumes),
                accessible_topology: Some(csi::Topology {
                    segments: [(ZONE_TOPOLOGY_KEY.to_owned(), self.info.zone.clone())].into(),
                }),
            }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use everest_backend::host::FsStats;

    #[test]
    fn stats_translate_bytes_inodes_and_condition() {
        let fs = stats_response(VolumeUsage::Filesystem {
            stats: FsStats {
                total_bytes: 100,
                available_bytes: 60,
                used_bytes: 40,
                total_inodes: 10,
                free_inodes: 7,
                used_inodes: 3,
                read_only: false,
            },
            abnormal: Some("remounted read-only".into()),
        });
        assert_eq!(fs.usage.len(), 2);
        assert_eq!(
            (fs.usage[0].total, fs.usage[0].available, fs.usage[0].used),
            (100, 60, 40)
        );
        assert_eq!(fs.usage[0].unit, csi::volume_usage::Unit::Bytes as i32);
        assert_eq!(
            (fs.usage[1].total, fs.usage[1].available, fs.usage[1].used),
            (10, 7, 3)
        );
        assert_eq!(fs.usage[1].unit, csi::volume_usage::Unit::Inodes as i32);
        let cond = fs.volume_condition.unwrap();
        assert!(cond.abnormal && cond.message.contains("read-only"));

        let block = stats_response(VolumeUsage::Block {
            total_bytes: 1 << 30,
            abnormal: None,
        });
        assert_eq!(block.usage.len(), 1);
        assert_eq!(block.usage[0].total, 1 << 30);
        assert!(!block.volume_condition.unwrap().abnormal);
    }

    #[tokio::test]
    async fn node_get_info_reports_zone_topology() {
        let svc = NodeService::new(
            Arc::new(Registry::new(None)),
            AllowedRoot::new("/var/lib/kubelet").unwrap(),
            NodeInfo {
                node_id: "server-1".into(),
                zone: "az1".into(),
                max_volumes: 24,
            },
        );
        let info = svc
            .node_get_info(Request::new(csi::NodeGetInfoRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.node_id, "server-1");
        assert_eq!(info.max_volumes_per_node, 24);
        assert_eq!(
            info.accessible_topology.unwrap().segments[ZONE_TOPOLOGY_KEY],
            "az1"
        );
        // A volume of an unconfigured backend is NOT_FOUND, a path outside the root INVALID_ARGUMENT.
        let err = svc
            .node_unpublish_volume(Request::new(csi::NodeUnpublishVolumeRequest {
                volume_id: "v1:evs:d1".into(),
                target_path: "/var/lib/kubelet/pods/p/volumes/v/mount".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        let err = svc
            .node_unpublish_volume(Request::new(csi::NodeUnpublishVolumeRequest {
                volume_id: "v1:evs:d1".into(),
                target_path: "/etc".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("target_path"));
    }
}
