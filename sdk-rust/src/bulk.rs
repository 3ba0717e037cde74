//! Bulk publishing: many events in flight on one PublishStream, confirmed in
//! bulk.
//!
//! [`crate::Publisher`] gives every event its own ack future (event id,
//! match count). That costs a pending-map entry, a oneshot and a future per
//! event, which is most of a fast publisher's time. A [`BulkPublisher`] asks
//! the kernel for compact acks instead: one `accepted_through` per frame,
//! plus an entry only for a refused event. Nothing is fire-and-forget: every
//! event is either confirmed accepted or reported refused by
//! [`BulkPublisher::flush`], and at most `window` events are unconfirmed at
//! any time, so a slow subscriber slows the publisher down (backpressure)
//! instead of filling its memory.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kernel_proto::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};
use tonic::Code;

use crate::client::Client;
use crate::error::Error;
use kernel_proto::batch::batched;

/// Unconfirmed events a bulk publisher allows by default.
pub const DEFAULT_WINDOW: u64 = 16_384;

/// An event the kernel refused (invalid topic, payload too large, a
/// subscriber's buffer full past the timeout, ...).
#[derive(Debug)]
pub struct Refused {
    /// The sequence number [`BulkPublisher::publish`] returned for it.
    pub seq: u64,
    /// Why.
    pub error: Error,
}

/// What the stream's reader shares with the publisher.
#[derive(Debug, Default)]
struct Shared {
    /// Every seq up to this one has been answered.
    through: AtomicU64,
    /// Refusals not yet handed out by `flush`.
    refused: Mutex<Vec<Refused>>,
    /// The stream ended: nothing more will be answered.
    closed: AtomicBool,
    /// Fired when `through` moves or the stream ends.
    changed: Notify,
}

#[derive(Debug)]
enum Inner {
    Remote {
        up: mpsc::UnboundedSender<pb::PublishItem>,
        shared: Arc<Shared>,
    },
    /// In-process: each publish goes straight into the kernel, so it is
    /// answered before `publish` returns.
    #[cfg(feature = "in-process")]
    Local {
        client: Client,
        refused: Vec<Refused>,
    },
}

/// Publishes many events with bulk confirmation; see the module docs.
/// Events of one publisher are accepted in `publish` order.
#[derive(Debug)]
pub struct BulkPublisher {
    inner: Inner,
    /// The last seq handed out.
    seq: u64,
    window: u64,
    timeout: Option<Duration>,
}

impl Client {
    /// A bulk publisher: events confirmed in bulk, at most
    /// [`DEFAULT_WINDOW`] unconfirmed.
    pub async fn bulk_publisher(&self) -> Result<BulkPublisher, Error> {
        #[cfg(feature = "in-process")]
        if self.kernel().is_some() {
            return Ok(BulkPublisher::new(Inner::Local {
                client: self.clone(),
                refused: Vec::new(),
            }));
        }
        let Some(remote) = self.remote() else {
            return Err(Error::internal("client has no transport"));
        };
        let (up, rx) = mpsc::unbounded_channel();
        // Every frame asks for compact acks; the kernel needs it only once,
        // and a flag costs two bytes.
        let frames = batched(rx, None, |items| pb::PublishStreamUp {
            items,
            compact_acks: true,
        });
        let mut inbound = self.open_publish_stream(remote, frames).await?;
        let shared = Arc::new(Shared::default());
        let reader = shared.clone();
        tokio::spawn(async move {
            while let Ok(Some(frame)) = inbound.message().await {
                if !frame.acks.is_empty() {
                    let mut refused = reader.refused.lock();
                    for a in frame.acks {
                        if let Some(f) = a.error {
                            refused.push(Refused {
                                seq: a.seq,
                                error: f.into(),
                            });
                        }
                    }
                }
                reader
                    .through
                    .fetch_max(frame.accepted_through, Ordering::AcqRel);
                reader.changed.notify_waiters();
            }
            reader.closed.store(true, Ordering::Release);
            reader.changed.notify_waiters();
        });
        Ok(BulkPublisher::new(Inner::Remote { up, shared }))
    }
}

impl BulkPublisher {
    fn new(inner: Inner) -> BulkPublisher {
        BulkPublisher {
            inner,
            seq: 0,
            window: DEFAULT_WINDOW,
            timeout: None,
        }
    }

    /// At most `n` unconfirmed events (at least 1).
    pub fn window(mut self, n: u64) -> Self {
        self.window = n.max(1);
        self
    }

    /// How long each event may wait for subscriber buffer space before the
    /// kernel refuses it (default: the kernel's `broker.publish_timeout_ms`).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Queues an event and returns its sequence number. Waits only while
    /// `window` events are unconfirmed. Fails when the stream to the kernel
    /// is gone; a refusal by the kernel is reported by [`Self::flush`].
    pub async fn publish(&mut self, topic: &str, payload: impl Into<Bytes>) -> Result<u64, Error> {
        self.seq += 1;
        let seq = self.seq;
        match &mut self.inner {
            Inner::Remote { up, shared } => {
                if seq - shared.through.load(Ordering::Acquire) > self.window {
                    wait_through(shared, seq - self.window).await?;
                }
                let item = pb::PublishItem {
                    seq,
                    event: Some(pb::PublishRequest {
                        topic: topic.to_owned(),
                        payload: payload.into(),
                        ..Default::default()
                    }),
                    timeout_ms: self.timeout.map_or(0, |t| t.as_millis().max(1) as u64),
                };
                up.send(item).map_err(|_| stream_closed())?;
            }
            #[cfg(feature = "in-process")]
            Inner::Local { client, refused } => {
                let out = match self.timeout {
                    Some(t) => client.publish_with_timeout(topic, payload, t).await,
                    None => client.publish(topic, payload).await,
                };
                if let Err(error) = out {
                    refused.push(Refused { seq, error });
                }
            }
        }
        Ok(seq)
    }

    /// Waits until every event published so far is answered, and returns
    /// the ones the kernel refused since the last flush (empty when all
    /// were accepted). Fails when the stream ended first: events after the
    /// last confirmed one are then unknown, and may need publishing again.
    pub async fn flush(&mut self) -> Result<Vec<Refused>, Error> {
        match &mut self.inner {
            Inner::Remote { shared, .. } => {
                wait_through(shared, self.seq).await?;
                Ok(std::mem::take(&mut *shared.refused.lock()))
            }
            #[cfg(feature = "in-process")]
            Inner::Local { refused, .. } => Ok(std::mem::take(refused)),
        }
    }

    /// The highest seq answered so far (accepted or refused).
    pub fn confirmed_through(&self) -> u64 {
        match &self.inner {
            Inner::Remote { shared, .. } => shared.through.load(Ordering::Acquire),
            #[cfg(feature = "in-process")]
            Inner::Local { .. } => self.seq,
        }
    }
}

/// Waits until `seq` is answered, or fails when the stream ended first.
async fn wait_through(shared: &Shared, seq: u64) -> Result<(), Error> {
    loop {
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        // Registered before the check, so a move between the check and the
        // wait still wakes us.
        changed.as_mut().enable();
        if shared.through.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        if shared.closed.load(Ordering::Acquire) {
            return Err(stream_closed());
        }
        changed.await;
    }
}

fn stream_closed() -> Error {
    Error::new(
        Code::Unavailable,
        "the publish stream closed before every event was confirmed",
    )
}
