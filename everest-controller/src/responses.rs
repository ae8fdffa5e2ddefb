//! Translation of domain answers back into CSI messages.

use everest_backend::backend::{ListedVolume, Topology, Volume};
use everest_backend::daemon::fields::signed_bytes as bytes;
use everest_backend::snapshot::Snapshot;
use everest_backend::{BackendName, Error, SnapshotId, VolumeId};
use everest_proto::csi::v1 as csi;

fn topologies(ts: Vec<Topology>) -> Vec<csi::Topology> {
    ts.into_iter()
        .map(|t| csi::Topology {
            segments: t.into_iter().collect(),
        })
        .collect()
}

/// A backend's volume as CSI sees it, its ID encoding the backend instance.
pub fn volume(backend: &BackendName, v: Volume) -> Result<csi::Volume, Error> {
    let id = VolumeId::new(backend.clone(), &v.native_id).map_err(|e| {
        Error::Internal(format!(
            "backend {backend} returned an unusable volume ID: {e}"
        ))
    })?;
    Ok(csi::Volume {
        capacity_bytes: bytes(v.capacity_bytes),
        volume_id: id.to_string(),
        volume_context: v.context.into_iter().collect(),
        content_source: None,
        accessible_topology: topologies(v.topology),
    })
}

/// A backend's snapshot as CSI sees it: its ID and its source's encode the backend instance.
pub fn snapshot(backend: &BackendName, s: Snapshot) -> Result<csi::Snapshot, Error> {
    let unusable = |what: &str, e: Error| {
        Error::Internal(format!(
            "backend {backend} returned an unusable {what}: {e}"
        ))
    };
    let id =
        SnapshotId::new(backend.clone(), &s.native_id).map_err(|e| unusable("snapshot ID", e))?;
    let source = VolumeId::new(backend.clone(), &s.source_native_id)
        .map_err(|e| unusable("source volume ID", e))?;
    Ok(csi::Snapshot {
        size_bytes: bytes(s.size_bytes),
        snapshot_id: id.to_string(),
        source_volume_id: source.to_string(),
        creation_time: Some(prost_types::Timestamp::from(s.created_at)),
        ready_to_use: s.ready,
        group_snapshot_id: String::new(),
    })
}

/// The health of a listed volume.
pub fn condition(abnormal: Option<String>) -> csi::VolumeCondition {
    csi::VolumeCondition {
        abnormal: abnormal.is_some(),
        message: abnormal.unwrap_or_default(),
    }
}

/// One ListVolumes entry.
pub fn list_entry(
    backend: &BackendName,
    v: ListedVolume,
) -> Result<csi::list_volumes_response::Entry, Error> {
    Ok(csi::list_volumes_response::Entry {
        volume: Some(volume(backend, v.volume)?),
        status: Some(csi::list_volumes_response::VolumeStatus {
            published_node_ids: v.published_nodes,
            volume_condition: Some(condition(v.abnormal)),
        }),
    })
}

/// ControllerGetVolume's answer.
pub fn get_volume(
    backend: &BackendName,
    v: ListedVolume,
) -> Result<csi::ControllerGetVolumeResponse, Error> {
    Ok(csi::ControllerGetVolumeResponse {
        volume: Some(volume(backend, v.volume)?),
        status: Some(csi::controller_get_volume_response::VolumeStatus {
            published_node_ids: v.published_nodes,
            volume_condition: Some(condition(v.abnormal)),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_encodes_backend_in_both_ids() {
        let name = BackendName::new("disks-default").unwrap();
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let s = Snapshot {
            native_id: "s1".into(),
            source_native_id: "d1".into(),
            size_bytes: 10 << 30,
            created_at: t,
            ready: true,
        };
        let out = snapshot(&name, s.clone()).unwrap();
        assert_eq!(out.snapshot_id, "v1:disks-default:s1");
        assert_eq!(out.source_volume_id, "v1:disks-default:d1");
        assert_eq!(out.creation_time.unwrap().seconds, 1_700_000_000);
        assert!(out.ready_to_use);
        let bad = Snapshot {
            native_id: "a:b".into(),
            ..s
        };
        assert_eq!(
            snapshot(&name, bad).unwrap_err().code(),
            tonic::Code::Internal
        );
    }

    #[test]
    fn volume_encodes_backend_and_topology() {
        let name = BackendName::new("disks-default").unwrap();
        let v = Volume {
            native_id: "d1".into(),
            capacity_bytes: 10 << 30,
            context: [("fsType".to_string(), "ext4".to_string())].into(),
            topology: vec![[("zone".to_string(), "az1".to_string())].into()],
        };
        let out = volume(&name, v.clone()).unwrap();
        assert_eq!(out.volume_id, "v1:disks-default:d1");
        assert_eq!(out.capacity_bytes, 10 << 30);
        assert_eq!(out.accessible_topology[0].segments["zone"], "az1");
        let bad = Volume {
            native_id: "a:b".into(),
            ..v
        };
        assert_eq!(
            volume(&name, bad).unwrap_err().code(),
            tonic::Code::Internal
        );
        let c = condition(Some("detached by hand".into()));
        assert!(c.abnormal && c.message.contains("detached"));
        assert!(!condition(None).abnormal);
    }
}
