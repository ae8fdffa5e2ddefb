//! An in-memory [`Host`] that records every call, for unit tests of node decisions
//! ("never format a device that already has a filesystem").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use super::{FsStats, FuseMount, Host, HostError, MountEntry, MountTable};

/// A simulated block device.
#[derive(Debug, Clone, Default)]
pub struct FakeDevice {
    /// Device size in bytes.
    pub size: u64,
    /// Filesystem on it, if any.
    pub fs_type: Option<String>,
    /// Filesystem size in bytes: what the filesystem records, apart from the device's size
    /// (a disk expanded in the cloud has a larger device than filesystem until grown).
    pub fs_size: u64,
    /// The serial the kernel reports for it (`/sys/block/*/serial`), if any.
    pub serial: Option<String>,
}

impl FakeDevice {
    /// A device of `size` bytes holding an `fs_type` filesystem that fills it.
    pub fn formatted(fs_type: &str, size: u64) -> Self {
        Self {
            size,
            fs_type: Some(fs_type.to_owned()),
            fs_size: size,
            serial: None,
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
    /// Calls that run into their time limit.
    timeouts: BTreeSet<String>,
    /// Filesystem types whose grow "succeeds" without growing (a tool that exits 0 and does
    /// nothing), so a caller that trusts the exit status is caught.
    inert_grow: BTreeSet<String>,
    /// What `/proc/filesystems` lists.
    kernel_filesystems: Option<BTreeSet<String>>,
    /// SCSI devices, and the size each takes at its next rescan (a SCSI guest sees a new size
    /// only after a rescan).
    scsi: BTreeMap<PathBuf, Option<u64>>,
    /// FUSE mounts (by device number) whose mounter is gone: every path showing one answers
    /// "transport endpoint is not connected", its binds included.
    dead_fuse: BTreeSet<String>,
}

/// A recording fake of the machine.
#[derive(Debug, Default)]
pub struct FakeHost {
    state: Mutex<State>,
    /// While set, `mkfs` waits here after it started (a format still running).
    mkfs_gate: Mutex<Option<std::sync::Arc<tokio::sync::Semaphore>>>,
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

    /// Removes a link (udev dropping a name of a device that went away).
    pub fn remove_link(&self, link: &Path) {
        let mut s = self.state();
        s.links.remove(link);
        s.paths.remove(link);
    }

    /// Removes a device node (a hot-unplugged disk); mounts of it stay, as in the kernel.
    pub fn remove_device(&self, path: &Path) {
        let mut s = self.state();
        s.devices.remove(path);
        s.paths.remove(path);
    }

    /// Changes a device's size (as an expand would); a SCSI device shows it after a rescan.
    pub fn resize_device(&self, path: &Path, size: u64) {
        let mut s = self.state();
        if let Some(pending) = s.scsi.get_mut(path) {
            *pending = Some(size);
        } else if let Some(d) = s.devices.get_mut(path) {
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

    /// Adds a block device at `path` with no by-id link (udev never made one).
    pub fn add_unlinked_device(&self, path: &Path, device: FakeDevice) {
        let mut s = self.state();
        s.devices.insert(path.to_owned(), device);
        let n = s.numbers.len();
        s.numbers
            .entry(path.to_owned())
            .or_insert_with(|| format!("7:{n}"));
        s.paths.insert(path.to_owned());
    }

    /// Makes `path` a SCSI disk, which needs a rescan to see a new size.
    pub fn make_scsi(&self, path: &Path) {
        self.state().scsi.insert(path.to_owned(), None);
    }

    /// Makes grows of `fs_type` exit successfully without growing anything.
    pub fn make_grow_inert(&self, fs_type: &str) {
        self.state().inert_grow.insert(fs_type.to_owned());
    }

    /// Makes every later `mkfs` start (it is recorded) and then hang until [`FakeHost::finish_mkfs`].
    pub fn hold_mkfs(&self) {
        *self
            .mkfs_gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(std::sync::Arc::new(tokio::sync::Semaphore::new(0)));
    }

    /// Lets one held `mkfs` finish.
    pub fn finish_mkfs(&self) {
        if let Some(gate) = &*self
            .mkfs_gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            gate.add_permits(1);
        }
    }

    /// Sets what `/proc/filesystems` lists (by default the block filesystems, nfs and fuse).
    pub fn set_kernel_filesystems(&self, listed: &[&str]) {
        self.state().kernel_filesystems = Some(listed.iter().map(|f| (*f).to_owned()).collect());
    }

    /// Makes the next calls whose name starts with `operation` fail with `detail`.
    pub fn fail(&self, operation: &str, detail: &str) {
        self.state()
            .fail
            .insert(operation.to_owned(), detail.to_owned());
    }

    /// Makes the next calls whose name starts with `operation` run into their time limit; a
    /// timed-out mkfs leaves a half-made filesystem, as a killed one would.
    pub fn time_out(&self, operation: &str) {
        self.state().timeouts.insert(operation.to_owned());
    }

    /// Ends every failure and time-out set with [`FakeHost::fail`] and [`FakeHost::time_out`].
    pub fn heal(&self) {
        let mut s = self.state();
        s.fail.clear();
        s.timeouts.clear();
    }

    /// Binds the subtree `root` of the mount at `source` onto `target`, as a kubelet subPath
    /// is bound.
    pub fn add_subtree_bind(&self, source: &Path, target: &Path, root: &Path) {
        let mut s = self.state();
        let Some(m) = s
            .mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == source)
            .cloned()
        else {
            return;
        };
        s.mounts.push(MountEntry {
            root: root.to_owned(),
            mount_point: target.to_owned(),
            ..m
        });
    }

    /// Ends the mounter of the FUSE mount at `target`, as SIGKILL would: the mount and its
    /// binds stay, and reading any of them fails.
    pub fn kill_fuse_mounter(&self, target: &Path) {
        let mut s = self.state();
        let number = s
            .mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == target && m.fs_type.starts_with("fuse"))
            .map(|m| m.device_number.clone());
        s.dead_fuse.extend(number);
    }

    /// Every call so far, as `"op arg…"` strings.
    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    /// Makes the filesystem mounted at `path` read-only under its mounts, as the kernel does
    /// after errors (`errors=remount-ro`): its superblock options only.
    pub fn set_superblock_read_only(&self, path: &Path) {
        let mut s = self.state();
        let Some(device) = s
            .mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == path)
            .map(|m| m.device_number.clone())
        else {
            return;
        };
        for m in s.mounts.iter_mut().filter(|m| m.device_number == device) {
            m.super_options = vec!["ro".into()];
        }
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
        let timed_out = s.timeouts.iter().any(|op| call.starts_with(op.as_str()));
        s.calls.push(call.clone());
        match failure {
            _ if timed_out => Err(HostError::timed_out(
                call,
                std::time::Duration::from_secs(1),
            )),
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

/// What the fake kernel can mount unless a test says otherwise.
const DEFAULT_KERNEL_FILESYSTEMS: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "nfs", "nfs4", "fuse",
];

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
    async fn mounts(&self) -> Result<MountTable, HostError> {
        Ok(self.state().mounts.clone().into())
    }

    async fn mount_table_readable(&self) -> Result<(), HostError> {
        self.record("read mountinfo".to_owned())
    }

    async fn mount(
        &self,
        source: &Path,
        target: &Path,
        fs_type: &str,
        options: &[String],
    ) -> Result<(), HostError> {
        let recorded = self.record(format!(
            "mount {} {} {fs_type} {}",
            source.display(),
            target.display(),
            options.join(",")
        ));
        // A timed-out mount was killed after the kernel had mounted (the slow part is the
        // tool, not the syscall): the error comes back, the mount stays.
        if matches!(&recorded, Err(e) if !e.timed_out) {
            return recorded;
        }
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
        recorded
    }

    async fn mount_nfs(
        &self,
        export: &crate::nfs::NfsExport,
        target: &Path,
        options: &[String],
    ) -> Result<(), HostError> {
        self.record(format!(
            "mount {export} {} nfs {}",
            target.display(),
            options.join(",")
        ))?;
        let mut s = self.state();
        // An NFS mount shows an anonymous device number, as in the kernel.
        let n = s.anonymous.len();
        let number = s
            .anonymous
            .entry(export.to_string())
            .or_insert_with(|| format!("0:{}", 40 + n))
            .clone();
        let ro = options.iter().any(|o| o == "ro");
        s.mounts
            .push(entry(number, &export.to_string(), target, "nfs", ro));
        Ok(())
    }

    async fn mount_fuse(&self, mount: &FuseMount, target: &Path) -> Result<(), HostError> {
        self.record(format!(
            "fuse {} {} -> {}",
            mount.program,
            mount.args.join(" "),
            target.display()
        ))?;
        let mut s = self.state();
        // A FUSE mount shows an anonymous device number and the mounter's name as its source.
        let n = s.anonymous.len();
        let number = format!("0:{}", 40 + n);
        s.anonymous.insert(format!("fuse-{n}"), number.clone());
        let ro = mount.args.iter().any(|a| a.split(',').any(|o| o == "ro"));
        s.mounts
            .push(entry(number, &mount.program, target, &mount.fs_type, ro));
        Ok(())
    }

    async fn unmount_fuse(&self, target: &Path) -> Result<(), HostError> {
        self.record(format!("fusermount -u {}", target.display()))?;
        let mut s = self.state();
        match s.mounts.iter().rposition(|m| m.mount_point == target) {
            Some(i) => {
                s.mounts.remove(i);
                Ok(())
            }
            None => Err(HostError::new("fusermount -u", "not mounted")),
        }
    }

    async fn write_private_file(&self, path: &Path, _contents: &[u8]) -> Result<(), HostError> {
        // The contents are a secret: never recorded.
        self.record(format!("write-private {}", path.display()))?;
        self.state().paths.insert(path.to_owned());
        Ok(())
    }

    async fn kernel_supports(&self, fs_type: &str) -> Result<bool, HostError> {
        let s = self.state();
        Ok(match &s.kernel_filesystems {
            Some(listed) => listed.contains(fs_type),
            None => DEFAULT_KERNEL_FILESYSTEMS.contains(&fs_type),
        })
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

    async fn unmount(&self, target: &Path) -> Result<bool, HostError> {
        self.record(format!("umount {}", target.display()))?;
        let mut s = self.state();
        match s.mounts.iter().rposition(|m| m.mount_point == target) {
            Some(i) => {
                s.mounts.remove(i);
                Ok(true)
            }
            None => Ok(false),
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
        let recorded = self.record(format!("mkfs {fs_type} {}", device.display()));
        let gate = self
            .mkfs_gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(gate) = gate {
            // Still formatting until the test lets it finish.
            let _ = gate.acquire().await.map(|p| p.forget());
        }
        let mut s = self.state();
        if let Err(e) = recorded {
            if e.timed_out
                && let Some(d) = s.devices.get_mut(device)
            {
                // Killed part-way: a signature without a usable filesystem behind it.
                d.fs_type = Some(fs_type.to_owned());
                d.fs_size = 0;
            }
            return Err(e);
        }
        let d = s
            .devices
            .get_mut(device)
            .ok_or_else(|| HostError::new("mkfs", "no such device"))?;
        d.fs_type = Some(fs_type.to_owned());
        d.fs_size = d.size;
        Ok(())
    }

    async fn wipe_signatures(&self, device: &Path) -> Result<(), HostError> {
        self.record(format!("wipefs {}", device.display()))?;
        if let Some(d) = self.state().devices.get_mut(device) {
            d.fs_type = None;
            d.fs_size = 0;
        }
        Ok(())
    }

    async fn filesystem_size(
        &self,
        device: &Path,
        fs_type: &str,
        _mount_point: Option<&Path>,
    ) -> Result<u64, HostError> {
        self.record(format!("fssize {}", device.display()))?;
        let s = self.state();
        let d = s
            .devices
            .get(device)
            .ok_or_else(|| HostError::new("fssize", "no such device"))?;
        // Like the tools: the size comes from the filesystem there, and only if it is the one asked.
        match &d.fs_type {
            Some(fs) if fs == fs_type => Ok(d.fs_size),
            other => Err(HostError::new(
                format!("fssize {}", device.display()),
                format!("no {fs_type} filesystem (found {other:?})"),
            )),
        }
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
        // The Linux host's matrix: ext grows either way, xfs and btrfs only mounted.
        let offline_ok = matches!(fs_type, "ext2" | "ext3" | "ext4");
        if !matches!(fs_type, "ext2" | "ext3" | "ext4" | "xfs" | "btrfs")
            || (mount_point.is_none() && !offline_ok)
        {
            return Err(HostError::new(
                format!("grow {}", device.display()),
                format!("cannot grow {fs_type:?} {how}"),
            ));
        }
        let mut s = self.state();
        let inert = s.inert_grow.contains(fs_type);
        if let Some(d) = s.devices.get_mut(device)
            && !inert
        {
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

    async fn rescan_device(&self, device: &Path) -> Result<bool, HostError> {
        if !self.state().scsi.contains_key(device) {
            return Ok(false);
        }
        self.record(format!("rescan {}", device.display()))?;
        let mut s = self.state();
        if let Some(size) = s.scsi.get_mut(device).and_then(Option::take)
            && let Some(d) = s.devices.get_mut(device)
        {
            d.size = size;
        }
        Ok(true)
    }

    async fn links_to(&self, dir: &Path, device_number: &str) -> Result<Vec<PathBuf>, HostError> {
        let s = self.state();
        Ok(s.links
            .iter()
            .filter(|(link, target)| {
                link.parent() == Some(dir)
                    && s.devices.contains_key(*target)
                    && s.numbers.get(*target).map(String::as_str) == Some(device_number)
            })
            .map(|(link, _)| link.clone())
            .collect())
    }

    async fn device_by_serial(&self, serial: &str) -> Result<Option<PathBuf>, HostError> {
        Ok(self
            .state()
            .devices
            .iter()
            .find(|(_, d)| d.serial.as_deref() == Some(serial))
            .map(|(p, _)| p.clone()))
    }

    async fn fs_stats(&self, path: &Path) -> Result<FsStats, HostError> {
        let s = self.state();
        let m = s
            .mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == path)
            .ok_or_else(|| HostError::new("statvfs", "not mounted"))?;
        if s.dead_fuse.contains(&m.device_number) {
            return Err(HostError::new(
                format!("statvfs {}", path.display()),
                "Transport endpoint is not connected (os error 107)",
            ));
        }
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

    async fn resolve_existing(&self, path: &Path) -> Result<PathBuf, HostError> {
        // The fake's links (added with `add_link`) are followed wherever they sit on the path.
        let s = self.state();
        let mut real = path.to_owned();
        for _ in 0..8 {
            let Some((link, target)) = s.links.iter().find(|(l, _)| real.starts_with(l)) else {
                break;
            };
            let rest = real.strip_prefix(link).unwrap_or(Path::new("")).to_owned();
            real = target.join(rest);
        }
        Ok(real)
    }

    async fn is_symlink(&self, path: &Path) -> Result<bool, HostError> {
        Ok(self.state().links.contains_key(path))
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
