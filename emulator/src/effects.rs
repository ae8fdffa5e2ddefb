//! The host side of the cloud: sparse image files, loop devices and by-id links for disks,
//! directories for SFS Turbo shares.
//!
//! Behind a trait so the API logic can be unit-tested without root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// A host operation that failed, with what was attempted.
#[derive(Debug, thiserror::Error)]
pub enum EffectError {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// On which path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A command failed.
    #[error("{command} failed: {detail}")]
    Command {
        /// The program and its arguments.
        command: String,
        /// Exit status and stderr.
        detail: String,
    },
}

/// What the cloud needs from the host.
pub trait Effects: Send + Sync + std::fmt::Debug {
    /// Creates a sparse image of `bytes`.
    fn create_image(&self, path: &Path, bytes: u64) -> Result<(), EffectError>;
    /// Copies an image to a new file `to` (which must not exist): a reflink where the
    /// filesystem shares blocks, else a copy that keeps the holes, so the copy costs what the
    /// source holds in data, not its nominal size.
    fn copy_image(&self, from: &Path, to: &Path) -> Result<(), EffectError>;
    /// Grows an image to `bytes`.
    fn grow_image(&self, path: &Path, bytes: u64) -> Result<(), EffectError>;
    /// Removes an image (absent is fine).
    fn remove_image(&self, path: &Path) -> Result<(), EffectError>;
    /// Attaches an image to a free loop device and returns `/dev/loopN`.
    fn attach_loop(&self, image: &Path) -> Result<String, EffectError>;
    /// The loop device currently backed by `image`, if any.
    fn find_loop(&self, image: &Path) -> Result<Option<String>, EffectError>;
    /// Detaches a loop device.
    fn detach_loop(&self, device: &str) -> Result<(), EffectError>;
    /// Makes the kernel re-read the backing file's size.
    fn refresh_loop(&self, device: &str) -> Result<(), EffectError>;
    /// Creates (or replaces) the symlink `link` → `target`.
    fn create_link(&self, link: &Path, target: &str) -> Result<(), EffectError>;
    /// Removes a symlink (absent is fine).
    fn remove_link(&self, link: &Path) -> Result<(), EffectError>;
    /// Creates a share's directory (an existing one is fine: a resumed creation).
    fn create_share_dir(&self, dir: &Path) -> Result<(), EffectError>;
    /// Removes a share's directory and everything in it (absent is fine).
    fn remove_share_dir(&self, dir: &Path) -> Result<(), EffectError>;
}

/// The by-id link a KVM guest shows for a virtio disk: `virtio-<first 20 chars of id>`.
pub fn by_id_link(by_id_dir: &Path, disk_id: &str) -> PathBuf {
    let serial: String = disk_id.chars().take(20).collect();
    by_id_dir.join(format!("virtio-{serial}"))
}

/// The real host: files, `losetup`, symlinks.
#[derive(Debug, Default)]
pub struct LinuxEffects;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> EffectError {
    let path = path.display().to_string();
    move |source| EffectError::Io { what, path, source }
}

fn losetup(args: &[&str]) -> Result<String, EffectError> {
    let command = format!("losetup {}", args.join(" "));
    let out = Command::new("losetup")
        .args(args)
        .output()
        .map_err(|e| EffectError::Command {
            command: command.clone(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(EffectError::Command {
            command,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Effects for LinuxEffects {
    fn create_image(&self, path: &Path, bytes: u64) -> Result<(), EffectError> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io("create image", path))?;
        f.set_len(bytes).map_err(io("size image", path))
    }

    fn copy_image(&self, from: &Path, to: &Path) -> Result<(), EffectError> {
        if to.exists() {
            return Err(EffectError::Io {
                what: "copy image",
                path: to.display().to_string(),
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        // coreutils knows both tricks (FICLONE, then SEEK_DATA/SEEK_HOLE); an argument vector,
        // never a shell.
        let command = format!("cp {} {}", from.display(), to.display());
        let out = Command::new("cp")
            .arg("--reflink=auto")
            .arg("--sparse=always")
            .arg("--")
            .arg(from)
            .arg(to)
            .output()
            .map_err(|e| EffectError::Command {
                command: command.clone(),
                detail: e.to_string(),
            })?;
        if !out.status.success() {
            // Leave no half-written copy behind.
            let _ = std::fs::remove_file(to);
            return Err(EffectError::Command {
                command,
                detail: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(())
    }

    fn grow_image(&self, path: &Path, bytes: u64) -> Result<(), EffectError> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io("open image", path))?;
        f.set_len(bytes).map_err(io("grow image", path))
    }

    fn remove_image(&self, path: &Path) -> Result<(), EffectError> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove image", path)(e)),
            _ => Ok(()),
        }
    }

    fn attach_loop(&self, image: &Path) -> Result<String, EffectError> {
        let image = image.to_string_lossy();
        let out = losetup(&["-f", "--show", &image])?;
        let dev = out.trim().to_string();
        if !dev.starts_with("/dev/loop") {
            return Err(EffectError::Command {
                command: format!("losetup -f --show {image}"),
                detail: format!("unexpected output {dev:?}"),
            });
        }
        Ok(dev)
    }

    fn find_loop(&self, image: &Path) -> Result<Option<String>, EffectError> {
        let out = losetup(&["-j", &image.to_string_lossy()])?;
        // Lines look like `/dev/loop3: [2049]:1234 (/path/to/image)`.
        Ok(out
            .lines()
            .filter_map(|l| l.split_once(':').map(|(dev, _)| dev.trim().to_string()))
            .find(|d| d.starts_with("/dev/loop")))
    }

    fn detach_loop(&self, device: &str) -> Result<(), EffectError> {
        losetup(&["-d", device]).map(|_| ())
    }

    fn refresh_loop(&self, device: &str) -> Result<(), EffectError> {
        losetup(&["-c", device]).map(|_| ())
    }

    fn create_link(&self, link: &Path, target: &str) -> Result<(), EffectError> {
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).map_err(io("create dir", parent))?;
        }
        self.remove_link(link)?;
        std::os::unix::fs::symlink(target, link).map_err(io("create link", link))
    }

    fn remove_link(&self, link: &Path) -> Result<(), EffectError> {
        match std::fs::remove_file(link) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove link", link)(e)),
            _ => Ok(()),
        }
    }

    fn create_share_dir(&self, dir: &Path) -> Result<(), EffectError> {
        use std::os::unix::fs::DirBuilderExt;
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(io("create dir", parent))?;
        }
        // A fresh file system's root: owned by root, writable by root only, as a new share is.
        match std::fs::DirBuilder::new().mode(0o755).create(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                Err(io("create share dir", dir)(e))
            }
            _ => Ok(()),
        }
    }

    fn remove_share_dir(&self, dir: &Path) -> Result<(), EffectError> {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io("remove share dir", dir)(e))
            }
            _ => Ok(()),
        }
    }
}

/// A recording fake for unit tests: images, loops and links live in memory.
#[derive(Debug, Default)]
pub struct FakeEffects {
    inner: Mutex<FakeHost>,
}

/// The fake host's view.
#[derive(Debug, Default, Clone)]
pub struct FakeHost {
    /// Image path → size in bytes.
    pub images: std::collections::BTreeMap<PathBuf, u64>,
    /// Loop device → image path.
    pub loops: std::collections::BTreeMap<String, PathBuf>,
    /// Link → target.
    pub links: std::collections::BTreeMap<PathBuf, String>,
    /// Refreshed loop devices, in order.
    pub refreshed: Vec<String>,
    /// Share directories.
    pub share_dirs: std::collections::BTreeSet<PathBuf>,
    /// When set, the next attach fails.
    pub fail_attach: bool,
    /// Image copies made, in order (source, copy).
    pub copies: Vec<(PathBuf, PathBuf)>,
    /// When set, the next copy fails.
    pub fail_copy: bool,
    next_loop: u32,
}

impl FakeEffects {
    /// A snapshot of the fake host.
    pub fn host(&self) -> FakeHost {
        self.lock().clone()
    }

    /// Makes the next attach fail.
    pub fn fail_next_attach(&self) {
        self.lock().fail_attach = true;
    }

    /// Makes the next image copy fail.
    pub fn fail_next_copy(&self) {
        self.lock().fail_copy = true;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeHost> {
        // A poisoned fake only happens after a test already panicked; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn fake_err(what: &str) -> EffectError {
    EffectError::Command {
        command: what.to_string(),
        detail: "fake failure".to_string(),
    }
}

impl Effects for FakeEffects {
    fn create_image(&self, path: &Path, bytes: u64) -> Result<(), EffectError> {
        let mut h = self.lock();
        if h.images.contains_key(path) {
            return Err(fake_err("create image: exists"));
        }
        h.images.insert(path.to_path_buf(), bytes);
        Ok(())
    }

    fn copy_image(&self, from: &Path, to: &Path) -> Result<(), EffectError> {
        let mut h = self.lock();
        if std::mem::take(&mut h.fail_copy) {
            return Err(fake_err("cp: injected failure"));
        }
        let size = *h
            .images
            .get(from)
            .ok_or_else(|| fake_err("copy: no source image"))?;
        if h.images.contains_key(to) {
            return Err(fake_err("copy: target exists"));
        }
        h.images.insert(to.to_path_buf(), size);
        h.copies.push((from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn grow_image(&self, path: &Path, bytes: u64) -> Result<(), EffectError> {
        let mut h = self.lock();
        let size = h
            .images
            .get_mut(path)
            .ok_or_else(|| fake_err("grow: no image"))?;
        *size = bytes;
        Ok(())
    }

    fn remove_image(&self, path: &Path) -> Result<(), EffectError> {
        self.lock().images.remove(path);
        Ok(())
    }

    fn attach_loop(&self, image: &Path) -> Result<String, EffectError> {
        let mut h = self.lock();
        if std::mem::take(&mut h.fail_attach) {
            return Err(fake_err("losetup -f --show"));
        }
        if !h.images.contains_key(image) {
            return Err(fake_err("losetup: no image"));
        }
        let dev = format!("/dev/loop{}", h.next_loop);
        h.next_loop += 1;
        h.loops.insert(dev.clone(), image.to_path_buf());
        Ok(dev)
    }

    fn find_loop(&self, image: &Path) -> Result<Option<String>, EffectError> {
        Ok(self
            .lock()
            .loops
            .iter()
            .find(|(_, img)| img.as_path() == image)
            .map(|(d, _)| d.clone()))
    }

    fn detach_loop(&self, device: &str) -> Result<(), EffectError> {
        self.lock()
            .loops
            .remove(device)
            .map(|_| ())
            .ok_or_else(|| fake_err("losetup -d: no such device"))
    }

    fn refresh_loop(&self, device: &str) -> Result<(), EffectError> {
        self.lock().refreshed.push(device.to_string());
        Ok(())
    }

    fn create_link(&self, link: &Path, target: &str) -> Result<(), EffectError> {
        self.lock()
            .links
            .insert(link.to_path_buf(), target.to_string());
        Ok(())
    }

    fn remove_link(&self, link: &Path) -> Result<(), EffectError> {
        self.lock().links.remove(link);
        Ok(())
    }

    fn create_share_dir(&self, dir: &Path) -> Result<(), EffectError> {
        self.lock().share_dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn remove_share_dir(&self, dir: &Path) -> Result<(), EffectError> {
        self.lock().share_dirs.remove(dir);
        Ok(())
    }
}
