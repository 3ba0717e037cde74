//! Durable publish → delivery against NATS JetStream, in the same run: a
//! publisher pushes N events of 256 B with a bounded window of unconfirmed
//! publishes while one durable consumer acks each; the figure is events
//! per second from the first publish to the last delivery, and every event
//! must arrive (zero loss). Kernel: a release `kernel-node` on a fresh
//! PostgreSQL database (`BENCH_DATABASE_URL`), a durable subscription, the
//! SDK's bulk publisher. JetStream: the local nats-server (`-js`), a file
//! stream, a durable pull consumer with explicit acks.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kernel_sdk::{Client, SubscribeOptions};
use tokio::process::Command;

use crate::measure::{row, Row};
use crate::outbox::BenchDb;

const N: usize = 50_000;
const PAYLOAD: usize = 256;
/// Unconfirmed publishes at a time, on both sides.
const WINDOW: usize = 1_024;

pub(crate) async fn all(rows: &mut Vec<Row>, sibling: impl Fn(&str) -> std::path::PathBuf) {
    let kernel = kernel_rate(&sibling).await;
    let nats = jetstream_rate().await;
    let (k, j) = match (kernel, nats) {
        (Some(k), Some(j)) => (k, j),
        (k, j) => {
            println!("  (durable rows incomplete: kernel {k:?}, jetstream {j:?})");
            return;
        }
    };
    row(
        rows,
        "durable publish → delivery, 256 B (kernel + PostgreSQL)",
        format!("{k:.0} events/s, 0 lost"),
        format!("= {:.2} × JetStream (target ≥ 0.5)", k / j),
    );
    row(
        rows,
        "JetStream publish → durable pull consumer, 256 B",
        format!("{j:.0} events/s, 0 lost"),
        String::new(),
    );
}

async fn kernel_rate(sibling: &impl Fn(&str) -> std::path::PathBuf) -> Option<f64> {
    let bench_db = BenchDb::create("kbench_durable").await.ok()?;
    let db = bench_db.url.clone();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .ok()?
        .port();
    let mut node = Command::new(sibling("kernel-node"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("KERNEL_DATABASE_URL", &db)
        .env("KERNEL_TELEMETRY__ADMIN_LISTEN", "")
        // All cores, as nats-server takes them.
        .env("KERNEL_SERVER__WORKER_THREADS", "0")
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let client = Client::connect(&format!("http://127.0.0.1:{port}")).ok()?;
    let start = Instant::now();
    let mut sub = loop {
        match client
            .subscriber(
                SubscribeOptions::new("dur.>")
                    .durable("bench")
                    .window(4_096),
            )
            .await
        {
            Ok(s) => break s,
            Err(_) if start.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => {
                println!("  (durable subscription failed: {e})");
                return None;
            }
        }
    };
    let payload = vec![1u8; PAYLOAD];
    let consumer = tokio::spawn(async move {
        let mut got = 0usize;
        while got < N {
            match tokio::time::timeout(Duration::from_secs(20), sub.next()).await {
                Ok(Some(e)) => {
                    sub.ack(&e);
                    got += 1;
                }
                _ => break,
            }
        }
        (got, Instant::now())
    });
    let t = Instant::now();
    let mut bulk = client.bulk_publisher().await.ok()?.window(WINDOW as u64);
    for _ in 0..N {
        bulk.publish("dur.x", payload.clone()).await.ok()?;
    }
    let refused = bulk.flush().await.ok()?;
    let (got, end) = consumer.await.ok()?;
    let _ = node.kill().await;
    bench_db.drop_it().await;
    if !refused.is_empty() || got != N {
        println!(
            "  (kernel durable: {} refused, {got} of {N} delivered)",
            refused.len()
        );
        return None;
    }
    Some(N as f64 / end.duration_since(t).as_secs_f64())
}

async fn jetstream_rate() -> Option<f64> {
    use async_nats::jetstream::{self, consumer::pull, stream};
    let nc = async_nats::connect("127.0.0.1:4222").await.ok()?;
    let js = jetstream::new(nc);
    let name = format!("KBENCH{}", std::process::id());
    let _ = js.delete_stream(&name).await;
    let stream = js
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            ..Default::default()
        })
        .await
        .ok()?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .ok()?;
    let mut messages = consumer.messages().await.ok()?;
    let reader = tokio::spawn(async move {
        let mut got = 0usize;
        while got < N {
            match tokio::time::timeout(Duration::from_secs(20), messages.next()).await {
                Ok(Some(Ok(m))) => {
                    let _ = m.ack().await;
                    got += 1;
                }
                _ => break,
            }
        }
        (got, Instant::now())
    });
    let payload = bytes::Bytes::from(vec![1u8; PAYLOAD]);
    let subject = format!("{name}.x");
    let t = Instant::now();
    let mut acks = std::collections::VecDeque::with_capacity(WINDOW);
    for _ in 0..N {
        if acks.len() == WINDOW {
            let ack: async_nats::jetstream::context::PublishAckFuture = acks.pop_front()?;
            ack.await.ok()?;
        }
        acks.push_back(js.publish(subject.clone(), payload.clone()).await.ok()?);
    }
    for ack in acks {
        ack.await.ok()?;
    }
    let (got, end) = reader.await.ok()?;
    let _ = js.delete_stream(&name).await;
    if got != N {
        println!("  (jetstream: {got} of {N} delivered)");
        return None;
    }
    Some(N as f64 / end.duration_since(t).as_secs_f64())
}
