//! The subscription index: subscriptions by id and the trie of their
//! patterns, and the choice of an event's targets (every plain match once,
//! one member of each matched queue group).

use std::sync::Arc;

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::subscription::Subscription;
use super::trie::{Match, Queue, Trie};

/// The subscriptions one event goes to; inline for the common few.
pub(super) type Targets = SmallVec<[Arc<Subscription>; 4]>;

/// Subscriptions by id, and the trie of their patterns (queue-group
/// members under their group, so a match returns them together).
#[derive(Debug, Default)]
pub(super) struct Index {
    pub(super) trie: Trie<u64>,
    pub(super) subs: FxHashMap<u64, Arc<Subscription>>,
}

impl Index {
    /// The open members of `sub`'s queue group (itself included while it
    /// is indexed). Every member has the same patterns (they are part of
    /// the group's identity), so the first pattern finds them all.
    pub(super) fn members(&self, sub: &Subscription, group: &str) -> Vec<Arc<Subscription>> {
        let Some(p) = sub.opts.patterns.first() else {
            return Vec::new();
        };
        self.trie
            .queue(p, group)
            .map(|q| {
                q.members()
                    .iter()
                    .filter_map(|id| self.subs.get(id).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The subscriptions an event on `topic` goes to: every plain match
    /// once, and one member of each matched queue group.
    pub(super) fn targets(&self, topic: &str) -> Targets {
        let mut ids: SmallVec<[u64; 8]> = SmallVec::new();
        let mut queues: SmallVec<[&Queue<u64>; 4]> = SmallVec::new();
        self.trie.for_each_match(topic, |m| match m {
            Match::Plain(id) => ids.push(id),
            // A group matched under several of its patterns gets the event
            // once: its members are the same under each.
            Match::Queue(q) => {
                if !queues.iter().any(|seen| seen.name() == q.name()) {
                    queues.push(q);
                }
            }
        });
        if ids.len() > 1 {
            // A subscription matched by several of its patterns gets the
            // event once.
            ids.sort_unstable();
            ids.dedup();
        }
        let mut out = Targets::new();
        for id in ids {
            if let Some(sub) = self.subs.get(&id) {
                out.push(sub.clone());
            }
        }
        for q in queues {
            if let Some(m) = pick_member(self, q) {
                out.push(m);
            }
        }
        out
    }
}

/// A pattern gained its first subscriber or lost its last one: what a
/// cluster layer propagates to other nodes (as NATS routes do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterestChange {
    /// The pattern.
    pub pattern: String,
    /// True when interest began, false when it ended.
    pub present: bool,
}

fn pick_member(index: &Index, group: &Queue<u64>) -> Option<Arc<Subscription>> {
    let members = group.members();
    let n = members.len();
    if n == 0 {
        return None;
    }
    // Round robin, skipping members that are full when another has room.
    let start = group.next_start();
    let sub = |i: usize| index.subs.get(&members[(start + i) % n]);
    for i in 0..n {
        if let Some(m) = sub(i) {
            if matches!(m.has_space(), Ok(true)) {
                return Some(m.clone());
            }
        }
    }
    sub(0).cloned()
}
