//! The CSI Controller service: each RPC validates (`requests`), claims the volume, routes
//! through the registry to a backend, and translates the answer (`responses`).

use std::sync::Arc;

use everest_backend::backend::{Capabilities, unsupported};
use everest_backend::daemon::fields::{
    backend_label, is_not_found, ordered, signed_bytes, volume_id,
};
use everest_backend::daemon::telemetry::{NO_BACKEND, observe};
use everest_backend::inflight::InFlight;
use everest_backend::marker::ClusterId;
use everest_backend::params::split_common;
use everest_backend::registry::Registry;
use everest_backend::{ControllerBackend, Error, SnapshotId, VolumeId};
use everest_proto::csi::v1 as csi;
use everest_proto::csi::v1::controller_server::Controller;
use everest_proto::csi::v1::controller_service_capability::{Rpc, Type, rpc};
use tonic::{Request, Response, Status};

use crate::listing::{self, ListToken};
use crate::pvc_annotations::{Allowlist, ClaimReader};
use crate::requests;
use crate::responses;
use crate::snapshots;

const SERVICE: &str = "controller";

/// The Controller service over a registry of controller backends.
#[derive(Debug, Clone)]
pub struct ControllerService {
    registry: Arc<Registry<dyn ControllerBackend>>,
    /// CreateVolume calls by request name.
    creating: InFlight<String>,
    /// Every other mutating call by volume ID.
    busy: InFlight<VolumeId>,
    /// CreateSnapshot calls by request name.
    snapshot_names: InFlight<String>,
    /// DeleteSnapshot calls by snapshot ID.
    busy_snapshots: InFlight<SnapshotId>,
    /// Reads the PVC of a CreateVolume whose StorageClass allows PVC annotations.
    claims: ClaimReader,
    /// The cluster named in the marker of every volume created.
    cluster: ClusterId,
}

impl ControllerService {
    /// A service routing to the backends in `registry`.
    pub fn new(registry: Arc<Registry<dyn ControllerBackend>>) -> Self {
        Self {
            registry,
            creating: InFlight::default(),
            busy: InFlight::default(),
            snapshot_names: InFlight::default(),
            busy_snapshots: InFlight::default(),
            claims: ClaimReader::none("the controller was built without a Kubernetes API"),
            cluster: ClusterId::default(),
        }
    }

    /// The same service, marking what it creates as `cluster`'s.
    pub fn with_cluster(self, cluster: ClusterId) -> Self {
        Self { cluster, ..self }
    }

    /// The same service, reading PVCs through `claims`.
    pub fn with_claims(self, claims: ClaimReader) -> Self {
        Self { claims, ..self }
    }

    /// The backends this service routes to.
    pub(crate) fn registry(&self) -> &Registry<dyn ControllerBackend> {
        &self.registry
    }

    /// Whether a configured backend takes snapshots; if none does, the snapshot RPCs are not
    /// advertised and answer UNIMPLEMENTED, as CSI asks of RPCs a plugin does not offer.
    fn snapshots_offered(&self) -> bool {
        self.registry
            .iter()
            .any(|(_, b)| b.capabilities().snapshots)
    }

    /// CreateSnapshot calls in flight, by request name.
    pub(crate) fn snapshot_names(&self) -> &InFlight<String> {
        &self.snapshot_names
    }

    /// DeleteSnapshot calls in flight, by snapshot ID.
    pub(crate) fn busy_snapshots(&self) -> &InFlight<SnapshotId> {
        &self.busy_snapshots
    }

    /// The `backend` label for a request whose volume ID parsed (`None` when it did not).
    fn label(&self, id: Option<&VolumeId>) -> String {
        backend_label(&self.registry, id)
    }

    /// The backend owning a volume that must be deleted or detached. A well-formed ID of a
    /// backend instance that is not configured is FAILED_PRECONDITION, never OK and never
    /// NOT_FOUND: the volume may well still exist, and a caller reading "gone" could forget a
    /// disk that is still there or still attached. The sidecars keep retrying, and the message
    /// tells the operator what is missing.
    fn owner(&self, id: &VolumeId) -> Result<Arc<dyn ControllerBackend>, Error> {
        self.registry.for_volume(id).map_err(|e| match e {
            Error::NotFound(m) => Error::FailedPrecondition(format!(
                "{m}; add backend instance {} to the controller configuration so this volume can be removed",
                id.backend()
            )),
            other => other,
        })
    }
}

/// The controller RPCs this plugin offers: what every kind does, and what any configured backend
/// does (a request for a backend that lacks it is refused, naming the backend).
fn controller_rpcs(registry: &Registry<dyn ControllerBackend>) -> Vec<rpc::Type> {
    let caps: Vec<Capabilities> = registry.iter().map(|(_, b)| b.capabilities()).collect();
    let any = |f: fn(&Capabilities) -> bool| caps.iter().any(f);
    let mut rpcs = vec![
        rpc::Type::CreateDeleteVolume,
        // Every kind answers ControllerPublish: one CSIDriver object decides attach for all.
        rpc::Type::PublishUnpublishVolume,
    ];
    if any(|c| c.list) {
        rpcs.extend([
            rpc::Type::ListVolumes,
            rpc::Type::ListVolumesPublishedNodes,
            rpc::Type::GetVolume,
            rpc::Type::VolumeCondition,
        ]);
    }
    if any(|c| c.expand) {
        rpcs.push(rpc::Type::ExpandVolume);
    }
    if any(Capabilities::single_node_multi_writer) {
        rpcs.push(rpc::Type::SingleNodeMultiWriter);
    }
    if snapshots::offered(&caps) {
        rpcs.extend([rpc::Type::CreateDeleteSnapshot, rpc::Type::ListSnapshots]);
    }
    if any(|c| c.clone) {
        rpcs.push(rpc::Type::CloneVolume);
    }
    if any(|c| c.modify) {
        rpcs.push(rpc::Type::ModifyVolume);
    }
    rpcs
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not supported by Everest"))
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let req = request.into_inner();
        let name = req.name.clone();
        // Parsed and routed once, before the span opens, so the backend label comes for free.
        let routed = requests::create_volume(req).and_then(|mut new| {
            let (backend_name, backend) = self.registry.for_params(&new.create.common)?;
            if let Some(key) = new.mutable_keys.first()
                && !backend.capabilities().modify
            {
                return Err(Error::InvalidArgument(format!(
                    "mutable_parameters ({key}) are not supported: backend {backend_name} does not change volumes in place"
                )));
            }
            let allowed = Allowlist::take(&mut new.create.parameters, &new.mutable_keys)?;
            Ok((new, allowed, backend_name, backend))
        });
        let label = routed.as_ref().map_or_else(
            |_| NO_BACKEND.to_owned(),
            |(_, _, name, _)| name.to_string(),
        );
        observe(SERVICE, "CreateVolume", &name, &label, async {
            let (new, allowed, backend_name, mut backend) = routed?;
            let requests::NewVolume {
                mut create,
                source,
                mutable_keys,
            } = new;
            backend.check_capabilities(&create.capabilities)?;
            if let Some(source) = &source {
                if source.backend != backend_name {
                    return Err(Error::InvalidArgument(format!(
                        "the content source lives on backend {}, but the StorageClass provisions from {backend_name}; a volume is made from a snapshot or volume of its own backend",
                        source.backend
                    ))
                    .into());
                }
                backend = snapshots::can_restore(&backend_name, backend, &create)?;
            }
            let _claim = self.creating.claim(&create.name)?;
            create.cluster = self.cluster.clone();
            let applied = self
                .claims
                .apply(allowed.as_ref(), &mut create, &mutable_keys)
                .await?;
            let volume = backend.create_volume(&create).await.map_err(|e| match &applied {
                Some(applied) => applied.explain(e),
                None => e,
            })?;
            let mut volume = responses::volume(&backend_name, volume)?;
            volume.content_source = source.map(|s| s.echo);
            Ok(Response::new(csi::CreateVolumeResponse {
                volume: Some(volume),
            }))
        })
        .await
    }

    async fn delete_volume(
        &self,
        request: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = volume_id(&req.volume_id);
        let label = self.label(id.as_ref().ok());
        observe(SERVICE, "DeleteVolume", &req.volume_id, &label, async {
            let id = match id {
                // Not an Everest volume ID: no such volume, and deleting nothing succeeds.
                Err(e) if is_not_found(&e) => {
                    return Ok(Response::new(csi::DeleteVolumeResponse {}));
                }
                other => other?,
            };
            let backend = self.owner(&id)?;
            let _claim = self.busy.claim(&id)?;
            let secrets = everest_backend::secrets::Secrets::new(ordered(req.secrets.clone()));
            backend.delete_volume(id.native(), &secrets).await?;
            Ok(Response::new(csi::DeleteVolumeResponse {}))
        })
        .await
    }

    async fn controller_publish_volume(
        &self,
        request: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let raw_id = req.volume_id.clone();
        let parsed = requests::publish(req);
        let label = self.label(parsed.as_ref().ok().map(|(id, _)| id));
        observe(SERVICE, "ControllerPublishVolume", &raw_id, &label, async {
            let (id, publish) = parsed?;
            let backend = self.registry.for_volume(&id)?;
            backend.check_capabilities(std::slice::from_ref(&publish.capability))?;
            let _claim = self.busy.claim(&id)?;
            let publish_context = backend.publish(&publish).await?;
            Ok(Response::new(csi::ControllerPublishVolumeResponse {
                publish_context: publish_context.into_iter().collect(),
            }))
        })
        .await
    }

    async fn controller_unpublish_volume(
        &self,
        request: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let parsed = requests::unpublish(&req);
        let label = self.label(parsed.as_ref().ok().map(|(id, _)| id));
        observe(
            SERVICE,
            "ControllerUnpublishVolume",
            &req.volume_id,
            &label,
            async {
                let (id, node) = match parsed {
                    // Not an Everest volume ID: nothing of ours can be attached anywhere.
                    Err(e) if is_not_found(&e) => {
                        return Ok(Response::new(csi::ControllerUnpublishVolumeResponse {}));
                    }
                    other => other?,
                };
                let backend = self.owner(&id)?;
                let _claim = self.busy.claim(&id)?;
                backend.unpublish(id.native(), node.as_deref()).await?;
                Ok(Response::new(csi::ControllerUnpublishVolumeResponse {}))
            },
        )
        .await
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let req = request.into_inner();
        let raw_id = req.volume_id.clone();
        let parsed = requests::validate_capabilities(&req);
        let label = self.label(parsed.as_ref().ok().map(|(id, _)| id));
        observe(
            SERVICE,
            "ValidateVolumeCapabilities",
            &raw_id,
            &label,
            async {
                let (id, caps) = parsed?;
                let backend = self.registry.for_volume(&id)?;
                backend.get_volume(id.native()).await?;
                // Parameters can only be checked for the keys every backend shares; a StorageClass
                // naming another backend cannot describe this volume.
                let params =
                    split_common(&ordered(req.parameters.clone())).and_then(|(common, _)| {
                        match common.backend {
                            Some(b) if &b != id.backend() => Err(Error::InvalidArgument(format!(
                                "parameters name backend {b}, but volume {id} lives on {}",
                                id.backend()
                            ))),
                            _ => Ok(()),
                        }
                    });
                let verdict = params.and_then(|()| backend.check_capabilities(&caps));
                let response = match verdict {
                    Ok(()) => csi::ValidateVolumeCapabilitiesResponse {
                        confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                            volume_context: req.volume_context,
                            volume_capabilities: req.volume_capabilities,
                            parameters: req.parameters,
                            mutable_parameters: Default::default(),
                        }),
                        message: String::new(),
                    },
                    // Unsupported is an answer (confirmed unset), not an error.
                    Err(Error::InvalidArgument(message)) => {
                        csi::ValidateVolumeCapabilitiesResponse {
                            confirmed: None,
                            message,
                        }
                    }
                    Err(other) => return Err(other.into()),
                };
                Ok(Response::new(response))
            },
        )
        .await
    }

    async fn list_volumes(
        &self,
        request: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        let req = request.into_inner();
        observe(SERVICE, "ListVolumes", "", NO_BACKEND, async {
            let max = requests::max_entries(req.max_entries)?;
            let start = (!req.starting_token.is_empty())
                .then(|| ListToken::parse(&req.starting_token))
                .transpose()?;
            let (volumes, next) = listing::list(&self.registry, start, max).await?;
            let entries = volumes
                .into_iter()
                .map(|(name, v)| responses::list_entry(&name, v))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Response::new(csi::ListVolumesResponse {
                entries,
                next_token: next.unwrap_or_default(),
            }))
        })
        .await
    }

    async fn get_capacity(
        &self,
        _: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        observe(SERVICE, "GetCapacity", "", NO_BACKEND, async {
            Err(unimplemented("GetCapacity"))
        })
        .await
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        observe(
            SERVICE,
            "ControllerGetCapabilities",
            "",
            NO_BACKEND,
            async {
                let rpc = |t: rpc::Type| csi::ControllerServiceCapability {
                    r#type: Some(Type::Rpc(Rpc { r#type: t.into() })),
                };
                Ok(Response::new(csi::ControllerGetCapabilitiesResponse {
                    capabilities: controller_rpcs(&self.registry)
                        .into_iter()
                        .map(rpc)
                        .collect(),
                }))
            },
        )
        .await
    }

    async fn create_snapshot(
        &self,
        request: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        let req = request.into_inner();
        let source = req.source_volume_id.clone();
        let label = self.label(source.parse::<VolumeId>().ok().as_ref());
        observe(SERVICE, "CreateSnapshot", &source, &label, async {
            if !self.snapshots_offered() {
                return Err(unimplemented("CreateSnapshot"));
            }
            Ok(Response::new(self.take_snapshot(req).await?))
        })
        .await
    }

    async fn delete_snapshot(
        &self,
        request: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        let req = request.into_inner();
        let id = req.snapshot_id.clone();
        let label = id
            .parse::<SnapshotId>()
            .ok()
            .filter(|s| self.registry.get(s.backend()).is_some())
            .map_or_else(|| NO_BACKEND.to_owned(), |s| s.backend().to_string());
        observe(SERVICE, "DeleteSnapshot", &id, &label, async {
            if !self.snapshots_offered() {
                return Err(unimplemented("DeleteSnapshot"));
            }
            Ok(Response::new(self.remove_snapshot(req).await?))
        })
        .await
    }

    async fn list_snapshots(
        &self,
        request: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        let req = request.into_inner();
        observe(SERVICE, "ListSnapshots", "", NO_BACKEND, async {
            if !self.snapshots_offered() {
                return Err(unimplemented("ListSnapshots"));
            }
            Ok(Response::new(self.list_snapshots_page(req).await?))
        })
        .await
    }

    async fn get_snapshot(
        &self,
        _: Request<csi::GetSnapshotRequest>,
    ) -> Result<Response<csi::GetSnapshotResponse>, Status> {
        observe(SERVICE, "GetSnapshot", "", NO_BACKEND, async {
            Err(unimplemented("GetSnapshot"))
        })
        .await
    }

    async fn controller_expand_volume(
        &self,
        request: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        let parsed = requests::expand(&req);
        let label = self.label(parsed.as_ref().ok().map(|(id, _)| id));
        observe(
            SERVICE,
            "ControllerExpandVolume",
            &req.volume_id,
            &label,
            async {
                let (id, capacity) = parsed?;
                let backend = self.registry.for_volume(&id)?;
                if !backend.capabilities().expand {
                    return Err(unsupported(id.backend(), "volume expansion").into());
                }
                let _claim = self.busy.claim(&id)?;
                let expanded = backend.expand(id.native(), capacity).await?;
                Ok(Response::new(csi::ControllerExpandVolumeResponse {
                    capacity_bytes: signed_bytes(expanded.capacity_bytes),
                    node_expansion_required: expanded.node_expansion_required,
                }))
            },
        )
        .await
    }

    async fn controller_get_volume(
        &self,
        request: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = volume_id(&req.volume_id);
        let label = self.label(id.as_ref().ok());
        observe(
            SERVICE,
            "ControllerGetVolume",
            &req.volume_id,
            &label,
            async {
                let id = id?;
                let backend = self.registry.for_volume(&id)?;
                if !backend.capabilities().list {
                    return Err(unsupported(id.backend(), "ControllerGetVolume").into());
                }
                let listed = backend.get_volume(id.native()).await?;
                Ok(Response::new(responses::get_volume(id.backend(), listed)?))
            },
        )
        .await
    }

    async fn controller_modify_volume(
        &self,
        request: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        let req = request.into_inner();
        let raw_id = req.volume_id.clone();
        let parsed = requests::modify(req);
        let label = self.label(parsed.as_ref().ok().map(|(id, _)| id));
        observe(SERVICE, "ControllerModifyVolume", &raw_id, &label, async {
            if !self.registry.iter().any(|(_, b)| b.capabilities().modify) {
                return Err(unimplemented("ControllerModifyVolume"));
            }
            let (id, parameters) = parsed?;
            let backend = self.registry.for_volume(&id)?;
            if !backend.capabilities().modify {
                return Err(unsupported(
                    id.backend(),
                    "changing volumes in place (ControllerModifyVolume)",
                )
                .into());
            }
            let _claim = self.busy.claim(&id)?;
            backend.modify_volume(id.native(), &parameters).await?;
            Ok(Response::new(csi::ControllerModifyVolumeResponse {}))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeBackend;
    use everest_backend::BackendName;
    use everest_proto::csi::v1::volume_capability::{
        AccessMode, AccessType, MountVolume, access_mode::Mode,
    };
    use tonic::Code;

    fn service() -> ControllerService {
        let name = |s: &str| BackendName::new(s).unwrap();
        let mut r: Registry<dyn ControllerBackend> = Registry::new(Some(name("alpha")));
        r.insert(
            name("alpha"),
            Arc::new(FakeBackend::with(&["a1", "a2", "a3"])),
        );
        r.insert(name("beta"), Arc::new(FakeBackend::with(&["b1", "b2"])));
        ControllerService::new(Arc::new(r))
    }

    fn cap(mode: Mode) -> csi::VolumeCapability {
        csi::VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    async fn list_all(svc: &ControllerService, page: i32) -> (Vec<String>, usize) {
        let (mut ids, mut calls, mut token) = (Vec::new(), 0, String::new());
        loop {
            let resp = svc
                .list_volumes(Request::new(csi::ListVolumesRequest {
                    max_entries: page,
                    starting_token: token.clone(),
                }))
                .await
                .unwrap()
                .into_inner();
            calls += 1;
            assert!(page == 0 || resp.entries.len() <= page as usize);
            ids.extend(
                resp.entries
                    .into_iter()
                    .map(|e| e.volume.unwrap().volume_id),
            );
            if resp.next_token.is_empty() {
                return (ids, calls);
            }
            token = resp.next_token;
        }
    }

    async fn rpcs(svc: &ControllerService) -> Vec<rpc::Type> {
        svc.controller_get_capabilities(Request::new(csi::ControllerGetCapabilitiesRequest {}))
            .await
            .unwrap()
            .into_inner()
            .capabilities
            .into_iter()
            .filter_map(|c| match c.r#type {
                Some(Type::Rpc(r)) => Some(r.r#type()),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn capabilities_are_the_union_and_a_lacking_backend_refuses_by_name() {
        let name = |s: &str| BackendName::new(s).unwrap();
        let mut only_limited: Registry<dyn ControllerBackend> = Registry::new(None);
        only_limited.insert(name("plain"), Arc::new(FakeBackend::limited(&["p1"])));
        let limited = ControllerService::new(Arc::new(only_limited));
        assert_eq!(
            rpcs(&limited).await,
            [
                rpc::Type::CreateDeleteVolume,
                rpc::Type::PublishUnpublishVolume
            ]
        );

        let mut mixed: Registry<dyn ControllerBackend> = Registry::new(None);
        mixed.insert(name("plain"), Arc::new(FakeBackend::limited(&["p1"])));
        mixed.insert(name("full"), Arc::new(FakeBackend::with(&["f1"])));
        let svc = ControllerService::new(Arc::new(mixed));
        let all = rpcs(&svc).await;
        for want in [
            rpc::Type::ExpandVolume,
            rpc::Type::ListVolumes,
            rpc::Type::GetVolume,
            rpc::Type::SingleNodeMultiWriter,
        ] {
            assert!(all.contains(&want), "{want:?} missing from {all:?}");
        }
        // The union says "expand", but this volume's backend cannot: refused, naming it.
        let err = svc
            .controller_expand_volume(Request::new(csi::ControllerExpandVolumeRequest {
                volume_id: "v1:plain:p1".into(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: 2 << 30,
                    limit_bytes: 0,
                }),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("plain"), "{}", err.message());
        let err = svc
            .controller_get_volume(Request::new(csi::ControllerGetVolumeRequest {
                volume_id: "v1:plain:p1".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        // ListVolumes reports only the backends that list.
        let (ids, _) = list_all(&svc, 0).await;
        assert_eq!(ids, ["v1:full:f1"]);
    }

    #[tokio::test]
    async fn modify_routes_and_refuses_what_a_backend_cannot_change() {
        let name = |s: &str| BackendName::new(s).unwrap();
        let mut r: Registry<dyn ControllerBackend> = Registry::new(Some(name("alpha")));
        r.insert(name("alpha"), Arc::new(FakeBackend::with(&["a1"])));
        r.insert(name("plain"), Arc::new(FakeBackend::limited(&["p1"])));
        let svc = ControllerService::new(Arc::new(r));
        assert!(rpcs(&svc).await.contains(&rpc::Type::ModifyVolume));
        let modify = |id: &str, params: &[(&str, &str)]| {
            let svc = svc.clone();
            let req = csi::ControllerModifyVolumeRequest {
                volume_id: id.into(),
                mutable_parameters: params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            };
            async move { svc.controller_modify_volume(Request::new(req)).await }
        };
        let iops = [("iops", "3000")];
        modify("v1:alpha:a1", &iops).await.unwrap();
        for (id, params, code, names) in [
            ("v1:alpha:zz", &iops[..], Code::NotFound, "zz"),
            ("not-ours", &iops[..], Code::NotFound, "not-ours"),
            ("v1:plain:p1", &iops[..], Code::InvalidArgument, "plain"),
            (
                "v1:alpha:a1",
                &[][..],
                Code::InvalidArgument,
                "mutable_parameters",
            ),
            ("", &iops[..], Code::InvalidArgument, "volume_id"),
        ] {
            let err = modify(id, params).await.unwrap_err();
            assert_eq!(err.code(), code, "{id}: {err:?}");
            assert!(err.message().contains(names), "{err:?}");
        }
        // Mutable parameters at creation only where the backend modifies.
        let create = |backend: &str| csi::CreateVolumeRequest {
            name: "pvc-vac".into(),
            volume_capabilities: vec![cap(Mode::SingleNodeWriter)],
            parameters: [("everest.io/backend".to_string(), backend.to_string())].into(),
            mutable_parameters: [("iops".to_string(), "3000".to_string())].into(),
            ..Default::default()
        };
        svc.create_volume(Request::new(create("alpha")))
            .await
            .unwrap();
        let err = svc
            .create_volume(Request::new(create("plain")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("plain"), "{err:?}");
        // No backend modifies: UNIMPLEMENTED, naming the RPC.
        let mut only_plain: Registry<dyn ControllerBackend> = Registry::new(None);
        only_plain.insert(name("plain"), Arc::new(FakeBackend::limited(&["p1"])));
        let plain = ControllerService::new(Arc::new(only_plain));
        assert!(!rpcs(&plain).await.contains(&rpc::Type::ModifyVolume));
        let err = plain
            .controller_modify_volume(Request::new(csi::ControllerModifyVolumeRequest {
                volume_id: "v1:plain:p1".into(),
                mutable_parameters: [("iops".to_string(), "1".to_string())].into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);
        assert!(err.message().contains("ControllerModifyVolume"));
    }

    #[tokio::test]
    async fn list_volumes_pages_across_backends() {
        let svc = service();
        let expected = [
            "v1:alpha:a1",
            "v1:alpha:a2",
            "v1:alpha:a3",
            "v1:beta:b1",
            "v1:beta:b2",
        ];
        for page in [0, 1, 2, 3, 5, 10] {
            let (ids, _) = list_all(&svc, page).await;
            assert_eq!(ids, expected, "page size {page}");
        }
        for bad in ["garbage", "gamma/0", "alpha/x"] {
            let err = svc
                .list_volumes(Request::new(csi::ListVolumesRequest {
                    max_entries: 1,
                    starting_token: bad.into(),
                }))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::Aborted, "{bad}");
        }
    }

    #[tokio::test]
    async fn create_routes_by_parameter_and_rejects_unknown_backends_and_modes() {
        let svc = service();
        let req = |params: &[(&str, &str)], mode: Mode| csi::CreateVolumeRequest {
            name: "pvc-1".into(),
            volume_capabilities: vec![cap(mode)],
            parameters: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let made = svc
            .create_volume(Request::new(req(
                &[("everest.io/backend", "beta")],
                Mode::SingleNodeWriter,
            )))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(made.volume.unwrap().volume_id, "v1:beta:pvc-1");
        let err = svc
            .create_volume(Request::new(req(
                &[("everest.io/backend", "nope")],
                Mode::SingleNodeWriter,
            )))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("nope"));
        let err = svc
            .create_volume(Request::new(req(&[], Mode::MultiNodeMultiWriter)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn delete_and_unpublish_never_succeed_for_an_unconfigured_backend() {
        let svc = service();
        let err = svc
            .delete_volume(Request::new(csi::DeleteVolumeRequest {
                volume_id: "v1:gamma:x".into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().contains("gamma"), "{}", err.message());
        let err = svc
            .controller_unpublish_volume(Request::new(csi::ControllerUnpublishVolumeRequest {
                volume_id: "v1:gamma:x".into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().contains("gamma"), "{}", err.message());
        // A configured backend's missing volume is deleted successfully (idempotency).
        svc.delete_volume(Request::new(csi::DeleteVolumeRequest {
            volume_id: "v1:alpha:gone".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn foreign_ids_name_no_volume_and_bad_ones_are_invalid() {
        let svc = service();
        let too_long = format!("v1:alpha:{}", "x".repeat(200));
        // Not ours: DeleteVolume and ControllerUnpublishVolume have nothing to remove.
        for foreign in ["some-vol-id", "v2:alpha:a1", "v1:Alpha:a1"] {
            svc.delete_volume(Request::new(csi::DeleteVolumeRequest {
                volume_id: foreign.into(),
                ..Default::default()
            }))
            .await
            .unwrap();
            svc.controller_unpublish_volume(Request::new(csi::ControllerUnpublishVolumeRequest {
                volume_id: foreign.into(),
                node_id: "server-1".into(),
                ..Default::default()
            }))
            .await
            .unwrap();
        }
        let calls = |id: String| {
            let svc = svc.clone();
            async move {
                let publish = svc
                    .controller_publish_volume(Request::new(csi::ControllerPublishVolumeRequest {
                        volume_id: id.clone(),
                        node_id: "server-1".into(),
                        volume_capability: Some(cap(Mode::SingleNodeWriter)),
                        ..Default::default()
                    }))
                    .await
                    .unwrap_err()
                    .code();
                let validate = svc
                    .validate_volume_capabilities(Request::new(
                        csi::ValidateVolumeCapabilitiesRequest {
                            volume_id: id.clone(),
                            volume_capabilities: vec![cap(Mode::SingleNodeWriter)],
                            ..Default::default()
                        },
                    ))
                    .await
                    .unwrap_err()
                    .code();
                let expand = svc
                    .controller_expand_volume(Request::new(csi::ControllerExpandVolumeRequest {
                        volume_id: id.clone(),
                        capacity_range: Some(csi::CapacityRange {
                            required_bytes: 1 << 30,
                            limit_bytes: 0,
                        }),
                        ..Default::default()
                    }))
                    .await
                    .unwrap_err()
                    .code();
                let get = svc
                    .controller_get_volume(Request::new(csi::ControllerGetVolumeRequest {
                        volume_id: id,
                    }))
                    .await
                    .unwrap_err()
                    .code();
                [publish, validate, expand, get]
            }
        };
        // Foreign, unconfigured instance, or gone from its backend: NOT_FOUND from every read.
        for missing in ["some-vol-id", "v1:gamma:x", "v1:alpha:zz"] {
            assert_eq!(
                calls(missing.into()).await,
                [Code::NotFound; 4],
                "{missing}"
            );
        }
        // Empty or over-long fields stay INVALID_ARGUMENT, also where removing would succeed.
        for bad in [String::new(), too_long] {
            assert_eq!(calls(bad.clone()).await, [Code::InvalidArgument; 4]);
            let err = svc
                .delete_volume(Request::new(csi::DeleteVolumeRequest {
                    volume_id: bad,
                    ..Default::default()
                }))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
        }
        // Other required fields are checked before the ID is looked up.
        let err = svc
            .controller_publish_volume(Request::new(csi::ControllerPublishVolumeRequest {
                volume_id: "some-vol-id".into(),
                volume_capability: Some(cap(Mode::SingleNodeWriter)),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("node_id"));
    }

    #[tokio::test]
    async fn validate_capabilities_confirms_or_explains() {
        let svc = service();
        let req = |id: &str, mode: Mode| csi::ValidateVolumeCapabilitiesRequest {
            volume_id: id.into(),
            volume_capabilities: vec![cap(mode)],
            ..Default::default()
        };
        let ok = svc
            .validate_volume_capabilities(Request::new(req("v1:alpha:a1", Mode::SingleNodeWriter)))
            .await
            .unwrap()
            .into_inner();
        assert!(ok.confirmed.is_some());
        let no = svc
            .validate_volume_capabilities(Request::new(req(
                "v1:alpha:a1",
                Mode::MultiNodeMultiWriter,
            )))
            .await
            .unwrap()
            .into_inner();
        assert!(no.confirmed.is_none() && no.message.contains("access mode"));
        let missing = svc
            .validate_volume_capabilities(Request::new(req("v1:alpha:zz", Mode::SingleNodeWriter)))
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);
    }

    #[tokio::test]
    async fn publish_expand_and_get_volume() {
        let svc = service();
        let published = svc
            .controller_publish_volume(Request::new(csi::ControllerPublishVolumeRequest {
                volume_id: "v1:alpha:a1".into(),
                node_id: "server-1".into(),
                volume_capability: Some(cap(Mode::SingleNodeWriter)),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(published.publish_context["node"], "server-1");
        let expanded = svc
            .controller_expand_volume(Request::new(csi::ControllerExpandVolumeRequest {
                volume_id: "v1:alpha:a1".into(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: 2 << 30,
                    limit_bytes: 0,
                }),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(expanded.capacity_bytes, 2 << 30);
        assert!(expanded.node_expansion_required);
        let got = svc
            .controller_get_volume(Request::new(csi::ControllerGetVolumeRequest {
                volume_id: "v1:beta:b1".into(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.volume.unwrap().volume_id, "v1:beta:b1");
        assert!(!got.status.unwrap().volume_condition.unwrap().abnormal);
        let err = svc
            .get_capacity(Request::new(csi::GetCapacityRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);
    }
}
