//! The Call and CallStream RPCs: both enter the same router.

use std::collections::HashMap;
use std::sync::Arc;

use futures::Stream;
use kernel_proto::v1::{self as pb, CallStreamDown, CallStreamUp};
use parking_lot::Mutex;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tonic::{Request, Status, Streaming};

use crate::batch::batched;
use crate::error::{failure_to_status, Error};
use crate::kernel::Kernel;
use crate::router;
use crate::server::metadata;
use futures::StreamExt;

/// A unary call: context from metadata.
pub(crate) async fn unary(
    kernel: &Kernel,
    req: Request<pb::CallRequest>,
) -> Result<pb::CallResponse, Status> {
    let meta = req.metadata();
    let headers = metadata::headers_from(meta);
    let parent = metadata::parent_from(&headers);
    let deadline = metadata::deadline_from(meta);
    let caller = metadata::caller_from(meta);
    let body = req.into_inner();
    let reply = kernel
        .call(router::Request {
            service: body.service,
            method: body.method,
            payload: body.payload,
            content_type: body.content_type,
            headers,
            parent,
            deadline,
            caller,
        })
        .await
        .map_err(|f| failure_to_status(&f))?;
    Ok(pb::CallResponse {
        payload: reply.payload,
        content_type: reply.content_type,
    })
}

type InFlight = Arc<Mutex<HashMap<u64, AbortHandle>>>;

/// Calls one CallStream may have running or answered-but-unread. At the cap
/// the kernel stops reading the stream (HTTP/2 flow control then pushes
/// back on the caller), so a client that never reads its replies cannot
/// make the node buffer without bound.
const MAX_OUTSTANDING: usize = 4096;

type Outgoing = (pb::CallReply, OwnedSemaphorePermit);

/// A multiplexed call stream: each call runs as its own task; a cancel frame
/// or the caller going away aborts it, which cancels it downstream.
pub(crate) fn stream(
    kernel: Arc<Kernel>,
    req: Request<Streaming<CallStreamUp>>,
) -> impl Stream<Item = Result<CallStreamDown, Status>> + Send + 'static {
    let caller = metadata::caller_from(req.metadata());
    let mut inbound = req.into_inner();
    let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
    tokio::spawn(async move {
        let in_flight: InFlight = Arc::default();
        let permits = Arc::new(Semaphore::new(MAX_OUTSTANDING));
        loop {
            let frame = tokio::select! {
                f = inbound.message() => f,
                _ = kernel.shutdown.cancelled() => break,
            };
            let frame = match frame {
                Ok(Some(f)) => f,
                // Half-close: the caller sends nothing more but still reads
                // replies; its calls run until it stops reading (the reply
                // stream is dropped), then they are abandoned.
                Ok(None) => {
                    tx.closed().await;
                    break;
                }
                Err(status) => {
                    tracing::debug!(cause = %status.message(), "call stream broke");
                    break;
                }
            };
            for id in frame.cancels {
                if let Some(h) = in_flight.lock().remove(&id) {
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
                start(&kernel, &in_flight, &tx, call, caller.clone(), permit);
            }
        }
        // The caller is gone: abandon its calls (providers get cancel frames).
        for (_, h) in in_flight.lock().drain() {
            h.abort();
        }
    });
    // Folding a reply into a frame releases its permit: it is being read.
    batched(rx, None, |items: Vec<Outgoing>| CallStreamDown {
        replies: items.into_iter().map(|(r, _permit)| r).collect(),
    })
    .map(Ok)
}

fn start(
    kernel: &Arc<Kernel>,
    in_flight: &InFlight,
    tx: &mpsc::UnboundedSender<Outgoing>,
    call: pb::CallFrame,
    caller: Option<Arc<str>>,
    permit: OwnedSemaphorePermit,
) {
    let id = call.id;
    let headers = call.headers;
    let req = router::Request {
        parent: metadata::parent_from(&headers),
        service: call.service,
        method: call.method,
        payload: call.payload,
        content_type: call.content_type,
        headers,
        deadline: metadata::deadline_from_us(call.timeout_us),
        caller,
    };
    let kernel = kernel.clone();
    let map = in_flight.clone();
    // Held across spawn so the task cannot remove its entry before it exists.
    let mut guard = in_flight.lock();
    if guard.contains_key(&id) {
        let err = Error::Protocol {
            detail: format!("call id {id} is already in flight on this stream"),
        };
        let reply = pb::CallReply {
            id,
            error: Some(err.into_failure()),
            ..Default::default()
        };
        let _ = tx.send((reply, permit));
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
        map.lock().remove(&id);
        let _ = tx.send((reply, permit));
    });
    guard.insert(id, handle.abort_handle());
}
