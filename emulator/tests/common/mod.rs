//! Test support: start the real emulator binary, sign requests, always clean up.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const PROJECT: &str = "0123456789abcdef0123456789abcdef";
pub const SERVER: &str = "5b2c8f8e-6d3a-4c1e-9a57-3f0e2b7d1c40";
pub const AK: &str = "TESTAK0123456789";
pub const SK: &str = "test-secret-key-not-real";

/// Whether this machine can make loop devices; prints why not.
pub fn can_use_loop_devices() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let ok = root && Path::new("/dev/loop-control").exists();
    if !ok {
        everest_testsupport::skip("needs root and /dev/loop-control for loop devices");
    }
    ok
}

/// A temp world: state dir, by-id dir, credentials, and at most one running emulator.
/// Drop stops the emulator, detaches any loop device backed by its images, removes the dir.
pub struct World {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub addr: String,
}

impl World {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let creds = format!(
            r#"{{"access_keys":[{{"ak":"{AK}","sk":"{SK}"}}],"users":[{{"domain":"emu-domain","name":"emu-user","password":"emu-password"}}]}}"#
        );
        // Only the owner may read credentials, as in a real deployment.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.path().join("credentials.json"))
            .expect("create credentials");
        f.write_all(creds.as_bytes()).expect("write credentials");
        World {
            dir,
            child: None,
            addr: String::new(),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn by_id_dir(&self) -> PathBuf {
        self.dir.path().join("by-id")
    }

    /// Starts the binary on port 0 and waits for its announcement line.
    pub fn start(&mut self, extra: &[&str]) {
        self.start_cmd(Command::new(env!("CARGO_BIN_EXE_everest-emulator")), extra);
    }

    /// [`World::start`] with `cmd` as the program (e.g. `ip netns exec NS everest-emulator`,
    /// which execs the emulator, so its PID is the emulator's).
    pub fn start_cmd(&mut self, mut cmd: Command, extra: &[&str]) {
        assert!(self.child.is_none(), "already running");
        let state = self.state_dir();
        let by_id = self.by_id_dir();
        let creds = self.dir.path().join("credentials.json");
        let mut args: Vec<String> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--state-dir".into(),
            state.display().to_string(),
            "--by-id-dir".into(),
            by_id.display().to_string(),
            "--credentials-file".into(),
            creds.display().to_string(),
        ];
        // Fast jobs unless the test asks for others (clap refuses a repeated flag).
        if !extra.contains(&"--job-latency-ms") {
            args.extend(["--job-latency-ms".into(), "50".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = cmd
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn everest-emulator");
        let stdout = child.stdout.take().expect("piped stdout");
        self.child = Some(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("EVEREST_EMULATOR_LISTENING=") {
                    let _ = tx.send(a.to_string());
                }
            }
        });
        self.addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("emulator announced its address");
    }

    /// Sends a signal and waits for exit (SIGKILL if it does not exit in time).
    pub fn stop(&mut self, signal: &str) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn api(&self) -> Api {
        Api {
            base: format!("http://{}", self.addr),
            host: self.addr.clone(),
            client: reqwest::Client::new(),
            token: None,
        }
    }

    /// Loop devices backed by this world's images.
    pub fn loops(&self) -> Vec<String> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.state_dir().join("disks")) else {
            return out;
        };
        for e in entries.flatten() {
            if let Ok(o) = Command::new("losetup").arg("-j").arg(e.path()).output() {
                for line in String::from_utf8_lossy(&o.stdout).lines() {
                    if let Some((dev, _)) = line.split_once(':') {
                        out.push(dev.to_string());
                    }
                }
            }
        }
        out
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop("-TERM");
        for dev in self.loops() {
            let _ = Command::new("losetup").args(["-d", &dev]).status();
        }
    }
}

/// Bytes of a block device, from sysfs.
pub fn block_size(dev: &str) -> u64 {
    let name = dev.trim_start_matches("/dev/");
    std::fs::read_to_string(format!("/sys/block/{name}/size"))
        .expect("sysfs size")
        .trim()
        .parse::<u64>()
        .expect("number")
        * 512
}

fn hex_sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A minimal test-only `SDK-HMAC-SHA256` signer (signs `host` and `x-sdk-date`).
fn sign(method: &str, path: &str, query: &str, host: &str, date: &str, body: &[u8]) -> String {
    let mut uri = path.to_string();
    if !uri.ends_with('/') {
        uri.push('/');
    }
    let mut pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort();
    let canonical = format!(
        "{method}\n{uri}\n{}\nhost:{host}\nx-sdk-date:{date}\n\nhost;x-sdk-date\n{}",
        pairs.join("&"),
        hex_sha(body)
    );
    let sts = format!("SDK-HMAC-SHA256\n{date}\n{}", hex_sha(canonical.as_bytes()));
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SK.as_bytes()).unwrap();
    mac.update(sts.as_bytes());
    let sig = hex::encode(mac.finalize().into_bytes());
    format!("SDK-HMAC-SHA256 Access={AK}, SignedHeaders=host;x-sdk-date, Signature={sig}")
}

/// A small client: signed by default, or with an IAM token once `token` is set.
pub struct Api {
    pub base: String,
    pub host: String,
    pub client: reqwest::Client,
    pub token: Option<String>,
}

impl Api {
    /// Calls `path_and_query` (query must already be escaped and simple).
    pub async fn call(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call_with(method, path_and_query, body, &[]).await
    }

    pub async fn call_with(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .client
            .request(m, format!("{}{}", self.base, path_and_query))
            .header("content-type", "application/json")
            .body(bytes.clone());
        if let Some(t) = &self.token {
            req = req.header("x-auth-token", t);
        } else {
            let date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
            let auth = sign(method, path, query, &self.host, &date, &bytes);
            req = req.header("x-sdk-date", date).header("authorization", auth);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Polls a job until SUCCESS/FAIL (deadline 20 s) and returns its final body.
    pub async fn wait_job(&self, job_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, job) = self
                .call("GET", &format!("/v1/{PROJECT}/jobs/{job_id}"), None)
                .await;
            assert_eq!(code, 200, "job query: {job}");
            let s = job["status"].as_str().unwrap_or_default().to_string();
            if s == "SUCCESS" || s == "FAIL" {
                return job;
            }
            assert!(Instant::now() < deadline, "job {job_id} still {s}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn volume(&self, id: &str) -> (u16, Value) {
        self.call("GET", &format!("/v2/{PROJECT}/cloudvolumes/{id}"), None)
            .await
    }
}
