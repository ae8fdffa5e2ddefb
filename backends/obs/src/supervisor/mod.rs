//! The mounter supervisor (`everest-mounter`): a small long-lived process, in its own session
//! and (in the chart) its own DaemonSet, that starts the FUSE mounters of object volumes as its
//! children, restarts one that dies, and stops one on request. `everest-node` asks it over a
//! private unix socket, so the node plugin can crash, restart or be upgraded while the mounts
//! go on serving.
//! - [`protocol`]: the requests and answers (JSON lines), and the mount a request describes;
//! - [`host`]: what the supervisor does to the machine, behind a trait with a fake;
//! - [`server`]: the socket loop;
//! - [`client`]: what the node calls.
//!
//! Each mount has a state file (its description and its mounter's PID, no keys) in the state
//! directory, so a supervisor that is restarted finds the mounters an earlier one started and
//! watches them again (or starts them again when they died meanwhile).

pub mod client;
pub mod host;
pub mod protocol;
pub mod server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, oneshot, watch};

use everest_backend::host::LostMount;

use self::host::{Mounted, MounterHost, MounterProcess};
use self::protocol::{Fault, MountSpec, MountState, MountStatus, Request, Response, state_file};
use crate::mounter::Run;

/// Gauge: FUSE mounts served now, by backend and mounter.
pub const MOUNTS: &str = "everest_obs_mounts";
/// Counter: mounters started again after dying, by backend and mounter.
pub const RESTARTS: &str = "everest_obs_mounter_restarts_total";
/// Counter: mounts given up after too many restarts in a row, by backend and mounter.
pub const GIVEN_UP: &str = "everest_obs_mounts_given_up_total";

/// Gives the supervisor's metrics their help text (after the exporter is installed).
pub fn describe_metrics() {
    metrics::describe_gauge!(MOUNTS, "FUSE mounts served now, by backend and mounter");
    metrics::describe_counter!(
        RESTARTS,
        "FUSE mounters started again after dying, by backend and mounter"
    );
    metrics::describe_counter!(
        GIVEN_UP,
        "FUSE mounts given up after too many restarts in a row, by backend and mounter"
    );
}

/// How the supervisor keeps mounts alive.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where state files and mounter logs live (private: 0700).
    pub state_dir: PathBuf,
    /// Restarts in a row after which a mount is given up.
    pub max_restarts: u32,
    /// The pause before the first restart; doubled for each further one in a row.
    pub backoff_base: Duration,
    /// The longest pause.
    pub backoff_cap: Duration,
    /// A mounter that ran this long before dying starts a new row of restarts.
    pub healthy_after: Duration,
    /// How long a mounter may take to show its mount.
    pub mount_timeout: Duration,
    /// How often a mount is looked at while waiting for it, and an adopted mounter at all.
    pub poll: Duration,
    /// How long a mounter may take to exit after its mount is unmounted.
    pub stop_grace: Duration,
}

impl Settings {
    /// Production defaults, with state in `state_dir`.
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            max_restarts: 5,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(30),
            healthy_after: Duration::from_secs(60),
            mount_timeout: Duration::from_secs(60),
            poll: Duration::from_millis(200),
            stop_grace: Duration::from_secs(10),
        }
    }

    fn backoff(&self, restarts_in_a_row: u32) -> Duration {
        let factor = 1u32 << restarts_in_a_row.saturating_sub(1).min(16);
        (self.backoff_base * factor).min(self.backoff_cap)
    }
}

/// What a state file holds: enough to find a mounter again or start it anew; no keys.
#[derive(Debug, Serialize, Deserialize)]
struct StateRecord {
    spec: MountSpec,
    pid: Option<u32>,
    /// A dead mount replaced but whose pods' binds are not bound again yet: kept across
    /// failed restarts and across a restart of the supervisor itself.
    #[serde(default)]
    lost: Option<LostMount>,
}

struct Entry {
    spec: MountSpec,
    status: watch::Receiver<MountStatus>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// The supervisor: the supervised mounts by target.
pub struct Supervisor {
    host: Arc<dyn MounterHost>,
    settings: Settings,
    mounts: Mutex<BTreeMap<PathBuf, Entry>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// How one mounter's life ended.
enum Life {
    /// A stop was asked: this is what still runs.
    Stop(Running),
    /// It died (or never mounted) after running this long.
    Exited { why: String, ran: Duration },
}

/// A mounter that runs: our child, or one an earlier supervisor started.
enum Running {
    Child(Box<dyn MounterProcess>),
    Adopted(u32),
    Nothing,
}

impl Supervisor {
    /// A supervisor on `host`; call [`Supervisor::recover`] before serving.
    pub fn new(host: Arc<dyn MounterHost>, settings: Settings) -> Arc<Self> {
        Arc::new(Self {
            host,
            settings,
            mounts: Mutex::new(BTreeMap::new()),
        })
    }

    /// Answers one request.
    pub async fn handle(self: &Arc<Self>, req: Request) -> Response {
        match req {
            Request::Start(spec) => self.start(spec).await,
            Request::Stop { target } => Response::Stopped {
                known: self.stop(&target).await,
            },
            Request::List => Response::Mounts {
                mounts: self.list().await,
            },
        }
    }

    /// Every supervised mount's status.
    pub async fn list(&self) -> Vec<MountStatus> {
        self.mounts
            .lock()
            .await
            .values()
            .map(|e| e.status.borrow().clone())
            .collect()
    }

    async fn start(self: &Arc<Self>, spec: MountSpec) -> Response {
        if let Err(why) = spec.check() {
            return error(Fault::Invalid, format!("mount refused: {why}"));
        }
        let mut mounts = self.mounts.lock().await;
        if let Some(e) = mounts.get(&spec.target) {
            if !e.spec.same_mount(&spec) {
                return error(
                    Fault::Conflict,
                    format!(
                        "{} is already supervised with another bucket, mounter or options; stop it first",
                        spec.target.display()
                    ),
                );
            }
            if e.status.borrow().state != MountState::Dead {
                let mut status = e.status.clone();
                drop(mounts);
                // Being started (by a concurrent start, or after its mounter died): answer
                // once it serves, or with why it was given up (the next start begins afresh).
                let settled = status
                    .wait_for(|s| matches!(s.state, MountState::Serving | MountState::Dead))
                    .await
                    .map(|s| s.clone());
                return match settled {
                    Ok(s) if s.state == MountState::Serving => Response::Started(s),
                    Ok(s) => error(
                        Fault::Failed,
                        s.abnormal().unwrap_or_else(|| "given up".to_owned()),
                    ),
                    Err(_) => error(
                        Fault::Failed,
                        format!(
                            "mounting {} failed (a concurrent start)",
                            spec.target.display()
                        ),
                    ),
                };
            }
            // Given up before: start afresh.
            if let Some(old) = mounts.remove(&spec.target) {
                let _ = old.stop.send(true);
            }
        }
        let (first_tx, first_rx) = oneshot::channel();
        let entry = self.launch(spec.clone(), None, None, Some(first_tx));
        mounts.insert(spec.target.clone(), entry);
        drop(mounts);
        let outcome = first_rx
            .await
            .unwrap_or_else(|_| Err("the supervising task ended".to_owned()));
        match outcome {
            Ok(status) => Response::Started(status),
            Err(why) => {
                self.forget_failed(&spec.target).await;
                error(
                    Fault::Failed,
                    format!(
                        "{} could not mount bucket {} at {}: {why}",
                        spec.mounter,
                        spec.bucket,
                        spec.target.display()
                    ),
                )
            }
        }
    }

    /// Drops the entry of a mount whose first start failed (its task has ended).
    async fn forget_failed(&self, target: &Path) {
        let mut mounts = self.mounts.lock().await;
        if mounts.get(target).is_some_and(|e| e.task.is_finished()) {
            mounts.remove(target);
        }
    }

    /// Stops supervising without touching any mount: the mounters go on serving, for a
    /// supervisor started again to find (what a shutdown does).
    pub async fn leave(&self) {
        for (_, entry) in std::mem::take(&mut *self.mounts.lock().await) {
            entry.task.abort();
        }
    }

    /// Unmounts `target` and stops its mounter; whether it was supervised.
    async fn stop(&self, target: &Path) -> bool {
        let Some(entry) = self.mounts.lock().await.remove(target) else {
            return false;
        };
        let _ = entry.stop.send(true);
        // The task unmounts and waits for the mounter within its grace period.
        let limit = self.settings.stop_grace + self.settings.mount_timeout;
        if tokio::time::timeout(limit, entry.task).await.is_err() {
            tracing::warn!(target = %target.display(), "mounter did not stop in time");
        }
        true
    }

    /// Finds the mounts of an earlier supervisor from their state files: a mounter still
    /// serving is watched again, a dead one started again (while its credentials file is
    /// there), anything else forgotten.
    pub async fn recover(self: &Arc<Self>) -> Result<usize, String> {
        let dir = &self.settings.state_dir;
        make_private_dir(dir)?;
        let entries = std::fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
        let mut found = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let record = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str::<StateRecord>(&t).ok())
                .filter(|r| r.spec.check().is_ok());
            let Some(record) = record else {
                tracing::warn!(file = %path.display(), "unreadable state file; removing it");
                let _ = std::fs::remove_file(&path);
                continue;
            };
            let spec = record.spec.clone();
            let fs_type = spec.mounter.fs_type();
            let serving =
                self.host.mounted(&spec.target, fs_type).await.ok() == Some(Mounted::Serving);
            let adopted = record
                .pid
                .filter(|pid| serving && self.host.runs(*pid, &spec.target));
            if adopted.is_none() && !self.host.exists(&spec.credentials_file) {
                tracing::info!(target = %spec.target.display(), "mount of an earlier supervisor is gone with its credentials; forgetting it");
                let _ = std::fs::remove_file(&path);
                continue;
            }
            tracing::info!(
                target = %spec.target.display(),
                mounter = %spec.mounter,
                pid = adopted,
                "re-adopting a mount of an earlier supervisor{}",
                if adopted.is_some() { "" } else { " (its mounter died: starting it again)" }
            );
            let entry = self.launch(spec.clone(), adopted, record.lost, None);
            self.mounts.lock().await.insert(spec.target.clone(), entry);
            found += 1;
        }
        Ok(found)
    }

    /// Starts the task that keeps `spec` mounted.
    fn launch(
        self: &Arc<Self>,
        spec: MountSpec,
        adopted: Option<u32>,
        lost: Option<LostMount>,
        first: Option<oneshot::Sender<Result<MountStatus, String>>>,
    ) -> Entry {
        let status = MountStatus {
            target: spec.target.clone(),
            backend: spec.backend.clone(),
            mounter: spec.mounter,
            state: if adopted.is_some() {
                MountState::Serving
            } else {
                MountState::Starting
            },
            restarts: 0,
            pid: adopted,
            adopted: adopted.is_some(),
            last_error: None,
        };
        let (status_tx, status_rx) = watch::channel(status);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(Arc::clone(self).supervise(
            spec.clone(),
            adopted,
            lost,
            status_tx,
            stop_rx,
            first,
        ));
        Entry {
            spec,
            status: status_rx,
            stop: stop_tx,
            task,
        }
    }

    /// Keeps one mount alive until a stop, restarting its mounter when it dies, with a pause
    /// that doubles each time in a row, until it has died too often in a row.
    async fn supervise(
        self: Arc<Self>,
        spec: MountSpec,
        mut adopted: Option<u32>,
        mut lost: Option<LostMount>,
        status: watch::Sender<MountStatus>,
        mut stop: watch::Receiver<bool>,
        mut first: Option<oneshot::Sender<Result<MountStatus, String>>>,
    ) {
        let labels = [
            ("backend", spec.backend.clone()),
            ("mounter", spec.mounter.as_str().to_owned()),
        ];
        let target = spec.target.display().to_string();
        let mut in_a_row = 0u32;
        let mut serving = ServingGauge::new(&labels);
        // The counters exist from the first mount on, at 0: a series that first shows up at 1
        // would hide that first restart from increase() (and so from the alerts).
        metrics::counter!(RESTARTS, &labels).increment(0);
        metrics::counter!(GIVEN_UP, &labels).increment(0);
        loop {
            let life = match adopted.take() {
                Some(pid) => {
                    serving.set(true);
                    self.record(&spec, Some(pid), None);
                    self.watch_adopted(&spec, pid, &mut stop).await
                }
                None => match self.start_one(&spec, &mut stop, &mut lost).await {
                    Err(why) if first.is_some() => {
                        // The first start answers the node, which retries: no restarts.
                        self.forget(&spec);
                        if let Some(f) = first.take() {
                            let _ = f.send(Err(why));
                        }
                        return;
                    }
                    Err(why) => Life::Exited {
                        why,
                        ran: Duration::ZERO,
                    },
                    Ok(None) => Life::Stop(Running::Nothing),
                    Ok(Some(mut child)) => {
                        let pid = child.pid();
                        status.send_modify(|s| {
                            s.state = MountState::Serving;
                            s.pid = pid;
                        });
                        serving.set(true);
                        self.record(&spec, pid, None);
                        tracing::info!(%target, mounter = %spec.mounter, pid, "mount serving");
                        if let Some(f) = first.take() {
                            let _ = f.send(Ok(status.borrow().clone()));
                        }
                        let started = Instant::now();
                        let died = tokio::select! {
                            why = child.wait() => Some(why),
                            () = stopped(&mut stop) => None,
                        };
                        match died {
                            Some(why) => Life::Exited {
                                why,
                                ran: started.elapsed(),
                            },
                            None => Life::Stop(Running::Child(child)),
                        }
                    }
                },
            };
            serving.set(false);
            let (why, ran) = match life {
                Life::Stop(running) => {
                    self.stop_one(&spec, running).await;
                    self.forget(&spec);
                    tracing::info!(%target, "mount stopped");
                    return;
                }
                Life::Exited { why, ran } => (why, ran),
            };
            if ran >= self.settings.healthy_after {
                in_a_row = 0;
            }
            in_a_row += 1;
            if in_a_row > self.settings.max_restarts {
                tracing::error!(%target, mounter = %spec.mounter, error = %why, restarts = in_a_row - 1, "mounter keeps dying; giving the mount up");
                metrics::counter!(GIVEN_UP, &labels).increment(1);
                status.send_modify(|s| {
                    s.state = MountState::Dead;
                    s.pid = None;
                    s.last_error = Some(why);
                });
                let _ = self.host.unmount(&spec.target).await;
                self.forget(&spec);
                stopped(&mut stop).await;
                return;
            }
            tracing::warn!(%target, mounter = %spec.mounter, error = %why, "mounter died; starting it again");
            status.send_modify(|s| {
                s.state = MountState::Restarting;
                s.pid = None;
                s.last_error = Some(why);
            });
            let pause = self.settings.backoff(in_a_row);
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = stopped(&mut stop) => {
                    self.stop_one(&spec, Running::Nothing).await;
                    self.forget(&spec);
                    return;
                }
            }
            metrics::counter!(RESTARTS, &labels).increment(1);
            status.send_modify(|s| {
                s.state = MountState::Starting;
                s.restarts += 1;
                s.adopted = false;
            });
        }
    }

    /// Starts the mounter and waits until its mount answers: the child, or why not; `None`
    /// when a stop came first. A dead mount in the way is noted in `lost` before it goes, and
    /// the pods' binds of it are bound to the new mount once it serves (even when that takes
    /// several attempts).
    async fn start_one(
        &self,
        spec: &MountSpec,
        stop: &mut watch::Receiver<bool>,
        lost: &mut Option<LostMount>,
    ) -> Result<Option<Box<dyn MounterProcess>>, String> {
        let fs_type = spec.mounter.fs_type();
        let shown = self
            .host
            .mounted(&spec.target, fs_type)
            .await
            .map_err(|e| e.to_string())?;
        if shown == Mounted::Dead {
            match self.host.lost_mount(&spec.target).await {
                Ok(found) => *lost = found.or(lost.take()),
                Err(e) => {
                    tracing::warn!(target = %spec.target.display(), error = %e, "cannot note the dead mount; pods keep it until they are published again");
                }
            }
            self.record(spec, None, lost.clone());
        }
        // A dead mount left by the mounter that died is in the way of the new one.
        if shown != Mounted::Absent {
            self.host
                .unmount(&spec.target)
                .await
                .map_err(|e| e.to_string())?;
        }
        make_private_dir(&self.settings.state_dir)?;
        let log = state_file(&self.settings.state_dir, &spec.target).with_extension("log");
        let mut child = self
            .host
            .spawn(&spec.command(Run::Foreground), &log)
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + self.settings.mount_timeout;
        let shown = async {
            loop {
                match self.host.mounted(&spec.target, fs_type).await {
                    Ok(Mounted::Serving) => return Ok(()),
                    _ if Instant::now() > deadline => {
                        return Err(format!(
                            "no mount within {}s",
                            self.settings.mount_timeout.as_secs()
                        ));
                    }
                    _ => tokio::time::sleep(self.settings.poll).await,
                }
            }
        };
        let outcome = tokio::select! {
            r = shown => Some(r),
            why = child.wait() => Some(Err(format!("the mounter exited before mounting: {why}"))),
            () = stopped(stop) => None,
        };
        match outcome {
            None => {
                self.stop_one(spec, Running::Child(child)).await;
                Ok(None)
            }
            Some(Ok(())) => {
                if let Some(old) = lost.take() {
                    match self.host.binds_of(&old, &spec.target).await {
                        Ok(binds) => {
                            self.host.bind_again(&spec.target, &binds).await;
                        }
                        Err(e) => {
                            tracing::warn!(target = %spec.target.display(), error = %e, "cannot find the pods' binds of the dead mount");
                        }
                    }
                }
                Ok(Some(child))
            }
            Some(Err(why)) => {
                child.kill();
                let _ = child.wait().await;
                let _ = self.host.unmount(&spec.target).await;
                Err(why)
            }
        }
    }

    /// Watches a mounter an earlier supervisor started (not our child: polled).
    async fn watch_adopted(
        &self,
        spec: &MountSpec,
        pid: u32,
        stop: &mut watch::Receiver<bool>,
    ) -> Life {
        let since = Instant::now();
        loop {
            tokio::select! {
                () = stopped(stop) => return Life::Stop(Running::Adopted(pid)),
                () = tokio::time::sleep(self.settings.poll) => {}
            }
            let serving = self
                .host
                .mounted(&spec.target, spec.mounter.fs_type())
                .await
                .ok()
                == Some(Mounted::Serving);
            if !serving || !self.host.runs(pid, &spec.target) {
                return Life::Exited {
                    why: format!("adopted mounter (pid {pid}) is gone"),
                    ran: since.elapsed(),
                };
            }
        }
    }

    /// Unmounts (the mounter exits on its own then) and makes sure the mounter is gone.
    async fn stop_one(&self, spec: &MountSpec, running: Running) {
        let target = spec.target.display().to_string();
        if self
            .host
            .mounted(&spec.target, spec.mounter.fs_type())
            .await
            .is_ok_and(|m| m != Mounted::Absent)
            && let Err(e) = self.host.unmount(&spec.target).await
        {
            tracing::warn!(%target, error = %e, "cannot unmount");
        }
        let grace = self.settings.stop_grace;
        match running {
            Running::Child(mut c) => {
                if tokio::time::timeout(grace, c.wait()).await.is_err() {
                    tracing::warn!(%target, "mounter still runs after its unmount; killing it");
                    c.kill();
                    let _ = c.wait().await;
                }
            }
            Running::Adopted(pid) => {
                let deadline = Instant::now() + grace;
                while self.host.runs(pid, &spec.target) {
                    if Instant::now() > deadline {
                        self.host.kill(pid);
                        break;
                    }
                    tokio::time::sleep(self.settings.poll).await;
                }
            }
            Running::Nothing => {}
        }
    }

    /// Writes the state file of a serving mount.
    fn record(&self, spec: &MountSpec, pid: Option<u32>, lost: Option<LostMount>) {
        let path = state_file(&self.settings.state_dir, &spec.target);
        let record = StateRecord {
            spec: spec.clone(),
            pid,
            lost,
        };
        let text = protocol::to_line(&record);
        let tmp = path.with_extension("tmp");
        if let Err(e) = make_private_dir(&self.settings.state_dir)
            .map_err(std::io::Error::other)
            .and_then(|()| std::fs::write(&tmp, text))
            .and_then(|()| std::fs::rename(&tmp, &path))
        {
            tracing::warn!(file = %path.display(), error = %e, "cannot write state file; a restarted supervisor will not find this mount");
        }
    }

    /// Removes the state file and the mounter log of a mount no longer supervised.
    fn forget(&self, spec: &MountSpec) {
        let path = state_file(&self.settings.state_dir, &spec.target);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(path.with_extension("log"));
    }
}

/// Keeps the mounts gauge right: +1 while a mount serves, -1 when it stops or the task ends.
struct ServingGauge {
    labels: [(&'static str, String); 2],
    on: bool,
}

impl ServingGauge {
    fn new(labels: &[(&'static str, String); 2]) -> Self {
        Self {
            labels: labels.clone(),
            on: false,
        }
    }

    fn set(&mut self, on: bool) {
        if on != self.on {
            let delta = if on { 1.0 } else { -1.0 };
            metrics::gauge!(MOUNTS, &self.labels).increment(delta);
            self.on = on;
        }
    }
}

impl Drop for ServingGauge {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// Creates `dir` owner-only (0700), or makes an existing one of ours so: the state directory
/// is the supervisor's alone, and a Kubernetes emptyDir starts out world-writable. One owned
/// by someone else is refused.
pub fn make_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("create {}: {e}", dir.display()))?;
    let meta = std::fs::metadata(dir).map_err(|e| format!("stat {}: {e}", dir.display()))?;
    if meta.mode() & 0o077 == 0 {
        return Ok(());
    }
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(format!(
            "{} has mode {:04o} and another owner; it must be private (0700)",
            dir.display(),
            meta.mode() & 0o7777
        ));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("make {} private: {e}", dir.display()))
}

/// Resolves once a stop is asked (the guard `wait_for` returns is dropped here, before any
/// other await, so the task stays `Send`).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn error(fault: Fault, message: String) -> Response {
    Response::Error { fault, message }
}

#[cfg(test)]
mod tests;
