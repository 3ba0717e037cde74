//! The outbox relay: one connection that LISTENs on `kernel_outbox` and, on
//! each notification (or every `outbox.poll_ms`, for one that was missed),
//! claims committed rows in id order with `FOR UPDATE SKIP LOCKED` (so
//! nodes sharing the database never hold the same row), publishes them
//! through the bus, and deletes them in the same transaction.
//!
//! A row is deleted only once its event is settled (every explicit-ack
//! subscriber acked it; an auto-ack one has it in its stream), and the
//! claim holds until then: a node killed mid-batch leaves its rows to be
//! claimed again, so each committed row is delivered at least once, under
//! the same id (`OUTBOX_ID_BIT | row id`). A full subscriber makes the publish wait,
//! then the relay keeps the rest of the batch and tries again: backpressure
//! slows the relay, it never drops. A row the bus can never accept goes to
//! `kernel.outbox_rejected` with the reason.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::StreamExt;
use kernel_core::{Error, Kernel, Publication, OUTBOX_ID_BIT};
use kernel_proto::headers;
use kernel_proto::trace::{traceparent, SpanKind, SpanParent};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::KeyValue;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client, NoTls, Row};
use tonic::Code;

use super::{migrate, Store};

/// Oldest first; the age is for the lag metric.
const CLAIM: &str = "SELECT id, topic, payload, content_type, headers, \
     (extract(epoch FROM clock_timestamp() - created_at) * 1000)::bigint \
     FROM kernel.outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED";

/// One connection's life: connect, migrate, relay until the node closes
/// (`Ok`) or the connection fails (`Err`).
pub(super) struct Session;

/// How a batch went.
enum Batch {
    /// This many rows were published (fewer than a batch: caught up).
    Done(usize),
    /// The bus pushed back; the rest stays for the next round.
    Blocked,
}

impl Session {
    pub(super) async fn run(
        store: &Store,
        kernel: &Arc<Kernel>,
    ) -> Result<(), tokio_postgres::Error> {
        let (mut client, mut connection) = store.config.connect(NoTls).await?;
        let notified = Arc::new(Notify::new());
        let wake = notified.clone();
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        });
        let _stop_driver = AbortOnDrop(driver.abort_handle());
        let mut driver = driver.fuse();
        migrate::apply(&mut client).await?;
        store.durables.load(&client).await?;
        client.batch_execute("LISTEN kernel_outbox").await?;
        store.up();
        let limit = i64::from(store.outbox.batch);
        let poll = Duration::from_millis(store.outbox.poll_ms);
        // Plugins reconnect and subscribe again after a restart before the
        // backlog goes out (a subscription opened later misses what was
        // relayed before it, as for any publish).
        let delay = Duration::from_millis(store.outbox.start_delay_ms);
        tokio::select! {
            _ = tokio::time::sleep(delay.saturating_sub(store.started.elapsed())) => {}
            _ = kernel.lifecycle().closing() => return Ok(()),
        }
        loop {
            if kernel.lifecycle().closing().now_or_never().is_some() {
                return Ok(());
            }
            match relay_batch(store, &mut client, kernel, limit).await? {
                Batch::Done(n) if n as i64 >= limit => continue,
                Batch::Done(_) => {}
                Batch::Blocked => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
            tokio::select! {
                _ = notified.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = kernel.lifecycle().closing() => return Ok(()),
                ended = &mut driver => {
                    // The connection ended: the next query says why.
                    if let Ok(Err(e)) = ended {
                        return Err(e);
                    }
                    client.simple_query("SELECT 1").await?;
                }
            }
        }
    }
}

/// Claims up to `limit` rows, publishes them in order, deletes the
/// published ones and commits.
async fn relay_batch(
    store: &Store,
    client: &mut Client,
    kernel: &Kernel,
    limit: i64,
) -> Result<Batch, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let rows = tx.query(CLAIM, &[&limit]).await?;
    let Some(first) = rows.first() else {
        tx.commit().await?;
        store.lag_ms.store(0, Ordering::Relaxed);
        return Ok(Batch::Done(0));
    };
    store
        .lag_ms
        .store(first.get::<_, i64>(5), Ordering::Relaxed);
    let mut published = Vec::with_capacity(rows.len());
    let mut settled = Vec::with_capacity(rows.len());
    let mut rejected = Vec::new();
    let mut blocked = false;
    for row in &rows {
        let id: i64 = row.get(0);
        let (tx_settled, rx_settled) = tokio::sync::oneshot::channel::<()>();
        let mut p = publication(kernel, row);
        p.settled = Some(tx_settled);
        match kernel.publish_unchecked(p).await {
            Ok(_) => {
                published.push(id);
                settled.push(rx_settled);
            }
            Err(e) if transient(&e) => {
                tracing::warn!(row = id, cause = %e, "the bus pushed back; the outbox relay waits and tries this row again");
                blocked = true;
                break;
            }
            Err(e) => {
                tracing::error!(row = id, cause = %e, "the bus refused an outbox row for good; moved to kernel.outbox_rejected");
                rejected.push((id, e.to_string()));
            }
        }
    }
    // Delete only what its subscribers have: an explicit-ack subscriber
    // acked it (or it was dead-lettered and that settled). Closing first
    // leaves the rows for the next start: delivered twice, never lost.
    tokio::select! {
        _ = futures::future::join_all(settled) => {}
        _ = kernel.lifecycle().closing() => return Ok(Batch::Done(0)),
    }
    for (id, reason) in &rejected {
        tx.execute(
            "INSERT INTO kernel.outbox_rejected \
               (id, topic, payload, content_type, headers, created_at, reason) \
             SELECT id, topic, payload, content_type, headers, created_at, $2 \
             FROM kernel.outbox WHERE id = $1",
            &[id, reason],
        )
        .await?;
        published.push(*id);
    }
    if !published.is_empty() {
        tx.execute(
            "DELETE FROM kernel.outbox WHERE id = ANY($1)",
            &[&published],
        )
        .await?;
    }
    tx.commit().await?;
    let n = published.len() - rejected.len();
    store.relayed.fetch_add(n as u64, Ordering::Relaxed);
    store
        .rejected
        .fetch_add(rejected.len() as u64, Ordering::Relaxed);
    if n > 0 {
        store.batches.fetch_add(1, Ordering::Relaxed);
    }
    Ok(if blocked {
        Batch::Blocked
    } else {
        Batch::Done(rows.len())
    })
}

/// Worth trying again later (the bus is full or shutting down), as
/// opposed to a row it will never accept.
fn transient(e: &Error) -> bool {
    matches!(
        e.code(),
        Code::ResourceExhausted | Code::DeadlineExceeded | Code::Unavailable | Code::Cancelled
    )
}

/// The row as an event: its stable id, its headers (trace, baggage, the
/// emitting plugin), the emitting context kept in `x-kernel-emitted-in`, and a
/// relay span between the emitting trace and the deliveries.
fn publication(kernel: &Kernel, row: &Row) -> Publication {
    let id: i64 = row.get(0);
    let topic: String = row.get(1);
    let payload: Vec<u8> = row.get(2);
    let mut hs = super::headers_of(row.get(4));
    let caller = hs.remove(headers::PLUGIN).map(Arc::<str>::from);
    if let Some(path) = hs.remove(headers::CONTEXT) {
        // The delivery gets a context of its own: the emitting call has
        // usually ended by the time the row is relayed.
        hs.insert(headers::EMITTED_IN.to_owned(), path);
    }
    let event_id = OUTBOX_ID_BIT | id as u64;
    let span = kernel.telemetry().start(
        "kernel.outbox.relay",
        SpanKind::Consumer,
        SpanParent::Header(hs.get(headers::TRACEPARENT).map(String::as_str)),
        || {
            vec![
                KeyValue::new("kernel.topic", topic.clone()),
                KeyValue::new("kernel.event_id", format!("{event_id:016x}")),
                KeyValue::new("kernel.outbox.row", id),
            ]
        },
    );
    if let Some(cx) = span {
        hs.insert(headers::TRACEPARENT.to_owned(), traceparent(&cx));
        cx.span().end();
    }
    Publication {
        topic,
        payload: Bytes::from(payload),
        content_type: row.get(3),
        headers: hs,
        caller,
        id: Some(event_id),
        ..Default::default()
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
