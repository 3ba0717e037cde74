//! The Call and CallStream RPCs: both enter the same router.

use std::collections::HashMap;
use std::sync::Arc;

use futures::Stream;
use kernel_proto::v1::{self as pb, CallStreamDown, CallStreamUp};
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tonic::{Request, Response, Status, Streaming};

use crate::server::{metadata, stream_fault};
use futures::StreamExt;
use kernel_core::Kernel;
use kernel_core::Request as CallRequest;
use kernel_core::{Error, Work};
use kernel_proto::batch::batched;
use kernel_proto::failure::failure_to_status;
use kernel_proto::headers;

/// A unary call: context from metadata. Tracked as a call of the node's
/// lifecycle; refused during shutdown, and answered `UNAVAILABLE` (and
/// cancelled downstream) if still running when the grace period ends.
///
/// The response's initial metadata names the context the call ran under
/// (`x-kernel-context`) and its trace (`x-kernel-trace-id`), so a unary
/// caller can find its call in GetContext, the logs and the traces.
pub(crate) async fn unary(
    kernel: &Kernel,
    req: Request<pb::CallRequest>,
) -> Result<Response<pb::CallResponse>, Status> {
    let life = kernel.lifecycle();
    if life.is_draining() {
        return Err(Error::ShuttingDown.into());
    }
    let _tracked = life.token(Work::Calls);
    let meta = req.metadata();
    let headers = metadata::headers_from(meta);
    let parent = metadata::parent_from(&headers);
    let deadline = metadata::deadline_from(meta);
    let caller = metadata::caller_from(meta);
    let body = req.into_inner();
    let call = kernel.call(CallRequest {
        service: body.service,
        method: body.method,
        payload: body.payload,
        content_type: body.content_type,
        headers,
        parent,
        deadline,
        caller,
        report_context: true,
    });
    let reply = tokio::select! {
        r = call => r.map_err(|f| failure_to_status(&f))?,
        _ = life.stopped() => return Err(Error::ShuttingDown.into()),
    };
    let mut response = Response::new(pb::CallResponse {
        payload: reply.payload,
        content_type: reply.content_type,
    });
    if let Some(node) = &reply.context {
        let meta = response.metadata_mut();
        // Paths and trace ids are ASCII by construction; a value that
        // somehow is not is left out rather than failing the call.
        if let Ok(v) = node.path().parse() {
            meta.insert(headers::CONTEXT, v);
        }
        let trace_id = node.tree().traceparent().split('-').nth(1).unwrap_or("");
        if let Ok(v) = trace_id.parse() {
            meta.insert(headers::TRACE_ID, v);
        }
    }
    Ok(response)
}

/// The calls of one CallStream still running, by id, and a wake-up for
/// when the last one ends.
#[derive(Default)]
struct Running {
    calls: Mutex<HashMap<u64, AbortHandle>>,
    idle: Notify,
}

impl Running {
    /// Forgets call `id`; true when it was still listed (nobody answered
    /// it for the task yet).
    fn finish(&self, id: u64) -> bool {
        let (was, empty) = {
            let mut calls = self.calls.lock();
            (calls.remove(&id).is_some(), calls.is_empty())
        };
        if empty {
            self.idle.notify_one();
        }
        was
    }

    fn is_empty(&self) -> bool {
        self.calls.lock().is_empty()
    }
}

/// Calls one CallStream may have running or answered-but-unread. At the cap
/// the kernel stops reading the stream (HTTP/2 flow control then pushes
/// back on the caller), so a client that never reads its replies cannot
/// make the node buffer without bound.
const MAX_OUTSTANDING: usize = 4096;

/// A reply and, for a call's own reply, its slot among the outstanding.
type Outgoing = (pb::CallReply, Option<OwnedSemaphorePermit>);

/// A multiplexed call stream: each call runs as its own task; a cancel frame
/// or the caller going away aborts it, which cancels it downstream.
///
/// The stream ends once the caller half-closed it, or the node began to
/// shut down, and no call on it is still running. During shutdown new
/// calls are answered `UNAVAILABLE` at once; when the grace period ends,
/// every call still running is answered `UNAVAILABLE` and cancelled.
pub(crate) fn stream(
    kernel: Arc<Kernel>,
    req: Request<Streaming<CallStreamUp>>,
) -> impl Stream<Item = Result<CallStreamDown, Status>> + Send + 'static {
    let caller = metadata::caller_from(req.metadata());
    let mut inbound = req.into_inner();
    let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
    let (end, ended) = tokio::sync::oneshot::channel();
    let life = kernel.lifecycle().clone();
    life.clone().spawn(Work::Calls, async move {
        let running = Arc::new(Running::default());
        let permits = Arc::new(Semaphore::new(MAX_OUTSTANDING));
        let mut half_closed = false;
        loop {
            let draining = life.is_draining();
            if (half_closed || draining) && running.is_empty() {
                break;
            }
            tokio::select! {
                frame = inbound.message(), if !half_closed => match frame {
                    Ok(Some(frame)) => {
                        for id in frame.cancels {
                            if let Some(h) = running.calls.lock().remove(&id) {
                                h.abort();
                            }
                        }
                        for call in frame.calls {
                            let permit = tokio::select! {
                                p = permits.clone().acquire_owned() => match p {
                                    Ok(p) => p,
                                    Err(_) => return,
                                },
                                _ = tx.closed() => break,
                            };
                            if life.is_draining() {
                                let reply = refusal(call.id, Error::ShuttingDown);
                                let _ = tx.send((reply, Some(permit)));
                            } else {
                                start(&kernel, &running, &tx, call, caller.clone(), permit);
                            }
                        }
                    }
                    // Half-close: the caller sends nothing more but still
                    // reads the replies of the calls it made.
                    Ok(None) => half_closed = true,
                    Err(status) => {
                        tracing::debug!(cause = %status.message(), "call stream broke");
                        // An unreadable frame: every call still running is
                        // cancelled and answered, then the stream ends with
                        // the fault's status.
                        if let Some(fault) = stream_fault::fault(&status) {
                            for (id, h) in running.calls.lock().drain() {
                                h.abort();
                                let reply = refusal(id, Error::Remote(kernel_proto::v1::Failure {
                                    code: fault.code() as i32,
                                    message: fault.message().to_owned(),
                                    causality: Vec::new(),
                                }));
                                let _ = tx.send((reply, None));
                            }
                            let _ = end.send(fault);
                        }
                        break;
                    }
                },
                _ = running.idle.notified() => {}
                _ = life.draining(), if !draining => {}
                _ = life.stopped() => {
                    // The grace period is over: every call still running
                    // is answered now, never left without a reply.
                    for (id, h) in running.calls.lock().drain() {
                        h.abort();
                        let _ = tx.send((refusal(id, Error::ShuttingDown), None));
                    }
                    break;
                }
                // The caller stopped reading: its calls are abandoned.
                _ = tx.closed() => break,
            }
        }
        // The caller is gone: abandon its calls (providers get cancel frames).
        for (_, h) in running.calls.lock().drain() {
            h.abort();
        }
    });
    // Folding a reply into a frame releases its permit: it is being read.
    let replies = batched(rx, None, |items: Vec<Outgoing>| CallStreamDown {
        replies: items.into_iter().map(|(r, _permit)| r).collect(),
    })
    .map(Ok);
    stream_fault::ended_with(replies, ended)
}

/// A reply that refuses call `id` with `err`.
fn refusal(id: u64, err: Error) -> pb::CallReply {
    pb::CallReply {
        id,
        error: Some(err.into()),
        ..Default::default()
    }
}

fn start(
    kernel: &Arc<Kernel>,
    running: &Arc<Running>,
    tx: &mpsc::UnboundedSender<Outgoing>,
    call: pb::CallFrame,
    caller: Option<Arc<str>>,
    permit: OwnedSemaphorePermit,
) {
    let id = call.id;
    let headers = call.headers;
    let req = CallRequest {
        parent: metadata::parent_from(&headers),
        service: call.service,
        method: call.method,
        payload: call.payload,
        content_type: call.content_type,
        headers,
        deadline: metadata::deadline_from_us(call.timeout_us),
        caller,
        report_context: false,
    };
    let kernel = kernel.clone();
    let list = running.clone();
    // Held across spawn so the task cannot remove its entry before it exists.
    let mut guard = running.calls.lock();
    if guard.contains_key(&id) {
        let err = Error::Protocol {
            detail: format!("call id {id} is already in flight on this stream"),
        };
        let _ = tx.send((refusal(id, err), Some(permit)));
        return;
    }
    let tx = tx.clone();
    let handle = tokio::spawn(async move {
        let reply = match kernel.call(req).await {
            Ok(r) => pb::CallReply {
                id,
                payload: r.payload,
                content_type: r.content_type,
                error: None,
            },
            Err(f) => pb::CallReply {
                id,
                error: Some(f),
                ..Default::default()
            },
        };
        // Not listed any more: the shutdown already answered it.
        if list.finish(id) {
            let _ = tx.send((reply, Some(permit)));
        }
    });
    guard.insert(id, handle.abort_handle());
}
