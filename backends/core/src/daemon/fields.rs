//! Request fields both daemons parse the same way.

use std::collections::{BTreeMap, HashMap};

use crate::error::Error;
use crate::registry::Registry;
use crate::volume_id::VolumeId;

use super::telemetry::NO_BACKEND;

/// Parses a request's `volume_id`; empty or malformed is INVALID_ARGUMENT naming the field.
pub fn volume_id(raw: &str) -> Result<VolumeId, Error> {
    if raw.is_empty() {
        return Err(Error::InvalidArgument("volume_id is required".into()));
    }
    raw.parse::<VolumeId>().map_err(|e| e.context("volume_id"))
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
    fn volume_id_names_the_field() {
        for bad in ["", "disk-1", "v2:evs:x"] {
            let err = volume_id(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.to_string().contains("volume_id"), "{err}");
        }
        assert_eq!(volume_id("v1:evs:d1").unwrap().native(), "d1");
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
