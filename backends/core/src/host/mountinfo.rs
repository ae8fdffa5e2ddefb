//! Parsing `/proc/self/mountinfo`: the kernel is the node's only source of truth for mounts.

use std::collections::HashMap;
use std::ops::{Deref, Range};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the mounted device.
    pub device_number: String,
    /// The path inside the source filesystem that is mounted (`/` unless a bind of a subtree).
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Per-mount options (`ro`/`rw`, …).
    pub mount_options: Vec<String>,
    /// Filesystem type (`ext4`, `xfs`, `fuse.s3fs`, …).
    pub fs_type: String,
    /// The mount source (a device path for block filesystems).
    pub source: String,
    /// Per-superblock options.
    pub super_options: Vec<String>,
}

impl MountEntry {
    /// Whether this mount (or its superblock) is read-only.
    pub fn is_read_only(&self) -> bool {
        self.mount_options.iter().any(|o| o == "ro") || self.super_options.iter().any(|o| o == "ro")
    }
}

/// The mount table at one moment, oldest mount first: cheap to clone and share, so one read of
/// the kernel's table can serve every lookup of a call (and every call until the table changes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountTable(Arc<Vec<MountEntry>>);

impl MountTable {
    /// The mounts at exactly `path`, oldest first.
    pub fn at<'a>(&'a self, path: &'a Path) -> impl DoubleEndedIterator<Item = &'a MountEntry> {
        self.0.iter().filter(move |m| m.mount_point == path)
    }

    /// The newest mount at exactly `path`: what a process opening the path reaches.
    pub fn newest_at(&self, path: &Path) -> Option<&MountEntry> {
        self.0.iter().rev().find(|m| m.mount_point == path)
    }
}

impl From<Vec<MountEntry>> for MountTable {
    fn from(entries: Vec<MountEntry>) -> Self {
        Self(Arc::new(entries))
    }
}

/// A table with the bytes it was parsed from and each entry's line in them, so that parsing
/// the next read takes back the entry of every line that did not change: after one mount
/// more or less, a node with hundreds of mounts parses one line, not all of them.
#[derive(Debug)]
pub(crate) struct ParsedTable {
    bytes: Vec<u8>,
    lines: Vec<Range<usize>>,
    table: MountTable,
}

impl ParsedTable {
    /// Parses `bytes`, reusing what `previous` parsed where a line is the same. Its entries can
    /// be taken back only when no caller still holds its table; otherwise all is parsed.
    pub(crate) fn parse(bytes: Vec<u8>, previous: Option<ParsedTable>) -> Self {
        let old_bytes;
        let mut known: HashMap<&[u8], MountEntry> = HashMap::new();
        if let Some(old) = previous
            && let Ok(entries) = Arc::try_unwrap(old.table.0)
        {
            old_bytes = old.bytes;
            known.reserve(entries.len());
            for (line, entry) in old.lines.into_iter().zip(entries) {
                known.insert(&old_bytes[line], entry);
            }
        }
        let mut lines = Vec::new();
        let mut entries = Vec::new();
        let mut start = 0;
        for line in bytes.split(|b| *b == b'\n') {
            let range = start..start + line.len();
            start = range.end + 1;
            // Lines are unique (each begins with its mount's ID), so each is taken back once.
            if let Some(entry) = known.remove(line).or_else(|| parse_line(line)) {
                lines.push(range);
                entries.push(entry);
            }
        }
        Self {
            bytes,
            lines,
            table: entries.into(),
        }
    }

    /// The table.
    pub(crate) fn table(&self) -> &MountTable {
        &self.table
    }
}

impl Deref for MountTable {
    type Target = [MountEntry];

    fn deref(&self) -> &[MountEntry] {
        &self.0
    }
}

/// Parses mountinfo text; malformed lines are skipped rather than failing the whole read.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    parse_mountinfo_bytes(text.as_bytes())
}

/// Parses mountinfo as the kernel writes it: bytes, not necessarily UTF-8 (a mount point may be
/// named in any encoding), so one odd mount elsewhere on the host cannot hide all the others.
pub fn parse_mountinfo_bytes(bytes: &[u8]) -> Vec<MountEntry> {
    bytes
        .split(|b| *b == b'\n')
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &[u8]) -> Option<MountEntry> {
    let at = line.windows(3).position(|w| w == b" - ")?;
    // Fields taken one by one, never collected: the table is parsed whole on a node with
    // hundreds of mounts, and each allocation saved counts once per mount.
    let mut left = line[..at].split(|b| *b == b' ');
    let mut right = line[at + 3..].split(|b| *b == b' ');
    let device_number = left.nth(2)?;
    let (root, mount_point, mount_options) = (left.next()?, left.next()?, left.next()?);
    let (fs_type, source, super_options) = (right.next()?, right.next()?, right.next()?);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let list = |b: &[u8]| {
        b.split(|c| *c == b',')
            .map(|o| String::from_utf8_lossy(o).into_owned())
            .collect()
    };
    Some(MountEntry {
        device_number: text(device_number),
        root: path(unescape(root)),
        mount_point: path(unescape(mount_point)),
        mount_options: list(mount_options),
        fs_type: text(fs_type),
        source: text(&unescape(source)),
        super_options: list(super_options),
    })
}

fn path(bytes: Vec<u8>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(bytes))
}

/// The kernel writes space, tab, newline and backslash in paths as `\ooo` octal escapes.
fn unescape(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,errors=remount-ro
98 22 7:3 / /var/lib/kubelet/plugins/kubernetes.io/csi/everest.csi.io/abc/globalmount rw,relatime shared:50 - xfs /dev/loop3 rw,attr2,inode64
99 22 7:3 / /var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/pvc\\040x/mount ro,relatime shared:50 - xfs /dev/loop3 rw,attr2
bogus line
";

    #[test]
    fn parses_entries_and_escapes() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].fs_type, "xfs");
        assert_eq!(m[1].source, "/dev/loop3");
        assert_eq!(
            m[2].mount_point,
            PathBuf::from("/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/pvc x/mount")
        );
        assert!(m[2].is_read_only());
        assert!(!m[1].is_read_only());
    }
}

#[cfg(test)]
mod reuse {
    use super::*;

    /// Lines a table is drawn from: mounts, a remount of one of them, and a bad line.
    const POOL: &[&str] = &[
        "22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,errors=remount-ro",
        "98 22 7:3 / /var/lib/kubelet/plugins/x/globalmount rw,relatime shared:50 - xfs /dev/loop3 rw,attr2",
        "98 22 7:3 / /var/lib/kubelet/plugins/x/globalmount ro,relatime shared:50 - xfs /dev/loop3 ro,attr2",
        "99 22 7:3 / /var/lib/kubelet/pods/p/volumes/v\\040x/mount ro,relatime - xfs /dev/loop3 rw",
        "100 22 0:5 /loop4 /var/lib/kubelet/plugins/volumeDevices/a rw - devtmpfs udev rw",
        "bogus line",
    ];

    proptest::proptest! {
        #[test]
        fn a_parse_reusing_the_last_one_equals_a_fresh_parse(
            first in proptest::collection::vec(0..POOL.len(), 0..8),
            second in proptest::collection::vec(0..POOL.len(), 0..8),
            held: bool,
        ) {
            let text = |picks: &[usize]| picks.iter().map(|i| format!("{}\n", POOL[*i])).collect::<String>();
            let (first, second) = (text(&first), text(&second));
            let old = ParsedTable::parse(first.clone().into_bytes(), None);
            proptest::prop_assert_eq!(&**old.table(), &parse_mountinfo(&first));
            // A caller still holding the old table makes the parse start afresh.
            let holder = held.then(|| old.table().clone());
            let new = ParsedTable::parse(second.clone().into_bytes(), Some(old));
            proptest::prop_assert_eq!(&**new.table(), &parse_mountinfo(&second));
            drop(holder);
        }
    }
}

#[cfg(test)]
mod properties {
    use std::os::unix::ffi::OsStrExt;

    use proptest::prelude::*;

    use super::*;

    /// A path as the kernel writes it into mountinfo.
    fn escape(path: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in path {
            match b {
                b' ' | b'\t' | b'\n' | b'\\' => out.extend(format!("\\{b:03o}").bytes()),
                _ => out.push(*b),
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512),
            ..ProptestConfig::default()
        })]

        #[test]
        fn any_bytes_parse_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_mountinfo_bytes(&bytes);
        }

        #[test]
        fn any_mount_point_comes_back_as_the_kernel_named_it(
            name in proptest::collection::vec(1u8..=255, 1..40),
            ro in any::<bool>(),
        ) {
            let mut point = b"/var/lib/kubelet/pods/".to_vec();
            point.extend(name.iter().filter(|b| **b != b'/'));
            let mut line = b"36 25 0:42 / ".to_vec();
            line.extend(escape(&point));
            line.extend(format!(" {},relatime shared:1 - fuse.s3fs s3fs rw\n", if ro { "ro" } else { "rw" }).bytes());
            // Another mount, whose name is not UTF-8, must not hide this one.
            let mut text = b"37 25 7:1 / /mnt/caf\xe9 rw - ext4 /dev/loop1 rw\n".to_vec();
            text.extend(line);
            let parsed = parse_mountinfo_bytes(&text);
            prop_assert_eq!(parsed.len(), 2);
            prop_assert_eq!(parsed[1].mount_point.as_os_str().as_bytes(), &point[..]);
            prop_assert_eq!(parsed[1].is_read_only(), ro);
            prop_assert_eq!(parsed[0].mount_point.as_os_str().as_bytes(), b"/mnt/caf\xe9");
        }
    }
}
