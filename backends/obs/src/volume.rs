//! What an object volume is, and the names it lives under.
//!
//! The native volume ID is `<policy>~<bucket>` (a whole bucket) or `<policy>~<bucket>/<prefix>`
//! (the keys under `<prefix>/` in a bucket), the policy being `d` (DeleteVolume removes what
//! Everest made) or `r` (DeleteVolume keeps everything). DeleteVolume gets no parameters, so the
//! policy travels in the ID; a person can write one for static provisioning:
//! `v1:obs-minio:r~team-data` or `v1:obs-minio:r~shared/projects/alpha`.

use std::fmt;
use std::str::FromStr;

use everest_backend::Error;
use everest_backend::marker::DeletePolicy;
use sha2::{Digest, Sha256};

/// What DeleteVolume does with the volume's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDelete {
    /// Empties and removes the bucket (or the prefix) Everest made; never one it did not make.
    Delete,
    /// Leaves everything as it is.
    Retain,
}

impl OnDelete {
    /// The policy as the marker records it.
    pub fn policy(self) -> DeletePolicy {
        match self {
            OnDelete::Delete => DeletePolicy::Delete,
            OnDelete::Retain => DeletePolicy::Retain,
        }
    }

    fn letter(self) -> char {
        match self {
            OnDelete::Delete => 'd',
            OnDelete::Retain => 'r',
        }
    }
}

impl FromStr for OnDelete {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "delete" => Ok(OnDelete::Delete),
            "retain" => Ok(OnDelete::Retain),
            other => Err(format!("{other:?} is not one of delete, retain")),
        }
    }
}

/// An object volume: a bucket, or a prefix in one, and its delete policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObsVolume {
    /// What DeleteVolume does.
    pub on_delete: OnDelete,
    /// The bucket.
    pub bucket: String,
    /// `/`-separated components under the bucket, without a trailing `/`; `None` for the
    /// whole bucket.
    pub prefix: Option<String>,
}

impl ObsVolume {
    /// The key prefix of the volume's objects (`<prefix>/`), or `""` for a whole bucket.
    pub fn key_prefix(&self) -> String {
        self.prefix
            .as_deref()
            .map_or_else(String::new, |p| format!("{p}/"))
    }

    /// The policy as a parameter writes it.
    pub(crate) fn on_delete_word(&self) -> &'static str {
        match self.on_delete {
            OnDelete::Delete => "delete",
            OnDelete::Retain => "retain",
        }
    }

    /// The layout, for the fingerprint of a CreateVolume: a whole bucket, or a prefix in
    /// the bucket named.
    pub(crate) fn bucket_and_mode(&self) -> String {
        match &self.prefix {
            Some(_) => format!("prefix:{}", self.bucket),
            None => "bucket".to_owned(),
        }
    }
}

impl fmt::Display for ObsVolume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}~{}", self.on_delete.letter(), self.bucket)?;
        if let Some(p) = &self.prefix {
            write!(f, "/{p}")?;
        }
        Ok(())
    }
}

impl FromStr for ObsVolume {
    type Err = Error;

    /// Parses a native ID; anything else is NOT_FOUND, since no such volume can exist.
    fn from_str(s: &str) -> Result<Self, Error> {
        let not_ours = |why: String| {
            Error::NotFound(format!(
                "no such volume: {s:?} is not an object volume ({why}); expected <d|r>~<bucket>[/<prefix>]"
            ))
        };
        let (policy, rest) = s.split_once('~').ok_or_else(|| not_ours("no '~'".into()))?;
        let on_delete = match policy {
            "d" => OnDelete::Delete,
            "r" => OnDelete::Retain,
            other => return Err(not_ours(format!("unknown policy {other:?}"))),
        };
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b, Some(p)),
            None => (rest, None),
        };
        check_bucket_name(bucket).map_err(not_ours)?;
        if let Some(p) = prefix {
            check_prefix(p).map_err(not_ours)?;
        }
        Ok(Self {
            on_delete,
            bucket: bucket.to_owned(),
            prefix: prefix.map(str::to_owned),
        })
    }
}

/// Hex of the SHA-256 of `text`, cut to `len` characters.
pub fn short_hash(text: &str, len: usize) -> String {
    let mut h = hex::encode(Sha256::digest(text.as_bytes()));
    h.truncate(len);
    h
}

/// `text` lowercased with every run of other characters than letters and digits made one `-`,
/// without a leading or trailing `-`.
fn sanitize(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_owned()
}

/// The bucket a CreateVolume named `name` gets in mode `bucket`: `<prefix>-<name>-<hash>`,
/// the name made lowercase and cut to fit 63 characters, the hash (of the whole name) keeping
/// two names that sanitize alike apart. Always a valid S3 bucket name.
pub fn bucket_for_request(bucket_prefix: &str, name: &str) -> String {
    let hash = short_hash(name, 8);
    // 63 = prefix + '-' + middle + '-' + 8
    let room = 63 - bucket_prefix.len() - 10;
    let mut middle = sanitize(name);
    middle.truncate(room);
    let middle = middle.trim_end_matches('-');
    if middle.is_empty() {
        format!("{bucket_prefix}-{hash}")
    } else {
        format!("{bucket_prefix}-{middle}-{hash}")
    }
}

/// The prefix a CreateVolume named `name` gets in mode `prefix`: the name itself when it is a
/// plain path component of at most 63 characters (`pvc-<uid>`), else `<sanitized>-<hash>`.
pub fn prefix_for_request(name: &str) -> String {
    if name.len() <= 63 && check_component(name).is_ok() {
        return name.to_owned();
    }
    let mut middle = sanitize(name);
    middle.truncate(40);
    let middle = middle.trim_end_matches('-');
    let hash = short_hash(name, 8);
    if middle.is_empty() {
        format!("vol-{hash}")
    } else {
        format!("{middle}-{hash}")
    }
}

/// S3's bucket naming rules (the strict, DNS-compatible ones every S3 service accepts): 3 to 63
/// lowercase letters, digits, `-` and `.`, starting and ending with a letter or digit, no `..`,
/// not an IP address, none of the reserved prefixes and suffixes.
pub fn check_bucket_name(b: &str) -> Result<(), String> {
    if !(3..=63).contains(&b.len()) {
        return Err(format!("bucket name {b:?} must be 3 to 63 characters"));
    }
    if !b
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    {
        return Err(format!(
            "bucket name {b:?} may hold only lowercase letters, digits, '-' and '.'"
        ));
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !edge_ok(b.chars().next()) || !edge_ok(b.chars().last()) {
        return Err(format!(
            "bucket name {b:?} must start and end with a letter or digit"
        ));
    }
    if b.contains("..") || b.contains(".-") || b.contains("-.") {
        return Err(format!("bucket name {b:?} holds '..', '.-' or '-.'"));
    }
    if b.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(format!("bucket name {b:?} is an IP address"));
    }
    if b.starts_with("xn--")
        || b.starts_with("sthree-")
        || b.ends_with("-s3alias")
        || b.ends_with("--ol-s3")
    {
        return Err(format!(
            "bucket name {b:?} uses a reserved prefix or suffix"
        ));
    }
    Ok(())
}

/// A key prefix: `/`-separated path components (see [`check_component`]), no empty one, at
/// most 100 characters.
pub fn check_prefix(p: &str) -> Result<(), String> {
    if p.len() > 100 {
        return Err(format!("prefix {p:?} is longer than 100 characters"));
    }
    p.split('/').try_for_each(check_component)
}

/// One path component that is the same in S3 and through a FUSE mount: letters, digits, `.`,
/// `_`, `-`; not empty, no leading dot (no `.`, `..` or hidden names).
pub fn check_component(c: &str) -> Result<(), String> {
    if c.is_empty() {
        return Err("empty path component".into());
    }
    if c.starts_with('.') {
        return Err(format!("{c:?} starts with '.'"));
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

/// An endpoint URL: `http://` or `https://`, a host (and port), no credentials, query or
/// characters that could end an option on a mounter's command line.
pub fn check_endpoint(e: &str) -> Result<(), String> {
    let rest = e
        .strip_prefix("https://")
        .or_else(|| e.strip_prefix("http://"))
        .ok_or_else(|| format!("{e:?} does not start with http:// or https://"))?;
    let host = rest.trim_end_matches('/');
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !ok {
        return Err(format!(
            "{e:?} must be a scheme and a host[:port] only (no user, path, query or commas)"
        ));
    }
    Ok(())
}

/// A region name: letters, digits and `-`.
pub fn check_region(r: &str) -> Result<(), String> {
    let ok =
        !r.is_empty() && r.len() <= 40 && r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !ok {
        return Err(format!("{r:?} is not a region name (letters, digits, '-')"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_foreign_ones_are_not_found() {
        for id in [
            "d~everest-pvc-1-abcd1234",
            "r~shared/pvc-1",
            "r~team.data/a/b_c/d-e",
        ] {
            let v: ObsVolume = id.parse().unwrap();
            assert_eq!(v.to_string(), id);
        }
        let v: ObsVolume = "r~shared/a/b".parse().unwrap();
        assert_eq!(
            (v.bucket.as_str(), v.key_prefix().as_str()),
            ("shared", "a/b/")
        );
        assert_eq!(v.on_delete, OnDelete::Retain);
        for bad in [
            "",
            "pvc-1",
            "x~bucket",
            "d~",
            "d~B",
            "d~ab",
            "d~bucket/",
            "d~bucket//x",
            "d~bucket/../x",
            "d~bucket/.x",
            "d~bucket/a b",
            "d~192.168.1.1",
            "d~-bucket",
        ] {
            let err = bad.parse::<ObsVolume>().unwrap_err();
            assert_eq!(err.code(), tonic::Code::NotFound, "{bad:?}");
        }
    }

    #[test]
    fn request_names_become_valid_distinct_bucket_names() {
        let uid = "pvc-5d3c1f9e-0a4b-4c6d-8e2f-1a2b3c4d5e6f";
        let b = bucket_for_request("everest", uid);
        assert!(b.starts_with("everest-pvc-5d3c1f9e-"), "{b}");
        check_bucket_name(&b).unwrap();
        assert_eq!(b, bucket_for_request("everest", uid), "deterministic");
        for name in [
            "PVC_1",
            "pvc-1",
            "pvc.1",
            "---",
            "x",
            &"Ab".repeat(100),
            "ünï",
        ] {
            let b = bucket_for_request("everest", name);
            check_bucket_name(&b).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert_ne!(
            bucket_for_request("e", "PVC_1"),
            bucket_for_request("e", "pvc-1")
        );
        assert_eq!(prefix_for_request(uid), uid);
        for name in ["a/b", "../x", ".hidden", "a b", &"x".repeat(64)] {
            let p = prefix_for_request(name);
            check_prefix(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_ne!(p, name);
        }
    }

    #[test]
    fn endpoints_and_regions_are_plain() {
        check_endpoint("http://127.0.0.1:9000").unwrap();
        check_endpoint("https://obs.eu-west-0.example.com/").unwrap();
        for bad in [
            "127.0.0.1",
            "ftp://h",
            "http://",
            "http://u:p@h",
            "http://h/x",
            "http://h,passwd_file=/x",
            "http://h?x",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
        check_region("eu-west-0").unwrap();
        assert!(check_region("a,b").is_err());
    }
}
