//! The kernel pipeline: tower layers over the kernel's own [`Invocation`],
//! the same for remote and in-process callers and providers.
//!
//! # Layout
//! - [`trace`]: a span per call and the call metrics (outermost).
//! - [`validate`]: JSON Schema validation of arguments.
//! - [`accounting`]: context node, budgets, deadline and branch cancellation.
//! - [`crate::router::Dispatch`]: provider selection and dispatch (innermost).
//!
//! The order is written once, in [`pipeline`], with the reason for each
//! position next to it.

pub mod accounting;
pub mod trace;
pub mod validate;

use std::sync::Arc;
use std::time::Instant;

use tower::ServiceBuilder;

use crate::config::RouterConfig;
use crate::context::{Contexts, Node};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::router::{Dispatch, Request};
use crate::telemetry::Telemetry;

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
    /// When the call entered the kernel.
    pub started: Instant,
}

impl Invocation {
    /// A fresh invocation.
    pub fn new(req: Request) -> Invocation {
        Invocation {
            req,
            node: None,
            trace: None,
            started: Instant::now(),
        }
    }
}

/// The composed pipeline type.
pub type Pipeline =
    trace::TraceService<validate::ValidateService<accounting::AccountingService<Dispatch>>>;

/// Composes the kernel pipeline, outermost first.
pub fn pipeline(
    registry: Arc<Registry>,
    contexts: Arc<Contexts>,
    config: RouterConfig,
    telemetry: Telemetry,
    metrics: Arc<Metrics>,
) -> Pipeline {
    let max_payload = config.max_payload_bytes;
    ServiceBuilder::new()
        // Outermost, so the span and the metrics cover everything below:
        // refusals by validation and budgets, queue waits, the deadline.
        .layer(trace::TraceLayer::new(
            telemetry.clone(),
            metrics,
            registry.clone(),
        ))
        // (Capability check goes here, security issue: before any work is
        // done for a caller, and before validation can reveal a schema.)
        //
        // Before accounting, so a malformed request costs no budget and
        // starts no branch in the context tree.
        .layer(validate::ValidateLayer::new(registry.clone(), max_payload))
        // Creates the context node and owns the deadline and branch
        // cancellation race; it sits outside dispatch so that the queue wait
        // and the provider's work are both bounded by it, and inside trace so
        // that a timeout is recorded as DEADLINE_EXCEEDED.
        .layer(accounting::AccountingLayer::new(contexts))
        // Innermost: provider selection, concurrency gate, dispatch.
        .service(Dispatch::new(registry, config, telemetry))
}
