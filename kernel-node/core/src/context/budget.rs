//! Budget arithmetic: limits, the `x-kernel-budget` header, and what a tree
//! has spent.

use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::config::BudgetConfig;
use crate::error::Error;
use crate::names::excerpt;

/// The `calls` budget.
pub(crate) const CALLS: &str = "calls";
/// The `depth` budget.
pub(crate) const DEPTH: &str = "depth";
/// The `events` budget.
pub(crate) const EVENTS: &str = "events";

/// Longest `x-kernel-budget` value the kernel reads, in bytes. A longer one
/// is ignored whole: a header can only lower limits, so ignoring one never
/// lets a tree spend past the node's own limits.
pub const MAX_HEADER_BYTES: usize = 4096;
/// Most entries in one header; a header with more is ignored whole.
pub const MAX_HEADER_ENTRIES: usize = 32;
/// Headers add no new custom counters to a tree that has this many, so that
/// what the tree sends ([`Budget::remaining_header`]: `calls`, `depth`,
/// `events` and the counters) fits the bounds it reads.
const MAX_CUSTOM_FROM_HEADERS: usize = MAX_HEADER_ENTRIES - 3;
/// Longest counter name in a header entry (a longer entry is skipped).
pub const MAX_COUNTER_NAME_BYTES: usize = 64;

/// Limits and spending of one context tree. Limits only go down.
#[derive(Debug)]
pub struct Budget {
    calls_limit: AtomicU64,
    depth_limit: AtomicU64,
    events_limit: AtomicU64,
    calls_used: AtomicU64,
    events_used: AtomicU64,
    custom: Mutex<HashMap<String, Counter>>,
}

#[derive(Debug, Clone, Copy)]
struct Counter {
    limit: u64,
    used: u64,
}

/// A budget that was exceeded: which one and its limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    /// `calls`, `depth`, `events` or a custom counter name.
    pub budget: String,
    /// The limit in force.
    pub limit: u64,
}

impl Budget {
    /// A tree's budget from the node defaults and the starting plugin's overrides.
    pub fn new(config: &BudgetConfig, plugin: Option<&str>) -> Budget {
        let over = match plugin {
            Some(p) if !config.plugins.is_empty() => config.plugins.get(p),
            _ => None,
        };
        let mut custom: HashMap<String, Counter> = HashMap::default();
        if !config.custom.is_empty() {
            custom.extend(
                config
                    .custom
                    .iter()
                    .map(|(k, v)| (k.clone(), Counter { limit: *v, used: 0 })),
            );
        }
        if let Some(o) = over {
            for (k, v) in &o.custom {
                custom.insert(k.clone(), Counter { limit: *v, used: 0 });
            }
        }
        Budget {
            calls_limit: AtomicU64::new(over.and_then(|o| o.calls).unwrap_or(config.calls)),
            depth_limit: AtomicU64::new(over.and_then(|o| o.depth).unwrap_or(config.depth)),
            events_limit: AtomicU64::new(over.and_then(|o| o.events).unwrap_or(config.events)),
            calls_used: AtomicU64::new(0),
            events_used: AtomicU64::new(0),
            custom: Mutex::new(custom),
        }
    }

    /// Applies a caller's `x-kernel-budget` header: values below the current
    /// remaining amount lower the limit; higher values are ignored.
    /// Malformed entries are ignored too (the header is advisory input), and
    /// so is a whole header past the bounds [`check_header`] names.
    pub fn lower_from_header(&self, header: &str) {
        if let Err(e) = check_header(header) {
            tracing::debug!(cause = %e, "x-kernel-budget ignored");
            return;
        }
        for (name, value) in parse_header(header) {
            match name {
                CALLS => lower(&self.calls_limit, &self.calls_used, value),
                EVENTS => lower(&self.events_limit, &self.events_used, value),
                // Depth in the header is what remains below the caller; the
                // kernel checks absolute depth, so it is applied by the caller
                // of this function with the node's depth.
                DEPTH => {}
                other => {
                    let mut custom = self.custom.lock();
                    if let Some(c) = custom.get_mut(other) {
                        c.limit = c.limit.min(c.used.saturating_add(value));
                    } else if custom.len() < MAX_CUSTOM_FROM_HEADERS {
                        // Bounded: each call may bring new names, and every
                        // named counter travels in every header sent below.
                        let c = Counter {
                            limit: value,
                            used: 0,
                        };
                        custom.insert(other.to_owned(), c);
                    }
                }
            }
        }
    }

    /// Lowers the depth limit so that at most `remaining` more levels fit
    /// below depth `at`.
    pub fn lower_depth(&self, at: u64, remaining: u64) {
        self.depth_limit
            .fetch_min(at.saturating_add(remaining), Ordering::Relaxed);
    }

    /// Counts one call at `depth`.
    pub fn charge_call(&self, depth: u64) -> Result<(), Exhausted> {
        let depth_limit = self.depth_limit.load(Ordering::Relaxed);
        if depth > depth_limit {
            return Err(Exhausted {
                budget: DEPTH.into(),
                limit: depth_limit,
            });
        }
        charge(&self.calls_limit, &self.calls_used, 1, CALLS)
    }

    /// Counts one emitted event.
    pub fn charge_event(&self) -> Result<(), Exhausted> {
        charge(&self.events_limit, &self.events_used, 1, EVENTS)
    }

    /// Charges a custom counter; unknown counters are unlimited. Returns what
    /// remains.
    pub fn charge_custom(&self, name: &str, amount: u64) -> Result<u64, Exhausted> {
        let mut custom = self.custom.lock();
        let Some(c) = custom.get_mut(name) else {
            return Ok(u64::MAX);
        };
        let next = c.used.saturating_add(amount);
        if next > c.limit {
            return Err(Exhausted {
                budget: name.to_owned(),
                limit: c.limit,
            });
        }
        c.used = next;
        Ok(c.limit - next)
    }

    /// The `x-kernel-budget` value handed to a call at `depth`: what remains.
    pub fn remaining_header(&self, depth: u64) -> String {
        let rem = |l: &AtomicU64, u: &AtomicU64| {
            l.load(Ordering::Relaxed)
                .saturating_sub(u.load(Ordering::Relaxed))
        };
        let mut out = format!(
            "calls={},depth={},events={}",
            rem(&self.calls_limit, &self.calls_used),
            self.depth_limit
                .load(Ordering::Relaxed)
                .saturating_sub(depth),
            rem(&self.events_limit, &self.events_used),
        );
        let custom = self.custom.lock();
        let mut names: Vec<_> = custom.iter().filter(|(_, c)| c.limit != u64::MAX).collect();
        names.sort_by(|a, b| a.0.cmp(b.0));
        for (name, c) in names {
            out.push_str(&format!(",{}={}", name, c.limit.saturating_sub(c.used)));
        }
        out
    }
}

fn lower(limit: &AtomicU64, used: &AtomicU64, remaining: u64) {
    let cap = used.load(Ordering::Relaxed).saturating_add(remaining);
    limit.fetch_min(cap, Ordering::Relaxed);
}

fn charge(limit: &AtomicU64, used: &AtomicU64, n: u64, name: &str) -> Result<(), Exhausted> {
    let l = limit.load(Ordering::Relaxed);
    let prev = used.fetch_add(n, Ordering::Relaxed);
    if prev + n > l {
        used.fetch_sub(n, Ordering::Relaxed);
        return Err(Exhausted {
            budget: name.into(),
            limit: l,
        });
    }
    Ok(())
}

/// Parses `calls=10,depth=3,sql=50`; entries that are not `name=u64` are
/// skipped, and so is a name that is not 1 to [`MAX_COUNTER_NAME_BYTES`]
/// bytes of visible ASCII. A header past the bounds of [`check_header`]
/// yields nothing.
pub fn parse_header(header: &str) -> impl Iterator<Item = (&str, u64)> {
    let header = if check_header(header).is_ok() {
        header
    } else {
        ""
    };
    header.split(',').filter_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        let k = k.trim();
        // Visible ASCII, so that the name renders back into a header value.
        let name_ok = !k.is_empty()
            && k.len() <= MAX_COUNTER_NAME_BYTES
            && k.bytes().all(|b| b.is_ascii_graphic());
        if !name_ok {
            return None;
        }
        Some((k, v.trim().parse().ok()?))
    })
}

/// Checks the bounds of a whole `x-kernel-budget` value: at most
/// [`MAX_HEADER_BYTES`] bytes and [`MAX_HEADER_ENTRIES`] entries.
pub fn check_header(header: &str) -> Result<(), Error> {
    let bad = |reason: String| {
        Err(Error::InvalidName {
            what: "budget header",
            name: excerpt(header, 64),
            reason,
        })
    };
    if header.len() > MAX_HEADER_BYTES {
        return bad(format!(
            "{} bytes, longer than {MAX_HEADER_BYTES}",
            header.len()
        ));
    }
    let entries = header.bytes().filter(|&b| b == b',').count() + 1;
    if entries > MAX_HEADER_ENTRIES {
        return bad(format!("{entries} entries, more than {MAX_HEADER_ENTRIES}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BudgetConfig {
        let mut c = BudgetConfig {
            calls: 3,
            depth: 2,
            events: 1,
            ..BudgetConfig::default()
        };
        c.custom.insert("sql".into(), 2);
        c
    }

    #[test]
    fn calls_and_depth() {
        let b = Budget::new(&cfg(), None);
        assert!(b.charge_call(1).is_ok());
        assert_eq!(b.charge_call(3).expect_err("too deep").budget, "depth");
        assert!(b.charge_call(2).is_ok());
        assert!(b.charge_call(2).is_ok());
        assert_eq!(b.charge_call(1).expect_err("no calls left").budget, "calls");
    }

    #[test]
    fn header_lowers_never_raises() {
        let b = Budget::new(&cfg(), None);
        b.lower_from_header("calls=100,events=0,sql=1,bogus,=3");
        assert_eq!(b.remaining_header(0), "calls=3,depth=2,events=0,sql=1");
        assert!(b.charge_event().is_err());
        assert_eq!(b.charge_custom("sql", 1), Ok(0));
        assert!(b.charge_custom("sql", 1).is_err());
        assert_eq!(b.charge_custom("unknown", 5), Ok(u64::MAX));
    }

    #[test]
    fn headers_past_the_bounds_are_ignored_whole_and_say_why() {
        let b = Budget::new(&cfg(), None);
        let many = format!("calls=1{}", ",x=1".repeat(MAX_HEADER_ENTRIES));
        let long = format!("calls=1,x={}", "0".repeat(MAX_HEADER_BYTES));
        for (header, needle) in [
            (&many, "33 entries, more than 32"),
            (&long, "4106 bytes, longer than 4096"),
        ] {
            let e = check_header(header).expect_err(needle).to_string();
            assert!(e.starts_with("invalid budget header"), "{e}");
            assert!(e.contains(needle), "{e}");
            assert_eq!(parse_header(header).count(), 0);
            b.lower_from_header(header);
        }
        assert_eq!(b.remaining_header(0), "calls=3,depth=2,events=1,sql=2");
    }

    #[test]
    fn names_that_would_not_render_back_are_skipped() {
        let long = "n".repeat(MAX_COUNTER_NAME_BYTES + 1);
        let header = format!("a b=1, c\td=2,{long}=3,d\u{e9}=4,ok=5");
        let got: Vec<_> = parse_header(&header).collect();
        assert_eq!(got, vec![("ok", 5)]);
    }

    #[test]
    fn headers_add_a_bounded_number_of_custom_counters() {
        let b = Budget::new(&cfg(), None);
        for batch in 0..4 {
            // The longest names and values: what the tree sends must still fit.
            let header: Vec<String> = (0..20)
                .map(|i| format!("{:x<64}={}", format!("c{batch}_{i}"), u64::MAX - 1))
                .collect();
            b.lower_from_header(&header.join(","));
        }
        assert_eq!(b.custom.lock().len(), MAX_CUSTOM_FROM_HEADERS);
        let sent = b.remaining_header(0);
        assert!(check_header(&sent).is_ok(), "{sent}");
        assert_eq!(parse_header(&sent).count(), MAX_HEADER_ENTRIES);
        // The counters a tree already has can still be lowered.
        b.lower_from_header("sql=0");
        assert!(b.charge_custom("sql", 1).is_err());
    }

    fn counter_name() -> impl proptest::strategy::Strategy<Value = String> {
        "[a-z_][a-z0-9_.:-]{0,20}"
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_headers_never_panic_and_never_raise(header in "\\PC{0,200}", raw in "[a-z0-9=, ]{0,80}") {
            for h in [&header, &raw] {
                let b = Budget::new(&cfg(), None);
                let before: Vec<(String, u64)> = parse_header(&b.remaining_header(0))
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect();
                b.lower_from_header(h);
                let after = b.remaining_header(0);
                for (name, was) in before {
                    let now = parse_header(&after).find(|(k, _)| *k == name).map(|(_, v)| v);
                    proptest::prop_assert!(now.is_some_and(|v| v <= was), "{} rose: {}", name, after);
                }
                proptest::prop_assert!(parse_header(h).count() <= MAX_HEADER_ENTRIES);
            }
        }

        #[test]
        fn the_rendered_header_parses_back(
            calls in 0u64..1_000_000,
            depth in 0u64..100,
            events in proptest::prelude::any::<u64>(),
            custom in proptest::collection::btree_map(counter_name(), proptest::prelude::any::<u64>(), 0..(MAX_HEADER_ENTRIES - 3)),
        ) {
            let mut c = BudgetConfig { calls, depth, events, ..BudgetConfig::default() };
            // `u64::MAX` means no limit: such a counter is not sent.
            let limited: Vec<(String, u64)> = custom
                .into_iter()
                .filter(|(k, v)| *v != u64::MAX && ![CALLS, DEPTH, EVENTS].contains(&k.as_str()))
                .collect();
            c.custom.extend(limited.iter().cloned());
            let b = Budget::new(&c, None);
            let header = b.remaining_header(0);
            proptest::prop_assert!(check_header(&header).is_ok(), "{}", header);
            let got: Vec<(String, u64)> = parse_header(&header).map(|(k, v)| (k.to_owned(), v)).collect();
            let mut want = vec![(CALLS.to_owned(), calls), (DEPTH.to_owned(), depth), (EVENTS.to_owned(), events)];
            want.extend(limited);
            proptest::prop_assert_eq!(got, want);
            // Forwarding what was received lowers nothing.
            b.lower_from_header(&header);
            proptest::prop_assert_eq!(b.remaining_header(0), header);
        }
    }
}
