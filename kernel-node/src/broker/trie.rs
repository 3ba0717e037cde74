//! Token trie for subscription patterns.
//!
//! Matching walks the topic's tokens once, following the literal child, the
//! `*` child and collecting `>` entries on the way, so its cost grows with
//! topic length and the number of matches, not with how many subscriptions
//! exist.

use rustc_hash::FxHashMap as HashMap;

/// A pattern trie mapping patterns to values of type `V` (subscription ids).
#[derive(Debug)]
pub struct Trie<V> {
    root: Level<V>,
    len: usize,
}

#[derive(Debug)]
struct Level<V> {
    literal: HashMap<Box<str>, Level<V>>,
    star: Option<Box<Level<V>>>,
    /// Values whose pattern ends here.
    here: Vec<V>,
    /// Values whose pattern has `>` at this position.
    tail: Vec<V>,
}

impl<V> Default for Level<V> {
    fn default() -> Self {
        Level {
            literal: HashMap::default(),
            star: None,
            here: Vec::new(),
            tail: Vec::new(),
        }
    }
}

impl<V> Level<V> {
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

    /// Adds a value under a (validated) pattern.
    pub fn insert(&mut self, pattern: &str, value: V) {
        let mut level = &mut self.root;
        for token in pattern.split('.') {
            match token {
                ">" => {
                    level.tail.push(value);
                    self.len += 1;
                    return;
                }
                "*" => level = level.star.get_or_insert_with(Default::default),
                lit => level = level.literal.entry(lit.into()).or_default(),
            }
        }
        level.here.push(value);
        self.len += 1;
    }

    /// Removes one entry of `value` under `pattern`; true if it was there.
    pub fn remove(&mut self, pattern: &str, value: V) -> bool {
        let tokens: Vec<&str> = pattern.split('.').collect();
        let removed = remove_at(&mut self.root, &tokens, value);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Calls `f` for every value whose pattern matches `topic` (a value
    /// inserted under several matching patterns is reported once per pattern).
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(V)) {
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

    /// The matching values, each once, in no particular order.
    pub fn matches(&self, topic: &str) -> Vec<V>
    where
        V: Ord,
    {
        let mut out = Vec::new();
        self.for_each_match(topic, |v| out.push(v));
        // Sort + dedup: linear-log in the matches, not quadratic.
        if out.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
        out
    }
}

fn walk<V: Copy>(level: &Level<V>, tokens: &[&str], f: &mut impl FnMut(V)) {
    let Some((first, rest)) = tokens.split_first() else {
        level.here.iter().for_each(|v| f(*v));
        return;
    };
    // `>` needs at least one token left, which `first` is.
    level.tail.iter().for_each(|v| f(*v));
    if let Some(next) = level.literal.get(*first) {
        walk(next, rest, f);
    }
    if let Some(star) = &level.star {
        walk(star, rest, f);
    }
}

fn remove_at<V: PartialEq>(level: &mut Level<V>, tokens: &[&str], value: V) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        return take(&mut level.here, value);
    };
    match *first {
        ">" => take(&mut level.tail, value),
        "*" => {
            let Some(star) = level.star.as_mut() else {
                return false;
            };
            let r = remove_at(star, rest, value);
            if star.is_empty() {
                level.star = None;
            }
            r
        }
        lit => {
            let Some(next) = level.literal.get_mut(lit) else {
                return false;
            };
            let r = remove_at(next, rest, value);
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

/// The reference semantics, token by token, used by the property tests.
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
        assert!(t.remove("a.*.c", 1));
        assert!(!t.remove("a.*.c", 1));
        assert!(t.remove("a.>", 2));
        assert!(t.root.is_empty());
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

    proptest! {
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
