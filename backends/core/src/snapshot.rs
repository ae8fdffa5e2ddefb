//! Snapshots as the seam sees them: the versioned snapshot ID, the validated CreateSnapshot, a
//! snapshot and a page of them, and the VolumeSnapshotClass parameters every backend shares.
//!
//! A snapshot ID has the form of a volume ID, `v1:<backend instance>:<native id>`, for the
//! same reasons: DeleteSnapshot and ListSnapshots carry no parameters, so the ID routes them;
//! the version lets the form change; a person can write one for a pre-provisioned
//! VolumeSnapshotContent.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use crate::error::Error;
use crate::secrets::Secrets;
use crate::volume_id::{BackendName, VolumeId};

/// A parsed snapshot ID: which backend instance, and the backend's own ID for the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotId(VolumeId);

/// Says "snapshot ID" where the shared parser says "volume ID".
fn as_snapshot_error(e: Error) -> Error {
    match e {
        Error::InvalidArgument(m) => Error::InvalidArgument(
            m.replace("native volume ID", "native snapshot ID")
                .replace("volume ID", "snapshot ID")
                .replace("v1:evs-default:6b5e3c1a-...", "v1:evs-default:1f2e3d4c-..."),
        ),
        other => other,
    }
}

impl SnapshotId {
    /// Builds an ID, checking the native part and the total length (CSI's 128 bytes).
    pub fn new(backend: BackendName, native: &str) -> Result<Self, Error> {
        VolumeId::new(backend, native)
            .map(Self)
            .map_err(as_snapshot_error)
    }

    /// The backend instance this snapshot lives on.
    pub fn backend(&self) -> &BackendName {
        self.0.backend()
    }

    /// The backend's own identifier.
    pub fn native(&self) -> &str {
        self.0.native()
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for SnapshotId {
    type Err = Error;

    /// Parses `v1:<backend>:<native>`; a malformed ID is INVALID_ARGUMENT naming the form.
    fn from_str(s: &str) -> Result<Self, Error> {
        s.parse::<VolumeId>().map(Self).map_err(as_snapshot_error)
    }
}

/// Added by csi-snapshotter with `--extra-create-metadata`: the VolumeSnapshot's name.
pub const SNAPSHOT_NAME_KEY: &str = "csi.storage.k8s.io/volumesnapshot/name";
/// Added by csi-snapshotter with `--extra-create-metadata`: the VolumeSnapshot's namespace.
pub const SNAPSHOT_NAMESPACE_KEY: &str = "csi.storage.k8s.io/volumesnapshot/namespace";
/// Added by csi-snapshotter with `--extra-create-metadata`: the VolumeSnapshotContent's name.
pub const SNAPSHOT_CONTENT_NAME_KEY: &str = "csi.storage.k8s.io/volumesnapshotcontent/name";

/// The Kubernetes objects a snapshot is taken for (empty when the snapshotter does not say).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// VolumeSnapshot name.
    pub name: Option<String>,
    /// VolumeSnapshot namespace.
    pub namespace: Option<String>,
    /// VolumeSnapshotContent name.
    pub content_name: Option<String>,
}

/// VolumeSnapshotClass parameters, split into what every backend shares and the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotClassParams {
    /// The backend instance the class names (it must be the source volume's), if any.
    pub backend: Option<BackendName>,
    /// The Kubernetes names the snapshotter adds.
    pub k8s: SnapshotMeta,
    /// The backend's own parameters.
    pub rest: BTreeMap<String, String>,
}

/// Takes the keys every backend shares out of VolumeSnapshotClass parameters: the backend
/// instance and the Kubernetes names.
pub fn split_snapshot_params(
    params: &BTreeMap<String, String>,
) -> Result<SnapshotClassParams, Error> {
    let mut rest = params.clone();
    let backend = rest
        .remove(crate::params::BACKEND_KEY)
        .map(|b| {
            BackendName::new(&b).map_err(|e| {
                e.context(format!(
                    "VolumeSnapshotClass parameter {}",
                    crate::params::BACKEND_KEY
                ))
            })
        })
        .transpose()?;
    let meta = SnapshotMeta {
        name: rest.remove(SNAPSHOT_NAME_KEY),
        namespace: rest.remove(SNAPSHOT_NAMESPACE_KEY),
        content_name: rest.remove(SNAPSHOT_CONTENT_NAME_KEY),
    };
    Ok(SnapshotClassParams {
        backend,
        k8s: meta,
        rest,
    })
}

/// A validated CreateSnapshot.
#[derive(Debug, Clone)]
pub struct CreateSnapshot {
    /// The idempotency key chosen by the snapshotter (`snapshot-<uid>`).
    pub name: String,
    /// The backend's own ID of the volume to snapshot.
    pub source_native_id: String,
    /// The Kubernetes objects the snapshot is for, to tag cloud resources.
    pub k8s: SnapshotMeta,
    /// The backend's own parameters, for it to parse (and reject unknown keys).
    pub parameters: BTreeMap<String, String>,
    /// CSI secrets sent with the request.
    pub secrets: Secrets,
}

/// A snapshot as the controller reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The backend's own ID, encoded into the CSI snapshot ID by the daemon.
    pub native_id: String,
    /// The backend's own ID of the volume it was taken of.
    pub source_native_id: String,
    /// The size of the source when it was taken: a volume made from it is at least this big.
    pub size_bytes: u64,
    /// When it was taken.
    pub created_at: SystemTime,
    /// Whether a volume can be made from it now.
    pub ready: bool,
}

/// One page of ListSnapshots.
#[derive(Debug, Clone, Default)]
pub struct SnapshotPage {
    /// The snapshots on this page.
    pub entries: Vec<Snapshot>,
    /// Token for the next page, if any.
    pub next_token: Option<String>,
}

/// What a new volume starts with, when not empty: the backend's own ID of a snapshot or of a
/// volume (a clone). The source is on the same backend instance as the new volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// Restore this snapshot.
    Snapshot(String),
    /// Copy this volume.
    Volume(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_ids_round_trip_and_say_what_they_are() {
        let id: SnapshotId = "v1:evs-default:1f2e".parse().unwrap();
        assert_eq!(
            (id.backend().as_str(), id.native()),
            ("evs-default", "1f2e")
        );
        assert_eq!(id.to_string(), "v1:evs-default:1f2e");
        for bad in ["1f2e", "v2:evs:x", "v1:evs:", "v1:EVS:x"] {
            let err = bad.parse::<SnapshotId>().unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(err.to_string().contains("snapshot ID"), "{err}");
            assert!(!err.to_string().contains("volume"), "{err}");
        }
        let name = BackendName::new("evs").unwrap();
        assert!(SnapshotId::new(name.clone(), "a:b").is_err());
        assert!(SnapshotId::new(name, &"x".repeat(200)).is_err());
    }

    #[test]
    fn class_parameters_split_into_shared_and_own() {
        let params: BTreeMap<String, String> = [
            (SNAPSHOT_NAME_KEY, "snap-a"),
            (SNAPSHOT_NAMESPACE_KEY, "ns"),
            (SNAPSHOT_CONTENT_NAME_KEY, "snapcontent-1"),
            ("everest.io/backend", "evs-fast"),
            ("everest.io/other", "x"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let SnapshotClassParams {
            backend,
            k8s: meta,
            rest,
        } = split_snapshot_params(&params).unwrap();
        assert_eq!(backend.unwrap().as_str(), "evs-fast");
        assert_eq!(meta.name.as_deref(), Some("snap-a"));
        assert_eq!(meta.namespace.as_deref(), Some("ns"));
        assert_eq!(meta.content_name.as_deref(), Some("snapcontent-1"));
        assert_eq!(rest.keys().collect::<Vec<_>>(), ["everest.io/other"]);
        let bad: BTreeMap<String, String> =
            [("everest.io/backend".to_string(), "Bad_Name".to_string())].into();
        assert_eq!(
            split_snapshot_params(&bad).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
