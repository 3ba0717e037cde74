//! Dispatch, the innermost stage: provider selection, concurrency gate and
//! hand-over.
//!
//! Dispatch picks an instance, takes a slot on its concurrency gate
//! (waiting in the bounded queue when all are busy), and hands the call
//! over: an in-process handler is called directly, a remote one gets an
//! invocation frame. A drop guard makes an abandoned call (deadline, branch
//! cancel, caller gone: the stages above drop this future) send the
//! provider a cancel frame and cancel the call's branch.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kernel_proto::headers;
use kernel_proto::trace::{self, SpanKind, SpanParent, Telemetry};
use kernel_proto::v1::{self as pb, Failure};
use tokio::sync::OwnedSemaphorePermit;

use crate::breaker::is_instance_failure;
use crate::call::{BoxFuture, Headers, Reply, Request};
use crate::config::RouterConfig;
use crate::context::Node;
use crate::error::Error;
use crate::invocation::{Invocation, Stage};
use crate::provider::{Instance, Link, LocalCall, RemoteLink};
use crate::registry::{Pool, Registry};

/// The innermost service: provider selection, concurrency gate, dispatch.
#[derive(Debug, Clone)]
pub struct Dispatch {
    /// Shared, so cloning the service per call costs one reference count.
    state: Arc<DispatchState>,
}

#[derive(Debug)]
struct DispatchState {
    registry: Arc<Registry>,
    config: RouterConfig,
    telemetry: Telemetry,
    /// When an instance's breaker opens, from `config`.
    trip: Trip,
}

/// When a breaker opens: after `failures` in a row, for `pause`.
#[derive(Debug, Clone, Copy)]
struct Trip {
    failures: u32,
    pause: Duration,
}

impl Dispatch {
    /// Dispatch over `registry`.
    pub fn new(registry: Arc<Registry>, config: RouterConfig, telemetry: Telemetry) -> Dispatch {
        let trip = Trip {
            failures: config.breaker_failures,
            pause: Duration::from_millis(config.breaker_open_ms),
        };
        Dispatch {
            state: Arc::new(DispatchState {
                registry,
                config,
                telemetry,
                trip,
            }),
        }
    }
}

impl Stage for Dispatch {
    type Future = Dispatched;

    /// An in-process handler with a free slot, and no span to make, is
    /// called right here and its future held inline ([`Dispatched`]): no
    /// box, no task, no lock on the way. Every other call (remote, queued,
    /// traced) takes the general path, boxed.
    fn run(&self, mut inv: Box<Invocation>) -> Dispatched {
        let Some(node) = inv.node.clone() else {
            return Dispatched::Ready(Some(Err(Error::Protocol {
                detail: "dispatch without a context (pipeline misassembled)".into(),
            }
            .into_failure())));
        };
        let got = match self.try_acquire(&inv.req.service, inv.pool.take()) {
            Ok(got) => got,
            Err(f) => return Dispatched::Ready(Some(Err(f))),
        };
        match got {
            Some((inst, permit)) if inv.trace.is_none() && matches!(inst.link, Link::Local(_)) => {
                Dispatched::Local(self.local(inv.req, node, inst, permit))
            }
            got => {
                let this = self.clone();
                Dispatched::Boxed(Box::pin(async move { this.dispatch(inv, node, got).await }))
            }
        }
    }
}

/// Dispatch's future: an in-process handler's call held inline, the
/// general path boxed, or an answer known at once.
pub enum Dispatched {
    /// An in-process handler running (the fast path).
    Local(LocalDispatch),
    /// The general path.
    Boxed(BoxFuture<Result<Reply, Failure>>),
    /// Refused before any hand-over.
    Ready(Option<Result<Reply, Failure>>),
}

impl std::fmt::Debug for Dispatched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dispatched::Local(_) => "Dispatched::Local",
            Dispatched::Boxed(_) => "Dispatched::Boxed",
            Dispatched::Ready(_) => "Dispatched::Ready",
        })
    }
}

impl Future for Dispatched {
    type Output = Result<Reply, Failure>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Dispatched::Local(l) => Pin::new(l).poll(cx),
            Dispatched::Boxed(b) => b.as_mut().poll(cx),
            Dispatched::Ready(r) => {
                Poll::Ready(r.take().expect("Dispatched::Ready polled after completion"))
            }
        }
    }
}

/// An in-process handler's call: its slot, its place among the instance's
/// calls in flight, and, until it answers, the duty to cancel the call's
/// branch if it is abandoned.
pub struct LocalDispatch {
    handler: BoxFuture<Result<Bytes, Failure>>,
    inst: Arc<Instance>,
    permit: Option<OwnedSemaphorePermit>,
    node: Arc<Node>,
    trip: Trip,
}

impl Future for LocalDispatch {
    type Output = Result<Reply, Failure>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let result = std::task::ready!(self.handler.as_mut().poll(cx));
        if self.permit.take().is_some() {
            self.inst.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        let failed = matches!(&result, Err(f) if is_instance_failure(f.code));
        record(&self.inst, failed, self.trip);
        Poll::Ready(result.map(local_reply))
    }
}

impl Drop for LocalDispatch {
    fn drop(&mut self) {
        // Still holding the slot: the handler never answered.
        if self.permit.take().is_some() {
            self.inst.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.node.cancel();
        }
    }
}

impl Dispatch {
    /// Calls an in-process handler with the slot already taken.
    fn local(
        &self,
        req: Request,
        node: Arc<Node>,
        inst: Arc<Instance>,
        permit: OwnedSemaphorePermit,
    ) -> LocalDispatch {
        let Link::Local(handler) = &inst.link else {
            unreachable!("Dispatch::local is given in-process instances only");
        };
        node.set_plugin(&inst.plugin);
        // Counted once the handler's future exists: a handler that panics
        // before it returns one leaves no count behind (the permit, a
        // local here, is given back by the unwind).
        let handler = handler.invoke(local_call(req, &node));
        inst.in_flight.fetch_add(1, Ordering::Relaxed);
        LocalDispatch {
            handler,
            inst,
            permit: Some(permit),
            node,
            trip: self.state.trip,
        }
    }

    async fn dispatch(
        &self,
        inv: Box<Invocation>,
        node: Arc<Node>,
        got: Option<(Arc<Instance>, OwnedSemaphorePermit)>,
    ) -> Result<Reply, Failure> {
        let mut req = inv.req;
        // A call that must queue pays for the (boxed, larger) wait.
        let (inst, permit) = match got {
            Some(got) => got,
            None => Box::pin(self.acquire(&node, &req.service, None)).await?,
        };
        node.set_plugin(&inst.plugin);
        // The dispatch span: the provider's handler span becomes its child.
        let span = inv.trace.as_ref().and_then(|cx| {
            self.state.telemetry.start(
                "kernel.dispatch",
                SpanKind::Client,
                SpanParent::Span(cx),
                || {
                    vec![
                        opentelemetry::KeyValue::new("kernel.service", req.service.clone()),
                        opentelemetry::KeyValue::new("kernel.plugin", inst.plugin.to_string()),
                        opentelemetry::KeyValue::new("kernel.instance", inst.id.to_string()),
                        opentelemetry::KeyValue::new("kernel.context", node.path().to_owned()),
                    ]
                },
            )
        });
        if let Some(cx) = &span {
            req.headers
                .insert(headers::TRACEPARENT.to_owned(), trace::traceparent(cx));
        }
        let result = match &inst.link {
            // The fast path's own future, awaited: the same slot, count,
            // breaker and cancel duties.
            Link::Local(_) => self.local(req, node, inst.clone(), permit).await,
            Link::Remote(link) => self.remote(req, &node, &inst, link, permit).await,
        };
        if let Some(cx) = span {
            use opentelemetry::trace::TraceContextExt;
            if let Err(f) = &result {
                cx.span()
                    .set_status(opentelemetry::trace::Status::error(f.message.clone()));
            }
            cx.span().end();
        }
        result
    }

    /// Sends the call to a remote provider and waits for its answer.
    async fn remote(
        &self,
        mut req: Request,
        node: &Arc<Node>,
        inst: &Arc<Instance>,
        link: &RemoteLink,
        permit: OwnedSemaphorePermit,
    ) -> Result<Reply, Failure> {
        let _busy = Busy::enter(inst);
        let headers = passthrough(std::mem::take(&mut req.headers));
        let inv = pb::Invocation {
            call_id: 0,
            headers: provider_headers(node, headers, req.caller.as_deref()),
            service: req.service.clone(),
            method: req.method,
            payload: req.payload,
            content_type: req.content_type,
            timeout_us: node.remaining().map_or(0, |d| d.as_micros().max(1) as u64),
        };
        let Some((id, rx)) = link.send(inv) else {
            record(inst, true, self.state.trip);
            return Err(gone(inst, &req.service).into_failure());
        };
        // Armed until the provider answered: if the layers above drop
        // this future (deadline, cancel, caller gone), the provider gets a
        // cancel frame and the branch is cancelled.
        let _abandon = Abandon { node, link, id };
        let result = rx
            .await
            .unwrap_or_else(|_| Err(gone(inst, &req.service).into_failure()));
        drop(permit);
        record(
            inst,
            matches!(&result, Err(f) if is_instance_failure(f.code)),
            self.state.trip,
        );
        result
    }

    /// Picks an instance and takes a free slot on it, if there is one now.
    fn try_acquire(
        &self,
        service: &str,
        known: Option<Arc<Pool>>,
    ) -> Result<Option<(Arc<Instance>, OwnedSemaphorePermit)>, Failure> {
        let pool = match known {
            Some(p) => p,
            None => match self.state.registry.pool(service) {
                Some(p) => p,
                None => return Err(self.state.registry.missing(service).into()),
            },
        };
        Ok(pool.pick().and_then(|inst| {
            let p = inst.permits.clone().try_acquire_owned().ok()?;
            Some((inst.clone(), p))
        }))
    }

    /// Picks an instance and takes a concurrency slot on it, waiting in the
    /// bounded queue when every slot is taken.
    async fn acquire(
        &self,
        node: &Arc<Node>,
        service: &str,
        mut known: Option<Arc<Pool>>,
    ) -> Result<(Arc<Instance>, OwnedSemaphorePermit), Failure> {
        // Read the clock only if the call has to queue.
        let mut queue_until: Option<Instant> = None;
        loop {
            let no_provider = || Failure::from(self.state.registry.missing(service));
            // The pool a layer above already looked up serves the first try.
            let pool = match known.take() {
                Some(p) => p,
                None => self.state.registry.pool(service).ok_or_else(no_provider)?,
            };
            let Some(inst) = pool.pick().cloned() else {
                if pool.all_open() {
                    return Err(Error::CircuitOpen {
                        service: service.to_owned(),
                        instances: pool.instances.len(),
                    }
                    .into());
                }
                return Err(no_provider());
            };
            if let Ok(p) = inst.permits.clone().try_acquire_owned() {
                return Ok((inst, p));
            }
            if inst.permits.is_closed() {
                tokio::task::yield_now().await;
                continue;
            }
            let queued = inst.waiting.fetch_add(1, Ordering::Relaxed);
            let leave = Waiting(inst.clone());
            if queued >= self.state.config.queue_limit {
                return Err(Error::Saturated {
                    service: service.to_owned(),
                    detail: format!(
                        "all {} slots of {}/{} busy and {} calls queued (router.queue_limit)",
                        inst.max_concurrency, inst.plugin, inst.id, queued
                    ),
                }
                .into_failure());
            }
            let until = *queue_until.get_or_insert_with(|| {
                Instant::now() + Duration::from_millis(self.state.config.queue_timeout_ms)
            });
            let acquired = tokio::select! {
                p = inst.permits.clone().acquire_owned() => p.ok(),
                _ = node.cancelled() => return Err(node.cancel_reason()),
                _ = tokio::time::sleep_until(until.into()) => {
                    return Err(Error::Saturated {
                        service: service.to_owned(),
                        detail: format!(
                            "waited {} ms for a free slot (router.queue_timeout_ms)",
                            self.state.config.queue_timeout_ms
                        ),
                    }
                    .into_failure());
                }
            };
            drop(leave);
            match acquired {
                Some(p) => return Ok((inst, p)),
                // The instance drained or left while we queued: choose again.
                None => continue,
            }
        }
    }
}

/// Tells `inst`'s breaker how a call went.
#[inline]
fn record(inst: &Instance, failed: bool, trip: Trip) {
    if failed {
        inst.failures.fetch_add(1, Ordering::Relaxed);
    }
    inst.breaker.record(failed, trip.failures, trip.pause);
}

/// An in-process handler's answer as a reply.
#[inline]
fn local_reply(payload: Bytes) -> Reply {
    Reply {
        payload,
        content_type: String::new(),
        context: None,
    }
}

/// What an in-process handler is given: the request, with only the
/// headers a caller may pass on.
fn local_call(req: Request, node: &Arc<Node>) -> LocalCall {
    LocalCall {
        service: req.service,
        method: req.method,
        payload: req.payload,
        content_type: req.content_type,
        headers: passthrough(req.headers),
        context: node.clone(),
        caller: req.caller,
    }
}

fn gone(inst: &Instance, service: &str) -> Error {
    Error::ProviderGone {
        plugin: inst.plugin.to_string(),
        instance: inst.id.to_string(),
        service: service.to_owned(),
    }
}

/// Keeps only the headers a caller may pass on (trace, baggage).
fn passthrough(mut h: Headers) -> Headers {
    if !h.is_empty() {
        h.retain(|k, _| headers::PASSTHROUGH.contains(&k.as_str()));
    }
    h
}

/// The header map a remote provider receives.
fn provider_headers(node: &Arc<Node>, mut h: Headers, caller: Option<&str>) -> Headers {
    h.entry(headers::TRACEPARENT.to_owned())
        .or_insert_with(|| node.tree().traceparent().to_owned());
    h.insert(headers::CONTEXT.to_owned(), node.path().to_owned());
    h.insert(
        headers::BUDGET.to_owned(),
        node.tree().budget.remaining_header(node.depth),
    );
    if let Some(c) = caller {
        h.insert(headers::CALLER.to_owned(), c.to_owned());
    }
    h
}

struct Busy<'a>(&'a Instance);

impl<'a> Busy<'a> {
    fn enter(i: &'a Instance) -> Self {
        i.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(i)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Waiting(Arc<Instance>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Makes a remote call abandoned before its provider answered send a
/// cancel frame and cancel its branch.
struct Abandon<'a> {
    node: &'a Arc<Node>,
    link: &'a RemoteLink,
    id: u64,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        // Still pending means the provider never answered.
        if self.link.cancel(self.id) {
            self.node.cancel();
        }
    }
}
