//! Provider instances: the two ways a call reaches a handler.
//!
//! A remote instance is a Register session; invocations go down its channel
//! and results come back through a pending map keyed by call id. A local
//! instance is an in-process handler called directly: no HTTP/2, no envelope
//! encoding. Both share the concurrency gate and in-flight accounting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use kernel_proto::v1::{self as pb, Failure};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::call::{BoxFuture, Headers, Reply};
use crate::context::Node;

/// A call handed to an in-process handler.
#[derive(Debug)]
pub struct LocalCall {
    /// The service called.
    pub service: String,
    /// The method (may be empty).
    pub method: String,
    /// The arguments.
    pub payload: Bytes,
    /// Their content type.
    pub content_type: String,
    /// The caller's pass-through headers (trace, baggage).
    pub headers: Headers,
    /// This call's context node: path, deadline, cancellation, budget.
    pub context: Arc<Node>,
    /// The calling plugin, if known.
    pub caller: Option<Arc<str>>,
}

/// An in-process provider.
pub trait LocalHandler: Send + Sync + 'static {
    /// Runs one call; resolves to the reply's payload (an in-process reply
    /// has no content type of its own). Dropping the future cancels it.
    fn invoke(&self, call: LocalCall) -> BoxFuture<Result<Bytes, Failure>>;
}

/// Frames queued for a remote provider's session writer.
#[derive(Debug)]
pub enum Down {
    /// Run this.
    Invoke(pb::Invocation),
    /// Stop working on this call id.
    Cancel(u64),
    /// You were replaced: finish and close.
    Drain(String),
}

type Pending = oneshot::Sender<Result<Reply, Failure>>;

/// The kernel side of a Register session.
#[derive(Debug)]
pub struct RemoteLink {
    tx: mpsc::UnboundedSender<Down>,
    pending: Mutex<PendingCalls>,
    next_id: AtomicU64,
}

#[derive(Debug, Default)]
struct PendingCalls {
    closed: bool,
    calls: HashMap<u64, Pending>,
}

impl RemoteLink {
    /// A link writing to `tx` (drained by the session's writer).
    pub fn new(tx: mpsc::UnboundedSender<Down>) -> RemoteLink {
        RemoteLink {
            tx,
            pending: Mutex::new(PendingCalls::default()),
            next_id: AtomicU64::new(1),
        }
    }

    /// Sends an invocation and returns its call id and the receiver of its
    /// result, or None when the session is already closed.
    pub fn send(
        &self,
        mut inv: pb::Invocation,
    ) -> Option<(u64, oneshot::Receiver<Result<Reply, Failure>>)> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        inv.call_id = id;
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.pending.lock();
            if p.closed {
                return None;
            }
            p.calls.insert(id, tx);
        }
        if self.tx.send(Down::Invoke(inv)).is_err() {
            self.pending.lock().calls.remove(&id);
            return None;
        }
        Some((id, rx))
    }

    /// Completes a call with the provider's result. Unknown ids (cancelled or
    /// duplicate) are ignored and reported as false.
    pub fn complete(&self, call_id: u64, result: Result<Reply, Failure>) -> bool {
        let tx = self.pending.lock().calls.remove(&call_id);
        match tx {
            Some(tx) => {
                let _ = tx.send(result);
                true
            }
            None => false,
        }
    }

    /// Abandons a call: forget it and tell the provider. Returns false when
    /// the result had already arrived (nothing to cancel).
    pub fn cancel(&self, call_id: u64) -> bool {
        if self.pending.lock().calls.remove(&call_id).is_some() {
            let _ = self.tx.send(Down::Cancel(call_id));
            return true;
        }
        false
    }

    /// Sends the drain notice.
    pub fn drain(&self, reason: String) {
        let _ = self.tx.send(Down::Drain(reason));
    }

    /// Marks the session closed and fails every in-flight call at once:
    /// dropping the result senders makes each waiting caller report
    /// `UNAVAILABLE` naming the service it called.
    pub fn close(&self) {
        let calls = {
            let mut p = self.pending.lock();
            p.closed = true;
            std::mem::take(&mut p.calls)
        };
        drop(calls);
    }
}

/// How calls reach an instance.
pub enum Link {
    /// Over its Register stream.
    Remote(RemoteLink),
    /// By calling a handler in this process.
    Local(Arc<dyn LocalHandler>),
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Link::Remote(r) => r.fmt(f),
            Link::Local(_) => f.write_str("Local"),
        }
    }
}

/// One registered provider instance.
#[derive(Debug)]
pub struct Instance {
    /// The plugin name.
    pub plugin: Arc<str>,
    /// Unique instance id.
    pub id: Arc<str>,
    /// Services it provides, with their declarations.
    pub services: Vec<pb::ServiceDecl>,
    /// How calls reach it.
    pub link: Link,
    /// Its concurrency gate; closed when it drains or goes away, which sends
    /// queued callers back to provider selection.
    pub permits: Arc<Semaphore>,
    /// Calls waiting on the gate.
    pub waiting: AtomicUsize,
    /// Calls dispatched and not finished.
    pub in_flight: AtomicUsize,
    /// Set once the instance was replaced.
    pub draining: AtomicBool,
    /// Its declared concurrency.
    pub max_concurrency: usize,
    /// Compiled argument schemas (service → method → validator).
    pub schemas: crate::schema::Schemas,
    /// Compiled event schemas it declared, by topic pattern.
    pub topic_schemas: Vec<(String, Arc<jsonschema::Validator>)>,
    /// Its circuit breaker.
    pub breaker: crate::breaker::Breaker,
    /// Calls it failed (the codes that count against its breaker), ever.
    pub failures: AtomicU64,
}

impl Instance {
    /// A new instance accepting `max_concurrency` calls at once; fails when
    /// one of its schemas does not compile.
    pub fn new(
        plugin: Arc<str>,
        id: Arc<str>,
        services: Vec<pb::ServiceDecl>,
        link: Link,
        max_concurrency: usize,
    ) -> Result<Instance, crate::error::Error> {
        let schemas = crate::schema::compile(&services)?;
        Ok(Instance {
            plugin,
            id,
            services,
            link,
            permits: Arc::new(Semaphore::new(max_concurrency.min(Semaphore::MAX_PERMITS))),
            waiting: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            max_concurrency,
            schemas,
            topic_schemas: Vec::new(),
            breaker: crate::breaker::Breaker::default(),
            failures: AtomicU64::new(0),
        })
    }

    /// Adds the event schemas the instance declared (pattern → schema text);
    /// fails when a pattern is malformed or a schema does not compile.
    pub fn with_topic_schemas(
        mut self,
        declared: &std::collections::HashMap<String, String>,
    ) -> Result<Instance, crate::error::Error> {
        self.topic_schemas = crate::schema::compile_topics(declared)?;
        Ok(self)
    }

    /// `remote` or `in-process`.
    pub fn transport(&self) -> &'static str {
        match self.link {
            Link::Remote(_) => "remote",
            Link::Local(_) => "in-process",
        }
    }
}
