//! The kernel pipeline: stages over the kernel's own [`Invocation`], the
//! same for remote and in-process callers and providers.
//!
//! # Layout
//! - [`trace`]: a span per call and the call metrics (outermost).
//! - [`capability`]: the caller's `call` grant (auth on).
//! - [`bulkhead`]: calls in flight per plugin (`router.max_in_flight_per_plugin`).
//! - [`validate`]: JSON Schema validation of arguments.
//! - [`accounting`]: context node, budgets, deadline and branch cancellation.
//! - [`retry`]: retries of methods declared idempotent.
//! - [`dispatch`]: provider selection (skipping instances whose circuit
//!   breaker is open), concurrency gate, hand-over (innermost).
//!
//! Each layer is a tower `Layer` whose service implements [`Stage`] only;
//! the order is written once, in [`layers`], with the reason for each
//! position next to it. Two adapters connect stages to tower: [`Tower`]
//! runs a stage as a tower `Service` (tower-test, `ServiceExt`), and
//! [`FromTower`] runs a cloneable tower `Service` as a stage (mocks where
//! dispatch goes). The transport edge (tier 1: request ids, HTTP/2 limits,
//! the HTTP span, message size limits) is composed in the node's server; it
//! wraps gRPC requests, not kernel invocations.

pub(crate) mod accounting;
#[cfg(test)]
mod adapters;
pub(crate) mod bulkhead;
pub(crate) mod capability;
pub(crate) mod dispatch;
pub(crate) mod retry;
pub(crate) mod trace;
pub(crate) mod validate;

use std::sync::Arc;

use kernel_proto::trace::Telemetry;
use tower::layer::util::{Identity, Stack};
use tower::ServiceBuilder;

use crate::capability::Capabilities;
use crate::config::RouterConfig;
use crate::context::Contexts;
use crate::invocation::{Invocation, Stage};
use crate::metrics::Metrics;
use crate::registry::Registry;
#[cfg(test)]
pub(crate) use adapters::{FromTower, Tower};
use dispatch::Dispatch;

/// The composed pipeline type.
pub(crate) type Pipeline = trace::TraceStage<
    capability::CapabilityStage<
        bulkhead::BulkheadStage<
            validate::ValidateStage<accounting::AccountingStage<retry::RetryStage<Dispatch>>>,
        >,
    >,
>;

/// The pipeline's layers, outermost first, as a `ServiceBuilder` to put
/// around the innermost service.
pub(crate) type Layers = ServiceBuilder<
    Stack<
        retry::RetryLayer,
        Stack<
            accounting::AccountingLayer,
            Stack<
                validate::ValidateLayer,
                Stack<
                    bulkhead::BulkheadLayer,
                    Stack<capability::CapabilityLayer, Stack<trace::TraceLayer, Identity>>,
                >,
            >,
        >,
    >,
>;

/// Composes the kernel pipeline: [`layers`] around [`Dispatch`].
pub(crate) fn pipeline(
    registry: Arc<Registry>,
    contexts: Arc<Contexts>,
    config: RouterConfig,
    telemetry: Telemetry,
    metrics: Arc<Metrics>,
    capabilities: Arc<Capabilities>,
) -> Pipeline {
    layers(
        &registry,
        contexts,
        &config,
        telemetry.clone(),
        metrics,
        capabilities,
    )
    // Innermost: provider selection, concurrency gate, dispatch.
    .service(Dispatch::new(registry, config, telemetry))
}

/// Accounting and dispatch alone: the least of the pipeline that still
/// works, so a measurement can tell what the other layers add.
#[derive(Debug, Clone)]
pub(crate) struct BareRouter(accounting::AccountingStage<Dispatch>);

impl BareRouter {
    /// Runs one call through accounting and dispatch.
    pub(crate) fn call(
        &self,
        req: crate::call::Request,
    ) -> accounting::Accounted<<Dispatch as Stage>::Future> {
        self.0.run(Invocation::new(req))
    }
}

/// Composes [`BareRouter`].
pub(crate) fn bare(
    registry: Arc<Registry>,
    contexts: Arc<Contexts>,
    config: RouterConfig,
) -> BareRouter {
    BareRouter(
        ServiceBuilder::new()
            .layer(accounting::AccountingLayer::new(contexts))
            .service(Dispatch::new(registry, config, Telemetry::disabled())),
    )
}

/// The kernel pipeline's layers, outermost first: the one place their
/// order is written (the tests put the same layers around a mock).
pub(crate) fn layers(
    registry: &Arc<Registry>,
    contexts: Arc<Contexts>,
    config: &RouterConfig,
    telemetry: Telemetry,
    metrics: Arc<Metrics>,
    capabilities: Arc<Capabilities>,
) -> Layers {
    ServiceBuilder::new()
        // Outermost, so the span and the metrics cover everything below:
        // refusals by validation and budgets, queue waits, the deadline.
        .layer(trace::TraceLayer::new(telemetry, metrics, registry.clone()))
        // Before any work is done for a caller, and before validation can
        // reveal what a method's schema wants; inside trace, so a denial is
        // counted and traced like any other refusal.
        .layer(capability::CapabilityLayer::new(capabilities))
        // After the grant (a denied call holds no place), before any work:
        // a plugin over its cap is refused before validation or a context
        // node cost anything.
        .layer(bulkhead::BulkheadLayer::new(
            config.max_in_flight_per_plugin,
        ))
        //
        // Before accounting, so a malformed request costs no budget and
        // starts no branch in the context tree.
        .layer(validate::ValidateLayer::new(
            registry.clone(),
            config.max_payload_bytes,
        ))
        // Creates the context node and owns the deadline and branch
        // cancellation race; it sits outside dispatch so that the queue wait
        // and the provider's work are both bounded by it, and inside trace so
        // that a timeout is recorded as DEADLINE_EXCEEDED.
        .layer(accounting::AccountingLayer::new(contexts))
        // Inside accounting, so every attempt shares the call's context
        // node, deadline and budget charge, and the deadline race covers
        // the pauses; outside dispatch, so each attempt selects an instance
        // again (the circuit breakers live there, per instance, and a
        // timeout or a failure reaches them before any retry).
        .layer(retry::RetryLayer::new(
            config.retry_attempts,
            std::time::Duration::from_millis(config.retry_backoff_ms),
        ))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use kernel_proto::v1::{Failure, ServiceDecl};
    use tower::ServiceExt;

    use super::*;
    use crate::call::{BoxFuture, Reply, Request};
    use crate::config::BudgetConfig;
    use crate::provider::{Instance, Link, LocalCall, LocalHandler};

    struct Never;
    impl LocalHandler for Never {
        fn invoke(&self, _: LocalCall) -> BoxFuture<Result<bytes::Bytes, Failure>> {
            Box::pin(std::future::pending())
        }
    }

    fn to_failure(e: tower::BoxError) -> Failure {
        Failure {
            code: 13,
            message: e.to_string(),
            causality: Vec::new(),
        }
    }

    /// An empty registry, context store and metrics.
    fn fresh() -> (Arc<Registry>, Arc<Contexts>, Arc<Metrics>) {
        (
            Arc::new(Registry::new()),
            Arc::new(Contexts::new(BudgetConfig::default())),
            Arc::new(Metrics::default()),
        )
    }

    type MockHandle = tower_test::mock::Handle<Box<Invocation>, Reply>;

    /// Sets its flag when dropped: marks the inner call's future dropped.
    struct SetOnDrop(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// The kernel's own layers with a mock where dispatch would be, and a
    /// flag set when the mock's call future is dropped (stopped by a layer
    /// outside it, or finished).
    fn stack(
        registry: Arc<Registry>,
        contexts: Arc<Contexts>,
        metrics: Arc<Metrics>,
    ) -> (
        impl tower::Service<Box<Invocation>, Response = Reply, Error = Failure>,
        MockHandle,
        Arc<std::sync::atomic::AtomicBool>,
    ) {
        let (mock, handle) = tower_test::mock::pair::<Box<Invocation>, Reply>();
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = dropped.clone();
        let inner = mock
            .map_err(to_failure as fn(tower::BoxError) -> Failure)
            .map_future(move |f| {
                let guard = SetOnDrop(flag.clone());
                Box::pin(async move {
                    let _guard = guard;
                    f.await
                })
            });
        let config = RouterConfig {
            max_payload_bytes: 1024,
            ..RouterConfig::default()
        };
        let svc = layers(
            &registry,
            contexts,
            &config,
            Telemetry::disabled(),
            metrics,
            Arc::new(Capabilities::default()),
        )
        .service(FromTower(inner));
        (Tower(svc), handle, dropped)
    }

    fn request(
        service: &str,
        payload: &'static [u8],
        deadline: Option<Duration>,
    ) -> Box<Invocation> {
        Invocation::new(Request {
            service: service.into(),
            payload: bytes::Bytes::from_static(payload),
            deadline: deadline.map(|d| Instant::now() + d),
            ..Default::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_inside_trace_is_recorded_by_trace_and_stops_the_inner_call() {
        let (registry, contexts, metrics) = fresh();
        let (svc, mut handle, dropped) = stack(registry, contexts.clone(), metrics.clone());
        let call = svc.oneshot(request("slow.svc", b"", Some(Duration::from_millis(50))));
        tokio::pin!(call);
        // The call reaches the inner service (it was not late yet)...
        let (inv, _reply) = tokio::select! {
            r = handle.next_request() => r.expect("forwarded"),
            _ = &mut call => panic!("finished before reaching the inner service"),
        };
        let node = inv.node.clone().expect("accounting set the context node");
        assert!(!node.is_cancelled());
        // The layers inside see the deadline on the call's context node.
        let left = node.remaining().expect("the node carries the deadline");
        assert!(left <= Duration::from_millis(50), "{left:?}");
        assert!(!dropped.load(std::sync::atomic::Ordering::SeqCst));
        // Waiting at the inner service: counted in flight by trace.
        assert_eq!(metrics.in_flight(), 1);
        // ...and never answers: the accounting layer's deadline fires.
        tokio::time::advance(Duration::from_millis(60)).await;
        let err = call.await.expect_err("deadline");
        assert_eq!(err.code, tonic::Code::DeadlineExceeded as i32, "{err:?}");
        // The inner call was stopped (its future dropped), not left running.
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(
            err.causality[0].context,
            node.path(),
            "hop carries the path"
        );
        // The trace layer, outside, saw the timeout as the outcome.
        assert_eq!(metrics.totals(), (1, 1));
        assert_eq!(metrics.in_flight(), 0);
        assert!(metrics
            .render_calls()
            .contains("code=\"DEADLINE_EXCEEDED\"} 1"));
    }

    #[tokio::test]
    async fn a_call_dropped_while_waiting_counts_as_cancelled_and_leaves_in_flight() {
        let (registry, contexts, metrics) = fresh();
        let (svc, mut handle, _) = stack(registry, contexts, metrics.clone());
        let mut call = Box::pin(svc.oneshot(request("slow.svc", b"", None)));
        let _held = tokio::select! {
            r = handle.next_request() => r.expect("forwarded"),
            _ = &mut call => panic!("finished before reaching the inner service"),
        };
        assert_eq!(metrics.in_flight(), 1);
        drop(call); // the caller went away
        assert_eq!(metrics.in_flight(), 0);
        assert_eq!(metrics.totals(), (1, 1));
        assert!(metrics.render_calls().contains("code=\"CANCELLED\"} 1"));
    }

    #[tokio::test]
    async fn validation_refuses_before_accounting_and_dispatch() {
        let (registry, contexts, metrics) = fresh();
        let mut decl = ServiceDecl {
            name: "orders.place".into(),
            ..Default::default()
        };
        decl.method_schemas.insert(
            String::new(),
            r#"{"type":"object","required":["qty"],"properties":{"qty":{"type":"integer"}}}"#
                .into(),
        );
        let inst = Instance::new(
            "p".into(),
            "i".into(),
            vec![decl],
            Link::Local(Arc::new(Never)),
            8,
        )
        .expect("schema compiles");
        registry
            .register(Arc::new(inst), kernel_proto::v1::RegisterMode::Pool)
            .expect("register");
        let (svc, mut handle, _) = stack(registry, contexts.clone(), metrics.clone());
        let err = svc
            .oneshot(request("orders.place", br#"{"qty":"two"}"#, None))
            .await
            .expect_err("invalid");
        assert_eq!(err.code, tonic::Code::InvalidArgument as i32);
        assert!(err.message.contains("/qty"), "{}", err.message);
        // Nothing below validation ran: no context tree, no inner request.
        assert_eq!(contexts.live_trees(), 0);
        assert!(handle.next_request().await.is_none());
        assert_eq!(metrics.totals(), (1, 1));
    }
}
