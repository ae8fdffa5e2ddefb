//! Running the host's tools: argument vectors (never a shell), standard input closed so no tool
//! can prompt, a time limit per kind of command, and no process left behind when the limit
//! passes or the RPC that asked is dropped.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde::Deserialize;
use tokio::process::Command;

use super::HostError;

/// How long each kind of host command may run, and where the host's tools and trees are.
///
/// The kubelet gives each node RPC about two minutes and cancels it after that; a cancelled RPC
/// kills its command too, so the longer limits here matter for other callers and for a
/// kubelet configured with a longer timeout.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostSettings {
    /// Quick queries: blkid, blockdev, dumpe2fs, xfs_db, btrfs inspect-internal.
    pub query_timeout_seconds: u64,
    /// mount and umount.
    pub mount_timeout_seconds: u64,
    /// mkfs.*.
    pub format_timeout_seconds: u64,
    /// e2fsck, resize2fs, xfs_growfs, btrfs filesystem resize.
    pub resize_timeout_seconds: u64,
    /// Where sysfs is mounted (tests point it at a temp tree).
    pub sysfs_root: PathBuf,
    /// Where device nodes are (`/dev`): a disk found through sysfs is `<dev_root>/<name>`.
    pub dev_root: PathBuf,
    /// A directory searched for every tool before `PATH`. Not a configuration key: tests put
    /// stub tools there.
    #[serde(skip)]
    pub tool_dir: Option<PathBuf>,
}

impl Default for HostSettings {
    fn default() -> Self {
        Self {
            query_timeout_seconds: 30,
            mount_timeout_seconds: 60,
            // Under the kubelet's ~2 minutes, so a stuck mkfs ends here, where what it wrote
            // is wiped, rather than by a cancelled RPC.
            format_timeout_seconds: 100,
            resize_timeout_seconds: 600,
            sysfs_root: PathBuf::from("/sys"),
            dev_root: PathBuf::from("/dev"),
            tool_dir: None,
        }
    }
}

/// What a command does, which decides its time limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    /// Reads something (blkid, blockdev…).
    Query,
    /// mount, umount.
    Mount,
    /// mkfs.
    Format,
    /// fsck and filesystem grows.
    Resize,
}

impl HostSettings {
    /// The time limit for a command of `kind`.
    pub fn timeout(&self, kind: CommandKind) -> Duration {
        Duration::from_secs(match kind {
            CommandKind::Query => self.query_timeout_seconds,
            CommandKind::Mount => self.mount_timeout_seconds,
            CommandKind::Format => self.format_timeout_seconds,
            CommandKind::Resize => self.resize_timeout_seconds,
        })
    }

    /// `program` from the tool directory when it holds it, else the name for `PATH` to find.
    fn program(&self, program: &str) -> PathBuf {
        self.tool_dir
            .as_ref()
            .map(|d| d.join(program))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from(program))
    }

    /// Runs `program args…`; its output, whatever the exit status. A run past the time limit
    /// is killed (with every process it started) and is an error marked as timed out.
    pub async fn output(
        &self,
        kind: CommandKind,
        program: &str,
        args: &[&str],
    ) -> Result<Output, HostError> {
        self.output_without_env(kind, program, args, &[]).await
    }

    /// [`HostSettings::output`] with the variables `env_remove` taken out of the program's
    /// environment (rclone, for one, fails when `AWS_CA_BUNDLE` names a file it cannot use).
    pub async fn output_without_env(
        &self,
        kind: CommandKind,
        program: &str,
        args: &[&str],
        env_remove: &[String],
    ) -> Result<Output, HostError> {
        crate::outside::outside(self.spawn_and_wait(kind, program, args, env_remove)).await
    }

    async fn spawn_and_wait(
        &self,
        kind: CommandKind,
        program: &str,
        args: &[&str],
        env_remove: &[String],
    ) -> Result<Output, HostError> {
        let line = || command_line(program, args);
        let limit = self.timeout(kind);
        let mut command = Command::new(self.program(program));
        for var in env_remove {
            command.env_remove(var);
        }
        let child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a tool's helpers (mount.<type>, fsck.<type>) die with it.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| HostError::new(line(), format!("could not start: {e}")))?;
        // Killed when this future is dropped (the RPC was cancelled) or when the limit passes.
        let mut running = Running {
            group: child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .and_then(rustix::process::Pid::from_raw),
            child,
            finished: false,
        };
        let (mut stdout, mut stderr) = (running.child.stdout.take(), running.child.stderr.take());
        let result = tokio::time::timeout(limit, async {
            let (status, out, err) = tokio::join!(
                running.child.wait(),
                read_all(&mut stdout),
                read_all(&mut stderr)
            );
            Ok::<_, std::io::Error>(Output {
                status: status?,
                stdout: out?,
                stderr: err?,
            })
        })
        .await;
        match result {
            Ok(out) => {
                // It exited: whatever it left running on purpose (a FUSE daemon) stays.
                running.finished = true;
                out.map_err(|e| HostError::new(line(), e.to_string()))
            }
            Err(_) => {
                // Kill the group, then wait for the tool itself: when the error returns, nothing
                // it did is still going on, so the caller may undo or retry it safely.
                running.kill_group();
                // A tool stuck in the kernel (a dead disk, a dead NFS server) does not die even
                // to SIGKILL: wait for it a little, never for ever, so the RPC still answers.
                if tokio::time::timeout(REAP_GRACE, running.child.kill())
                    .await
                    .is_err()
                {
                    tracing::warn!(command = %line(), "killed after its time limit but still stuck in the kernel; answering without it");
                }
                Err(HostError::timed_out(line(), limit))
            }
        }
    }

    /// Runs `program args…`: standard output, or an error with the exit status and stderr.
    pub async fn run(
        &self,
        kind: CommandKind,
        program: &str,
        args: &[&str],
    ) -> Result<String, HostError> {
        let out = self.output(kind, program, args).await?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(failed(program, args, &out))
        }
    }
}

/// A started command. Dropped before it finished (time limit, cancelled RPC), it sends SIGKILL
/// to the command's whole process group; the child itself is then killed and reaped by tokio
/// (`kill_on_drop`). The group's ID is taken at spawn: it stays valid while the leader is
/// unreaped or any member lives (the kernel does not reuse an ID still in use as a group), and
/// a run that ended with its output closed is `finished` and never signalled.
struct Running {
    child: tokio::process::Child,
    group: Option<rustix::process::Pid>,
    finished: bool,
}

impl Running {
    fn kill_group(&self) {
        if let Some(group) = self.group {
            // ESRCH (nobody left) is a fine answer.
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.finished {
            self.kill_group();
        }
    }
}

async fn read_all(
    pipe: &mut Option<impl tokio::io::AsyncRead + Unpin>,
) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    if let Some(pipe) = pipe {
        pipe.read_to_end(&mut buf).await?;
    }
    Ok(buf)
}

/// The error for a run of `program args…` that ended in `out`: its exit status and stderr.
pub fn failed(program: &str, args: &[&str], out: &Output) -> HostError {
    HostError::new(
        command_line(program, args),
        format!(
            "{} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        ),
    )
}

/// `program arg…` as one line, for messages.
pub fn command_line(program: &str, args: &[&str]) -> String {
    format!("{program} {}", args.join(" "))
}

/// How long a killed command may take to go away before the RPC answers without it.
const REAP_GRACE: Duration = Duration::from_secs(5);

/// Runs a blocking call (statvfs, reading a device) on the blocking pool with a time limit. A
/// call stuck in the kernel cannot be killed; the RPC still answers when the limit passes.
pub async fn blocking<T: Send + 'static>(
    what: String,
    limit: Duration,
    f: impl FnOnce() -> Result<T, HostError> + Send + 'static,
) -> Result<T, HostError> {
    // The kernel's time, measured where it is spent: the hop to the blocking pool is ours.
    let timed = move || {
        let started = std::time::Instant::now();
        (f(), started.elapsed())
    };
    match tokio::time::timeout(limit, tokio::task::spawn_blocking(timed)).await {
        Ok(Ok((result, took))) => {
            crate::outside::add(took);
            result
        }
        Ok(Err(e)) => Err(HostError::new(what, e.to_string())),
        Err(_) => {
            crate::outside::add(limit);
            Err(HostError::timed_out(what, limit))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::time::Instant;

    use super::*;
    use crate::host::{Host, LinuxHost};

    /// A stub `blkid` that records its PID and the PID of a helper it starts, then runs `last`.
    fn stub_tool_dir(dir: &Path, last: &str) -> PathBuf {
        let tools = dir.join("tools");
        std::fs::create_dir(&tools).unwrap();
        let script = format!(
            "#!/bin/sh\nsleep 300 &\necho $! > {helper}\necho $$ > {leader}\n{last}\n",
            helper = dir.join("helper.pid").display(),
            leader = dir.join("leader.pid").display()
        );
        let stub = tools.join("blkid");
        std::fs::write(&stub, script).unwrap();
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
        tools
    }

    /// The stub hangs with its helper: a real process tree, as a tool stuck on a dead disk
    /// would leave.
    fn hanging_tool_dir(dir: &Path) -> PathBuf {
        stub_tool_dir(dir, "wait")
    }

    /// The stub exits at once but leaves its helper holding its output open.
    fn lingering_tool_dir(dir: &Path) -> PathBuf {
        stub_tool_dir(dir, "exit 0")
    }

    fn pids(dir: &Path) -> Option<Vec<u32>> {
        ["leader.pid", "helper.pid"]
            .iter()
            .map(|f| {
                std::fs::read_to_string(dir.join(f))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
            })
            .collect()
    }

    /// Alive: present in /proc and not a zombie waiting to be reaped.
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                let state = s.rsplit(')').next().unwrap_or("").trim_start();
                !state.starts_with('Z') && !state.starts_with('X')
            })
            .unwrap_or(false)
    }

    async fn assert_all_gone(pids: &[u32]) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while pids.iter().any(|p| alive(*p)) {
            assert!(
                Instant::now() < deadline,
                "processes still running: {:?}",
                pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn host(dir: &Path, tools: PathBuf) -> (LinuxHost, PathBuf) {
        let device = dir.join("disk.img");
        std::fs::write(&device, vec![0u8; 8192]).unwrap();
        let settings = HostSettings {
            query_timeout_seconds: 1,
            tool_dir: Some(tools),
            ..HostSettings::default()
        };
        (LinuxHost::new(settings), device)
    }

    #[tokio::test]
    async fn a_hung_command_times_out_naming_it_and_leaves_no_process() {
        let dir = tempfile::tempdir().unwrap();
        let (host, device) = host(dir.path(), hanging_tool_dir(dir.path()));
        let started = Instant::now();
        let err = host.filesystem_of(&device).await.unwrap_err();
        assert!(err.timed_out, "{err}");
        assert!(err.to_string().contains("blkid -p -o export"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        let e = crate::Error::from(err);
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded);
        let pids = pids(dir.path()).expect("the stub ran");
        assert_all_gone(&pids).await;
    }

    #[tokio::test]
    async fn a_helper_left_behind_by_an_exited_tool_is_killed_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let (host, device) = host(dir.path(), lingering_tool_dir(dir.path()));
        let err = host.filesystem_of(&device).await.unwrap_err();
        assert!(err.timed_out, "{err}");
        assert_all_gone(&pids(dir.path()).expect("the stub ran")).await;
    }

    #[tokio::test]
    async fn a_dropped_call_kills_its_command_and_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let (host, device) = host(dir.path(), hanging_tool_dir(dir.path()));
        let call = tokio::spawn(async move { host.filesystem_of(&device).await });
        let deadline = Instant::now() + Duration::from_secs(5);
        let pids = loop {
            if let Some(p) = pids(dir.path()) {
                break p;
            }
            assert!(Instant::now() < deadline, "the stub never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(pids.iter().all(|p| alive(*p)), "the stub should be hanging");
        // What tonic does when the client goes away: the RPC's future is dropped.
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        assert_all_gone(&pids).await;
    }

    #[tokio::test]
    async fn tools_missing_from_the_tool_dir_come_from_path() {
        let dir = tempfile::tempdir().unwrap();
        let tools = dir.path().join("empty");
        std::fs::create_dir(&tools).unwrap();
        let settings = HostSettings {
            tool_dir: Some(tools),
            ..HostSettings::default()
        };
        let out = settings
            .run(CommandKind::Query, "echo", &["hello"])
            .await
            .unwrap();
        assert_eq!(out, "hello\n");
        let err = settings
            .run(CommandKind::Query, "false", &[])
            .await
            .unwrap_err();
        assert!(!err.timed_out && err.to_string().contains("false"), "{err}");
    }
}
