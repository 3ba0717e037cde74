//! Timing helpers: latency percentiles and fixed-duration throughput.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Latency summary in microseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Latency {
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
}

/// Runs `f` sequentially `samples` times (after a warm-up) and summarizes.
pub(crate) async fn latency<F, Fut>(samples: usize, mut f: F) -> Latency
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    for _ in 0..samples / 10 {
        f().await;
    }
    let mut v = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        f().await;
        v.push(t.elapsed().as_nanos() as f64 / 1000.0);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Latency {
        p50_us: v[v.len() / 2],
        p99_us: v[v.len() * 99 / 100],
    }
}

/// Runs `callers` concurrent loops of `f` for `secs` seconds; returns ops/s.
pub(crate) async fn throughput<F, Fut>(callers: usize, secs: u64, f: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    // Warm-up.
    for _ in 0..100 {
        f().await;
    }
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (f, stop, count) = (f.clone(), stop.clone(), count.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    f().await;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed();
    for t in tasks {
        let _ = t.await;
    }
    count.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64()
}

/// Mean nanoseconds per iteration of a synchronous-ish async op.
pub(crate) async fn mean_ns<F, Fut>(iters: usize, mut f: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    for _ in 0..iters / 10 {
        f().await;
    }
    let t = Instant::now();
    for _ in 0..iters {
        f().await;
    }
    t.elapsed().as_nanos() as f64 / iters as f64
}

/// One line of the report: what was measured, its value, its target.
pub(crate) struct Row {
    pub(crate) what: String,
    pub(crate) value: String,
    pub(crate) target: String,
}

/// Prints a row as it is measured and keeps it for the closing table.
pub(crate) fn row(rows: &mut Vec<Row>, what: &str, value: String, target: String) {
    println!("  {what}: {value}  {target}");
    rows.push(Row {
        what: what.into(),
        value,
        target,
    });
}
