//! Token trie for subscription patterns.
//!
//! Matching walks the topic's tokens once, following the literal child, the
//! `*` child and collecting `>` entries on the way, so its cost grows with
//! topic length and the number of matches, not with how many subscriptions
//! exist.
//!
//! As in nats-server's sublist, queue-group members live in the trie beside
//! plain subscribers, grouped by queue name where their pattern ends, and a
//! match reports each group with its members ([`Match::Queue`]); and every
//! change reports what it did to the interest in its pattern ([`Interest`]):
//! the first entry under a pattern and the last one leaving it are what a
//! cluster layer propagates to other nodes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;

/// A pattern trie mapping patterns to values of type `V` (subscription ids).
#[derive(Debug)]
pub struct Trie<V> {
    root: Level<V>,
    len: usize,
}

/// What an insert or a removal did to the interest in its pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// The first entry under the pattern: interest begins.
    First,
    /// Another entry under a pattern that already had some.
    Added,
    /// An entry left; others remain under the pattern.
    Removed,
    /// The last entry left: interest ends.
    Last,
    /// Nothing was removed (no such entry).
    Absent,
}

/// One match of a topic.
#[derive(Debug)]
pub enum Match<'a, V> {
    /// A plain subscriber: it gets the event.
    Plain(V),
    /// A queue group where one of its patterns ends: one member gets it.
    Queue(&'a Queue<V>),
}

/// The members of one queue group under one pattern.
#[derive(Debug)]
pub struct Queue<V> {
    name: Arc<str>,
    members: Vec<V>,
    /// Round-robin position for picking a member.
    next: AtomicUsize,
}

impl<V> Queue<V> {
    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its members under this pattern.
    pub fn members(&self) -> &[V] {
        &self.members
    }

    /// The round-robin start for the next pick.
    pub fn next_start(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

/// The entries whose pattern ends at one place: plain values and groups.
#[derive(Debug)]
struct Slot<V> {
    plain: Vec<V>,
    queues: Vec<Queue<V>>,
}

impl<V> Default for Slot<V> {
    fn default() -> Self {
        Slot {
            plain: Vec::new(),
            queues: Vec::new(),
        }
    }
}

impl<V: Copy + PartialEq> Slot<V> {
    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.queues.is_empty()
    }

    fn insert(&mut self, queue: Option<&str>, value: V) -> Interest {
        let first = self.is_empty();
        match queue {
            None => self.plain.push(value),
            Some(name) => match self.queues.iter_mut().find(|q| &*q.name == name) {
                Some(q) => q.members.push(value),
                None => self.queues.push(Queue {
                    name: name.into(),
                    members: vec![value],
                    next: AtomicUsize::new(0),
                }),
            },
        }
        if first {
            Interest::First
        } else {
            Interest::Added
        }
    }

    fn remove(&mut self, queue: Option<&str>, value: V) -> Interest {
        let removed = match queue {
            None => take(&mut self.plain, value),
            Some(name) => match self.queues.iter().position(|q| &*q.name == name) {
                Some(i) => {
                    let r = take(&mut self.queues[i].members, value);
                    if self.queues[i].members.is_empty() {
                        self.queues.swap_remove(i);
                    }
                    r
                }
                None => false,
            },
        };
        match (removed, self.is_empty()) {
            (false, _) => Interest::Absent,
            (true, true) => Interest::Last,
            (true, false) => Interest::Removed,
        }
    }

    /// Inlined into the walk: most slots it visits are empty, and a call
    /// per slot would cost more than the check.
    #[inline(always)]
    fn report<'a>(&'a self, f: &mut impl FnMut(Match<'a, V>)) {
        for v in &self.plain {
            f(Match::Plain(*v));
        }
        for q in &self.queues {
            f(Match::Queue(q));
        }
    }
}

#[derive(Debug)]
struct Level<V> {
    literal: HashMap<Box<str>, Level<V>>,
    star: Option<Box<Level<V>>>,
    /// Entries whose pattern ends here.
    here: Slot<V>,
    /// Entries whose pattern has `>` at this position.
    tail: Slot<V>,
}

impl<V> Default for Level<V> {
    fn default() -> Self {
        Level {
            literal: HashMap::default(),
            star: None,
            here: Slot::default(),
            tail: Slot::default(),
        }
    }
}

impl<V: Copy + PartialEq> Level<V> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.star.is_none()
            && self.here.is_empty()
            && self.tail.is_empty()
    }
}

impl<V> Default for Trie<V> {
    fn default() -> Self {
        Trie {
            root: Level::default(),
            len: 0,
        }
    }
}

impl<V: Copy + PartialEq> Trie<V> {
    /// An empty trie.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (pattern, value) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a plain value under a (validated) pattern.
    pub fn insert(&mut self, pattern: &str, value: V) -> Interest {
        self.insert_in(pattern, None, value)
    }

    /// Adds a member of queue group `queue` under a (validated) pattern.
    pub fn insert_queue(&mut self, pattern: &str, queue: &str, value: V) -> Interest {
        self.insert_in(pattern, Some(queue), value)
    }

    fn insert_in(&mut self, pattern: &str, queue: Option<&str>, value: V) -> Interest {
        let mut level = &mut self.root;
        self.len += 1;
        for token in pattern.split('.') {
            match token {
                ">" => return level.tail.insert(queue, value),
                "*" => level = level.star.get_or_insert_with(Default::default),
                lit => level = level.literal.entry(lit.into()).or_default(),
            }
        }
        level.here.insert(queue, value)
    }

    /// Removes one plain entry of `value` under `pattern`.
    pub fn remove(&mut self, pattern: &str, value: V) -> Interest {
        self.remove_in(pattern, None, value)
    }

    /// Removes `value` from queue group `queue` under `pattern`.
    pub fn remove_queue(&mut self, pattern: &str, queue: &str, value: V) -> Interest {
        self.remove_in(pattern, Some(queue), value)
    }

    fn remove_in(&mut self, pattern: &str, queue: Option<&str>, value: V) -> Interest {
        let tokens: Vec<&str> = pattern.split('.').collect();
        let out = remove_at(&mut self.root, &tokens, queue, value);
        if out != Interest::Absent {
            self.len -= 1;
        }
        out
    }

    /// The queue group `queue` where `pattern` ends, if it has members.
    pub fn queue(&self, pattern: &str, queue: &str) -> Option<&Queue<V>> {
        let mut level = &self.root;
        let mut slot = None;
        for token in pattern.split('.') {
            match token {
                ">" => {
                    slot = Some(&level.tail);
                    break;
                }
                "*" => level = level.star.as_deref()?,
                lit => level = level.literal.get(lit)?,
            }
        }
        slot.unwrap_or(&level.here)
            .queues
            .iter()
            .find(|q| &*q.name == queue)
    }

    /// Calls `f` for every match of `topic`: each plain value and each
    /// queue group whose pattern matches (a value or group under several
    /// matching patterns is reported once per pattern).
    pub fn for_each_match<'a>(&'a self, topic: &str, mut f: impl FnMut(Match<'a, V>)) {
        // Tokens on the stack for the common case: no allocation per match.
        const INLINE: usize = 16;
        let mut inline = [""; INLINE];
        let mut n = 0;
        for t in crate::names::tokens(topic) {
            if n == INLINE {
                let tokens: Vec<&str> = crate::names::tokens(topic).collect();
                walk(&self.root, &tokens, &mut f);
                return;
            }
            inline[n] = t;
            n += 1;
        }
        walk(&self.root, &inline[..n], &mut f);
    }

    /// Every value that matches, plain or queue member, each once, in no
    /// particular order.
    pub fn matches(&self, topic: &str) -> Vec<V>
    where
        V: Ord,
    {
        let mut out = Vec::new();
        self.for_each_match(topic, |m| match m {
            Match::Plain(v) => out.push(v),
            Match::Queue(q) => out.extend_from_slice(&q.members),
        });
        // Sort + dedup: linear-log in the matches, not quadratic.
        if out.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
        out
    }
}

fn walk<'a, V: Copy + PartialEq>(
    level: &'a Level<V>,
    tokens: &[&str],
    f: &mut impl FnMut(Match<'a, V>),
) {
    let Some((first, rest)) = tokens.split_first() else {
        level.here.report(f);
        return;
    };
    // `>` needs at least one token left, which `first` is.
    level.tail.report(f);
    if let Some(next) = level.literal.get(*first) {
        walk(next, rest, f);
    }
    if let Some(star) = &level.star {
        walk(star, rest, f);
    }
}

fn remove_at<V: Copy + PartialEq>(
    level: &mut Level<V>,
    tokens: &[&str],
    queue: Option<&str>,
    value: V,
) -> Interest {
    let Some((first, rest)) = tokens.split_first() else {
        return level.here.remove(queue, value);
    };
    match *first {
        ">" => level.tail.remove(queue, value),
        "*" => {
            let Some(star) = level.star.as_mut() else {
                return Interest::Absent;
            };
            let r = remove_at(star, rest, queue, value);
            if star.is_empty() {
                level.star = None;
            }
            r
        }
        lit => {
            let Some(next) = level.literal.get_mut(lit) else {
                return Interest::Absent;
            };
            let r = remove_at(next, rest, queue, value);
            if next.is_empty() {
                level.literal.remove(lit);
            }
            r
        }
    }
}

fn take<V: PartialEq>(v: &mut Vec<V>, value: V) -> bool {
    match v.iter().position(|x| *x == value) {
        Some(i) => {
            v.swap_remove(i);
            true
        }
        None => false,
    }
}

/// The reference semantics, token by token, that the property tests and
/// the `pattern_match` fuzz target hold the trie to. Not for the hot path:
/// it allocates per call.
#[doc(hidden)]
pub fn naive_match(pattern: &str, topic: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let t: Vec<&str> = topic.split('.').collect();
    for (i, pt) in p.iter().enumerate() {
        match *pt {
            ">" => return t.len() > i,
            "*" => {
                if i >= t.len() {
                    return false;
                }
            }
            lit => {
                if t.get(i) != Some(&lit) {
                    return false;
                }
            }
        }
    }
    p.len() == t.len()
}

#[cfg(test)]
mod tests;
