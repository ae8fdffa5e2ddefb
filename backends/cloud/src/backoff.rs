//! Every pause the client takes, built from the config with one crate (`backon`): the backoff
//! between attempts of one request, and the pace of a wait on a job or on disks.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
// Tokio's clock, so tests can run a long wait on paused time.
use tokio::time::Instant;

use super::config::CloudConfig;
use super::error::Error;

/// The delays between attempts of one request: ceilings from `retry_base` doubling up to
/// `retry_cap`, each delay drawn from `[ceiling / 2, ceiling]`, at most `max_retries` of them.
///
/// backon's jitter adds up to the delay itself, so starting from half the configured ceiling
/// keeps every delay under the ceiling the operator configured ("equal jitter").
pub(crate) fn request_retries(config: &CloudConfig) -> ExponentialBuilder {
    retry_delays(config).with_max_times(config.max_retries as usize)
}

fn retry_delays(config: &CloudConfig) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(config.retry_base / 2)
        .with_max_delay(config.retry_cap / 2)
        .with_factor(2.0)
        .with_jitter()
}

/// The intervals between two polls of a job or of disks: from `job_poll_initial`, ×1.5 per
/// poll, at most `job_poll_max`, for as long as the wait lasts.
fn poll_intervals(config: &CloudConfig) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(config.job_poll_initial)
        .with_max_delay(config.job_poll_max)
        .with_factor(1.5)
        .without_max_times()
}

/// Paces one wait on the cloud. A wait ends only when what it waits for ends or its deadline
/// passes: a poll that fails transiently (429, 5xx, timeout, connection) after the request's own
/// retries only slows the polling, to the request backoff, until a poll answers again.
pub struct WaitPace {
    started: Instant,
    deadline: Duration,
    polls: ExponentialBackoff,
    failures: ExponentialBackoff,
    failure_delays: ExponentialBuilder,
    /// How long such waits took lately, when known: the first poll waits for most of it, and
    /// the polls around it come close together, so the end is seen soon after it happens
    /// with few calls.
    expected: Option<Duration>,
    /// Polls sent so far (atomic only so that a poll's future stays `Send`).
    sent: std::sync::atomic::AtomicU32,
    /// Polls in a row that failed transiently.
    pub failed_in_a_row: u32,
}

/// The first poll of a wait whose length is expected comes at this share of it.
const FIRST_POLL_SHARE: f64 = 0.9;
/// Near the expected end, polls come this many times per expected length.
const POLLS_PER_EXPECTED: u32 = 20;
/// The closest two polls ever come.
const MIN_POLL_GAP: Duration = Duration::from_millis(5);

impl WaitPace {
    /// A wait that may last `deadline` from now.
    pub fn new(config: &CloudConfig, deadline: Duration) -> Self {
        let failure_delays = retry_delays(config).without_max_times();
        WaitPace {
            started: Instant::now(),
            deadline,
            polls: poll_intervals(config).build(),
            failures: failure_delays.build(),
            failure_delays,
            expected: None,
            sent: std::sync::atomic::AtomicU32::new(0),
            failed_in_a_row: 0,
        }
    }

    /// A wait like [`WaitPace::new`] that is expected to last about `expected` (what such
    /// waits took lately; see [`crate::CloudClient::wait_pace`]).
    pub fn expecting(config: &CloudConfig, deadline: Duration, expected: Option<Duration>) -> Self {
        WaitPace {
            expected,
            ..Self::new(config, deadline)
        }
    }

    /// How long the wait ended after, as the next expectation should learn it: when the very
    /// first poll already saw the end, it came earlier than that poll, so a little less.
    pub fn learned_length(&self) -> Duration {
        let polls = self.sent.load(std::sync::atomic::Ordering::Relaxed);
        match (polls, self.expected) {
            (1, Some(_)) => self.waited().mul_f64(FIRST_POLL_SHARE),
            _ => self.waited(),
        }
    }

    /// Sleeps before the first poll: most of the expected length, when it is known (polling
    /// earlier would only cost calls); not at all otherwise.
    pub async fn before_first_poll(&self) {
        tokio::time::sleep(self.first_poll_delay()).await;
    }

    /// How long after its start the first poll of the wait should come (see
    /// [`WaitPace::before_first_poll`]), for a poller that sleeps on many waits at once.
    pub fn first_poll_delay(&self) -> Duration {
        match self.expected {
            Some(expected) => expected.mul_f64(FIRST_POLL_SHARE).min(self.left()),
            None => Duration::ZERO,
        }
    }

    /// The gap between polls near the expected end (zero when nothing is expected yet): a
    /// shared poller may look this much early, to put waits that end together in one call.
    pub fn close_gap(&self) -> Duration {
        self.expected.map_or(Duration::ZERO, |expected| {
            (expected / POLLS_PER_EXPECTED).max(MIN_POLL_GAP)
        })
    }

    /// How long such waits took lately, when known.
    pub fn expected(&self) -> Option<Duration> {
        self.expected
    }

    /// Counts a poll sent on this wait's behalf by someone else (a shared poller), as
    /// [`WaitPace::poll`] counts its own.
    pub fn count_poll(&self) {
        self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        self.left().is_zero()
    }

    /// How long the wait has lasted.
    pub fn waited(&self) -> Duration {
        self.started.elapsed()
    }

    fn left(&self) -> Duration {
        self.deadline.saturating_sub(self.waited())
    }

    /// Runs one poll, cut off at the deadline (`None`): a slow poll cannot stretch the wait.
    pub async fn poll<T>(&self, poll: impl Future<Output = T>) -> Option<T> {
        self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::time::timeout(self.left(), poll).await.ok()
    }

    /// Whether a failed poll is transient, so that the wait goes on.
    pub fn is_transient(e: &Error) -> bool {
        e.is_retryable()
    }

    /// Sleeps until the next poll: the poll interval after an answer, the growing request
    /// backoff after a transient failure. `false` when the deadline has passed.
    pub async fn pause(&mut self, last_poll_failed: bool) -> bool {
        match self.next_delay(last_poll_failed) {
            Some(delay) => {
                tokio::time::sleep(delay).await;
                true
            }
            None => false,
        }
    }

    /// The pause [`WaitPace::pause`] would sleep, without sleeping it, for a poller that
    /// sleeps on many waits at once; `None` when the deadline has passed.
    pub fn next_delay(&mut self, last_poll_failed: bool) -> Option<Duration> {
        let delay = if last_poll_failed {
            self.failed_in_a_row += 1;
            self.failures.next()
        } else {
            self.failed_in_a_row = 0;
            self.failures = self.failure_delays.build();
            match self.expected {
                // Close to the expected end: short, even gaps. Past twice the expected length,
                // the wait is an unusual one, and the usual growing intervals take over.
                Some(expected) if self.waited() < expected * 2 => {
                    Some((expected / POLLS_PER_EXPECTED).max(MIN_POLL_GAP))
                }
                _ => self.polls.next(),
            }
        };
        let left = self.left();
        if left.is_zero() {
            return None;
        }
        // Both schedules are endless; the fallback only guards against a change in backon.
        Some(delay.unwrap_or(left).min(left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CloudConfig {
        let mut c = CloudConfig::new("p", "r");
        c.retry_base = Duration::from_millis(100);
        c.retry_cap = Duration::from_secs(2);
        c.max_retries = 8;
        c.job_poll_initial = Duration::from_millis(100);
        c.job_poll_max = Duration::from_secs(2);
        c
    }

    #[test]
    fn request_delays_double_within_their_ceilings_then_stop() {
        for _ in 0..50 {
            let delays: Vec<Duration> = request_retries(&config()).build().collect();
            assert_eq!(delays.len(), 8, "max_retries delays, then no more");
            let ceilings = [100, 200, 400, 800, 1600, 2000, 2000, 2000];
            for (d, ceiling) in delays.iter().zip(ceilings) {
                let ceiling = Duration::from_millis(ceiling);
                assert!(
                    *d >= ceiling / 2 && *d <= ceiling,
                    "{d:?} outside [{:?}, {ceiling:?}]",
                    ceiling / 2
                );
            }
        }
        let mut none = config();
        none.max_retries = 0;
        assert_eq!(request_retries(&none).build().count(), 0);
    }

    #[test]
    fn request_delays_are_jittered() {
        let firsts: Vec<Duration> = (0..100)
            .map(|_| request_retries(&config()).build().next().unwrap())
            .collect();
        assert!(firsts.iter().any(|d| *d != firsts[0]), "no jitter");
    }

    #[test]
    fn poll_intervals_grow_by_half_cap_and_never_end() {
        let seen: Vec<u128> = poll_intervals(&config())
            .build()
            .take(12)
            .map(|d| d.as_millis())
            .collect();
        // f32 arithmetic inside backon: allow a millisecond either way.
        let want = [
            100, 150, 225, 337, 506, 759, 1139, 1708, 2000, 2000, 2000, 2000,
        ];
        for (got, want) in seen.iter().zip(want) {
            assert!(got.abs_diff(want) <= 1, "{seen:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_slow_the_pace_and_an_answer_restores_it() {
        let mut pace = WaitPace::new(&config(), Duration::from_secs(3600));
        let slept = |before: Instant| before.elapsed();
        // The timer wheel has millisecond ticks and may round a sleep up by one.
        let about = |got: Duration, ms: u64| got.as_millis().abs_diff(u128::from(ms)) <= 1;
        let t = Instant::now();
        assert!(pace.pause(false).await);
        assert!(about(slept(t), 100), "{:?}", slept(t));
        // Three failed polls: the request backoff (jittered, doubling) replaces the interval.
        let mut failed = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            assert!(pace.pause(true).await);
            failed.push(slept(t));
        }
        assert_eq!(pace.failed_in_a_row, 3);
        assert!(failed[2] >= Duration::from_millis(200), "{failed:?}");
        // An answer: back to the poll schedule, failure backoff restarted.
        let t = Instant::now();
        assert!(pace.pause(false).await);
        assert!(about(slept(t), 150), "{:?}", slept(t));
        assert_eq!(pace.failed_in_a_row, 0);
        let t = Instant::now();
        assert!(pace.pause(true).await);
        assert!(
            slept(t) <= Duration::from_millis(101),
            "backoff not restarted"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_pauses_and_cuts_polls() {
        let mut pace = WaitPace::new(&config(), Duration::from_millis(250));
        assert!(pace.pause(false).await); // 100 ms
        assert!(pace.pause(false).await); // 150 ms: the deadline
        assert!(!pace.pause(false).await);
        assert_eq!(pace.poll(std::future::pending::<()>()).await, None);
        let fresh = WaitPace::new(&config(), Duration::from_secs(1));
        assert_eq!(fresh.poll(async { 7 }).await, Some(7));
    }

    #[tokio::test(start_paused = true)]
    async fn an_expected_wait_polls_late_then_often_and_falls_back_when_it_runs_long() {
        let expected = Duration::from_millis(1000);
        let mut pace = WaitPace::expecting(&config(), Duration::from_secs(60), Some(expected));
        pace.before_first_poll().await;
        assert_eq!(pace.waited(), Duration::from_millis(900));
        assert!(pace.pause(false).await);
        assert_eq!(
            pace.waited(),
            Duration::from_millis(950),
            "gaps of 1/20 near the end"
        );
        while pace.waited() < expected * 2 {
            assert!(pace.pause(false).await);
        }
        let before = pace.waited();
        assert!(pace.pause(false).await);
        assert_eq!(
            pace.waited() - before,
            Duration::from_millis(100),
            "past twice the expected length, the usual schedule from job_poll_initial"
        );
        // An end seen at the first poll was earlier than it: the expectation shrinks.
        let early = WaitPace::expecting(&config(), Duration::from_secs(60), Some(expected));
        early.before_first_poll().await;
        early.poll(async {}).await;
        assert_eq!(early.learned_length(), Duration::from_millis(810));
        early.poll(async {}).await;
        assert_eq!(early.learned_length(), Duration::from_millis(900));
        // Without an expectation the first poll comes at once.
        let fresh = WaitPace::expecting(&config(), Duration::from_secs(60), None);
        fresh.before_first_poll().await;
        assert_eq!(fresh.waited(), Duration::ZERO);
        assert_eq!(fresh.close_gap(), Duration::ZERO);
        assert_eq!(pace.close_gap(), Duration::from_millis(50));
    }
}
