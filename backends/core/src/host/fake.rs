//! An in-memory [`Host`] that records every call, for unit tests of node decisions
//! ("never format a device that already has a filesystem").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use super::{FsStats, Host, HostError, MountEntry};

/// A simulated block device.
#[derive(Debug, Clone, Default)]
pub struct FakeDevice {
    /// Device size in bytes.
    pub size: u64,
    /// Filesystem on it, if any.
    pub fs_type: Option<String>,
    /// Filesystem size in bytes.
    pub fs_size: u64,
}

impl FakeDevice {
    /// A device of `size` bytes holding an `fs_type` filesystem that fills it.
    pub fn formatted(fs_type: &str, size: u64) -> Self {
        Self {
            size,
            fs_type: Some(fs_type.to_owned()),
            fs_size: size,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    devices: BTreeMap<PathBuf, FakeDevice>,
    /// `major:minor` per device node ever added: distinct, and kept after a removal, as the
    /// kernel keeps a mounted device's number.
    numbers: BTreeMap<PathBuf, String>,
    /// btrfs superblocks' anonymous device numbers, per source.
    anonymous: BTreeMap<String, String>,
    links: BTreeMap<PathBuf, PathBuf>,
    paths: BTreeSet<PathBuf>,
    dirs: BTreeSet<PathBuf>,
    mounts: Vec<MountEntry>,
    calls: Vec<String>,
    fail: BTreeMap<String, String>,
}

/// A recording fake of the machine.
#[derive(Debug, Default)]
pub struct FakeHost {
    state: Mutex<State>,
}

impl FakeHost {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a block device at `path` reachable through `link` (e.g. a by-id name).
    pub fn add_device(&self, link: &Path, path: &Path, device: FakeDevice) {
        let mut s = self.state();
        s.devices.insert(path.to_owned(), device);
        let n = s.numbers.len();
        s.numbers
            .entry(path.to_owned())
            .or_insert_with(|| format!("7:{n}"));
        s.links.insert(link.to_owned(), path.to_owned());
        s.paths.insert(link.to_owned());
        s.paths.insert(path.to_owned());
    }

    /// Puts a different device behind an existing device name (the kernel re-using a name after
    /// a hot-unplug): same path, new device number.
    pub fn replace_device(&self, path: &Path, device: FakeDevice) {
        let mut s = self.state();
        let n = s.numbers.len();
        s.numbers.insert(path.to_owned(), format!("7:{n}"));
        s.devices.insert(path.to_owned(), device);
    }

    /// Adds a link at `link` to `target`, which is not a block device (resolving it fails, as
    /// on Linux).
    pub fn add_link(&self, link: &Path, target: &Path) {
        let mut s = self.state();
        s.links.insert(link.to_owned(), target.to_owned());
        s.paths.insert(link.to_owned());
        s.paths.insert(target.to_owned());
    }

    /// Removes a device node (a hot-unplugged disk); mounts of it stay, as in the kernel.
    pub fn remove_device(&self, path: &Path) {
        let mut s = self.state();
        s.devices.remove(path);
        s.paths.remove(path);
    }

    /// Changes a device's size (as an expand would).
    pub fn resize_device(&self, path: &Path, size: u64) {
        if let Some(d) = self.state().devices.get_mut(path) {
            d.size = size;
        }
    }

    /// The current state of a device.
    pub fn device(&self, path: &Path) -> Option<FakeDevice> {
        self.state().devices.get(path).cloned()
    }

    /// Creates a directory or file path as if it existed on the host.
    pub fn add_path(&self, path: &Path) {
        self.state().paths.insert(path.to_owned());
    }

    /// Makes the next calls whose name starts with `operation` fail with `detail`.
    pub fn fail(&self, operation: &str, detail: &str) {
        self.state()
            .fail
            .insert(operation.to_owned(), detail.to_owned());
    }

    /// Every call so far, as `"op arg…"` strings.
    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    /// The current mount table.
    pub fn mount_table(&self) -> Vec<MountEntry> {
        self.state().mounts.clone()
    }

    fn record(&self, call: String) -> Result<(), HostError> {
        let mut s = self.state();
        let failure = s
            .fail
            .iter()
            .find(|(op, _)| call.starts_with(op.as_str()))
            .map(|(_, d)| d.clone());
        s.calls.push(call.clone());
        match failure {
            Some(detail) => Err(HostError::new(call, detail)),
            None => Ok(()),
        }
    }
}

fn entry(
    device_number: String,
    source: &str,
    target: &Path,
    fs_type: &str,
    read_only: bool,
) -> MountEntry {
    MountEntry {
        device_number,
        root: PathBuf::from("/"),
        mount_point: target.to_owned(),
        mount_options: vec![if read_only { "ro" } else { "rw" }.into()],
        fs_type: fs_type.into(),
        source: source.into(),
        super_options: vec!["rw".into()],
    }
}

/// The device node bound onto `path` (a raw block publish), as `stat` on the path would find it:
/// the devtmpfs mount's root names the node under /dev.
fn bound_device(s: &State, path: &Path) -> Option<PathBuf> {
    let m = s.mounts.iter().rev().find(|m| m.mount_point == path)?;
    if m.fs_type != "devtmpfs" {
        return None;
    }
    Some(Path::new("/dev").join(m.root.strip_prefix("/").ok()?))
}

#[async_trait]
impl Host for FakeHost {
    async fn mounts(&self) -> Result<Vec<MountEntry>, HostError> {
        Ok(self.state().mounts.clone())
    }

    async fn mount(
        &self,
        source: &Path,
        target: &Path,
        fs_type: &str,
        options: &[String],
    ) -> Result<(), HostError> {
        self.record(format!(
            "mount {} {} {fs_type} {}",
            source.display(),
            target.display(),
            options.join(",")
        ))?;
        let ro = options.iter().any(|o| o == "ro");
        let mut s = self.state();
        let src = source.to_string_lossy().into_owned();
        // Like the kernel: a block filesystem shows its device's number, btrfs an anonymous one.
        let number = if fs_type == "btrfs" {
            let n = s.anonymous.len();
            s.anonymous
                .entry(src.clone())
                .or_insert_with(|| format!("0:{}", 40 + n))
                .clone()
        } else {
            // mount(8) follows a link (a by-id name) to the device node.
            let node = s.links.get(source).map_or(source, PathBuf::as_path);
            s.numbers.get(node).cloned().unwrap_or_else(|| "0:0".into())
        };
        let m = entry(number, &src, target, fs_type, ro);
        s.mounts.push(m);
        Ok(())
    }

    async fn bind_mount(
        &self,
        source: &Path,
        target: &Path,
        read_only: bool,
    ) -> Result<(), HostError> {
        self.record(format!(
            "bind {} {} ro={read_only}",
            source.display(),
            target.display()
        ))?;
        let mut s = self.state();
        let mounted = s
            .mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == source)
            .cloned();
        let bound = match mounted {
            Some(m) => entry(m.device_number, &m.source, target, &m.fs_type, read_only),
            // A device node bound from /dev shows as Linux shows it: devtmpfs, its root the
            // node's name there, its source the devtmpfs's own name.
            None => MountEntry {
                root: Path::new("/").join(source.file_name().unwrap_or_default()),
                ..entry("0:5".into(), "udev", target, "devtmpfs", read_only)
            },
        };
        s.mounts.push(bound);
        Ok(())
    }

    async fn unmount(&self, target: &Path) -> Result<(), HostError> {
        self.record(format!("umount {}", target.display()))?;
        let mut s = self.state();
        match s.mounts.iter().rposition(|m| m.mount_point == target) {
            Some(i) => {
                s.mounts.remove(i);
                Ok(())
            }
            None => Err(HostError::new("umount", "not mounted")),
        }
    }

    async fn filesystem_of(&self, device: &Path) -> Result<Option<String>, HostError> {
        self.record(format!("blkid {}", device.display()))?;
        Ok(self
            .state()
            .devices
            .get(device)
            .and_then(|d| d.fs_type.clone()))
    }

    async fn mkfs(&self, device: &Path, fs_type: &str) -> Result<(), HostError> {
        self.record(format!("mkfs {fs_type} {}", device.display()))?;
        let mut s = self.state();
        let d = s
            .devices
            .get_mut(device)
            .ok_or_else(|| HostError::new("mkfs", "no such device"))?;
        d.fs_type = Some(fs_type.to_owned());
        d.fs_size = d.size;
        Ok(())
    }

    async fn filesystem_size(&self, device: &Path, _fs_type: &str) -> Result<u64, HostError> {
        self.record(format!("fssize {}", device.display()))?;
        Ok(self
            .state()
            .devices
            .get(device)
            .map(|d| d.fs_size)
            .unwrap_or(0))
    }

    async fn grow_filesystem(
        &self,
        device: &Path,
        fs_type: &str,
        mount_point: Option<&Path>,
    ) -> Result<(), HostError> {
        let how = if mount_point.is_some() {
            "online"
        } else {
            "offline"
        };
        self.record(format!("grow {fs_type} {} {how}", device.display()))?;
        if let Some(d) = self.state().devices.get_mut(device) {
            d.fs_size = d.size;
        }
        Ok(())
    }

    async fn device_number(&self, device: &Path) -> Result<String, HostError> {
        let s = self.state();
        let device = &bound_device(&s, device).unwrap_or_else(|| device.to_owned());
        s.devices
            .contains_key(device)
            .then(|| s.numbers.get(device).cloned())
            .flatten()
            .ok_or_else(|| HostError::new(format!("stat {}", device.display()), "no such device"))
    }

    async fn device_size(&self, device: &Path) -> Result<u64, HostError> {
        let s = self.state();
        let device = &bound_device(&s, device).unwrap_or_else(|| device.to_owned());
        s.devices
            .get(device)
            .map(|d| d.size)
            .ok_or_else(|| HostError::new("blockdev", "no such device"))
    }

    async fn resolve_device(&self, link: &Path) -> Result<Option<PathBuf>, HostError> {
        let s = self.state();
        match s.links.get(link) {
            Some(target) if !s.devices.contains_key(target) => Err(HostError::new(
                format!("resolve {}", link.display()),
                format!("{} is not a block device", target.display()),
            )),
            Some(target) => Ok(Some(target.clone())),
            None => Ok(s.devices.contains_key(link).then(|| link.to_owned())),
        }
    }

    async fn fs_stats(&self, path: &Path) -> Result<FsStats, HostError> {
        let s = self.state();
        let m = s
            .mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == path)
            .ok_or_else(|| HostError::new("statvfs", "not mounted"))?;
        let size = s
            .devices
            .get(Path::new(&m.source))
            .map(|d| d.fs_size)
            .unwrap_or(0);
        Ok(FsStats {
            total_bytes: size,
            available_bytes: size,
            used_bytes: 0,
            total_inodes: 1000,
            free_inodes: 990,
            used_inodes: 10,
            read_only: m.is_read_only(),
        })
    }

    async fn is_block_device(&self, path: &Path) -> Result<bool, HostError> {
        let s = self.state();
        let bound = bound_device(&s, path).is_some_and(|d| s.devices.contains_key(&d));
        Ok(s.devices.contains_key(path) || bound)
    }

    async fn exists(&self, path: &Path) -> Result<bool, HostError> {
        Ok(self.state().paths.contains(path))
    }

    async fn make_dir(&self, path: &Path) -> Result<(), HostError> {
        self.record(format!("mkdir {}", path.display()))?;
        let mut s = self.state();
        s.paths.insert(path.to_owned());
        s.dirs.insert(path.to_owned());
        Ok(())
    }

    async fn make_file(&self, path: &Path) -> Result<(), HostError> {
        self.record(format!("touch {}", path.display()))?;
        let mut s = self.state();
        if s.dirs.contains(path) {
            return Err(HostError::new(
                format!("create {}", path.display()),
                "Is a directory (os error 21)",
            ));
        }
        s.paths.insert(path.to_owned());
        Ok(())
    }

    async fn remove_path(&self, path: &Path) -> Result<(), HostError> {
        self.record(format!("rm {}", path.display()))?;
        let mut s = self.state();
        s.paths.remove(path);
        s.dirs.remove(path);
        Ok(())
    }
}
