//! Waiting for attaches and detaches by what they do to the disk rather than by their ECS job:
//! disk looks share `list_volumes` calls with every other wait of the instance (60 disks to a
//! call), while ECS has no batch job query, so watching jobs costs a call per job per round.
//! A job is read only when the disk shows no sign of it, which is when its answer matters.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use everest_backend::{Error, Result};
use tokio::time::Instant;

use super::EvsController;
use crate::api::{JobId, JobStatus, Service, Volume, VolumeWait};

/// What one look at a disk says about the ECS jobs in flight on it.
pub(super) enum Effect {
    /// The disk is where the jobs take it.
    Landed,
    /// On its way there.
    Underway,
    /// No sign of the jobs: they have not started yet, or one failed and put the disk back.
    Unseen,
    /// It will never get there.
    Failed(String),
}

impl EvsController {
    /// Waits until `effect` says the disk landed (→ the last look, `None` when the disk is
    /// gone) or failed, or the job timeout passes. `kind` names the wait for the pace it
    /// learns; `doing` says what was attempted, for errors.
    ///
    /// When a look shows no sign of `jobs`, each is read once: a failed one ends the wait with
    /// the cloud's reason, one not started yet lets it go on after a pause (the first poll
    /// interval, so a job the cloud keeps queued is not asked about in a tight loop), and once
    /// all have succeeded the disk alone is waited on (a listing may lag its job). Waits after
    /// the first go by another name, so the pace learned for `kind` stays the whole length.
    pub(super) async fn await_effect(
        &self,
        disk_id: &str,
        kind: &str,
        doing: &str,
        mut jobs: Vec<JobId>,
        effect: impl Fn(Option<&Volume>) -> Effect + Send + Sync + 'static,
    ) -> Result<Option<Volume>> {
        let effect = Arc::new(effect);
        let deadline = Instant::now() + self.config.backend.job_timeout();
        let mut wait_kind = kind.to_owned();
        loop {
            let unseen = Arc::new(AtomicBool::new(false));
            let (look, seen_nothing, asking) = (effect.clone(), unseen.clone(), !jobs.is_empty());
            let verdict = move |v: Option<&Volume>| match look(v) {
                Effect::Landed => VolumeWait::Done,
                Effect::Failed(why) => VolumeWait::Failed(why),
                Effect::Unseen if asking => {
                    seen_nothing.store(true, Ordering::Relaxed);
                    VolumeWait::Failed("no sign of its job yet".into())
                }
                Effect::Unseen | Effect::Underway => VolumeWait::Pending,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let looked = self
                .client
                .wait_for_volume(&wait_kind, disk_id, verdict, left)
                .await;
            match looked {
                Ok(seen) => return Ok(seen),
                Err(_) if unseen.load(Ordering::Relaxed) => {
                    let asked = tokio::time::timeout_at(deadline, self.unfinished(jobs, doing));
                    jobs = asked.await.map_err(|_| {
                        Error::DeadlineExceeded(format!(
                            "{doing}: its job did not end within the job timeout"
                        ))
                    })??;
                    if !jobs.is_empty() {
                        let pause = self.config.cloud.job_poll_initial;
                        tokio::time::sleep_until(deadline.min(Instant::now() + pause)).await;
                    }
                    wait_kind = format!("{kind}, after a look at its job");
                }
                Err(e) => {
                    return Err(
                        Error::from(e).context(format!("waiting for disk {disk_id} to be {kind}"))
                    );
                }
            }
        }
    }

    /// The jobs among `jobs` that have not ended; the first failed one is the error.
    async fn unfinished(&self, jobs: Vec<JobId>, doing: &str) -> Result<Vec<JobId>> {
        let mut running = Vec::new();
        for id in jobs {
            let job = self
                .client
                .get_job(Service::Ecs, &id)
                .await
                .map_err(|e| Error::from(e).context(doing))?;
            match job.status {
                JobStatus::Success => {}
                JobStatus::Fail => return Err(Error::from(job.into_error()).context(doing)),
                _ => running.push(id),
            }
        }
        Ok(running)
    }
}
