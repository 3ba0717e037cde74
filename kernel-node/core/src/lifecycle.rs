//! One lifecycle for every long-lived task of a node: calls, streams,
//! provider sessions, subscriptions, and the background loops still to come
//! (outbox relay, cluster links).
//!
//! Shutdown runs in three steps, each a signal the tasks watch:
//! 1. [`Lifecycle::draining`]: shutdown began. Work already accepted goes
//!    on; streams refuse new calls with `UNAVAILABLE`, and a stream with
//!    nothing left in flight ends.
//! 2. [`Lifecycle::closing`]: every call and call stream is done. Provider
//!    sessions and subscriptions, which had to stay up for those calls and
//!    their events, now end.
//! 3. [`Lifecycle::stopped`]: the grace period is over. Whatever is left
//!    ends now, and every call still pending is answered `UNAVAILABLE`.
//!
//! The node knows each step is done because the tasks are tracked
//! ([`TaskTracker`]): the wait ends when the last tracked task of a step
//! returns, not when a gauge reads zero.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

/// Which shutdown step a task belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Calls and the streams that carry them (CallStream, PublishStream):
    /// done in step 2.
    Calls,
    /// Provider sessions and subscriptions: they serve the calls and events
    /// of step 1, and end in step 2.
    Sessions,
}

/// Shutdown signals and the task trackers behind them. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Lifecycle {
    draining: CancellationToken,
    closing: CancellationToken,
    stopped: CancellationToken,
    calls: TaskTracker,
    sessions: TaskTracker,
}

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Every tracked task ended before the grace period was over.
    pub in_time: bool,
    /// How long it took from the start of the drain.
    pub took: Duration,
}

impl Lifecycle {
    /// A lifecycle that has not begun to shut down.
    pub fn new() -> Lifecycle {
        Lifecycle::default()
    }

    /// Runs `task` as tracked work of kind `work`.
    pub fn spawn<F>(&self, work: Work, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker(work).spawn(task)
    }

    /// Counts as one tracked task of kind `work` while held (a unary call's
    /// handler, which tonic runs, holds one).
    pub fn token(&self, work: Work) -> TaskTrackerToken {
        self.tracker(work).token()
    }

    fn tracker(&self, work: Work) -> &TaskTracker {
        match work {
            Work::Calls => &self.calls,
            Work::Sessions => &self.sessions,
        }
    }

    /// Whether shutdown began.
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Marks shutdown as begun (step 1) without waiting for anything:
    /// from now on streams refuse new calls. [`Lifecycle::shut_down`] does
    /// it too; the server calls it first so that nothing it announces
    /// afterwards (health `NOT_SERVING`) can be seen before the refusals.
    pub fn begin_drain(&self) {
        self.draining.cancel();
    }

    /// Resolves when shutdown begins.
    pub fn draining(&self) -> WaitForCancellationFuture<'_> {
        self.draining.cancelled()
    }

    /// Resolves when calls are done and sessions should end.
    pub fn closing(&self) -> WaitForCancellationFuture<'_> {
        self.closing.cancelled()
    }

    /// Whether the grace period is over.
    pub fn is_stopped(&self) -> bool {
        self.stopped.is_cancelled()
    }

    /// Resolves when the grace period is over.
    pub fn stopped(&self) -> WaitForCancellationFuture<'_> {
        self.stopped.cancelled()
    }

    /// Runs the three steps: drain, close once every call is done, stop
    /// when everything is done or `grace` has passed (then waits at most
    /// `linger` for the tasks to say so to their peers). Returns when every
    /// tracked task has ended, or after `linger` past the grace period.
    pub async fn shut_down(&self, grace: Duration, linger: Duration) -> Drained {
        let start = Instant::now();
        let until = start + grace;
        self.begin_drain();
        self.calls.close();
        self.sessions.close();
        let calls_done = tokio::time::timeout_at(until, self.calls.wait())
            .await
            .is_ok();
        self.closing.cancel();
        let all_done = calls_done
            && tokio::time::timeout_at(until, self.sessions.wait())
                .await
                .is_ok();
        self.stopped.cancel();
        if !all_done {
            let _ = tokio::time::timeout(linger, async {
                self.calls.wait().await;
                self.sessions.wait().await;
            })
            .await;
        }
        Drained {
            in_time: all_done,
            took: start.elapsed(),
        }
    }

    /// Tracked tasks still running, by kind.
    pub fn running(&self) -> (usize, usize) {
        (self.calls.len(), self.sessions.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sessions_close_only_after_calls_and_the_wait_ends_with_the_last_task() {
        let life = Lifecycle::new();
        let l = life.clone();
        // A call that needs 300 ms after the drain begins.
        life.spawn(Work::Calls, async move {
            l.draining().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        });
        let l = life.clone();
        let closed_at = std::sync::Arc::new(parking_lot::Mutex::new(None));
        let seen = closed_at.clone();
        // A session that ends when told to close.
        life.spawn(Work::Sessions, async move {
            l.closing().await;
            *seen.lock() = Some(Instant::now());
        });
        let start = Instant::now();
        let out = life
            .shut_down(Duration::from_secs(10), Duration::ZERO)
            .await;
        assert!(out.in_time);
        assert_eq!(out.took, Duration::from_millis(300));
        let closed = closed_at.lock().expect("session closed");
        assert_eq!(closed - start, Duration::from_millis(300));
        assert_eq!(life.running(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_grace_period_bounds_a_task_that_never_ends_on_its_own() {
        let life = Lifecycle::new();
        let l = life.clone();
        life.spawn(Work::Calls, async move { l.stopped().await });
        let out = life
            .shut_down(Duration::from_secs(2), Duration::from_secs(1))
            .await;
        assert!(!out.in_time);
        assert_eq!(out.took, Duration::from_secs(2));
        assert!(life.is_stopped());
    }
}
