//! NFS on the node: the export a file volume lives on, the mount options a StorageClass may set,
//! and staging it (one NFS mount per volume per node, bind-mounted into each pod like any other
//! staged volume). Every file backend (a share per volume, a directory per volume) stages the
//! same way, so it lives here.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::host::{Host, mounts_at};
use crate::paths::HostPath;

/// Longest `server:/path` accepted; real exports are far shorter.
const MAX_EXPORT_LEN: usize = 1024;

/// An NFS export, `server:/path`, checked so it can only name a path on a server and never
/// smuggle options or a second argument into `mount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsExport {
    server: String,
    path: String,
}

impl NfsExport {
    /// The server: a host name, an IPv4 address or a bracketed IPv6 address.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The absolute path on the server.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The same server, one directory further down (a volume's directory inside a share).
    pub fn join(&self, dir: &str) -> Result<Self> {
        format!("{}:{}/{dir}", self.server, self.path.trim_end_matches('/')).parse()
    }
}

impl fmt::Display for NfsExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.server, self.path)
    }
}

impl FromStr for NfsExport {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::InvalidArgument(format!(
                "NFS export {s:?} is invalid ({why}); expected server:/absolute/path"
            ))
        };
        if s.len() > MAX_EXPORT_LEN {
            return Err(bad("too long"));
        }
        // `[v6]:/path` keeps its colons inside the brackets.
        let (server, path) = match s.strip_prefix('[') {
            Some(rest) => {
                let (addr, path) = rest.split_once("]:").ok_or_else(|| bad("unclosed ["))?;
                if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
                    return Err(bad("bad IPv6 address"));
                }
                (format!("[{addr}]"), path)
            }
            None => {
                let (host, path) = s.split_once(':').ok_or_else(|| bad("no ':'"))?;
                let ok = !host.is_empty()
                    && host.len() <= 253
                    && !host.starts_with('-')
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
                if !ok {
                    return Err(bad("bad server name"));
                }
                (host.to_owned(), path)
            }
        };
        if !path.starts_with('/') {
            return Err(bad("the path is not absolute"));
        }
        if path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',')
        {
            return Err(bad(
                "the path holds a space, a comma or a control character",
            ));
        }
        if path.split('/').any(|part| part == "." || part == "..") {
            return Err(bad("the path holds . or .."));
        }
        Ok(Self {
            server,
            path: path.to_owned(),
        })
    }
}

/// What every NFS stage starts from, close to CCE Everest's defaults: NFSv3, a 60 s timeout
/// before a retransmission, no reserved source port, no lock manager.
pub const DEFAULT_OPTIONS: &[&str] = &["vers=3", "timeo=600", "noresvport", "nolock"];

/// Options a StorageClass (`mountOptions`) or PV may set, alone or as `key=<number>`; `vers`,
/// `nfsvers`, `proto` and `sec` take the values listed. Anything else is refused, so user input
/// never reaches `mount` unchecked (`nosuid`/`nodev` are always added, never removable).
const FLAGS: &[&str] = &[
    "hard",
    "soft",
    "intr",
    "nointr",
    "noresvport",
    "resvport",
    "nolock",
    "lock",
    "ac",
    "noac",
    "cto",
    "nocto",
    "ro",
    "rw",
    "noatime",
    "nodiratime",
    "relatime",
    "sync",
    "async",
    "noexec",
];
const NUMERIC: &[&str] = &[
    "timeo", "retrans", "rsize", "wsize", "actimeo", "acregmin", "acregmax", "acdirmin",
    "acdirmax", "port", "nconnect",
];
const CHOICES: &[(&str, &[&str])] = &[
    ("vers", &["3", "4", "4.0", "4.1", "4.2"]),
    ("nfsvers", &["3", "4", "4.0", "4.1", "4.2"]),
    ("proto", &["tcp", "tcp6", "rdma"]),
    ("sec", &["sys"]),
];

/// The options for one mount: the defaults, overridden key by key by the user's (checked
/// against the allowlist: INVALID_ARGUMENT naming a refused one), plus `ro` when read-only and
/// `nosuid,nodev` always (a share's files must not gain privileges on the node).
pub fn mount_options(user: &[String], readonly: bool) -> Result<Vec<String>> {
    let user: Vec<&str> = user
        .iter()
        .flat_map(|o| o.split(','))
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .collect();
    for opt in &user {
        check_option(opt)?;
    }
    let key = |o: &str| {
        let k = o.split('=').next().unwrap_or(o);
        if k == "nfsvers" { "vers" } else { k }.to_owned()
    };
    let mut out: Vec<String> = DEFAULT_OPTIONS
        .iter()
        .filter(|d| !user.iter().any(|u| key(u) == key(d)))
        .map(|d| (*d).to_owned())
        .collect();
    out.extend(user.iter().map(|o| (*o).to_owned()));
    if readonly {
        out.retain(|o| o != "rw");
        if !out.iter().any(|o| o == "ro") {
            out.push("ro".into());
        }
    }
    out.extend(["nosuid".to_owned(), "nodev".to_owned()]);
    Ok(out)
}

fn check_option(opt: &str) -> Result<()> {
    let refused = || {
        Error::InvalidArgument(format!(
            "NFS mount option {opt:?} is not allowed; allowed: {}, {}=<number>, {}",
            FLAGS.join(", "),
            NUMERIC.join("=<number>, "),
            CHOICES
                .iter()
                .map(|(k, v)| format!("{k}={}", v.join("|")))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    };
    match opt.split_once('=') {
        None if FLAGS.contains(&opt) => Ok(()),
        Some((k, v)) if NUMERIC.contains(&k) && v.parse::<u32>().is_ok() => Ok(()),
        Some((k, v)) if CHOICES.iter().any(|(ck, cv)| *ck == k && cv.contains(&v)) => Ok(()),
        _ => Err(refused()),
    }
}

/// Mounts `export` at the staging path, once: a matching NFS mount there already is success,
/// anything else mounted there is ALREADY_EXISTS, and a kernel without an NFS client is
/// FAILED_PRECONDITION saying so, before anything is tried.
pub async fn stage(
    host: &dyn Host,
    volume: &str,
    export: &NfsExport,
    staging: &HostPath,
    options: &[String],
) -> Result<()> {
    if let Some(m) = mounts_at(host, staging.as_path()).await?.last() {
        let wants_ro = options.iter().any(|o| o == "ro");
        if !m.fs_type.starts_with("nfs") || m.source != export.to_string() {
            return Err(Error::AlreadyExists(format!(
                "staging path {staging} already has {} ({}) mounted, not volume {volume} ({export})",
                m.source, m.fs_type
            )));
        }
        if m.is_read_only() != wants_ro {
            return Err(Error::AlreadyExists(format!(
                "volume {volume} is staged at {staging} with readonly={}, not readonly={wants_ro}; unstage it first",
                m.is_read_only()
            )));
        }
        return Ok(());
    }
    if !host.kernel_supports("nfs").await? {
        return Err(Error::FailedPrecondition(format!(
            "volume {volume}: this node's kernel has no NFS client (no nfs in /proc/filesystems); \
             load the nfs module (modprobe nfs) or install the NFS client package, then retry"
        )));
    }
    host.make_dir(staging.as_path()).await?;
    host.mount_nfs(export, staging.as_path(), options).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::host::FakeHost;
    use crate::paths::AllowedRoot;

    #[test]
    fn exports_parse_and_refuse_what_could_reach_mount_as_something_else() {
        let e: NfsExport = "192.168.1.102:/".parse().unwrap();
        assert_eq!((e.server(), e.path()), ("192.168.1.102", "/"));
        let e: NfsExport = "nfs.example.com:/share/vol-1".parse().unwrap();
        assert_eq!(e.to_string(), "nfs.example.com:/share/vol-1");
        let e: NfsExport = "[fd00::1]:/exports".parse().unwrap();
        assert_eq!(e.server(), "[fd00::1]");
        assert_eq!(
            e.join("pvc-1").unwrap().to_string(),
            "[fd00::1]:/exports/pvc-1"
        );
        for bad in [
            "",
            "nocolon",
            "host:relative/path",
            ":/path",
            "-o:/path",
            "host name:/p",
            "host:/a b",
            "host:/a,vers=4",
            "host:/a/../etc",
            "host:/a/./b",
            "host:/a\n",
            "[fd00::1:/x",
            "[zz]:/x",
        ] {
            let err = bad.parse::<NfsExport>().unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
        assert!(
            format!("h:/{}", "a".repeat(2000))
                .parse::<NfsExport>()
                .is_err()
        );
        assert!("h:/x".parse::<NfsExport>().unwrap().join("../y").is_err());
    }

    #[test]
    fn options_start_from_the_defaults_and_refuse_what_is_not_allowed() {
        assert_eq!(
            mount_options(&[], false).unwrap(),
            [
                "vers=3",
                "timeo=600",
                "noresvport",
                "nolock",
                "nosuid",
                "nodev"
            ]
        );
        let opts = mount_options(&["nfsvers=4.1,hard".into(), "rw".into()], true).unwrap();
        assert_eq!(
            opts,
            [
                "timeo=600",
                "noresvport",
                "nolock",
                "nfsvers=4.1",
                "hard",
                "ro",
                "nosuid",
                "nodev"
            ]
        );
        for bad in [
            "suid",
            "dev",
            "vers=5",
            "timeo=x",
            "sec=krb5",
            "context=x",
            "exec,suid",
        ] {
            let err = mount_options(&[bad.into()], false).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(err.to_string().contains("not allowed"), "{err}");
        }
    }

    fn staging() -> HostPath {
        AllowedRoot::new("/var/lib/kubelet")
            .unwrap()
            .check("/var/lib/kubelet/plugins/x/globalmount", "staging")
            .unwrap()
    }

    #[tokio::test]
    async fn stages_once_and_refuses_a_kernel_without_nfs() {
        let host = FakeHost::default();
        let export: NfsExport = "10.0.0.5:/share/pvc-1".parse().unwrap();
        let opts = mount_options(&[], false).unwrap();
        stage(&host, "v", &export, &staging(), &opts).await.unwrap();
        stage(&host, "v", &export, &staging(), &opts).await.unwrap();
        let mounts = host
            .calls()
            .iter()
            .filter(|c| c.starts_with("mount"))
            .count();
        assert_eq!(mounts, 1, "a repeated stage must not mount twice");
        let m = &host.mount_table()[0];
        assert_eq!(
            (m.fs_type.as_str(), m.source.as_str()),
            ("nfs", "10.0.0.5:/share/pvc-1")
        );
        // Another export at the same path, or the other read-only mode: a conflict.
        let other: NfsExport = "10.0.0.5:/share/pvc-2".parse().unwrap();
        let err = stage(&host, "v", &other, &staging(), &opts)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists);
        let ro = mount_options(&[], true).unwrap();
        let err = stage(&host, "v", &export, &staging(), &ro)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists);

        let bare = FakeHost::default();
        bare.set_kernel_filesystems(&["ext4", "xfs"]);
        let err = stage(&bare, "v", &export, &staging(), &opts)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.to_string().contains("no NFS client"), "{err}");
        assert!(
            !bare
                .calls()
                .iter()
                .any(|c| c.starts_with("mount") || c.starts_with("mkdir")),
            "{:?}",
            bare.calls()
        );
        assert!(
            !bare
                .exists(Path::new("/var/lib/kubelet/plugins/x/globalmount"))
                .await
                .unwrap()
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Any text: refused, or an export that prints back as it was read and holds
            /// nothing that could reach mount as an option, a second argument or a way up.
            #[test]
            fn exports_round_trip_or_are_refused(s in "\\PC{0,80}") {
                if let Ok(e) = s.parse::<NfsExport>() {
                    prop_assert_eq!(e.to_string(), s.clone());
                    prop_assert_eq!(e.to_string().parse::<NfsExport>().unwrap(), e.clone());
                    prop_assert!(e.path().starts_with('/'));
                    prop_assert!(!e.path().split('/').any(|p| p == ".."));
                    prop_assert!(!s.contains(',') && !s.contains(' ') && !s.starts_with('-'));
                }
            }

            /// Any options a user writes: refused, or what reaches mount is allowlisted and
            /// always carries nosuid and nodev.
            #[test]
            fn options_are_allowlisted_or_refused(opts in proptest::collection::vec("[a-z0-9=.,]{0,16}", 0..5)) {
                if let Ok(out) = mount_options(&opts, false) {
                    prop_assert!(out.iter().all(|o| check_option(o).is_ok() || o == "nodev" || o == "nosuid"));
                    prop_assert!(out.contains(&"nosuid".to_owned()) && out.contains(&"nodev".to_owned()));
                }
            }
        }
    }
}
