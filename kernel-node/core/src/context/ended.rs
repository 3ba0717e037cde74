//! Roots that ended, remembered for a while so they cannot be revived: a
//! provider that ignored its cancel and calls onward under a context whose
//! root was cancelled or ran out of time is refused with the status that
//! ended it, instead of getting a fresh stand-in parent with no deadline.
//!
//! Bounded: at most [`CAPACITY`] roots, each for at most [`RETENTION`]
//! (the oldest go first). Only roots whose paths were written out (so a
//! remote party could name them) and that were cancelled or had a
//! deadline are kept: about 100 bytes each.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use kernel_proto::v1::Failure;
use rustc_hash::FxHashMap as HashMap;

use crate::error::Error;

/// Roots remembered at most.
pub(crate) const CAPACITY: usize = 65_536;
/// How long a root is remembered.
pub(crate) const RETENTION: Duration = Duration::from_secs(120);

/// How a root ended.
#[derive(Debug, Clone)]
pub(crate) struct Ended {
    /// Why it was cancelled (operator, budget, caller gone), if it was.
    pub(crate) cancelled: Option<Failure>,
    /// Its deadline, if it had one.
    pub(crate) deadline: Option<Instant>,
}

impl Ended {
    /// Why nothing may start at `path` (for `service`) under this root now:
    /// the cancel that ended it, or its deadline once passed.
    pub(crate) fn refusal(&self, path: &str, service: &str) -> Option<Error> {
        if let Some(f) = &self.cancelled {
            return Some(Error::Remote(Failure {
                message: format!("context {path} ended: {}", f.message),
                ..f.clone()
            }));
        }
        self.deadline
            .filter(|d| *d <= Instant::now())
            .map(|_| Error::DeadlineExceeded {
                service: service.to_owned(),
                context: path.to_owned(),
            })
    }
}

/// The remembered roots.
#[derive(Debug, Default)]
pub(crate) struct Graveyard {
    order: VecDeque<(u64, Instant)>,
    ended: HashMap<u64, (Ended, Instant)>,
}

impl Graveyard {
    /// Remembers root `id`.
    pub(crate) fn record(&mut self, id: u64, end: Ended) {
        let now = Instant::now();
        while let Some(&(old, at)) = self.order.front() {
            if self.order.len() < CAPACITY && now.duration_since(at) < RETENTION {
                break;
            }
            self.order.pop_front();
            self.ended.remove(&old);
        }
        if self.ended.insert(id, (end, now)).is_none() {
            self.order.push_back((id, now));
        }
    }

    /// How root `id` ended, if it is remembered.
    pub(crate) fn get(&self, id: u64) -> Option<&Ended> {
        let (end, at) = self.ended.get(&id)?;
        (at.elapsed() < RETENTION).then_some(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_count() {
        let mut g = Graveyard::default();
        for id in 0..(CAPACITY as u64 + 10) {
            g.record(
                id,
                Ended {
                    cancelled: None,
                    deadline: None,
                },
            );
        }
        assert!(g.ended.len() <= CAPACITY);
        assert!(g.get(0).is_none(), "the oldest went first");
        assert!(g.get(CAPACITY as u64 + 9).is_some());
    }
}
