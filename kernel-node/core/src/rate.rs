//! Per-plugin publish rate: a token bucket per plugin
//! (`broker.max_publish_rate_per_plugin` events per second, bursts up to
//! `broker.publish_burst_per_plugin`). A publish over the rate is refused
//! at once with `RESOURCE_EXHAUSTED` naming the setting: the publisher is
//! told, nothing is accepted and dropped later.

use std::sync::Arc;

use parking_lot::Mutex;
use quanta::Instant;
use rustc_hash::FxHashMap;

use crate::error::Error;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets, by plugin.
#[derive(Debug)]
pub(crate) struct PublishRate {
    per_second: f64,
    burst: f64,
    buckets: Mutex<FxHashMap<Arc<str>, Bucket>>,
}

impl PublishRate {
    /// `per_second` events per second per plugin (0 = no limit), bursts of
    /// `burst` (0 = one second's worth).
    pub(crate) fn new(per_second: u32, burst: u32) -> PublishRate {
        let per_second = f64::from(per_second);
        PublishRate {
            per_second,
            burst: if burst == 0 {
                per_second
            } else {
                f64::from(burst)
            },
            buckets: Mutex::default(),
        }
    }

    /// Takes one event's token from `plugin`'s bucket, or says it is over.
    pub(crate) fn take(&self, plugin: Option<&Arc<str>>) -> Result<(), Error> {
        let (Some(plugin), true) = (plugin, self.per_second > 0.0) else {
            return Ok(());
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let b = buckets.entry(plugin.clone()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * self.per_second;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.at = now;
        if b.tokens < 1.0 {
            return Err(Error::LimitReached {
                limit: "broker.max_publish_rate_per_plugin",
                plugin: plugin.to_string(),
                value: self.per_second as usize,
            });
        }
        b.tokens -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds_per_plugin() {
        let r = PublishRate::new(1_000, 5);
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        for _ in 0..5 {
            r.take(Some(&a)).expect("within the burst");
        }
        let e = r.take(Some(&a)).expect_err("over the burst");
        assert!(
            e.to_string().contains("broker.max_publish_rate_per_plugin"),
            "{e}"
        );
        r.take(Some(&b)).expect("another plugin has its own bucket");
        r.take(None).expect("anonymous publishers are not counted");
        std::thread::sleep(std::time::Duration::from_millis(5));
        r.take(Some(&a)).expect("refilled at 1,000/s");
        assert!(
            PublishRate::new(0, 0).take(Some(&a)).is_ok(),
            "0 = no limit"
        );
    }
}
