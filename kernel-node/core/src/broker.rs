//! The event bus: publish, subscribe, queue groups, backpressure, dead letters.
//!
//! Publishing resolves the topic's subscriptions through the index (`index`:
//! the [`trie`] and the subscriptions by id), picks
//! one member per queue group, waits until every target has buffer space (up
//! to the publisher's deadline), then buffers the event in all of them. An
//! event is therefore either accepted by every target or refused with
//! `RESOURCE_EXHAUSTED`: nothing the kernel accepted is silently dropped.

mod feed;
mod index;
pub(crate) mod schemas;
mod span;
mod stamp;
pub(crate) mod subscription;
pub(crate) mod trie;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::RwLock;

use crate::call::Headers;
use crate::config::BrokerConfig;
use crate::context::{ChildSpec, Contexts, Node, Parent};
use crate::error::Error;
use crate::names;
use crate::stats::Stats;
pub use feed::Stored;
pub use index::InterestChange;
use index::{Index, Targets};
use kernel_proto::headers;
use kernel_proto::trace::{SpanKind, SpanParent, Telemetry};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::KeyValue;
use span::DeliverySpan;
pub(crate) use stamp::now_unix_ns;
use stamp::{event_context, hex_id};
use subscription::{DeadLetter, EventData, Queued, Settle, SubOptions, Subscription};
use trie::Interest;

/// An event to publish, as the kernel sees it.
#[derive(Debug, Default)]
pub struct Publication {
    /// Topic (no wildcards).
    pub topic: String,
    /// Body.
    pub payload: Bytes,
    /// Content type.
    pub content_type: String,
    /// Headers to pass to subscribers.
    pub headers: Headers,
    /// The publisher's context, if any.
    pub parent: Parent,
    /// How long to wait for buffer space, at most.
    pub deadline: Option<Instant>,
    /// The publishing plugin.
    pub caller: Option<Arc<str>>,
    /// Dropped when the event is settled: every delivery acked, handed to
    /// an auto-ack subscriber's stream, or gone with its subscription (the
    /// outbox relay deletes a row only then).
    pub settled: Option<tokio::sync::oneshot::Sender<()>>,
    /// A stable id the event already has (the outbox relay's, so a
    /// redelivered row keeps its id); `None` = the broker assigns one.
    pub id: Option<u64>,
}

/// Set in the id of every event relayed from the PostgreSQL outbox (its
/// row id is the rest); never set in an id the broker assigns.
pub const OUTBOX_ID_BIT: u64 = 1 << 63;

/// What a publish returns.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The event id as a number; [`Accepted::event_id`] writes the wire
    /// form, so a bulk publisher that never asks for it pays nothing.
    pub id: u64,
    /// Matched subscriptions (a queue group counts once).
    pub matched: u32,
}

impl Accepted {
    /// The event id as the wire carries it (16 hex digits).
    pub fn event_id(&self) -> String {
        hex_id(self.id)
    }
}

/// What a subscriber asks for.
#[derive(Debug, Clone, Default)]
pub struct SubscribeRequest {
    /// Display name.
    pub name: String,
    /// Patterns.
    pub patterns: Vec<String>,
    /// Queue group (empty = none).
    pub group: String,
    /// Explicit acks.
    pub explicit_ack: bool,
    /// 0 = default.
    pub window: u32,
    /// 0 = default.
    pub ack_wait_ms: u64,
    /// 0 = default.
    pub max_deliver: u32,
    /// The subscribing plugin, when it said (shown on its deliveries'
    /// context nodes).
    pub plugin: Option<Arc<str>>,
}

/// The event bus.
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    max_payload: usize,
    contexts: Arc<Contexts>,
    stats: Arc<Stats>,
    telemetry: Telemetry,
    index: RwLock<Index>,
    /// Listeners for [`InterestChange`]s; told under the index lock, so
    /// they see changes in order.
    interest: parking_lot::Mutex<Vec<tokio::sync::mpsc::UnboundedSender<InterestChange>>>,
    next_sub: AtomicU64,
    event_base: u64,
    next_event: AtomicU64,
    /// Event schemas declared by registered providers.
    pub schemas: schemas::TopicSchemas,
}

impl Broker {
    /// An empty bus.
    pub fn new(
        config: BrokerConfig,
        max_payload: usize,
        contexts: Arc<Contexts>,
        stats: Arc<Stats>,
        telemetry: Telemetry,
    ) -> Broker {
        Broker {
            config,
            max_payload,
            contexts,
            stats,
            telemetry,
            index: RwLock::new(Index::default()),
            interest: parking_lot::Mutex::new(Vec::new()),
            next_sub: AtomicU64::new(1),
            // The top bit clear: ids with it set are the outbox's
            // (`OUTBOX_ID_BIT`), so the two never collide.
            event_base: rand::random::<u64>() & 0x7fff_ffff_0000_0000,
            next_event: AtomicU64::new(1),
            schemas: schemas::TopicSchemas::default(),
        }
    }

    /// Publishes one event; waits for buffer space up to the deadline (or
    /// `broker.publish_timeout_ms`). The checks, the match and, when every
    /// target has room, the acceptance all happen before this returns: only
    /// a publisher that must wait gets a (boxed) future that does work.
    pub fn publish(
        &self,
        p: Publication,
    ) -> impl std::future::Future<Output = Result<Accepted, Error>> + Send + '_ {
        use futures::future::{ready, Either};
        let (p, id, targets) = match self.prepare(p) {
            Ok(prepared) => prepared,
            Err(e) => return Either::Left(ready(Err(e))),
        };
        // Wait until every target has room, so the event is accepted by all
        // or by none.
        if !targets.iter().any(|s| matches!(s.has_space(), Ok(false))) {
            return Either::Left(ready(Ok(self.accept(p, id, &targets))));
        }
        Either::Right(Box::pin(async move {
            let deadline = p.deadline.unwrap_or_else(|| {
                Instant::now() + Duration::from_millis(self.config.publish_timeout_ms)
            });
            wait_for_space(&targets, deadline, &p.topic).await?;
            Ok(self.accept(p, id, &targets))
        }))
    }

    /// Checks an event, charges its tree's events budget, gives it an id
    /// and finds its targets.
    fn prepare(&self, p: Publication) -> Result<(Publication, u64, Targets), Error> {
        names::validate_topic(
            &p.topic,
            self.config.max_topic_bytes,
            self.config.max_topic_tokens,
        )?;
        if p.payload.len() > self.max_payload {
            return Err(Error::PayloadTooLarge {
                size: p.payload.len(),
                limit: self.max_payload,
            });
        }
        self.schemas.check(&p.topic, &p.payload, &p.content_type)?;
        let id = match p.id {
            Some(id) => id,
            None => self
                .event_base
                .wrapping_add(self.next_event.fetch_add(1, Ordering::Relaxed)),
        };
        // Nothing is published under a context that ended (cancelled, or
        // past its deadline): it cannot be revived by emitting.
        match &p.parent {
            Parent::Path(path) => {
                if let Some(e) = self.contexts.ended(path) {
                    return Err(e);
                }
            }
            Parent::Node(n) if n.is_cancelled() => {
                return Err(Error::Remote(n.cancel_reason()));
            }
            Parent::Node(n) if n.deadline.is_some_and(|d| d <= Instant::now()) => {
                return Err(Error::DeadlineExceeded {
                    service: format!("event:{}", p.topic),
                    context: n.path().to_owned(),
                });
            }
            _ => {}
        }
        if let Parent::Node(n) = &p.parent {
            if let Err(e) = n.tree().budget.charge_event() {
                // As for calls: the branch that overspent is cancelled.
                let err = || Error::BudgetExhausted {
                    budget: e.budget.clone(),
                    context: n.path().to_owned(),
                    limit: e.limit,
                };
                n.kill(err());
                return Err(err());
            }
        }
        let targets = self.targets(&p.topic);
        Ok((p, id, targets))
    }

    /// Buffers an accepted event in every target (each has room).
    fn accept(&self, p: Publication, id: u64, targets: &Targets) -> Accepted {
        let mut headers = p.headers;
        if !headers.is_empty() {
            headers.retain(|k, _| k != headers::CONTEXT && k != headers::CALLER);
        }
        // The publish span (child of the publisher's trace); each delivery
        // gets its own span under it, and the subscriber sees that span as
        // its parent.
        let publish_span = self.telemetry.start(
            "kernel.publish",
            SpanKind::Producer,
            SpanParent::Header(headers.get(headers::TRACEPARENT).map(String::as_str)),
            || {
                vec![
                    KeyValue::new("kernel.topic", p.topic.clone()),
                    KeyValue::new(
                        "kernel.context",
                        match &p.parent {
                            Parent::Node(n) => n.path().to_owned(),
                            Parent::Path(path) => path.clone(),
                            Parent::None => hex_id(id),
                        },
                    ),
                    KeyValue::new("kernel.event_id", hex_id(id)),
                    KeyValue::new("kernel.matched", targets.len() as i64),
                ]
            },
        );
        if let Some(c) = &p.caller {
            headers.insert(headers::CALLER.to_owned(), c.to_string());
        }
        let event = Arc::new(EventData {
            id,
            topic: p.topic,
            payload: p.payload,
            content_type: p.content_type,
            headers,
            publish_time_unix_ns: now_unix_ns(),
            settle: p.settled.map(Settle::new),
        });
        let mut matched = 0;
        for (i, sub) in targets.iter().enumerate() {
            let (context, node) = self.delivery_context(&p.parent, &event, i, &p.caller, sub);
            let mut q = Queued::new(event.clone(), context, node);
            if let Some(cx) = &publish_span {
                q.span =
                    DeliverySpan::start(&self.telemetry, cx, &event.topic, sub.label(), &q.context);
            }
            if self.push_or_reroute(sub, q) {
                matched += 1;
            }
        }
        if let Some(cx) = publish_span {
            cx.span().end();
        }
        Stats::inc(&self.stats.events_published);
        Accepted { id, matched }
    }

    /// Buffers `q` in `sub`; when `sub` closed meanwhile (a queue-group
    /// member left between selection and now), in another member of its
    /// group, so an accepted event is never lost to a departing member.
    fn push_or_reroute(&self, sub: &Arc<Subscription>, q: Queued) -> bool {
        let Err(q) = sub.push(q) else {
            return true;
        };
        let Some(g) = &sub.opts.group else {
            // A plain subscription that closed takes its events with it.
            return false;
        };
        let index = self.index.read();
        // Members in the index are open: closing happens under the write lock.
        let mut q = q;
        for m in &index.members(sub, g) {
            match m.push(q) {
                Ok(()) => return true,
                Err(back) => q = back,
            }
        }
        false
    }

    /// The context of one delivery: a live child node of the publisher's
    /// context (held while the delivery is queued, so cancelling that
    /// branch drops it), or just a path, `<event id>.<n>`, for an event
    /// published without one (or with a context the kernel does not know).
    fn delivery_context(
        &self,
        parent: &Parent,
        event: &EventData,
        i: usize,
        caller: &Option<Arc<str>>,
        sub: &Subscription,
    ) -> (String, Option<Arc<Node>>) {
        if !matches!(parent, Parent::Node(_)) {
            return (event_context(event.id, i), None);
        }
        // GetContext shows a delivery as `event:<topic>`, held by the
        // subscribing plugin.
        let service = format!("event:{}", event.topic);
        let spec = ChildSpec {
            service: &service,
            caller: caller.as_deref(),
            traceparent: event.headers.get(headers::TRACEPARENT).map(String::as_str),
            ..ChildSpec::default()
        };
        match self.contexts.child(parent.clone(), spec) {
            Ok(n) => {
                if let Some(plugin) = &sub.opts.plugin {
                    n.set_plugin(plugin);
                }
                (n.path().to_owned(), Some(n))
            }
            Err(_) => (event_context(event.id, i), None),
        }
    }

    fn targets(&self, topic: &str) -> Targets {
        self.index.read().targets(topic)
    }

    /// Receives every [`InterestChange`] from now on, in order.
    pub fn watch_interest(&self) -> tokio::sync::mpsc::UnboundedReceiver<InterestChange> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.interest.lock().push(tx);
        rx
    }

    /// Tells the listeners, when `change` began or ended interest.
    fn tell(&self, pattern: &str, change: Interest) {
        let present = match change {
            Interest::First => true,
            Interest::Last => false,
            _ => return,
        };
        let mut listeners = self.interest.lock();
        if listeners.is_empty() {
            return;
        }
        let change = InterestChange {
            pattern: pattern.to_owned(),
            present,
        };
        listeners.retain(|l| l.send(change.clone()).is_ok());
    }

    /// Opens a subscription.
    pub fn subscribe(&self, req: SubscribeRequest) -> Result<Arc<Subscription>, Error> {
        self.open(req, false)
    }

    pub(super) fn open(
        &self,
        req: SubscribeRequest,
        detached: bool,
    ) -> Result<Arc<Subscription>, Error> {
        if req.patterns.is_empty() {
            return Err(Error::InvalidName {
                what: "pattern",
                name: String::new(),
                reason: "a subscription needs at least one pattern".into(),
            });
        }
        let mut patterns = req.patterns;
        for p in &patterns {
            names::validate_pattern(p, self.config.max_topic_bytes, self.config.max_topic_tokens)?;
        }
        patterns.sort();
        patterns.dedup();
        let group = (!req.group.is_empty()).then(|| {
            // Members must agree on patterns to compete for the same events.
            format!("{}|{}", req.group, patterns.join(","))
        });
        let id = self.next_sub.fetch_add(1, Ordering::Relaxed);
        let opts = SubOptions {
            name: req.name,
            patterns: patterns.clone(),
            group: group.clone(),
            explicit_ack: req.explicit_ack,
            window: nonzero(req.window, self.config.window),
            ack_wait: Duration::from_millis(if req.ack_wait_ms == 0 {
                self.config.ack_wait_ms
            } else {
                req.ack_wait_ms
            }),
            max_deliver: nonzero(req.max_deliver, self.config.max_deliver),
            capacity: self.config.buffer,
            plugin: req.plugin,
            detached,
        };
        let sub = Arc::new(Subscription::new(id, opts));
        let mut index = self.index.write();
        for p in patterns.iter().filter(|_| !detached) {
            let change = match &group {
                None => index.trie.insert(p, id),
                Some(g) => index.trie.insert_queue(p, g, id),
            };
            self.tell(p, change);
        }
        index.subs.insert(id, sub.clone());
        Ok(sub)
    }

    /// Closes a subscription. A queue-group member's buffered, unacked and
    /// delayed events go to the remaining members, ahead of their newer
    /// events; without a group they end with it.
    pub fn unsubscribe(&self, sub: &Arc<Subscription>) {
        let mut index = self.index.write();
        if index.subs.remove(&sub.id).is_none() {
            return;
        }
        for p in sub.opts.patterns.iter().filter(|_| !sub.opts.detached) {
            let change = match &sub.opts.group {
                None => index.trie.remove(p, sub.id),
                Some(g) => index.trie.remove_queue(p, g, sub.id),
            };
            self.tell(p, change);
        }
        // Closed under the index write lock: a publisher holding the read
        // lock never sees a closed member in a group.
        let events = sub.close();
        let Some(g) = &sub.opts.group else {
            return;
        };
        let heirs = index.members(sub, g);
        if heirs.is_empty() {
            if !events.is_empty() {
                tracing::warn!(subscription = %sub.label(), events = events.len(), "last queue-group member left with events in flight");
            }
            return;
        }
        // Handed over while still holding the write lock, so no heir can
        // close in between (closing needs this lock).
        let mut shares: Vec<Vec<Queued>> = (0..heirs.len()).map(|_| Vec::new()).collect();
        for (i, q) in events.into_iter().enumerate() {
            shares[i % heirs.len()].push(q);
        }
        for (heir, share) in heirs.iter().zip(shares) {
            heir.push_front(share);
        }
    }

    /// Sends an exhausted event to `$dlq.<topic>` with the reason and attempt
    /// count in headers. Dead letters never wait for buffer space.
    pub fn dead_letter(&self, dl: DeadLetter) {
        Stats::inc(&self.stats.events_dead_lettered);
        let topic = format!("$dlq.{}", dl.event.topic);
        let mut headers = dl.event.headers.clone();
        headers.insert(headers::DLQ_REASON.to_owned(), dl.reason.clone());
        headers.insert(headers::DLQ_ATTEMPTS.to_owned(), dl.attempts.to_string());
        let event = Arc::new(EventData {
            id: dl.event.id,
            topic: topic.clone(),
            payload: dl.event.payload.clone(),
            content_type: dl.event.content_type.clone(),
            headers,
            publish_time_unix_ns: now_unix_ns(),
            settle: dl.event.settle.clone(),
        });
        let targets = self.targets(&topic);
        if targets.is_empty() {
            tracing::warn!(event = %hex_id(event.id), topic = %dl.event.topic, reason = %dl.reason, "dead letter has no subscriber on {topic}");
        }
        for (i, sub) in targets.iter().enumerate() {
            let _ = sub.push(Queued::new(event.clone(), event_context(event.id, i), None));
        }
    }

    /// Counts a delivery batch in the stats: what it sends, and the queued
    /// deliveries it dropped because their branch was cancelled.
    pub fn count_batch(&self, events: &[kernel_proto::v1::Event], cancelled: usize) {
        if cancelled > 0 {
            self.stats
                .events_cancelled
                .fetch_add(cancelled as u64, Ordering::Relaxed);
        }
        self.count_delivered(events);
    }

    /// Counts deliveries handed to a transport.
    pub fn count_delivered(&self, events: &[kernel_proto::v1::Event]) {
        for e in events {
            Stats::inc(&self.stats.events_delivered);
            if e.attempt > 1 {
                Stats::inc(&self.stats.events_redelivered);
            }
        }
    }

    /// Live subscriptions.
    pub fn subscriptions(&self) -> Vec<Arc<Subscription>> {
        let mut v: Vec<_> = self.index.read().subs.values().cloned().collect();
        v.sort_by_key(|s| s.id);
        v
    }
}

fn nonzero<T: PartialEq + Default>(v: T, default: T) -> T {
    if v == T::default() {
        default
    } else {
        v
    }
}

/// Waits until every target has room, or fails naming the slow one.
async fn wait_for_space(targets: &Targets, deadline: Instant, topic: &str) -> Result<(), Error> {
    loop {
        let full = targets.iter().find(|s| matches!(s.has_space(), Ok(false)));
        let Some(slow) = full else {
            return Ok(());
        };
        let wait = tokio::time::timeout_at(deadline.into(), slow.wait_space()).await;
        if wait.is_err() && matches!(slow.has_space(), Ok(false)) {
            return Err(Error::Backpressure {
                subscription: slow.label(),
                buffered: slow.buffered(),
                topic: topic.to_owned(),
            });
        }
    }
}

#[cfg(test)]
mod tests;
