//! Node-wide event counters (Admin `Stats`, `/metrics`); call counters live
//! in [`crate::metrics`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters, relaxed atomics: cheap on the hot path.
#[derive(Debug, Default)]
pub struct Stats {
    /// Events accepted.
    pub events_published: AtomicU64,
    /// Deliveries sent.
    pub events_delivered: AtomicU64,
    /// Redeliveries.
    pub events_redelivered: AtomicU64,
    /// Dead-lettered events.
    pub events_dead_lettered: AtomicU64,
    /// Queued deliveries dropped because their context branch was cancelled.
    pub events_cancelled: AtomicU64,
}

impl Stats {
    /// Adds one to a counter.
    #[inline]
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
