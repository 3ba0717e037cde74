//! The accounting layer: creates the call's context node (path, budget
//! charge, deadline = min(caller, parent)), refuses calls whose deadline has
//! passed or whose branch is cancelled, and races the rest of the pipeline
//! against the deadline and branch cancellation. On failure it appends this
//! hop (context path, service, provider plugin) to the causality chain.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use kernel_proto::failure::push_hop;
use kernel_proto::headers;
use kernel_proto::v1::Failure;
use opentelemetry::trace::TraceContextExt;
use tower::Layer;

use crate::call::{BoxFuture, Headers, Reply};
use crate::context::{ChildSpec, Contexts, Node};
use crate::error::Error;
use crate::invocation::{Invocation, Stage};

/// Adds [`AccountingStage`].
#[derive(Debug, Clone)]
pub(crate) struct AccountingLayer {
    contexts: Arc<Contexts>,
}

impl AccountingLayer {
    /// Accounting against `contexts`.
    pub(crate) fn new(contexts: Arc<Contexts>) -> Self {
        AccountingLayer { contexts }
    }
}

impl<S> Layer<S> for AccountingLayer {
    type Service = AccountingStage<S>;
    fn layer(&self, inner: S) -> AccountingStage<S> {
        AccountingStage {
            inner,
            contexts: self.contexts.clone(),
        }
    }
}

/// Context, budget and deadline around the inner service.
#[derive(Debug, Clone)]
pub struct AccountingStage<S> {
    inner: S,
    contexts: Arc<Contexts>,
}

#[inline]
fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    if h.is_empty() {
        None
    } else {
        h.get(name).map(String::as_str)
    }
}

impl<S> Stage for AccountingStage<S>
where
    S: Stage,
    S::Future: Unpin,
{
    type Future = Accounted<S::Future>;

    #[inline]
    fn run(&self, inv: Box<Invocation>) -> Self::Future {
        account(&self.contexts, inv, |inv| self.inner.run(inv))
    }
}

/// The layer's work around `inner`.
#[inline]
fn account<F>(
    contexts: &Contexts,
    mut inv: Box<Invocation>,
    inner: impl FnOnce(Box<Invocation>) -> F,
) -> Accounted<F> {
    let parent = std::mem::take(&mut inv.req.parent);
    let created = contexts.child(
        parent,
        ChildSpec {
            service: &inv.req.service,
            shared_service: inv.pool.as_ref().map(|p| &p.name),
            caller: inv.req.caller.as_deref(),
            deadline: inv.req.deadline,
            budget_header: header(&inv.req.headers, headers::BUDGET),
            traceparent: header(&inv.req.headers, headers::TRACEPARENT),
            is_call: true,
            started: Some(inv.started),
        },
    );
    let node = match created {
        Ok(n) => n,
        Err(e) => {
            let mut f = e.into_failure();
            push_hop(&mut f, "", &inv.req.service, "");
            return Accounted(State::Done(Some(Err(f))));
        }
    };
    if let Some(cx) = &inv.trace {
        cx.span().set_attribute(opentelemetry::KeyValue::new(
            "kernel.context",
            node.path().to_owned(),
        ));
    }
    inv.node = Some(node.clone());
    let report = inv.req.report_context;
    let early = if node.is_cancelled() {
        Some(node.cancel_reason())
    } else if node.deadline.is_some_and(|d| d <= Instant::now()) {
        // Never forwarded: the deadline passed before the call could start.
        Some(deadline_exceeded(node.path(), &node.service))
    } else {
        None
    };
    if let Some(f) = early {
        return Accounted(State::Done(Some(finish(Err(f), node, false))));
    }
    Accounted(State::Running {
        inner: inner(inv),
        node,
        report,
        watch: None,
    })
}

/// The accounting layer's future: the inner future raced against the
/// deadline and the branch's cancellation, the hop appended on failure.
///
/// Held inline by the layers above (no box): a call whose inner future is
/// ready on its first poll never builds the race; only one that waits
/// does, boxed once ([`watch`]).
pub struct Accounted<F>(State<F>);

enum State<F> {
    Running {
        inner: F,
        node: Arc<Node>,
        report: bool,
        /// The deadline and cancellation, once the inner future has waited.
        watch: Option<BoxFuture<Failure>>,
    },
    /// Decided: refused before the inner future was made, or answered.
    Done(Option<Result<Reply, Failure>>),
}

impl<F> std::fmt::Debug for Accounted<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounted").finish_non_exhaustive()
    }
}

impl<F> Future for Accounted<F>
where
    F: Future<Output = Result<Reply, Failure>> + Unpin,
{
    type Output = Result<Reply, Failure>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let (inner, node, race) = match &mut self.0 {
            State::Running {
                inner, node, watch, ..
            } => (inner, node, watch),
            State::Done(out) => {
                return Poll::Ready(out.take().expect("Accounted polled after completion"))
            }
        };
        let out = match Pin::new(inner).poll(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => {
                let race = race.get_or_insert_with(|| Box::pin(watch(node.clone())));
                match race.as_mut().poll(cx) {
                    Poll::Ready(f) => Err(f),
                    Poll::Pending => return Poll::Pending,
                }
            }
        };
        // The inner future is dropped here, not later: an abandoned
        // dispatch cancels its branch as it drops.
        let State::Running { node, report, .. } = std::mem::replace(&mut self.0, State::Done(None))
        else {
            unreachable!("matched as running above");
        };
        Poll::Ready(finish(out, node, report))
    }
}

/// A call's outcome as the caller gets it: the node named on the reply
/// when it asked (`report`), this hop appended to a failure's chain.
fn finish(out: Result<Reply, Failure>, node: Arc<Node>, report: bool) -> Result<Reply, Failure> {
    match out {
        Ok(mut reply) => {
            if report {
                reply.context = Some(node);
            }
            Ok(reply)
        }
        Err(mut f) => {
            let plugin = node.plugin();
            push_hop(
                &mut f,
                node.path(),
                &node.service,
                plugin.as_deref().unwrap_or(""),
            );
            Err(f)
        }
    }
}

/// Resolves with the failure that ends a call still running: its branch
/// cancelled, or its deadline passed.
async fn watch(node: Arc<Node>) -> Failure {
    let sleep = async {
        match node.deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        _ = node.cancelled() => node.cancel_reason(),
        _ = sleep => deadline_exceeded(node.path(), &node.service),
    }
}

fn deadline_exceeded(path: &str, service: &str) -> Failure {
    Error::DeadlineExceeded {
        service: service.to_owned(),
        context: path.to_owned(),
    }
    .into_failure()
}
