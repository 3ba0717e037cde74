//! The call router: from a kernel-level [`Request`] to a provider's reply.
//!
//! One path for every caller (unary, stream, in-process) and every provider
//! (remote, in-process): context child and budget, deadline check, provider
//! selection, the concurrency gate with its bounded queue, dispatch, and the
//! wait for the result racing the deadline and cancellation. A drop guard
//! makes an abandoned call (caller gone, stream cancel) send a cancel frame
//! to the provider and cancel the call's branch.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kernel_proto::v1::{self as pb, Failure};
use tokio::sync::OwnedSemaphorePermit;

use crate::config::RouterConfig;
use crate::context::{headers, ChildSpec, Contexts, Node, Parent};
use crate::error::{push_hop, Error};
use crate::names;
use crate::provider::{Headers, Instance, Link, LocalCall, Reply};
use crate::registry::Registry;
use crate::stats::Stats;

/// A call as the kernel sees it, whoever made it.
#[derive(Debug, Default)]
pub struct Request {
    /// The service to call.
    pub service: String,
    /// The method (may be empty).
    pub method: String,
    /// The arguments.
    pub payload: Bytes,
    /// Their content type (empty = JSON).
    pub content_type: String,
    /// Caller-supplied headers; only trace, baggage and budget are honoured.
    pub headers: Headers,
    /// Where the call hangs in the context tree.
    pub parent: Parent,
    /// The caller's absolute deadline.
    pub deadline: Option<Instant>,
    /// The calling plugin, as the kernel knows it (never from a header).
    pub caller: Option<Arc<str>>,
}

/// Routes calls to providers.
#[derive(Debug)]
pub struct Router {
    /// Who provides what.
    pub registry: Arc<Registry>,
    /// Live context trees.
    pub contexts: Arc<Contexts>,
    config: RouterConfig,
    stats: Arc<Stats>,
}

impl Router {
    /// A router over a registry and context trees.
    pub fn new(
        registry: Arc<Registry>,
        contexts: Arc<Contexts>,
        config: RouterConfig,
        stats: Arc<Stats>,
    ) -> Router {
        Router {
            registry,
            contexts,
            config,
            stats,
        }
    }

    /// Runs one call to completion. The error carries the causality chain,
    /// with this hop appended.
    pub async fn call(&self, req: Request) -> Result<Reply, Failure> {
        Stats::inc(&self.stats.calls);
        let out = self.call_inner(req).await;
        if out.is_err() {
            Stats::inc(&self.stats.call_errors);
        }
        out
    }

    async fn call_inner(&self, mut req: Request) -> Result<Reply, Failure> {
        let service = std::mem::take(&mut req.service);
        let fail = |e: Error, context: &str, plugin: &str| {
            let mut f = e.into_failure();
            push_hop(&mut f, context, &service, plugin);
            f
        };
        // A registered name is valid by construction; only an unknown one
        // needs checking (INVALID_ARGUMENT beats NOT_FOUND for a bad name).
        if self.registry.pool(&service).is_none() {
            if let Err(e) = names::validate_service(&service) {
                return Err(fail(e, "", ""));
            }
        }
        if req.payload.len() > self.config.max_payload_bytes {
            let e = Error::PayloadTooLarge {
                size: req.payload.len(),
                limit: self.config.max_payload_bytes,
            };
            return Err(fail(e, "", ""));
        }
        let parent = std::mem::take(&mut req.parent);
        let node = self
            .contexts
            .child(
                parent,
                ChildSpec {
                    service: &service,
                    caller: req.caller.as_deref(),
                    deadline: req.deadline,
                    budget_header: header(&req.headers, headers::BUDGET),
                    traceparent: header(&req.headers, headers::TRACEPARENT),
                    is_call: true,
                },
            )
            .map_err(|e| fail(e, "", ""))?;
        match self.dispatch(&node, service.clone(), req).await {
            Ok(r) => Ok(r),
            Err(mut f) => {
                let plugin = node.plugin.get().map(|p| &**p).unwrap_or("");
                push_hop(&mut f, &node.path, &service, plugin);
                Err(f)
            }
        }
    }

    async fn dispatch(
        &self,
        node: &Arc<Node>,
        service: String,
        req: Request,
    ) -> Result<Reply, Failure> {
        if node.cancel.is_cancelled() {
            return Err(node.cancel_reason());
        }
        if node.deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(self.deadline_error(node, &service).into_failure());
        }
        let (inst, permit) = self.acquire(node, &service).await?;
        let _ = node.plugin.set(inst.plugin.clone());
        let _busy = InFlight::enter(&inst);
        let result = match &inst.link {
            Link::Local(handler) => {
                let call = LocalCall {
                    service,
                    method: req.method,
                    payload: req.payload,
                    content_type: req.content_type,
                    headers: passthrough(req.headers),
                    context: node.clone(),
                    caller: req.caller,
                };
                let mut guard = Abandon {
                    node,
                    remote: None,
                    done: false,
                };
                let out = self.race(node, handler.invoke(call)).await;
                guard.done = out.is_ok();
                out.unwrap_or_else(Err)
            }
            Link::Remote(link) => {
                let inv = pb::Invocation {
                    call_id: 0,
                    headers: provider_headers(node, req.headers, req.caller.as_deref()),
                    service: service.clone(),
                    method: req.method,
                    payload: req.payload,
                    content_type: req.content_type,
                    timeout_us: node.remaining().map_or(0, |d| d.as_micros().max(1) as u64),
                };
                let Some((id, rx)) = link.send(inv) else {
                    return Err(gone(&inst, &service).into_failure());
                };
                // Armed until the provider answered: a deadline, a cancelled
                // branch or a dropped future all send the provider a cancel.
                let _guard = Abandon {
                    node,
                    remote: Some((link, id)),
                    done: false,
                };
                self.race(node, async {
                    rx.await
                        .unwrap_or_else(|_| Err(gone(&inst, &service).into_failure()))
                })
                .await
                .unwrap_or_else(Err)
            }
        };
        drop(permit);
        result
    }

    /// Waits for `fut`, or the deadline, or cancellation of the branch. The
    /// outer error means the kernel gave up before the provider answered.
    async fn race<F>(&self, node: &Arc<Node>, fut: F) -> Result<Result<Reply, Failure>, Failure>
    where
        F: std::future::Future<Output = Result<Reply, Failure>>,
    {
        let sleep = async {
            match node.deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            r = fut => Ok(r),
            _ = node.cancel.cancelled() => Err(node.cancel_reason()),
            _ = sleep => Err(self.deadline_error(node, &node.service).into_failure()),
        }
    }

    fn deadline_error(&self, node: &Node, service: &str) -> Error {
        Error::DeadlineExceeded {
            service: service.to_owned(),
            context: node.path.clone(),
        }
    }

    /// Picks an instance and takes a concurrency slot on it, waiting in the
    /// bounded queue when every slot is taken.
    async fn acquire(
        &self,
        node: &Arc<Node>,
        service: &str,
    ) -> Result<(Arc<Instance>, OwnedSemaphorePermit), Failure> {
        let queue_until = Instant::now() + Duration::from_millis(self.config.queue_timeout_ms);
        loop {
            let pool = self.registry.pool(service).ok_or_else(|| {
                Error::NoProvider {
                    service: service.to_owned(),
                }
                .into_failure()
            })?;
            let Some(inst) = pool.pick().cloned() else {
                return Err(Error::NoProvider {
                    service: service.to_owned(),
                }
                .into_failure());
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
            if queued >= self.config.queue_limit {
                return Err(Error::Saturated {
                    service: service.to_owned(),
                    detail: format!(
                        "all {} slots of {}/{} busy and {} calls queued (router.queue_limit)",
                        inst.max_concurrency, inst.plugin, inst.id, queued
                    ),
                }
                .into_failure());
            }
            let until = node.deadline.map_or(queue_until, |d| d.min(queue_until));
            let acquired = tokio::select! {
                p = inst.permits.clone().acquire_owned() => p.ok(),
                _ = node.cancel.cancelled() => return Err(node.cancel_reason()),
                _ = tokio::time::sleep_until(until.into()) => {
                    if node.deadline.is_some_and(|d| d <= Instant::now()) {
                        return Err(self.deadline_error(node, service).into_failure());
                    }
                    return Err(Error::Saturated {
                        service: service.to_owned(),
                        detail: format!(
                            "waited {} ms for a free slot (router.queue_timeout_ms)",
                            self.config.queue_timeout_ms
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

/// A header value; skips hashing entirely for the common empty map.
#[inline]
fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    if h.is_empty() {
        None
    } else {
        h.get(name).map(String::as_str)
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
    h.retain(|k, _| headers::PASSTHROUGH.contains(&k.as_str()));
    h
}

/// The header map a remote provider receives.
fn provider_headers(node: &Node, caller_headers: Headers, caller: Option<&str>) -> Headers {
    let mut h = passthrough(caller_headers);
    h.entry(headers::TRACEPARENT.to_owned())
        .or_insert_with(|| node.tree.traceparent.clone());
    h.insert(headers::CONTEXT.to_owned(), node.path.clone());
    h.insert(
        headers::BUDGET.to_owned(),
        node.tree.budget.remaining_header(node.depth),
    );
    if let Some(c) = caller {
        h.insert(headers::CALLER.to_owned(), c.to_owned());
    }
    h
}

struct InFlight<'a>(&'a Instance);

impl<'a> InFlight<'a> {
    fn enter(i: &'a Instance) -> Self {
        i.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(i)
    }
}

impl Drop for InFlight<'_> {
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

/// Makes an abandoned call (future dropped, deadline passed, branch
/// cancelled) cancel its branch and, for a remote provider still working on
/// it, send a cancel frame.
struct Abandon<'a> {
    node: &'a Arc<Node>,
    remote: Option<(&'a crate::provider::RemoteLink, u64)>,
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
            self.node.cancel.cancel();
        }
    }
}
