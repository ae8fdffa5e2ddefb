//! The FUSE mounters a node can mount an object volume with, the options a user may pass to
//! each (an allowlist: anything else is refused before it reaches a command line), and the
//! command line itself. Credentials never go on it: the mounter reads them from a private file.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use everest_backend::host::FuseMount;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::credentials::S3Keys;

/// A FUSE mounter, chosen by `everest.io/obs-mounter` (or the backend's `mounter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mounter {
    /// s3fs-fuse (the default).
    #[default]
    S3fs,
    /// `rclone mount`, without a local VFS cache (sequential writes only, nothing of a
    /// volume's data left on the node).
    Rclone,
}

/// How the mounter runs once the mount is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// It daemonizes and the command returns (what the node does without a supervisor).
    Daemon,
    /// It stays in the foreground as the child of whoever started it: the supervisor, which
    /// waits on it to learn at once when it dies.
    Foreground,
}

/// rclone's name for the one remote its per-volume config file defines.
const RCLONE_REMOTE: &str = "volume";

impl Mounter {
    /// Its name, as parameters and the volume context write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mounter::S3fs => "s3fs",
            Mounter::Rclone => "rclone",
        }
    }

    /// The filesystem type the kernel shows for its mounts.
    pub fn fs_type(self) -> &'static str {
        match self {
            Mounter::S3fs => "fuse.s3fs",
            Mounter::Rclone => "fuse.rclone",
        }
    }

    fn rules(self) -> &'static Rules {
        match self {
            Mounter::S3fs => &S3FS,
            Mounter::Rclone => &RCLONE,
        }
    }

    /// The names of the options a user may give this mounter (without values).
    pub fn allowed_option_names(self) -> Vec<&'static str> {
        let rules = self.rules();
        let mut names = rules.flags.to_vec();
        names.extend(rules.valued.iter().map(|(k, _)| *k));
        names
    }

    /// Checks user options (a StorageClass's `mountOptions`, the backend's `mount_options`)
    /// against this mounter's allowlist; the error names the first refused one and why.
    pub fn check_options(self, user: &[String]) -> Result<(), String> {
        user.iter().try_for_each(|o| self.check_option(o))
    }

    fn check_option(self, opt: &str) -> Result<(), String> {
        let rules = self.rules();
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
        let of_kind = |v: &str| {
            rules
                .valued
                .iter()
                .find(|(k, _)| *k == key)
                .is_some_and(|(_, kind)| kind.accepts(v))
        };
        match value {
            None if rules.flags.contains(&key) => Ok(()),
            Some(v) if of_kind(v) => Ok(()),
            _ => Err(refused()),
        }
    }

    /// What the mounter reads its credentials from, written to a private file: s3fs's
    /// `AK:SK` line, or an rclone config with the one remote (keys checked to hold no line
    /// break, endpoint and region checked plain, so nothing can add a line).
    pub fn credentials(self, keys: &S3Keys, source: &MountSource<'_>) -> String {
        match self {
            Mounter::S3fs => keys.s3fs_passwd(),
            Mounter::Rclone => format!(
                "[{RCLONE_REMOTE}]\ntype = s3\nprovider = Other\nendpoint = {}\nregion = {}\nforce_path_style = {}\naccess_key_id = {}\nsecret_access_key = {}\n",
                source.endpoint.trim_end_matches('/'),
                source.region,
                source.path_style,
                keys.access_key,
                keys.secret_key
            ),
        }
    }

    /// The command that mounts `source` (a bucket, or a prefix in one) at `target`, reading
    /// its credentials from `credentials_file`; `user_options` are already checked. s3fs:
    /// `s3fs <bucket>[:/<prefix>] <target> -o <options>`; rclone: `rclone mount
    /// volume:<bucket>[/<prefix>] <target> --config <file> --daemon …`; in the foreground
    /// (`run`), s3fs gets `-f` and rclone no `--daemon`.
    pub fn command(
        self,
        source: &MountSource<'_>,
        target: &Path,
        credentials_file: &Path,
        user_options: &[String],
        readonly: bool,
        run: Run,
    ) -> FuseMount {
        let mut cmd = match self {
            Mounter::S3fs => s3fs_command(source, target, credentials_file, user_options, readonly),
            Mounter::Rclone => {
                rclone_command(source, target, credentials_file, user_options, readonly)
            }
        };
        if run == Run::Foreground {
            match self {
                Mounter::S3fs => cmd.args.push("-f".to_owned()),
                Mounter::Rclone => cmd.args.retain(|a| a != "--daemon"),
            }
        }
        cmd
    }
}

fn s3fs_command(
    source: &MountSource<'_>,
    target: &Path,
    passwd_file: &Path,
    user_options: &[String],
    readonly: bool,
) -> FuseMount {
    let mut opts = vec![
        format!("url={}", source.endpoint.trim_end_matches('/')),
        // s3fs's `endpoint` is the region its requests are signed for.
        format!("endpoint={}", source.region),
        format!("passwd_file={}", passwd_file.display()),
        // Pods run as any user: let them reach the mount, and never gain privileges from it.
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
    if readonly || user_options.iter().any(|o| o == "ro") {
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
        fs_type: Mounter::S3fs.fs_type().to_owned(),
        env_remove: Vec::new(),
    }
}

fn rclone_command(
    source: &MountSource<'_>,
    target: &Path,
    config_file: &Path,
    user_options: &[String],
    readonly: bool,
) -> FuseMount {
    let remote = match source.prefix {
        Some(p) => format!("{RCLONE_REMOTE}:{}/{p}", source.bucket),
        None => format!("{RCLONE_REMOTE}:{}", source.bucket),
    };
    let mut args = vec![
        "mount".to_owned(),
        remote,
        target.display().to_string(),
        format!("--config={}", config_file.display()),
        // Returns once the mount is up, leaving the daemon in the background.
        "--daemon".to_owned(),
        "--allow-other".to_owned(),
        // No local copy of a volume's data: nothing to clean up or leak on the node.
        "--vfs-cache-mode=off".to_owned(),
        // Next to the credentials, never in a home directory of a read-only root filesystem.
        format!(
            "--cache-dir={}",
            config_file.with_extension("rclone-cache").display()
        ),
    ];
    for opt in user_options
        .iter()
        .filter(|o| *o != "ro" && *o != "allow_other")
    {
        args.push(format!("--{opt}"));
    }
    if readonly || user_options.iter().any(|o| o == "ro") {
        args.push("--read-only".to_owned());
    }
    FuseMount {
        program: "rclone".to_owned(),
        args,
        fs_type: Mounter::Rclone.fs_type().to_owned(),
        // rclone's S3 client fails on a CA bundle variable it cannot use (components.md); a
        // custom CA belongs in the backend's settings, not the daemon's environment.
        env_remove: vec!["AWS_CA_BUNDLE".to_owned()],
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
    /// `key=<value>` options and what their value must be.
    valued: &'static [(&'static str, Value)],
    /// What Everest sets itself (the endpoint, the credentials): never from a user.
    reserved: &'static [&'static str],
}

/// What an option's value may be.
#[derive(Debug, Clone, Copy)]
enum Value {
    /// A decimal number.
    Number,
    /// An octal mode of 1 to 4 digits.
    Octal,
    /// A number with an optional `ms`, `s`, `m` or `h`.
    Duration,
    /// A number with an optional `k`, `M` or `G` (any case).
    Size,
    /// One of these words.
    OneOf(&'static [&'static str]),
}

impl Value {
    fn accepts(self, v: &str) -> bool {
        let number =
            |n: &str| !n.is_empty() && n.len() <= 10 && n.chars().all(|c| c.is_ascii_digit());
        match self {
            Value::Number => number(v),
            Value::Octal => {
                (1..=4).contains(&v.len()) && v.chars().all(|c| ('0'..='7').contains(&c))
            }
            Value::Duration => ["ms", "s", "m", "h", ""]
                .iter()
                .any(|unit| v.strip_suffix(unit).is_some_and(number)),
            Value::Size => ["k", "K", "m", "M", "g", "G", ""]
                .iter()
                .any(|unit| v.strip_suffix(unit).is_some_and(number)),
            Value::OneOf(words) => words.contains(&v),
        }
    }

    fn describe(self) -> String {
        match self {
            Value::Number => "<number>".into(),
            Value::Octal => "<octal>".into(),
            Value::Duration => "<number>[ms|s|m|h]".into(),
            Value::Size => "<number>[k|M|G]".into(),
            Value::OneOf(words) => words.join("|"),
        }
    }
}

impl Rules {
    fn describe(&self) -> String {
        let mut all: Vec<String> = self.flags.iter().map(|f| f.to_string()).collect();
        all.extend(
            self.valued
                .iter()
                .map(|(k, v)| format!("{k}={}", v.describe())),
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
    valued: &[
        ("uid", Value::Number),
        ("gid", Value::Number),
        ("umask", Value::Octal),
        ("mp_umask", Value::Octal),
        ("multipart_size", Value::Number),
        ("multipart_copy_size", Value::Number),
        ("singlepart_copy_limit", Value::Number),
        ("parallel_count", Value::Number),
        ("multireq_max", Value::Number),
        ("max_stat_cache_size", Value::Number),
        ("stat_cache_expire", Value::Number),
        ("stat_cache_interval_expire", Value::Number),
        ("connect_timeout", Value::Number),
        ("readwrite_timeout", Value::Number),
        ("retries", Value::Number),
        ("max_dirty_data", Value::Number),
        ("ensure_diskfree", Value::Number),
        ("list_object_max_keys", Value::Number),
        (
            "storage_class",
            Value::OneOf(&[
                "standard",
                "standard_ia",
                "onezone_ia",
                "reduced_redundancy",
                "intelligent_tiering",
                "glacier",
                "deep_archive",
            ]),
        ),
        (
            "dbglevel",
            Value::OneOf(&["crit", "err", "warn", "info", "debug"]),
        ),
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

/// rclone's options, written as mount options without the leading `--` (`uid=1000`,
/// `dir-cache-time=30s`); Everest adds the `--`.
const RCLONE: Rules = Rules {
    flags: &["ro", "allow_other", "no-modtime", "no-checksum", "no-seek"],
    valued: &[
        ("uid", Value::Number),
        ("gid", Value::Number),
        ("umask", Value::Octal),
        ("dir-perms", Value::Octal),
        ("file-perms", Value::Octal),
        ("dir-cache-time", Value::Duration),
        ("attr-timeout", Value::Duration),
        ("transfers", Value::Number),
        ("checkers", Value::Number),
        ("buffer-size", Value::Size),
        ("vfs-read-chunk-size", Value::Size),
        ("vfs-read-chunk-size-limit", Value::Size),
        ("s3-chunk-size", Value::Size),
        ("s3-upload-concurrency", Value::Number),
        (
            "log-level",
            Value::OneOf(&["ERROR", "NOTICE", "INFO", "DEBUG"]),
        ),
    ],
    reserved: &[
        "config",
        "daemon",
        "cache-dir",
        "vfs-cache-mode",
        "allow-root",
        "allow-non-empty",
        "read-only",
        "ca-cert",
        "log-file",
    ],
};

impl FromStr for Mounter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "s3fs" => Ok(Mounter::S3fs),
            "rclone" => Ok(Mounter::Rclone),
            other => Err(format!("mounter {other:?} is not one of s3fs, rclone")),
        }
    }
}

impl fmt::Display for Mounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Mounter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
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
            Run::Daemon,
        );
        assert_eq!(cmd.program, "s3fs");
        assert_eq!(cmd.fs_type, "fuse.s3fs");
        assert_eq!(&cmd.args[..3], ["shared:/pvc-1", "/stage", "-o"]);
        assert_eq!(
            cmd.args[3],
            "url=http://127.0.0.1:9000,endpoint=us-east-1,passwd_file=/run/obs/x.passwd,allow_other,nosuid,nodev,use_path_request_style,uid=1000,mp_umask=0002,ro"
        );
        assert_eq!("s3fs".parse::<Mounter>(), Ok(Mounter::S3fs));
        assert_eq!("rclone".parse::<Mounter>(), Ok(Mounter::Rclone));
        assert!("goofys".parse::<Mounter>().is_err());
    }

    #[test]
    fn rclone_options_become_flags_and_its_config_holds_the_keys() {
        let m = Mounter::Rclone;
        m.check_options(&strings(&[
            "ro",
            "uid=1000",
            "umask=0002",
            "dir-cache-time=30s",
            "buffer-size=16M",
            "no-modtime",
        ]))
        .unwrap();
        for bad in [
            "config=/etc/x",
            "vfs-cache-mode=full",
            "cache-dir=/tmp",
            "daemon",
            "dir-cache-time=30x",
            "buffer-size=-1",
            "uid=0,config=/x",
            "--uid=0",
            "rc",
            "ca-cert=/x",
        ] {
            let err = m.check_options(&strings(&[bad])).unwrap_err();
            assert!(
                err.contains("rclone") || err.contains("comma"),
                "{bad}: {err}"
            );
        }
        let source = MountSource {
            endpoint: "http://127.0.0.1:9000",
            region: "us-east-1",
            path_style: true,
            bucket: "shared",
            prefix: Some("pvc-1"),
        };
        let cmd = m.command(
            &source,
            Path::new("/stage"),
            Path::new("/run/obs/x.secret"),
            &strings(&["uid=1000", "ro"]),
            false,
            Run::Daemon,
        );
        assert_eq!(cmd.program, "rclone");
        assert_eq!(cmd.fs_type, "fuse.rclone");
        assert_eq!(
            cmd.args,
            [
                "mount",
                "volume:shared/pvc-1",
                "/stage",
                "--config=/run/obs/x.secret",
                "--daemon",
                "--allow-other",
                "--vfs-cache-mode=off",
                "--cache-dir=/run/obs/x.rclone-cache",
                "--uid=1000",
                "--read-only",
            ]
        );
        assert_eq!(cmd.env_remove, ["AWS_CA_BUNDLE"]);
        // Under the supervisor it stays in the foreground; so does s3fs, with -f.
        let fg = m.command(
            &source,
            Path::new("/stage"),
            Path::new("/run/obs/x.secret"),
            &[],
            false,
            Run::Foreground,
        );
        assert!(!fg.args.iter().any(|a| a == "--daemon"), "{:?}", fg.args);
        let fg = Mounter::S3fs.command(
            &source,
            Path::new("/stage"),
            Path::new("/run/obs/x.passwd"),
            &[],
            false,
            Run::Foreground,
        );
        assert_eq!(fg.args.last().map(String::as_str), Some("-f"));
        let keys = S3Keys::from_secrets(&everest_backend::secrets::Secrets::new(
            [
                ("access.key".to_owned(), "AK".to_owned()),
                ("secret.key".to_owned(), "SK".to_owned()),
            ]
            .into(),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            m.credentials(&keys, &source),
            "[volume]\ntype = s3\nprovider = Other\nendpoint = http://127.0.0.1:9000\nregion = us-east-1\nforce_path_style = true\naccess_key_id = AK\nsecret_access_key = SK\n"
        );
        assert_eq!(Mounter::S3fs.credentials(&keys, &source), "AK:SK\n");
    }
}
