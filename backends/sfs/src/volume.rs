//! What a file volume is, in its native volume ID (DeleteVolume gets no parameters, so the
//! delete policy travels in it too); a person can write one for static provisioning:
//! - a directory under the backend's base path, `<d|r|a>~<directory>`
//!   (`v1:nfs-home:r~projects/data` keeps an existing directory when the PV goes);
//! - an SFS Turbo share, `s<d|r>~<share id>` (`v1:sfs-turbo:sr~<uuid>` keeps the share).

use std::fmt;
use std::str::FromStr;

use everest_backend::Error;
use everest_backend::marker::DeletePolicy;

/// What DeleteVolume does with the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDelete {
    /// Removes it and everything in it.
    Delete,
    /// Leaves it as it is.
    Retain,
    /// Renames it to `archived-<name>` beside where it was.
    Archive,
}

impl OnDelete {
    /// The policy as the marker records it.
    pub fn policy(self) -> DeletePolicy {
        match self {
            OnDelete::Delete => DeletePolicy::Delete,
            OnDelete::Retain => DeletePolicy::Retain,
            OnDelete::Archive => DeletePolicy::Archive,
        }
    }

    /// The policy a marker records.
    pub fn from_policy(policy: DeletePolicy) -> Self {
        match policy {
            DeletePolicy::Delete => OnDelete::Delete,
            DeletePolicy::Retain => OnDelete::Retain,
            DeletePolicy::Archive => OnDelete::Archive,
        }
    }

    fn letter(self) -> char {
        match self {
            OnDelete::Delete => 'd',
            OnDelete::Retain => 'r',
            OnDelete::Archive => 'a',
        }
    }
}

impl FromStr for OnDelete {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "delete" => Ok(OnDelete::Delete),
            "retain" => Ok(OnDelete::Retain),
            "archive" => Ok(OnDelete::Archive),
            other => Err(format!("{other:?} is not one of delete, retain, archive")),
        }
    }
}

/// Longest directory path accepted (each component also at most 255 bytes, as NFS allows).
const MAX_PATH: usize = 100;

/// A directory volume: the path under the base directory, and the delete policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirVolume {
    /// What DeleteVolume does.
    pub on_delete: OnDelete,
    /// `/`-separated components, each checked by [`check_component`].
    pub path: String,
}

impl DirVolume {
    /// A volume for the CreateVolume request `name` (one component).
    pub fn for_request(name: &str, on_delete: OnDelete) -> Result<Self, Error> {
        check_component(name).map_err(|why| {
            Error::InvalidArgument(format!(
                "volume name {name:?} cannot name a directory: {why}"
            ))
        })?;
        Ok(Self {
            on_delete,
            path: name.to_owned(),
        })
    }

    /// The path's components, in order.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.path.split('/')
    }
}

impl fmt::Display for DirVolume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}~{}", self.on_delete.letter(), self.path)
    }
}

impl FromStr for DirVolume {
    type Err = Error;

    /// Parses a native ID; anything else is NOT_FOUND, since no such volume can exist.
    fn from_str(s: &str) -> Result<Self, Error> {
        let not_ours = |why: String| {
            Error::NotFound(format!(
                "no such volume: {s:?} is not a directory volume ({why}); expected <d|r|a>~<directory>"
            ))
        };
        let (policy, path) = s.split_once('~').ok_or_else(|| not_ours("no '~'".into()))?;
        let on_delete = match policy {
            "d" => OnDelete::Delete,
            "r" => OnDelete::Retain,
            "a" => OnDelete::Archive,
            other => return Err(not_ours(format!("unknown policy {other:?}"))),
        };
        if path.len() > MAX_PATH {
            return Err(not_ours("too long".into()));
        }
        for c in path.split('/') {
            check_component(c).map_err(not_ours)?;
        }
        Ok(Self {
            on_delete,
            path: path.to_owned(),
        })
    }
}

/// A share volume: the share's ID, and whether DeleteVolume deletes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareVolume {
    /// `Delete` or `Retain`.
    pub on_delete: OnDelete,
    /// The share's UUID.
    pub id: String,
}

impl fmt::Display for ShareVolume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}~{}", self.on_delete.letter(), self.id)
    }
}

/// Longest share ID accepted (a UUID is 36).
const MAX_SHARE_ID: usize = 64;

/// A file volume of either mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileVolume {
    /// A directory on an existing NFS server.
    Dir(DirVolume),
    /// An SFS Turbo share.
    Share(ShareVolume),
}

impl fmt::Display for FileVolume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileVolume::Dir(d) => d.fmt(f),
            FileVolume::Share(s) => s.fmt(f),
        }
    }
}

impl FromStr for FileVolume {
    type Err = Error;

    /// Parses a native ID of either mode; anything else is NOT_FOUND.
    fn from_str(s: &str) -> Result<Self, Error> {
        let Some(rest) = s.strip_prefix('s') else {
            return s.parse().map(FileVolume::Dir);
        };
        let not_ours = |why: &str| {
            Error::NotFound(format!(
                "no such volume: {s:?} is not a file volume ({why}); expected <d|r|a>~<directory> or s<d|r>~<share id>"
            ))
        };
        let (policy, id) = rest.split_once('~').ok_or_else(|| not_ours("no '~'"))?;
        let on_delete = match policy {
            "d" => OnDelete::Delete,
            "r" => OnDelete::Retain,
            _ => return Err(not_ours("unknown share policy")),
        };
        if id.is_empty()
            || id.len() > MAX_SHARE_ID
            || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(not_ours("a share id is letters, digits and '-'"));
        }
        Ok(FileVolume::Share(ShareVolume {
            on_delete,
            id: id.to_owned(),
        }))
    }
}

/// One path component safe to hand to an NFS server: letters, digits, `.`, `_`, `-`; never `.`
/// or `..` or a leading dot (no hidden or parent directories), never empty.
pub fn check_component(c: &str) -> Result<(), String> {
    if c.is_empty() {
        return Err("empty path component".into());
    }
    if c.len() > 255 || c.starts_with('.') {
        return Err(format!("{c:?} is over-long or starts with '.'"));
    }
    if !c
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'))
    {
        return Err(format!(
            "{c:?} holds a character other than letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_traversal_is_refused() {
        let v = DirVolume::for_request("pvc-1a2b", OnDelete::Archive).unwrap();
        assert_eq!(v.to_string(), "a~pvc-1a2b");
        assert_eq!(v.to_string().parse::<DirVolume>().unwrap(), v);
        let stat: DirVolume = "r~projects/data".parse().unwrap();
        assert_eq!(stat.on_delete, OnDelete::Retain);
        assert_eq!(stat.components().collect::<Vec<_>>(), ["projects", "data"]);
        for bad in [
            "",
            "..",
            ".",
            "../etc",
            "a/b",
            "a\0b",
            "a b",
            ".hidden",
            &"x".repeat(256),
        ] {
            let err = DirVolume::for_request(bad, OnDelete::Delete).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
        for bad in [
            "pvc-1",
            "x~pvc",
            "d~",
            "d~../etc",
            "d~a//b",
            "d~/abs",
            "d~a/./b",
            "d~a/..",
            &format!("d~{}", "a/".repeat(60)),
        ] {
            let err = bad.parse::<DirVolume>().unwrap_err();
            assert_eq!(err.code(), tonic::Code::NotFound, "{bad:?}");
        }
        assert!("keep".parse::<OnDelete>().is_err());
    }

    #[test]
    fn share_ids_round_trip_and_bad_ones_are_not_found() {
        let id = "sr~6f1c2b9e-0d4a-4f57-9a3e-1b2c3d4e5f60";
        let v: FileVolume = id.parse().unwrap();
        assert_eq!(
            v,
            FileVolume::Share(ShareVolume {
                on_delete: OnDelete::Retain,
                id: "6f1c2b9e-0d4a-4f57-9a3e-1b2c3d4e5f60".into(),
            })
        );
        assert_eq!(v.to_string(), id);
        assert!(matches!(
            "d~pvc-1".parse::<FileVolume>().unwrap(),
            FileVolume::Dir(_)
        ));
        for bad in [
            "s",
            "sd~",
            "sa~x",
            "sx~x",
            "sd~a/b",
            "sd~../x",
            &format!("sd~{}", "a".repeat(65)),
        ] {
            let err = bad.parse::<FileVolume>().unwrap_err();
            assert_eq!(err.code(), tonic::Code::NotFound, "{bad:?}");
        }
    }
}
