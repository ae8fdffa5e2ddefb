//! The StorageClass parameters of an object volume.

use std::collections::BTreeMap;

use everest_backend::Error;
use everest_backend::params::{self, opt_from_str};
use serde::Deserialize;

use crate::mounter::Mounter;
use crate::volume::{OnDelete, check_bucket_name};

/// How volumes are laid out, chosen with `everest.io/obs-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// A bucket per volume (the default).
    #[default]
    Bucket,
    /// A prefix per volume in the shared bucket named by `everest.io/obs-bucket`.
    Prefix,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bucket" => Ok(Mode::Bucket),
            "prefix" => Ok(Mode::Prefix),
            other => Err(format!("{other:?} is not one of bucket, prefix")),
        }
    }
}

/// Typed parameters; unknown keys are rejected.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ObsParams {
    /// `bucket` (default) or `prefix`.
    #[serde(
        default,
        rename = "everest.io/obs-mode",
        deserialize_with = "opt_from_str"
    )]
    pub mode: Option<Mode>,
    /// The shared bucket of mode `prefix`; it must exist.
    #[serde(default, rename = "everest.io/obs-bucket")]
    pub bucket: Option<String>,
    /// The FUSE mounter on the node (default: the backend's `mounter`).
    #[serde(
        default,
        rename = "everest.io/obs-mounter",
        deserialize_with = "opt_from_str"
    )]
    pub mounter: Option<Mounter>,
    /// `delete` or `retain` (default: the backend's `on_delete`).
    #[serde(
        default,
        rename = "everest.io/on-delete",
        deserialize_with = "opt_from_str"
    )]
    pub on_delete: Option<OnDelete>,
}

impl ObsParams {
    /// Parses and checks the backend-specific parameters.
    pub fn parse(map: &BTreeMap<String, String>, backend: &str) -> Result<Self, Error> {
        let p: ObsParams = params::parse(
            map,
            &format!("StorageClass parameters for backend {backend}"),
        )?;
        match (p.mode.unwrap_or_default(), p.bucket.as_deref()) {
            (Mode::Bucket, Some(_)) => {
                return Err(Error::InvalidArgument(format!(
                    "StorageClass parameter everest.io/obs-bucket is for everest.io/obs-mode=prefix; backend {backend} names each bucket of mode bucket itself"
                )));
            }
            (Mode::Prefix, None) => {
                return Err(Error::InvalidArgument(format!(
                    "StorageClass parameter everest.io/obs-mode=prefix needs everest.io/obs-bucket, the shared bucket (backend {backend})"
                )));
            }
            (Mode::Prefix, Some(b)) => check_bucket_name(b).map_err(|e| {
                Error::InvalidArgument(format!("StorageClass parameter everest.io/obs-bucket: {e}"))
            })?,
            (Mode::Bucket, None) => {}
        }
        Ok(p)
    }

    /// The mode asked for.
    pub fn mode(&self) -> Mode {
        self.mode.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parameters_parse_and_bad_ones_are_refused() {
        let p = ObsParams::parse(&map(&[]), "obs").unwrap();
        assert_eq!(p.mode(), Mode::Bucket);
        let p = ObsParams::parse(
            &map(&[
                ("everest.io/obs-mode", "prefix"),
                ("everest.io/obs-bucket", "shared-data"),
                ("everest.io/on-delete", "retain"),
                ("everest.io/obs-mounter", "s3fs"),
            ]),
            "obs",
        )
        .unwrap();
        assert_eq!(p.mode(), Mode::Prefix);
        assert_eq!(p.on_delete, Some(OnDelete::Retain));
        for bad in [
            &[("everest.io/obs-mode", "share")][..],
            &[("everest.io/obs-mode", "prefix")],
            &[
                ("everest.io/obs-mode", "prefix"),
                ("everest.io/obs-bucket", "Bad_Name"),
            ],
            &[("everest.io/obs-bucket", "shared")],
            &[("everest.io/on-delete", "archive")],
            &[("everest.io/obs-mounter", "goofys")],
            &[("everest.io/typo", "x")],
        ] {
            let err = ObsParams::parse(&map(bad), "obs").unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }
}
