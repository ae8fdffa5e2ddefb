//! S3 access keys: from the controller's credentials file, or per volume from CSI secrets
//! (the provisioner's for the controller, NodeStage's for the node). `Debug` never shows them
//! and no error message carries them.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use everest_backend::Error;
use everest_backend::secrets::Secrets;
use serde::Deserialize;

/// The secret key holding the access key ID (Huawei Everest's name, so existing Secrets work).
pub const ACCESS_KEY_SECRET: &str = "access.key";
/// The secret key holding the secret access key.
pub const SECRET_KEY_SECRET: &str = "secret.key";

/// An access key pair.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Keys {
    /// The access key ID.
    pub access_key: String,
    /// The secret access key.
    pub secret_key: String,
}

impl fmt::Debug for S3Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("S3Keys(<redacted>)")
    }
}

impl S3Keys {
    /// The pair in `secrets`, if both keys are there; only one of them is an error.
    pub fn from_secrets(secrets: &Secrets) -> Result<Option<Self>, Error> {
        match (
            secrets.get(ACCESS_KEY_SECRET),
            secrets.get(SECRET_KEY_SECRET),
        ) {
            (None, None) => Ok(None),
            (Some(a), Some(s)) => Self::checked(a.trim(), s.trim()).map(Some),
            _ => Err(Error::InvalidArgument(format!(
                "the secrets hold only one of {ACCESS_KEY_SECRET} and {SECRET_KEY_SECRET}; both are needed"
            ))),
        }
    }

    fn checked(access_key: &str, secret_key: &str) -> Result<Self, Error> {
        // s3fs's passwd file is `AK:SK` on one line: a ':' in the key ID or a line break in
        // either would change what it reads.
        let plain =
            |k: &str| !k.is_empty() && !k.chars().any(|c| c.is_control() || c.is_whitespace());
        if !plain(access_key) || !plain(secret_key) || access_key.contains(':') {
            return Err(Error::InvalidArgument(format!(
                "the {ACCESS_KEY_SECRET}/{SECRET_KEY_SECRET} secrets must be non-empty, without spaces or line breaks, and {ACCESS_KEY_SECRET} without ':'"
            )));
        }
        Ok(Self {
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
        })
    }

    /// Reads `{"access_key": …, "secret_key": …}` from `path`, which only its owner (and the
    /// daemon's own group) may read. Errors name the file and the fault, never its content.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let shown = path.display();
        let bad =
            |what: String| Error::InvalidArgument(format!("credentials_file {shown}: {what}"));
        let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
        // The mode of what was opened, not of a path that could be swapped in between.
        let meta = file
            .metadata()
            .map_err(|e| bad(format!("cannot inspect: {e}")))?;
        let perms = meta.mode() & 0o777;
        let own_gid = rustix::process::getegid().as_raw();
        if perms & 0o004 != 0 || (perms & 0o040 != 0 && meta.gid() != own_gid) {
            return Err(bad(format!(
                "mode {perms:04o} lets other users read it; make it readable by its owner only (chmod 600)"
            )));
        }
        let text = std::io::read_to_string(file).map_err(|e| bad(format!("cannot read: {e}")))?;
        let keys: S3Keys = serde_json::from_str(&text)
            .map_err(|_| bad(r#"must hold exactly {"access_key": …, "secret_key": …}"#.into()))?;
        Self::checked(&keys.access_key, &keys.secret_key).map_err(|_| {
            bad(
                "the keys must be non-empty, without spaces, line breaks or ':' in access_key"
                    .into(),
            )
        })
    }

    /// The line s3fs reads from its `passwd_file`.
    pub fn s3fs_passwd(&self) -> String {
        format!("{}:{}\n", self.access_key, self.secret_key)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn secrets(pairs: &[(&str, &str)]) -> Secrets {
        Secrets::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    #[test]
    fn keys_come_from_secrets_and_never_show() {
        let k = S3Keys::from_secrets(&secrets(&[
            ("access.key", "AK1"),
            ("secret.key", "hunter2"),
        ]))
        .unwrap()
        .unwrap();
        assert!(!format!("{k:?}").contains("hunter2"));
        assert_eq!(k.s3fs_passwd(), "AK1:hunter2\n");
        assert_eq!(S3Keys::from_secrets(&secrets(&[])).unwrap(), None);
        for bad in [
            &[("access.key", "AK1")][..],
            &[("access.key", "A:K"), ("secret.key", "s")],
            &[("access.key", "AK"), ("secret.key", "s\nx")],
            &[("access.key", ""), ("secret.key", "s")],
        ] {
            let err = S3Keys::from_secrets(&secrets(bad)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(!err.to_string().contains("s\nx"));
        }
    }

    #[test]
    fn a_file_readable_by_others_is_refused_without_showing_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s3.json");
        std::fs::write(&path, r#"{"access_key":"AK","secret_key":"hunter2"}"#).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = S3Keys::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("0644") && !err.contains("hunter2"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(S3Keys::from_file(&path).unwrap().access_key, "AK");
        std::fs::write(&path, r#"{"access_key":"AK","secret_key":"hunter2","x":1}"#).unwrap();
        let err = S3Keys::from_file(&path).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
