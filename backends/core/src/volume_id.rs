//! Volume IDs: `v1:<backend instance>:<native id>`.
//!
//! The ID carries the backend instance so that calls without StorageClass parameters
//! (DeleteVolume, ControllerPublish, NodeStage…) route to the right backend. It starts with
//! its format version so the format can change without stranding existing PVs, and it is
//! short and plain enough to write by hand in a PV's `volumeHandle` for static provisioning.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// CSI limits a volume ID to 128 bytes.
pub const MAX_VOLUME_ID_LEN: usize = 128;
const VERSION: &str = "v1";

/// The name of one configured backend instance, e.g. `evs-default`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendName(String);

impl BackendName {
    /// Parses a backend name: 1–40 characters of `a-z`, `0-9` and `-`, starting with a letter.
    pub fn new(name: &str) -> Result<Self, Error> {
        let ok = (1..=40).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(Error::InvalidArgument(format!(
                "backend name {name:?} is invalid: use 1-40 characters of a-z, 0-9 and '-', starting with a letter"
            )))
        }
    }

    /// The name as written in the configuration.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackendName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed volume ID: which backend instance, and the backend's own ID for the volume.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeId {
    backend: BackendName,
    native: String,
}

impl VolumeId {
    /// Builds an ID, checking the native part and the total length.
    pub fn new(backend: BackendName, native: &str) -> Result<Self, Error> {
        let valid_native =
            !native.is_empty() && native.chars().all(|c| c.is_ascii_graphic() && c != ':');
        if !valid_native {
            return Err(Error::InvalidArgument(format!(
                "native volume ID {native:?} must be non-empty printable ASCII without ':' or spaces"
            )));
        }
        let id = Self {
            backend,
            native: native.to_owned(),
        };
        let len = id.to_string().len();
        if len > MAX_VOLUME_ID_LEN {
            return Err(Error::InvalidArgument(format!(
                "volume ID would be {len} bytes, over the CSI limit of {MAX_VOLUME_ID_LEN}"
            )));
        }
        Ok(id)
    }

    /// The backend instance this volume lives on.
    pub fn backend(&self) -> &BackendName {
        &self.backend
    }

    /// The backend's own identifier (disk ID, share ID, bucket…).
    pub fn native(&self) -> &str {
        &self.native
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{VERSION}:{}:{}", self.backend, self.native)
    }
}

impl FromStr for VolumeId {
    type Err = Error;

    /// Parses `v1:<backend>:<native>`; a malformed ID is INVALID_ARGUMENT naming the expected form.
    fn from_str(s: &str) -> Result<Self, Error> {
        let malformed = |why: &str| {
            Error::InvalidArgument(format!(
                "volume ID {s:?} is malformed ({why}); expected v1:<backend>:<native id>, e.g. v1:evs-default:6b5e3c1a-..."
            ))
        };
        if s.len() > MAX_VOLUME_ID_LEN {
            // Not echoed: an oversized ID would make an oversized error message and log line.
            return Err(Error::InvalidArgument(format!(
                "volume ID of {} bytes is longer than the CSI limit of {MAX_VOLUME_ID_LEN}; expected v1:<backend>:<native id>",
                s.len()
            )));
        }
        let mut parts = s.splitn(3, ':');
        let (Some(version), Some(backend), Some(native)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("missing parts"));
        };
        if version != VERSION {
            return Err(malformed(&format!("unknown format version {version:?}")));
        }
        let backend = BackendName::new(backend).map_err(|_| malformed("bad backend name"))?;
        VolumeId::new(backend, native).map_err(|_| malformed("bad native ID"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> BackendName {
        BackendName::new(s).unwrap()
    }

    #[test]
    fn round_trip() {
        let id =
            VolumeId::new(name("evs-default"), "6b5e3c1a-0f1e-4d2b-9a47-1c2d3e4f5a6b").unwrap();
        let text = id.to_string();
        assert_eq!(text, "v1:evs-default:6b5e3c1a-0f1e-4d2b-9a47-1c2d3e4f5a6b");
        assert_eq!(text.parse::<VolumeId>().unwrap(), id);
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "6b5e3c1a",
            "v1:evs-default",
            "v1:evs-default:",
            "v2:evs-default:abc",
            "v1:EVS:abc",
            "v1:evs:a b",
            "v1:evs:a:b",
            "v1:-evs:abc",
        ] {
            let err = bad.parse::<VolumeId>().unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(
                err.to_string()
                    .contains("expected v1:<backend>:<native id>")
            );
        }
    }

    #[test]
    fn enforces_the_csi_length_limit() {
        let long = "x".repeat(MAX_VOLUME_ID_LEN);
        assert!(VolumeId::new(name("evs"), &long).is_err());
        let fits = "x".repeat(MAX_VOLUME_ID_LEN - "v1:evs:".len());
        let id = VolumeId::new(name("evs"), &fits).unwrap();
        assert_eq!(id.to_string().len(), MAX_VOLUME_ID_LEN);
        assert!(format!("{id}x").parse::<VolumeId>().is_err());
    }

    #[test]
    fn backend_names() {
        assert!(BackendName::new("evs-default").is_ok());
        assert!(BackendName::new("obs2").is_ok());
        for bad in ["", "Evs", "9evs", "evs_1", &"a".repeat(41)] {
            assert!(BackendName::new(bad).is_err(), "{bad:?}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Any text: refused, or an ID that prints back as it was read, within the CSI size.
            #[test]
            fn ids_round_trip_or_are_refused(s in "\\PC{0,140}") {
                if let Ok(id) = s.parse::<VolumeId>() {
                    prop_assert_eq!(id.to_string(), s.clone());
                    prop_assert!(s.len() <= MAX_VOLUME_ID_LEN);
                }
            }

            /// Every ID this driver makes parses back to itself.
            #[test]
            fn made_ids_parse_back(backend in "[a-z][a-z0-9-]{0,39}", native in "[!-9;-~]{1,60}") {
                let name = BackendName::new(&backend).unwrap();
                if let Ok(id) = VolumeId::new(name, &native) {
                    prop_assert_eq!(id.to_string().parse::<VolumeId>().unwrap(), id);
                }
            }
        }
    }
}
