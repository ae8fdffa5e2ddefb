//! Parsing `/proc/self/mountinfo`: the kernel is the node's only source of truth for mounts.

use std::path::PathBuf;

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

/// Parses mountinfo text; malformed lines are skipped rather than failing the whole read.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let l: Vec<&str> = left.split(' ').collect();
    let r: Vec<&str> = right.split(' ').collect();
    if l.len() < 6 || r.len() < 3 {
        return None;
    }
    Some(MountEntry {
        device_number: l[2].to_owned(),
        root: PathBuf::from(unescape(l[3])),
        mount_point: PathBuf::from(unescape(l[4])),
        mount_options: l[5].split(',').map(str::to_owned).collect(),
        fs_type: r[0].to_owned(),
        source: unescape(r[1]),
        super_options: r[2].split(',').map(str::to_owned).collect(),
    })
}

/// The kernel writes space, tab, newline and backslash in paths as `\ooo` octal escapes.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
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
    String::from_utf8_lossy(&out).into_owned()
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
