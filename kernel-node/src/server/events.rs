//! The Publish, PublishStream and Subscribe RPCs.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::stream::FuturesOrdered;
use futures::{FutureExt, Stream};
use kernel_proto::v1::{
    self as pb, AckMode, PublishStreamDown, PublishStreamUp, SubscribeDown, SubscribeUp,
};
use tokio::sync::mpsc;
use tonic::{Request, Status, Streaming};

use crate::server::{metadata, stream_fault};
use futures::StreamExt;
use kernel_core::Error;
use kernel_core::Kernel;
use kernel_core::{Publication, SubscribeRequest};
use kernel_core::{Subscription, Take, Work};
use kernel_proto::batch::batched;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// Largest batch of events sent in one Subscribe frame: larger batches
/// spend their time growing the client's decode buffers, smaller ones pay
/// per frame (`kernel-bench events`; figures in `docs/PERFORMANCE.md`).
const DELIVERY_BATCH: usize = 64;

/// A unary publish: context from metadata.
pub(crate) async fn publish(
    kernel: &Kernel,
    req: Request<pb::PublishRequest>,
) -> Result<pb::PublishResponse, Status> {
    let meta = req.metadata();
    let ctx = metadata::headers_from(meta);
    let parent = metadata::parent_from(&ctx);
    let deadline = metadata::deadline_from(meta);
    let caller = metadata::caller_from(meta);
    let body = req.into_inner();
    let mut headers = body.headers;
    headers.extend(ctx);
    let accepted = kernel
        .publish(Publication {
            topic: body.topic,
            payload: body.payload,
            content_type: body.content_type,
            headers,
            parent: resolve(kernel, parent),
            deadline,
            caller,
            id: None,
            settled: None,
        })
        .await?;
    Ok(pb::PublishResponse {
        event_id: accepted.event_id(),
        matched: accepted.matched,
    })
}

/// Publishes carry their parent as a live node when the kernel knows it, so
/// the events budget is charged to the right tree.
fn resolve(kernel: &Kernel, parent: kernel_core::Parent) -> kernel_core::Parent {
    match parent {
        kernel_core::Parent::Path(p) => kernel
            .contexts()
            .find(&p)
            .map_or(kernel_core::Parent::Path(p), kernel_core::Parent::Node),
        other => other,
    }
}

/// Pipelined publishing. Events of one stream are accepted in order; the
/// acks come back in that order, one frame per frame of events (sent early
/// when an event must wait for buffer space, so earlier acks never wait
/// behind it). With compact acks (bulk publishing) a frame answers its
/// accepted events with `accepted_through` alone.
///
/// An event a durable subscription wants is answered only once it is
/// stored; the next events are accepted meanwhile (up to [`KEEPING`] of
/// them waiting for their answer), so a stream's writes reach the database
/// in batches rather than one round trip per event.
pub(crate) fn publish_stream(
    kernel: Arc<Kernel>,
    req: Request<Streaming<PublishStreamUp>>,
) -> impl Stream<Item = Result<PublishStreamDown, Status>> + Send + 'static {
    let caller = metadata::caller_from(req.metadata());
    let mut inbound = req.into_inner();
    let (tx, rx) = mpsc::unbounded_channel::<PublishStreamDown>();
    let (end, ended) = tokio::sync::oneshot::channel();
    let life = kernel.lifecycle().clone();
    life.clone().spawn(Work::Calls, async move {
        let mut compact = false;
        // Answers still waiting for their events to be stored, in order.
        let mut waiting: FuturesOrdered<Answer> = FuturesOrdered::new();
        // Once the node drains, no new frame is read: events not read were
        // never accepted, and the stream ends (UNAVAILABLE) once the ones
        // read are answered.
        loop {
            let frame = tokio::select! {
                f = inbound.message(), if waiting.len() < KEEPING => match f {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    // An unreadable frame ends the stream with its status;
                    // events acked before it stay accepted.
                    Err(status) => {
                        if let Some(fault) = stream_fault::fault(&status) {
                            let _ = end.send(fault);
                        }
                        break;
                    }
                },
                Some((seq, out)) = waiting.next(), if !waiting.is_empty() => {
                    let mut down = PublishStreamDown::default();
                    answer(&mut down, compact, seq, out);
                    while let Some(Some((seq, out))) = waiting.next().now_or_never() {
                        answer(&mut down, compact, seq, out);
                    }
                    if tx.send(down).is_err() {
                        return;
                    }
                    continue;
                }
                _ = life.draining() => break,
            };
            compact |= frame.compact_acks;
            // One clock read per frame: its items arrived together.
            let mut received = None;
            let mut down = PublishStreamDown::default();
            for item in frame.items {
                let seq = item.seq;
                let ev = item.event.unwrap_or_default();
                let headers = ev.headers;
                let parent = resolve(&kernel, metadata::parent_from(&headers));
                let deadline = (item.timeout_ms > 0).then(|| {
                    *received.get_or_insert_with(Instant::now)
                        + Duration::from_millis(item.timeout_ms)
                });
                let publish = kernel.publish_staged(Publication {
                    topic: ev.topic,
                    payload: ev.payload,
                    content_type: ev.content_type,
                    headers,
                    parent,
                    deadline,
                    caller: caller.clone(),
                    id: None,
                    settled: None,
                });
                tokio::pin!(publish);
                let staged = match futures::poll!(publish.as_mut()) {
                    Poll::Ready(out) => out,
                    Poll::Pending => {
                        // This event waits for a slow subscriber: what is
                        // already answered goes down now.
                        if !is_empty(&down) && tx.send(std::mem::take(&mut down)).is_err() {
                            return;
                        }
                        publish.await
                    }
                };
                match staged {
                    // Nothing to wait for, and nothing before it waiting.
                    Ok((a, None)) if waiting.is_empty() => answer(&mut down, compact, seq, Ok(a)),
                    Err(e) if waiting.is_empty() => answer(&mut down, compact, seq, Err(e)),
                    Ok((a, None)) => waiting.push_back(Box::pin(std::future::ready((seq, Ok(a))))),
                    Err(e) => waiting.push_back(Box::pin(std::future::ready((seq, Err(e))))),
                    Ok((a, Some(keeping))) => {
                        waiting.push_back(Box::pin(async move { (seq, keeping.await.map(|()| a)) }))
                    }
                }
            }
            while let Some(Some((seq, out))) = waiting.next().now_or_never() {
                answer(&mut down, compact, seq, out);
            }
            if !is_empty(&down) && tx.send(down).is_err() {
                return;
            }
        }
        // What was accepted is answered before the stream ends.
        while let Some((seq, out)) = waiting.next().await {
            let mut down = PublishStreamDown::default();
            answer(&mut down, compact, seq, out);
            if tx.send(down).is_err() {
                return;
            }
        }
    });
    stream_fault::ended_with(batched(rx, None, fold_downs).map(Ok), ended)
}

/// Answers awaiting their events' storage, at most, per stream.
const KEEPING: usize = 4_096;

/// One event's answer once it is ready: its seq and how it went.
type Answer = std::pin::Pin<
    Box<dyn std::future::Future<Output = (u64, Result<kernel_core::Accepted, Error>)> + Send>,
>;

/// Adds one event's answer to `down`.
fn answer(
    down: &mut PublishStreamDown,
    compact: bool,
    seq: u64,
    out: Result<kernel_core::Accepted, Error>,
) {
    match out {
        Ok(_) if compact => {}
        Ok(a) => down.acks.push(pb::PublishAck {
            seq,
            event_id: a.event_id(),
            matched: a.matched,
            error: None,
        }),
        Err(e) => down.acks.push(pb::PublishAck {
            seq,
            error: Some(e.into_failure()),
            ..Default::default()
        }),
    }
    if compact {
        down.accepted_through = seq;
    }
}

fn is_empty(down: &PublishStreamDown) -> bool {
    down.acks.is_empty() && down.accepted_through == 0
}

/// Several ready ack frames as one: acks in order, the highest seq handled.
fn fold_downs(downs: Vec<PublishStreamDown>) -> PublishStreamDown {
    let mut out = PublishStreamDown::default();
    for d in downs {
        if out.acks.is_empty() {
            out.acks = d.acks;
        } else {
            out.acks.extend(d.acks);
        }
        out.accepted_through = out.accepted_through.max(d.accepted_through);
    }
    out
}

/// Unsubscribes when dropped: whichever side of the stream ends first.
struct Leave {
    kernel: Arc<Kernel>,
    sub: Arc<Subscription>,
    /// A durable subscriber's place, given up after its subscription closed.
    _durable: Option<crate::store::Connected>,
}

impl Drop for Leave {
    fn drop(&mut self) {
        self.kernel.broker().unsubscribe(&self.sub);
    }
}

/// A subscription stream: `open` first, then acks, nacks and credit up;
/// batches of events down.
pub(crate) async fn subscribe(
    kernel: Arc<Kernel>,
    store: Option<Arc<crate::store::Store>>,
    req: Request<Streaming<SubscribeUp>>,
) -> Result<impl Stream<Item = Result<SubscribeDown, Status>> + Send + 'static, Status> {
    let plugin = metadata::caller_from(req.metadata());
    let mut inbound = req.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no open within 10 s"))??;
    let open = first.and_then(|f| f.open).ok_or_else(|| {
        Status::from(Error::Protocol {
            detail: "the first Subscribe frame must carry `open`".into(),
        })
    })?;
    let request = SubscribeRequest {
        name: open.name,
        patterns: open.patterns,
        group: open.queue_group,
        explicit_ack: open.ack_mode == AckMode::Explicit as i32,
        window: open.window,
        ack_wait_ms: open.ack_wait_ms,
        max_deliver: open.max_deliver,
        plugin,
    };
    let (sub, durable) = if open.durable.is_empty() {
        (kernel.subscribe(request)?, None)
    } else {
        let Some(store) = &store else {
            return Err(Error::Precondition(
                "durable subscriptions need a node with a database (database_url)".into(),
            )
            .into());
        };
        let (sub, held) = store
            .durables()
            .open(&kernel, &open.durable, request)
            .await?;
        (sub, Some(held))
    };
    tracing::debug!(subscription = %sub.label(), patterns = ?sub.opts.patterns, "subscribed");

    // Upstream: acks, nacks, credit. Its end (client gone) closes the subscription.
    let (end_tx, end_rx) = tokio::sync::oneshot::channel();
    let reader_leave = Arc::new(Leave {
        kernel: kernel.clone(),
        sub: sub.clone(),
        _durable: durable,
    });
    {
        let kernel = kernel.clone();
        let sub = sub.clone();
        let leave = reader_leave.clone();
        let end = end_tx;
        tokio::spawn(async move {
            let life = kernel.lifecycle().clone();
            loop {
                // When sessions close, the upstream is dropped too: a
                // half-open stream would hold its connection (and the
                // node's exit) open.
                let next = tokio::select! {
                    n = inbound.message() => n,
                    _ = life.closing() => break,
                };
                let frame = match next {
                    Ok(Some(f)) => f,
                    // Half-close: keep delivering until the downstream ends too.
                    Ok(None) => break,
                    // The subscriber is gone (killed, connection lost), or
                    // sent a frame that cannot be read: hand its events to
                    // queue-group peers now; an unreadable frame also ends
                    // the downstream with its status.
                    Err(status) => {
                        if let Some(fault) = stream_fault::fault(&status) {
                            let _ = end.send(fault);
                        }
                        kernel.broker().unsubscribe(&sub);
                        break;
                    }
                };
                for id in frame.acks {
                    sub.ack(id);
                }
                for n in frame.nacks {
                    if let Some(dl) = sub.nack(n.delivery_id, Duration::from_millis(n.delay_ms)) {
                        kernel.broker().dead_letter(dl);
                    }
                }
                if frame.credit > 0 {
                    sub.add_credit(frame.credit);
                }
            }
            drop(leave);
        });
    }

    let ready = SubscribeDown {
        ready: Some(pb::SubscribeReady {
            subscription_id: sub.id.to_string(),
        }),
        events: Vec::new(),
    };
    // Tracked as a session: it ends when the lifecycle closes sessions,
    // after sending what was already buffered.
    let tracked = kernel.lifecycle().token(Work::Sessions);
    let state = Delivery {
        kernel,
        sub,
        ready: Some(ready),
        closing: false,
        _leave: reader_leave,
        _tracked: tracked,
    };
    let events = futures::stream::unfold(state, |mut d| async move {
        if let Some(r) = d.ready.take() {
            return Some((Ok(r), d));
        }
        loop {
            let batch = if d.closing {
                // Closing: what is buffered now goes out, then the end.
                match d.sub.take(DELIVERY_BATCH) {
                    Take::Batch(b) => b,
                    Take::Empty(_) | Take::Closed => return None,
                }
            } else {
                let next = tokio::select! {
                    b = d.sub.next_batch(DELIVERY_BATCH) => Some(b),
                    _ = d.kernel.lifecycle().closing() => None,
                };
                match next {
                    Some(b) => b?,
                    None => {
                        d.closing = true;
                        continue;
                    }
                }
            };
            d.kernel
                .broker()
                .count_batch(&batch.events, batch.cancelled);
            for dl in batch.dead {
                d.kernel.broker().dead_letter(dl);
            }
            if !batch.events.is_empty() {
                let frame = SubscribeDown {
                    ready: None,
                    events: batch.events,
                };
                return Some((Ok(frame), d));
            }
        }
    });
    Ok(stream_fault::ended_with(events, end_rx))
}

/// The state of a subscription's downstream.
struct Delivery {
    kernel: Arc<Kernel>,
    sub: Arc<Subscription>,
    /// The `ready` frame, until sent.
    ready: Option<SubscribeDown>,
    /// The lifecycle closed sessions: send what is buffered, then end.
    closing: bool,
    _leave: Arc<Leave>,
    _tracked: TaskTrackerToken,
}
