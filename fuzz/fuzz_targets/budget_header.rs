//! The `x-kernel-budget` header: any value yields at most the entry limit,
//! each with a name that renders back into a header; applying it to a tree
//! never raises a limit; and what the tree then sends fits the bounds and
//! parses back in full. The input repeated past the entry and byte limits
//! yields nothing.

#![no_main]

use kernel_core::fuzzing::{
    check_budget_header, parse_budget_header, Budget, MAX_BUDGET_HEADER_BYTES,
    MAX_BUDGET_HEADER_ENTRIES, MAX_COUNTER_NAME_BYTES,
};
use kernel_core::BudgetConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let header = String::from_utf8_lossy(data);
    let entries: Vec<(&str, u64)> = parse_budget_header(&header).collect();
    assert!(entries.len() <= MAX_BUDGET_HEADER_ENTRIES);
    for (name, _) in &entries {
        assert!(!name.is_empty() && name.len() <= MAX_COUNTER_NAME_BYTES);
        assert!(name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b',' && b != b'='));
    }
    if let Err(e) = check_budget_header(&header) {
        let e = e.to_string();
        assert!(e.starts_with("invalid budget header "), "{e}");
        assert!(!e.chars().any(char::is_control), "{e}");
        assert!(entries.is_empty());
    }

    let mut config = BudgetConfig {
        calls: 10,
        depth: 4,
        events: 10,
        ..BudgetConfig::default()
    };
    config.custom.insert("sql".into(), 5);
    let budget = Budget::new(&config, None);
    let before = budget.remaining_header(0);
    // Twice: the second pass finds the counters the first one made.
    budget.lower_from_header(&header);
    budget.lower_from_header(&header);
    let after = budget.remaining_header(0);
    assert!(check_budget_header(&after).is_ok(), "{after}");
    let sent: Vec<(&str, u64)> = parse_budget_header(&after).collect();
    assert_eq!(sent.len(), after.split(',').count(), "{after}");
    for (name, was) in parse_budget_header(&before) {
        let now = sent.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        assert!(
            now.is_some_and(|v| v <= was),
            "{name} rose: {before} -> {after}"
        );
    }

    if !header.is_empty() {
        let entries = vec![&*header; MAX_BUDGET_HEADER_ENTRIES + 1].join(",");
        assert_eq!(parse_budget_header(&entries).count(), 0);
        let bytes = vec![&*header; MAX_BUDGET_HEADER_BYTES / header.len() + 1].concat();
        assert_eq!(parse_budget_header(&bytes).count(), 0);
    }
});
