//! The real host: runs the standard tools (mount, blkid, mkfs.*, resize2fs, xfs_growfs…) as
//! argument vectors, never through a shell, each with a time limit (see [`HostSettings`]).

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::command::{CommandKind, HostSettings, blocking, failed};
use super::{FsStats, FuseMount, Host, HostError, MountTable, mounts_at, sysfs};

mod kernel;

/// The Linux implementation of [`Host`].
#[derive(Debug, Clone, Default)]
pub struct LinuxHost {
    settings: HostSettings,
    /// Shared by clones: one node, one mount namespace, one table.
    mounts: std::sync::Arc<kernel::MountCache>,
}

impl LinuxHost {
    /// `mount -t fs_type [-o options] source target`, under the mount time limit.
    async fn mount_source(
        &self,
        source: &str,
        target: &Path,
        fs_type: &str,
        options: &[String],
    ) -> Result<(), HostError> {
        let opts = options.join(",");
        let mut args = vec!["-t", fs_type];
        if !opts.is_empty() {
            args.extend(["-o", &opts]);
        }
        args.extend([source, path_str(target)?]);
        self.run(CommandKind::Mount, "mount", &args).await.map(drop)
    }

    /// A host that runs its tools with `settings`.
    pub fn new(settings: HostSettings) -> Self {
        Self {
            settings,
            mounts: std::sync::Arc::default(),
        }
    }

    /// Runs a call on the filesystem (stat, mkdir, sysfs…) with the query time limit: a path on
    /// a dead mount can hang in the kernel, and the RPC must still answer.
    async fn limited<T>(
        &self,
        what: String,
        call: impl std::future::Future<Output = Result<T, HostError>>,
    ) -> Result<T, HostError> {
        let limit = self.settings.timeout(CommandKind::Query);
        tokio::time::timeout(limit, call)
            .await
            .unwrap_or_else(|_| Err(HostError::timed_out(what, limit)))
    }

    /// A call on the filesystem (stat, mkdir, remove…), whole on the blocking pool, under the
    /// query time limit: a path on a dead mount can hang in the kernel, and the RPC must still
    /// answer. One hop per call, however many system calls it makes, and their time is the
    /// kernel's (as `statvfs`'s is), not the driver's.
    async fn fs_call<T: Send + 'static>(
        &self,
        what: String,
        call: impl FnOnce() -> Result<T, HostError> + Send + 'static,
    ) -> Result<T, HostError> {
        blocking(what, self.settings.timeout(CommandKind::Query), call).await
    }

    async fn run(
        &self,
        kind: CommandKind,
        program: &str,
        args: &[&str],
    ) -> Result<String, HostError> {
        self.settings.run(kind, program, args).await
    }
}

fn path_str(p: &Path) -> Result<&str, HostError> {
    p.to_str()
        .ok_or_else(|| HostError::new("path check", format!("{} is not valid UTF-8", p.display())))
}

fn io_err(what: &str, p: &Path, e: std::io::Error) -> HostError {
    HostError::new(format!("{what} {}", p.display()), e.to_string())
}

/// Opens `device` and reads its first block; an error when either fails.
fn check_readable(device: &Path) -> Result<(), HostError> {
    use std::io::Read;
    let mut file = std::fs::File::open(device).map_err(|e| io_err("open", device, e))?;
    let mut first = [0u8; 4096];
    file.read(&mut first)
        .map(drop)
        .map_err(|e| io_err("read", device, e))
}

/// Finds `key` in `text` lines of the form `key<sep>value` and parses the number after it.
fn number_after(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(key)?;
        rest.trim_start_matches([' ', ':', '=', '\t'])
            .trim()
            .parse()
            .ok()
    })
}

/// The data section's size from `xfs_info`: `data = bsize=4096 blocks=2621440, imaxpct=25`.
fn xfs_info_data_bytes(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some("data"))?;
    let field = |key: &str| {
        line.split([' ', ','])
            .find_map(|t| t.strip_prefix(key))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(field("bsize=")? * field("blocks=")?)
}

#[async_trait]
impl Host for LinuxHost {
    async fn mounts(&self) -> Result<MountTable, HostError> {
        if let Some(table) = self.mounts.unchanged() {
            return Ok(table);
        }
        // The kernel writing the table out is its time; parsing it is the driver's own.
        let cache = std::sync::Arc::clone(&self.mounts);
        self.limited("read /proc/self/mountinfo".to_owned(), async move {
            let (table, kernel) = tokio::task::spawn_blocking(move || cache.read())
                .await
                .map_err(|e| HostError::new("read /proc/self/mountinfo", e.to_string()))?;
            crate::outside::add(kernel);
            table
        })
        .await
    }

    async fn mount_table_readable(&self) -> Result<(), HostError> {
        use tokio::io::AsyncReadExt;
        let path = Path::new("/proc/self/mountinfo");
        self.limited("read /proc/self/mountinfo".to_owned(), async {
            let mut file = tokio::fs::File::open(path)
                .await
                .map_err(|e| io_err("open", path, e))?;
            let mut head = [0u8; 512];
            let n = file
                .read(&mut head)
                .await
                .map_err(|e| io_err("read", path, e))?;
            if n == 0 {
                return Err(HostError::new("read /proc/self/mountinfo", "it is empty"));
            }
            Ok(())
        })
        .await
    }

    async fn mount(
        &self,
        source: &Path,
        target: &Path,
        fs_type: &str,
        options: &[String],
    ) -> Result<(), HostError> {
        self.mount_source(path_str(source)?, target, fs_type, options)
            .await
    }

    async fn mount_nfs(
        &self,
        export: &crate::nfs::NfsExport,
        target: &Path,
        options: &[String],
    ) -> Result<(), HostError> {
        // A hard mount of a server that does not answer hangs in mount(8): the time limit kills it.
        self.mount_source(&export.to_string(), target, "nfs", options)
            .await
    }

    async fn mount_fuse(&self, mount: &FuseMount, target: &Path) -> Result<(), HostError> {
        let mut args: Vec<&str> = mount.args.iter().map(String::as_str).collect();
        // The mounter daemonizes once the mount is up (s3fs through libfuse): when it exits
        // the mount is there, and its daemon, in a session of its own, stays.
        let target_text = path_str(target)?;
        if !args.contains(&target_text) {
            args.push(target_text);
        }
        let out = self
            .settings
            .output_without_env(CommandKind::Mount, &mount.program, &args, &mount.env_remove)
            .await?;
        if !out.status.success() {
            return Err(failed(&mount.program, &args, &out));
        }
        let shown = mounts_at(self, target).await?;
        match shown.last() {
            Some(m) if m.fs_type == mount.fs_type => Ok(()),
            other => Err(HostError::new(
                format!("{} … {}", mount.program, target.display()),
                format!(
                    "exited 0 but the kernel shows {} at the target, not a {} mount",
                    other.map_or("nothing".to_owned(), |m| m.fs_type.clone()),
                    mount.fs_type
                ),
            )),
        }
    }

    async fn unmount_fuse(&self, target: &Path) -> Result<(), HostError> {
        let target = path_str(target)?;
        match self
            .run(CommandKind::Mount, "fusermount", &["-u", target])
            .await
        {
            Ok(_) => Ok(()),
            Err(first) => {
                tracing::warn!(target, error = %first, "fusermount -u failed; detaching the mount lazily");
                self.run(CommandKind::Mount, "fusermount", &["-u", "-z", target])
                    .await
                    .map(drop)
            }
        }
    }

    async fn write_private_file(&self, path: &Path, contents: &[u8]) -> Result<(), HostError> {
        use std::io::Write as _;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let owned = path.to_owned();
        let contents = contents.to_vec();
        blocking(
            format!("write {}", path.display()),
            self.settings.timeout(CommandKind::Query),
            move || {
                if let Some(dir) = owned.parent() {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .map_err(|e| io_err("mkdir", dir, e))?;
                    // A directory made earlier by someone else must be private too.
                    use std::os::unix::fs::MetadataExt as _;
                    let mode = std::fs::metadata(dir)
                        .map_err(|e| io_err("stat", dir, e))?
                        .mode();
                    if mode & 0o077 != 0 {
                        return Err(HostError::new(
                            format!("write into {}", dir.display()),
                            format!(
                                "the directory has mode {:04o}; it must be private (0700)",
                                mode & 0o7777
                            ),
                        ));
                    }
                }
                // Created with 0600 from the start (no window where others could read it);
                // replaced whole so an old file's mode cannot linger.
                let tmp = owned.with_extension("tmp");
                let _ = std::fs::remove_file(&tmp);
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| io_err("create", &tmp, e))?;
                file.write_all(&contents)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| io_err("write", &tmp, e))?;
                std::fs::rename(&tmp, &owned).map_err(|e| io_err("rename", &owned, e))
            },
        )
        .await
    }

    async fn kernel_supports(&self, fs_type: &str) -> Result<bool, HostError> {
        self.limited("read /proc/filesystems".to_owned(), async {
            let text = tokio::fs::read_to_string("/proc/filesystems")
                .await
                .map_err(|e| io_err("read", Path::new("/proc/filesystems"), e))?;
            // Lines are "nodev\tnfs" or "\text4".
            Ok(text
                .lines()
                .any(|l| l.split_whitespace().last() == Some(fs_type)))
        })
        .await
    }

    async fn bind_mount(
        &self,
        source: &Path,
        target: &Path,
        read_only: bool,
    ) -> Result<(), HostError> {
        let (source, target) = (source.to_owned(), target.to_owned());
        blocking(
            format!("mount --bind {} {}", source.display(), target.display()),
            self.settings.timeout(CommandKind::Mount),
            move || kernel::bind(&source, &target, read_only),
        )
        .await
    }

    async fn unmount(&self, target: &Path) -> Result<bool, HostError> {
        let owned = target.to_owned();
        blocking(
            format!("umount {}", target.display()),
            self.settings.timeout(CommandKind::Mount),
            move || kernel::unmount(&owned),
        )
        .await
    }

    async fn filesystem_of(&self, device: &Path) -> Result<Option<String>, HostError> {
        let dev = path_str(device)?;
        // `blkid -p` also exits 2 ("nothing found") when it cannot open or read the device at
        // all (a missing node, an I/O error), silently. Prove the device readable first, so an
        // unreadable disk is an error and never "blank" — blank is what leads to mkfs.
        let owned = device.to_owned();
        blocking(
            format!("read {}", device.display()),
            self.settings.timeout(CommandKind::Query),
            move || check_readable(&owned),
        )
        .await?;
        let args = ["-p", "-o", "export", dev];
        let out = self
            .settings
            .output(CommandKind::Query, "blkid", &args)
            .await?;
        match out.status.code() {
            // blkid's documented "nothing found": the device is blank.
            Some(2) => Ok(None),
            Some(0) => {
                let text = String::from_utf8_lossy(&out.stdout);
                let field = |k: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(k).map(str::to_owned))
                        .filter(|v| !v.is_empty())
                };
                // A partition table without a filesystem is still data: report it, never "blank".
                let found = field("TYPE=")
                    .or_else(|| field("PTTYPE=").map(|p| format!("partition-table:{p}")));
                Ok(Some(
                    found.unwrap_or_else(|| "unknown-signature".to_owned()),
                ))
            }
            _ => Err(failed("blkid", &args, &out)),
        }
    }

    async fn mkfs(&self, device: &Path, fs_type: &str) -> Result<(), HostError> {
        let dev = path_str(device)?;
        // No force flags: if a signature was missed, the tool refuses (stdin is closed) instead of overwriting.
        let (program, args): (&str, Vec<&str>) = match fs_type {
            "ext4" => ("mkfs.ext4", vec!["-q", dev]),
            "ext3" => ("mkfs.ext3", vec!["-q", dev]),
            "xfs" => ("mkfs.xfs", vec!["-q", dev]),
            "btrfs" => ("mkfs.btrfs", vec!["-q", dev]),
            other => {
                return Err(HostError::new(
                    format!("mkfs {dev}"),
                    format!("unsupported filesystem type {other:?}"),
                ));
            }
        };
        self.run(CommandKind::Format, program, &args)
            .await
            .map(drop)
    }

    async fn wipe_signatures(&self, device: &Path) -> Result<(), HostError> {
        self.run(CommandKind::Format, "wipefs", &["-a", path_str(device)?])
            .await
            .map(drop)
    }

    async fn filesystem_size(
        &self,
        device: &Path,
        fs_type: &str,
        mount_point: Option<&Path>,
    ) -> Result<u64, HostError> {
        let dev = path_str(device)?;
        let parse_err =
            |what: &str| HostError::new(what.to_owned(), "could not read the filesystem size");
        match (fs_type, mount_point) {
            // ext keeps its superblock in the device's page cache: dumpe2fs sees a grow at once.
            ("ext4" | "ext3" | "ext2", _) => {
                let out = self
                    .run(CommandKind::Query, "dumpe2fs", &["-h", dev])
                    .await?;
                let blocks =
                    number_after(&out, "Block count").ok_or_else(|| parse_err("dumpe2fs"))?;
                let size = number_after(&out, "Block size").ok_or_else(|| parse_err("dumpe2fs"))?;
                Ok(blocks * size)
            }
            // Mounted, xfs_db would read the on-disk superblock, which still shows the old size
            // after xfs_growfs until the log is checkpointed; xfs_info asks the kernel.
            ("xfs", Some(mp)) => {
                let out = self
                    .run(CommandKind::Query, "xfs_info", &[path_str(mp)?])
                    .await?;
                xfs_info_data_bytes(&out).ok_or_else(|| parse_err("xfs_info"))
            }
            ("xfs", None) => {
                let out = self
                    .run(
                        CommandKind::Query,
                        "xfs_db",
                        &[
                            "-r",
                            "-c",
                            "sb 0",
                            "-c",
                            "print dblocks",
                            "-c",
                            "print blocksize",
                            dev,
                        ],
                    )
                    .await?;
                let blocks = number_after(&out, "dblocks").ok_or_else(|| parse_err("xfs_db"))?;
                let size = number_after(&out, "blocksize").ok_or_else(|| parse_err("xfs_db"))?;
                Ok(blocks * size)
            }
            // The superblock's size, which an online `resize max` updates at once; never the
            // device's, which would make an expanded disk look grown.
            ("btrfs", _) => {
                let out = self
                    .run(
                        CommandKind::Query,
                        "btrfs",
                        &["inspect-internal", "dump-super", dev],
                    )
                    .await?;
                number_after(&out, "total_bytes")
                    .ok_or_else(|| parse_err("btrfs inspect-internal dump-super"))
            }
            (other, _) => Err(HostError::new(
                format!("measure {dev}"),
                format!("cannot measure a {other:?} filesystem"),
            )),
        }
    }

    async fn grow_filesystem(
        &self,
        device: &Path,
        fs_type: &str,
        mount_point: Option<&Path>,
    ) -> Result<(), HostError> {
        let dev = path_str(device)?;
        match (fs_type, mount_point) {
            ("ext4" | "ext3" | "ext2", None) => {
                // resize2fs insists on a freshly checked filesystem when offline; e2fsck exits 1 when it fixed something.
                let args = ["-f", "-p", dev];
                let out = self
                    .settings
                    .output(CommandKind::Resize, "e2fsck", &args)
                    .await?;
                if !matches!(out.status.code(), Some(0 | 1)) {
                    return Err(failed("e2fsck", &args, &out));
                }
                self.run(CommandKind::Resize, "resize2fs", &[dev])
                    .await
                    .map(drop)
            }
            ("ext4" | "ext3" | "ext2", Some(_)) => self
                .run(CommandKind::Resize, "resize2fs", &[dev])
                .await
                .map(drop),
            ("xfs", Some(mp)) => self
                .run(CommandKind::Resize, "xfs_growfs", &[path_str(mp)?])
                .await
                .map(drop),
            ("btrfs", Some(mp)) => self
                .run(
                    CommandKind::Resize,
                    "btrfs",
                    &["filesystem", "resize", "max", path_str(mp)?],
                )
                .await
                .map(drop),
            (other, mp) => Err(HostError::new(
                format!("grow {dev}"),
                format!(
                    "cannot grow {other:?} {}",
                    if mp.is_some() { "online" } else { "offline" }
                ),
            )),
        }
    }

    async fn device_number(&self, device: &Path) -> Result<String, HostError> {
        let owned = device.to_owned();
        self.fs_call(format!("stat {}", device.display()), move || {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(&owned).map_err(|e| io_err("stat", &owned, e))?;
            if !meta.file_type().is_block_device() {
                return Err(HostError::new(
                    format!("stat {}", owned.display()),
                    "not a block device",
                ));
            }
            let rdev = meta.rdev();
            Ok(format!(
                "{}:{}",
                rustix::fs::major(rdev),
                rustix::fs::minor(rdev)
            ))
        })
        .await
    }

    async fn device_size(&self, device: &Path) -> Result<u64, HostError> {
        let out = self
            .run(
                CommandKind::Query,
                "blockdev",
                &["--getsize64", path_str(device)?],
            )
            .await?;
        out.trim()
            .parse()
            .map_err(|e| HostError::new("blockdev --getsize64", format!("unexpected output: {e}")))
    }

    async fn resolve_device(&self, link: &Path) -> Result<Option<PathBuf>, HostError> {
        let link = link.to_owned();
        self.fs_call(format!("resolve {}", link.display()), move || {
            let target = match std::fs::canonicalize(&link) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_err("resolve", &link, e)),
            };
            let meta = std::fs::metadata(&target).map_err(|e| io_err("stat", &target, e))?;
            if meta.file_type().is_block_device() {
                Ok(Some(target))
            } else {
                Err(HostError::new(
                    format!("resolve {}", link.display()),
                    format!("{} is not a block device", target.display()),
                ))
            }
        })
        .await
    }

    async fn links_to(&self, dir: &Path, device_number: &str) -> Result<Vec<PathBuf>, HostError> {
        self.limited(format!("list {}", dir.display()), async {
            let mut entries = match tokio::fs::read_dir(dir).await {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(io_err("list", dir, e)),
            };
            let mut links = Vec::new();
            while let Some(entry) = entries
                .next_entry()
                .await
                .map_err(|e| io_err("list", dir, e))?
            {
                use std::os::unix::fs::MetadataExt;
                // A dangling or foreign link is just not one of the device's names.
                let Ok(meta) = tokio::fs::metadata(entry.path()).await else {
                    continue;
                };
                let rdev = meta.rdev();
                let number = format!("{}:{}", rustix::fs::major(rdev), rustix::fs::minor(rdev));
                if meta.file_type().is_block_device() && number == device_number {
                    links.push(entry.path());
                }
            }
            links.sort();
            Ok(links)
        })
        .await
    }

    async fn fs_stats(&self, path: &Path) -> Result<FsStats, HostError> {
        let owned = path.to_owned();
        blocking(
            format!("statvfs {}", path.display()),
            self.settings.timeout(CommandKind::Query),
            move || statvfs(&owned),
        )
        .await
    }

    async fn is_block_device(&self, path: &Path) -> Result<bool, HostError> {
        let owned = path.to_owned();
        self.fs_call(
            format!("stat {}", path.display()),
            move || match std::fs::metadata(&owned) {
                Ok(m) => Ok(m.file_type().is_block_device()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(io_err("stat", &owned, e)),
            },
        )
        .await
    }

    async fn resolve_existing(&self, path: &Path) -> Result<PathBuf, HostError> {
        let path = path.to_owned();
        let what = format!("resolve {}", path.display());
        let limit = self.settings.timeout(CommandKind::Query);
        blocking(what, limit, move || {
            let mut base = path.clone();
            let mut rest = Vec::new();
            loop {
                match std::fs::canonicalize(&base) {
                    Ok(real) => return Ok(rest.iter().rev().fold(real, |p, c| p.join(c))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        if std::fs::symlink_metadata(&base).is_ok() {
                            return Err(HostError::new(
                                format!("resolve {}", path.display()),
                                format!("{} is a dangling symbolic link", base.display()),
                            ));
                        }
                        match (base.file_name(), base.parent()) {
                            (Some(name), Some(parent)) => {
                                rest.push(name.to_owned());
                                base = parent.to_owned();
                            }
                            _ => return Err(io_err("resolve", &path, e)),
                        }
                    }
                    Err(e) => return Err(io_err("resolve", &path, e)),
                }
            }
        })
        .await
    }

    async fn is_symlink(&self, path: &Path) -> Result<bool, HostError> {
        let owned = path.to_owned();
        self.fs_call(format!("stat {}", path.display()), move || {
            // A symlink's own inode lives in its parent's filesystem: lstat of one never asks
            // a mounted filesystem, so an error here (a dead FUSE or NFS mount at the path)
            // means a mount point, not a link.
            Ok(std::fs::symlink_metadata(&owned).is_ok_and(|m| m.file_type().is_symlink()))
        })
        .await
    }

    async fn exists(&self, path: &Path) -> Result<bool, HostError> {
        let owned = path.to_owned();
        self.fs_call(
            format!("stat {}", path.display()),
            move || match std::fs::symlink_metadata(&owned) {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(io_err("stat", &owned, e)),
            },
        )
        .await
    }

    async fn make_dir(&self, path: &Path) -> Result<(), HostError> {
        let owned = path.to_owned();
        self.fs_call(format!("mkdir {}", path.display()), move || {
            std::fs::create_dir_all(&owned).map_err(|e| io_err("mkdir", &owned, e))
        })
        .await
    }

    async fn make_file(&self, path: &Path) -> Result<(), HostError> {
        let owned = path.to_owned();
        self.fs_call(format!("create {}", path.display()), move || {
            if let Some(parent) = owned.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io_err("mkdir", parent, e))?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&owned)
                .map(drop)
                .map_err(|e| io_err("create", &owned, e))
        })
        .await
    }

    async fn rescan_device(&self, device: &Path) -> Result<bool, HostError> {
        self.limited(format!("rescan {}", device.display()), async {
            sysfs::rescan(&self.settings.sysfs_root, device).await
        })
        .await
    }

    async fn device_by_serial(&self, serial: &str) -> Result<Option<PathBuf>, HostError> {
        self.limited(format!("find the disk with serial {serial}"), async {
            sysfs::device_by_serial(&self.settings.sysfs_root, &self.settings.dev_root, serial)
                .await
        })
        .await
    }

    async fn remove_path(&self, path: &Path) -> Result<(), HostError> {
        let owned = path.to_owned();
        self.fs_call(format!("remove {}", path.display()), move || {
            let meta = match std::fs::symlink_metadata(&owned) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_err("stat", &owned, e)),
            };
            let result = if meta.is_dir() {
                std::fs::remove_dir(&owned)
            } else {
                std::fs::remove_file(&owned)
            };
            match result {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err("remove", &owned, e)),
            }
        })
        .await
    }
}

fn statvfs(path: &Path) -> Result<FsStats, HostError> {
    let st = rustix::fs::statvfs(path).map_err(|e| io_err("statvfs", path, e.into()))?;
    let frsize = st.f_frsize;
    let total_bytes = st.f_blocks.saturating_mul(frsize);
    let free_bytes = st.f_bfree.saturating_mul(frsize);
    Ok(FsStats {
        total_bytes,
        available_bytes: st.f_bavail.saturating_mul(frsize),
        used_bytes: total_bytes.saturating_sub(free_bytes),
        total_inodes: st.f_files,
        free_inodes: st.f_ffree,
        used_inodes: st.f_files.saturating_sub(st.f_ffree),
        read_only: st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY),
    })
}

#[cfg(test)]
mod tests;
