//! A second real S3 server for tests and benchmarks: Garage, one per test, on free loopback
//! ports, with one key allowed to create buckets.
//!
//! Garage is a full S3 service written in Rust: it keeps s3fs's directory objects (`dir/`) as
//! s3fs expects, and, unlike moto, it checks signatures (with `endpoint=garage`, the region it
//! serves) and has no bucket tagging (what `everest-obs` falls back from). `scripts/test.sh`
//! installs it (`cargo install garage`, cached under the target dir) and names it in
//! `EVEREST_GARAGE`. Dropping the server stops the process by PID and removes its dir, also
//! when the test panics.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::Proc;

/// The variable naming the `garage` program (else it is looked up on `PATH`).
pub const GARAGE_ENV: &str = "EVEREST_GARAGE";

/// The region Garage serves (its `s3_region`): clients must sign for it.
pub const GARAGE_REGION: &str = "garage";

/// The access key every test server knows (Garage key IDs are `GK` and 24 hex digits).
pub const GARAGE_ACCESS_KEY: &str = "GK5e7e1a0b6c2d4f8a9b3c1d2e";
/// Its secret (64 hex digits): a test fixture, never a real key.
pub const GARAGE_SECRET_KEY: &str =
    "6b1f0e2d3c4a5b6978a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f607";

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The `garage` to run, or why there is none.
pub fn garage() -> Result<PathBuf, String> {
    crate::host::program_from_env(
        GARAGE_ENV,
        "garage",
        &format!(
            "`cargo install garage@2.5.0 --locked` and set {GARAGE_ENV} to the binary \
             (scripts/test.sh does both)"
        ),
    )
}

/// Skips the calling test (see [`crate::skip`]) when Garage cannot run here; `true` means the
/// test must return.
pub fn skip_unless_garage() -> bool {
    match garage() {
        Ok(_) => false,
        Err(why) => {
            crate::skip(why);
            true
        }
    }
}

/// A running single-node Garage on `127.0.0.1`.
#[derive(Debug)]
pub struct GarageServer {
    program: PathBuf,
    config: PathBuf,
    s3_port: u16,
    // Stopped before the dir holding its data goes.
    proc: Option<Proc>,
    dir: tempfile::TempDir,
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

impl GarageServer {
    /// Starts a server, gives it a one-node layout and imports the test key with the right to
    /// create buckets. Its ports are picked free and released before Garage binds them, so
    /// a test running beside it may take one first: a start that fails is tried again.
    pub fn start() -> Result<Self, String> {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::start_once() {
                Ok(server) => return Ok(server),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn start_once() -> Result<Self, String> {
        let program = garage()?;
        let dir = tempfile::Builder::new()
            .prefix("everest-garage-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let (s3_port, rpc_port, admin_port) = (free_port()?, free_port()?, free_port()?);
        let root = dir.path();
        let config = root.join("garage.toml");
        // The RPC secret only guards this one-node cluster's loopback port.
        let text = format!(
            "metadata_dir = \"{meta}\"\n\
             data_dir = \"{data}\"\n\
             db_engine = \"sqlite\"\n\
             replication_factor = 1\n\
             rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
             rpc_public_addr = \"127.0.0.1:{rpc_port}\"\n\
             rpc_secret = \"{secret}\"\n\
             [s3_api]\n\
             s3_region = \"{GARAGE_REGION}\"\n\
             api_bind_addr = \"127.0.0.1:{s3_port}\"\n\
             root_domain = \".s3.garage.localhost\"\n\
             [admin]\n\
             api_bind_addr = \"127.0.0.1:{admin_port}\"\n",
            meta = root.join("meta").display(),
            data = root.join("data").display(),
            secret = "e7e5".repeat(16),
        );
        write_private(&config, &text)?;
        let mut cmd = Command::new(&program);
        cmd.arg("-c").arg(&config).arg("server");
        let proc = Proc::spawn("garage", cmd, root)
            .map_err(|e| format!("start {}: {e}", program.display()))?;
        // From here on, Drop stops the process.
        let mut server = GarageServer {
            program,
            config,
            s3_port,
            proc: Some(proc),
            dir,
        };
        server.set_up().map_err(|e| {
            let tail = server
                .proc
                .as_ref()
                .map(|p| p.log_tail(20))
                .unwrap_or_default();
            format!("{e}\n{tail}")
        })?;
        Ok(server)
    }

    fn set_up(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let id = loop {
            if let Some(p) = self.proc.as_mut()
                && let Some(status) = p.exited()
            {
                return Err(format!("garage exited at start: {status}"));
            }
            match self.admin(&["node", "id", "-q"]) {
                Ok(out) => break out.split('@').next().unwrap_or_default().trim().to_owned(),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        self.admin(&["layout", "assign", "-z", "dc1", "-c", "1G", &id])?;
        self.admin(&["layout", "apply", "--version", "1"])?;
        self.admin(&[
            "key",
            "import",
            "--yes",
            GARAGE_ACCESS_KEY,
            GARAGE_SECRET_KEY,
        ])?;
        self.admin(&["key", "allow", "--create-bucket", GARAGE_ACCESS_KEY])?;
        Ok(())
    }

    /// Runs `garage -c CONF ARGS…` against this server; its output.
    pub fn admin(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.program)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .map_err(|e| format!("garage {args:?}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "garage {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The server's PID (for leak checks).
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// Where it keeps its data (under the test's temp dir).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for GarageServer {
    fn drop(&mut self) {
        // Its data is thrown away with the dir: no need to wait for a graceful shutdown, which
        // can take it more than 10 s.
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(1));
        }
    }
}

fn write_private(path: &std::path::Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("write {}: {e}", path.display()))
}
