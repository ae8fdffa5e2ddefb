//! Host paths the node may touch: the kubelet hands us staging and target paths, and we refuse
//! any that is relative, contains `..`, or lies outside the configured root.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::error::Error;

/// The directory tree the node plugin may create, mount on and remove under (e.g. `/var/lib/kubelet`).
#[derive(Debug, Clone)]
pub struct AllowedRoot(PathBuf, Arc<OnceLock<PathBuf>>);

impl AllowedRoot {
    /// Wraps an absolute, normal root directory.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, Error> {
        let root = root.into();
        if !is_normal_absolute(&root) {
            return Err(Error::InvalidArgument(format!(
                "allowed root {} must be an absolute path without '..'",
                root.display()
            )));
        }
        Ok(Self(root, Arc::default()))
    }

    /// The root itself.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Checks a path from a request; `field` names the request field in the error.
    pub fn check(&self, raw: &str, field: &str) -> Result<HostPath, Error> {
        if raw.is_empty() {
            return Err(Error::InvalidArgument(format!("{field} is required")));
        }
        // No system call takes a path with a NUL byte: refuse it here, naming the field.
        if raw.contains('\0') {
            return Err(Error::InvalidArgument(format!(
                "{field} {raw:?} contains a NUL byte"
            )));
        }
        let path = PathBuf::from(raw);
        // Path::components() silently drops "." segments, so check the raw text as well.
        let dotted = raw.split('/').any(|seg| seg == "." || seg == "..");
        if dotted || !is_normal_absolute(&path) {
            return Err(Error::InvalidArgument(format!(
                "{field} {raw:?} must be an absolute path without '.' or '..' components"
            )));
        }
        if !path.starts_with(&self.0) || path == self.0 {
            return Err(Error::InvalidArgument(format!(
                "{field} {raw:?} is outside the directory this plugin may use ({})",
                self.0.display()
            )));
        }
        Ok(HostPath(path))
    }
}

/// What the plugin is about to do at a path: set something up there (create, mount), or only
/// take it down (unmount, remove), which never follows a link at the path itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathUse {
    /// NodeStage, NodePublish, NodeExpand, NodeGetVolumeStats.
    SetUp,
    /// NodeUnpublish, NodeUnstage.
    TearDown,
}

impl AllowedRoot {
    /// Refuses a checked path that leads outside the root once the symlinks along it are
    /// followed: a link planted under the kubelet dir must not make the plugin create, mount
    /// or remove anything elsewhere. Only the parent is resolved (resolving the path itself
    /// would ask the filesystem mounted there, which may not answer); the last component must
    /// not be a link when something is set up there. `field` names the request field.
    pub async fn confine(
        &self,
        host: &dyn crate::host::Host,
        path: &HostPath,
        field: &str,
        usage: PathUse,
    ) -> Result<(), Error> {
        let root = self.resolved(host).await?;
        // Under the root (checked), so there is a parent.
        let parent = path.as_path().parent().unwrap_or(&self.0);
        let real = host.resolve_existing(parent).await.map_err(|e| {
            if e.detail.contains("dangling symbolic link") {
                Error::InvalidArgument(format!("{field} {path}: {}", e.detail))
            } else {
                Error::from(e)
            }
        })?;
        if !real.starts_with(&root) {
            return Err(Error::InvalidArgument(format!(
                "{field} {path} leads to {} through a symbolic link, outside the directory this plugin may use ({})",
                real.join(path.as_path().file_name().unwrap_or_default())
                    .display(),
                self.0.display()
            )));
        }
        if usage == PathUse::SetUp && host.is_symlink(path.as_path()).await? {
            return Err(Error::InvalidArgument(format!(
                "{field} {path} is a symbolic link; the plugin mounts only on a real directory or file"
            )));
        }
        Ok(())
    }
}

impl AllowedRoot {
    /// Where the root itself really is, resolved once it exists and then kept. Keeping it is
    /// safe: the root and its ancestors are the host's own directories, which only the host's
    /// administrator can swap for a link (and who needs no link to reach anything). What
    /// confinement guards against is a link planted under the root, through a pod's volume or
    /// subPath, and every path under the root is still resolved on every call. Until the root
    /// exists it is resolved each time, so one made (or linked) after start counts as it ends up.
    async fn resolved(&self, host: &dyn crate::host::Host) -> Result<PathBuf, Error> {
        if let Some(root) = self.1.get() {
            return Ok(root.clone());
        }
        let root = host.resolve_existing(&self.0).await?;
        if host.exists(&root).await? {
            let _ = self.1.set(root.clone());
        }
        Ok(root)
    }
}

fn is_normal_absolute(p: &Path) -> bool {
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// A path checked to lie under the allowed root.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPath(PathBuf);

impl HostPath {
    /// The checked path.
    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for HostPath {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl fmt::Display for HostPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_paths_under_the_root() {
        let root = AllowedRoot::new("/var/lib/kubelet").unwrap();
        let p = root
            .check(
                "/var/lib/kubelet/pods/x/volumes/kubernetes.io~csi/pvc/mount",
                "target_path",
            )
            .unwrap();
        assert!(p.as_path().starts_with("/var/lib/kubelet"));
    }

    #[test]
    fn rejects_escapes() {
        let root = AllowedRoot::new("/var/lib/kubelet").unwrap();
        for bad in [
            "",
            "relative/path",
            "/etc/passwd",
            "/var/lib/kubelet",
            "/var/lib/kubelet/../../etc",
            "/var/lib/kubelet/./x",
            "/var/lib/kubeletX/y",
            "/var/lib/kubelet/pods/a\0b/mount",
        ] {
            let err = root.check(bad, "staging_target_path").unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(err.to_string().contains("staging_target_path"));
        }
        assert!(AllowedRoot::new("relative").is_err());
    }
}

#[cfg(test)]
mod confine_tests {
    use super::*;
    use crate::host::FakeHost;

    #[tokio::test]
    async fn a_path_through_a_link_out_of_the_root_is_refused() {
        let root = AllowedRoot::new("/var/lib/kubelet").unwrap();
        let host = FakeHost::default();
        host.add_link(Path::new("/var/lib/kubelet/pods/evil"), Path::new("/etc"));
        host.add_link(
            Path::new("/var/lib/kubelet/pods/fine"),
            Path::new("/var/lib/kubelet/pods/real"),
        );
        let inside = root
            .check("/var/lib/kubelet/pods/fine/volumes/v/mount", "target_path")
            .unwrap();
        root.confine(&host, &inside, "target_path", PathUse::SetUp)
            .await
            .unwrap();
        let plain = root
            .check("/var/lib/kubelet/pods/p/volumes/v/mount", "target_path")
            .unwrap();
        root.confine(&host, &plain, "target_path", PathUse::SetUp)
            .await
            .unwrap();
        let evil = root
            .check("/var/lib/kubelet/pods/evil/volumes/v/mount", "target_path")
            .unwrap();
        let err = root
            .confine(&host, &evil, "target_path", PathUse::TearDown)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.to_string().contains("target_path"), "{err}");
        assert!(err.to_string().contains("/etc/volumes/v/mount"), "{err}");
    }

    #[tokio::test]
    async fn a_link_at_the_path_itself_is_refused_for_set_up_only() {
        let root = AllowedRoot::new("/var/lib/kubelet").unwrap();
        let host = FakeHost::default();
        let target = root
            .check("/var/lib/kubelet/pods/p/volumes/v/mount", "target_path")
            .unwrap();
        host.add_link(target.as_path(), Path::new("/var/lib/kubelet/pods/q/mount"));
        let err = root
            .confine(&host, &target, "target_path", PathUse::SetUp)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.to_string().contains("symbolic link"), "{err}");
        // Taking down never follows it (the link is only unlinked), so it may go ahead.
        root.confine(&host, &target, "target_path", PathUse::TearDown)
            .await
            .unwrap();
    }
}
