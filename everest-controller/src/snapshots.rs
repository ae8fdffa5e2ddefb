//! CreateSnapshot, DeleteSnapshot and ListSnapshots: validate (`requests`), route by the source
//! volume's or the snapshot's backend instance, refuse a backend without snapshots by name, and
//! translate (`responses`). The answers follow the CSI spec's error tables: an unknown source
//! is NOT_FOUND, a same-name snapshot of another source ALREADY_EXISTS (from the backend), a
//! snapshot that does not exist is deleted successfully and lists as nothing.

use std::sync::Arc;

use everest_backend::backend::{Capabilities, CreateVolume, unsupported};
use everest_backend::daemon::fields::{is_not_found, ordered, volume_id};
use everest_backend::secrets::Secrets;
use everest_backend::snapshot::{Snapshot, VolumeSource};
use everest_backend::{BackendName, ControllerBackend, Error, SnapshotId, VolumeId};
use everest_proto::csi::v1 as csi;

use crate::controller::ControllerService;
use crate::listing::{self, ListToken};
use crate::{requests, responses};

/// What a backend without snapshots lacks, for the refusal that names it.
const WHAT: &str =
    "snapshots (CreateSnapshot, DeleteSnapshot, ListSnapshots, volumes from snapshots)";

/// The backend `name` if it takes snapshots; INVALID_ARGUMENT naming it otherwise.
pub fn snapshotting(
    name: &BackendName,
    backend: Arc<dyn ControllerBackend>,
) -> Result<Arc<dyn ControllerBackend>, Error> {
    if backend.capabilities().snapshots {
        Ok(backend)
    } else {
        Err(unsupported(name, WHAT))
    }
}

/// The backend `name` if it can make `create`'s content: restore a snapshot, or clone a
/// volume; INVALID_ARGUMENT naming it otherwise.
pub fn can_restore(
    name: &BackendName,
    backend: Arc<dyn ControllerBackend>,
    create: &CreateVolume,
) -> Result<Arc<dyn ControllerBackend>, Error> {
    match create.source {
        Some(VolumeSource::Volume(_)) if !backend.capabilities().clone => {
            Err(unsupported(name, "cloning volumes"))
        }
        Some(VolumeSource::Volume(_)) | None => Ok(backend),
        Some(VolumeSource::Snapshot(_)) => snapshotting(name, backend),
    }
}

/// Whether any configured backend takes snapshots (what decides the advertised capabilities).
pub fn offered(caps: &[Capabilities]) -> bool {
    caps.iter().any(|c| c.snapshots)
}

fn entry(backend: &BackendName, s: Snapshot) -> Result<csi::list_snapshots_response::Entry, Error> {
    Ok(csi::list_snapshots_response::Entry {
        snapshot: Some(responses::snapshot(backend, s)?),
    })
}

impl ControllerService {
    /// CreateSnapshot: routed by the source volume's backend instance.
    pub(crate) async fn take_snapshot(
        &self,
        req: csi::CreateSnapshotRequest,
    ) -> Result<csi::CreateSnapshotResponse, Error> {
        let (source, class_backend, create) = requests::create_snapshot(req)?;
        let backend = self.registry().for_volume(&source)?;
        if let Some(named) = class_backend
            && &named != source.backend()
        {
            return Err(Error::InvalidArgument(format!(
                "the VolumeSnapshotClass names backend {named}, but volume {source} lives on {}; a snapshot stays on its volume's backend",
                source.backend()
            )));
        }
        let backend = snapshotting(source.backend(), backend)?;
        let _claim = self.snapshot_names().claim(&create.name)?;
        let snapshot = backend
            .create_snapshot(&create)
            .await
            .map_err(|e| e.context(format!("snapshot {} of volume {source}", create.name)))?;
        Ok(csi::CreateSnapshotResponse {
            snapshot: Some(responses::snapshot(source.backend(), snapshot)?),
        })
    }

    /// DeleteSnapshot: a snapshot ID that is not ours names nothing (OK); one of a backend
    /// instance that is not configured may still exist (FAILED_PRECONDITION naming it).
    pub(crate) async fn remove_snapshot(
        &self,
        req: csi::DeleteSnapshotRequest,
    ) -> Result<csi::DeleteSnapshotResponse, Error> {
        if req.snapshot_id.is_empty() {
            return Err(Error::InvalidArgument("snapshot_id is required".into()));
        }
        let id = match requests::snapshot_id(&req.snapshot_id) {
            Err(e) if is_not_found(&e) => return Ok(csi::DeleteSnapshotResponse {}),
            other => other?,
        };
        let backend = self.registry().get(id.backend()).ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "snapshot {id} belongs to backend {}, which is not configured on this controller; add it so the snapshot can be removed",
                id.backend()
            ))
        })?;
        let backend = snapshotting(id.backend(), backend)?;
        let _claim = self.busy_snapshots().claim(&id)?;
        let secrets = Secrets::new(ordered(req.secrets));
        backend.delete_snapshot(id.native(), &secrets).await?;
        Ok(csi::DeleteSnapshotResponse {})
    }

    /// ListSnapshots: one snapshot by ID, the snapshots of one volume, or all, paged across
    /// backend instances with `<backend>/<its token>` tokens (as ListVolumes). A filter naming
    /// something that cannot exist lists nothing.
    pub(crate) async fn list_snapshots_page(
        &self,
        req: csi::ListSnapshotsRequest,
    ) -> Result<csi::ListSnapshotsResponse, Error> {
        let max = requests::max_entries(req.max_entries)?;
        let nothing = csi::ListSnapshotsResponse::default();
        let start = (!req.starting_token.is_empty())
            .then(|| ListToken::parse(&req.starting_token))
            .transpose()?;
        if !req.snapshot_id.is_empty() {
            let Ok(id) = req.snapshot_id.parse::<SnapshotId>() else {
                return Ok(nothing);
            };
            let Some(backend) = self
                .registry()
                .get(id.backend())
                .filter(|b| b.capabilities().snapshots)
            else {
                return Ok(nothing);
            };
            // With a source filter too, the snapshot must be of that volume.
            let source = (!req.source_volume_id.is_empty())
                .then(|| req.source_volume_id.parse::<VolumeId>().ok());
            let found = backend
                .get_snapshot(id.native())
                .await?
                .filter(|s| match &source {
                    None => true,
                    Some(wanted) => wanted.as_ref().is_some_and(|v| {
                        v.backend() == id.backend() && v.native() == s.source_native_id
                    }),
                });
            let entries = found
                .map(|s| entry(id.backend(), s))
                .transpose()?
                .into_iter()
                .collect();
            return Ok(csi::ListSnapshotsResponse {
                entries,
                next_token: String::new(),
            });
        }
        let source = if req.source_volume_id.is_empty() {
            None
        } else {
            match volume_id(&req.source_volume_id) {
                Ok(id) => Some(id),
                Err(_) => return Ok(nothing),
            }
        };
        let registry = self.registry();
        let backends: Vec<_> = registry
            .iter()
            .filter(|(name, b)| {
                b.capabilities().snapshots && source.as_ref().is_none_or(|s| s.backend() == *name)
            })
            .collect();
        if backends.is_empty() {
            return Ok(nothing);
        }
        let native = source.as_ref().map(|s| s.native().to_owned());
        let (snapshots, next) = listing::walk(backends, "snapshots", start, max, |b, token, n| {
            let native = native.clone();
            Box::pin(async move {
                let page = b
                    .list_snapshots(native.as_deref(), token.as_deref(), n)
                    .await?;
                Ok((page.entries, page.next_token))
            })
        })
        .await?;
        let entries = snapshots
            .into_iter()
            .map(|(name, s)| entry(&name, s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(csi::ListSnapshotsResponse {
            entries,
            next_token: next.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeBackend;
    use everest_backend::registry::Registry;
    use everest_proto::csi::v1::controller_server::Controller;
    use tonic::{Code, Request};

    fn service() -> ControllerService {
        let name = |s: &str| BackendName::new(s).unwrap();
        let mut r: Registry<dyn ControllerBackend> = Registry::new(Some(name("alpha")));
        r.insert(name("alpha"), Arc::new(FakeBackend::with(&["a1", "a2"])));
        r.insert(name("beta"), Arc::new(FakeBackend::with(&["b1"])));
        r.insert(name("plain"), Arc::new(FakeBackend::limited(&["p1"])));
        ControllerService::new(Arc::new(r))
    }

    async fn take(
        svc: &ControllerService,
        name: &str,
        source: &str,
    ) -> Result<csi::Snapshot, tonic::Status> {
        svc.create_snapshot(Request::new(csi::CreateSnapshotRequest {
            name: name.into(),
            source_volume_id: source.into(),
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner().snapshot.unwrap())
    }

    async fn list(
        svc: &ControllerService,
        req: csi::ListSnapshotsRequest,
    ) -> Result<(Vec<String>, String), tonic::Status> {
        let r = svc.list_snapshots(Request::new(req)).await?.into_inner();
        Ok((
            r.entries
                .into_iter()
                .map(|e| e.snapshot.unwrap().snapshot_id)
                .collect(),
            r.next_token,
        ))
    }

    async fn list_all(svc: &ControllerService, source: &str, page: i32) -> Vec<String> {
        let (mut out, mut token) = (Vec::new(), String::new());
        loop {
            let (ids, next) = list(
                svc,
                csi::ListSnapshotsRequest {
                    max_entries: page,
                    source_volume_id: source.into(),
                    starting_token: token,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            assert!(page == 0 || ids.len() <= page as usize);
            out.extend(ids);
            if next.is_empty() {
                return out;
            }
            token = next;
        }
    }

    #[tokio::test]
    async fn create_answers_per_the_spec_tables() {
        let svc = service();
        let s = take(&svc, "snap-1", "v1:alpha:a1").await.unwrap();
        assert_eq!(s.snapshot_id, "v1:alpha:snap-1");
        assert_eq!(s.source_volume_id, "v1:alpha:a1");
        assert!(s.ready_to_use && s.creation_time.is_some());
        // Idempotent by name; the same name of another source is ALREADY_EXISTS.
        assert_eq!(take(&svc, "snap-1", "v1:alpha:a1").await.unwrap(), s);
        let err = take(&svc, "snap-1", "v1:alpha:a2").await.unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
        // Sources that do not exist: NOT_FOUND, whatever the reason.
        for missing in ["v1:alpha:zz", "vol-1", "v1:gamma:x"] {
            let err = take(&svc, "snap-2", missing).await.unwrap_err();
            assert_eq!(err.code(), Code::NotFound, "{missing}: {err:?}");
        }
        for (name, source, field) in [("", "v1:alpha:a1", "name"), ("s", "", "source_volume_id")] {
            let err = take(&svc, name, source).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            assert!(err.message().contains(field), "{err:?}");
        }
        // A backend without snapshots is refused by name.
        let err = take(&svc, "snap-3", "v1:plain:p1").await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("plain"), "{err:?}");
        // A class naming another backend than the source's.
        let err = svc
            .create_snapshot(Request::new(csi::CreateSnapshotRequest {
                name: "snap-4".into(),
                source_volume_id: "v1:alpha:a1".into(),
                parameters: [("everest.io/backend".to_string(), "beta".to_string())].into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("beta"), "{err:?}");
    }

    #[tokio::test]
    async fn capabilities_and_restores_follow_the_backends() {
        use everest_proto::csi::v1::controller_service_capability::{Type, rpc};
        let rpcs = |svc: ControllerService| async move {
            svc.controller_get_capabilities(Request::new(Default::default()))
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
        let all = rpcs(service()).await;
        assert!(all.contains(&rpc::Type::CreateDeleteSnapshot), "{all:?}");
        assert!(all.contains(&rpc::Type::ListSnapshots), "{all:?}");
        assert!(all.contains(&rpc::Type::CloneVolume), "{all:?}");
        let mut only_plain: Registry<dyn ControllerBackend> = Registry::new(None);
        only_plain.insert(
            BackendName::new("plain").unwrap(),
            Arc::new(FakeBackend::limited(&[])),
        );
        let plain = ControllerService::new(Arc::new(only_plain));
        let none = rpcs(plain.clone()).await;
        assert!(!none.contains(&rpc::Type::CreateDeleteSnapshot), "{none:?}");
        assert!(!none.contains(&rpc::Type::ListSnapshots), "{none:?}");
        assert!(!none.contains(&rpc::Type::CloneVolume), "{none:?}");
        // Not advertised: UNIMPLEMENTED, naming the RPC.
        let err = take(&plain, "s", "v1:plain:p1").await.unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);
        assert!(err.message().contains("CreateSnapshot"), "{err:?}");
        let err = list(&plain, Default::default()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);
        let err = plain
            .delete_snapshot(Request::new(csi::DeleteSnapshotRequest {
                snapshot_id: "v1:plain:s".into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);

        let svc = service();
        let snap = take(&svc, "snap-1", "v1:alpha:a1").await.unwrap();
        let restore = |backend: &str, snapshot: &str| {
            use csi::volume_capability::{AccessMode, AccessType, MountVolume, access_mode::Mode};
            use csi::volume_content_source::{SnapshotSource, Type, VolumeSource as Vs};
            csi::CreateVolumeRequest {
                name: "pvc-restored".into(),
                volume_capabilities: vec![csi::VolumeCapability {
                    access_type: Some(AccessType::Mount(MountVolume::default())),
                    access_mode: Some(AccessMode {
                        mode: Mode::SingleNodeWriter as i32,
                    }),
                }],
                parameters: [("everest.io/backend".to_string(), backend.to_string())].into(),
                volume_content_source: Some(csi::VolumeContentSource {
                    // "vol:<id>" asks for a clone of that volume.
                    r#type: Some(match snapshot.strip_prefix("vol:") {
                        Some(volume) => Type::Volume(Vs {
                            volume_id: volume.into(),
                        }),
                        None => Type::Snapshot(SnapshotSource {
                            snapshot_id: snapshot.into(),
                        }),
                    }),
                }),
                ..Default::default()
            }
        };
        let made = svc
            .create_volume(Request::new(restore("alpha", &snap.snapshot_id)))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(
            made.content_source,
            restore("alpha", &snap.snapshot_id).volume_content_source
        );
        // From another backend's snapshot, onto a backend without snapshots, or from a
        // snapshot that is not ours.
        let clone = svc
            .create_volume(Request::new(restore("alpha", "vol:v1:alpha:a2")))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(
            clone.content_source,
            restore("alpha", "vol:v1:alpha:a2").volume_content_source
        );
        for (backend, snapshot, code, names) in [
            ("alpha", "v1:alpha:gone", Code::NotFound, "gone"),
            ("alpha", "vol:v1:alpha:zz", Code::NotFound, "zz"),
            ("alpha", "vol:some-volume", Code::NotFound, "some-volume"),
            ("beta", "vol:v1:alpha:a1", Code::InvalidArgument, "alpha"),
            ("plain", "vol:v1:plain:p1", Code::InvalidArgument, "plain"),
            (
                "beta",
                snap.snapshot_id.as_str(),
                Code::InvalidArgument,
                "alpha",
            ),
            ("plain", "v1:plain:s", Code::InvalidArgument, "plain"),
            ("alpha", "snap-1", Code::NotFound, "snap-1"),
        ] {
            let err = svc
                .create_volume(Request::new(restore(backend, snapshot)))
                .await
                .unwrap_err();
            assert_eq!(err.code(), code, "{backend} {snapshot}: {err:?}");
            assert!(err.message().contains(names), "{err:?}");
        }
    }

    #[tokio::test]
    async fn delete_is_idempotent_and_never_forgets_an_unconfigured_backend() {
        let svc = service();
        take(&svc, "snap-1", "v1:alpha:a1").await.unwrap();
        let delete = |id: &str| {
            let svc = svc.clone();
            let id = id.to_owned();
            async move {
                svc.delete_snapshot(Request::new(csi::DeleteSnapshotRequest {
                    snapshot_id: id,
                    ..Default::default()
                }))
                .await
                .map(drop)
            }
        };
        delete("v1:alpha:snap-1").await.unwrap();
        delete("v1:alpha:snap-1").await.unwrap();
        delete("not-ours").await.unwrap();
        assert_eq!(delete("").await.unwrap_err().code(), Code::InvalidArgument);
        let err = delete("v1:gamma:s").await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().contains("gamma"));
        assert_eq!(
            delete("v1:plain:s").await.unwrap_err().code(),
            Code::InvalidArgument
        );
        assert!(list_all(&svc, "", 0).await.is_empty());
    }

    #[tokio::test]
    async fn list_filters_and_pages_across_backends() {
        let svc = service();
        let mut want = Vec::new();
        for i in 0..7 {
            want.push(
                take(&svc, &format!("a{i}"), "v1:alpha:a1")
                    .await
                    .unwrap()
                    .snapshot_id,
            );
        }
        take(&svc, "other", "v1:alpha:a2").await.unwrap();
        let b = take(&svc, "b", "v1:beta:b1").await.unwrap().snapshot_id;
        for page in [0, 1, 2, 3, 7, 100] {
            assert_eq!(
                list_all(&svc, "v1:alpha:a1", page).await,
                want,
                "page {page}"
            );
            assert_eq!(list_all(&svc, "", page).await.len(), 9, "page {page}");
        }
        assert_eq!(list_all(&svc, "v1:beta:b1", 1).await, vec![b.clone()]);
        // One by ID, with or without a matching source; nothing for what cannot exist.
        let by_id = |id: &str, source: &str| csi::ListSnapshotsRequest {
            snapshot_id: id.into(),
            source_volume_id: source.into(),
            ..Default::default()
        };
        assert_eq!(list(&svc, by_id(&b, "")).await.unwrap().0, vec![b.clone()]);
        assert_eq!(
            list(&svc, by_id(&b, "v1:beta:b1")).await.unwrap().0,
            vec![b.clone()]
        );
        for (id, source) in [
            (b.as_str(), "v1:alpha:a1"),
            ("v1:beta:nope", ""),
            ("garbage", ""),
            ("v1:gamma:s", ""),
            ("v1:plain:s", ""),
        ] {
            assert!(
                list(&svc, by_id(id, source)).await.unwrap().0.is_empty(),
                "{id}"
            );
        }
        for source in ["garbage", "v1:gamma:x", "v1:plain:p1", "v1:alpha:zz"] {
            assert!(list_all(&svc, source, 2).await.is_empty(), "{source}");
        }
        // Tokens we did not issue, and negative sizes.
        for bad in ["garbage", "gamma/0", "alpha/x"] {
            let err = list(
                &svc,
                csi::ListSnapshotsRequest {
                    max_entries: 1,
                    starting_token: bad.into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
            assert_eq!(err.code(), Code::Aborted, "{bad}");
        }
        let err = list(
            &svc,
            csi::ListSnapshotsRequest {
                max_entries: -1,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
}
