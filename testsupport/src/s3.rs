//! A real S3 server for tests: moto's `moto_server`, one per test, on a free loopback port.
//!
//! [`S3Server::start`] starts it with its output captured in a private temp dir and waits until
//! it answers HTTP; dropping it stops the process by PID and removes the dir, also when the test
//! panics. moto accepts any access key and path-style requests. `scripts/test.sh` installs it
//! (`backends/obs/tests/s3_server/setup.sh`) and names it in `EVEREST_MOTO_SERVER`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::Proc;

/// The variable naming the `moto_server` program (else it is looked up on `PATH`).
pub const MOTO_ENV: &str = "EVEREST_MOTO_SERVER";

/// How long moto gets to answer its first request (it imports a lot of Python).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The `moto_server` to run, or why there is none.
pub fn moto_server() -> Result<PathBuf, String> {
    crate::host::program_from_env(
        MOTO_ENV,
        "moto_server",
        &format!(
            "run `bash backends/obs/tests/s3_server/setup.sh DIR` and set \
             {MOTO_ENV}=DIR/venv/bin/moto_server (scripts/test.sh does both)"
        ),
    )
}

/// Skips the calling test (see [`crate::skip`]) when no S3 server can run here; `true` means
/// the test must return.
pub fn skip_unless_s3_server() -> bool {
    match moto_server() {
        Ok(_) => false,
        Err(why) => {
            crate::skip(why);
            true
        }
    }
}

/// A running moto S3 server on `127.0.0.1`.
#[derive(Debug)]
pub struct S3Server {
    port: u16,
    // Stopped before the dir holding its logs goes.
    proc: Option<Proc>,
    _dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts a server on a free port and waits until it answers.
    pub fn start() -> Result<Self, String> {
        let program = moto_server()?;
        let dir = tempfile::Builder::new()
            .prefix("everest-s3-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("free port: {e}"))?
            .port();
        let mut cmd = Command::new(&program);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let proc = Proc::spawn("moto", cmd, dir.path())
            .map_err(|e| format!("start {}: {e}", program.display()))?;
        // From here on, Drop stops the process.
        let mut server = S3Server {
            port,
            proc: Some(proc),
            _dir: dir,
        };
        server.wait_ready().map_err(|e| {
            let tail = server
                .proc
                .as_ref()
                .map(|p| p.log_tail(20))
                .unwrap_or_default();
            format!("{e}\n{tail}")
        })?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(p) = self.proc.as_mut()
                && let Some(status) = p.exited()
            {
                return Err(format!("moto_server exited at start: {status}"));
            }
            if self.answers() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "moto_server did not answer on port {} within {READY_TIMEOUT:?}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether an HTTP request gets an HTTP answer.
    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let req = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's PID (for leak checks).
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }
}
