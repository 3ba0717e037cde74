//! Transaction scope without a database (the embedded default): emits are
//! buffered and published in order when the scope commits, and discarded
//! when it is rolled back or dropped.

use bytes::Bytes;

use crate::client::Published;
use crate::context::Context;
use crate::error::Error;

/// A buffered set of emits. Dropping it without [`Transaction::commit`]
/// discards them.
#[derive(Debug)]
pub struct Transaction {
    ctx: Context,
    events: Vec<(String, Bytes)>,
}

impl Transaction {
    pub(crate) fn new(ctx: Context) -> Transaction {
        Transaction {
            ctx,
            events: Vec::new(),
        }
    }

    /// Buffers an event; nothing is published yet.
    pub fn emit(&mut self, topic: &str, payload: impl Into<Bytes>) {
        self.events.push((topic.to_owned(), payload.into()));
    }

    /// How many events are buffered.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True when nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Publishes every buffered event, in emit order. Stops at the first
    /// failure and returns it with how many were published before it.
    pub async fn commit(self) -> Result<Vec<Published>, (usize, Error)> {
        let mut out = Vec::with_capacity(self.events.len());
        for (topic, payload) in self.events {
            match self.ctx.emit(&topic, payload).await {
                Ok(p) => out.push(p),
                Err(e) => return Err((out.len(), e)),
            }
        }
        Ok(out)
    }

    /// Discards the buffered events.
    pub fn rollback(self) {}

    /// Runs `body` with a scope; commits if it returns Ok, discards if it
    /// returns Err.
    pub async fn run<F, Fut, T>(ctx: &Context, body: F) -> Result<T, Error>
    where
        F: FnOnce(Transaction) -> Fut,
        Fut: std::future::Future<Output = (Transaction, Result<T, Error>)>,
    {
        let (tx, result) = body(ctx.begin()).await;
        match result {
            Ok(v) => {
                tx.commit().await.map_err(|(_, e)| e)?;
                Ok(v)
            }
            Err(e) => {
                tx.rollback();
                Err(e)
            }
        }
    }
}

impl Context {
    /// Starts a transaction scope: emits are buffered and published, in
    /// order, only when it commits.
    pub fn begin(&self) -> Transaction {
        Transaction::new(self.clone())
    }
}
