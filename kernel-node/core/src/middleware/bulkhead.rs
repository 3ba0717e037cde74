//! The bulkhead layer: calls one plugin has in flight at once are capped
//! (`router.max_in_flight_per_plugin`), so one runaway caller cannot take
//! every provider slot and queue place from the others. A call over the cap
//! is refused at once with `RESOURCE_EXHAUSTED` naming the setting; the
//! count drops when the call's future ends (completed, failed or dropped).
//! Calls without a caller (anonymous, auth off) are not counted.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready};
use kernel_proto::failure::push_hop;
use kernel_proto::v1::Failure;
use parking_lot::RwLock;
use rustc_hash::FxHashMap;
use tower::Layer;

use crate::call::Reply;
use crate::error::Error;
use crate::invocation::{Invocation, Stage};

/// In-flight counts by plugin.
#[derive(Debug, Default)]
struct Counts(RwLock<FxHashMap<Arc<str>, Arc<AtomicUsize>>>);

impl Counts {
    fn of(&self, plugin: &Arc<str>) -> Arc<AtomicUsize> {
        if let Some(c) = self.0.read().get(plugin) {
            return c.clone();
        }
        self.0.write().entry(plugin.clone()).or_default().clone()
    }
}

/// Adds [`BulkheadStage`].
#[derive(Debug, Clone)]
pub(crate) struct BulkheadLayer {
    limit: usize,
    counts: Arc<Counts>,
}

impl BulkheadLayer {
    /// At most `limit` calls in flight per plugin; 0 = no cap.
    pub(crate) fn new(limit: usize) -> Self {
        BulkheadLayer {
            limit,
            counts: Arc::default(),
        }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = BulkheadStage<S>;
    fn layer(&self, inner: S) -> BulkheadStage<S> {
        BulkheadStage {
            inner,
            limit: self.limit,
            counts: self.counts.clone(),
        }
    }
}

/// The per-plugin cap before the inner service.
#[derive(Debug, Clone)]
pub struct BulkheadStage<S> {
    inner: S,
    limit: usize,
    counts: Arc<Counts>,
}

pin_project_lite::pin_project! {
    /// The inner future, holding one of its plugin's in-flight places until
    /// it is dropped.
    #[derive(Debug)]
    pub struct Held<F> {
        #[pin]
        inner: F,
        place: Place,
    }
}

/// One in-flight place, given back on drop.
#[derive(Debug)]
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<F: Future> Future for Held<F> {
    type Output = F::Output;
    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().inner.poll(cx)
    }
}

impl<S: Stage> Stage for BulkheadStage<S> {
    /// The inner future as is for an uncounted call; no allocation.
    type Future = Either<Either<Ready<Result<Reply, Failure>>, S::Future>, Held<S::Future>>;

    #[inline]
    fn run(&self, inv: Box<Invocation>) -> Self::Future {
        let plugin = match &inv.req.caller {
            Some(p) if self.limit > 0 => p.clone(),
            _ => return Either::Left(Either::Right(self.inner.run(inv))),
        };
        let count = self.counts.of(&plugin);
        if count.fetch_add(1, Ordering::AcqRel) >= self.limit {
            count.fetch_sub(1, Ordering::AcqRel);
            let mut f = Failure::from(Error::LimitReached {
                limit: "router.max_in_flight_per_plugin",
                plugin: plugin.to_string(),
                value: self.limit,
            });
            push_hop(&mut f, "", &inv.req.service, "");
            return Either::Left(Either::Left(futures::future::ready(Err(f))));
        }
        // The place is held before the inner stages run: a panic in one
        // (an in-process handler's synchronous part) gives it back.
        let place = Place(count);
        Either::Right(Held {
            inner: self.inner.run(inv),
            place,
        })
    }
}
