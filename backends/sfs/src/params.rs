//! The StorageClass parameters of a directory volume.

use std::collections::BTreeMap;

use everest_backend::Error;
use everest_backend::params::{self, opt_from_str};
use serde::Deserialize;

use crate::volume::OnDelete;

/// The mode a StorageClass picks with `everest.io/sfs-mode`.
pub const MODE_SUBDIR: &str = "subdir";

/// Typed parameters; unknown keys are rejected.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SubdirParams {
    /// `subdir` (the default); `share` (a share per volume) is not offered yet.
    #[serde(default, rename = "everest.io/sfs-mode")]
    pub mode: Option<String>,
    /// The new directory's permission bits, in octal (`0770`, default `0777`).
    #[serde(default, rename = "everest.io/dir-mode")]
    pub dir_mode: Option<String>,
    /// Its owner.
    #[serde(
        default,
        rename = "everest.io/dir-uid",
        deserialize_with = "opt_from_str"
    )]
    pub uid: Option<u32>,
    /// Its group.
    #[serde(
        default,
        rename = "everest.io/dir-gid",
        deserialize_with = "opt_from_str"
    )]
    pub gid: Option<u32>,
    /// `delete`, `retain` or `archive` (default: the backend's `on_delete`).
    #[serde(
        default,
        rename = "everest.io/on-delete",
        deserialize_with = "opt_from_str"
    )]
    pub on_delete: Option<OnDelete>,
}

impl SubdirParams {
    /// Parses and checks the backend-specific parameters.
    pub fn parse(map: &BTreeMap<String, String>, backend: &str) -> Result<Self, Error> {
        let p: SubdirParams = params::parse(
            map,
            &format!("StorageClass parameters for backend {backend}"),
        )?;
        if let Some(mode) = p.mode.as_deref()
            && mode != MODE_SUBDIR
        {
            return Err(Error::InvalidArgument(format!(
                "StorageClass parameter everest.io/sfs-mode={mode:?}: backend {backend} offers only {MODE_SUBDIR:?} (a directory per volume)"
            )));
        }
        p.mode_bits()?;
        Ok(p)
    }

    /// The permission bits for the new directory.
    pub fn mode_bits(&self) -> Result<u32, Error> {
        match self.dir_mode.as_deref() {
            None => Ok(0o777),
            Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                .ok()
                .filter(|bits| *bits <= 0o7777)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "StorageClass parameter everest.io/dir-mode={m:?} is not an octal mode such as 0770"
                    ))
                }),
        }
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
    fn parameters_parse_and_bad_ones_are_named() {
        let p = SubdirParams::parse(
            &map(&[
                ("everest.io/dir-mode", "0750"),
                ("everest.io/dir-uid", "1000"),
                ("everest.io/on-delete", "archive"),
            ]),
            "nfs",
        )
        .unwrap();
        assert_eq!(p.mode_bits().unwrap(), 0o750);
        assert_eq!((p.uid, p.on_delete), (Some(1000), Some(OnDelete::Archive)));
        assert_eq!(SubdirParams::default().mode_bits().unwrap(), 0o777);
        for (k, v) in [
            ("everest.io/dir-mode", "999"),
            ("everest.io/dir-mode", "17777"),
            ("everest.io/dir-uid", "-1"),
            ("everest.io/on-delete", "keep"),
            ("everest.io/sfs-mode", "share"),
            ("everest.io/typo", "x"),
        ] {
            let err = SubdirParams::parse(&map(&[(k, v)]), "nfs").unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{k}={v}");
        }
    }
}
