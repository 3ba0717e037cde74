//! Prometheus metrics: counters and histograms kept in atomics on the hot
//! path, rendered in the text exposition format on scrape.
//!
//! Per-service series exist only for registered names; calls to unknown or
//! malformed names are counted under `service="_unknown"`, so a client
//! cannot grow the series set without bound.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rustc_hash::FxHashMap;

use crate::kernel::Kernel;
use crate::stats::Stats;

/// Histogram bucket bounds, seconds.
const BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// gRPC status code names, by number.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The series of one service; a call holds it from start to end.
#[derive(Debug, Default)]
pub struct Series {
    codes: [AtomicU64; 17],
    buckets: [AtomicU64; BUCKETS.len()],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

/// Call metrics of a node.
#[derive(Debug, Default)]
pub struct Metrics {
    services: RwLock<FxHashMap<String, Arc<Series>>>,
    in_flight: AtomicI64,
    calls: AtomicU64,
    errors: AtomicU64,
}

/// Label for calls whose service is not registered.
pub const UNKNOWN_SERVICE: &str = "_unknown";

impl Metrics {
    /// A call started.
    #[inline]
    pub fn enter(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// The series a call to `service` is counted in; `known` (asked only
    /// for a name without a series yet) says whether the service is
    /// registered, else the call counts as `_unknown`.
    pub fn series(&self, service: &str, known: impl FnOnce() -> bool) -> Arc<Series> {
        if let Some(s) = self.services.read().get(service) {
            return s.clone();
        }
        let name = if known() { service } else { UNKNOWN_SERVICE };
        self.services
            .write()
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// A call counted in `series` ended with `code` after `elapsed`.
    pub fn record(&self, series: &Series, code: i32, elapsed: Duration) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        if code != 0 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let code = usize::try_from(code)
            .ok()
            .filter(|c| *c < CODES.len())
            .unwrap_or(2);
        series.codes[code].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            series.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        series
            .sum_ns
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        series.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Calls finished and calls failed, since start.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.calls.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }

    /// The whole node in Prometheus text format.
    pub fn render(&self, kernel: &Kernel) -> String {
        let mut out = self.render_calls();
        self.render_node(kernel, &mut out);
        out
    }

    /// The call series only (what this struct owns).
    pub fn render_calls(&self) -> String {
        let mut out = String::with_capacity(4096);
        let services: Vec<(String, Arc<Series>)> = {
            let mut v: Vec<_> = self
                .services
                .read()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        out.push_str("# HELP kernel_calls_total Calls by service and gRPC status code.\n# TYPE kernel_calls_total counter\n");
        for (name, s) in &services {
            for (i, code) in CODES.iter().enumerate() {
                let n = s.codes[i].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "kernel_calls_total{{service=\"{}\",code=\"{code}\"}} {n}",
                        escape(name)
                    );
                }
            }
        }
        out.push_str("# HELP kernel_call_duration_seconds Call latency through the kernel.\n# TYPE kernel_call_duration_seconds histogram\n");
        for (name, s) in &services {
            let name = escape(name);
            let mut cumulative = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                cumulative += s.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(out, "kernel_call_duration_seconds_bucket{{service=\"{name}\",le=\"{b}\"}} {cumulative}");
            }
            let count = s.count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "kernel_call_duration_seconds_bucket{{service=\"{name}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "kernel_call_duration_seconds_sum{{service=\"{name}\"}} {}",
                s.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
            );
            let _ = writeln!(
                out,
                "kernel_call_duration_seconds_count{{service=\"{name}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP kernel_calls_in_flight Calls being dispatched now.\n# TYPE kernel_calls_in_flight gauge\nkernel_calls_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        out
    }

    fn render_node(&self, kernel: &Kernel, out: &mut String) {
        let st = &kernel.stats;
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, v: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        gauge(
            out,
            "kernel_events_published_total",
            "Events accepted.",
            "counter",
            Stats::get(&st.events_published) as f64,
        );
        gauge(
            out,
            "kernel_events_delivered_total",
            "Deliveries sent, redeliveries included.",
            "counter",
            Stats::get(&st.events_delivered) as f64,
        );
        gauge(
            out,
            "kernel_events_redelivered_total",
            "Redeliveries after nack or ack timeout.",
            "counter",
            Stats::get(&st.events_redelivered) as f64,
        );
        gauge(
            out,
            "kernel_events_dead_lettered_total",
            "Events sent to a dead-letter topic.",
            "counter",
            Stats::get(&st.events_dead_lettered) as f64,
        );
        gauge(
            out,
            "kernel_plugins_connected",
            "Connected provider instances.",
            "gauge",
            kernel.registry.instances().len() as f64,
        );
        out.push_str("# HELP kernel_subscription_buffered Events buffered per subscription, not yet sent.\n# TYPE kernel_subscription_buffered gauge\n");
        let subs = kernel.broker.subscriptions();
        for s in &subs {
            let _ = writeln!(
                out,
                "kernel_subscription_buffered{{subscription=\"{}\"}} {}",
                escape(&s.label()),
                s.buffered()
            );
        }
        out.push_str("# HELP kernel_subscription_unacked Events sent and not yet acked per subscription.\n# TYPE kernel_subscription_unacked gauge\n");
        for s in &subs {
            let _ = writeln!(
                out,
                "kernel_subscription_unacked{{subscription=\"{}\"}} {}",
                escape(&s.label()),
                s.unacked()
            );
        }
    }
}

/// Escapes a label value (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
