//! Where the client's credentials come from: fixed when the client is built, or a file that is
//! checked before every call and re-read when it changed, so keys rotate without a restart.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::auth::{Secret, TokenSource};
use super::config::Credentials;
use super::error::{Error, Result};

/// Static AK/SK credentials.
pub(crate) struct AkSk {
    pub access_key: Secret,
    pub secret_key: Secret,
    pub security_token: Option<Secret>,
}

/// How calls authenticate: signed with AK/SK, or with an IAM token fetched for a user.
pub(crate) enum Auth {
    AkSk(AkSk),
    Token(TokenSource),
}

impl Auth {
    fn new(credentials: Credentials) -> Self {
        match credentials {
            Credentials::AkSk {
                access_key,
                secret_key,
                security_token,
            } => Auth::AkSk(AkSk {
                access_key: Secret::new(access_key),
                secret_key: Secret::new(secret_key),
                security_token: security_token.map(Secret::new),
            }),
            Credentials::Password {
                domain,
                user,
                password,
            } => Auth::Token(TokenSource::new(domain, user, Secret::new(password))),
        }
    }
}

/// The credentials in force for the next call.
pub(crate) enum AuthSource {
    /// Given when the client was built.
    Fixed(Arc<Auth>),
    /// Read from a file, again whenever the file changes.
    File(FileAuth),
}

impl AuthSource {
    /// Credentials that never change.
    pub fn fixed(credentials: Credentials) -> Result<Self> {
        credentials.validate()?;
        Ok(AuthSource::Fixed(Arc::new(Auth::new(credentials))))
    }

    /// Credentials from `path`, read now (an error here stops the daemon's start) and again
    /// whenever the file is replaced or rewritten.
    pub fn file(path: &Path) -> Result<Self> {
        let (stamp, credentials) = read_checked(path)?;
        Ok(AuthSource::File(FileAuth {
            path: path.to_path_buf(),
            loaded: Mutex::new(Loaded {
                stamp,
                auth: Arc::new(Auth::new(credentials)),
            }),
        }))
    }

    /// The credentials to use now.
    pub fn current(&self) -> Arc<Auth> {
        match self {
            AuthSource::Fixed(auth) => auth.clone(),
            AuthSource::File(file) => file.current(),
        }
    }
}

/// What identifies one version of the file: a rotation replaces it (a new inode, as with a
/// Kubernetes Secret's symlink swap) or rewrites it (a new mtime, ctime or size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: (i64, i64),
    ctime_ns: (i64, i64),
}

impl Stamp {
    fn of(meta: &Metadata) -> Self {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: (meta.mtime(), meta.mtime_nsec()),
            ctime_ns: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

struct Loaded {
    stamp: Stamp,
    auth: Arc<Auth>,
}

/// A credentials file and what was last read from it.
pub(crate) struct FileAuth {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl FileAuth {
    fn current(&self) -> Arc<Auth> {
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        let shown = self.path.display();
        let stamp = match std::fs::metadata(&self.path) {
            Ok(meta) => Stamp::of(&meta),
            Err(e) => {
                // Mid-rotation, or the Secret was removed: the keys in use may still be valid.
                tracing::warn!(file = %shown, error = %e, "cannot check the credentials file; keeping the credentials in use");
                return loaded.auth.clone();
            }
        };
        if stamp == loaded.stamp {
            return loaded.auth.clone();
        }
        // Remember this version even when it is unusable, so it is reported once, not per call.
        loaded.stamp = stamp;
        match read_checked(&self.path) {
            Ok((stamp, credentials)) => {
                loaded.stamp = stamp;
                loaded.auth = Arc::new(Auth::new(credentials));
                tracing::info!(file = %shown, "credentials file changed; new credentials in use");
            }
            Err(e) => {
                tracing::warn!(file = %shown, error = %e, "the changed credentials file is unusable; keeping the credentials in use");
            }
        }
        loaded.auth.clone()
    }
}

/// Reads and checks a credentials file: `{"access_key","secret_key"[,"security_token"]}` or
/// `{"domain","user","password"}` (a `"type"` tag is optional). Errors name the file and what
/// is wrong, never its content.
pub fn read_credentials_file(path: &Path) -> Result<Credentials> {
    read_checked(path).map(|(_, c)| c)
}

fn read_checked(path: &Path) -> Result<(Stamp, Credentials)> {
    let shown = path.display();
    let bad = |what: String| Error::Config(format!("credentials_file {shown}: {what}"));
    let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    // The mode of what was opened, not of a path that could be swapped in between.
    let meta = file
        .metadata()
        .map_err(|e| bad(format!("cannot inspect: {e}")))?;
    check_private(&meta).map_err(bad)?;
    let text = std::io::read_to_string(file).map_err(|e| bad(format!("cannot read: {e}")))?;
    let mut value: serde_json::Value =
        serde_json::from_str(&text).map_err(|_| bad("is not valid JSON".into()))?;
    // Accept the plain form without a "type" tag: the keys say which kind it is.
    if let Some(obj) = value.as_object_mut()
        && !obj.contains_key("type")
    {
        let kind = if obj.contains_key("access_key") {
            "ak_sk"
        } else {
            "password"
        };
        obj.insert("type".into(), kind.into());
    }
    let credentials: Credentials = serde_json::from_value(value).map_err(|_| {
        bad(r#"must hold {"access_key","secret_key"} or {"domain","user","password"}"#.into())
    })?;
    credentials.validate().map_err(|e| bad(e.to_string()))?;
    Ok((Stamp::of(&meta), credentials))
}

/// Refuses a file that others may read, or a group other than the daemon's own: Kubernetes
/// makes a Secret's files readable by the pod's `fsGroup`, which is the daemon's group when
/// `runAsGroup` equals it, and by no one else.
fn check_private(meta: &Metadata) -> std::result::Result<(), String> {
    check_mode(meta.mode(), meta.gid(), rustix::process::getegid().as_raw())
}

fn check_mode(mode: u32, file_gid: u32, own_gid: u32) -> std::result::Result<(), String> {
    let perms = mode & 0o777;
    if perms & 0o004 != 0 {
        return Err(format!(
            "mode {perms:04o} lets every user read it; make it readable by its owner only (chmod 600)"
        ));
    }
    if perms & 0o040 != 0 && file_gid != own_gid {
        return Err(format!(
            "mode {perms:04o} lets group {file_gid} read it, which is not this daemon's group \
             ({own_gid}); make it readable by its owner only (chmod 600)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn modes_readable_by_others_or_a_foreign_group_are_refused() {
        for ok in [0o600, 0o400, 0o640, 0o440, 0o700] {
            check_mode(0o100000 | ok, 7, 7).unwrap_or_else(|e| panic!("{ok:o}: {e}"));
        }
        for bad in [0o644, 0o604, 0o444, 0o666, 0o777] {
            let err = check_mode(0o100000 | bad, 7, 7).unwrap_err();
            assert!(err.contains(&format!("{bad:04o}")), "{err}");
        }
        for foreign in [0o640, 0o440] {
            let err = check_mode(foreign, 7, 8).unwrap_err();
            assert!(err.contains("group 7"), "{err}");
        }
        check_mode(0o600, 7, 8).unwrap();
    }

    fn write(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_world_readable_file_is_refused_without_showing_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        write(
            &path,
            r#"{"access_key":"AK","secret_key":"SECRETVALUE"}"#,
            0o644,
        );
        let err = read_credentials_file(&path).unwrap_err().to_string();
        assert!(err.contains("c.json") && err.contains("0644"), "{err}");
        assert!(!err.contains("SECRETVALUE"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            read_credentials_file(&path).unwrap(),
            Credentials::AkSk { .. }
        ));
    }

    #[test]
    fn plain_and_tagged_forms_and_unreadable_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        write(
            &path,
            r#"{"domain":"d","user":"u","password":"PWVALUE"}"#,
            0o600,
        );
        assert!(matches!(
            read_credentials_file(&path).unwrap(),
            Credentials::Password { .. }
        ));
        write(
            &path,
            r#"{"type":"ak_sk","access_key":"A","secret_key":"S"}"#,
            0o600,
        );
        assert!(matches!(
            read_credentials_file(&path).unwrap(),
            Credentials::AkSk { .. }
        ));
        for broken in ["{not json SECRETVALUE", r#"{"access_key":"SECRETVALUE"}"#] {
            write(&path, broken, 0o600);
            let err = read_credentials_file(&path).unwrap_err().to_string();
            assert!(!err.contains("SECRETVALUE"), "{err}");
            assert!(err.contains("c.json"), "{err}");
        }
    }

    fn access_key(auth: &Auth) -> &str {
        match auth {
            Auth::AkSk(k) => k.access_key.expose(),
            Auth::Token(_) => "token",
        }
    }

    #[test]
    fn a_changed_file_is_read_again_and_a_broken_one_keeps_the_old_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        write(&path, r#"{"access_key":"AK1","secret_key":"S1"}"#, 0o600);
        let source = AuthSource::file(&path).unwrap();
        assert_eq!(access_key(&source.current()), "AK1");
        assert_eq!(access_key(&source.current()), "AK1");

        // Replaced the way a Kubernetes Secret is: a new file renamed over the old one.
        let next = dir.path().join("next.json");
        write(&next, r#"{"access_key":"AK2","secret_key":"S2"}"#, 0o600);
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(access_key(&source.current()), "AK2");

        // Rewritten in place, world-readable: refused, the keys in use stay.
        write(&path, r#"{"access_key":"AK3","secret_key":"S3"}"#, 0o644);
        assert_eq!(access_key(&source.current()), "AK2");
        // Fixed: taken.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(access_key(&source.current()), "AK3");

        // Gone for a moment (mid-rotation): the keys in use stay.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(access_key(&source.current()), "AK3");
    }
}
