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
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn semantics_table() {
        let cases = [
            ("order.*", "order.created", true),
            ("order.*", "order.a.b", false),
            ("order.*", "order", false),
            ("order.>", "order", false),
            ("order.>", "order.a.b", true),
            ("*.created", "order.created", true),
            ("*.created", "order.deleted", false),
            ("order.created", "order.created", true),
            (">", "a", true),
        ];
        for (p, t, want) in cases {
            let mut trie = Trie::new();
            trie.insert(p, 1u64);
            assert_eq!(!trie.matches(t).is_empty(), want, "{p} vs {t}");
            assert_eq!(naive_match(p, t), want, "naive {p} vs {t}");
        }
    }

    #[test]
    fn remove_cleans_up() {
        let mut t = Trie::new();
        t.insert("a.*.c", 1u64);
        t.insert("a.>", 2);
        assert_eq!(t.len(), 2);
        assert_eq!(t.remove("a.*.c", 1), Interest::Last);
        assert_eq!(t.remove("a.*.c", 1), Interest::Absent);
        assert_eq!(t.remove("a.>", 2), Interest::Last);
        assert!(t.root.is_empty());
    }

    #[test]
    fn interest_begins_with_the_first_entry_and_ends_with_the_last() {
        let mut t = Trie::new();
        assert_eq!(t.insert("order.*", 1u64), Interest::First);
        assert_eq!(t.insert("order.*", 2), Interest::Added);
        assert_eq!(t.insert_queue("order.*", "workers", 3), Interest::Added);
        // Another pattern sharing the level has interest of its own.
        assert_eq!(t.insert("order.>", 4), Interest::First);
        assert_eq!(t.remove("order.*", 1), Interest::Removed);
        assert_eq!(t.remove("order.*", 2), Interest::Removed);
        assert_eq!(t.remove_queue("order.*", "workers", 3), Interest::Last);
        assert_eq!(t.remove_queue("order.*", "workers", 3), Interest::Absent);
        assert_eq!(t.remove("order.>", 4), Interest::Last);
        assert!(t.root.is_empty());
    }

    #[test]
    fn queue_groups_come_back_in_the_match_with_their_members() {
        let mut t = Trie::new();
        t.insert("order.*", 1u64);
        t.insert_queue("order.*", "workers", 2);
        t.insert_queue("order.*", "workers", 3);
        t.insert_queue("order.>", "audit", 4);
        t.insert_queue("other.*", "workers", 5);
        let mut plain = Vec::new();
        let mut groups = Vec::new();
        t.for_each_match("order.created", |m| match m {
            Match::Plain(v) => plain.push(v),
            Match::Queue(q) => {
                let mut members = q.members().to_vec();
                members.sort();
                groups.push((q.name().to_owned(), members));
            }
        });
        groups.sort();
        assert_eq!(plain, vec![1]);
        assert_eq!(
            groups,
            vec![("audit".into(), vec![4]), ("workers".into(), vec![2, 3])]
        );
        assert_eq!(
            t.queue("order.*", "workers").map(|q| q.members().len()),
            Some(2)
        );
        assert!(t.queue("order.*", "audit").is_none());
        assert_eq!(t.matches("order.created"), vec![1, 2, 3, 4]);
    }

    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("c".to_string())
        ]
    }

    fn pattern() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(prop_oneof![token(), Just("*".to_string())], 0..4),
            any::<bool>(),
        )
            .prop_filter_map("non-empty", |(mut toks, gt)| {
                if gt {
                    toks.push(">".into());
                }
                (!toks.is_empty()).then(|| toks.join("."))
            })
    }

    /// Tokens as the name grammar allows them: a few shared ones so that
    /// patterns and topics meet, and odd ones (UTF-8, punctuation).
    fn any_token() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => token(),
            1 => "[a-z0-9_$/:-]{1,4}",
            1 => "[\\p{L}\\p{N}]{1,3}",
        ]
    }

    /// A pattern the broker would accept, of up to `max` tokens.
    fn valid_pattern(max: usize) -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(
                prop_oneof![3 => any_token(), 1 => Just("*".to_string())],
                0..max,
            ),
            any::<bool>(),
        )
            .prop_filter_map("non-empty", |(mut toks, gt)| {
                if gt {
                    toks.push(">".into());
                }
                (!toks.is_empty()).then(|| toks.join("."))
            })
    }

    proptest! {
        #[test]
        fn validated_patterns_match_as_naive_says(
            patterns in proptest::collection::vec(valid_pattern(6), 1..12),
            topic in proptest::collection::vec(any_token(), 1..7).prop_map(|t| t.join(".")),
        ) {
            let mut trie = Trie::new();
            for (i, p) in patterns.iter().enumerate() {
                prop_assert!(crate::names::validate_pattern(p, 256, 16).is_ok(), "{}", p);
                trie.insert(p, i);
            }
            prop_assert!(crate::names::validate_topic(&topic, 256, 16).is_ok(), "{}", topic);
            let want: Vec<usize> = (0..patterns.len()).filter(|&i| naive_match(&patterns[i], &topic)).collect();
            prop_assert_eq!(trie.matches(&topic), want);
        }

        /// Past 16 tokens the walk collects the topic's tokens in a `Vec`
        /// instead of on the stack.
        #[test]
        fn long_topics_match_as_naive_says(
            patterns in proptest::collection::vec(valid_pattern(24), 1..12),
            topic in proptest::collection::vec(token(), 14..24).prop_map(|t| t.join(".")),
        ) {
            let mut trie = Trie::new();
            for (i, p) in patterns.iter().enumerate() {
                trie.insert(p, i);
            }
            let want: Vec<usize> = (0..patterns.len()).filter(|&i| naive_match(&patterns[i], &topic)).collect();
            prop_assert_eq!(trie.matches(&topic), want);
        }

        /// Matching an unchecked topic (empty tokens, wildcards, control
        /// characters) must not panic, whatever it finds.
        #[test]
        fn arbitrary_topics_never_panic(
            patterns in proptest::collection::vec(valid_pattern(4), 0..8),
            topic in "[a.*> \\x00\u{e9}]{0,40}",
        ) {
            let mut trie = Trie::new();
            for (i, p) in patterns.iter().enumerate() {
                trie.insert(p, i);
            }
            let _ = trie.matches(&topic);
            for p in &patterns {
                let _ = naive_match(p, &topic);
                let _ = naive_match(&topic, p);
            }
            for p in &patterns {
                trie.remove(p, 0);
            }
        }

        #[test]
        fn trie_agrees_with_naive(
            patterns in proptest::collection::vec(pattern(), 1..20),
            topic in proptest::collection::vec(token(), 1..5).prop_map(|t| t.join(".")),
        ) {
            let mut trie = Trie::new();
            for (i, p) in patterns.iter().enumerate() {
                trie.insert(p, i);
            }
            let mut got = trie.matches(&topic);
            got.sort();
            let want: Vec<usize> = patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| naive_match(p, &topic))
                .map(|(i, _)| i)
                .collect();
            prop_assert_eq!(got, want);
        }
    }
}
