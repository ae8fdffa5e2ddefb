//! What the node asks the kernel directly instead of through a tool: the mount table, read
//! again only when the kernel says it changed, and the bind mounts and unmounts of publish and
//! teardown, each one system call where `mount(8)`/`umount(8)` cost an exec (~1.5 ms).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};

use super::super::mountinfo::ParsedTable;
use super::super::{HostError, MountTable};

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The last mount table read, and the open mountinfo that tells whether it is still the
/// kernel's: a mountinfo file polls ready (POLLPRI) once its mount namespace changed since the
/// last poll, so an unchanged table is known without reading and parsing every mount.
///
/// No mount can be missed: the table is read after the poll that reported the change, and a
/// change after that poll is reported by the next one. What does not change the namespace
/// (the kernel turning a filesystem read-only after errors changes its superblock only) is
/// read fresh by whoever needs it (`statvfs`, see `node::filesystem_usage`).
#[derive(Debug, Default)]
pub(super) struct MountCache {
    state: Mutex<Cached>,
}

#[derive(Debug, Default)]
struct Cached {
    file: Option<File>,
    /// The last table read, kept after a change too: the next parse reuses its unchanged lines.
    parsed: Option<ParsedTable>,
    /// Whether `parsed` is still the kernel's table; false once a poll reported a change, so
    /// it is read again before it is answered.
    fresh: bool,
}

impl MountCache {
    /// The table, when it is known unchanged without blocking: no other caller is reading it,
    /// and the poll (which never sleeps with a zero timeout) reports no change.
    pub(super) fn unchanged(&self) -> Option<MountTable> {
        let mut cached = self.state.try_lock().ok()?;
        let Cached {
            file,
            parsed,
            fresh,
        } = &mut *cached;
        let (file, parsed) = (file.as_ref()?, parsed.as_ref()?);
        if *fresh && changed(file) {
            // Consumed by this poll: remembered here, so no later caller answers the old table.
            *fresh = false;
        }
        fresh.then(|| parsed.table().clone())
    }

    /// The table, read again if it changed (or was never read): blocking, for the blocking pool.
    /// Also answers how long the kernel took to write it out (the read, not the parse).
    pub(super) fn read(&self) -> (Result<MountTable, HostError>, Duration) {
        let mut kernel = Duration::ZERO;
        (self.read_timing(&mut kernel), kernel)
    }

    fn read_timing(&self, kernel: &mut Duration) -> Result<MountTable, HostError> {
        let mut cached = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Cached {
            file,
            parsed,
            fresh,
        } = &mut *cached;
        let file = match file {
            Some(f) => f,
            None => file.insert(File::open(MOUNTINFO).map_err(|e| failed("open", e))?),
        };
        if let Some(p) = parsed
            && *fresh
            && !changed(file)
        {
            return Ok(p.table().clone());
        }
        *fresh = false;
        let mut bytes = Vec::with_capacity(64 * 1024);
        let started = Instant::now();
        let read = file
            .seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_end(&mut bytes));
        *kernel = started.elapsed();
        read.map_err(|e| failed("read", e))?;
        let previous = parsed.take();
        let now = parsed.insert(ParsedTable::parse(bytes, previous));
        *fresh = true;
        Ok(now.table().clone())
    }
}

/// Whether the mount namespace changed since `file`'s last poll; an error counts as a change
/// (the table is read again, never trusted).
fn changed(file: &File) -> bool {
    let mut fds = [PollFd::new(file, PollFlags::PRI)];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&zero)) {
        Ok(_) => fds[0].revents().intersects(PollFlags::PRI | PollFlags::ERR),
        Err(_) => true,
    }
}

fn failed(what: &str, e: std::io::Error) -> HostError {
    HostError::new(format!("{what} {MOUNTINFO}"), e.to_string())
}

/// `mount --bind source target`, and for `read_only` the remount that makes a bind read-only
/// (the kernel ignores `MS_RDONLY` on the bind itself), undone when that remount fails.
pub(super) fn bind(source: &Path, target: &Path, read_only: bool) -> Result<(), HostError> {
    let what = || format!("mount --bind {} {}", source.display(), target.display());
    rustix::mount::mount_bind(source, target).map_err(|e| errno(what(), e))?;
    if !read_only {
        return Ok(());
    }
    // A bind remount sets every per-mount flag at once: keep the nosuid/nodev/noexec the bind
    // took from its source (as mount(8) does), and the kernel keeps the atime flags when none
    // is given.
    let remount = || {
        let kept = rustix::fs::statvfs(target)?.f_flag;
        let mut flags = MountFlags::BIND | MountFlags::RDONLY;
        for (has, flag) in [
            (rustix::fs::StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
            (rustix::fs::StatVfsMountFlags::NODEV, MountFlags::NODEV),
            (rustix::fs::StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
        ] {
            if kept.contains(has) {
                flags |= flag;
            }
        }
        rustix::mount::mount_remount(target, flags, "")
    };
    if let Err(e) = remount() {
        let _ = rustix::mount::unmount(target, UnmountFlags::NOFOLLOW);
        return Err(errno(
            format!("mount -o remount,bind,ro {}", target.display()),
            e,
        ));
    }
    Ok(())
}

/// `umount target` without following a symlink at `target`; `false` when nothing is mounted
/// there (EINVAL: not a mount point, which a symlink never is) or the path does not exist.
/// EINVAL's other meanings cannot arise here: the flags are valid, and a mount locked against
/// unmounting exists only in a user namespace below the node's (which runs in the host's).
pub(super) fn unmount(target: &Path) -> Result<bool, HostError> {
    match rustix::mount::unmount(target, UnmountFlags::NOFOLLOW) {
        Ok(()) => Ok(true),
        Err(Errno::INVAL | Errno::NOENT) => Ok(false),
        Err(e) => Err(errno(format!("umount {}", target.display()), e)),
    }
}

fn errno(operation: String, e: Errno) -> HostError {
    HostError::new(operation, std::io::Error::from(e).to_string())
}
