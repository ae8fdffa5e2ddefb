//! Validation: each CSI request becomes the domain request or an INVALID_ARGUMENT naming the
//! field at fault. Nothing here talks to a backend.

use everest_backend::backend::{ControllerPublish, CreateVolume, Topology, TopologyRequirement};
use everest_backend::capability::{VolumeCapability, parse_capabilities, parse_capability};
use everest_backend::capacity::CapacityRange;
use everest_backend::daemon::fields::{ordered, require_volume_id, volume_id};
use everest_backend::params::split_common;
use everest_backend::secrets::Secrets;
use everest_backend::{Error, VolumeId};
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

/// CreateVolume: name, capabilities, capacity, parameters and topology.
pub fn create_volume(req: csi::CreateVolumeRequest) -> Result<CreateVolume, Error> {
    if req.name.is_empty() {
        return Err(Error::InvalidArgument("name is required".into()));
    }
    let capabilities = parse_capabilities(&req.volume_capabilities)?;
    let capacity = capacity(req.capacity_range.as_ref())?;
    if req.volume_content_source.is_some() {
        return Err(Error::InvalidArgument(
            "volume_content_source is not supported: this driver cannot create volumes from snapshots or clones".into(),
        ));
    }
    if !req.mutable_parameters.is_empty() {
        return Err(Error::InvalidArgument(
            "mutable_parameters are not supported (no ControllerModifyVolume)".into(),
        ));
    }
    let (common, parameters) = split_common(&ordered(req.parameters))?;
    Ok(CreateVolume {
        name: req.name,
        capacity,
        capabilities,
        common,
        parameters,
        topology: topology(req.accessibility_requirements),
        secrets: Secrets::new(ordered(req.secrets)),
    })
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
        let c = create_volume(req).unwrap();
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
        let mut mutable = create();
        mutable.mutable_parameters = [("iops".to_string(), "3000".to_string())].into();
        assert_invalid(create_volume(mutable), "mutable_parameters");
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
