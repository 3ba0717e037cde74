//! Prometheus metrics: counters and histograms kept in atomics on the hot
//! path, rendered in the text exposition format on scrape.
//!
//! Per-service series exist only for registered names; calls to unknown or
//! malformed names are counted under `service="_unknown"`, so a client
//! cannot grow the series set without bound.

use kernel_proto::failure::CODE_NAMES as CODES;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use rustc_hash::FxHashMap;

use crate::stats::Stats;

/// Histogram bucket bounds, seconds (as rendered).
const BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// The same bounds in nanoseconds, compared on the hot path.
const BUCKETS_NS: [u64; 16] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
];

/// The bucket an observation of `ns` falls in: the index of the first bound
/// at or above it, or `BUCKETS.len()` past the last bound.
#[inline]
fn bucket(ns: u64) -> usize {
    BUCKETS_NS
        .iter()
        .position(|b| ns <= *b)
        .unwrap_or(BUCKETS.len())
}

/// Nanoseconds, saturated.
#[inline]
fn nanos(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

/// A latency histogram in atomics: one bucket add and one sum add per
/// observation.
#[derive(Debug, Default)]
struct Histogram {
    /// One counter per bound, and one past the last.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    #[inline]
    fn observe(&self, elapsed: Duration) {
        let ns = nanos(elapsed);
        self.buckets[bucket(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn counts(&self) -> [u64; BUCKETS.len() + 1] {
        std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed))
    }
}

/// Prometheus lines for one labelled histogram: per-bucket (not cumulative)
/// counts, the last past every bound, and the sum in nanoseconds.
fn render_histogram(
    out: &mut String,
    name: &str,
    label: &str,
    counts: &[u64; BUCKETS.len() + 1],
    sum_ns: u64,
) {
    let mut cumulative = 0;
    for (b, n) in BUCKETS.iter().zip(counts) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{{label},le=\"{b}\"}} {cumulative}");
    }
    let count = cumulative + counts[BUCKETS.len()];
    let _ = writeln!(out, "{name}_bucket{{{label},le=\"+Inf\"}} {count}");
    let sum = sum_ns as f64 / 1e9;
    let _ = writeln!(out, "{name}_sum{{{label}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{label}}} {count}");
}

/// Requests through the transport edge for one gRPC path.
#[derive(Debug, Default)]
pub struct EdgeSeries {
    requests: AtomicU64,
    failed: AtomicU64,
    in_flight: AtomicI64,
    head_latency: Histogram,
}

impl EdgeSeries {
    /// A request arrived; it is in flight until the guard drops.
    pub fn enter(&'static self) -> EdgeRequest {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        EdgeRequest(self)
    }

    /// The response head went out after `elapsed` (`ok`: not a transport
    /// error).
    pub fn head(&self, elapsed: Duration, ok: bool) {
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.head_latency.observe(elapsed);
    }

    /// The request left (answered, or dropped by the client).
    fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One request through the transport edge, in flight until dropped (with
/// the response body, after its last frame or when the client goes away).
#[derive(Debug)]
pub struct EdgeRequest(&'static EdgeSeries);

impl EdgeRequest {
    /// The response head went out after `elapsed` (`ok`: not a transport
    /// error).
    pub fn head(&self, elapsed: Duration, ok: bool) {
        self.0.head(elapsed, ok);
    }
}

impl Drop for EdgeRequest {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// The node-wide figures `/metrics` shows beside the call series, handed
/// to [`Metrics::render`] by whoever owns them.
#[derive(Debug)]
pub struct NodeFigures<'a> {
    /// Event counters.
    pub stats: &'a Stats,
    /// Connected provider instances.
    pub plugins_connected: usize,
    /// Per subscription: id, label, events buffered, events unacked.
    pub subscriptions: Vec<(u64, String, usize, usize)>,
}

/// The series of one service; a call holds it from start to end.
///
/// A call that completes in its first poll (an in-process provider that
/// answers at once) costs two relaxed atomic adds: one cell of `ended` (its
/// status code and latency bucket at once) and the latency sum. A call that
/// has to wait also counts itself in `waited` at its first wait and in
/// `waited_ended` at its end, so in-flight counts every call that is waiting
/// anywhere (queued, at a remote provider, at an in-process one); a call is
/// not counted while its first poll runs, which is never longer than the
/// pipeline's own synchronous work. Everything else (count by code,
/// histogram, node totals) is derived when scraped.
#[derive(Debug, Default)]
pub struct Series {
    waited: AtomicU64,
    waited_ended: AtomicU64,
    /// Calls ended, by status code (row) and latency bucket (column, the
    /// last one past every bound).
    ended: [[AtomicU64; BUCKETS.len() + 1]; CODES.len()],
    sum_ns: AtomicU64,
}

impl Series {
    /// A call counted in this series has to wait: it is in flight until
    /// recorded with `waited` set.
    #[inline]
    pub fn wait(&self) {
        self.waited.fetch_add(1, Ordering::Relaxed);
    }

    /// A call counted in this series ended with `code` after `elapsed`
    /// (`waited`: it called [`Series::wait`] before).
    #[inline]
    pub fn record(&self, code: i32, elapsed: Duration, waited: bool) {
        if waited {
            self.waited_ended.fetch_add(1, Ordering::Relaxed);
        }
        let code = usize::try_from(code)
            .ok()
            .filter(|c| *c < CODES.len())
            .unwrap_or(2);
        let ns = nanos(elapsed);
        self.ended[code][bucket(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Calls waiting now (ended read first: a call ends after it began to
    /// wait, so this order never yields a negative count).
    fn in_flight(&self) -> u64 {
        let ended = self.waited_ended.load(Ordering::Relaxed);
        self.waited.load(Ordering::Relaxed).saturating_sub(ended)
    }

    /// Calls ended with `code` (an index into [`CODES`]).
    fn by_code(&self, code: usize) -> u64 {
        self.ended[code]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Calls ended, and those that failed.
    fn ended(&self) -> (u64, u64) {
        let ok = self.by_code(0);
        let failed: u64 = (1..CODES.len()).map(|c| self.by_code(c)).sum();
        (ok + failed, failed)
    }

    /// Calls ended per latency bucket, every code together.
    fn latency(&self) -> [u64; BUCKETS.len() + 1] {
        std::array::from_fn(|b| {
            self.ended
                .iter()
                .map(|row| row[b].load(Ordering::Relaxed))
                .sum()
        })
    }
}

/// Call metrics of a node.
///
/// A series is never removed (Prometheus counters must not go back), so
/// each is allocated once and leaked: a call then carries a plain
/// `&'static Series` instead of a reference count it would bump and drop.
/// The cost is one series per service name per kernel for the process's
/// lifetime, which the map kept anyway.
#[derive(Debug, Default)]
pub struct Metrics {
    services: RwLock<FxHashMap<String, &'static Series>>,
    edge: RwLock<FxHashMap<String, &'static EdgeSeries>>,
}

/// Label for calls whose service is not registered.
pub(crate) const UNKNOWN_SERVICE: &str = "_unknown";

impl Metrics {
    /// The series of a registered service. Callers cache it (the registry
    /// keeps it on the service's pool), so this map is read once per name
    /// and registry change, not per call.
    pub fn series(&self, service: &str) -> &'static Series {
        leaked(&self.services, service)
    }

    /// The edge series of a gRPC path (already bounded by the caller).
    pub fn edge(&self, path: &str) -> &'static EdgeSeries {
        leaked(&self.edge, path)
    }

    /// The series for calls to names nobody provides.
    pub fn unknown(&self) -> &'static Series {
        self.series(UNKNOWN_SERVICE)
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> i64 {
        self.services
            .read()
            .values()
            .map(|s| s.in_flight() as i64)
            .sum()
    }

    /// Calls finished and calls failed, since start.
    pub fn totals(&self) -> (u64, u64) {
        self.services
            .read()
            .values()
            .map(|s| s.ended())
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    }

    /// The whole node in Prometheus text format.
    pub fn render(&self, node: &NodeFigures<'_>) -> String {
        let mut out = self.render_calls();
        render_node(node, &mut out);
        out
    }

    /// The call series only (what this struct owns).
    pub fn render_calls(&self) -> String {
        let mut out = String::with_capacity(4096);
        let services: Vec<(String, &Series)> = {
            let mut v: Vec<_> = self
                .services
                .read()
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        out.push_str("# HELP kernel_calls_total Calls by service and gRPC status code.\n# TYPE kernel_calls_total counter\n");
        for (name, s) in &services {
            for (i, code) in CODES.iter().enumerate() {
                let n = s.by_code(i);
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
            let label = format!("service=\"{}\"", escape(name));
            render_histogram(
                &mut out,
                "kernel_call_duration_seconds",
                &label,
                &s.latency(),
                s.sum_ns.load(Ordering::Relaxed),
            );
        }
        let _ = writeln!(
            out,
            "# HELP kernel_calls_in_flight Calls waiting now (queued, at a provider), past their first poll.\n# TYPE kernel_calls_in_flight gauge\nkernel_calls_in_flight {}",
            self.in_flight()
        );
        self.render_edge(&mut out);
        out
    }

    /// The transport edge's series, by gRPC path.
    fn render_edge(&self, out: &mut String) {
        let mut paths: Vec<(String, &EdgeSeries)> = self
            .edge
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        paths.sort_by(|a, b| a.0.cmp(&b.0));
        let per_path = |out: &mut String,
                        name: &str,
                        help: &str,
                        kind: &str,
                        value: &dyn Fn(&EdgeSeries) -> i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (p, s) in &paths {
                let _ = writeln!(out, "{name}{{path=\"{}\"}} {}", escape(p), value(s));
            }
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as i64;
        per_path(
            out,
            "kernel_edge_requests_total",
            "HTTP/2 requests by gRPC path.",
            "counter",
            &|s| load(&s.requests),
        );
        per_path(
            out,
            "kernel_edge_failed_total",
            "Requests that ended in a transport error before a response head.",
            "counter",
            &|s| load(&s.failed),
        );
        per_path(
            out,
            "kernel_edge_in_flight",
            "Requests open now (streams included).",
            "gauge",
            &|s| s.in_flight.load(Ordering::Relaxed),
        );
        out.push_str("# HELP kernel_edge_response_head_seconds Time from request to response head (the whole call for unary RPCs).\n# TYPE kernel_edge_response_head_seconds histogram\n");
        for (p, s) in &paths {
            let label = format!("path=\"{}\"", escape(p));
            render_histogram(
                out,
                "kernel_edge_response_head_seconds",
                &label,
                &s.head_latency.counts(),
                s.head_latency.sum_ns.load(Ordering::Relaxed),
            );
        }
    }
}

fn render_node(node: &NodeFigures<'_>, out: &mut String) {
    let st = node.stats;
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
        "kernel_events_cancelled_total",
        "Queued deliveries dropped because their context branch was cancelled.",
        "counter",
        Stats::get(&st.events_cancelled) as f64,
    );
    gauge(
        out,
        "kernel_plugins_connected",
        "Connected provider instances.",
        "gauge",
        node.plugins_connected as f64,
    );
    out.push_str("# HELP kernel_subscription_buffered Events buffered per subscription (by id; names need not be unique), not yet sent.\n# TYPE kernel_subscription_buffered gauge\n");
    for (id, label, buffered, _) in &node.subscriptions {
        let _ = writeln!(
            out,
            "kernel_subscription_buffered{{id=\"{id}\",subscription=\"{}\"}} {buffered}",
            escape(label),
        );
    }
    out.push_str("# HELP kernel_subscription_unacked Events sent and not yet acked per subscription.\n# TYPE kernel_subscription_unacked gauge\n");
    for (id, label, _, unacked) in &node.subscriptions {
        let _ = writeln!(
            out,
            "kernel_subscription_unacked{{id=\"{id}\",subscription=\"{}\"}} {unacked}",
            escape(label),
        );
    }
}

/// The series under `key`, made (and leaked, see [`Metrics`]) on first use.
fn leaked<T: Default>(map: &RwLock<FxHashMap<String, &'static T>>, key: &str) -> &'static T {
    if let Some(s) = map.read().get(key) {
        return s;
    }
    map.write()
        .entry(key.to_owned())
        .or_insert_with(|| Box::leak(Box::default()))
}

/// Escapes a label value (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cell_per_call_renders_as_counts_by_code_and_a_cumulative_histogram() {
        let m = Metrics::default();
        let s = m.series("orders.place");
        for (code, micros, waited) in [
            (0, 10, false),
            (0, 200, true),
            (5, 200, false),
            (4, 20_000_000, true),
        ] {
            if waited {
                s.wait();
            }
            s.record(code, Duration::from_micros(micros), waited);
        }
        s.wait(); // still waiting
        assert_eq!(m.totals(), (4, 2));
        assert_eq!(m.in_flight(), 1);
        let text = m.render_calls();
        let has = |line: &str| assert!(text.contains(line), "missing `{line}` in\n{text}");
        has("kernel_calls_total{service=\"orders.place\",code=\"OK\"} 2\n");
        has("kernel_calls_total{service=\"orders.place\",code=\"NOT_FOUND\"} 1\n");
        has("kernel_calls_total{service=\"orders.place\",code=\"DEADLINE_EXCEEDED\"} 1\n");
        let h = "kernel_call_duration_seconds";
        has(&format!(
            "{h}_bucket{{service=\"orders.place\",le=\"0.00005\"}} 1\n"
        ));
        has(&format!(
            "{h}_bucket{{service=\"orders.place\",le=\"0.00025\"}} 3\n"
        ));
        // Past the last bound: only in +Inf and the count.
        has(&format!(
            "{h}_bucket{{service=\"orders.place\",le=\"10\"}} 3\n"
        ));
        has(&format!(
            "{h}_bucket{{service=\"orders.place\",le=\"+Inf\"}} 4\n"
        ));
        has(&format!("{h}_count{{service=\"orders.place\"}} 4\n"));
        has(&format!("{h}_sum{{service=\"orders.place\"}} 20.00041\n"));
    }
}
