//! One poller per backend instance: every wait on a disk or a job goes through it, so waits in
//! flight at the same time share their polls. Disks due for a look go into one `list_volumes`
//! call per 60 ids; jobs (the job API takes one id) are asked on the same schedule, in parallel.
//!
//! Each wait keeps its own pace ([`WaitPace`]: the first look at 0.9 × the length such waits
//! took lately, then every 1/20 of it), so one operation alone ends as soon as it would on its
//! own. A round also counts as the look of every wait due within a short slack (a close gap),
//! so waits that end together keep sharing rounds; and a round carries the other disks being
//! waited on, up to 60 ids: for them the look is free and only an end it sees counts.
//!
//! A background task runs the rounds while anyone waits and ends when nobody does. Dropping a
//! wait (its RPC was cancelled) removes it at once: it is not polled again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use everest_backend::outside::outside;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::error::{Error, Result};
use super::evs::{JobId, MAX_IDS_PER_LIST, Volume};
use super::jobs::{Job, JobStatus, VolumeWait};
use everest_cloud::Service;
use everest_cloud::backoff::WaitPace;

/// What the poller asks the cloud, and where it learns and records how long waits take.
#[async_trait]
pub(crate) trait Lookup: Send + Sync + 'static {
    /// The disks among `ids` (at most [`MAX_IDS_PER_LIST`]) that exist.
    async fn disks(&self, ids: Vec<String>) -> Result<Vec<Volume>>;
    /// One job.
    async fn job(&self, service: Service, id: JobId) -> Result<Job>;
    /// The pace of a new wait of the kind `key`.
    fn pace(&self, key: &str, deadline: Duration) -> WaitPace;
    /// A wait of the kind `key` ended after `took`.
    fn learned(&self, key: &str, took: Duration);
    /// The backend instance, for logs.
    fn backend(&self) -> &str;
}

/// Decides, from what a look saw (`None`: no such disk), whether a disk wait is over.
pub(crate) type Verdict = Box<dyn Fn(Option<&Volume>) -> VolumeWait + Send>;

/// The poller of one backend instance; clones share it.
#[derive(Clone, Default)]
pub(crate) struct Poller {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Rings when a wait is added, so the task reconsiders when to poll.
    added: Notify,
}

#[derive(Default)]
struct State {
    waits: BTreeMap<u64, Wait>,
    next_key: u64,
    /// Whether the background task runs.
    driving: bool,
    /// When a wait of each kind last ended.
    last_end: BTreeMap<String, Instant>,
    /// No round before this: a round failed transiently, so the cloud is struggling and every
    /// wait of the instance backs off, not only the one whose poll failed.
    slowed_until: Option<Instant>,
}

enum Target {
    Disk { id: String, verdict: Verdict },
    Job { service: Service, id: JobId },
}

/// What an ended wait saw last.
enum Seen {
    Disk(Option<Volume>),
    Job(Job),
}

struct Wait {
    target: Target,
    /// The kind of wait, whose length the pace learns (e.g. `disks:available`, `job:ecs`).
    kind: String,
    pace: WaitPace,
    /// When this wait wants its next look.
    due: Instant,
    /// How much earlier than `due` a round may count as its look: waits whose looks fall
    /// close together then share rounds instead of each starting its own.
    slack: Duration,
    /// For a job that times out: the status seen last, or why it is unknown.
    last_status: String,
    reply: oneshot::Sender<Result<Seen>>,
}

/// Removes its wait when dropped, so an abandoned wait is not polled again.
struct Registered {
    shared: Arc<Shared>,
    key: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.shared.state).waits.remove(&self.key);
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Poller {
    /// Waits until `verdict` says the disk `id` is done (→ what the last look saw, `None` if
    /// the disk does not exist) or failed, or until `deadline`. `kind` names the wait (e.g.
    /// `available`) for the pace it learns.
    pub async fn disk(
        &self,
        lookup: &Arc<dyn Lookup>,
        kind: &str,
        id: &str,
        verdict: Verdict,
        deadline: Duration,
    ) -> Result<Option<Volume>> {
        let target = Target::Disk {
            id: id.to_owned(),
            verdict,
        };
        let seen = outside(self.wait(lookup, format!("disks:{kind}"), target, deadline)).await;
        match seen? {
            Seen::Disk(v) => Ok(v),
            Seen::Job(_) => Err(Error::InvalidInput("a disk wait saw a job".into())),
        }
    }

    /// Waits until the job ends: `SUCCESS` (→ the job), `FAIL` (→ `JobFailed`) or `deadline`
    /// (→ `JobTimeout`).
    pub async fn job(
        &self,
        lookup: &Arc<dyn Lookup>,
        service: Service,
        id: &JobId,
        deadline: Duration,
    ) -> Result<Job> {
        let target = Target::Job {
            service,
            id: id.clone(),
        };
        let kind = format!("job:{}", service.as_str());
        match outside(self.wait(lookup, kind, target, deadline)).await? {
            Seen::Job(job) => Ok(job),
            Seen::Disk(_) => Err(Error::InvalidInput("a job wait saw a disk".into())),
        }
    }

    async fn wait(
        &self,
        lookup: &Arc<dyn Lookup>,
        kind: String,
        target: Target,
        deadline: Duration,
    ) -> Result<Seen> {
        let pace = lookup.pace(&kind, deadline);
        let due = Instant::now() + pace.first_poll_delay();
        let slack = pace.close_gap();
        let (reply, answer) = oneshot::channel();
        let registered = {
            let mut state = lock(&self.shared.state);
            let key = state.next_key;
            state.next_key += 1;
            state.waits.insert(
                key,
                Wait {
                    target,
                    kind,
                    pace,
                    due,
                    slack,
                    last_status: "not read yet".into(),
                    reply,
                },
            );
            if !state.driving {
                state.driving = true;
                tokio::spawn(drive(self.shared.clone(), lookup.clone()));
            }
            Registered {
                shared: self.shared.clone(),
                key,
            }
        };
        self.shared.added.notify_one();
        let answer = answer.await;
        drop(registered);
        // The task ends a wait only by answering it; a closed channel means the task died.
        answer.unwrap_or_else(|_| Err(Error::InvalidInput("the disk poller stopped".into())))
    }
}

/// What one round asks.
enum Ask {
    /// Disks in one list call; `due` are those whose own schedule asked for the look.
    Disks {
        ids: Vec<String>,
        due: BTreeSet<String>,
    },
    Job {
        service: Service,
        id: JobId,
    },
}

enum Answer {
    Disks {
        ids: Vec<String>,
        due: BTreeSet<String>,
        result: Result<Vec<Volume>>,
    },
    Job {
        service: Service,
        id: JobId,
        result: Result<Job>,
    },
}

/// What the task does next.
enum Next {
    Sleep(Instant),
    Run(Vec<Ask>),
    Stop,
}

/// Runs rounds while anyone waits.
async fn drive(shared: Arc<Shared>, lookup: Arc<dyn Lookup>) {
    loop {
        // A statement of its own, so that the lock is released before any await.
        let next = lock(&shared.state).next(Instant::now());
        let asks = match next {
            Next::Stop => return,
            Next::Sleep(until) => {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => {}
                    () = shared.added.notified() => {}
                }
                continue;
            }
            Next::Run(asks) => asks,
        };
        tracing::debug!(
            backend = lookup.backend(),
            calls = asks.len(),
            disks = asks
                .iter()
                .map(|a| match a {
                    Ask::Disks { ids, .. } => ids.len(),
                    Ask::Job { .. } => 0,
                })
                .sum::<usize>(),
            "poll round"
        );
        let mut running = tokio::task::JoinSet::new();
        for ask in asks {
            let lookup = lookup.clone();
            running.spawn(async move {
                match ask {
                    Ask::Disks { ids, due } => {
                        let result = lookup.disks(ids.clone()).await;
                        Answer::Disks { ids, due, result }
                    }
                    Ask::Job { service, id } => {
                        let result = lookup.job(service, id.clone()).await;
                        Answer::Job {
                            service,
                            id,
                            result,
                        }
                    }
                }
            });
        }
        let mut answers = Vec::new();
        while let Some(answer) = running.join_next().await {
            match answer {
                Ok(a) => answers.push(a),
                Err(e) => tracing::error!(error = %e, "a disk poll panicked"),
            }
        }
        lock(&shared.state).apply(answers, &*lookup);
    }
}

impl State {
    /// Ends the waits past their deadline, then: a round to run now, a time to sleep until,
    /// or (nobody waits) the end of the task.
    fn next(&mut self, now: Instant) -> Next {
        self.end_expired(now);
        if self.waits.is_empty() {
            self.driving = false;
            return Next::Stop;
        }
        let at = self.next_round(now);
        if at > now {
            Next::Sleep(at)
        } else {
            Next::Run(self.plan(now))
        }
    }

    /// When the next round is due.
    fn next_round(&self, now: Instant) -> Instant {
        let earliest = self.waits.values().map(|w| w.due).min().unwrap_or(now);
        self.slowed_until.map_or(earliest, |s| earliest.max(s))
    }

    /// Ends the waits whose deadline has passed.
    fn end_expired(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .waits
            .iter()
            .filter(|(_, w)| w.pace.expired() && w.due <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            if let Some(w) = self.waits.remove(&key) {
                w.time_out();
            }
        }
    }

    /// The calls of a round at `now`: the disks due, 60 to a call, the last call filled up
    /// with disks not yet due; each job due.
    fn plan(&mut self, now: Instant) -> Vec<Ask> {
        let mut due_disks = BTreeSet::new();
        let mut others: Vec<(Instant, String)> = Vec::new();
        let mut jobs: Vec<(Service, JobId)> = Vec::new();
        for w in self.waits.values_mut() {
            let is_due = w.due <= now + w.slack;
            if is_due {
                w.pace.count_poll();
            }
            match &w.target {
                Target::Disk { id, .. } if is_due => {
                    due_disks.insert(id.clone());
                }
                Target::Disk { id, .. } => others.push((w.due, id.clone())),
                Target::Job { service, id } if is_due => {
                    if !jobs.iter().any(|(s, j)| s == service && j == id) {
                        jobs.push((*service, id.clone()));
                    }
                }
                Target::Job { .. } => {}
            }
        }
        others.sort();
        let mut asks = Vec::new();
        let due: Vec<String> = due_disks.iter().cloned().collect();
        for chunk in due.chunks(MAX_IDS_PER_LIST) {
            asks.push(Ask::Disks {
                ids: chunk.to_vec(),
                due: chunk.iter().cloned().collect(),
            });
        }
        if let Some(Ask::Disks { ids, .. }) = asks.last_mut() {
            for (_, id) in others {
                if ids.len() == MAX_IDS_PER_LIST {
                    break;
                }
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        asks.extend(
            jobs.into_iter()
                .map(|(service, id)| Ask::Job { service, id }),
        );
        asks
    }

    /// Hands each wait what its round saw.
    fn apply(&mut self, answers: Vec<Answer>, lookup: &dyn Lookup) {
        let now = Instant::now();
        let mut failed_round = false;
        for answer in answers {
            match answer {
                Answer::Disks { ids, due, result } => match result {
                    Ok(volumes) => {
                        let seen: BTreeMap<&str, &Volume> =
                            volumes.iter().map(|v| (v.id.as_str(), v)).collect();
                        self.each_disk(&ids, lookup, |id, w| {
                            let was_due = due.contains(id);
                            w.seen_disk(id, seen.get(id).copied(), was_due)
                        });
                    }
                    Err(e) if WaitPace::is_transient(&e) => {
                        failed_round = true;
                        let what = ids.join(",");
                        self.each_disk(&ids, lookup, |id, w| {
                            if due.contains(id) {
                                w.poll_failed(lookup, "disks", &what, &e)
                            } else {
                                Step::Wait
                            }
                        });
                    }
                    // The cloud refused the call for good; it named no disk, so it concerns all.
                    Err(e) => {
                        self.each_disk(&ids, lookup, |_, _| Step::End(Box::new(Err(e.clone()))))
                    }
                },
                Answer::Job {
                    service,
                    id,
                    result,
                } => {
                    if matches!(&result, Err(e) if WaitPace::is_transient(e)) {
                        failed_round = true;
                    }
                    self.each(
                        |t| matches!(t, Target::Job { service: s, id: j } if *s == service && *j == id),
                        lookup,
                        |w| w.seen_job(lookup, &id, &result),
                    );
                }
            }
        }
        // Waits of a kind whose peers ended within the usual length of such a wait are near
        // their end too, even when they run longer than usual (a burst queues in the cloud):
        // they stay on close gaps instead of the slow schedule of an unusually long wait.
        for w in self.waits.values_mut() {
            let (Some(expected), Some(ended)) = (w.pace.expected(), self.last_end.get(&w.kind))
            else {
                continue;
            };
            let gap = w.pace.close_gap();
            let overdue = w.pace.waited() > expected;
            if overdue
                && now.saturating_duration_since(*ended) <= expected
                && w.pace.failed_in_a_row == 0
                && w.due > now + gap
            {
                w.due = now + gap;
                w.slack = gap;
            }
        }
        self.slowed_until = if failed_round {
            // The pause the failed waits took on holds back every wait.
            self.waits
                .values()
                .filter(|w| w.pace.failed_in_a_row > 0)
                .map(|w| w.due)
                .max()
                .filter(|until| *until > now)
        } else {
            None
        };
    }

    fn each_disk(
        &mut self,
        ids: &[String],
        lookup: &dyn Lookup,
        mut step: impl FnMut(&str, &mut Wait) -> Step,
    ) {
        self.each(
            |t| matches!(t, Target::Disk { id, .. } if ids.contains(id)),
            lookup,
            |w| {
                let Target::Disk { id, .. } = &w.target else {
                    return Step::Wait;
                };
                let id = id.clone();
                step(&id, w)
            },
        );
    }

    /// Runs `step` on every wait whose target `matches`, ending those it says are over.
    fn each(
        &mut self,
        matches: impl Fn(&Target) -> bool,
        lookup: &dyn Lookup,
        mut step: impl FnMut(&mut Wait) -> Step,
    ) {
        let keys: Vec<u64> = self
            .waits
            .iter()
            .filter(|(_, w)| matches(&w.target))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let Some(w) = self.waits.get_mut(&key) else {
                continue;
            };
            match step(w) {
                Step::Wait => {}
                Step::End(result) => {
                    let result = *result;
                    if let Some(w) = self.waits.remove(&key) {
                        if result.is_ok() {
                            lookup.learned(&w.kind, w.pace.learned_length());
                            self.last_end.insert(w.kind.clone(), Instant::now());
                        }
                        // The waiter may be gone already (cancelled); nothing to tell then.
                        let _ = w.reply.send(result);
                    }
                }
                Step::TimedOut => {
                    if let Some(w) = self.waits.remove(&key) {
                        w.time_out();
                    }
                }
            }
        }
    }
}

/// What a look means for one wait.
enum Step {
    /// Not over; its next look is scheduled.
    Wait,
    /// Over, with what to answer (boxed: a disk is large, and most steps are `Wait`).
    End(Box<Result<Seen>>),
    /// Not over, and its deadline has passed.
    TimedOut,
}

impl Wait {
    /// Schedules the next look after one that did not end the wait.
    fn again(&mut self, last_poll_failed: bool) -> Step {
        match self.pace.next_delay(last_poll_failed) {
            Some(delay) => {
                self.due = Instant::now() + delay;
                // A round up to a whole gap early may count as the next look: looks then still
                // come at most a gap apart, so an end is seen as soon as on the wait's own
                // schedule, and waits that end together fall into the same rounds. None after
                // a failure, whose backoff is meant to be kept.
                self.slack = if last_poll_failed {
                    Duration::ZERO
                } else {
                    delay
                };
                Step::Wait
            }
            None => Step::TimedOut,
        }
    }

    fn seen_disk(&mut self, id: &str, volume: Option<&Volume>, was_due: bool) -> Step {
        let Target::Disk { verdict, .. } = &self.target else {
            return Step::Wait;
        };
        match verdict(volume) {
            VolumeWait::Done => Step::End(Box::new(Ok(Seen::Disk(volume.cloned())))),
            VolumeWait::Failed(reason) => Step::End(Box::new(Err(Error::ResourceFailed {
                resource: format!("disk {id}"),
                reason,
            }))),
            // A free look (not due) leaves the schedule alone.
            VolumeWait::Pending if was_due => self.again(false),
            VolumeWait::Pending => Step::Wait,
        }
    }

    fn seen_job(&mut self, lookup: &dyn Lookup, id: &JobId, result: &Result<Job>) -> Step {
        match result {
            Ok(job) => match job.status {
                JobStatus::Success => Step::End(Box::new(Ok(Seen::Job(job.clone())))),
                JobStatus::Fail => Step::End(Box::new(Err(job.clone().into_error()))),
                _ => {
                    self.last_status = job.status.to_string();
                    self.again(false)
                }
            },
            Err(e) if WaitPace::is_transient(e) => {
                self.last_status = format!("unknown, the last poll failed: {e}");
                self.poll_failed(lookup, "job", &id.0, e)
            }
            Err(e) => Step::End(Box::new(Err(e.clone()))),
        }
    }

    /// A poll failed transiently: the wait goes on, slower. The cloud may be struggling, but
    /// what it accepted is still being done and someone must see it finish.
    fn poll_failed(&mut self, lookup: &dyn Lookup, what: &str, id: &str, e: &Error) -> Step {
        tracing::warn!(
            backend = lookup.backend(),
            what,
            id,
            failed_in_a_row = self.pace.failed_in_a_row + 1,
            waited_ms = u64::try_from(self.pace.waited().as_millis()).unwrap_or(u64::MAX),
            error = %e,
            "polling failed; still waiting"
        );
        self.again(true)
    }

    fn time_out(self) {
        let waited = self.pace.waited();
        let error = match self.target {
            Target::Disk { id, .. } => Error::WaitTimeout {
                pending: vec![id],
                waited,
            },
            Target::Job { id, .. } => Error::JobTimeout {
                job_id: id.0,
                waited,
                last_status: self.last_status,
            },
        };
        let _ = self.reply.send(Err(error));
    }
}

#[cfg(test)]
mod tests;
