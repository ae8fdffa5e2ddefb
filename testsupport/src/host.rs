//! What the harness reads from and undoes on the machine: mounts (from `/proc/self/mountinfo`),
//! loop devices (`losetup`), filesystem sizes (`statvfs`), and whether the machine can run the
//! tests that attach disks at all.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Returns `true` (after printing why) when this process cannot run tests that attach disks:
/// they need root and `/dev/loop-control`. Use as `if skip_unless_root_and_loop() { return; }`.
pub fn skip_unless_root_and_loop() -> bool {
    let euid = rustix::process::geteuid().as_raw();
    let reason = if euid != 0 {
        Some(format!(
            "not root (euid {euid}): loop devices and mounts need root"
        ))
    } else if !Path::new("/dev/loop-control").exists() {
        Some("/dev/loop-control is missing: this kernel offers no loop devices".to_string())
    } else {
        None
    };
    match reason {
        Some(why) => {
            crate::skip(why);
            true
        }
        None => false,
    }
}

/// Returns `true` (after recording the skip, see [`crate::skip`]) when `program` is not on
/// `PATH`; `package` says what to install.
pub fn skip_without(program: &str, package: &str) -> bool {
    if have_program(program) {
        return false;
    }
    crate::skip(format!(
        "{program} is not installed (apt-get install -y {package})"
    ));
    true
}

/// Whether a program is on `PATH` (e.g. `mkfs.xfs`).
pub fn have_program(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false)
}

/// One line of `/proc/self/mountinfo`, the fields the tests look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the mounted device.
    pub dev: String,
    /// The root of the mount within its filesystem (`/` unless a bind of a subtree).
    pub root: String,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`, `ro`, ...).
    pub options: String,
    /// Filesystem type.
    pub fs_type: String,
    /// Mount source (a device path for block filesystems).
    pub source: String,
}

impl MountEntry {
    /// Whether the mount is read-only.
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

/// Decodes the octal escapes (`\040` for a space) the kernel writes in mountinfo paths.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every mount this process sees.
pub fn mounts() -> Vec<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            if l.len() < 6 || r.len() < 2 {
                return None;
            }
            Some(MountEntry {
                dev: l[2].to_string(),
                root: unescape(l[3]),
                mount_point: PathBuf::from(unescape(l[4])),
                options: l[5].to_string(),
                fs_type: r[0].to_string(),
                source: unescape(r[1]),
            })
        })
        .collect()
}

/// The mounts at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<MountEntry> {
    let mut found: Vec<MountEntry> = mounts()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.mount_point.components().count()));
    found
}

/// The mount at exactly `path` (the topmost, if stacked).
pub fn mount_at(path: &Path) -> Option<MountEntry> {
    mounts().into_iter().rev().find(|m| m.mount_point == path)
}

/// Unmounts everything at or under `dir`, deepest first (lazily when a plain unmount fails).
/// Returns what it had to unmount, so callers can report a leak.
pub fn unmount_all_under(dir: &Path) -> Vec<PathBuf> {
    let mut undone = Vec::new();
    // A path can be mounted over several times; loop until nothing is left (bounded).
    for _ in 0..8 {
        let left = mounts_under(dir);
        if left.is_empty() {
            break;
        }
        for m in left {
            let ok = quiet(Command::new("umount").arg(&m.mount_point));
            if !ok {
                quiet(Command::new("umount").arg("-l").arg(&m.mount_point));
            }
            undone.push(m.mount_point);
        }
    }
    undone
}

/// A loop device and the file behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub name: String,
    /// The backing file, without the kernel's ` (deleted)` suffix.
    pub back_file: PathBuf,
}

/// Every loop device with a backing file (`losetup -J -l`).
pub fn loop_devices() -> Vec<LoopDevice> {
    let Ok(out) = Command::new("losetup")
        .args(["-J", "-l"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    // No loop device at all prints nothing.
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return Vec::new();
    };
    json["loopdevices"]
        .as_array()
        .map(|devs| {
            devs.iter()
                .filter_map(|d| {
                    let name = d["name"].as_str()?.to_string();
                    let back = d["back-file"].as_str()?;
                    let back = back.strip_suffix(" (deleted)").unwrap_or(back);
                    Some(LoopDevice {
                        name,
                        back_file: PathBuf::from(back),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The loop devices whose backing file lies under `dir`.
pub fn loop_devices_under(dir: &Path) -> Vec<LoopDevice> {
    loop_devices()
        .into_iter()
        .filter(|l| l.back_file.starts_with(dir))
        .collect()
}

/// Detaches every loop device backed by a file under `dir`; returns those it detached.
pub fn detach_loops_under(dir: &Path) -> Vec<LoopDevice> {
    let found = loop_devices_under(dir);
    for l in &found {
        quiet(Command::new("losetup").arg("-d").arg(&l.name));
    }
    found
}

/// Total and available bytes of the filesystem holding `path` (`statvfs`).
pub fn fs_size(path: &Path) -> std::io::Result<FsSize> {
    let st = rustix::fs::statvfs(path)?;
    Ok(FsSize {
        total_bytes: st.f_blocks * st.f_frsize,
        available_bytes: st.f_bavail * st.f_frsize,
    })
}

/// The size of a filesystem, as `statvfs` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSize {
    /// Size of the filesystem.
    pub total_bytes: u64,
    /// Bytes available to an unprivileged user.
    pub available_bytes: u64,
}

/// The size of a block device or file, by seeking to its end.
pub fn device_size(path: &Path) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::End(0))
}

/// The filesystem UUID of a device (`blkid`), to prove a volume was never reformatted.
pub fn fs_uuid(device: &Path) -> Option<String> {
    let out = Command::new("blkid")
        .args(["-o", "value", "-s", "UUID"])
        .arg(device)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let uuid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!uuid.is_empty()).then_some(uuid)
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The program a test server runs: the path in the variable `var` (which must exist), else
/// `name` when it is on `PATH`; otherwise why there is none, with `how` to get it.
pub fn program_from_env(var: &str, name: &str, how: &str) -> Result<std::path::PathBuf, String> {
    if let Some(p) = std::env::var_os(var) {
        let p = std::path::PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("{var}={} does not exist", p.display()))
        };
    }
    if have_program(name) {
        return Ok(std::path::PathBuf::from(name));
    }
    Err(format!("{name} not found: {how}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/x\\"), r"/x\\");
    }

    #[test]
    fn reads_this_process_mounts() {
        // Every Linux process sees a root mount.
        assert!(mounts().iter().any(|m| m.mount_point == Path::new("/")));
    }
}
