//! The edge metrics layer (transport tier): HTTP/2 requests by gRPC path,
//! in flight, and time to the response head. Per-call outcomes by status
//! code are the pipeline's (`kernel_calls_total`); this layer sees every
//! RPC, streams and admin included, before any kernel code runs.
//!
//! Paths outside the services this node serves are counted as `_other`,
//! so a client cannot grow the label set.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};

use kernel_core::{EdgeRequest, Metrics};

/// Services whose paths get their own series.
const KNOWN: [&str; 5] = [
    "/kernel.v1.Kernel/",
    "/kernel.v1.Admin/",
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Adds [`EdgeMetrics`].
#[derive(Debug, Clone)]
pub(crate) struct EdgeMetricsLayer {
    metrics: Arc<Metrics>,
}

impl EdgeMetricsLayer {
    /// Counting into `metrics`.
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        EdgeMetricsLayer { metrics }
    }
}

impl<S> Layer<S> for EdgeMetricsLayer {
    type Service = EdgeMetrics<S>;
    fn layer(&self, inner: S) -> EdgeMetrics<S> {
        EdgeMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// Counts requests around the inner HTTP service.
#[derive(Debug, Clone)]
pub(crate) struct EdgeMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

fn label(path: &str) -> &str {
    let known = KNOWN.iter().any(|p| path.starts_with(p))
        && path.len() <= 128
        && path.bytes().all(|b| b.is_ascii_graphic());
    if known {
        path
    } else {
        "_other"
    }
}

impl<S, B, R> Service<http::Request<B>> for EdgeMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = http::Response<Counted<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let series = self.metrics.edge(label(req.uri().path()));
        let started = Instant::now();
        let guard = series.enter();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let out = fut.await;
            guard.head(started.elapsed(), out.is_ok());
            // The body carries the guard: a stream stays in flight until
            // its last frame or its drop.
            out.map(|res| {
                res.map(|body| Counted {
                    body,
                    _in_flight: guard,
                })
            })
        })
    }
}

/// A response body that keeps its request counted as in flight.
#[derive(Debug)]
pub(crate) struct Counted<B> {
    body: B,
    _in_flight: EdgeRequest,
}

impl<B: http_body::Body + Unpin> http_body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
