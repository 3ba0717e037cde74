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
