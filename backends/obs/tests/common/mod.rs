//! Helpers the FUSE tests share.

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
