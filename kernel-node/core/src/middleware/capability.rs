//! The capability layer: a call goes on only when the caller's `call`
//! grant covers the service (auth on; with auth off it is one branch).
//! The caller is the plugin the edge authenticated (remote) or the one an
//! in-process client names; see [`crate::capability`].

use std::sync::Arc;

use futures::future::{Either, Ready};
use kernel_proto::failure::push_hop;
use kernel_proto::v1::Failure;
use tower::Layer;

use crate::call::Reply;
use crate::capability::{Action, Capabilities};
use crate::invocation::{Invocation, Stage};

/// Adds [`CapabilityStage`].
#[derive(Debug, Clone)]
pub(crate) struct CapabilityLayer {
    capabilities: Arc<Capabilities>,
}

impl CapabilityLayer {
    /// Checks against `capabilities`.
    pub(crate) fn new(capabilities: Arc<Capabilities>) -> Self {
        CapabilityLayer { capabilities }
    }
}

impl<S> Layer<S> for CapabilityLayer {
    type Service = CapabilityStage<S>;
    fn layer(&self, inner: S) -> CapabilityStage<S> {
        CapabilityStage {
            inner,
            capabilities: self.capabilities.clone(),
        }
    }
}

/// The `call` check before the inner service.
#[derive(Debug, Clone)]
pub struct CapabilityStage<S> {
    inner: S,
    capabilities: Arc<Capabilities>,
}

impl<S: Stage> Stage for CapabilityStage<S> {
    /// The inner future as is when allowed; no allocation.
    type Future = Either<Ready<Result<Reply, Failure>>, S::Future>;

    #[inline]
    fn run(&self, inv: Box<Invocation>) -> Self::Future {
        let req = &inv.req;
        match self
            .capabilities
            .check(req.caller.as_deref(), Action::Call, &req.service)
        {
            Ok(()) => Either::Right(self.inner.run(inv)),
            Err(e) => {
                let mut f = Failure::from(e);
                push_hop(&mut f, "", &inv.req.service, "");
                Either::Left(futures::future::ready(Err(f)))
            }
        }
    }
}
