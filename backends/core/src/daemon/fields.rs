//! Request fields both daemons parse the same way.

use std::collections::{BTreeMap, HashMap};

use crate::error::Error;
use crate::registry::Registry;
use crate::volume_id::{MAX_VOLUME_ID_LEN, VolumeId};

use super::telemetry::NO_BACKEND;

/// Checks that a request carries a `volume_id` of a size CSI allows: empty or over-long is
/// INVALID_ARGUMENT naming the field. What it names is decided later, by [`volume_id`].
pub fn require_volume_id(raw: &str) -> Result<(), Error> {
    if raw.is_empty() {
        return Err(Error::InvalidArgument("volume_id is required".into()));
    }
    if raw.len() > MAX_VOLUME_ID_LEN {
        // Not echoed: an oversized ID would make an oversized error message and log line.
        return Err(Error::InvalidArgument(format!(
            "volume_id of {} bytes is longer than the CSI limit of {MAX_VOLUME_ID_LEN}",
            raw.len()
        )));
    }
    Ok(())
}

/// Parses a request's `volume_id`. Empty or over-long is INVALID_ARGUMENT (see
/// [`require_volume_id`]); an ID that is not in Everest's `v1:<backend>:<native>` form cannot
/// name any volume of ours, so it is NOT_FOUND, as CSI asks for a volume that does not exist
/// (DeleteVolume and ControllerUnpublishVolume turn that into success).
pub fn volume_id(raw: &str) -> Result<VolumeId, Error> {
    require_volume_id(raw)?;
    raw.parse::<VolumeId>()
        .map_err(|e| Error::NotFound(format!("no such volume: {e}")))
}

/// Whether an error from [`volume_id`] or a backend means "no such volume", which the calls
/// that remove something (DeleteVolume, ControllerUnpublishVolume) answer with success.
pub fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::NotFound(_))
}

/// Copies a proto map into the ordered map the domain uses.
pub fn ordered(map: HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

/// A byte count as CSI's signed field; nothing real is that large, so saturate rather than fail.
pub fn signed_bytes(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The `backend` metrics label for a request's parsed volume ID: its backend when that is
/// configured, else [`NO_BACKEND`] (no ID, or an invalid request), so made-up IDs cannot grow the
/// label set.
pub fn backend_label<B: ?Sized>(registry: &Registry<B>, id: Option<&VolumeId>) -> String {
    id.filter(|id| registry.for_volume(id).is_ok())
        .map_or_else(|| NO_BACKEND.to_owned(), |id| id.backend().to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::volume_id::BackendName;

    #[test]
    fn empty_or_oversized_ids_are_invalid_and_foreign_ones_do_not_exist() {
        for bad in ["".to_owned(), "x".repeat(MAX_VOLUME_ID_LEN + 1)] {
            let err = volume_id(&bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.to_string().contains("volume_id"), "{err}");
        }
        for foreign in ["disk-1", "v2:evs:x", "v1:EVS:x", "some-vol-id"] {
            let err = volume_id(foreign).unwrap_err();
            assert_eq!(err.code(), tonic::Code::NotFound, "{foreign}");
            assert!(is_not_found(&err));
            assert!(err.to_string().starts_with("no such volume"), "{err}");
        }
        assert_eq!(volume_id("v1:evs:d1").unwrap().native(), "d1");
        assert!(require_volume_id(&"x".repeat(MAX_VOLUME_ID_LEN)).is_ok());
    }

    #[test]
    fn labels_only_configured_backends() {
        let mut r: Registry<str> = Registry::new(None);
        r.insert(BackendName::new("evs").unwrap(), Arc::from("x"));
        let label = |raw: &str| backend_label(&r, raw.parse::<VolumeId>().ok().as_ref());
        assert_eq!(label("v1:evs:d1"), "evs");
        assert_eq!(label("v1:made-up:d1"), NO_BACKEND);
        assert_eq!(label("garbage"), NO_BACKEND);
        assert_eq!(signed_bytes(u64::MAX), i64::MAX);
    }
}
