//! Budget arithmetic: limits, the `x-kernel-budget` header, and what a tree
//! has spent.

use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::config::BudgetConfig;

/// The `calls` budget.
pub(crate) const CALLS: &str = "calls";
/// The `depth` budget.
pub(crate) const DEPTH: &str = "depth";
/// The `events` budget.
pub(crate) const EVENTS: &str = "events";

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
    /// Malformed entries are ignored too (the header is advisory input).
    pub fn lower_from_header(&self, header: &str) {
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
                    let c = custom.entry(other.to_owned()).or_insert(Counter {
                        limit: u64::MAX,
                        used: 0,
                    });
                    c.limit = c.limit.min(c.used.saturating_add(value));
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

/// Parses `calls=10,depth=3,sql=50`; entries that are not `name=u64` are skipped.
pub(crate) fn parse_header(header: &str) -> impl Iterator<Item = (&str, u64)> {
    header.split(',').filter_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        let k = k.trim();
        if k.is_empty() {
            return None;
        }
        Some((k, v.trim().parse().ok()?))
    })
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
}
