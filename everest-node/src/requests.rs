//! Validation: each CSI node request becomes the domain request or an INVALID_ARGUMENT naming the
//! field at fault. Every path must lie under the kubelet root.

use everest_backend::backend::{NodeExpand, NodePublish, NodeStage};
use everest_backend::capability::{VolumeCapability, parse_capability};
use everest_backend::capacity::CapacityRange;
use everest_backend::daemon::fields::{ordered, require_volume_id, volume_id};
use everest_backend::paths::{AllowedRoot, HostPath};
use everest_backend::secrets::Secrets;
use everest_backend::{Error, VolumeId};
use everest_proto::csi::v1 as csi;

/// An optional path field: empty means absent, anything else must pass the root check.
fn optional_path(root: &AllowedRoot, raw: &str, field: &str) -> Result<Option<HostPath>, Error> {
    (!raw.is_empty())
        .then(|| root.check(raw, field))
        .transpose()
}

/// NodeStageVolume: volume, staging path and capability are required.
pub fn stage(
    req: csi::NodeStageVolumeRequest,
    root: &AllowedRoot,
) -> Result<(VolumeId, NodeStage), Error> {
    require_volume_id(&req.volume_id)?;
    let staging = root.check(&req.staging_target_path, "staging_target_path")?;
    let capability = parse_capability(req.volume_capability.as_ref())?;
    // Last: a well-formed request for a volume that is not ours is NOT_FOUND.
    let id = volume_id(&req.volume_id)?;
    let stage = NodeStage {
        native_id: id.native().to_owned(),
        publish_context: ordered(req.publish_context),
        staging,
        capability,
        volume_context: ordered(req.volume_context),
        secrets: Secrets::new(ordered(req.secrets)),
    };
    Ok((id, stage))
}

/// NodeUnstageVolume: volume and staging path. The ID is `None` when it is not one of ours:
/// the kubelet must still be able to clean the path up.
pub fn unstage(
    req: &csi::NodeUnstageVolumeRequest,
    root: &AllowedRoot,
) -> Result<(Option<VolumeId>, HostPath), Error> {
    require_volume_id(&req.volume_id)?;
    let staging = root.check(&req.staging_target_path, "staging_target_path")?;
    Ok((volume_id(&req.volume_id).ok(), staging))
}

/// NodePublishVolume: volume, target path and capability; the staging path when staged.
pub fn publish(
    req: csi::NodePublishVolumeRequest,
    root: &AllowedRoot,
) -> Result<(VolumeId, NodePublish), Error> {
    require_volume_id(&req.volume_id)?;
    let target = root.check(&req.target_path, "target_path")?;
    let staging = optional_path(root, &req.staging_target_path, "staging_target_path")?;
    let capability = parse_capability(req.volume_capability.as_ref())?;
    let id = volume_id(&req.volume_id)?;
    let publish = NodePublish {
        native_id: id.native().to_owned(),
        staging,
        target,
        capability,
        readonly: req.readonly,
        publish_context: ordered(req.publish_context),
        volume_context: ordered(req.volume_context),
        secrets: Secrets::new(ordered(req.secrets)),
    };
    Ok((id, publish))
}

/// NodeUnpublishVolume: volume and target path; the ID is `None` when it is not one of ours.
pub fn unpublish(
    req: &csi::NodeUnpublishVolumeRequest,
    root: &AllowedRoot,
) -> Result<(Option<VolumeId>, HostPath), Error> {
    require_volume_id(&req.volume_id)?;
    let target = root.check(&req.target_path, "target_path")?;
    Ok((volume_id(&req.volume_id).ok(), target))
}

/// NodeGetVolumeStats: volume and the path it is published or staged at.
pub fn stats(
    req: &csi::NodeGetVolumeStatsRequest,
    root: &AllowedRoot,
) -> Result<(VolumeId, HostPath), Error> {
    require_volume_id(&req.volume_id)?;
    let path = root.check(&req.volume_path, "volume_path")?;
    optional_path(root, &req.staging_target_path, "staging_target_path")?;
    Ok((volume_id(&req.volume_id)?, path))
}

/// NodeExpandVolume: volume and path; capacity and capability when the kubelet sends them.
pub fn expand(
    req: &csi::NodeExpandVolumeRequest,
    root: &AllowedRoot,
) -> Result<(VolumeId, NodeExpand), Error> {
    require_volume_id(&req.volume_id)?;
    let volume_path = root.check(&req.volume_path, "volume_path")?;
    let staging = optional_path(root, &req.staging_target_path, "staging_target_path")?;
    let capacity = req
        .capacity_range
        .as_ref()
        .map_or(Ok(CapacityRange::default()), |r| {
            CapacityRange::new(r.required_bytes, r.limit_bytes)
        })?;
    let capability = req
        .volume_capability
        .as_ref()
        .map(VolumeCapability::try_from)
        .transpose()?;
    let id = volume_id(&req.volume_id)?;
    let expand = NodeExpand {
        native_id: id.native().to_owned(),
        volume_path,
        staging,
        capacity,
        capability,
    };
    Ok((id, expand))
}

#[cfg(test)]
mod tests {
    use super::*;
    use everest_proto::csi::v1::volume_capability::{
        AccessMode, AccessType, MountVolume, access_mode::Mode,
    };
    use tonic::Code;

    const STAGING: &str =
        "/var/lib/kubelet/plugins/kubernetes.io/csi/everest.csi.io/abc/globalmount";
    const TARGET: &str = "/var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/pvc-1/mount";

    fn root() -> AllowedRoot {
        AllowedRoot::new("/var/lib/kubelet").unwrap()
    }

    fn cap() -> csi::VolumeCapability {
        csi::VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume {
                fs_type: "xfs".into(),
                ..Default::default()
            })),
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
        }
    }

    fn assert_invalid(result: Result<impl std::fmt::Debug, Error>, field: &str) {
        let err = result.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert!(err.to_string().contains(field), "{err} should name {field}");
    }

    fn stage_req() -> csi::NodeStageVolumeRequest {
        csi::NodeStageVolumeRequest {
            volume_id: "v1:disks-default:d1".into(),
            staging_target_path: STAGING.into(),
            volume_capability: Some(cap()),
            publish_context: [("device".to_string(), "vdb".to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn stage_accepts_and_rejects() {
        let (id, s) = stage(stage_req(), &root()).unwrap();
        assert_eq!(id.backend().as_str(), "disks-default");
        assert_eq!(s.native_id, "d1");
        assert_eq!(s.capability.fs_type(), Some("xfs"));
        assert_eq!(s.publish_context["device"], "vdb");

        let mut r = stage_req();
        r.volume_id.clear();
        assert_invalid(stage(r, &root()), "volume_id");
        // Not an Everest ID: no such volume; but a missing field is reported first.
        let mut r = stage_req();
        r.volume_id = "d1".into();
        assert_eq!(
            stage(r.clone(), &root()).unwrap_err().code(),
            Code::NotFound
        );
        r.volume_capability = None;
        assert_invalid(stage(r, &root()), "volume_capability");
        let mut r = stage_req();
        r.staging_target_path.clear();
        assert_invalid(stage(r, &root()), "staging_target_path");
        let mut r = stage_req();
        r.staging_target_path = "/etc/cron.d".into();
        assert_invalid(stage(r, &root()), "staging_target_path");
        let mut r = stage_req();
        r.staging_target_path = "/var/lib/kubelet/../../etc".into();
        assert_invalid(stage(r, &root()), "staging_target_path");
        let mut r = stage_req();
        r.volume_capability = None;
        assert_invalid(stage(r, &root()), "volume_capability");
        let mut r = stage_req();
        r.volume_capability = Some(csi::VolumeCapability {
            access_mode: None,
            ..cap()
        });
        assert_invalid(stage(r, &root()), "access_mode");
    }

    #[test]
    fn publish_accepts_and_rejects() {
        let ok = csi::NodePublishVolumeRequest {
            volume_id: "v1:disks:d1".into(),
            staging_target_path: STAGING.into(),
            target_path: TARGET.into(),
            volume_capability: Some(cap()),
            readonly: true,
            ..Default::default()
        };
        let (_, p) = publish(ok.clone(), &root()).unwrap();
        assert!(p.readonly && p.staging.is_some());
        let mut r = ok.clone();
        r.target_path.clear();
        assert_invalid(publish(r, &root()), "target_path");
        let mut r = ok.clone();
        r.target_path = "/tmp/x".into();
        assert_invalid(publish(r, &root()), "target_path");
        let mut r = ok.clone();
        r.staging_target_path = "/tmp/staging".into();
        assert_invalid(publish(r, &root()), "staging_target_path");
        let mut r = ok;
        r.volume_capability = None;
        assert_invalid(publish(r, &root()), "volume_capability");
    }

    #[test]
    fn teardown_stats_and_expand() {
        let unst = csi::NodeUnstageVolumeRequest {
            volume_id: "v1:disks:d1".into(),
            staging_target_path: STAGING.into(),
        };
        assert!(unstage(&unst, &root()).is_ok());
        assert_invalid(
            unstage(
                &csi::NodeUnstageVolumeRequest {
                    staging_target_path: "/x".into(),
                    ..unst.clone()
                },
                &root(),
            ),
            "staging_target_path",
        );
        assert_invalid(
            unstage(
                &csi::NodeUnstageVolumeRequest {
                    volume_id: String::new(),
                    ..unst
                },
                &root(),
            ),
            "volume_id",
        );
        let unp = csi::NodeUnpublishVolumeRequest {
            volume_id: "v1:disks:d1".into(),
            target_path: TARGET.into(),
        };
        assert!(unpublish(&unp, &root()).is_ok());
        assert_invalid(
            unpublish(
                &csi::NodeUnpublishVolumeRequest {
                    target_path: String::new(),
                    ..unp
                },
                &root(),
            ),
            "target_path",
        );
        let st = csi::NodeGetVolumeStatsRequest {
            volume_id: "v1:disks:d1".into(),
            volume_path: TARGET.into(),
            staging_target_path: String::new(),
        };
        assert!(stats(&st, &root()).is_ok());
        assert_invalid(
            stats(
                &csi::NodeGetVolumeStatsRequest {
                    volume_path: String::new(),
                    ..st
                },
                &root(),
            ),
            "volume_path",
        );
        let ex = csi::NodeExpandVolumeRequest {
            volume_id: "v1:disks:d1".into(),
            volume_path: TARGET.into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 20 << 30,
                limit_bytes: 0,
            }),
            ..Default::default()
        };
        let (_, e) = expand(&ex, &root()).unwrap();
        assert_eq!(e.capacity.required_bytes, 20 << 30);
        assert!(e.capability.is_none() && e.staging.is_none());
        let mut bad = ex.clone();
        bad.capacity_range = Some(csi::CapacityRange {
            required_bytes: -1,
            limit_bytes: 0,
        });
        assert_invalid(expand(&bad, &root()), "capacity_range");
        let mut bad = ex;
        bad.volume_path = "relative".into();
        assert_invalid(expand(&bad, &root()), "volume_path");
    }
}
