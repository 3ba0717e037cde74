//! The accounting layer: creates the call's context node (path, budget
//! charge, deadline = min(caller, parent)), refuses calls whose deadline has
//! passed or whose branch is cancelled, and races the rest of the pipeline
//! against the deadline and branch cancellation. On failure it appends this
//! hop (context path, service, provider plugin) to the causality chain.

use std::sync::Arc;
use std::time::Instant;

use kernel_proto::failure::push_hop;
use kernel_proto::headers;
use kernel_proto::v1::Failure;
use opentelemetry::trace::TraceContextExt;
use tower::Layer;

use crate::call::{BoxFuture, Headers, Reply};
use crate::context::{ChildSpec, Contexts};
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
    S::Future: Send + 'static,
{
    type Future = BoxFuture<Result<Reply, Failure>>;

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
) -> BoxFuture<Result<Reply, Failure>>
where
    F: std::future::Future<Output = Result<Reply, Failure>> + Send + 'static,
{
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
            return Box::pin(async move { Err(f) });
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
    let fut = match early {
        Some(f) => None.ok_or(f),
        None => Ok(inner(inv)),
    };
    Box::pin(async move {
        let out = match fut {
            Err(f) => Err(f),
            Ok(fut) => {
                let sleep = async {
                    match node.deadline {
                        Some(d) => tokio::time::sleep_until(d.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    r = fut => r,
                    _ = node.cancelled() => Err(node.cancel_reason()),
                    _ = sleep => Err(deadline_exceeded(node.path(), &node.service)),
                }
            }
        };
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
    })
}

fn deadline_exceeded(path: &str, service: &str) -> Failure {
    Error::DeadlineExceeded {
        service: service.to_owned(),
        context: path.to_owned(),
    }
    .into_failure()
}
