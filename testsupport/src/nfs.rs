//! A real NFS server for tests: nfs-ganesha (with rpcbind) in a private network namespace.
//!
//! [`NfsServer::start`] makes a network namespace `everest-nfs-<pid>-<n>` with only `lo`, starts
//! `rpcbind -f` and `ganesha.nfsd -F` inside it, and waits until `rpcinfo` shows NFS v3 and MOUNT
//! v3 registered. One export serves a directory the caller names (for the emulator: its share
//! root), under a pseudo path; `Mount_Path_Pseudo` makes v3 and v4 clients mount the same path,
//! and subdirectories of it (one per share) mount on their own. The server is reachable only
//! from inside the namespace: run clients, the emulator or a controller there with
//! [`NfsServer::command`]. Dropping it stops both daemons by PID and deletes the namespace,
//! also when the test panics.
//!
//! Each daemon also gets a private mount namespace with tmpfs over `/run` (and over ganesha's
//! recovery dir `/var/lib/nfs/ganesha`), so two servers at once do not share rpcbind's socket,
//! lock or warm-start files, ganesha registers with its own rpcbind over loopback, and nothing
//! is left on the host. rpcbind runs without `-w`: a warm start would restore registrations of
//! a ganesha that is gone, and readiness would be a lie.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::process::Proc;

/// How long the daemons get to register with rpcbind.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// ganesha takes a few seconds to shut down cleanly.
const STOP_GRACE: Duration = Duration::from_secs(10);

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The programs a server and its clients need.
const PROGRAMS: &[&str] = &[
    "ip",
    "rpcbind",
    "rpcinfo",
    "ganesha.nfsd",
    "nfs-cp",
    "nfs-ls",
];

/// Why an NFS server cannot run here, if it cannot: not root, no `ip netns`, or a missing
/// program (`scripts/test.sh` installs nfs-ganesha, nfs-ganesha-vfs, rpcbind, libnfs-utils).
pub fn nfs_server_unavailable() -> Option<String> {
    let euid = rustix::process::geteuid().as_raw();
    if euid != 0 {
        return Some(format!(
            "not root (euid {euid}): network namespaces and nfs-ganesha need root"
        ));
    }
    if let Some(missing) = PROGRAMS.iter().find(|p| !crate::host::have_program(p)) {
        return Some(format!(
            "{missing} is not installed (scripts/test.sh installs nfs-ganesha, \
             nfs-ganesha-vfs, rpcbind and libnfs-utils)"
        ));
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "`ip netns list` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run `ip netns list`: {e}")),
    }
}

/// Skips the calling test (see [`crate::skip`]) when no NFS server can run here; `true` means
/// the test must return.
pub fn skip_unless_nfs_server() -> bool {
    match nfs_server_unavailable() {
        Some(why) => {
            crate::skip(why);
            true
        }
        None => false,
    }
}

/// A running nfs-ganesha in its own network namespace.
#[derive(Debug)]
pub struct NfsServer {
    netns: String,
    pseudo: String,
    export_root: PathBuf,
    dir: tempfile::TempDir,
    // Stopped in this order: ganesha first, so it can unregister from rpcbind.
    ganesha: Option<Proc>,
    rpcbind: Option<Proc>,
    netns_made: bool,
}

impl NfsServer {
    /// Starts a server exporting `export_root` (which must exist) read-write, root not
    /// squashed, under the pseudo path `pseudo` (absolute, e.g. `/sfs-turbo`).
    pub fn start(export_root: &Path, pseudo: &str) -> Result<Self, String> {
        if !pseudo.starts_with('/') || pseudo.len() < 2 || pseudo.contains(['"', '\n']) {
            return Err(format!("pseudo path {pseudo:?} must be absolute and plain"));
        }
        let export_root = export_root
            .canonicalize()
            .map_err(|e| format!("export root {}: {e}", export_root.display()))?;
        let root_text = export_root.display().to_string();
        if root_text.contains(['"', '\n']) {
            return Err(format!(
                "export root {root_text:?} cannot go in a ganesha config"
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("everest-nfs-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let netns = format!(
            "everest-nfs-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut server = NfsServer {
            netns,
            pseudo: pseudo.trim_end_matches('/').to_string(),
            export_root,
            dir,
            ganesha: None,
            rpcbind: None,
            netns_made: false,
        };
        // From here on, Drop cleans up whatever was made.
        server.make_netns()?;
        let conf = server.dir.path().join("ganesha.conf");
        std::fs::write(&conf, ganesha_config(&root_text, &server.pseudo))
            .map_err(|e| format!("write {}: {e}", conf.display()))?;
        let logs = server.dir.path().to_path_buf();
        let rpcbind = server.daemon(Command::new("rpcbind").arg("-f"))?;
        server.rpcbind = Some(Proc::spawn("rpcbind", rpcbind, &logs).map_err(spawn_err)?);
        // ganesha registers with rpcbind as it starts, and gives up ("Cannot register NFS V3 on
        // UDP") if rpcbind does not answer yet: start it only once rpcbind does.
        server.wait_rpcbind()?;
        let mut ganesha = Command::new("ganesha.nfsd");
        ganesha
            .args(["-F", "-f"])
            .arg(&conf)
            .arg("-L")
            .arg(logs.join("ganesha.log"))
            .arg("-p")
            .arg(logs.join("ganesha.pid"));
        let ganesha = server.daemon(&mut ganesha)?;
        server.ganesha = Some(Proc::spawn("ganesha", ganesha, &logs).map_err(spawn_err)?);
        server.wait_ready()?;
        Ok(server)
    }

    fn make_netns(&mut self) -> Result<(), String> {
        run_checked(Command::new("ip").args(["netns", "add", &self.netns]))?;
        self.netns_made = true;
        run_checked(Command::new("ip").args(["-n", &self.netns, "link", "set", "lo", "up"]))
    }

    /// `cmd` prepared to run inside the namespace with a private `/run` (see the module doc).
    fn daemon(&self, cmd: &mut Command) -> Result<Command, String> {
        let ns_path = format!("/run/netns/{}", self.netns);
        let ns = std::fs::File::open(&ns_path).map_err(|e| format!("open {ns_path}: {e}"))?;
        let recovery = Path::new("/var/lib/nfs/ganesha");
        let over: Vec<CString> = [
            Some(Path::new("/run")),
            recovery.is_dir().then_some(recovery),
        ]
        .into_iter()
        .flatten()
        .map(|p| CString::new(p.as_os_str().as_encoded_bytes()).expect("no NUL in path"))
        .collect();
        let root = CString::new("/").expect("no NUL");
        let tmpfs = CString::new("tmpfs").expect("no NUL");
        let mut out = Command::new(cmd.get_program());
        out.args(cmd.get_args());
        // SAFETY: only async-signal-safe syscalls on memory prepared before fork; `ns` stays
        // open in the parent until spawn returns, because the Command owns the closure.
        unsafe {
            out.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0
                    || libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        std::ptr::null(),
                        root.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                for target in &over {
                    if libc::mount(
                        tmpfs.as_ptr(),
                        target.as_ptr(),
                        tmpfs.as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV,
                        std::ptr::null(),
                    ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(out)
    }

    /// Polls `rpcinfo -p` in the namespace until rpcbind answers.
    fn wait_rpcbind(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(p) = self.rpcbind.as_mut()
                && let Some(status) = p.exited()
            {
                return Err(format!("rpcbind exited ({status})\n{}", p.log_tail(20)));
            }
            let answered = self
                .command("rpcinfo")
                .args(["-p", "127.0.0.1"])
                .output()
                .is_ok_and(|o| o.status.success());
            if answered {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("rpcbind did not answer within {READY_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `rpcinfo -p` in the namespace until NFS v3 and MOUNT v3 are registered over TCP.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut died = None;
            for p in [&mut self.rpcbind, &mut self.ganesha].into_iter().flatten() {
                if let Some(status) = p.exited() {
                    died = Some(format!("{} exited ({status})\n{}", p.name, p.log_tail(20)));
                }
            }
            if let Some(died) = died {
                return Err(format!(
                    "{died} before the server was ready\n{}",
                    self.ganesha_log_tail(20)
                ));
            }
            let out = self.command("rpcinfo").args(["-p", "127.0.0.1"]).output();
            if let Ok(out) = out
                && registered(&String::from_utf8_lossy(&out.stdout))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "NFS v3 and MOUNT v3 not registered after {READY_TIMEOUT:?}\n{}",
                    self.ganesha_log_tail(20)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The network namespace's name (for `ip netns exec`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The exported directory.
    pub fn export_root(&self) -> &Path {
        &self.export_root
    }

    /// The pseudo path clients mount for the export root (no trailing `/`).
    pub fn pseudo(&self) -> &str {
        &self.pseudo
    }

    /// The server's address inside the namespace.
    pub fn address(&self) -> &'static str {
        "127.0.0.1"
    }

    /// `program` to be run inside the namespace (`ip netns exec NS program`); `ip` execs it,
    /// so the spawned PID is the program's own.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        cmd
    }

    /// Moves the calling thread into the namespace, so the sockets it opens from now on (an
    /// HTTP client on a current-thread runtime, an NFS client) reach the server and whatever
    /// runs beside it. Use it on a thread made for the purpose: the thread cannot go back.
    pub fn enter(&self) -> Result<(), String> {
        let ns_path = format!("/run/netns/{}", self.netns);
        let ns = std::fs::File::open(&ns_path).map_err(|e| format!("open {ns_path}: {e}"))?;
        // SAFETY: setns on a valid namespace fd; it changes only this thread's namespace.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "setns {ns_path}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// Runs `f` to completion on a thread inside the namespace, on a current-thread runtime of
    /// its own, so every socket it opens (to the server, to an emulator beside it) is there.
    pub fn block_on_inside<T: Send>(&self, f: impl std::future::Future<Output = T> + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter().expect("enter the server's namespace");
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime")
                    .block_on(f)
            })
            .join()
            .expect("the thread inside the namespace")
        })
    }

    /// A libnfs URL for `path` under the pseudo root (`nfs://127.0.0.1/PSEUDO/PATH?version=V`).
    pub fn url(&self, path: &str, version: u8) -> String {
        format!(
            "nfs://{}{}/{}?version={version}",
            self.address(),
            self.pseudo,
            path.trim_start_matches('/')
        )
    }

    /// Copies a local file to `path` under the pseudo root over NFSv3 with `nfs-cp`, from
    /// inside the namespace.
    pub fn nfs_cp_to(&self, local: &Path, path: &str) -> Result<(), String> {
        let out = self
            .command("nfs-cp")
            .arg(local)
            .arg(self.url(path, 3))
            .output()
            .map_err(|e| format!("run nfs-cp: {e}"))?;
        checked("nfs-cp", out).map(|_| ())
    }

    /// Lists `path` under the pseudo root over NFSv3 with `nfs-ls` (one line per entry).
    pub fn nfs_ls(&self, path: &str) -> Result<String, String> {
        let out = self
            .command("nfs-ls")
            .arg(self.url(path, 3))
            .output()
            .map_err(|e| format!("run nfs-ls: {e}"))?;
        checked("nfs-ls", out)
    }

    /// The PIDs of the daemons still running.
    pub fn pids(&mut self) -> Vec<u32> {
        [&mut self.rpcbind, &mut self.ganesha]
            .into_iter()
            .flatten()
            .filter_map(|p| p.exited().is_none().then(|| p.pid()))
            .collect()
    }

    /// The last lines of ganesha's own log file.
    pub fn ganesha_log_tail(&self, max_lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("ganesha.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(max_lines);
        format!("----- ganesha.log -----\n{}", lines[start..].join("\n"))
    }
}

impl Drop for NfsServer {
    fn drop(&mut self) {
        if let Some(mut g) = self.ganesha.take() {
            g.stop(STOP_GRACE);
        }
        if let Some(mut r) = self.rpcbind.take() {
            r.stop(STOP_GRACE);
        }
        if self.netns_made
            && let Err(e) = run_checked(Command::new("ip").args(["netns", "del", &self.netns]))
        {
            eprintln!("[nfs] cannot delete network namespace {}: {e}", self.netns);
        }
    }
}

/// Whether `rpcinfo -p` output shows NFS (100003) v3 and MOUNT (100005) v3 over TCP.
fn registered(rpcinfo: &str) -> bool {
    let has = |program: &str| {
        rpcinfo.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 3 && f[0] == program && f[1] == "3" && f[2] == "tcp"
        })
    };
    has("100003") && has("100005")
}

/// The ganesha config: one export, v3 and v4, v3 mounts by the pseudo path, and no caching
/// of directory entries or attributes, because the emulator creates and removes share
/// directories behind ganesha's back (with caching, a removed share stayed listable).
fn ganesha_config(export_root: &str, pseudo: &str) -> String {
    format!(
        r#"NFS_CORE_PARAM {{
    Protocols = 3, 4;
    Mount_Path_Pseudo = true;
    Enable_NLM = false;
    Enable_RQUOTA = false;
}}
NFSV4 {{ Graceless = true; }}
MDCACHE {{ Dir_Chunk = 0; }}
EXPORT {{
    Export_Id = 1;
    Path = "{export_root}";
    Pseudo = "{pseudo}";
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    Protocols = 3, 4;
    Attr_Expiration_Time = 0;
    FSAL {{ Name = VFS; }}
}}
"#
    )
}

fn spawn_err(e: std::io::Error) -> String {
    format!("spawn: {e}")
}

fn checked(what: &str, out: Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn run_checked(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("run {:?}: {e}", cmd.get_program()))?;
    checked(&format!("{:?}", cmd.get_program()), out).map(|_| ())
}

/// Network namespaces whose name starts with `prefix` (for leak checks).
pub fn netns_named(prefix: &str) -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| n.starts_with(prefix))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The emulator running inside an [`NfsServer`]'s namespace, with its SFS Turbo shares as
/// directories of the server's export root: every share it makes is a real NFS export. Only
/// reachable from inside the namespace ([`NfsServer::enter`]). Dropping it stops the process.
pub struct ShareCloud {
    proc: crate::process::Proc,
    dir: tempfile::TempDir,
    /// The emulator's base URL, the same for every service.
    pub url: String,
}

impl ShareCloud {
    /// Starts the emulator in `server`'s namespace; `extra` adds command-line flags.
    pub fn start(server: &NfsServer, extra: &[&str]) -> Result<Self, String> {
        use crate::world::{PROJECT_ID, REGION, random_hex, write_private};
        let bin = crate::process::find_binary("everest-emulator")?;
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let (ak, sk) = (random_hex(10).to_uppercase(), random_hex(20));
        let io = |e: std::io::Error| format!("write credentials: {e}");
        write_private(
            &dir.path().join("emulator-credentials.json"),
            &serde_json::json!({"access_keys": [{"ak": ak, "sk": sk}], "users": []}).to_string(),
        )
        .map_err(io)?;
        write_private(
            &dir.path().join("credentials.json"),
            &serde_json::json!({"access_key": ak, "secret_key": sk}).to_string(),
        )
        .map_err(io)?;
        // Its own namespace holds nothing else, so a fixed port cannot be taken.
        let addr = "127.0.0.1:18080";
        let mut cmd = server.command(bin);
        cmd.arg("--listen")
            .arg(addr)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--by-id-dir")
            .arg(dir.path().join("by-id"))
            .arg("--credentials-file")
            .arg(dir.path().join("emulator-credentials.json"))
            .arg("--project-id")
            .arg(PROJECT_ID)
            .arg("--region")
            .arg(REGION)
            .arg("--nfs-export-root")
            .arg(server.export_root())
            .arg("--nfs-export-path")
            .arg(server.pseudo())
            .arg("--cleanup-on-exit")
            .args(extra)
            .env("RUST_LOG", "warn");
        let mut proc = crate::process::Proc::spawn("share-cloud", cmd, dir.path())
            .map_err(|e| format!("start the emulator: {e}"))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let out = std::fs::read_to_string(&proc.stdout_log).unwrap_or_default();
            if out.contains("EVEREST_EMULATOR_LISTENING=") {
                break;
            }
            if proc.exited().is_some() || std::time::Instant::now() > deadline {
                return Err(format!("the emulator did not start: {}", proc.log_tail(20)));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(Self {
            proc,
            dir,
            url: format!("http://{addr}"),
        })
    }

    /// The AK/SK file a backend's `credentials_file` names.
    pub fn credentials_file(&self) -> std::path::PathBuf {
        self.dir.path().join("credentials.json")
    }

    /// An `sfs` backend table in mode `share` on this cloud (`wait_timeout_seconds` short).
    pub fn share_table(&self) -> serde_json::Value {
        serde_json::json!({
            "project_id": crate::world::PROJECT_ID,
            "region": crate::world::REGION,
            "sfs_turbo_endpoint": self.url,
            "iam_endpoint": self.url,
            "allow_insecure_http": true,
            "credentials_file": self.credentials_file(),
            "availability_zone": "emu-az1",
            "vpc_id": "vpc-1", "subnet_id": "subnet-1", "security_group_id": "sg-1",
            "job_poll_initial_ms": 20, "job_poll_max_ms": 100,
            "wait_timeout_seconds": 20,
        })
    }

    /// The process id, to prove it is gone after a drop.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_both_nfs_and_mount_v3_over_tcp() {
        let both = "   100003    3   tcp   2049  nfs\n   100005    3   tcp  42789  mountd\n";
        assert!(registered(both));
        assert!(!registered("   100003    3   tcp   2049  nfs\n"));
        assert!(!registered(
            "   100003    4   tcp   2049  nfs\n   100005    3   tcp  1  mountd\n"
        ));
        assert!(!registered(
            "   100003    3   udp   2049  nfs\n   100005    3   tcp  1  mountd\n"
        ));
        assert!(!registered(""));
    }

    #[test]
    fn bad_pseudo_paths_are_refused_before_anything_starts() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["relative", "/", "/a\"b"] {
            let err = NfsServer::start(dir.path(), bad).unwrap_err();
            assert!(err.contains("pseudo path"), "{bad}: {err}");
        }
    }

    /// The real thing: a file written over NFSv3 lands in the export; the server is not
    /// reachable from the host's namespace; nothing is left after drop.
    #[test]
    fn serves_the_export_inside_its_namespace_only_and_leaves_nothing() {
        if skip_unless_nfs_server() {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("sub")).unwrap();
        let mut server = NfsServer::start(root.path(), "/exp").unwrap();
        let ns = server.netns().to_string();
        let pids = server.pids();
        assert_eq!(pids.len(), 2, "rpcbind and ganesha run");

        let local = root.path().join("..").join(format!("{ns}.txt"));
        std::fs::write(&local, "over nfs\n").unwrap();
        server.nfs_cp_to(&local, "sub/hello.txt").unwrap();
        std::fs::remove_file(&local).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join("sub/hello.txt")).unwrap(),
            "over nfs\n"
        );
        assert!(server.nfs_ls("sub").unwrap().contains("hello.txt"));
        // A subdirectory that does not exist cannot be mounted.
        assert!(server.nfs_ls("missing").is_err());
        // From the host's namespace the server is unreachable.
        let outside = Command::new("nfs-ls")
            .arg(server.url("sub", 3))
            .output()
            .unwrap();
        assert!(!outside.status.success(), "reachable from outside");

        drop(server);
        assert!(
            !netns_named(&ns).contains(&ns),
            "namespace {ns} left behind"
        );
        for pid in pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "process {pid} left behind"
            );
        }
    }
}
