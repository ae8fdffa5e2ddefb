//! Child processes with their output captured to files, stopped by SIGTERM then SIGKILL.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Where the binaries of the workspace are: next to the running executable (`target/debug`),
/// or one level up when it is a test in `target/debug/deps`. `EVEREST_BIN_DIR` overrides.
pub fn find_binary(name: &str) -> Result<PathBuf, String> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("EVEREST_BIN_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push(dir.to_path_buf());
        if let Some(up) = dir.parent() {
            dirs.push(up.to_path_buf());
        }
    }
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "binary {name} not found in {dirs:?}: run `cargo build --workspace --bins` first"
            )
        })
}

/// A running child whose stdout and stderr go to `<logs>/<name>.stdout.log` / `.stderr.log`.
#[derive(Debug)]
pub struct Proc {
    /// Short name used in log file names and messages.
    pub name: String,
    child: Child,
    /// Captured stdout.
    pub stdout_log: PathBuf,
    /// Captured stderr.
    pub stderr_log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` with stdin closed and output captured under `log_dir`. Logs are appended,
    /// so a restarted daemon keeps its earlier output. The child gets SIGTERM if the thread
    /// that started it dies, so a killed test run does not leave it running.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> std::io::Result<Self> {
        let stdout_log = log_dir.join(format!("{name}.stdout.log"));
        let stderr_log = log_dir.join(format!("{name}.stderr.log"));
        let open = |p: &Path| File::options().create(true).append(true).open(p);
        cmd.stdin(Stdio::null())
            .stdout(open(&stdout_log)?)
            .stderr(open(&stderr_log)?);
        // SAFETY: the hook only makes the prctl system call, which is async-signal-safe and
        // touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::TERM,
                ))
                .map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn()?;
        Ok(Self {
            name: name.to_string(),
            child,
            stdout_log,
            stderr_log,
            exited: None,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Sends SIGTERM, waits up to `grace`, then SIGKILLs and reaps. Idempotent.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        // Our own child, not reaped yet, so the pid is still ours.
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        );
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "[world] {} (pid {}) ignored SIGTERM for {grace:?}; sending SIGKILL",
            self.name,
            self.pid()
        );
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
        self.exited
    }

    /// SIGKILLs and reaps at once, as an OOM kill or a node crash would. Idempotent.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
        self.exited
    }

    /// The captured output, both streams, each cut to its last `max_lines` lines.
    pub fn log_tail(&self, max_lines: usize) -> String {
        let mut out = String::new();
        for (stream, path) in [("stdout", &self.stdout_log), ("stderr", &self.stderr_log)] {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(max_lines);
            out.push_str(&format!(
                "----- {} {stream} ({} lines, last {}) -----\n",
                self.name,
                lines.len(),
                lines.len() - start
            ));
            for l in &lines[start..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}
