//! The time an RPC spends waiting on what is outside the driver: the cloud's API and its jobs,
//! host tools (mount, mkfs, blkid…), the kernel, an S3 or NFS server. What is left of the RPC's
//! time is the driver's own, the figure its latency goal is about (`observe` records both).
//!
//! The waits are summed per RPC in a task-local: [`measured`] runs the RPC, [`outside`] wraps a
//! wait inside it. A wait inside another one counts once; a wait outside any RPC (a background
//! task, a spawned task) counts nowhere, so an RPC that awaits a spawned task wraps that await.

use std::cell::Cell;
use std::future::Future;
use std::time::{Duration, Instant};

tokio::task_local! {
    static WAITS: Cell<Waits>;
}

#[derive(Debug, Clone, Copy, Default)]
struct Waits {
    total: Duration,
    /// Waits in progress, nested in one another; only the outermost one is timed.
    depth: u32,
}

/// Runs `rpc`; answers its output and how long it waited on what is outside the driver.
pub async fn measured<F: Future>(rpc: F) -> (F::Output, Duration) {
    WAITS
        .scope(Cell::new(Waits::default()), async {
            let out = rpc.await;
            (out, WAITS.with(|w| w.get().total))
        })
        .await
}

/// Awaits `wait`, something outside the driver, and counts its time to the RPC in progress.
pub async fn outside<F: Future>(wait: F) -> F::Output {
    let _timed = Waiting::start();
    wait.await
}

/// Counts `took`, measured elsewhere (on the blocking pool, say), to the RPC in progress.
pub fn add(took: Duration) {
    let _ = WAITS.try_with(|w| {
        let mut waits = w.get();
        if waits.depth == 0 {
            waits.total += took;
            w.set(waits);
        }
    });
}

/// One wait in progress, from [`Waiting::start`] until dropped: [`outside`] for code that
/// cannot wrap its wait in a future of another type. Counted when dropped, so a wait cut short
/// (a cancelled call) counts what it took and leaves the nesting right.
#[must_use = "the wait ends when this is dropped"]
pub struct Waiting {
    started: Option<Instant>,
}

impl Waiting {
    /// Starts counting a wait to the RPC in progress, if any.
    pub fn start() -> Self {
        let entered = WAITS
            .try_with(|w| {
                let mut waits = w.get();
                waits.depth += 1;
                w.set(waits);
            })
            .is_ok();
        Self {
            started: entered.then(Instant::now),
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(started) = self.started else {
            return;
        };
        let _ = WAITS.try_with(|w| {
            let mut waits = w.get();
            waits.depth -= 1;
            if waits.depth == 0 {
                waits.total += started.elapsed();
            }
            w.set(waits);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real time, so each check keeps a wide margin (10 ×) between what it must count and what
    // would show a miscount: a loaded machine wakes sleepers late, never early.
    const WAIT: Duration = Duration::from_millis(20);

    #[tokio::test]
    async fn a_wait_counts_to_its_rpc_and_the_rest_does_not() {
        let ((), waited) = measured(async {
            outside(tokio::time::sleep(WAIT)).await;
            // The driver's own time: not counted.
            std::thread::sleep(WAIT * 10);
        })
        .await;
        assert!(waited >= WAIT && waited < WAIT * 10, "{waited:?}");
    }

    #[tokio::test]
    async fn nested_waits_count_once() {
        let ((), waited) = measured(outside(async {
            outside(tokio::time::sleep(WAIT)).await;
            outside(tokio::time::sleep(WAIT)).await;
            // Inside a wait already counted: counting it too would add 10 × WAIT.
            add(WAIT * 10);
        }))
        .await;
        assert!(waited >= WAIT * 2 && waited < WAIT * 10, "{waited:?}");
    }

    #[tokio::test]
    async fn a_wait_cut_short_counts_what_it_took_and_later_ones_still_count() {
        let ((), waited) = measured(async {
            let cut = tokio::time::timeout(WAIT, outside(tokio::time::sleep(WAIT * 100))).await;
            assert!(cut.is_err());
            // Were the cut wait still open, these would count nothing.
            outside(tokio::time::sleep(WAIT)).await;
            add(WAIT);
        })
        .await;
        assert!(waited >= WAIT * 3 && waited < WAIT * 50, "{waited:?}");
    }

    #[tokio::test]
    async fn waits_outside_an_rpc_and_in_spawned_tasks_count_nowhere() {
        // No RPC in progress: nothing to count to, and nothing breaks.
        outside(tokio::time::sleep(WAIT)).await;
        add(WAIT);
        let ((), waited) = measured(async {
            tokio::spawn(outside(tokio::time::sleep(WAIT)))
                .await
                .unwrap();
        })
        .await;
        assert_eq!(waited, Duration::ZERO);
        // Awaiting the spawned task as a wait counts it.
        let ((), waited) = measured(outside(async {
            tokio::spawn(tokio::time::sleep(WAIT)).await.unwrap();
        }))
        .await;
        assert!(waited >= WAIT, "{waited:?}");
    }
}
