//! The memory rows: the node's resident set idle, with 1,000 connected
//! providers (one connection each), and, on a second fresh node, with
//! 10,000 subscriptions and after those close (is the memory given back to
//! the operating system?).

use std::time::Duration;

use kernel_sdk::{Bytes, CancellationToken, Client, Plugin, SubscribeOptions};
use tokio::process::Child;

use crate::measure::{row, Row};
use crate::procs::{start_node, wait_ready};

const PROVIDERS: usize = 1_000;
const SUBSCRIPTIONS: usize = 10_000;
/// Connections the subscriptions are spread over (500 streams each).
const SUBSCRIBER_CONNECTIONS: usize = 20;

/// The child's resident set in KiB (`VmRSS` in `/proc/PID/status`).
fn rss_kib(child: &Child) -> f64 {
    let pid = child.id().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn mb(kib: f64) -> String {
    format!("{:.1} MB", kib * 1024.0 / 1e6)
}

/// Lets the node settle (allocator purges run on a timer), then reads.
async fn settled_rss(child: &Child) -> f64 {
    tokio::time::sleep(Duration::from_secs(2)).await;
    rss_kib(child)
}

pub(crate) async fn all(rows: &mut Vec<Row>) {
    let (mut node, url) = start_node(&[]).await;
    let idle = settled_rss(&node).await;
    row(rows, "node RSS, idle", mb(idle), "(target ≤ 12 MB)".into());

    // 1,000 providers, each its own plugin and connection.
    let stop = CancellationToken::new();
    let mut tasks = Vec::with_capacity(PROVIDERS);
    for i in 0..PROVIDERS {
        let (url, stop) = (url.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let plugin = Plugin::new(&format!("mem-{i}"))
                .provide(&format!("mem.p{i}"), |_ctx, p: Bytes| async move { Ok(p) });
            let _ = plugin.serve(&url, stop).await;
        }));
    }
    let caller = Client::connect(&url).expect("client");
    for i in 0..PROVIDERS {
        wait_ready(&caller, &format!("mem.p{i}")).await;
    }
    let with_providers = settled_rss(&node).await;
    let per_provider = (with_providers - idle) / PROVIDERS as f64;
    row(
        rows,
        "node RSS with 1,000 idle connected providers",
        format!("{} ({per_provider:.1} KB per provider)", mb(with_providers)),
        "(target ≤ 16 KB per provider)".into(),
    );
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let _ = node.kill().await;

    let (mut node, url) = start_node(&[]).await;
    let before_subs = settled_rss(&node).await;

    // 10,000 subscriptions over 20 connections.
    let mut subs = Vec::with_capacity(SUBSCRIPTIONS);
    let per = SUBSCRIPTIONS / SUBSCRIBER_CONNECTIONS;
    for c in 0..SUBSCRIBER_CONNECTIONS {
        let client = Client::connect(&url)
            .expect("client")
            .with_plugin(&format!("mem-sub-{c}"));
        for i in 0..per {
            let s = client
                .subscriber(SubscribeOptions::new(&format!("mem.c{c}.t{i}")))
                .await
                .expect("subscribe");
            subs.push(s);
        }
    }
    let with_subs = settled_rss(&node).await;
    let per_sub = (with_subs - before_subs) / SUBSCRIPTIONS as f64;
    row(
        rows,
        "node RSS with 10,000 idle subscriptions",
        format!("{} ({per_sub:.1} KB per subscription)", mb(with_subs)),
        "(target ≤ 4 KB per subscription)".into(),
    );
    drop(subs);
    // Wait until the node has let every one of them go.
    let mut admin = kernel_proto::v1::admin_client::AdminClient::connect(url.clone())
        .await
        .expect("admin");
    let start = std::time::Instant::now();
    loop {
        let left = admin
            .list_subscriptions(kernel_proto::v1::ListSubscriptionsRequest::default())
            .await
            .expect("list subscriptions")
            .into_inner()
            .subscriptions
            .len();
        if left == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{left} subscriptions still open 30 s after their clients closed them"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = settled_rss(&node).await;
    row(
        rows,
        "node RSS after the 10,000 subscriptions closed",
        format!(
            "{} = {:.2} × that node idle ({})",
            mb(after),
            after / before_subs,
            mb(before_subs)
        ),
        "(target ≤ 2 × idle)".into(),
    );
    let _ = node.kill().await;
}
