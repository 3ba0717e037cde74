//! One subscription: its bounded buffer, its window of unacked deliveries,
//! redelivery on nack or ack timeout, and dead-lettering after max deliver.
//!
//! The subscription is transport-agnostic: the gRPC Subscribe stream and the
//! in-process SDK subscriber both pull batches with [`Subscription::next_batch`]
//! and report acks and nacks back.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kernel_proto::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::span::DeliverySpan;
use crate::call::Headers;
use crate::context::Node;

/// An accepted event, shared by all its deliveries.
#[derive(Debug, Clone)]
pub struct EventData {
    /// Kernel-assigned id; on the wire as 16 hex digits, written per
    /// delivery (each wire event owns its string anyway).
    pub id: u64,
    /// The topic it was published on.
    pub topic: String,
    /// Body.
    pub payload: Bytes,
    /// Content type.
    pub content_type: String,
    /// Publisher headers (trace, baggage, ...).
    pub headers: Headers,
    /// Publish time, Unix ns.
    pub publish_time_unix_ns: i64,
    /// Held by every copy of the event, for a publisher that asked to know
    /// when it is settled (see [`Settle`]).
    pub settle: Option<Settle>,
}

/// Shared by every copy of an event whose publisher asked
/// ([`crate::Publication::settled`]); when the last copy goes (every
/// delivery acked, handed to an auto-ack subscriber's stream, dropped with
/// its subscription, or its dead letter settled), the sender drops and the
/// publisher's receiver resolves.
#[derive(Debug, Clone)]
pub struct Settle {
    _held: Arc<tokio::sync::oneshot::Sender<()>>,
}

impl Settle {
    /// Wraps the sender the publisher gave.
    pub fn new(tx: tokio::sync::oneshot::Sender<()>) -> Settle {
        Settle {
            _held: Arc::new(tx),
        }
    }
}

/// An event waiting in (or travelling through) one subscription.
#[derive(Debug)]
pub struct Queued {
    /// The event.
    pub event: Arc<EventData>,
    /// Deliveries made so far.
    pub attempts: u32,
    /// The delivery's context path.
    pub context: String,
    /// The delivery's spans, when tracing is on.
    pub span: Option<Box<DeliverySpan>>,
    /// The delivery's live context node, for an event published in a
    /// context: held while the delivery waits, so it shows in the tree, and
    /// dropped instead of sent once its branch is cancelled.
    pub node: Option<Arc<Node>>,
    ready_at: Option<Instant>,
}

impl Queued {
    /// A first-time entry.
    pub fn new(event: Arc<EventData>, context: String, node: Option<Arc<Node>>) -> Queued {
        Queued {
            event,
            attempts: 0,
            context,
            span: None,
            node,
            ready_at: None,
        }
    }

    /// Whether the delivery's context branch was cancelled.
    fn cancelled(&self) -> bool {
        self.node.as_ref().is_some_and(|n| n.is_cancelled())
    }
}

/// An event that ran out of delivery attempts.
#[derive(Debug)]
pub struct DeadLetter {
    /// The event.
    pub event: Arc<EventData>,
    /// Attempts made.
    pub attempts: u32,
    /// `max_deliver exceeded after nack` or `... after ack timeout`.
    pub reason: String,
}

/// What one pull returns.
#[derive(Debug, Default)]
pub struct Batch {
    /// Events to deliver now, as wire events with delivery ids.
    pub events: Vec<pb::Event>,
    /// Events to send to the dead-letter topic.
    pub dead: Vec<DeadLetter>,
    /// Queued deliveries dropped because their context branch was cancelled.
    pub cancelled: usize,
}

/// Settings fixed at open.
#[derive(Debug, Clone)]
pub struct SubOptions {
    /// A display name.
    pub name: String,
    /// Patterns (validated).
    pub patterns: Vec<String>,
    /// Queue group.
    pub group: Option<String>,
    /// Explicit acks?
    pub explicit_ack: bool,
    /// Max unacked.
    pub window: u32,
    /// Redelivery timeout.
    pub ack_wait: Duration,
    /// Attempts before dead-lettering.
    pub max_deliver: u32,
    /// Buffer capacity.
    pub capacity: usize,
    /// The subscribing plugin, when known.
    pub plugin: Option<Arc<str>>,
    /// Not in the topic index: no publish reaches it, only
    /// [`crate::Broker::feed`] (a durable subscription fed from storage).
    pub detached: bool,
}

/// A live subscription.
#[derive(Debug)]
pub struct Subscription {
    /// Kernel id.
    pub id: u64,
    /// Options from open.
    pub opts: SubOptions,
    credit: AtomicU32,
    state: Mutex<State>,
    /// The buffer's length, mirrored out of `state` after every change, so
    /// a publisher checks for room without the lock (the bound is soft
    /// anyway, by the number of concurrent publishers).
    queued: AtomicUsize,
    /// Set once, under the state lock (so lock holders see it in order);
    /// read without it by publishers checking for room.
    closed: AtomicBool,
    wake: Notify,
    space: Notify,
    /// Publishers waiting on `space`; the consumer wakes them only if any.
    space_waiters: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Queued>,
    delayed: Vec<Queued>,
    unacked: HashMap<u64, (Queued, Instant)>,
    next_delivery: u64,
}

/// What [`Subscription::take`] found.
#[derive(Debug)]
pub enum Take {
    /// Events (or dead letters) to hand out.
    Batch(Batch),
    /// Nothing now; look again at this time (a redelivery due) or on wake-up.
    Empty(Option<Instant>),
    /// The subscription is closed.
    Closed,
}

/// Why a subscription cannot take events.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The subscription is gone.
    Closed,
}

impl Subscription {
    /// A new, empty subscription.
    pub fn new(id: u64, opts: SubOptions) -> Subscription {
        Subscription {
            id,
            opts,
            credit: AtomicU32::new(0),
            state: Mutex::new(State::default()),
            queued: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            wake: Notify::new(),
            space: Notify::new(),
            space_waiters: AtomicUsize::new(0),
        }
    }

    /// The name used in messages: the given name, or the id.
    pub fn label(&self) -> String {
        if self.opts.name.is_empty() {
            format!("sub-{}", self.id)
        } else {
            self.opts.name.clone()
        }
    }

    /// Events buffered and not yet sent.
    pub fn buffered(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// Events sent and not yet acked.
    pub fn unacked(&self) -> usize {
        self.state.lock().unacked.len()
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether there is room for one more event now.
    pub fn has_space(&self) -> Result<bool, PushError> {
        if self.is_closed() {
            return Err(PushError::Closed);
        }
        Ok(self.queued.load(Ordering::SeqCst) < self.opts.capacity)
    }

    /// Mirrors the buffer's length after a change (under the state lock).
    fn mirror(&self, s: &State) {
        self.queued.store(s.queue.len(), Ordering::Release);
    }

    /// Buffers an event regardless of capacity (used after space was checked,
    /// and for redistribution and dead letters, which must not be lost).
    /// A closed subscription hands the event back, for another member.
    pub fn push(&self, q: Queued) -> Result<(), Queued> {
        {
            let mut s = self.state.lock();
            if self.is_closed() {
                return Err(q);
            }
            s.queue.push_back(q);
            self.mirror(&s);
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Puts handed-over events (older than anything buffered) at the front,
    /// in their order. Ignored when closed.
    pub fn push_front(&self, events: Vec<Queued>) {
        if events.is_empty() {
            return;
        }
        {
            let mut s = self.state.lock();
            if self.is_closed() {
                return;
            }
            for q in events.into_iter().rev() {
                s.queue.push_front(q);
            }
            self.mirror(&s);
        }
        self.wake.notify_one();
    }

    /// Waits until the buffer has room (or the subscription closes).
    pub async fn wait_space(&self) {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        // Counted before the check, so a consumer that frees space after
        // the check (under the state lock) sees the count and wakes us.
        self.space_waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.space_waiters);
        let notified = self.space.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !matches!(self.has_space(), Ok(false)) {
            return;
        }
        notified.await;
    }

    /// Grants extra window.
    pub fn add_credit(&self, n: u32) {
        self.credit.fetch_add(n, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Acknowledges a delivery. Unknown ids are ignored.
    pub fn ack(&self, delivery_id: u64) {
        let removed = self.state.lock().unacked.remove(&delivery_id);
        if let Some((mut q, _)) = removed {
            if let Some(span) = &mut q.span {
                span.done();
            }
            self.wake.notify_one();
        }
    }

    /// Negative ack: redeliver (after `delay`), or dead-letter when out of attempts.
    pub fn nack(&self, delivery_id: u64, delay: Duration) -> Option<DeadLetter> {
        let mut s = self.state.lock();
        let (mut q, _) = s.unacked.remove(&delivery_id)?;
        let last = q.attempts >= self.opts.max_deliver;
        if let Some(span) = &mut q.span {
            span.failed("nacked", (!last).then_some(q.attempts + 1));
        }
        if last {
            return Some(DeadLetter {
                event: q.event,
                attempts: q.attempts,
                reason: "max_deliver reached after nack".into(),
            });
        }
        if delay.is_zero() {
            s.queue.push_front(q);
            self.mirror(&s);
        } else {
            q.ready_at = Some(Instant::now() + delay);
            s.delayed.push(q);
        }
        drop(s);
        self.wake.notify_one();
        None
    }

    /// Waits for events that may be sent now, up to `max`. None once closed.
    pub async fn next_batch(&self, max: usize) -> Option<Batch> {
        // Events already waiting need no wake-up registration or timer.
        match self.take(max) {
            Take::Batch(b) => return Some(b),
            Take::Closed => return None,
            Take::Empty(_) => {}
        }
        Box::pin(self.wait_batch(max)).await
    }

    /// A batch now, or why there is none (and when to look again).
    pub fn take(&self, max: usize) -> Take {
        let mut s = self.state.lock();
        if self.is_closed() {
            return Take::Closed;
        }
        self.take_locked(&mut s, max)
    }

    async fn wait_batch(&self, max: usize) -> Option<Batch> {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wake_at = {
                let mut s = self.state.lock();
                if self.is_closed() {
                    return None;
                }
                match self.take_locked(&mut s, max) {
                    Take::Batch(b) => return Some(b),
                    Take::Closed => return None,
                    Take::Empty(at) => at,
                }
            };
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at.into()) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    fn take_locked(&self, s: &mut State, max: usize) -> Take {
        // The clock matters only with deliveries in flight or delayed, or
        // about to be (explicit acks).
        let timed = self.opts.explicit_ack || !s.unacked.is_empty() || !s.delayed.is_empty();
        let now = timed.then(Instant::now);
        let mut batch = Batch::default();
        if let Some(now) = now {
            self.requeue_due(s, now, &mut batch.dead);
        }
        let window = if self.opts.explicit_ack {
            (self.opts.window as usize + self.credit.load(Ordering::Relaxed) as usize)
                .saturating_sub(s.unacked.len())
        } else {
            usize::MAX
        };
        let limit = max.min(window);
        batch.events.reserve_exact(limit.min(s.queue.len()));
        while batch.events.len() < limit {
            let Some(mut q) = s.queue.pop_front() else {
                break;
            };
            if q.cancelled() {
                batch.cancelled += 1;
                continue;
            }
            q.attempts += 1;
            s.next_delivery += 1;
            let id = s.next_delivery;
            match (self.opts.explicit_ack, now) {
                (true, Some(now)) => {
                    batch.events.push(to_wire(&q, id));
                    s.unacked.insert(id, (q, now + self.opts.ack_wait));
                }
                // Auto-ack: the kernel keeps nothing, so the delivery's own
                // strings move to the wire.
                _ => batch.events.push(into_wire(q, id)),
            }
        }
        if !batch.events.is_empty() || !batch.dead.is_empty() || batch.cancelled > 0 {
            self.mirror(s);
            // After the new length is out: a publisher that counted itself
            // before its own check of the length is seen here (the fence
            // pairs with the counting in `wait_space`).
            let freed = !batch.events.is_empty() || batch.cancelled > 0;
            fence(Ordering::SeqCst);
            if freed && self.space_waiters.load(Ordering::SeqCst) > 0 {
                self.space.notify_waiters();
            }
            return Take::Batch(batch);
        }
        let next_due = s
            .unacked
            .values()
            .map(|(_, d)| *d)
            .chain(s.delayed.iter().filter_map(|q| q.ready_at))
            .min();
        Take::Empty(next_due)
    }

    /// Moves expired unacked and ready delayed events back to the queue (or
    /// to the dead-letter list when out of attempts).
    fn requeue_due(&self, s: &mut State, now: Instant, dead: &mut Vec<DeadLetter>) {
        let expired: Vec<u64> = s
            .unacked
            .iter()
            .filter(|(_, (_, d))| *d <= now)
            .map(|(id, _)| *id)
            .collect();
        let mut back = Vec::new();
        for id in expired {
            if let Some((mut q, _)) = s.unacked.remove(&id) {
                let last = q.attempts >= self.opts.max_deliver;
                if let Some(span) = &mut q.span {
                    span.failed("ack wait expired", (!last).then_some(q.attempts + 1));
                }
                if last {
                    dead.push(DeadLetter {
                        event: q.event,
                        attempts: q.attempts,
                        reason: "max_deliver reached after ack timeout".into(),
                    });
                } else {
                    back.push(q);
                }
            }
        }
        let mut i = 0;
        while i < s.delayed.len() {
            if s.delayed[i].ready_at.is_some_and(|r| r <= now) {
                let mut q = s.delayed.swap_remove(i);
                q.ready_at = None;
                back.push(q);
            } else {
                i += 1;
            }
        }
        // Redeliveries go first, oldest event first.
        back.sort_by(|a, b| {
            a.event
                .publish_time_unix_ns
                .cmp(&b.event.publish_time_unix_ns)
        });
        for q in back.into_iter().rev() {
            s.queue.push_front(q);
        }
        self.mirror(s);
    }

    /// Closes the subscription and returns everything it still held
    /// (buffered, unacked, delayed), for a queue-group peer.
    pub fn close(&self) -> Vec<Queued> {
        let mut s = self.state.lock();
        self.closed.store(true, Ordering::Release);
        let mut out: Vec<Queued> = s.unacked.drain().map(|(_, (q, _))| q).collect();
        out.sort_by(|a, b| {
            a.event
                .publish_time_unix_ns
                .cmp(&b.event.publish_time_unix_ns)
        });
        out.append(&mut s.delayed);
        out.extend(s.queue.drain(..));
        self.mirror(&s);
        drop(s);
        self.wake.notify_waiters();
        self.space.notify_waiters();
        out
    }
}

/// A delivery as the wire carries it, taking its own strings (auto ack:
/// the kernel keeps nothing). The last holder of the event (the only
/// target, usually) takes the event's own strings and headers too.
fn into_wire(mut q: Queued, delivery_id: u64) -> pb::Event {
    let traceparent = q.span.as_mut().and_then(|span| {
        let tp = span.traceparent();
        span.done();
        tp
    });
    let event = Arc::try_unwrap(q.event).unwrap_or_else(|shared| (*shared).clone());
    wire(event, q.context, traceparent, q.attempts, delivery_id)
}

/// A delivery as the wire carries it, copying (explicit ack: the kernel
/// keeps the delivery until it is acked).
fn to_wire(q: &Queued, delivery_id: u64) -> pb::Event {
    let traceparent = q.span.as_ref().and_then(|span| span.traceparent());
    let context = q.context.clone();
    wire(
        (*q.event).clone(),
        context,
        traceparent,
        q.attempts,
        delivery_id,
    )
}

fn wire(
    e: EventData,
    context: String,
    traceparent: Option<String>,
    attempt: u32,
    delivery_id: u64,
) -> pb::Event {
    let mut headers = wire_headers(e.headers);
    add_delivery_headers(&mut headers, context, traceparent);
    pb::Event {
        id: super::stamp::hex_id(e.id),
        topic: e.topic,
        payload: e.payload,
        content_type: e.content_type,
        headers,
        publish_time_unix_ns: e.publish_time_unix_ns,
        attempt,
        delivery_id,
    }
}

/// A delivered event's header map (see `proto/build.rs` for why a B-tree).
type WireHeaders = std::collections::BTreeMap<String, String>;

fn wire_headers(h: Headers) -> WireHeaders {
    if h.is_empty() {
        WireHeaders::new()
    } else {
        h.into_iter().collect()
    }
}

/// The delivery's own headers: its context path, and its span when traced.
fn add_delivery_headers(headers: &mut WireHeaders, context: String, traceparent: Option<String>) {
    headers.insert(kernel_proto::headers::CONTEXT.to_owned(), context);
    if let Some(tp) = traceparent {
        headers.insert(kernel_proto::headers::TRACEPARENT.to_owned(), tp);
    }
}
