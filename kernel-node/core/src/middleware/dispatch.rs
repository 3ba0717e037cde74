//! Dispatch, the innermost stage: provider selection, concurrency gate and
//! hand-over.
//!
//! Dispatch picks an instance, takes a slot on its concurrency gate
//! (waiting in the bounded queue when all are busy), and hands the call
//! over: an in-process handler is called directly, a remote one gets an
//! invocation frame. A drop guard makes an abandoned call (deadline, branch
//! cancel, caller gone: the stages above drop this future) send the
//! provider a cancel frame and cancel the call's branch.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kernel_proto::headers;
use kernel_proto::trace::{self, SpanKind, SpanParent, Telemetry};
use kernel_proto::v1::{self as pb, Failure};
use tokio::sync::OwnedSemaphorePermit;

use crate::breaker::is_instance_failure;
use crate::call::{BoxFuture, Headers, Reply};
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
}

impl Dispatch {
    /// Dispatch over `registry`.
    pub fn new(registry: Arc<Registry>, config: RouterConfig, telemetry: Telemetry) -> Dispatch {
        Dispatch {
            state: Arc::new(DispatchState {
                registry,
                config,
                telemetry,
            }),
        }
    }
}

impl Stage for Dispatch {
    type Future = BoxFuture<Result<Reply, Failure>>;

    fn run(&self, inv: Box<Invocation>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.dispatch(inv).await })
    }
}

impl Dispatch {
    async fn dispatch(&self, inv: Box<Invocation>) -> Result<Reply, Failure> {
        let Some(node) = inv.node.clone() else {
            return Err(Error::Protocol {
                detail: "dispatch without a context (pipeline misassembled)".into(),
            }
            .into_failure());
        };
        let req = inv.req;
        let service = req.service;
        // Fast path without an await: a free slot on the chosen instance.
        // Only a call that must queue pays for the (boxed, larger) wait.
        let (inst, permit) = match self.try_acquire(&service, inv.pool)? {
            Some(got) => got,
            None => Box::pin(self.acquire(&node, &service, None)).await?,
        };
        node.set_plugin(&inst.plugin);
        let _busy = Busy::enter(&inst);
        // The dispatch span: the provider's handler span becomes its child.
        let span = inv.trace.as_ref().and_then(|cx| {
            self.state.telemetry.start(
                "kernel.dispatch",
                SpanKind::Client,
                SpanParent::Span(cx),
                || {
                    vec![
                        opentelemetry::KeyValue::new("kernel.service", service.clone()),
                        opentelemetry::KeyValue::new("kernel.plugin", inst.plugin.to_string()),
                        opentelemetry::KeyValue::new("kernel.instance", inst.id.to_string()),
                        opentelemetry::KeyValue::new("kernel.context", node.path().to_owned()),
                    ]
                },
            )
        });
        let mut headers = passthrough(req.headers);
        if let Some(cx) = &span {
            headers.insert(headers::TRACEPARENT.to_owned(), trace::traceparent(cx));
        }
        let result = match &inst.link {
            Link::Local(handler) => {
                let call = LocalCall {
                    service,
                    method: req.method,
                    payload: req.payload,
                    content_type: req.content_type,
                    headers,
                    context: node.clone(),
                    caller: req.caller,
                };
                let mut guard = Abandon {
                    node: &node,
                    remote: None,
                    done: false,
                };
                let out = handler.invoke(call).await;
                guard.done = true;
                out
            }
            Link::Remote(link) => {
                let inv = pb::Invocation {
                    call_id: 0,
                    headers: provider_headers(&node, headers, req.caller.as_deref()),
                    service: service.clone(),
                    method: req.method,
                    payload: req.payload,
                    content_type: req.content_type,
                    timeout_us: node.remaining().map_or(0, |d| d.as_micros().max(1) as u64),
                };
                let Some((id, rx)) = link.send(inv) else {
                    self.record(&inst, true);
                    return Err(gone(&inst, &service).into_failure());
                };
                // Armed until the provider answered: if the layers above drop
                // this future (deadline, cancel, caller gone), the provider
                // gets a cancel frame.
                let _guard = Abandon {
                    node: &node,
                    remote: Some((link, id)),
                    done: false,
                };
                rx.await
                    .unwrap_or_else(|_| Err(gone(&inst, &service).into_failure()))
            }
        };
        drop(permit);
        self.record(
            &inst,
            matches!(&result, Err(f) if is_instance_failure(f.code)),
        );
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

    /// Tells the instance's breaker how a call went.
    #[inline]
    fn record(&self, inst: &Instance, failed: bool) {
        if failed {
            inst.failures.fetch_add(1, Ordering::Relaxed);
        }
        let c = &self.state.config;
        inst.breaker.record(
            failed,
            c.breaker_failures,
            Duration::from_millis(c.breaker_open_ms),
        );
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

/// Makes an abandoned call cancel its branch and, for a remote provider
/// still working on it, send a cancel frame.
struct Abandon<'a> {
    node: &'a Arc<Node>,
    remote: Option<(&'a RemoteLink, u64)>,
    done: bool,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        let abandoned = match self.remote {
            // Still pending means the provider never answered.
            Some((link, id)) => link.cancel(id),
            None => !self.done,
        };
        if abandoned {
            self.node.cancel();
        }
    }
}
