//! Where events for durable subscriptions are kept. The node's PostgreSQL
//! store implements [`Keeper`] and gives it to the kernel
//! ([`crate::Kernel::set_keeper`]); every publish whose topic a durable
//! subscription wants is kept before its publisher is answered. The kernel
//! itself stays free of any database.

use bytes::Bytes;

use crate::call::{BoxFuture, Headers};
use crate::error::Error;

/// An accepted event, to keep for the durable subscriptions that want it.
#[derive(Debug, Clone)]
pub struct Kept {
    /// Its id (the one its in-memory deliveries carry).
    pub id: u64,
    /// Topic.
    pub topic: String,
    /// Body.
    pub payload: Bytes,
    /// Content type.
    pub content_type: String,
    /// Its headers (trace, baggage, `x-kernel-caller`).
    pub headers: Headers,
    /// Publish time, Unix ns.
    pub publish_time_unix_ns: i64,
}

/// Storage for durable subscriptions' events.
pub trait Keeper: Send + Sync + std::fmt::Debug {
    /// Whether some durable subscription wants events on `topic` (asked on
    /// every publish: an in-memory lookup).
    fn wants(&self, topic: &str) -> bool;
    /// Keeps `event` for every durable subscription that wants it;
    /// resolves once it is stored, or with why not (`UNAVAILABLE` naming
    /// the database, `RESOURCE_EXHAUSTED` naming a full backlog).
    fn keep(&self, event: Kept) -> BoxFuture<Result<(), Error>>;
}
