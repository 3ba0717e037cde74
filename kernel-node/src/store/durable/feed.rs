//! The feeder of a connected durable subscriber: fills its detached
//! subscription from the table in `seq` order while it is open, and deletes
//! each row once its delivery is settled (acked or dead-lettered; not one
//! dropped with a closing subscription).

use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use kernel_core::{Kept, Kernel, Stored, Subscription};
use tokio::sync::oneshot;

use super::{Durables, FETCH};

/// Fills `sub` from durable `name`'s rows in order while it is open, and
/// deletes each row once its delivery is settled.
pub(super) async fn feed(
    durables: Arc<Durables>,
    kernel: Arc<Kernel>,
    sub: Arc<Subscription>,
    name: String,
) {
    let wake = durables.wake_of(&name);
    let mut after = 0i64;
    let mut settling = FuturesUnordered::new();
    let mut settled: Vec<i64> = Vec::new();
    while !sub.is_closed() {
        let rows = match durables.fetch(&name, after).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(durable = %name, cause = %e, "cannot read durable events; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let full = rows.len() as i64 == FETCH;
        for row in rows {
            let seq: i64 = row.get(0);
            let (tx, rx) = oneshot::channel::<()>();
            let mut stored = Box::new(stored(&row, tx));
            loop {
                match kernel.broker().feed(&sub, stored) {
                    Ok(()) => break,
                    Err(back) => {
                        stored = back;
                        if sub.is_closed() {
                            return;
                        }
                        tokio::select! {
                            _ = sub.wait_space() => {}
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        }
                    }
                }
            }
            settling.push(rx.map(move |_| seq));
            after = seq;
        }
        // Settled deliveries (acked or dead-lettered; not those dropped
        // with a closing subscription) are deleted, in batches.
        while let Some(Some(seq)) = settling.next().now_or_never() {
            if !sub.is_closed() {
                settled.push(seq);
            }
        }
        if !settled.is_empty() {
            match durables.delete_settled(&name, &settled).await {
                Ok(()) => settled.clear(),
                Err(e) => {
                    tracing::warn!(durable = %name, cause = %e, "cannot delete acked durable events; retrying")
                }
            }
        }
        if full {
            continue;
        }
        tokio::select! {
            Some(seq) = settling.next(), if !settling.is_empty() => {
                if !sub.is_closed() {
                    settled.push(seq);
                }
            }
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

fn stored(row: &tokio_postgres::Row, settled: oneshot::Sender<()>) -> Stored {
    Stored {
        event: Kept {
            id: row.get::<_, i64>(1) as u64,
            topic: row.get(2),
            payload: bytes::Bytes::from(row.get::<_, Vec<u8>>(3)),
            content_type: row.get(4),
            headers: crate::store::headers_of(row.get(5)),
            publish_time_unix_ns: row.get(6),
        },
        settled,
    }
}
