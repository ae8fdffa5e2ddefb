//! The FUSE mounters a node can mount an object volume with, the options a user may pass to
//! each (an allowlist: anything else is refused before it reaches a command line), and the
//! command line itself. Credentials never go on it: the mounter reads them from a private file.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use everest_backend::host::FuseMount;
use serde::{Deserialize, Deserializer};

/// A FUSE mounter, chosen by `everest.io/obs-mounter` (or the backend's `mounter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mounter {
    /// s3fs-fuse (the default).
    #[default]
    S3fs,
}

impl Mounter {
    /// Its name, as parameters and the volume context write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mounter::S3fs => "s3fs",
        }
    }

    /// The filesystem type the kernel shows for its mounts.
    pub fn fs_type(self) -> &'static str {
        match self {
            Mounter::S3fs => "fuse.s3fs",
        }
    }

    /// Checks user options (a StorageClass's `mountOptions`, the backend's `mount_options`)
    /// against this mounter's allowlist; the error names the first refused one and why.
    pub fn check_options(self, user: &[String]) -> Result<(), String> {
        user.iter().try_for_each(|o| self.check_option(o))
    }

    fn check_option(self, opt: &str) -> Result<(), String> {
        let rules = match self {
            Mounter::S3fs => &S3FS,
        };
        if opt.contains(',') {
            return Err(format!(
                "mount option {opt:?} holds a comma: give each option on its own"
            ));
        }
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        if rules.reserved.contains(&key) {
            return Err(format!(
                "mount option {key:?} is set by Everest for {} and cannot be given",
                self.as_str()
            ));
        }
        let refused = || {
            format!(
                "mount option {opt:?} is not allowed for {} (allowed: {})",
                self.as_str(),
                rules.describe()
            )
        };
        match value {
            None if rules.flags.contains(&key) => Ok(()),
            Some(v) if rules.numeric.contains(&key) => {
                (!v.is_empty() && v.len() <= 10 && v.chars().all(|c| c.is_ascii_digit()))
                    .then_some(())
                    .ok_or_else(refused)
            }
            Some(v) if rules.octal.contains(&key) => ((1..=4).contains(&v.len())
                && v.chars().all(|c| ('0'..='7').contains(&c)))
            .then_some(())
            .ok_or_else(refused),
            Some(v) => rules
                .choices
                .iter()
                .any(|(k, values)| *k == key && values.contains(&v))
                .then_some(())
                .ok_or_else(refused),
            None => Err(refused()),
        }
    }

    /// The command that mounts `source` (a bucket, or a prefix in one) at `target`:
    /// `s3fs <bucket>[:/<prefix>] <target> -o <options>`. `options` are already checked.
    pub fn command(
        self,
        source: &MountSource<'_>,
        target: &Path,
        passwd_file: &Path,
        user_options: &[String],
        readonly: bool,
    ) -> FuseMount {
        match self {
            Mounter::S3fs => {
                let mut opts = vec![
                    format!("url={}", source.endpoint.trim_end_matches('/')),
                    // s3fs's `endpoint` is the region its requests are signed for.
                    format!("endpoint={}", source.region),
                    format!("passwd_file={}", passwd_file.display()),
                    // Pods run as any user: let them reach the mount, and never gain
                    // privileges from it.
                    "allow_other".to_owned(),
                    "nosuid".to_owned(),
                    "nodev".to_owned(),
                ];
                if source.path_style {
                    opts.push("use_path_request_style".to_owned());
                }
                // The mount point itself: writable by its owner only unless the user says.
                if !user_options.iter().any(|u| u.starts_with("mp_umask=")) {
                    opts.push("mp_umask=0022".to_owned());
                }
                opts.extend(
                    user_options
                        .iter()
                        .filter(|o| *o != "ro" && *o != "allow_other")
                        .cloned(),
                );
                if readonly {
                    opts.push("ro".to_owned());
                }
                let bucket_arg = match source.prefix {
                    Some(p) => format!("{}:/{p}", source.bucket),
                    None => source.bucket.to_owned(),
                };
                FuseMount {
                    program: "s3fs".to_owned(),
                    args: vec![
                        bucket_arg,
                        target.display().to_string(),
                        "-o".to_owned(),
                        opts.join(","),
                    ],
                    fs_type: self.fs_type().to_owned(),
                }
            }
        }
    }
}

/// What a volume is mounted from: endpoint, region, bucket and prefix, all checked.
#[derive(Debug, Clone)]
pub struct MountSource<'a> {
    /// The S3 endpoint URL.
    pub endpoint: &'a str,
    /// The region requests are signed for.
    pub region: &'a str,
    /// Path-style requests.
    pub path_style: bool,
    /// The bucket.
    pub bucket: &'a str,
    /// The prefix in it, if the volume is one.
    pub prefix: Option<&'a str>,
}

/// One mounter's allowlist.
struct Rules {
    /// Options that stand alone.
    flags: &'static [&'static str],
    /// `key=<decimal number>`.
    numeric: &'static [&'static str],
    /// `key=<octal mode>`.
    octal: &'static [&'static str],
    /// `key=<one of the values>`.
    choices: &'static [(&'static str, &'static [&'static str])],
    /// What Everest sets itself (the endpoint, the credentials): never from a user.
    reserved: &'static [&'static str],
}

impl Rules {
    fn describe(&self) -> String {
        let mut all: Vec<String> = self.flags.iter().map(|f| f.to_string()).collect();
        all.extend(self.numeric.iter().map(|k| format!("{k}=<number>")));
        all.extend(self.octal.iter().map(|k| format!("{k}=<octal>")));
        all.extend(
            self.choices
                .iter()
                .map(|(k, v)| format!("{k}={}", v.join("|"))),
        );
        all.join(", ")
    }
}

const S3FS: Rules = Rules {
    flags: &[
        "ro",
        "allow_other",
        "enable_noobj_cache",
        "enable_content_md5",
        "nomultipart",
        "notsup_compat_dir",
        "noxmlns",
        "nocopyapi",
        "norenameapi",
        "complement_stat",
        "sigv2",
        "sigv4",
    ],
    numeric: &[
        "uid",
        "gid",
        "multipart_size",
        "multipart_copy_size",
        "singlepart_copy_limit",
        "parallel_count",
        "multireq_max",
        "max_thread_count",
        "max_stat_cache_size",
        "stat_cache_expire",
        "stat_cache_interval_expire",
        "connect_timeout",
        "readwrite_timeout",
        "retries",
        "max_dirty_data",
        "ensure_diskfree",
        "list_object_max_keys",
    ],
    octal: &["umask", "mp_umask"],
    choices: &[
        (
            "storage_class",
            &[
                "standard",
                "standard_ia",
                "onezone_ia",
                "reduced_redundancy",
                "intelligent_tiering",
                "glacier",
                "deep_archive",
            ],
        ),
        ("dbglevel", &["crit", "err", "warn", "info", "debug"]),
    ],
    reserved: &[
        "url",
        "endpoint",
        "passwd_file",
        "use_path_request_style",
        "bucket",
        "nosuid",
        "nodev",
    ],
};

impl FromStr for Mounter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "s3fs" => Ok(Mounter::S3fs),
            other => Err(format!("mounter {other:?} is not one of s3fs")),
        }
    }
}

impl fmt::Display for Mounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Mounter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn allowed_options_pass_and_smuggling_is_refused() {
        let m = Mounter::S3fs;
        m.check_options(&strings(&[
            "ro",
            "uid=1000",
            "gid=1000",
            "umask=0022",
            "multipart_size=64",
            "storage_class=standard_ia",
        ]))
        .unwrap();
        for bad in [
            "uid=0,passwd_file=/etc/shadow",
            "ro,allow_root",
            "passwd_file=/tmp/x",
            "url=http://evil",
            "endpoint=x",
            "use_path_request_style",
            "uid=1=2",
            "uid=",
            "uid=-1",
            "umask=0999",
            "umask=00022",
            "ro=1",
            "allow_root",
            "suid",
            "dev",
            "storage_class=cold",
            "-o",
            " ro",
            "use_cache=/tmp",
            "",
        ] {
            let err = m.check_options(&strings(&[bad])).unwrap_err();
            assert!(
                err.contains("s3fs") || err.contains("comma"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_command_carries_no_secret_and_the_right_options() {
        let source = MountSource {
            endpoint: "http://127.0.0.1:9000/",
            region: "us-east-1",
            path_style: true,
            bucket: "shared",
            prefix: Some("pvc-1"),
        };
        let cmd = Mounter::S3fs.command(
            &source,
            Path::new("/stage"),
            Path::new("/run/obs/x.passwd"),
            &strings(&["uid=1000", "mp_umask=0002"]),
            true,
        );
        assert_eq!(cmd.program, "s3fs");
        assert_eq!(cmd.fs_type, "fuse.s3fs");
        assert_eq!(&cmd.args[..3], ["shared:/pvc-1", "/stage", "-o"]);
        assert_eq!(
            cmd.args[3],
            "url=http://127.0.0.1:9000,endpoint=us-east-1,passwd_file=/run/obs/x.passwd,allow_other,nosuid,nodev,use_path_request_style,uid=1000,mp_umask=0002,ro"
        );
        assert_eq!("s3fs".parse::<Mounter>(), Ok(Mounter::S3fs));
        assert!("rclone".parse::<Mounter>().is_err());
    }
}
