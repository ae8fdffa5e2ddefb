//! Validation: each CSI request becomes the domain request or an INVALID_ARGUMENT naming the
//! field at fault. Nothing here talks to a backend.

use everest_backend::backend::{ControllerPublish, CreateVolume, Topology, TopologyRequirement};
use everest_backend::capability::{VolumeCapability, parse_capabilities, parse_capability};
use std::collections::BTreeMap;

use everest_backend::capacity::CapacityRange;
use everest_backend::daemon::fields::{ordered, require_volume_id, volume_id};
use everest_backend::params::split_common;
use everest_backend::secrets::Secrets;
use everest_backend::snapshot::{CreateSnapshot, VolumeSource, split_snapshot_params};
use everest_backend::volume_id::MAX_VOLUME_ID_LEN;
use everest_backend::{BackendName, Error, SnapshotId, VolumeId};
use everest_proto::csi::v1 as csi;

fn capacity(range: Option<&csi::CapacityRange>) -> Result<CapacityRange, Error> {
    range.map_or(Ok(CapacityRange::default()), |r| {
        CapacityRange::new(r.required_bytes, r.limit_bytes)
    })
}

fn topology(req: Option<csi::TopologyRequirement>) -> Option<TopologyRequirement> {
    let segments = |ts: Vec<csi::Topology>| -> Vec<Topology> {
        ts.into_iter()
            .map(|t| t.segments.into_iter().collect())
            .collect()
    };
    req.map(|r| TopologyRequirement {
        requisite: segments(r.requisite),
        preferred: segments(r.preferred),
    })
}

/// Where a new volume's content comes from: the backend instance the source lives on (the new
/// volume must be on the same one) and the source as the request named it, to echo back.
#[derive(Debug, Clone)]
pub struct ContentSource {
    /// The backend instance of the source.
    pub backend: BackendName,
    /// The request's `volume_content_source`, returned in the created volume.
    pub echo: csi::VolumeContentSource,
}

/// The content source of a CreateVolume: a snapshot or a volume (a clone) of ours, or
/// NOT_FOUND (an ID that is not in Everest's form names nothing of ours).
fn content_source(
    source: Option<csi::VolumeContentSource>,
) -> Result<Option<(ContentSource, VolumeSource)>, Error> {
    use csi::volume_content_source::Type;
    let Some(echo) = source else {
        return Ok(None);
    };
    match &echo.r#type {
        Some(Type::Snapshot(s)) => {
            if s.snapshot_id.is_empty() {
                return Err(Error::InvalidArgument(
                    "volume_content_source.snapshot.snapshot_id is required".into(),
                ));
            }
            let id = snapshot_id(&s.snapshot_id)?;
            let native = VolumeSource::Snapshot(id.native().to_owned());
            let backend = id.backend().clone();
            Ok(Some((ContentSource { backend, echo }, native)))
        }
        Some(Type::Volume(v)) => {
            if v.volume_id.is_empty() {
                return Err(Error::InvalidArgument(
                    "volume_content_source.volume.volume_id is required".into(),
                ));
            }
            let id = volume_id(&v.volume_id)?;
            let native = VolumeSource::Volume(id.native().to_owned());
            let backend = id.backend().clone();
            Ok(Some((ContentSource { backend, echo }, native)))
        }
        None => Err(Error::InvalidArgument(
            "volume_content_source names neither a snapshot nor a volume".into(),
        )),
    }
}

/// Parses a snapshot ID a request names; one not in Everest's form names no snapshot of ours
/// (NOT_FOUND), as CSI asks for a snapshot that does not exist.
pub fn snapshot_id(raw: &str) -> Result<SnapshotId, Error> {
    if raw.len() > MAX_VOLUME_ID_LEN {
        return Err(Error::InvalidArgument(format!(
            "snapshot ID of {} bytes is longer than the CSI limit of {MAX_VOLUME_ID_LEN}",
            raw.len()
        )));
    }
    raw.parse::<SnapshotId>()
        .map_err(|e| Error::NotFound(format!("no such snapshot: {e}")))
}

/// A validated CreateVolume with what the daemon checks against the chosen backend.
#[derive(Debug, Clone)]
pub struct NewVolume {
    /// The request for the backend; its parameters include the mutable ones.
    pub create: CreateVolume,
    /// Where its content comes from, if not empty.
    pub source: Option<ContentSource>,
    /// The keys of `mutable_parameters` (a VolumeAttributesClass given at creation): only a
    /// backend that modifies volumes accepts them.
    pub mutable_keys: Vec<String>,
}

/// CreateVolume: name, capabilities, capacity, parameters (the mutable ones win over the
/// StorageClass's), topology and content source.
pub fn create_volume(req: csi::CreateVolumeRequest) -> Result<NewVolume, Error> {
    if req.name.is_empty() {
        return Err(Error::InvalidArgument("name is required".into()));
    }
    let capabilities = parse_capabilities(&req.volume_capabilities)?;
    let capacity = capacity(req.capacity_range.as_ref())?;
    let (source, native_source) = content_source(req.volume_content_source)?.unzip();
    let mutable = ordered(req.mutable_parameters);
    let mutable_keys: Vec<String> = mutable.keys().cloned().collect();
    let mut all = ordered(req.parameters);
    all.extend(mutable);
    let (common, parameters) = split_common(&all)?;
    let create = CreateVolume {
        name: req.name,
        capacity,
        capabilities,
        common,
        parameters,
        topology: topology(req.accessibility_requirements),
        source: native_source,
        secrets: Secrets::new(ordered(req.secrets)),
        // The service sets its own once the request is routed.
        cluster: Default::default(),
    };
    Ok(NewVolume {
        create,
        source,
        mutable_keys,
    })
}

/// ControllerModifyVolume: the volume and a non-empty set of mutable parameters.
pub fn modify(
    req: csi::ControllerModifyVolumeRequest,
) -> Result<(VolumeId, BTreeMap<String, String>), Error> {
    require_volume_id(&req.volume_id)?;
    if req.mutable_parameters.is_empty() {
        return Err(Error::InvalidArgument(
            "mutable_parameters is required: say what to change".into(),
        ));
    }
    let id = volume_id(&req.volume_id)?;
    Ok((id, ordered(req.mutable_parameters)))
}

/// CreateSnapshot: the name, the source volume (NOT_FOUND when it is not one of ours), the
/// VolumeSnapshotClass's backend (if it names one) and the rest of its parameters.
pub fn create_snapshot(
    req: csi::CreateSnapshotRequest,
) -> Result<(VolumeId, Option<BackendName>, CreateSnapshot), Error> {
    if req.name.is_empty() {
        return Err(Error::InvalidArgument("name is required".into()));
    }
    if req.source_volume_id.is_empty() {
        return Err(Error::InvalidArgument(
            "source_volume_id is required".into(),
        ));
    }
    let class = split_snapshot_params(&ordered(req.parameters))?;
    let source = volume_id(&req.source_volume_id)?;
    let backend = class.backend;
    let create = CreateSnapshot {
        name: req.name,
        source_native_id: source.native().to_owned(),
        k8s: class.k8s,
        parameters: class.rest,
        secrets: Secrets::new(ordered(req.secrets)),
    };
    Ok((source, backend, create))
}

/// ControllerPublishVolume: volume, node and capability are all required.
pub fn publish(
    req: csi::ControllerPublishVolumeRequest,
) -> Result<(VolumeId, ControllerPublish), Error> {
    require_volume_id(&req.volume_id)?;
    if req.node_id.is_empty() {
        return Err(Error::InvalidArgument("node_id is required".into()));
    }
    let capability = parse_capability(req.volume_capability.as_ref())?;
    // Last: a well-formed request for a volume that is not ours is NOT_FOUND, not INVALID_ARGUMENT.
    let id = volume_id(&req.volume_id)?;
    let publish = ControllerPublish {
        native_id: id.native().to_owned(),
        node_id: req.node_id,
        capability,
        readonly: req.readonly,
        context: ordered(req.volume_context),
        secrets: Secrets::new(ordered(req.secrets)),
    };
    Ok((id, publish))
}

/// ControllerUnpublishVolume: an empty node ID means "from every node".
pub fn unpublish(
    req: &csi::ControllerUnpublishVolumeRequest,
) -> Result<(VolumeId, Option<String>), Error> {
    let id = volume_id(&req.volume_id)?;
    let node = (!req.node_id.is_empty()).then(|| req.node_id.clone());
    Ok((id, node))
}

/// ControllerExpandVolume: CSI makes `capacity_range` mandatory here.
pub fn expand(
    req: &csi::ControllerExpandVolumeRequest,
) -> Result<(VolumeId, CapacityRange), Error> {
    require_volume_id(&req.volume_id)?;
    let range = req
        .capacity_range
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("capacity_range is required".into()))?;
    let capacity = CapacityRange::new(range.required_bytes, range.limit_bytes)?;
    if let Some(cap) = &req.volume_capability {
        VolumeCapability::try_from(cap)?;
    }
    let id = volume_id(&req.volume_id)?;
    Ok((id, capacity))
}

/// ValidateVolumeCapabilities: the volume and a non-empty capability list.
pub fn validate_capabilities(
    req: &csi::ValidateVolumeCapabilitiesRequest,
) -> Result<(VolumeId, Vec<VolumeCapability>), Error> {
    require_volume_id(&req.volume_id)?;
    let caps = parse_capabilities(&req.volume_capabilities)?;
    let id = volume_id(&req.volume_id)?;
    Ok((id, caps))
}

/// ListVolumes' page size; zero lets the backends choose.
pub fn max_entries(raw: i32) -> Result<u32, Error> {
    u32::try_from(raw).map_err(|_| {
        Error::InvalidArgument(format!("max_entries must not be negative (got {raw})"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use everest_proto::csi::v1::volume_capability::{
        AccessMode, AccessType, MountVolume, access_mode::Mode,
    };
    use tonic::Code;

    fn cap() -> csi::VolumeCapability {
        csi::VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
        }
    }

    fn create() -> csi::CreateVolumeRequest {
        csi::CreateVolumeRequest {
            name: "pvc-1".into(),
            volume_capabilities: vec![cap()],
            ..Default::default()
        }
    }

    fn assert_invalid(result: Result<impl std::fmt::Debug, Error>, field: &str) {
        let err = result.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert!(err.to_string().contains(field), "{err} should name {field}");
    }

    #[test]
    fn create_volume_accepts_a_minimal_request() {
        let mut req = create();
        req.parameters = [
            ("everest.io/backend".to_string(), "disks-fast".to_string()),
            ("everest.io/disk-volume-type".to_string(), "SSD".to_string()),
        ]
        .into();
        req.capacity_range = Some(csi::CapacityRange {
            required_bytes: 1 << 30,
            limit_bytes: 0,
        });
        req.accessibility_requirements = Some(csi::TopologyRequirement {
            requisite: vec![csi::Topology {
                segments: [("zone".to_string(), "az1".to_string())].into(),
            }],
            preferred: vec![],
        });
        let NewVolume {
            create: c, source, ..
        } = create_volume(req).unwrap();
        assert!(source.is_none() && c.source.is_none());
        assert_eq!(c.name, "pvc-1");
        assert_eq!(c.capacity.required_bytes, 1 << 30);
        assert_eq!(c.common.backend.unwrap().as_str(), "disks-fast");
        assert_eq!(c.parameters.len(), 1);
        assert_eq!(c.topology.unwrap().requisite[0]["zone"], "az1");
    }

    #[test]
    fn create_volume_rejects_bad_input_naming_the_field() {
        let mut no_name = create();
        no_name.name.clear();
        assert_invalid(create_volume(no_name), "name");
        let mut no_caps = create();
        no_caps.volume_capabilities.clear();
        assert_invalid(create_volume(no_caps), "volume_capabilities");
        let mut unknown_mode = create();
        unknown_mode.volume_capabilities[0].access_mode = None;
        assert_invalid(create_volume(unknown_mode), "access_mode");
        let mut no_type = create();
        no_type.volume_capabilities[0].access_type = None;
        assert_invalid(create_volume(no_type), "access_type");
        let mut negative = create();
        negative.capacity_range = Some(csi::CapacityRange {
            required_bytes: -1,
            limit_bytes: 0,
        });
        assert_invalid(create_volume(negative), "capacity_range");
        let mut inverted = create();
        inverted.capacity_range = Some(csi::CapacityRange {
            required_bytes: 10,
            limit_bytes: 5,
        });
        assert_invalid(create_volume(inverted), "capacity_range");
        let mut bad_backend = create();
        bad_backend.parameters =
            [("everest.io/backend".to_string(), "Bad_Name".to_string())].into();
        assert_invalid(create_volume(bad_backend), "everest.io/backend");
        let mut source = create();
        source.volume_content_source = Some(csi::VolumeContentSource::default());
        assert_invalid(create_volume(source), "volume_content_source");
        let mut clone = create();
        clone.volume_content_source = Some(volume_source());
        let NewVolume {
            create: c, source, ..
        } = create_volume(clone).unwrap();
        assert_eq!(c.source, Some(VolumeSource::Volume("d1".into())));
        assert_eq!(source.unwrap().backend.as_str(), "disks");
        let mut no_snap_id = create();
        no_snap_id.volume_content_source = Some(snapshot_source(""));
        assert_invalid(create_volume(no_snap_id), "snapshot_id");
        let mut mutable = create();
        mutable.parameters = [("iops".to_string(), "1000".to_string())].into();
        mutable.mutable_parameters = [("iops".to_string(), "3000".to_string())].into();
        let made = create_volume(mutable).unwrap();
        assert_eq!(made.mutable_keys, ["iops"]);
        assert_eq!(
            made.create.parameters["iops"], "3000",
            "the mutable value wins"
        );
        let empty = csi::ControllerModifyVolumeRequest {
            volume_id: "v1:disks:d1".into(),
            ..Default::default()
        };
        assert_invalid(modify(empty), "mutable_parameters");
    }

    fn snapshot_source(id: &str) -> csi::VolumeContentSource {
        use csi::volume_content_source::{SnapshotSource, Type};
        csi::VolumeContentSource {
            r#type: Some(Type::Snapshot(SnapshotSource {
                snapshot_id: id.into(),
            })),
        }
    }

    fn volume_source() -> csi::VolumeContentSource {
        use csi::volume_content_source::{Type, VolumeSource as Vs};
        csi::VolumeContentSource {
            r#type: Some(Type::Volume(Vs {
                volume_id: "v1:disks:d1".into(),
            })),
        }
    }

    #[test]
    fn create_volume_from_a_snapshot_names_its_backend_and_echoes_the_source() {
        let mut req = create();
        req.volume_content_source = Some(snapshot_source("v1:disks-fast:snap-1"));
        let NewVolume {
            create: c, source, ..
        } = create_volume(req).unwrap();
        assert_eq!(c.source, Some(VolumeSource::Snapshot("snap-1".into())));
        let source = source.unwrap();
        assert_eq!(source.backend.as_str(), "disks-fast");
        assert_eq!(source.echo, snapshot_source("v1:disks-fast:snap-1"));
        // Not an Everest snapshot ID: no such snapshot.
        let mut foreign = create();
        foreign.volume_content_source = Some(snapshot_source("snap-1"));
        let err = create_volume(foreign).unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err}");
    }

    #[test]
    fn create_snapshot_requires_name_and_source_and_splits_parameters() {
        let ok = csi::CreateSnapshotRequest {
            name: "snapshot-1".into(),
            source_volume_id: "v1:disks:d1".into(),
            parameters: [
                (
                    "csi.storage.k8s.io/volumesnapshot/name".to_string(),
                    "nightly".to_string(),
                ),
                ("everest.io/backend".to_string(), "disks".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        let (source, backend, c) = create_snapshot(ok.clone()).unwrap();
        assert_eq!(source.to_string(), "v1:disks:d1");
        assert_eq!(backend.unwrap().as_str(), "disks");
        assert_eq!(c.source_native_id, "d1");
        assert_eq!(c.k8s.name.as_deref(), Some("nightly"));
        assert!(c.parameters.is_empty());
        let mut no_name = ok.clone();
        no_name.name.clear();
        assert_invalid(create_snapshot(no_name), "name");
        let mut no_source = ok.clone();
        no_source.source_volume_id.clear();
        assert_invalid(create_snapshot(no_source), "source_volume_id");
        let mut foreign = ok;
        foreign.source_volume_id = "vol-1".into();
        assert_eq!(create_snapshot(foreign).unwrap_err().code(), Code::NotFound);
    }

    #[test]
    fn volume_ids_are_required_and_well_formed() {
        assert_invalid(volume_id(""), "volume_id");
        for foreign in ["disk-123", "v9:disks:x"] {
            assert_eq!(
                volume_id(foreign).unwrap_err().code(),
                tonic::Code::NotFound
            );
        }
        let id = volume_id("v1:disks-default:disk-1").unwrap();
        assert_eq!(id.native(), "disk-1");
    }

    #[test]
    fn publish_requires_volume_node_and_capability() {
        let ok = csi::ControllerPublishVolumeRequest {
            volume_id: "v1:disks:d1".into(),
            node_id: "server-1".into(),
            volume_capability: Some(cap()),
            readonly: true,
            ..Default::default()
        };
        let (id, p) = publish(ok.clone()).unwrap();
        assert_eq!(
            (id.native(), p.node_id.as_str(), p.readonly),
            ("d1", "server-1", true)
        );
        let mut no_vol = ok.clone();
        no_vol.volume_id.clear();
        assert_invalid(publish(no_vol), "volume_id");
        let mut no_node = ok.clone();
        no_node.node_id.clear();
        assert_invalid(publish(no_node), "node_id");
        let mut no_cap = ok;
        no_cap.volume_capability = None;
        assert_invalid(publish(no_cap), "volume_capability");
    }

    #[test]
    fn unpublish_expand_validate_and_list() {
        let (_, node) = unpublish(&csi::ControllerUnpublishVolumeRequest {
            volume_id: "v1:disks:d1".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(node, None);
        assert_invalid(
            unpublish(&csi::ControllerUnpublishVolumeRequest::default()),
            "volume_id",
        );
        let mut exp = csi::ControllerExpandVolumeRequest {
            volume_id: "v1:disks:d1".into(),
            ..Default::default()
        };
        assert_invalid(expand(&exp), "capacity_range");
        exp.capacity_range = Some(csi::CapacityRange {
            required_bytes: -5,
            limit_bytes: 0,
        });
        assert_invalid(expand(&exp), "capacity_range");
        exp.capacity_range = Some(csi::CapacityRange {
            required_bytes: 5 << 30,
            limit_bytes: 0,
        });
        assert_eq!(expand(&exp).unwrap().1.required_bytes, 5 << 30);
        let val = csi::ValidateVolumeCapabilitiesRequest {
            volume_id: "v1:disks:d1".into(),
            ..Default::default()
        };
        assert_invalid(validate_capabilities(&val), "volume_capabilities");
        assert_invalid(max_entries(-1), "max_entries");
        assert_eq!(max_entries(0).unwrap(), 0);
    }
}
