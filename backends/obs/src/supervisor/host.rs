//! What the supervisor does to the machine, behind [`MounterHost`]: start a mounter as a child,
//! look at a mount, unmount, and find or end a mounter an earlier supervisor started. The Linux
//! implementation runs the real programs; the fake (tests only) lets the restart logic be
//! checked without FUSE.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use everest_backend::host::{
    FuseMount, Host, HostError, LinuxHost, LostMount, MountEntry, bind_again, mounts_at,
};

/// What the kernel shows at a mount point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mounted {
    /// No mount of the mounter's type.
    Absent,
    /// Mounted and answering.
    Serving,
    /// Mounted, but its mounter is gone ("transport endpoint is not connected").
    Dead,
}

/// A mounter the supervisor started and waits on.
#[async_trait]
pub trait MounterProcess: Send + Sync + std::fmt::Debug {
    /// Its process ID.
    fn pid(&self) -> Option<u32>;
    /// Waits until it exits; how it ended and the last lines it wrote.
    async fn wait(&mut self) -> String;
    /// Kills it (SIGKILL).
    fn kill(&mut self);
}

/// The machine as the supervisor sees it.
#[async_trait]
pub trait MounterHost: Send + Sync + std::fmt::Debug {
    /// Starts `cmd` as a child in its own process group, its output appended to `log`.
    fn spawn(&self, cmd: &FuseMount, log: &Path) -> Result<Box<dyn MounterProcess>, HostError>;
    /// Whether a mount of `fs_type` is at `target`, and whether it answers.
    async fn mounted(&self, target: &Path, fs_type: &str) -> Result<Mounted, HostError>;
    /// `fusermount -u`, lazily when that fails (a dead or busy mount).
    async fn unmount(&self, target: &Path) -> Result<(), HostError>;
    /// The (dead) mount at `target`, noted before it is replaced: see [`LostMount`].
    async fn lost_mount(&self, target: &Path) -> Result<Option<LostMount>, HostError>;
    /// The pods' whole binds `lost` still has: see [`LostMount::binds`].
    async fn binds_of(&self, lost: &LostMount, target: &Path)
    -> Result<Vec<MountEntry>, HostError>;
    /// Binds the mount at `target` over each of `binds`; how many: see [`bind_again`].
    async fn bind_again(&self, target: &Path, binds: &[MountEntry]) -> usize;
    /// Whether `pid` is a live process whose command line names `target`: a mounter an earlier
    /// supervisor started, found again.
    fn runs(&self, pid: u32, target: &Path) -> bool;
    /// Kills `pid` (SIGKILL), a mounter that is not our child.
    fn kill(&self, pid: u32);
    /// Whether a file exists.
    fn exists(&self, path: &Path) -> bool;
}

/// The real machine: `LinuxHost` for mounts, tokio for children.
#[derive(Debug, Clone, Default)]
pub struct LinuxMounterHost {
    host: LinuxHost,
}

impl LinuxMounterHost {
    /// Runs the host's tools through `host`.
    pub fn new(host: LinuxHost) -> Self {
        Self { host }
    }
}

#[derive(Debug)]
struct Child {
    child: tokio::process::Child,
    log: PathBuf,
}

#[async_trait]
impl MounterProcess for Child {
    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn wait(&mut self) -> String {
        let status = match self.child.wait().await {
            Ok(s) => s.to_string(),
            Err(e) => format!("cannot wait for it: {e}"),
        };
        let tail = log_tail(&self.log, 5);
        if tail.is_empty() {
            status
        } else {
            format!("{status}: {tail}")
        }
    }

    fn kill(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The last `lines` lines of a mounter's log, joined with ` | `.
fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

#[async_trait]
impl MounterHost for LinuxMounterHost {
    fn spawn(&self, cmd: &FuseMount, log: &Path) -> Result<Box<dyn MounterProcess>, HostError> {
        use std::os::unix::fs::OpenOptionsExt;
        let line = || format!("{} {}", cmd.program, cmd.args.join(" "));
        // A file, not a pipe: a mounter must outlive the supervisor, and writing into a pipe
        // nobody reads any more would kill it (SIGPIPE).
        let out = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(log)
            .map_err(|e| HostError::new(format!("open {}", log.display()), e.to_string()))?;
        let err = out
            .try_clone()
            .map_err(|e| HostError::new(format!("open {}", log.display()), e.to_string()))?;
        let mut command = tokio::process::Command::new(&cmd.program);
        for var in &cmd.env_remove {
            command.env_remove(var);
        }
        let child = command
            .args(&cmd.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own group: a signal to the supervisor's group (a terminal, a test harness)
            // does not reach it, and it outlives the supervisor on purpose.
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| HostError::new(line(), format!("could not start: {e}")))?;
        Ok(Box::new(Child {
            child,
            log: log.to_owned(),
        }))
    }

    async fn mounted(&self, target: &Path, fs_type: &str) -> Result<Mounted, HostError> {
        let shown = mounts_at(&self.host, target).await?;
        match shown.last() {
            Some(m) if m.fs_type == fs_type => Ok(match self.host.fs_stats(target).await {
                Ok(_) => Mounted::Serving,
                Err(_) => Mounted::Dead,
            }),
            _ => Ok(Mounted::Absent),
        }
    }

    async fn unmount(&self, target: &Path) -> Result<(), HostError> {
        self.host.unmount_fuse(target).await
    }

    async fn lost_mount(&self, target: &Path) -> Result<Option<LostMount>, HostError> {
        LostMount::at(&self.host, target).await
    }

    async fn binds_of(
        &self,
        lost: &LostMount,
        target: &Path,
    ) -> Result<Vec<MountEntry>, HostError> {
        lost.binds(&self.host, target).await
    }

    async fn bind_again(&self, target: &Path, binds: &[MountEntry]) -> usize {
        bind_again(&self.host, target, binds).await
    }

    fn runs(&self, pid: u32, target: &Path) -> bool {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let zombie = std::fs::read_to_string(proc_dir.join("stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
            .unwrap_or(true);
        let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
            return false;
        };
        let wanted = target.as_os_str().as_encoded_bytes();
        !zombie && cmdline.split(|b| *b == 0).any(|arg| arg == wanted)
    }

    fn kill(&self, pid: u32) {
        if let Some(pid) = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

/// Shares one host between the supervisor and its mount tasks.
pub type SharedHost = Arc<dyn MounterHost>;

#[cfg(test)]
pub(crate) mod fake {
    //! A machine in memory: mounters are "processes" the test kills, mounts a map.

    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use tokio::sync::watch;

    use super::*;

    #[derive(Debug, Default)]
    struct State {
        mounts: BTreeMap<PathBuf, (String, u32)>,
        next_pid: u32,
        alive: BTreeMap<u32, watch::Sender<bool>>,
        spawned: Vec<String>,
        fail_next: usize,
        /// Bind points and the mount (its mounter's PID, as its device number) each shows.
        binds: BTreeMap<PathBuf, u32>,
        /// Every bind made again: (mount, bind point).
        rebound: Vec<(PathBuf, PathBuf)>,
    }

    /// The fake: a started mounter mounts at once (unless told to fail) and lives until killed.
    #[derive(Debug, Default)]
    pub struct FakeMounterHost {
        state: Arc<Mutex<State>>,
    }

    #[derive(Debug)]
    struct FakeChild {
        pid: u32,
        dead: watch::Receiver<bool>,
        state: Arc<Mutex<State>>,
    }

    #[async_trait]
    impl MounterProcess for FakeChild {
        fn pid(&self) -> Option<u32> {
            Some(self.pid)
        }
        async fn wait(&mut self) -> String {
            let _ = self.dead.wait_for(|d| *d).await;
            "signal: 9 (SIGKILL)".into()
        }
        fn kill(&mut self) {
            kill(&self.state, self.pid);
        }
    }

    fn kill(state: &Mutex<State>, pid: u32) {
        let mut s = state.lock().unwrap();
        if let Some(tx) = s.alive.remove(&pid) {
            let _ = tx.send(true);
        }
        let _ = &mut s;
    }

    impl FakeMounterHost {
        /// Kills the mounter serving `target`, as SIGKILL would (its mount stays, dead).
        pub fn kill_mounter_of(&self, target: &Path) {
            let pid = self.state.lock().unwrap().mounts.get(target).map(|m| m.1);
            if let Some(pid) = pid {
                kill(&self.state, pid);
            }
        }
        /// The next `n` mounters exit at once without mounting.
        pub fn fail_next(&self, n: usize) {
            self.state.lock().unwrap().fail_next = n;
        }
        /// Every command line started.
        pub fn spawned(&self) -> Vec<String> {
            self.state.lock().unwrap().spawned.clone()
        }
        /// A mount (and its mounter, as if an earlier supervisor started it) already there.
        pub fn add_running(&self, target: &Path, fs_type: &str) -> u32 {
            let mut s = self.state.lock().unwrap();
            s.next_pid += 1;
            let pid = s.next_pid + 1000;
            let (tx, _) = watch::channel(false);
            s.alive.insert(pid, tx);
            s.mounts
                .insert(target.to_owned(), (fs_type.to_owned(), pid));
            pid
        }
        /// Binds the mount at `target` onto `point`, as a publish does.
        pub fn add_bind(&self, target: &Path, point: &Path) {
            let mut s = self.state.lock().unwrap();
            if let Some((_, pid)) = s.mounts.get(target).cloned() {
                s.binds.insert(point.to_owned(), pid);
            }
        }
        /// Every bind made again, as (mount, bind point).
        pub fn rebound(&self) -> Vec<(PathBuf, PathBuf)> {
            self.state.lock().unwrap().rebound.clone()
        }
        /// Whether anything is mounted at `target`.
        pub fn is_mounted(&self, target: &Path) -> bool {
            self.state.lock().unwrap().mounts.contains_key(target)
        }
    }

    #[async_trait]
    impl MounterHost for FakeMounterHost {
        fn spawn(
            &self,
            cmd: &FuseMount,
            _log: &Path,
        ) -> Result<Box<dyn MounterProcess>, HostError> {
            let mut s = self.state.lock().unwrap();
            s.spawned
                .push(format!("{} {}", cmd.program, cmd.args.join(" ")));
            s.next_pid += 1;
            let pid = s.next_pid;
            let (tx, rx) = watch::channel(false);
            if s.fail_next > 0 {
                s.fail_next -= 1;
                let _ = tx.send(true);
            } else {
                let target = PathBuf::from(&cmd.args[1]);
                s.mounts.insert(target, (cmd.fs_type.clone(), pid));
                s.alive.insert(pid, tx);
            }
            Ok(Box::new(FakeChild {
                pid,
                dead: rx,
                state: Arc::clone(&self.state),
            }))
        }

        async fn mounted(&self, target: &Path, fs_type: &str) -> Result<Mounted, HostError> {
            let s = self.state.lock().unwrap();
            Ok(match s.mounts.get(target) {
                Some((t, pid)) if t == fs_type => {
                    if s.alive.contains_key(pid) {
                        Mounted::Serving
                    } else {
                        Mounted::Dead
                    }
                }
                _ => Mounted::Absent,
            })
        }

        async fn unmount(&self, target: &Path) -> Result<(), HostError> {
            let mut s = self.state.lock().unwrap();
            // Unmounting ends the mounter, as fusermount -u does.
            if let Some((_, pid)) = s.mounts.remove(target)
                && let Some(tx) = s.alive.remove(&pid)
            {
                let _ = tx.send(true);
            }
            Ok(())
        }

        async fn lost_mount(&self, target: &Path) -> Result<Option<LostMount>, HostError> {
            let s = self.state.lock().unwrap();
            Ok(s.mounts.get(target).map(|(fs_type, pid)| LostMount {
                device_number: format!("0:{pid}"),
                fs_type: fs_type.clone(),
            }))
        }

        async fn binds_of(
            &self,
            lost: &LostMount,
            _target: &Path,
        ) -> Result<Vec<MountEntry>, HostError> {
            let s = self.state.lock().unwrap();
            Ok(s.binds
                .iter()
                .filter(|(_, pid)| format!("0:{pid}") == lost.device_number)
                .map(|(point, pid)| MountEntry {
                    device_number: format!("0:{pid}"),
                    root: "/".into(),
                    mount_point: point.clone(),
                    mount_options: vec!["rw".into()],
                    fs_type: lost.fs_type.clone(),
                    source: "fake".into(),
                    super_options: vec!["rw".into()],
                })
                .collect())
        }

        async fn bind_again(&self, target: &Path, binds: &[MountEntry]) -> usize {
            let mut s = self.state.lock().unwrap();
            let Some((_, pid)) = s.mounts.get(target).cloned() else {
                return 0;
            };
            for b in binds {
                s.binds.insert(b.mount_point.clone(), pid);
                s.rebound.push((target.to_owned(), b.mount_point.clone()));
            }
            binds.len()
        }

        fn runs(&self, pid: u32, _target: &Path) -> bool {
            self.state.lock().unwrap().alive.contains_key(&pid)
        }

        fn kill(&self, pid: u32) {
            kill(&self.state, pid);
        }

        fn exists(&self, _path: &Path) -> bool {
            true
        }
    }
}
