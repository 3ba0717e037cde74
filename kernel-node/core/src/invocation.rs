//! An [`Invocation`]: a call on its way down the kernel pipeline, and the
//! [`Stage`] trait every pipeline stage implements. Below the middleware
//! and the router, which both speak it.

use std::sync::Arc;

use kernel_proto::v1::Failure;

use crate::call::{Reply, Request};
use crate::context::Node;
use crate::registry::Pool;

/// A call travelling down the pipeline: the caller's request plus what the
/// layers learn on the way.
#[derive(Debug)]
pub struct Invocation {
    /// What the caller asked for.
    pub req: Request,
    /// The call's context node (set by [`accounting`]).
    pub node: Option<Arc<Node>>,
    /// The call's span, when tracing is on (set by [`trace`]).
    pub trace: Option<opentelemetry::Context>,
    /// When the call entered the kernel. A TSC-based `quanta` stamp: the
    /// trace layer reads the clock again when the call ends, and a TSC read
    /// is several times cheaper than `std::time::Instant` through the vDSO
    /// (figures in `docs/PERFORMANCE.md`).
    pub started: quanta::Instant,
    /// The provider pool, when a layer already looked it up (validate does),
    /// so dispatch does not look it up again.
    pub pool: Option<Arc<Pool>>,
}

impl Invocation {
    /// A copy for another attempt (retries of idempotent methods): the
    /// request, and what the layers above set.
    pub(crate) fn duplicate(&self) -> Box<Invocation> {
        Box::new(Invocation {
            req: self.req.clone(),
            node: self.node.clone(),
            trace: self.trace.clone(),
            started: self.started,
            pool: self.pool.clone(),
        })
    }

    /// A fresh invocation, boxed: it passes through every layer by value,
    /// and a box moves as one pointer where the struct would be copied
    /// (a few hundred bytes) at each layer and inside dispatch.
    #[inline]
    pub fn new(req: Request) -> Box<Invocation> {
        Box::new(Invocation {
            req,
            node: None,
            trace: None,
            started: quanta::Instant::now(),
            pool: None,
        })
    }
}

/// A pipeline stage run through a shared reference: the one implementation
/// every layer of the kernel pipeline (and dispatch) has.
///
/// Not a tower `Service`: `Service::call` takes `&mut self`, which a shared
/// pipeline can only give by cloning every layer (a reference count each)
/// on every call. The stages are always ready (no `poll_ready`
/// back-pressure: the concurrency gate is inside dispatch), so nothing is
/// lost by not asking. Layers are still composed with tower's
/// `ServiceBuilder`, and `crate::middleware` has the two adapters to and
/// from tower `Service` (for tower-test mocks and tower composition).
pub trait Stage {
    /// The call's future.
    type Future: std::future::Future<Output = Result<Reply, Failure>>;
    /// Runs one call through this stage and the ones inside it.
    fn run(&self, inv: Box<Invocation>) -> Self::Future;
}
