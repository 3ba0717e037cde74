//! Transaction scope over the plugin's own PostgreSQL connection (feature
//! `postgres`): its SQL and its emits commit or roll back together, because
//! the emits are rows inserted into the node's outbox table by that same
//! transaction. The node's relay publishes them once the transaction
//! commits (docs/PROTOCOL.md §6.8), at least once, each under a stable id.
//!
//! Same shape as the in-memory [`crate::Transaction`]: `emit` buffers,
//! `commit` writes the rows and commits, dropping or `rollback` discards.

use bytes::Bytes;
use kernel_proto::headers as h;
use tonic::Code;

use crate::context::Context;
use crate::error::Error;

/// A database transaction whose emits go to the outbox.
pub struct PgTransaction<'a> {
    tx: tokio_postgres::Transaction<'a>,
    headers: serde_json::Value,
    events: Vec<(String, Bytes)>,
}

impl std::fmt::Debug for PgTransaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTransaction")
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl Context {
    /// Begins a transaction on `client` whose emits are outbox rows: the
    /// events keep this call's trace, baggage and context.
    pub async fn begin_pg<'a>(
        &self,
        client: &'a mut tokio_postgres::Client,
    ) -> Result<PgTransaction<'a>, Error> {
        let tx = client.transaction().await.map_err(db_error)?;
        Ok(self.outbox(tx))
    }

    /// The same over a transaction the plugin already began.
    pub fn outbox<'a>(&self, tx: tokio_postgres::Transaction<'a>) -> PgTransaction<'a> {
        let mut headers = serde_json::Map::new();
        for (k, v) in self.origin_headers() {
            headers.insert(k, serde_json::Value::String(v));
        }
        if let Some(p) = self.client().plugin_name() {
            headers.insert(h::PLUGIN.to_owned(), serde_json::Value::String(p));
        }
        PgTransaction {
            tx,
            headers: serde_json::Value::Object(headers),
            events: Vec::new(),
        }
    }
}

impl<'a> PgTransaction<'a> {
    /// The transaction, for the plugin's own SQL.
    pub fn sql(&self) -> &tokio_postgres::Transaction<'a> {
        &self.tx
    }

    /// Buffers an event; it becomes an outbox row when the scope commits.
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

    /// Inserts the buffered events into `kernel.outbox` (one statement,
    /// in emit order) and commits the transaction with them.
    pub async fn commit(self) -> Result<(), Error> {
        if !self.events.is_empty() {
            let (topics, payloads): (Vec<String>, Vec<Vec<u8>>) = self
                .events
                .into_iter()
                .map(|(t, p)| (t, p.to_vec()))
                .unzip();
            self.tx
                .execute(
                    "INSERT INTO kernel.outbox (topic, payload, headers) \
                     SELECT t, p, $3 FROM unnest($1::text[], $2::bytea[]) \
                     WITH ORDINALITY AS e(t, p, n) ORDER BY n",
                    &[&topics, &payloads, &self.headers],
                )
                .await
                .map_err(db_error)?;
        }
        self.tx.commit().await.map_err(db_error)
    }

    /// Rolls the transaction back; nothing is emitted.
    pub async fn rollback(self) -> Result<(), Error> {
        self.tx.rollback().await.map_err(db_error)
    }

    /// Runs `body` in a scope on `client`: commits if it returns Ok, rolls
    /// back if it returns Err (or panics: the dropped transaction rolls
    /// back).
    pub async fn run<F, T>(
        ctx: &Context,
        client: &'a mut tokio_postgres::Client,
        body: F,
    ) -> Result<T, Error>
    where
        F: for<'t> FnOnce(
            &'t mut PgTransaction<'a>,
        ) -> futures::future::BoxFuture<'t, Result<T, Error>>,
    {
        let mut tx = ctx.begin_pg(client).await?;
        match body(&mut tx).await {
            Ok(v) => {
                tx.commit().await?;
                Ok(v)
            }
            Err(e) => {
                // The body's error is the one to report; a failed rollback
                // ends the transaction all the same.
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }
}

/// A database error as the SDK's: `UNAVAILABLE` when the connection is
/// gone, `ABORTED` for anything the database refused.
fn db_error(e: tokio_postgres::Error) -> Error {
    let code = if e.is_closed() {
        Code::Unavailable
    } else {
        Code::Aborted
    };
    Error::new(code, format!("database: {e}"))
}
