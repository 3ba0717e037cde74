//! Events: a pull-style [`Subscriber`] with explicit or automatic acks, a
//! handler-style `subscribe`, and a pipelined [`Publisher`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
#[cfg(feature = "in-process")]
use kernel_core::{Kernel, SubscribeRequest, Subscription};
use kernel_proto::v1::{self as pb, AckMode, Failure};
use tokio::sync::mpsc;
use tonic::Code;

use crate::client::{insert_meta, Client, Published};
use crate::error::Error;
use crate::mux::Mux;
use kernel_proto::batch::batched;

pub use kernel_proto::v1::Event;

/// What to subscribe to and how.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// Patterns (`order.*`, `audit.>`).
    pub patterns: Vec<String>,
    /// Queue group: members compete for events.
    pub queue_group: String,
    /// Ack each event explicitly (default: auto).
    pub explicit_ack: bool,
    /// Max unacked events (0 = kernel default).
    pub window: u32,
    /// Redelivery timeout (None = kernel default).
    pub ack_wait: Option<Duration>,
    /// Attempts before dead-lettering (0 = kernel default).
    pub max_deliver: u32,
    /// A name for admin listings and backpressure errors.
    pub name: String,
    /// Durable subscription name (see [`SubscribeOptions::durable`]).
    pub durable: String,
    /// Drop (and ack) an event whose id was among the last `dedupe` seen;
    /// 0 = off (see [`SubscribeOptions::dedupe`]).
    pub dedupe: usize,
}

impl SubscribeOptions {
    /// Options for one pattern.
    pub fn new(pattern: &str) -> Self {
        SubscribeOptions {
            patterns: vec![pattern.to_owned()],
            ..Default::default()
        }
    }

    /// Adds a pattern.
    pub fn pattern(mut self, p: &str) -> Self {
        self.patterns.push(p.to_owned());
        self
    }

    /// Joins a queue group.
    pub fn queue_group(mut self, g: &str) -> Self {
        self.queue_group = g.to_owned();
        self
    }

    /// Explicit acks.
    pub fn explicit_ack(mut self) -> Self {
        self.explicit_ack = true;
        self
    }

    /// Window size.
    pub fn window(mut self, n: u32) -> Self {
        self.window = n;
        self
    }

    /// Redelivery timeout.
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.ack_wait = Some(d);
        self
    }

    /// Attempts before dead-lettering.
    pub fn max_deliver(mut self, n: u32) -> Self {
        self.max_deliver = n;
        self
    }

    /// Makes this a durable subscription named `name` (a node with a
    /// database): events published while it is away are kept and
    /// delivered when it comes back, across node restarts. Acks are
    /// explicit.
    pub fn durable(mut self, name: &str) -> Self {
        self.durable = name.to_owned();
        self.explicit_ack = true;
        self
    }

    /// Opt-in deduplication for at-least-once sources (the outbox, durable
    /// subscriptions): an event whose id is among the last `window` ids
    /// this subscriber saw is acked and skipped, not handed out again.
    pub fn dedupe(mut self, window: usize) -> Self {
        self.dedupe = window;
        self
    }

    /// Display name.
    pub fn name(mut self, n: &str) -> Self {
        self.name = n.to_owned();
        self
    }
}

enum Source {
    Remote {
        inbound: Box<tonic::Streaming<pb::SubscribeDown>>,
        up: mpsc::UnboundedSender<pb::SubscribeUp>,
    },
    #[cfg(feature = "in-process")]
    Local {
        kernel: Arc<Kernel>,
        sub: Arc<Subscription>,
    },
}

/// A subscription you pull events from.
pub struct Subscriber {
    source: Source,
    /// The rest of the last batch, handed out in order without copying it
    /// into another queue.
    ready: std::vec::IntoIter<Event>,
    /// Recent event ids, when deduplicating.
    seen: Option<Seen>,
}

/// The last `cap` event ids, in arrival order and as a set.
#[derive(Debug)]
struct Seen {
    cap: usize,
    order: std::collections::VecDeque<String>,
    set: std::collections::HashSet<String>,
}

impl Seen {
    fn new(cap: usize) -> Option<Seen> {
        (cap > 0).then(|| Seen {
            cap,
            order: std::collections::VecDeque::with_capacity(cap.min(4096)),
            set: std::collections::HashSet::with_capacity(cap.min(4096)),
        })
    }

    /// False when `id` was seen (a duplicate); records it otherwise.
    fn first(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back(id.to_owned());
        self.set.insert(id.to_owned());
        true
    }
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("ready", &self.ready.len())
            .finish()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        #[cfg(feature = "in-process")]
        if let Source::Local { kernel, sub } = &self.source {
            kernel.broker().unsubscribe(sub);
        }
    }
}

impl Subscriber {
    /// The next event; None when the subscription ended.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.ready.next() {
                match self.seen.as_mut().map(|s| s.first(&e.id)) {
                    Some(false) => {
                        self.ack(&e);
                        continue;
                    }
                    _ => return Some(e),
                }
            }
            match &mut self.source {
                Source::Remote { inbound, .. } => {
                    let frame = inbound.message().await.ok()??;
                    self.ready = frame.events.into_iter();
                }
                #[cfg(feature = "in-process")]
                Source::Local { kernel, sub } => {
                    let batch = sub.next_batch(256).await?;
                    kernel.broker().count_batch(&batch.events, batch.cancelled);
                    for dl in batch.dead {
                        kernel.broker().dead_letter(dl);
                    }
                    self.ready = batch.events.into_iter();
                }
            }
        }
    }

    /// Acknowledges a delivery (explicit mode).
    pub fn ack(&self, event: &Event) {
        match &self.source {
            Source::Remote { up, .. } => {
                let _ = up.send(pb::SubscribeUp {
                    acks: vec![event.delivery_id],
                    ..Default::default()
                });
            }
            #[cfg(feature = "in-process")]
            Source::Local { sub, .. } => sub.ack(event.delivery_id),
        }
    }

    /// Grants `n` more events of window (explicit mode): the kernel may
    /// send that many more beyond `window` before acks come back.
    pub fn credit(&self, n: u32) {
        match &self.source {
            Source::Remote { up, .. } => {
                let _ = up.send(pb::SubscribeUp {
                    credit: n,
                    ..Default::default()
                });
            }
            #[cfg(feature = "in-process")]
            Source::Local { sub, .. } => sub.add_credit(n),
        }
    }

    /// Asks for redelivery after `delay`.
    pub fn nack(&self, event: &Event, delay: Duration) {
        match &self.source {
            Source::Remote { up, .. } => {
                let _ = up.send(pb::SubscribeUp {
                    nacks: vec![pb::Nack {
                        delivery_id: event.delivery_id,
                        delay_ms: delay.as_millis() as u64,
                    }],
                    ..Default::default()
                });
            }
            #[cfg(feature = "in-process")]
            Source::Local { kernel, sub } => {
                if let Some(dl) = sub.nack(event.delivery_id, delay) {
                    kernel.broker().dead_letter(dl);
                }
            }
        }
    }
}

impl Client {
    /// Opens a subscription. Returns once the kernel confirmed it, so events
    /// published after this returns are delivered.
    pub async fn subscriber(&self, opts: SubscribeOptions) -> Result<Subscriber, Error> {
        #[cfg(feature = "in-process")]
        if let Some(kernel) = self.kernel() {
            if !opts.durable.is_empty() {
                return Err(Error::new(
                    Code::FailedPrecondition,
                    "durable subscriptions are opened over gRPC, where the node's database is",
                ));
            }
            let sub = kernel
                .subscribe(SubscribeRequest {
                    name: opts.name,
                    patterns: opts.patterns,
                    group: opts.queue_group,
                    explicit_ack: opts.explicit_ack,
                    window: opts.window,
                    ack_wait_ms: opts.ack_wait.map_or(0, |d| d.as_millis() as u64),
                    max_deliver: opts.max_deliver,
                    plugin: self.plugin_name().map(Into::into),
                })
                .map_err(|e| Error::from(e.into_failure()))?;
            return Ok(Subscriber {
                source: Source::Local {
                    kernel: kernel.clone(),
                    sub,
                },
                ready: Vec::new().into_iter(),
                seen: Seen::new(opts.dedupe),
            });
        }
        let Some(remote) = self.remote() else {
            return Err(Error::internal("client has no transport"));
        };
        let (up, rx) = mpsc::unbounded_channel();
        let dedupe = opts.dedupe;
        let open = pb::SubscribeUp {
            open: Some(pb::SubscribeOpen {
                patterns: opts.patterns,
                queue_group: opts.queue_group,
                ack_mode: if opts.explicit_ack {
                    AckMode::Explicit as i32
                } else {
                    AckMode::Auto as i32
                },
                window: opts.window,
                ack_wait_ms: opts.ack_wait.map_or(0, |d| d.as_millis() as u64),
                max_deliver: opts.max_deliver,
                name: opts.name,
                durable: opts.durable,
            }),
            ..Default::default()
        };
        let mut req = tonic::Request::new(batched(rx, Some(open), fold_sub_up));
        // The kernel shows the subscriber on its deliveries' context nodes.
        if let Some(p) = self.plugin_name() {
            insert_meta(&mut req, kernel_proto::headers::PLUGIN, &p);
        }
        let mut inbound = remote.kernel_client().subscribe(req).await?.into_inner();
        match inbound.message().await? {
            Some(f) if f.ready.is_some() => {}
            _ => {
                return Err(Error::new(
                    Code::Unavailable,
                    "the kernel did not confirm the subscription",
                ))
            }
        }
        Ok(Subscriber {
            source: Source::Remote {
                inbound: Box::new(inbound),
                up,
            },
            ready: Vec::new().into_iter(),
            seen: Seen::new(dedupe),
        })
    }

    /// Subscribes with a handler: each event is passed to `handler`; in
    /// explicit mode Ok acks and Err nacks (redelivered at once). Runs until
    /// the subscription ends; spawn it.
    pub async fn subscribe<F, Fut>(
        &self,
        opts: SubscribeOptions,
        handler: F,
    ) -> Result<tokio::task::JoinHandle<()>, Error>
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), Error>> + Send + 'static,
    {
        let explicit = opts.explicit_ack;
        let name = opts.name.clone();
        let telemetry = self.telemetry.clone();
        let mut sub = self.subscriber(opts).await?;
        Ok(tokio::spawn(async move {
            while let Some(e) = sub.next().await {
                let mut given = e.clone();
                let span = event_span(&telemetry, &name, &mut given);
                let out = handler(given).await;
                crate::handler::end_span(span, out.as_ref().err().map(|e| e.to_string()));
                let ok = out.is_ok();
                if explicit {
                    if ok {
                        sub.ack(&e);
                    } else {
                        sub.nack(&e, Duration::ZERO);
                    }
                }
            }
        }))
    }

    /// A pipelined publisher over one PublishStream (remote) or straight
    /// into the kernel (in-process).
    pub async fn publisher(&self) -> Result<Publisher, Error> {
        #[cfg(feature = "in-process")]
        if self.kernel().is_some() {
            // One task publishes in send order, as the remote stream does.
            let (tx, mut rx) = mpsc::unbounded_channel::<LocalItem>();
            let client = self.clone();
            tokio::spawn(async move {
                while let Some((topic, payload, timeout, done)) = rx.recv().await {
                    let r = match timeout {
                        Some(t) => client.publish_with_timeout(&topic, payload, t).await,
                        None => client.publish(&topic, payload).await,
                    };
                    let _ = done.send(r);
                }
            });
            return Ok(Publisher(PubInner::Local(tx)));
        }
        let Some(remote) = self.remote() else {
            return Err(Error::internal("client has no transport"));
        };
        let (mux, rx) = Mux::new();
        let mut inbound = self
            .open_publish_stream(remote, batched(rx, None, fold_publish))
            .await?;
        let reader: Arc<PubMux> = mux.clone();
        tokio::spawn(async move {
            while let Ok(Some(frame)) = inbound.message().await {
                for a in frame.acks {
                    let r = match a.error {
                        Some(f) => Err(f),
                        None => Ok(Published::from_wire(a.event_id, a.matched)),
                    };
                    reader.complete(a.seq, r);
                }
            }
            reader.fail_all(|| {
                Err(Failure {
                    code: Code::Unavailable as i32,
                    message: "the publish stream closed".into(),
                    causality: Vec::new(),
                })
            });
        });
        Ok(Publisher(PubInner::Remote(mux)))
    }
}

impl Client {
    /// Opens a PublishStream carrying `frames`, with this client's plugin
    /// identity; used by [`Publisher`] and [`crate::BulkPublisher`].
    pub(crate) async fn open_publish_stream(
        &self,
        remote: &crate::client::Remote,
        frames: impl futures::Stream<Item = pb::PublishStreamUp> + Send + 'static,
    ) -> Result<tonic::Streaming<pb::PublishStreamDown>, Error> {
        let mut req = tonic::Request::new(frames);
        if let Some(p) = self.plugin_name() {
            insert_meta(&mut req, kernel_proto::headers::PLUGIN, &p);
        }
        Ok(remote
            .kernel_client()
            .publish_stream(req)
            .await?
            .into_inner())
    }
}

type PubMux = Mux<pb::PublishItem, Result<Published, Failure>>;

/// Publishes many events without waiting for each ack in turn. Events of one
/// publisher are accepted in the order `send` was called.
pub struct Publisher(PubInner);

#[cfg(feature = "in-process")]
type LocalItem = (
    String,
    Bytes,
    Option<Duration>,
    tokio::sync::oneshot::Sender<Result<Published, Error>>,
);

enum PubInner {
    /// Over a PublishStream.
    Remote(Arc<PubMux>),
    /// In-process, through a task that keeps send order.
    #[cfg(feature = "in-process")]
    Local(mpsc::UnboundedSender<LocalItem>),
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Publisher")
    }
}

/// The ack of a pipelined publish.
pub type PublishAck =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Published, Error>> + Send>>;

impl Publisher {
    /// Queues an event; the returned future resolves with its ack. `timeout`
    /// bounds the wait for subscriber buffer space (None = kernel default).
    pub fn send(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> PublishAck {
        match &self.0 {
            PubInner::Remote(mux) => {
                let item = |seq| pb::PublishItem {
                    seq,
                    event: Some(pb::PublishRequest {
                        topic: topic.to_owned(),
                        payload: payload.into(),
                        ..Default::default()
                    }),
                    timeout_ms: timeout.map_or(0, |t| t.as_millis().max(1) as u64),
                };
                match mux.send(item) {
                    Some((_, rx)) => Box::pin(async move {
                        match rx.await {
                            Ok(r) => r.map_err(Error::from),
                            Err(_) => {
                                Err(Error::new(Code::Unavailable, "the publish stream closed"))
                            }
                        }
                    }),
                    None => Box::pin(async {
                        Err(Error::new(Code::Unavailable, "the publish stream closed"))
                    }),
                }
            }
            #[cfg(feature = "in-process")]
            PubInner::Local(tx) => {
                let (done, rx) = tokio::sync::oneshot::channel();
                let _ = tx.send((topic.to_owned(), payload.into(), timeout, done));
                Box::pin(async move {
                    rx.await.unwrap_or_else(|_| {
                        Err(Error::new(Code::Unavailable, "the publisher task ended"))
                    })
                })
            }
        }
    }
}

fn fold_sub_up(items: Vec<pb::SubscribeUp>) -> pb::SubscribeUp {
    let mut f = pb::SubscribeUp::default();
    for i in items {
        if i.open.is_some() {
            f.open = i.open;
        }
        f.acks.extend(i.acks);
        f.nacks.extend(i.nacks);
        f.credit += i.credit;
    }
    f
}

fn fold_publish(items: Vec<pb::PublishItem>) -> pb::PublishStreamUp {
    pb::PublishStreamUp {
        items,
        compact_acks: false,
    }
}

/// Starts the `plugin.event` span of a handled event under its delivery
/// span, and points the event's `traceparent` at it for the handler.
fn event_span(
    telemetry: &kernel_proto::trace::Telemetry,
    subscription: &str,
    event: &mut Event,
) -> Option<opentelemetry::Context> {
    use kernel_proto::headers;
    use kernel_proto::trace::{SpanKind, SpanParent};
    use opentelemetry::KeyValue;
    if !telemetry.enabled() {
        return None;
    }
    let cx = telemetry.start(
        "plugin.event",
        SpanKind::Consumer,
        SpanParent::Header(event.headers.get(headers::TRACEPARENT).map(String::as_str)),
        || {
            vec![
                KeyValue::new("kernel.topic", event.topic.clone()),
                KeyValue::new("kernel.subscription", subscription.to_owned()),
                KeyValue::new(
                    "kernel.context",
                    event
                        .headers
                        .get(headers::CONTEXT)
                        .cloned()
                        .unwrap_or_default(),
                ),
            ]
        },
    )?;
    event.headers.insert(
        headers::TRACEPARENT.to_owned(),
        kernel_proto::trace::traceparent(&cx),
    );
    Some(cx)
}
