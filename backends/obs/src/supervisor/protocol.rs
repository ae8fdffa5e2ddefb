//! What the node and the supervisor say to each other: one JSON object per line, one request
//! and one answer per connection. A request names a mount by what it is made of (never by a
//! command line), so the supervisor builds the command itself from checked parts and starts
//! nothing else; the credentials travel as the path of their private file, never as keys.

use std::path::{Path, PathBuf};

use everest_backend::host::FuseMount;
use serde::{Deserialize, Serialize};

use crate::mounter::{MountSource, Mounter, Run};
use crate::volume::{check_bucket_name, check_endpoint, check_prefix, check_region};

/// One FUSE mount to keep alive: the mounter, what it mounts, where, and from which file it
/// reads its credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    /// The backend instance the volume belongs to (a metrics label only).
    pub backend: String,
    /// s3fs or rclone.
    pub mounter: Mounter,
    /// The S3 endpoint URL.
    pub endpoint: String,
    /// The region requests are signed for.
    pub region: String,
    /// Path-style requests.
    pub path_style: bool,
    /// The bucket.
    pub bucket: String,
    /// The prefix in it, for a prefix volume.
    pub prefix: Option<String>,
    /// Where it is mounted (the staging path).
    pub target: PathBuf,
    /// The private file the mounter reads its keys from.
    pub credentials_file: PathBuf,
    /// User options, already checked by the node (and checked again here).
    pub options: Vec<String>,
    /// Mount read-only.
    pub readonly: bool,
}

impl MountSpec {
    /// Checks every part again: the socket is private, but the supervisor starts programs as
    /// root and must not become a way to run anything else.
    pub fn check(&self) -> Result<(), String> {
        check_endpoint(&self.endpoint).map_err(|e| format!("endpoint: {e}"))?;
        check_region(&self.region).map_err(|e| format!("region: {e}"))?;
        check_bucket_name(&self.bucket)?;
        if let Some(p) = &self.prefix {
            check_prefix(p)?;
        }
        for (what, p) in [
            ("target", &self.target),
            ("credentials_file", &self.credentials_file),
        ] {
            if !p.is_absolute() || p.to_str().is_none_or(|s| s.contains(',')) {
                return Err(format!(
                    "{what} {} must be an absolute UTF-8 path without commas",
                    p.display()
                ));
            }
        }
        let label_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !label_ok(&self.backend) {
            return Err(format!("backend {:?} is not a backend name", self.backend));
        }
        self.mounter.check_options(&self.options)
    }

    /// The command line: the one [`Mounter::command`] builds, for the node and the supervisor.
    pub fn command(&self, run: Run) -> FuseMount {
        let source = MountSource {
            endpoint: &self.endpoint,
            region: &self.region,
            path_style: self.path_style,
            bucket: &self.bucket,
            prefix: self.prefix.as_deref(),
        };
        self.mounter.command(
            &source,
            &self.target,
            &self.credentials_file,
            &self.options,
            self.readonly,
            run,
        )
    }

    /// Whether `other` mounts the same thing the same way (a repeated start of the same volume).
    pub fn same_mount(&self, other: &MountSpec) -> bool {
        self == other
    }
}

/// A request to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Mount and keep mounted; answered once the kernel shows the mount (or it failed).
    Start(MountSpec),
    /// Unmount and stop supervising; a target not supervised is fine.
    Stop {
        /// The mount point.
        target: PathBuf,
    },
    /// Every supervised mount.
    List,
}

/// How a supervised mount is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountState {
    /// The mounter was started and the mount is not shown yet.
    Starting,
    /// Mounted, its mounter running.
    Serving,
    /// Its mounter died; it is started again after a pause.
    Restarting,
    /// Its mounter died too often in a row: given up, the mount is gone until the next stage.
    Dead,
}

/// One supervised mount, as `List` and `Start` answer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountStatus {
    /// The mount point.
    pub target: PathBuf,
    /// The backend instance.
    pub backend: String,
    /// The mounter.
    pub mounter: Mounter,
    /// How it is doing.
    pub state: MountState,
    /// How many times its mounter was started again after dying.
    pub restarts: u32,
    /// The running mounter's process ID.
    pub pid: Option<u32>,
    /// Found running at the supervisor's start (a mounter an earlier supervisor started).
    pub adopted: bool,
    /// The last failure, for a mount that is restarting or dead.
    pub last_error: Option<String>,
}

impl MountStatus {
    /// Why the volume is abnormal, if it is, for NodeGetVolumeStats.
    pub fn abnormal(&self) -> Option<String> {
        let target = self.target.display();
        let why = self.last_error.as_deref().unwrap_or("it exited");
        match self.state {
            MountState::Serving | MountState::Starting => None,
            MountState::Restarting => Some(format!(
                "the {} mounter of {target} died ({why}) and is being restarted ({} restarts so far)",
                self.mounter, self.restarts
            )),
            MountState::Dead => Some(format!(
                "the {} mounter of {target} died ({why}) and was given up after {} restarts; unstage and stage the volume again",
                self.mounter, self.restarts
            )),
        }
    }
}

/// What went wrong, for the node to map to a gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// The request was malformed or refused (INVALID_ARGUMENT).
    Invalid,
    /// The target is supervised with another mount (ALREADY_EXISTS).
    Conflict,
    /// The mounter failed or timed out (INTERNAL; the kubelet retries).
    Failed,
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// The mount is up (or was already).
    Started(MountStatus),
    /// The mount is gone; `known` says whether it was supervised.
    Stopped {
        /// It was supervised.
        known: bool,
    },
    /// Every supervised mount.
    Mounts {
        /// Their states.
        mounts: Vec<MountStatus>,
    },
    /// The request failed.
    Error {
        /// What kind of failure.
        fault: Fault,
        /// What failed, naming the mount (never a key).
        message: String,
    },
}

/// The one line a value is sent as.
pub fn to_line<T: Serialize>(value: &T) -> String {
    // Our types are plain structs and enums with string keys: serializing cannot fail.
    let mut line = serde_json::to_string(value).expect("protocol types always serialize");
    line.push('\n');
    line
}

/// The longest line either side reads: a request with every option is a few KiB.
pub const MAX_LINE: usize = 64 * 1024;

/// The state file of a mount in `dir`: named by a hash of its target.
pub fn state_file(dir: &Path, target: &Path) -> PathBuf {
    let key = crate::volume::short_hash(&target.display().to_string(), 24);
    dir.join(format!("{key}.json"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid mount, for every test of the supervisor.
    pub(crate) fn spec() -> MountSpec {
        MountSpec {
            backend: "objects".into(),
            mounter: Mounter::S3fs,
            endpoint: "http://127.0.0.1:9000".into(),
            region: "us-east-1".into(),
            path_style: true,
            bucket: "shared".into(),
            prefix: Some("pvc-1".into()),
            target: "/var/lib/kubelet/plugins/x/globalmount".into(),
            credentials_file: "/run/everest/obs/abc.secret".into(),
            options: vec!["uid=1000".into()],
            readonly: false,
        }
    }

    #[test]
    fn requests_round_trip_as_one_line() {
        for req in [
            Request::Start(spec()),
            Request::Stop {
                target: "/t".into(),
            },
            Request::List,
        ] {
            let line = to_line(&req);
            assert_eq!(line.matches('\n').count(), 1);
            assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), req);
        }
        assert!(to_line(&Request::List).contains(r#""op":"list""#));
    }

    #[test]
    fn a_spec_is_checked_again_and_builds_the_foreground_command() {
        spec().check().unwrap();
        let cmd = spec().command(Run::Foreground);
        assert_eq!(cmd.program, "s3fs");
        assert_eq!(cmd.args.last().map(String::as_str), Some("-f"));
        for bad in [
            MountSpec {
                options: vec!["uid=0,passwd_file=/etc/shadow".into()],
                ..spec()
            },
            MountSpec {
                endpoint: "http://h,passwd_file=/x".into(),
                ..spec()
            },
            MountSpec {
                target: "relative".into(),
                ..spec()
            },
            MountSpec {
                credentials_file: "/a,b".into(),
                ..spec()
            },
            MountSpec {
                bucket: "No".into(),
                ..spec()
            },
            MountSpec {
                backend: "a b".into(),
                ..spec()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        // An unknown field or mounter is refused by the parser itself.
        let mut v = serde_json::to_value(Request::Start(spec())).unwrap();
        v["program"] = "/bin/sh".into();
        assert!(serde_json::from_value::<Request>(v).is_err());
        let mut v = serde_json::to_value(Request::Start(spec())).unwrap();
        v["mounter"] = "goofys".into();
        assert!(serde_json::from_value::<Request>(v).is_err());
    }
}
