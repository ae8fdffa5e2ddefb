//! Judging a disk that already exists for a request: does it serve the request, must it be
//! replaced, or is it stuck in a state only an operator can clear.

use everest_backend::backend::CreateVolume;
use everest_backend::capacity::GIB;
use everest_backend::{Error, Result};

use super::placement::requisite_zones;
use super::snapshots::Restore;
use super::{CMK_ID_KEY, ENCRYPTED_KEY, EvsController};
use crate::api::{Volume, VolumeStatus};
use crate::params::EvsParams;

impl EvsController {
    /// Whether an existing disk for the request's name serves it; ALREADY_EXISTS naming the
    /// mismatch (size, type, zone, encryption, source snapshot) when it does not.
    pub(super) fn check_existing(
        &self,
        req: &CreateVolume,
        v: &Volume,
        gib: u64,
        params: &EvsParams,
        restore: Option<&Restore>,
    ) -> Result<()> {
        let wanted_type = match restore {
            Some(r) => r.volume_type.as_str(),
            None => params
                .volume_type
                .as_deref()
                .unwrap_or(&self.config.backend.default_volume_type),
        };
        // A clone's origin is checked before its temporary snapshot is taken (see
        // `clone_source`); that snapshot is made anew on a retry, so it decides nothing here.
        let is_clone = restore.is_some_and(|r| r.clone_of.is_some());
        let wanted_snapshot = restore.map(|r| r.snapshot_id.as_str());
        if !is_clone && v.snapshot_id.as_deref().filter(|s| !s.is_empty()) != wanted_snapshot {
            return Err(Error::AlreadyExists(format!(
                "volume {} already exists as disk {} made from {}, not from {}",
                req.name,
                v.id,
                v.snapshot_id
                    .as_deref()
                    .map_or("no snapshot".to_owned(), |s| format!("snapshot {s}")),
                wanted_snapshot.map_or("no snapshot".to_owned(), |s| format!("snapshot {s}")),
            )));
        }
        if !req.capacity.is_satisfied_by(v.size * GIB) || v.size < gib {
            return Err(Error::AlreadyExists(format!(
                "volume {} already exists as disk {} with {} GiB, which does not match the requested capacity",
                req.name, v.id, v.size
            )));
        }
        if v.volume_type != wanted_type {
            return Err(Error::AlreadyExists(format!(
                "volume {} already exists as disk {} of type {}, not {wanted_type}",
                req.name, v.id, v.volume_type
            )));
        }
        if let Some(fixed) = params
            .availability_zone
            .as_ref()
            .filter(|z| **z != v.availability_zone)
        {
            return Err(Error::AlreadyExists(format!(
                "volume {} already exists as disk {} in zone {}, not in the StorageClass zone {fixed}",
                req.name, v.id, v.availability_zone
            )));
        }
        let requisite = requisite_zones(req);
        if !requisite.is_empty() && !requisite.contains(&v.availability_zone) {
            return Err(Error::AlreadyExists(format!(
                "volume {} already exists as disk {} in zone {}, which is not among the zones the claim can use ({})",
                req.name,
                v.id,
                v.availability_zone,
                requisite.join(", ")
            )));
        }
        // Only a requested key is checked: a disk encrypted without one being asked for (say, by
        // an account-wide default) still serves the request.
        if let Some(wanted) = &params.kms_key_id {
            let key = v.metadata.get(CMK_ID_KEY).filter(|k| !k.is_empty());
            let encrypted =
                key.is_some() || v.metadata.get(ENCRYPTED_KEY).map(String::as_str) == Some("1");
            match key {
                Some(key) if key == wanted => {}
                Some(key) => {
                    return Err(Error::AlreadyExists(format!(
                        "volume {} already exists as disk {} encrypted with KMS key {key}, not {wanted}",
                        req.name, v.id
                    )));
                }
                None => {
                    let what = if encrypted {
                        "encrypted with no recorded KMS key"
                    } else {
                        "not encrypted"
                    };
                    return Err(Error::AlreadyExists(format!(
                        "volume {} already exists as disk {}, {what}; the StorageClass asks for KMS key {wanted}",
                        req.name, v.id
                    )));
                }
            }
        }
        Ok(())
    }
}

/// A disk found by request name that CreateVolume must replace rather than return: its creation
/// failed (`error`, which holds no data), or such a disk is already being removed (`deleting`, left
/// by an earlier attempt that timed out while waiting for the removal).
pub(super) fn is_failed_create(v: &Volume) -> bool {
    matches!(v.status, VolumeStatus::Error | VolumeStatus::Deleting)
}

/// A disk in an `error_*` state the cloud does not leave by itself (a failed delete or extend):
/// retrying cannot help, so the caller gets FAILED_PRECONDITION saying what the operator must do.
pub(super) fn stuck_in_error(v: &Volume, rpc: &str) -> Error {
    let (failed, remedy) = match v.status {
        VolumeStatus::ErrorDeleting => (
            "the cloud failed to delete it",
            "ask the cloud provider's support to finish the deletion or reset the disk to available \
             (or delete it in the cloud console); DeleteVolume succeeds once the disk is gone or deletable",
        ),
        VolumeStatus::ErrorExtending => (
            "the cloud failed to extend it",
            "ask the cloud provider's support to reset the disk to available (its data is kept); \
             the resize is retried after that",
        ),
        _ => (
            "a cloud operation on it failed",
            "ask the cloud provider's support to reset the disk to available, then retry",
        ),
    };
    Error::FailedPrecondition(format!(
        "{rpc}: disk {} is in status {} ({failed}, and it stays so until someone acts): {remedy}",
        v.id,
        v.status.as_str()
    ))
}
