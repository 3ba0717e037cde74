//! The edge timeout layer (transport tier): a cap on how long any request
//! may take to get its response head (`server.max_request_ms`).
//!
//! For a unary RPC the head comes with the answer, so this bounds the whole
//! call, whatever deadline the client asked for (the pipeline's own
//! deadline, from `grpc-timeout`, usually fires first and says where the
//! time went). A stream's head goes out when it opens, so open streams
//! (Subscribe, a provider's Connect) are not cut. When the cap passes, the
//! client gets `DEADLINE_EXCEEDED` naming the limit, and the handler's
//! future is dropped, which cancels the call's branch like any abandoned
//! call.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service};

/// Adds [`EdgeTimeout`].
#[derive(Debug, Clone)]
pub(crate) struct EdgeTimeoutLayer {
    limit: Option<Duration>,
}

impl EdgeTimeoutLayer {
    /// Capping time to the response head at `limit` (None: no cap).
    pub(crate) fn new(limit: Option<Duration>) -> Self {
        EdgeTimeoutLayer { limit }
    }
}

impl<S> Layer<S> for EdgeTimeoutLayer {
    type Service = EdgeTimeout<S>;
    fn layer(&self, inner: S) -> EdgeTimeout<S> {
        EdgeTimeout {
            inner,
            limit: self.limit,
        }
    }
}

/// Answers `DEADLINE_EXCEEDED` for a request whose head the inner service
/// has not produced within the limit.
#[derive(Debug, Clone)]
pub(crate) struct EdgeTimeout<S> {
    inner: S,
    limit: Option<Duration>,
}

impl<S, B, R> Service<http::Request<B>> for EdgeTimeout<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let fut = self.inner.call(req);
        let Some(limit) = self.limit else {
            return Box::pin(fut);
        };
        Box::pin(async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(out) => out,
                Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                    "no response within the node's request limit of {} ms \
                     (server.max_request_ms)",
                    limit.as_millis()
                ))
                .into_http()),
            }
        })
    }
}
