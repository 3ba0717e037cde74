//! The retry layer: a call to a method its provider declared idempotent
//! (`ServiceDecl.idempotent_methods`) is tried again when the instance
//! failed (`UNAVAILABLE`, `INTERNAL`, `UNKNOWN`), up to
//! `router.retry_attempts` in all, with a doubling pause from
//! `router.retry_backoff_ms`, and never past the caller's deadline or
//! after its branch was cancelled. Other methods are never retried.
//!
//! It sits inside accounting, so every attempt runs under the one context
//! node (the caller's deadline, one charge of the calls budget) and the
//! deadline race covers the pauses; and outside dispatch, so each attempt
//! selects an instance again (an instance whose breaker just opened is
//! skipped). A unary reply is whole or absent, so no attempt follows a
//! partial reply.

use std::time::Duration;

use futures::future::Either;
use kernel_proto::v1::Failure;
use tower::Layer;

use crate::call::{BoxFuture, Reply};
use crate::invocation::{Invocation, Stage};

/// Adds [`RetryStage`].
#[derive(Debug, Clone)]
pub(crate) struct RetryLayer {
    attempts: u32,
    backoff: Duration,
}

impl RetryLayer {
    /// Up to `attempts` tries in all, pausing `backoff`, then twice that, …
    pub(crate) fn new(attempts: u32, backoff: Duration) -> RetryLayer {
        RetryLayer { attempts, backoff }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = RetryStage<S>;
    fn layer(&self, inner: S) -> RetryStage<S> {
        RetryStage {
            inner,
            attempts: self.attempts,
            backoff: self.backoff,
        }
    }
}

/// Retries of idempotent methods around the inner stage.
#[derive(Debug, Clone)]
pub struct RetryStage<S> {
    inner: S,
    attempts: u32,
    backoff: Duration,
}

/// The codes that mean the instance failed, so another try may succeed.
fn retryable(code: i32) -> bool {
    use tonic::Code;
    [Code::Unavailable, Code::Internal, Code::Unknown]
        .iter()
        .any(|c| *c as i32 == code)
}

impl<S> Stage for RetryStage<S>
where
    S: Stage + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    /// The inner future as is for a call that will not be retried.
    type Future = Either<S::Future, BoxFuture<Result<Reply, Failure>>>;

    #[inline]
    fn run(&self, inv: Box<Invocation>) -> Self::Future {
        let retry = self.attempts > 1
            && inv
                .pool
                .as_ref()
                .is_some_and(|p| p.is_idempotent(&inv.req.method));
        if !retry {
            return Either::Left(self.inner.run(inv));
        }
        let this = self.clone();
        Either::Right(Box::pin(async move { this.retrying(inv).await }))
    }
}

impl<S: Stage> RetryStage<S> {
    async fn retrying(&self, inv: Box<Invocation>) -> Result<Reply, Failure> {
        let mut pause = self.backoff;
        let mut attempt = 1;
        loop {
            let out = self.inner.run(inv.duplicate()).await;
            let Err(f) = &out else {
                return out;
            };
            let node = inv.node.as_ref();
            let time_left = node
                .and_then(|n| n.remaining())
                .is_none_or(|left| left > pause);
            let cancelled = node.is_some_and(|n| n.is_cancelled());
            if attempt >= self.attempts || !retryable(f.code) || !time_left || cancelled {
                return out;
            }
            tracing::debug!(service = %inv.req.service, method = %inv.req.method, attempt, code = f.code, "retrying an idempotent call");
            tokio::time::sleep(pause).await;
            pause *= 2;
            attempt += 1;
        }
    }
}
