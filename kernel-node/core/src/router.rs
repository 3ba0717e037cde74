//! The call router: the entry point for every call.
//!
//! [`Router::call`] runs a [`Request`] through the pipeline composed in
//! [`crate::middleware::pipeline`]: trace → (capability slot) → validate →
//! accounting → dispatch.

use std::sync::Arc;

use crate::call::Request;
use crate::invocation::{Invocation, Stage};
use crate::middleware::Pipeline;
use crate::registry::Pool;

/// The future of one call through the pipeline.
pub type CallFuture = <Pipeline as Stage>::Future;

/// Routes calls through the pipeline.
#[derive(Debug, Clone)]
pub(crate) struct Router {
    pipeline: Pipeline,
}

impl Router {
    /// A router over a composed pipeline.
    pub(crate) fn new(pipeline: Pipeline) -> Router {
        Router { pipeline }
    }

    /// Runs one call to completion. The error carries the causality chain,
    /// with this hop appended.
    ///
    /// The pipeline's own future, not wrapped in another `async` block:
    /// every wrapper would copy the request into one more state machine.
    pub(crate) fn call(&self, req: Request) -> CallFuture {
        self.pipeline.run(Invocation::new(req))
    }

    /// The same, for a call whose provider pool is already known (a
    /// service handle's): the pipeline skips looking the name up.
    pub(crate) fn call_in_pool(&self, req: Request, pool: Option<Arc<Pool>>) -> CallFuture {
        let mut inv = Invocation::new(req);
        inv.pool = pool;
        self.pipeline.run(inv)
    }
}
