//! The StorageClass parameters of a directory volume.

use std::collections::BTreeMap;

use everest_backend::Error;
use everest_backend::params::{self, opt_from_str};
use serde::Deserialize;

use crate::config::SHARE_TYPES;
use crate::volume::OnDelete;

/// The mode a StorageClass picks with `everest.io/sfs-mode`: a directory per volume.
pub const MODE_SUBDIR: &str = "subdir";
/// The mode a StorageClass picks with `everest.io/sfs-mode`: an SFS Turbo share per volume.
pub const MODE_SHARE: &str = "share";

/// Every parameter of either mode; unknown keys are rejected, and so are keys of the other mode.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct AllParams {
    #[serde(default, rename = "everest.io/sfs-mode")]
    mode: Option<String>,
    #[serde(default, rename = "everest.io/dir-mode")]
    dir_mode: Option<String>,
    #[serde(
        default,
        rename = "everest.io/dir-uid",
        deserialize_with = "opt_from_str"
    )]
    uid: Option<u32>,
    #[serde(
        default,
        rename = "everest.io/dir-gid",
        deserialize_with = "opt_from_str"
    )]
    gid: Option<u32>,
    #[serde(
        default,
        rename = "everest.io/on-delete",
        deserialize_with = "opt_from_str"
    )]
    on_delete: Option<OnDelete>,
    #[serde(default, rename = "everest.io/share-type")]
    share_type: Option<String>,
    #[serde(default, rename = "everest.io/crypt-key-id")]
    crypt_key_id: Option<String>,
}

/// The parameters of one CreateVolume, by mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModeParams {
    /// A directory per volume.
    Subdir(SubdirParams),
    /// An SFS Turbo share per volume.
    Share(ShareParams),
}

/// Which modes the backend instance has configured.
#[derive(Debug, Clone, Copy)]
pub struct Modes {
    /// An NFS server for directories.
    pub subdir: bool,
    /// The SFS Turbo API.
    pub share: bool,
}

impl ModeParams {
    /// Parses the parameters: the mode (`subdir` by default when configured, else `share`),
    /// then that mode's keys; a key of the other mode, or a mode the backend has no
    /// configuration for, is INVALID_ARGUMENT naming it.
    pub fn parse(
        map: &BTreeMap<String, String>,
        backend: &str,
        modes: Modes,
    ) -> Result<Self, Error> {
        let p: AllParams = params::parse(
            map,
            &format!("StorageClass parameters for backend {backend}"),
        )?;
        let mode = match p.mode.as_deref() {
            Some(m) => m,
            None if modes.subdir => MODE_SUBDIR,
            None => MODE_SHARE,
        };
        let bad = |why: String| {
            Error::InvalidArgument(format!(
                "StorageClass parameters for backend {backend}: {why}"
            ))
        };
        let foreign = |keys: &[(&str, bool)], mode: &str| -> Result<(), Error> {
            match keys.iter().find(|(_, set)| *set) {
                Some((key, _)) => Err(bad(format!("{key} does not apply to mode {mode}"))),
                None => Ok(()),
            }
        };
        match mode {
            MODE_SUBDIR if modes.subdir => {
                foreign(
                    &[
                        ("everest.io/share-type", p.share_type.is_some()),
                        ("everest.io/crypt-key-id", p.crypt_key_id.is_some()),
                    ],
                    mode,
                )?;
                let sub = SubdirParams {
                    dir_mode: p.dir_mode,
                    uid: p.uid,
                    gid: p.gid,
                    on_delete: p.on_delete,
                };
                sub.mode_bits()?;
                Ok(ModeParams::Subdir(sub))
            }
            MODE_SHARE if modes.share => {
                foreign(
                    &[
                        ("everest.io/dir-mode", p.dir_mode.is_some()),
                        ("everest.io/dir-uid", p.uid.is_some()),
                        ("everest.io/dir-gid", p.gid.is_some()),
                    ],
                    mode,
                )?;
                if p.on_delete == Some(OnDelete::Archive) {
                    return Err(bad(
                        "everest.io/on-delete=archive applies to directories only; a share is \
                         deleted or retained"
                            .into(),
                    ));
                }
                if let Some(t) = p.share_type.as_deref()
                    && !SHARE_TYPES.contains(&t)
                {
                    return Err(bad(format!(
                        "everest.io/share-type={t:?} is not one of {}",
                        SHARE_TYPES.join(", ")
                    )));
                }
                Ok(ModeParams::Share(ShareParams {
                    share_type: p.share_type,
                    crypt_key_id: p.crypt_key_id,
                    on_delete: p.on_delete,
                }))
            }
            MODE_SUBDIR | MODE_SHARE => Err(bad(format!(
                "everest.io/sfs-mode={mode}, but the backend has no configuration for it ({})",
                if mode == MODE_SUBDIR {
                    "set server and export"
                } else {
                    "add a share table"
                }
            ))),
            other => Err(bad(format!(
                "everest.io/sfs-mode={other:?} is not one of {MODE_SUBDIR}, {MODE_SHARE}"
            ))),
        }
    }
}

/// The parameters of a directory volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubdirParams {
    /// The new directory's permission bits, in octal (`0770`, default `0777`).
    pub dir_mode: Option<String>,
    /// Its owner.
    pub uid: Option<u32>,
    /// Its group.
    pub gid: Option<u32>,
    /// `delete`, `retain` or `archive` (default: the backend's `on_delete`).
    pub on_delete: Option<OnDelete>,
}

/// The parameters of a share volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShareParams {
    /// `STANDARD` or `PERFORMANCE` (default: the backend's `share_type`).
    pub share_type: Option<String>,
    /// A KMS key the share is encrypted with.
    pub crypt_key_id: Option<String>,
    /// `delete` or `retain` (default: the backend's `on_delete`, `archive` read as `retain`).
    pub on_delete: Option<OnDelete>,
}

impl SubdirParams {
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

    const BOTH: Modes = Modes {
        subdir: true,
        share: true,
    };

    fn subdir(p: ModeParams) -> SubdirParams {
        match p {
            ModeParams::Subdir(s) => s,
            other => panic!("not subdir: {other:?}"),
        }
    }

    #[test]
    fn parameters_parse_and_bad_ones_are_named() {
        let p = subdir(
            ModeParams::parse(
                &map(&[
                    ("everest.io/dir-mode", "0750"),
                    ("everest.io/dir-uid", "1000"),
                    ("everest.io/on-delete", "archive"),
                ]),
                "nfs",
                BOTH,
            )
            .unwrap(),
        );
        assert_eq!(p.mode_bits().unwrap(), 0o750);
        assert_eq!((p.uid, p.on_delete), (Some(1000), Some(OnDelete::Archive)));
        assert_eq!(SubdirParams::default().mode_bits().unwrap(), 0o777);
        let share = ModeParams::parse(
            &map(&[
                ("everest.io/sfs-mode", "share"),
                ("everest.io/share-type", "PERFORMANCE"),
                ("everest.io/on-delete", "retain"),
            ]),
            "nfs",
            BOTH,
        )
        .unwrap();
        assert_eq!(
            share,
            ModeParams::Share(ShareParams {
                share_type: Some("PERFORMANCE".into()),
                crypt_key_id: None,
                on_delete: Some(OnDelete::Retain),
            })
        );
        // Without an NFS server the default mode is share.
        let share_only = Modes {
            subdir: false,
            share: true,
        };
        assert!(matches!(
            ModeParams::parse(&map(&[]), "nfs", share_only).unwrap(),
            ModeParams::Share(_)
        ));
        for (pairs, modes) in [
            (&[("everest.io/dir-mode", "999")][..], BOTH),
            (&[("everest.io/dir-mode", "17777")][..], BOTH),
            (&[("everest.io/dir-uid", "-1")][..], BOTH),
            (&[("everest.io/on-delete", "keep")][..], BOTH),
            (&[("everest.io/sfs-mode", "bucket")][..], BOTH),
            (&[("everest.io/typo", "x")][..], BOTH),
            (&[("everest.io/share-type", "STANDARD")][..], BOTH),
            (
                &[
                    ("everest.io/sfs-mode", "share"),
                    ("everest.io/dir-mode", "0700"),
                ][..],
                BOTH,
            ),
            (
                &[
                    ("everest.io/sfs-mode", "share"),
                    ("everest.io/on-delete", "archive"),
                ][..],
                BOTH,
            ),
            (
                &[
                    ("everest.io/sfs-mode", "share"),
                    ("everest.io/share-type", "GOLD"),
                ][..],
                BOTH,
            ),
            (
                &[("everest.io/sfs-mode", "share")][..],
                Modes {
                    subdir: true,
                    share: false,
                },
            ),
            (&[("everest.io/sfs-mode", "subdir")][..], share_only),
        ] {
            let err = ModeParams::parse(&map(pairs), "nfs", modes).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{pairs:?}");
            assert!(err.to_string().contains("everest.io/"), "{err}");
        }
    }
}
