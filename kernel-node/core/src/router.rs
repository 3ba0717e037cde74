//! The call router: the entry point for every call.
//!
//! [`Router::call`] runs a [`Request`] through the pipeline composed in
//! [`crate::middleware::pipeline`]: trace → (capability slot) → validate →
//! accounting → dispatch.

use crate::call::Request;
use crate::invocation::{Invocation, Stage};
use crate::middleware::Pipeline;

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
}
