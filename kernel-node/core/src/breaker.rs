//! A circuit breaker per provider instance: consecutive failures open it
//! (calls skip the instance, or fail fast when every instance of a service
//! is open), and after a pause one probe call is let through: success
//! closes it, failure opens it again.
//!
//! It sits on the instance, below the middleware: provider selection
//! (`Pool::pick`) asks it, dispatch tells it each outcome. A closed breaker
//! costs a call two relaxed loads and no clock read.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The codes that count as the instance failing (not the caller's or the
/// business logic's errors).
pub(crate) fn is_instance_failure(code: i32) -> bool {
    use tonic::Code;
    [
        Code::Unavailable,
        Code::Internal,
        Code::Unknown,
        Code::DeadlineExceeded,
    ]
    .iter()
    .any(|c| *c as i32 == code)
}

/// One instance's breaker.
#[derive(Debug, Default)]
pub struct Breaker {
    /// Consecutive failures.
    failures: AtomicU32,
    /// While open: until when (nanoseconds on [`now_ns`]); 0 = closed.
    open_until: AtomicU64,
    /// When the current half-open probe went out (0 = none). A probe whose
    /// outcome never comes (its call was abandoned before dispatch) expires
    /// after one more pause, so the breaker cannot stay stuck.
    probe_at: AtomicU64,
    /// The pause it last opened for, in nanoseconds.
    pause: AtomicU64,
}

/// Nanoseconds since the first call in this process (a clock that starts
/// above 0, so 0 can mean "closed").
fn now_ns() -> u64 {
    static EPOCH: OnceLock<quanta::Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(quanta::Instant::now);
    quanta::Instant::now().duration_since(epoch).as_nanos() as u64 + 1
}

impl Breaker {
    /// Whether a call may go to the instance now, claiming the probe when
    /// the breaker is half-open: after the open pause, one caller gets
    /// `true` and the others `false` until the probe's outcome is known.
    #[inline]
    pub fn allows(&self) -> bool {
        self.open_until.load(Ordering::Relaxed) == 0 || self.claim_probe()
    }

    /// Whether a call could go now, claiming nothing (to compare
    /// instances before choosing one).
    #[inline]
    pub fn available(&self) -> bool {
        let until = self.open_until.load(Ordering::Relaxed);
        until == 0 || self.probe_free(until, now_ns()).is_some()
    }

    /// Claims the half-open probe, when its time has come and no live probe
    /// is out.
    #[cold]
    pub fn claim_probe(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = now_ns();
        match self.probe_free(until, now) {
            Some(seen) => self
                .probe_at
                .compare_exchange(seen, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok(),
            None => false,
        }
    }

    /// The probe slot's current value when a probe may go out now.
    fn probe_free(&self, until: u64, now: u64) -> Option<u64> {
        if now < until {
            return None;
        }
        let at = self.probe_at.load(Ordering::Acquire);
        // The pause the breaker opened for, again, is how long a probe may
        // stay out.
        let expired = at != 0 && now.saturating_sub(at) > self.pause.load(Ordering::Relaxed);
        (at == 0 || expired).then_some(at)
    }

    /// Whether it is open (calls skip the instance).
    pub fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Relaxed) != 0
    }

    /// Records a call's outcome: `failed` (see [`is_instance_failure`]);
    /// `threshold` consecutive failures open it for `pause`.
    #[inline]
    pub fn record(&self, failed: bool, threshold: u32, pause: Duration) {
        if !failed {
            if self.failures.load(Ordering::Relaxed) != 0 {
                self.failures.store(0, Ordering::Relaxed);
            }
            if self.open_until.load(Ordering::Relaxed) != 0 {
                self.open_until.store(0, Ordering::Release);
                self.probe_at.store(0, Ordering::Release);
            }
            return;
        }
        self.record_failure(threshold, pause);
    }

    #[cold]
    fn record_failure(&self, threshold: u32, pause: Duration) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let probe_failed = self.probe_at.load(Ordering::Acquire) != 0;
        if threshold > 0 && (n >= threshold || probe_failed) {
            self.pause.store(pause.as_nanos() as u64, Ordering::Relaxed);
            self.open_until
                .store(now_ns() + pause.as_nanos() as u64, Ordering::Release);
            self.probe_at.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_lets_one_probe_through_and_closes_on_its_success() {
        let b = Breaker::default();
        let pause = Duration::from_millis(30);
        for _ in 0..2 {
            b.record(true, 3, pause);
            assert!(b.allows());
        }
        b.record(false, 3, pause); // a success resets the count
        for _ in 0..3 {
            b.record(true, 3, pause);
        }
        assert!(b.is_open());
        assert!(!b.allows());
        std::thread::sleep(pause);
        assert!(b.allows(), "the probe");
        assert!(!b.allows(), "only one probe at a time");
        b.record(true, 3, pause); // the probe failed: open again
        assert!(!b.allows());
        std::thread::sleep(pause);
        assert!(b.allows());
        b.record(false, 3, pause); // the probe succeeded: closed
        assert!(!b.is_open());
        assert!(b.allows() && b.allows());
    }
}
