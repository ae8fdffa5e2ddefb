//! The real host: runs the standard tools (mount, blkid, mkfs.*, resize2fs, xfs_growfs…) as
//! argument vectors, never through a shell, with standard input closed so no tool can prompt.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use async_trait::async_trait;
use tokio::process::Command;

use super::{FsStats, Host, HostError, MountEntry, parse_mountinfo};

/// The Linux implementation of [`Host`].
#[derive(Debug, Clone, Default)]
pub struct LinuxHost;

/// Runs `program args…` with standard input closed; its output, whatever the exit status.
async fn output(program: &str, args: &[&str]) -> Result<std::process::Output, HostError> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| HostError::new(command_line(program, args), format!("could not start: {e}")))
}

/// The error for a run of `program args…` that ended in `out`: its exit status and stderr.
fn failed(program: &str, args: &[&str], out: &std::process::Output) -> HostError {
    HostError::new(
        command_line(program, args),
        format!(
            "{} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        ),
    )
}

fn command_line(program: &str, args: &[&str]) -> String {
    format!("{program} {}", args.join(" "))
}

/// Runs `program args…`, returning standard output, or an error with the exit status and stderr.
async fn run(program: &str, args: &[&str]) -> Result<String, HostError> {
    let out = output(program, args).await?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(failed(program, args, &out))
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
async fn check_readable(device: &Path) -> Result<(), HostError> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(device)
        .await
        .map_err(|e| io_err("open", device, e))?;
    let mut first = [0u8; 4096];
    file.read(&mut first)
        .await
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

#[async_trait]
impl Host for LinuxHost {
    async fn mounts(&self) -> Result<Vec<MountEntry>, HostError> {
        let text = tokio::fs::read_to_string("/proc/self/mountinfo")
            .await
            .map_err(|e| io_err("read", Path::new("/proc/self/mountinfo"), e))?;
        Ok(parse_mountinfo(&text))
    }

    async fn mount(
        &self,
        source: &Path,
        target: &Path,
        fs_type: &str,
        options: &[String],
    ) -> Result<(), HostError> {
        let opts = options.join(",");
        let mut args = vec!["-t", fs_type];
        if !opts.is_empty() {
            args.extend(["-o", &opts]);
        }
        args.extend([path_str(source)?, path_str(target)?]);
        run("mount", &args).await.map(drop)
    }

    async fn bind_mount(
        &self,
        source: &Path,
        target: &Path,
        read_only: bool,
    ) -> Result<(), HostError> {
        let target = path_str(target)?;
        run("mount", &["--bind", path_str(source)?, target]).await?;
        if read_only {
            // A bind mount ignores "ro" on the first call; it takes a remount to make it read-only.
            if let Err(e) = run("mount", &["-o", "remount,bind,ro", target]).await {
                let _ = run("umount", &[target]).await;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn unmount(&self, target: &Path) -> Result<(), HostError> {
        run("umount", &[path_str(target)?]).await.map(drop)
    }

    async fn filesystem_of(&self, device: &Path) -> Result<Option<String>, HostError> {
        let dev = path_str(device)?;
        // `blkid -p` also exits 2 ("nothing found") when it cannot open or read the device at
        // all (a missing node, an I/O error), silently. Prove the device readable first, so an
        // unreadable disk is an error and never "blank" — blank is what leads to mkfs.
        check_readable(device).await?;
        let args = ["-p", "-o", "export", dev];
        let out = output("blkid", &args).await?;
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
        run(program, &args).await.map(drop)
    }

    async fn filesystem_size(&self, device: &Path, fs_type: &str) -> Result<u64, HostError> {
        let dev = path_str(device)?;
        let parse_err =
            |what: &str| HostError::new(what.to_owned(), "could not read the filesystem size");
        match fs_type {
            "ext4" | "ext3" | "ext2" => {
                let out = run("dumpe2fs", &["-h", dev]).await?;
                let blocks =
                    number_after(&out, "Block count").ok_or_else(|| parse_err("dumpe2fs"))?;
                let size = number_after(&out, "Block size").ok_or_else(|| parse_err("dumpe2fs"))?;
                Ok(blocks * size)
            }
            "xfs" => {
                let out = run(
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
            // btrfs grows with `resize max` whenever asked; report the device size so no grow is forced.
            _ => self.device_size(device).await,
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
                let out = output("e2fsck", &args).await?;
                if !matches!(out.status.code(), Some(0 | 1)) {
                    return Err(failed("e2fsck", &args, &out));
                }
                run("resize2fs", &[dev]).await.map(drop)
            }
            ("ext4" | "ext3" | "ext2", Some(_)) => run("resize2fs", &[dev]).await.map(drop),
            ("xfs", Some(mp)) => run("xfs_growfs", &[path_str(mp)?]).await.map(drop),
            ("btrfs", Some(mp)) => run("btrfs", &["filesystem", "resize", "max", path_str(mp)?])
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
        use std::os::unix::fs::MetadataExt;
        let meta = tokio::fs::metadata(device)
            .await
            .map_err(|e| io_err("stat", device, e))?;
        if !meta.file_type().is_block_device() {
            return Err(HostError::new(
                format!("stat {}", device.display()),
                "not a block device",
            ));
        }
        let rdev = meta.rdev();
        Ok(format!(
            "{}:{}",
            rustix::fs::major(rdev),
            rustix::fs::minor(rdev)
        ))
    }

    async fn device_size(&self, device: &Path) -> Result<u64, HostError> {
        let out = run("blockdev", &["--getsize64", path_str(device)?]).await?;
        out.trim()
            .parse()
            .map_err(|e| HostError::new("blockdev --getsize64", format!("unexpected output: {e}")))
    }

    async fn resolve_device(&self, link: &Path) -> Result<Option<PathBuf>, HostError> {
        let target = match tokio::fs::canonicalize(link).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("resolve", link, e)),
        };
        let meta = tokio::fs::metadata(&target)
            .await
            .map_err(|e| io_err("stat", &target, e))?;
        if meta.file_type().is_block_device() {
            Ok(Some(target))
        } else {
            Err(HostError::new(
                format!("resolve {}", link.display()),
                format!("{} is not a block device", target.display()),
            ))
        }
    }

    async fn fs_stats(&self, path: &Path) -> Result<FsStats, HostError> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || statvfs(&path))
            .await
            .map_err(|e| HostError::new("statvfs", e.to_string()))?
    }

    async fn is_block_device(&self, path: &Path) -> Result<bool, HostError> {
        match tokio::fs::metadata(path).await {
            Ok(m) => Ok(m.file_type().is_block_device()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("stat", path, e)),
        }
    }

    async fn exists(&self, path: &Path) -> Result<bool, HostError> {
        match tokio::fs::symlink_metadata(path).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("stat", path, e)),
        }
    }

    async fn make_dir(&self, path: &Path) -> Result<(), HostError> {
        tokio::fs::create_dir_all(path)
            .await
            .map_err(|e| io_err("mkdir", path, e))
    }

    async fn make_file(&self, path: &Path) -> Result<(), HostError> {
        if let Some(parent) = path.parent() {
            self.make_dir(parent).await?;
        }
        tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map(drop)
            .map_err(|e| io_err("create", path, e))
    }

    async fn remove_path(&self, path: &Path) -> Result<(), HostError> {
        let meta = match tokio::fs::symlink_metadata(path).await {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("stat", path, e)),
        };
        let result = if meta.is_dir() {
            tokio::fs::remove_dir(path).await
        } else {
            tokio::fs::remove_file(path).await
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", path, e)),
        }
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
mod tests {
    use super::*;

    #[test]
    fn reads_numbers_from_tool_output() {
        let dumpe2fs = "Block count:              2621440\nBlock size:               4096\n";
        assert_eq!(number_after(dumpe2fs, "Block count"), Some(2_621_440));
        assert_eq!(number_after(dumpe2fs, "Block size"), Some(4096));
        let xfs_db = "dblocks = 2621440\nblocksize = 4096\n";
        assert_eq!(number_after(xfs_db, "dblocks"), Some(2_621_440));
        assert_eq!(number_after(xfs_db, "blocksize"), Some(4096));
    }

    #[tokio::test]
    async fn statvfs_of_root_is_sane() {
        let s = LinuxHost.fs_stats(Path::new("/")).await.unwrap();
        assert!(s.total_bytes > 0 && s.used_bytes <= s.total_bytes);
    }

    #[tokio::test]
    async fn an_unreadable_device_is_an_error_never_blank() {
        if std::process::Command::new("blkid")
            .arg("-V")
            .output()
            .is_err()
        {
            eprintln!("skipping: blkid is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let blank = dir.path().join("blank.img");
        std::fs::write(&blank, vec![0u8; 1 << 20]).unwrap();
        assert_eq!(LinuxHost.filesystem_of(&blank).await.unwrap(), None);
        // blkid exits 2 for these too, as it does for a blank device.
        assert!(
            LinuxHost
                .filesystem_of(&dir.path().join("missing"))
                .await
                .is_err()
        );
        assert!(LinuxHost.filesystem_of(dir.path()).await.is_err());
    }

    #[tokio::test]
    async fn device_number_is_the_rdev_of_a_block_device_only() {
        assert!(
            LinuxHost
                .device_number(Path::new("/dev/null"))
                .await
                .is_err()
        );
        let Ok(meta) = std::fs::metadata("/dev/loop0") else {
            eprintln!("skipping the block device half: no /dev/loop0");
            return;
        };
        if meta.file_type().is_block_device() {
            assert_eq!(
                LinuxHost
                    .device_number(Path::new("/dev/loop0"))
                    .await
                    .unwrap(),
                "7:0"
            );
        }
    }

    #[tokio::test]
    async fn make_and_remove_paths() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a/b/block-target");
        LinuxHost.make_file(&file).await.unwrap();
        assert!(LinuxHost.exists(&file).await.unwrap());
        LinuxHost.remove_path(&file).await.unwrap();
        LinuxHost.remove_path(&file).await.unwrap();
        assert!(!LinuxHost.exists(&file).await.unwrap());
        assert_eq!(
            LinuxHost
                .resolve_device(&dir.path().join("missing"))
                .await
                .unwrap(),
            None
        );
        assert!(LinuxHost.resolve_device(dir.path()).await.is_err());
    }
}
