//! The CSI unix socket: parsed from the `endpoint` setting, created private (mode 0600), never
//! stolen from a running instance, and removed again on a clean exit.

use std::fs::{self, DirBuilder};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;

use crate::error::Error;

/// How long a connection attempt to an existing socket may take before it counts as stale.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Turns `unix:///run/everest/csi.sock` or `/run/everest/csi.sock` into the socket path.
pub fn parse_endpoint(endpoint: &str) -> Result<PathBuf, Error> {
    let raw = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    let path = Path::new(raw);
    if raw.is_empty() || !path.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "endpoint {endpoint:?} must be unix:///absolute/path or an absolute path"
        )));
    }
    Ok(path.to_path_buf())
}

/// A bound socket: the stream of connections to serve, and the file to remove afterwards.
#[derive(Debug)]
pub struct BoundSocket {
    /// Incoming connections, for `Server::serve_with_incoming_shutdown`.
    pub incoming: UnixListenerStream,
    /// Removes the socket file when dropped.
    pub file: SocketFile,
}

/// The socket file this process created; dropping it removes the file if it is still ours.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// (device, inode) at bind time, so a socket re-created by someone else is left alone.
    identity: (u64, u64),
}

impl SocketFile {
    /// Where the socket lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = fs::symlink_metadata(&self.path)
            .map(|m| (m.dev(), m.ino()) == self.identity)
            .unwrap_or(false);
        if ours && let Err(e) = fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove socket");
        }
    }
}

/// Binds the socket at `path`: creates the parent (0750) if missing, refuses to take over a
/// socket something still answers on, removes a stale one, and makes the new one 0600.
pub async fn bind(path: &Path) -> Result<BoundSocket, Error> {
    let shown = path.display();
    if let Some(parent) = path.parent()
        && !parent.exists()
    {
        DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(parent)
            .map_err(|e| {
                Error::Internal(format!(
                    "cannot create socket directory {}: {e}",
                    parent.display()
                ))
            })?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            let answered = tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(path)).await;
            if matches!(answered, Ok(Ok(_))) {
                return Err(Error::FailedPrecondition(format!(
                    "another instance is serving on {shown}; stop it first"
                )));
            }
            tracing::info!(path = %shown, "removing stale socket");
            fs::remove_file(path)
                .map_err(|e| Error::Internal(format!("cannot remove stale socket {shown}: {e}")))?;
        }
        Ok(_) => {
            // Never delete something that is not a socket: the endpoint is probably mistyped.
            return Err(Error::FailedPrecondition(format!(
                "{shown} exists and is not a socket; refusing to replace it"
            )));
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Internal(format!("cannot inspect {shown}: {e}"))),
    }
    let listener = bind_private(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::Internal(format!("cannot make socket {shown} private: {e}")))?;
    let meta = fs::symlink_metadata(path)
        .map_err(|e| Error::Internal(format!("cannot inspect new socket {shown}: {e}")))?;
    Ok(BoundSocket {
        incoming: UnixListenerStream::new(listener),
        file: SocketFile {
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
        },
    })
}

/// Binds with a umask that leaves the socket owner-only from the first instant, so no client
/// can connect in the window before the explicit chmod.
fn bind_private(path: &Path) -> Result<UnixListener, Error> {
    use rustix::fs::Mode;
    use rustix::process::umask;
    // The mask is process-wide, but the daemons bind before serving anything, so no other file
    // creation races with the change.
    let old = umask(Mode::from_raw_mode(0o177));
    let bound = UnixListener::bind(path);
    umask(old);
    bound.map_err(|e| Error::Internal(format!("cannot bind socket {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        assert_eq!(
            parse_endpoint("unix:///run/everest/csi.sock").unwrap(),
            PathBuf::from("/run/everest/csi.sock")
        );
        assert_eq!(
            parse_endpoint("/csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        for bad in [
            "",
            "unix://",
            "unix://relative.sock",
            "tcp://127.0.0.1:1",
            "csi.sock",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn binds_private_refuses_live_replaces_stale_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/csi.sock");
        let bound = bind(&path).await.unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o750);

        let err = bind(&path).await.unwrap_err();
        assert!(err.to_string().contains("another instance"), "{err}");

        // Dropping the listener but keeping the file leaves a stale socket behind.
        let BoundSocket { incoming, file } = bound;
        drop(incoming);
        std::mem::forget(file);
        let again = bind(&path).await.unwrap();
        drop(again);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn refuses_to_replace_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csi.sock");
        fs::write(&path, b"not a socket").unwrap();
        assert!(bind(&path).await.is_err());
        assert!(path.exists());
    }
}
