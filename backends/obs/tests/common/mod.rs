//! Helpers the object-volume tests share.

// Each test binary uses its own share of these.
#![allow(dead_code)]

use std::path::Path;

/// Whether any process's command line or environment shows `needle`.
pub fn shown_by_any_process(needle: &str) -> Option<String> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        for file in ["cmdline", "environ"] {
            if let Ok(bytes) = std::fs::read(entry.path().join(file))
                && String::from_utf8_lossy(&bytes).contains(needle)
            {
                return Some(format!("{}/{file}", entry.path().display()));
            }
        }
    }
    None
}

/// Why FUSE mounts cannot be made here, if they cannot.
pub fn fuse_unavailable() -> Option<String> {
    if rustix::process::geteuid().as_raw() != 0 {
        return Some("not root: FUSE mounts need root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    None
}

/// A plain S3 client, for looking at what the backend made through the S3 API.
#[derive(Debug, Clone)]
pub struct Admin(pub aws_sdk_s3::Client);

impl std::ops::Deref for Admin {
    type Target = aws_sdk_s3::Client;
    fn deref(&self) -> &aws_sdk_s3::Client {
        &self.0
    }
}

impl Admin {
    /// Whether the bucket exists.
    pub async fn bucket_exists(&self, bucket: &str) -> bool {
        self.head_bucket().bucket(bucket).send().await.is_ok()
    }

    /// The keys under `prefix` (one page).
    pub async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let out = self
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .send()
            .await
            .unwrap();
        out.contents()
            .iter()
            .filter_map(|o| o.key())
            .map(str::to_owned)
            .collect()
    }

    /// Writes an object.
    pub async fn put(&self, bucket: &str, key: &str, body: &str) {
        self.put_object()
            .bucket(bucket)
            .key(key)
            .body(body.as_bytes().to_vec().into())
            .send()
            .await
            .unwrap();
    }

    /// Reads an object as text.
    pub async fn get(&self, bucket: &str, key: &str) -> String {
        let out = self
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        String::from_utf8(out.body.collect().await.unwrap().into_bytes().to_vec()).unwrap()
    }
}

/// A path under `dir`'s kubelet root, as the kubelet hands it over.
pub fn kubelet_path(dir: &Path, rel: &str) -> everest_backend::paths::HostPath {
    let kubelet = dir.join("kubelet");
    everest_backend::paths::AllowedRoot::new(&kubelet)
        .unwrap()
        .check(&kubelet.join(rel).display().to_string(), "path")
        .unwrap()
}

/// Writes a backend credentials file (`{"access_key","secret_key"}`) at `path`, mode 0600 as
/// the backend requires.
pub fn write_credentials(path: &Path, access_key: &str, secret_key: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(
        path,
        format!(r#"{{"access_key":"{access_key}","secret_key":"{secret_key}"}}"#),
    )
    .unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}
