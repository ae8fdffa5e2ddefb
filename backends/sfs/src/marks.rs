//! Where a directory volume (mode `subdir`) keeps Everest's marker: the file
//! `<base_dir>/.everest/<volume directory>`, one `key=value` line per marker key.
//!
//! Not inside the volume's directory, because that directory is what pods mount: a pod could
//! read, change or delete a mark kept there, and `rm -rf` of its own data would take it. Beside
//! it, in `.everest` (mode 0700), no pod sees it: pods mount their own directory only, and a
//! volume directory can never be named `.everest` (volume path components may not start with
//! a dot). The controller writes the mark before it makes the directory, so a directory found
//! without one was not made by Everest.

use std::collections::BTreeMap;

use crate::dirs::DirAttrs;

/// The directory under `base_dir` holding the marks.
pub const MARK_DIR: &str = ".everest";

/// The mark directory's attributes: only its owner (the controller's NFS identity) enters.
pub const MARK_DIR_ATTRS: DirAttrs = DirAttrs {
    mode: 0o700,
    uid: None,
    gid: None,
};

/// The mark file's name for the volume directory `path` (`/`-separated components, which hold
/// no `~`, so the flattened name is unique).
pub fn mark_name(path: &str) -> String {
    path.replace('/', "~")
}

/// The volume directory path of the mark file `name` (what [`mark_name`] flattened).
pub fn unflatten(name: &str) -> String {
    name.replace('~', "/")
}

/// The file's content: `key=value` lines in key order.
pub fn render(tags: &BTreeMap<String, String>) -> Vec<u8> {
    tags.iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect::<String>()
        .into_bytes()
}

/// The key/value pairs of a mark file; lines that are not `key=value` are skipped, so a file
/// that is not a mark reads as no marker at all.
pub fn parse(content: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(content)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use everest_backend::BackendName;
    use everest_backend::marker::{ClusterId, Marker};
    use everest_backend::params::K8sMeta;

    #[test]
    fn a_mark_round_trips_and_garbage_is_no_mark() {
        let m = Marker::new(
            &ClusterId::new("prod").unwrap(),
            &BackendName::new("nfs").unwrap(),
            &K8sMeta {
                pv_name: Some("pvc-1".into()),
                ..K8sMeta::default()
            },
        );
        let text = render(&m.to_tags());
        assert_eq!(
            String::from_utf8(text.clone()).unwrap(),
            "everest-backend=nfs\neverest-cluster=prod\neverest-created-by=everest\neverest-pv-name=pvc-1\n"
        );
        assert_eq!(Marker::read(&parse(&text)), Some(m));
        assert_eq!(Marker::read(&parse(b"hello\nworld")), None);
        assert_eq!(Marker::read(&parse(&[0xff, 0xfe])), None);
        assert_eq!(mark_name("team/pvc-1"), "team~pvc-1");
        assert_eq!(unflatten(&mark_name("team/pvc-1")), "team/pvc-1");
    }
}
