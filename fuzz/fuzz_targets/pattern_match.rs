//! Patterns against topics: the input is lines, every line but the last a
//! pattern, the last a topic. Each pattern the broker would accept goes into
//! a `Trie`; the trie's matches must be exactly the patterns that the
//! reference matcher (`naive_match`) says match. Unchecked topics must not
//! make matching panic, and removing every entry empties the trie.

#![no_main]

use kernel_core::fuzzing::naive_match;
use kernel_core::{validate_pattern, validate_topic, Trie, MAX_NAME_BYTES, MAX_TOKENS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines: Vec<&str> = text.split('\n').collect();
    let topic = lines.pop().unwrap_or_default();
    let patterns: Vec<&str> = lines
        .into_iter()
        .take(64)
        .filter(|p| validate_pattern(p, MAX_NAME_BYTES, MAX_TOKENS).is_ok())
        .collect();

    let mut trie = Trie::new();
    for (i, p) in patterns.iter().enumerate() {
        trie.insert(p, i);
    }
    let got = trie.matches(topic);
    if validate_topic(topic, MAX_NAME_BYTES, MAX_TOKENS).is_ok() {
        let want: Vec<usize> = (0..patterns.len())
            .filter(|&i| naive_match(patterns[i], topic))
            .collect();
        assert_eq!(got, want, "patterns {patterns:?}, topic {topic:?}");
    }
    for (i, p) in patterns.iter().enumerate() {
        trie.remove(p, i);
    }
    assert!(trie.is_empty());
});
