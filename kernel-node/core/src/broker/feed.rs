//! Detached subscriptions and what feeds them: a durable subscription's
//! events come from storage, not from publishes, through [`Broker::feed`].

use std::sync::Arc;

use super::stamp::event_context;
use super::subscription::{EventData, Queued, Settle, Subscription};
use super::{Broker, SubscribeRequest};
use crate::error::Error;
use crate::keeper::Kept;

/// A stored event for [`Broker::feed`]: the event as it was kept, and the
/// sender that drops when its delivery is settled.
#[derive(Debug)]
pub struct Stored {
    /// The event.
    pub event: Kept,
    /// Dropped when the delivery is settled.
    pub settled: tokio::sync::oneshot::Sender<()>,
}

impl Broker {
    /// A subscription no publish reaches: only [`Broker::feed`] puts events
    /// in it (a durable subscription, fed from storage). It is listed, and
    /// acks, nacks, the window, ack waits and dead letters work as for any
    /// other; [`Broker::unsubscribe`] closes it.
    pub fn subscribe_detached(&self, req: SubscribeRequest) -> Result<Arc<Subscription>, Error> {
        self.open(req, true)
    }

    /// Buffers a stored event in a detached subscription; gives it back
    /// when the subscription has no room (wait with
    /// [`Subscription::wait_space`]). `settled` drops when the
    /// delivery is acked or dead-lettered, or the subscription closes.
    pub fn feed(&self, sub: &Arc<Subscription>, e: Box<Stored>) -> Result<(), Box<Stored>> {
        match sub.has_space() {
            Ok(true) => {}
            _ => return Err(e),
        }
        let e = *e;
        let Stored { event: e, settled } = e;
        let context = event_context(e.id, 0);
        let event = Arc::new(EventData {
            id: e.id,
            topic: e.topic,
            payload: e.payload,
            content_type: e.content_type,
            headers: e.headers,
            publish_time_unix_ns: e.publish_time_unix_ns,
            settle: Some(Settle::new(settled)),
        });
        // A subscription that closed meanwhile drops the event, and with it
        // the settle sender: the feeder sees the subscription closed and
        // keeps the stored row.
        let _ = sub.push(Queued::new(event, context, None));
        Ok(())
    }
}
