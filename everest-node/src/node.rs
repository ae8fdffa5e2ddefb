//! The CSI Node service: each RPC validates (`requests`), claims the volume, and hands the
//! domain request to the node side of the volume's backend.

use std::sync::Arc;

use everest_backend::backend::{Capabilities, VolumeUsage, ZONE_TOPOLOGY_KEY, unsupported};
use everest_backend::daemon::fields::{backend_label, signed_bytes};
use everest_backend::daemon::telemetry::{NO_BACKEND, observe};
use everest_backend::host::Host;
use everest_backend::inflight::InFlight;
use everest_backend::node::{unmount_all, unmount_and_remove};
use everest_backend::paths::{AllowedRoot, HostPath, PathUse};
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
    /// For tearing down paths of volumes no configured backend owns.
    host: Arc<dyn Host>,
    root: AllowedRoot,
    info: NodeInfo,
    busy: InFlight<VolumeId>,
}

impl NodeService {
    /// A service for this node, accepting only paths under `root`.
    pub fn new(
        registry: Arc<Registry<dyn NodeBackend>>,
        host: Arc<dyn Host>,
        root: AllowedRoot,
        info: NodeInfo,
    ) -> Self {
        Self {
            registry,
            host,
            root,
            info,
            busy: InFlight::default(),
        }
    }

    /// Refuses the request when a symlink leads one of its paths out of the kubelet root (or,
    /// for `usage` set-up, is the path itself).
    async fn confine(
        &self,
        usage: PathUse,
        paths: &[(Option<&HostPath>, &str)],
    ) -> everest_backend::Result<()> {
        for (path, field) in paths {
            if let Some(path) = path {
                self.root
                    .confine(self.host.as_ref(), path, field, usage)
                    .await?;
            }
        }
        Ok(())
    }

    /// The `backend` label for a request whose volume ID parsed (`None` when it did not).
    fn label(&self, id: Option<&VolumeId>) -> String {
        backend_label(&self.registry, id)
    }

    /// The backend owning a volume being torn down, if any: `None` for an ID that is not ours
    /// or whose backend is not configured here, which are torn down by path alone, so the
    /// kubelet can always clean up what it once mounted.
    fn teardown_owner(&self, id: Option<&VolumeId>) -> Option<Arc<dyn NodeBackend>> {
        id.and_then(|id| self.registry.for_volume(id).ok())
    }
}

/// The node RPCs this plugin offers: every kind stages (once per node) and reports usage and
/// health; expansion and ReadWriteOncePod when any configured backend offers them.
fn node_rpcs(registry: &Registry<dyn NodeBackend>) -> Vec<rpc::Type> {
    let caps: Vec<Capabilities> = registry.iter().map(|(_, b)| b.capabilities()).collect();
    let mut rpcs = vec![
        rpc::Type::StageUnstageVolume,
        rpc::Type::GetVolumeStats,
        rpc::Type::VolumeCondition,
    ];
    if caps.iter().any(|c| c.node_expand) {
        rpcs.push(rpc::Type::ExpandVolume);
    }
    if caps.iter().any(Capabilities::single_node_multi_writer) {
        rpcs.push(rpc::Type::SingleNodeMultiWriter);
    }
    rpcs
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
            self.confine(
                PathUse::SetUp,
                &[(Some(&stage.staging), "staging_target_path")],
            )
            .await?;
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
        let label = self.label(parsed.as_ref().ok().and_then(|(id, _)| id.as_ref()));
        observe(
            SERVICE,
            "NodeUnstageVolume",
            &req.volume_id,
            &label,
            async {
                let (id, staging) = parsed?;
                self.confine(
                    PathUse::TearDown,
                    &[(Some(&staging), "staging_target_path")],
                )
                .await?;
                let owner = self.teardown_owner(id.as_ref());
                match (id, owner) {
                    (Some(id), Some(backend)) => {
                        let _claim = self.busy.claim(&id)?;
                        backend.unstage(id.native(), &staging).await?;
                    }
                    _ => unmount_all(self.host.as_ref(), &staging).await?,
                }
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
            self.confine(
                PathUse::SetUp,
                &[
                    (Some(&publish.target), "target_path"),
                    (publish.staging.as_ref(), "staging_target_path"),
                ],
            )
            .await?;
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
        let label = self.label(parsed.as_ref().ok().and_then(|(id, _)| id.as_ref()));
        observe(
            SERVICE,
            "NodeUnpublishVolume",
            &req.volume_id,
            &label,
            async {
                let (id, target) = parsed?;
                self.confine(PathUse::TearDown, &[(Some(&target), "target_path")])
                    .await?;
                let owner = self.teardown_owner(id.as_ref());
                match (id, owner) {
                    (Some(id), Some(backend)) => {
                        let _claim = self.busy.claim(&id)?;
                        backend.unpublish(id.native(), &target).await?;
                    }
                    _ => unmount_and_remove(self.host.as_ref(), &target).await?,
                }
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
                self.confine(PathUse::SetUp, &[(Some(&path), "volume_path")])
                    .await?;
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
            self.confine(
                PathUse::SetUp,
                &[
                    (Some(&expand.volume_path), "volume_path"),
                    (expand.staging.as_ref(), "staging_target_path"),
                ],
            )
            .await?;
            let backend = self.registry.for_volume(&id)?;
            if !backend.capabilities().node_expand {
                return Err(unsupported(id.backend(), "NodeExpandVolume").into());
            }
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
                capabilities: node_rpcs(&self.registry).into_iter().map(rpc).collect(),
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
                // No zone, no topology: such a node can take any volume of kinds without zones.
                accessible_topology: self.info.zone.as_ref().map(|zone| csi::Topology {
                    segments: [(ZONE_TOPOLOGY_KEY.to_owned(), zone.clone())].into(),
                }),
            }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use everest_backend::host::{FakeDevice, FakeHost, FsStats};

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

    fn service(host: Arc<FakeHost>) -> NodeService {
        NodeService::new(
            Arc::new(Registry::new(None)),
            host,
            AllowedRoot::new("/var/lib/kubelet").unwrap(),
            NodeInfo {
                node_id: "server-1".into(),
                zone: Some("az1".into()),
                max_volumes: 24,
            },
        )
    }

    #[tokio::test]
    async fn node_get_info_reports_zone_topology() {
        let svc = service(Arc::new(FakeHost::default()));
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
    }

    #[tokio::test]
    async fn teardown_works_by_path_whatever_the_volume_id() {
        let host = Arc::new(FakeHost::default());
        let svc = service(Arc::clone(&host));
        let target = Path::new("/var/lib/kubelet/pods/p/volumes/v/mount");
        let staging = Path::new("/var/lib/kubelet/plugins/x/globalmount");
        host.add_device(
            Path::new("/dev/disk/by-id/x"),
            Path::new("/dev/loop0"),
            FakeDevice::formatted("ext4", 1 << 30),
        );
        // A foreign ID and an ID of a backend this node does not have: both still unmount.
        for id in ["some-vol-id", "v1:disks:d1"] {
            host.mount(Path::new("/dev/loop0"), staging, "ext4", &[])
                .await
                .unwrap();
            host.bind_mount(staging, target, false).await.unwrap();
            svc.node_unpublish_volume(Request::new(csi::NodeUnpublishVolumeRequest {
                volume_id: id.into(),
                target_path: target.display().to_string(),
            }))
            .await
            .unwrap();
            svc.node_unstage_volume(Request::new(csi::NodeUnstageVolumeRequest {
                volume_id: id.into(),
                staging_target_path: staging.display().to_string(),
            }))
            .await
            .unwrap();
            let mounts = host.mounts().await.unwrap();
            assert!(mounts.is_empty(), "{id}: still mounted: {mounts:?}");
            assert!(!host.exists(target).await.unwrap(), "{id}: target left");
        }
        // Empty IDs and paths outside the kubelet root stay INVALID_ARGUMENT.
        let err = svc
            .node_unpublish_volume(Request::new(csi::NodeUnpublishVolumeRequest {
                volume_id: "v1:disks:d1".into(),
                target_path: "/etc".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("target_path"));
        let err = svc
            .node_unstage_volume(Request::new(csi::NodeUnstageVolumeRequest {
                volume_id: String::new(),
                staging_target_path: staging.display().to_string(),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn capabilities_are_the_union_and_a_lacking_backend_refuses_by_name() {
        let rpcs = |svc: NodeService| async move {
            svc.node_get_capabilities(Request::new(csi::NodeGetCapabilitiesRequest {}))
                .await
                .unwrap()
                .into_inner()
                .capabilities
                .into_iter()
                .filter_map(|c| match c.r#type {
                    Some(Type::Rpc(r)) => Some(r.r#type()),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let base = [
            rpc::Type::StageUnstageVolume,
            rpc::Type::GetVolumeStats,
            rpc::Type::VolumeCondition,
        ];
        let plain = || crate::fake::FakeNodeBackend::default();
        let growing = || crate::fake::FakeNodeBackend {
            capabilities: everest_backend::backend::Capabilities {
                expand: true,
                node_expand: true,
                list: true,
                snapshots: false,
                clone: false,
                modify: false,
                access_modes: &[everest_backend::capability::AccessMode::SingleNodeSingleWriter],
            },
            ..Default::default()
        };
        let svc = |backends: Vec<(&str, crate::fake::FakeNodeBackend)>| {
            let mut r: Registry<dyn NodeBackend> = Registry::new(None);
            for (name, b) in backends {
                r.insert(
                    everest_backend::BackendName::new(name).unwrap(),
                    Arc::new(b),
                );
            }
            NodeService::new(
                Arc::new(r),
                Arc::new(FakeHost::default()),
                AllowedRoot::new("/var/lib/kubelet").unwrap(),
                NodeInfo {
                    node_id: "n".into(),
                    zone: None,
                    max_volumes: 1,
                },
            )
        };
        assert_eq!(rpcs(svc(vec![("plain", plain())])).await, base);
        let mixed = svc(vec![("plain", plain()), ("grows", growing())]);
        let mut want = base.to_vec();
        want.extend([rpc::Type::ExpandVolume, rpc::Type::SingleNodeMultiWriter]);
        assert_eq!(rpcs(mixed.clone()).await, want);
        // No zone, no topology.
        let info = mixed
            .node_get_info(Request::new(csi::NodeGetInfoRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert!(info.accessible_topology.is_none());
        // The union offers NodeExpand, but this volume's backend has nothing to grow.
        let err = mixed
            .node_expand_volume(Request::new(csi::NodeExpandVolumeRequest {
                volume_id: "v1:plain:x".into(),
                volume_path: "/var/lib/kubelet/pods/p/volumes/v/mount".into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("plain"), "{}", err.message());
    }

    #[tokio::test]
    async fn reads_of_foreign_or_unconfigured_volumes_are_not_found() {
        let svc = service(Arc::new(FakeHost::default()));
        for id in ["some-vol-id", "v1:disks:d1"] {
            let err = svc
                .node_get_volume_stats(Request::new(csi::NodeGetVolumeStatsRequest {
                    volume_id: id.into(),
                    volume_path: "/var/lib/kubelet/pods/p/volumes/v/mount".into(),
                    staging_target_path: String::new(),
                }))
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::NotFound, "{id}");
            let err = svc
                .node_expand_volume(Request::new(csi::NodeExpandVolumeRequest {
                    volume_id: id.into(),
                    volume_path: "/var/lib/kubelet/pods/p/volumes/v/mount".into(),
                    ..Default::default()
                }))
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::NotFound, "{id}");
        }
    }
}
