//! The rate limit of one backend instance: a token bucket that every call of the instance draws
//! from (each attempt, retries included), and that a 429 from the cloud slows for all of them.
//!
//! Hand-written rather than `governor`: the rate must change while running (halved on a 429,
//! then recovering) and the clock must be tokio's, so that tests can run it on paused time;
//! governor's quota is fixed when it is built and it keeps its own clock.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

// Tokio's clock, so tests can check the pace on paused time.
use tokio::time::Instant;

/// After a 429 the rate climbs back to the configured one, linearly, over this long.
const RECOVERY: Duration = Duration::from_secs(30);
/// The slowest a throttled instance goes, in calls per second (or the configured rate if lower).
const MIN_RATE: f64 = 1.0;

/// A token bucket shared by every call of one backend instance; unlimited when built with a
/// rate of 0.
#[derive(Debug)]
pub(crate) struct RateLimit {
    bucket: Option<Mutex<Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    /// The configured rate, in calls per second.
    configured: f64,
    /// The rate now: lower than the configured one for a while after a 429.
    rate: f64,
    /// The bucket's size.
    burst: f64,
    /// Tokens left; below zero, the calls already waiting for one.
    tokens: f64,
    /// When `tokens` and `rate` were brought up to date.
    at: Instant,
    /// No call goes before this (the cloud's `Retry-After`, or one token's time).
    paused_until: Instant,
}

impl Bucket {
    fn catch_up(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        if self.rate < self.configured {
            let regained = self.configured * elapsed / RECOVERY.as_secs_f64();
            self.rate = (self.rate + regained).min(self.configured);
        }
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// Takes a token, possibly one not there yet; how long to wait until it is.
    fn reserve(&mut self, now: Instant) -> Duration {
        self.catch_up(now);
        self.tokens -= 1.0;
        let for_token = if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        };
        for_token.max(self.paused_until.saturating_duration_since(now))
    }
}

impl RateLimit {
    /// At most `per_second` calls a second, `burst` of them at once; `per_second == 0`: no limit.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let now = Instant::now();
        RateLimit {
            bucket: (per_second > 0).then(|| {
                let burst = f64::from(burst.max(1));
                Mutex::new(Bucket {
                    configured: f64::from(per_second),
                    rate: f64::from(per_second),
                    burst,
                    tokens: burst,
                    at: now,
                    paused_until: now,
                })
            }),
        }
    }

    /// Waits until this instance may send one more call.
    pub async fn acquire(&self) {
        let Some(bucket) = &self.bucket else {
            return;
        };
        let lock = || bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let mut wait = lock().reserve(Instant::now());
        while !wait.is_zero() {
            tokio::time::sleep(wait).await;
            // A 429 seen while this call waited holds it back too.
            wait = lock()
                .paused_until
                .saturating_duration_since(Instant::now());
        }
    }

    /// The cloud answered 429: every call of the instance pauses (for `retry_after` when the
    /// cloud said how long) and the rate halves, recovering over [`RECOVERY`].
    pub fn throttled(&self, retry_after: Option<Duration>) {
        let Some(bucket) = &self.bucket else {
            return;
        };
        let mut b = bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        b.catch_up(now);
        b.rate = (b.rate / 2.0).max(MIN_RATE.min(b.configured));
        b.tokens = b.tokens.min(0.0);
        let pause = retry_after.unwrap_or_else(|| Duration::from_secs_f64(1.0 / b.rate));
        b.paused_until = b.paused_until.max(now + pause);
    }

    /// The rate now, in calls per second (`None`: unlimited).
    #[cfg(test)]
    fn rate(&self) -> Option<f64> {
        self.bucket.as_ref().map(|b| {
            let mut b = b.lock().unwrap();
            b.catch_up(Instant::now());
            b.rate
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The times (ms after the start) at which `n` calls, queued together, may go.
    async fn go_times(limit: &std::sync::Arc<RateLimit>, n: usize) -> Vec<u128> {
        let start = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let limit = limit.clone();
                tokio::spawn(async move {
                    limit.acquire().await;
                    start.elapsed().as_millis()
                })
            })
            .collect();
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.unwrap());
        }
        times.sort();
        times
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_goes_at_once_and_the_rest_at_the_rate() {
        let limit = std::sync::Arc::new(RateLimit::new(10, 3));
        let times = go_times(&limit, 6).await;
        assert_eq!(times, vec![0, 0, 0, 100, 200, 300]);
        // A quiet second refills the bucket, but never beyond its size.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(go_times(&limit, 4).await, vec![0, 0, 0, 100]);
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits() {
        let limit = std::sync::Arc::new(RateLimit::new(0, 0));
        limit.throttled(Some(Duration::from_secs(5)));
        assert_eq!(go_times(&limit, 500).await, vec![0; 500]);
        assert_eq!(limit.rate(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_every_call_and_halves_the_rate_for_a_while() {
        let limit = std::sync::Arc::new(RateLimit::new(10, 10));
        // One caller is already waiting for its turn when another call sees the 429.
        let waiting = {
            let limit = limit.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                for _ in 0..11 {
                    limit.acquire().await;
                }
                start.elapsed()
            })
        };
        tokio::task::yield_now().await;
        limit.throttled(Some(Duration::from_secs(2)));
        assert!(
            waiting.await.unwrap() >= Duration::from_secs(2),
            "a call queued before the 429 went before the pause ended"
        );
        // Halved to 5, and two seconds of the thirty it takes to climb back to 10 regained.
        let rate = limit.rate().unwrap();
        assert!((rate - (5.0 + 10.0 * 2.0 / 30.0)).abs() < 0.01, "{rate}");
        // Every other caller is slowed too: past the bucket, calls come at the lowered rate
        // (about 6 a second, where 10 a second would let the last go near 1 s).
        let times = go_times(&limit, 20).await;
        assert!(times[19] >= 1500, "{times:?}");
        // Without another 429, the configured rate is back after the recovery time.
        tokio::time::sleep(RECOVERY).await;
        assert_eq!(limit.rate(), Some(10.0));
        // Repeated 429s never stop the instance altogether.
        for _ in 0..20 {
            limit.throttled(None);
        }
        assert_eq!(limit.rate(), Some(MIN_RATE));
    }
}
