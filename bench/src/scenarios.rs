//! The measurements and the report.

use std::time::{Duration, Instant};

use kernel_sdk::{Bytes, Client, SubscribeOptions};
use tokio::process::Command;

use crate::measure::{latency, row, throughput, Latency, Row};
use crate::procs::{free_port, sibling, spawn, wait_line, wait_ready};

const CALL_PAYLOAD: usize = 64;
const EVENT_PAYLOAD: usize = 256;
/// Events per throughput run, and runs per side.
const EVENT_COUNT: usize = 1_000_000;
const EVENT_RUNS: usize = 3;

/// The run with the median rate (sorts `runs`).
fn median_run(runs: &mut [(f64, usize)]) -> (f64, usize) {
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    runs[runs.len() / 2]
}

pub(crate) async fn all(secs: u64, samples: usize) {
    let mut rows = Vec::new();
    let payload = Bytes::from(vec![7u8; CALL_PAYLOAD]);
    println!(
        "kernel bench: {} cores, {secs} s per throughput run, {samples} latency samples",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // --- direct tonic baseline ---------------------------------------------
    let port = free_port();
    let mut echo = spawn(Command::new(sibling("kernel-bench")).args([
        "echo-server",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]))
    .await;
    let direct = Client::connect(&format!("http://127.0.0.1:{port}")).expect("client");
    wait_ready(&direct, "bench.echo").await;
    let p = payload.clone();
    let d = direct.clone();
    let direct_lat = latency(samples, || {
        let (d, p) = (d.clone(), p.clone());
        async move {
            d.call("bench.echo", p).await.expect("direct call");
        }
    })
    .await;
    row(
        &mut rows,
        "direct tonic bidi ping-pong p50",
        us(direct_lat),
        String::new(),
    );
    let _ = echo.kill().await;

    // --- kernel between two out-of-process plugins -------------------------
    let (mut node, url) = crate::procs::start_node(&[]).await;
    let mut provider =
        spawn(Command::new(sibling("kernel-bench")).args(["provider", "--url", &url])).await;
    let caller = Client::connect(&url)
        .expect("client")
        .with_plugin("bench-caller");
    wait_ready(&caller, "bench.echo").await;
    let c = caller.clone();
    let p = payload.clone();
    let kernel_lat = latency(samples, || {
        let (c, p) = (c.clone(), p.clone());
        async move {
            c.call("bench.echo", p).await.expect("kernel call");
        }
    })
    .await;
    let c = caller.clone();
    let p = payload.clone();
    let kernel_tput = throughput(32, secs, move || {
        let (c, p) = (c.clone(), p.clone());
        async move {
            c.call("bench.echo", p).await.expect("kernel call");
        }
    })
    .await;

    // --- NATS request-reply ------------------------------------------------
    let nats = async_nats::connect("127.0.0.1:4222").await.ok();
    let mut nats_lat = None;
    let mut nats_tput = None;
    if let Some(nc) = &nats {
        let mut responder =
            spawn(Command::new(sibling("kernel-bench")).arg("nats-responder")).await;
        wait_line(&mut responder, "READY").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let p = payload.clone();
        let n = nc.clone();
        nats_lat = Some(
            latency(samples, || {
                let (n, p) = (n.clone(), p.clone());
                async move {
                    n.request("bench.echo", p).await.expect("nats request");
                }
            })
            .await,
        );
        let n = nc.clone();
        let p = payload.clone();
        nats_tput = Some(
            throughput(32, secs, move || {
                let (n, p) = (n.clone(), p.clone());
                async move {
                    let _ = n.request("bench.echo", p).await;
                }
            })
            .await,
        );
        let _ = responder.kill().await;
    }
    let nats_p50 = nats_lat.map(|l| l.p50_us);
    row(
        &mut rows,
        "kernel call (plugin→kernel→plugin) p50",
        us(kernel_lat),
        match nats_p50 {
            Some(n) => format!(
                "= {:.2} × NATS req-reply p50 {:.1} µs (target ≤ 0.8)",
                kernel_lat.p50_us / n,
                n
            ),
            None => "(NATS not reachable: no ratio)".into(),
        },
    );
    row(
        &mut rows,
        "kernel call throughput, 32 callers",
        format!("{kernel_tput:.0} calls/s"),
        match nats_tput {
            Some(n) => format!(
                "= {:.2} × NATS req-reply {n:.0}/s (target ≥ 1.2)",
                kernel_tput / n
            ),
            None => String::new(),
        },
    );
    if let Some(l) = nats_lat {
        row(&mut rows, "NATS request-reply p50", us(l), String::new());
    }
    row(
        &mut rows,
        "kernel call vs direct tonic p50",
        format!("{:.2} ×", kernel_lat.p50_us / direct_lat.p50_us),
        "(two hops vs one)".into(),
    );

    // --- events over gRPC ----------------------------------------------------
    // Three runs of each, interleaved (kernel, NATS, kernel, ...), and the
    // medians compared: one run on this shared 2-core machine moves by
    // 10 % from one second to the next.
    let mut ev_runs = Vec::new();
    let mut nats_runs = Vec::new();
    for _ in 0..EVENT_RUNS {
        ev_runs.push(events_grpc(&url, EVENT_COUNT, EVENT_PAYLOAD).await);
        if nats.is_some() {
            if let Some(r) = nats_pubsub(EVENT_COUNT, EVENT_PAYLOAD).await {
                nats_runs.push(r);
            }
        }
    }
    let ev = median_run(&mut ev_runs);
    let nats_lost: usize = nats_runs.iter().map(|r| r.1).sum();
    let nats_ev = (!nats_runs.is_empty()).then(|| median_run(&mut nats_runs));
    let ev_lost: usize = ev_runs.iter().map(|r| r.1).sum();
    row(
        &mut rows,
        "events publisher→kernel→wildcard subscriber (bulk publisher)",
        format!(
            "{:.0} msg/s (median of {EVENT_RUNS} × {EVENT_COUNT}), lost {ev_lost}",
            ev.0
        ),
        match nats_ev {
            Some((rate, _)) => format!("= {:.2} × NATS pub/sub {rate:.0} msg/s (NATS lost {nats_lost} in all runs) (target ≥ 1.0, zero loss)", ev.0 / rate),
            None => String::new(),
        },
    );
    // Other sizes, and a fan-out: one run each, kernel then NATS.
    for (size, count) in [(16usize, 1_000_000usize), (4096, 200_000)] {
        let (rate, lost) = events_grpc(&url, count, size).await;
        let peer = match nats {
            Some(_) => nats_pubsub(count, size).await,
            None => None,
        };
        row(
            &mut rows,
            &format!("events publisher→kernel→wildcard subscriber, {size} B (one run of {count})"),
            format!("{rate:.0} msg/s, lost {lost}"),
            match peer {
                Some((r, l)) => format!(
                    "= {:.2} × NATS pub/sub {r:.0} msg/s (NATS lost {l}) (target ≥ 1.0, zero loss)",
                    rate / r
                ),
                None => String::new(),
            },
        );
    }
    let (rate, lost) = events_fanout(&url, FANOUT, FANOUT_EVENTS).await;
    let peer = match nats {
        Some(_) => nats_fanout(FANOUT, FANOUT_EVENTS).await,
        None => None,
    };
    row(
        &mut rows,
        &format!("fan-out: one publisher → {FANOUT} subscribers, 256 B (deliveries/s)"),
        format!("{rate:.0} deliveries/s, lost {lost}"),
        match peer {
            Some((r, l)) => format!(
                "= {:.2} × NATS {r:.0} deliveries/s (NATS lost {l})",
                rate / r
            ),
            None => String::new(),
        },
    );
    let _ = provider.kill().await;
    let _ = node.kill().await;

    let peers = crate::transport::Peers {
        nats: nats_lat.map(|l| l.p50_us).zip(nats_tput),
        tcp: Some((kernel_lat.p50_us, kernel_tput)),
    };
    crate::transport::all(&mut rows, secs, samples, &peers).await;
    crate::memory::all(&mut rows).await;
    crate::local::all(&mut rows).await;
    crate::supervise::all(&mut rows).await;
    crate::outbox::all(&mut rows, sibling).await;
    crate::durable::all(&mut rows, sibling).await;
    table(&rows);
}

/// The durable rows alone (`kernel-bench durable`).
pub(crate) async fn durable_only() {
    let mut rows = Vec::new();
    crate::durable::all(&mut rows, sibling).await;
    table(&rows);
}

/// The outbox rows alone (`kernel-bench outbox`).
pub(crate) async fn outbox_only() {
    let mut rows = Vec::new();
    crate::outbox::all(&mut rows, sibling).await;
    table(&rows);
}

/// The supervision rows alone (`kernel-bench supervise`).
pub(crate) async fn supervise_only() {
    let mut rows = Vec::new();
    crate::supervise::all(&mut rows).await;
    table(&rows);
}

/// The in-process rows alone (`kernel-bench local`).
pub(crate) async fn local_only() {
    let mut rows = Vec::new();
    crate::local::all(&mut rows).await;
    table(&rows);
}

/// Prints the closing table and writes the rows as JSON beside it
/// (`BENCH_JSON`, default `target/bench.json`), so runs can be compared.
fn table(rows: &[Row]) {
    println!("\n| measurement | value | vs target |\n|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} |", r.what, r.value, r.target);
    }
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| serde_json::json!({ "measurement": r.what, "value": r.value, "target": r.target }))
        .collect();
    let path = std::env::var("BENCH_JSON").unwrap_or_else(|_| "target/bench.json".into());
    let doc = serde_json::json!({
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        "rows": json,
    });
    match serde_json::to_string_pretty(&doc).map(|text| std::fs::write(&path, text)) {
        Ok(Ok(())) => println!("\n(rows also in {path})"),
        Ok(Err(e)) => eprintln!("cannot write {path}: {e}"),
        Err(e) => eprintln!("cannot encode the rows: {e}"),
    }
}

fn us(l: Latency) -> String {
    format!("{:.1} µs (p99 {:.1} µs)", l.p50_us, l.p99_us)
}

/// Publisher and wildcard subscriber on separate connections through the
/// kernel process; returns (msg/s, lost).
pub(crate) async fn events_grpc(url: &str, n: usize, size: usize) -> (f64, usize) {
    let sub_client = Client::connect(url).expect("client");
    let pub_client = Client::connect(url).expect("client");
    let mut sub = sub_client
        .subscriber(SubscribeOptions::new("bench.ev.>"))
        .await
        .expect("subscribe");
    let mut publisher = pub_client
        .bulk_publisher()
        .await
        .expect("publisher")
        .timeout(Duration::from_secs(30));
    let payload = Bytes::from(vec![1u8; size]);
    let start = Instant::now();
    // Every event must be confirmed accepted: a refusal fails the bench.
    let pubs = tokio::spawn(async move {
        for _ in 0..n {
            publisher
                .publish("bench.ev.x", payload.clone())
                .await
                .expect("publish stream");
        }
        let refused = publisher.flush().await.expect("flush");
        assert!(refused.is_empty(), "refused: {refused:?}");
    });
    let mut got = 0;
    while got < n {
        match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
            Ok(Some(_)) => got += 1,
            _ => break,
        }
    }
    let elapsed = start.elapsed();
    let _ = pubs.await;
    (got as f64 / elapsed.as_secs_f64(), n - got)
}

/// Subscribers on the fan-out rows.
const FANOUT: usize = 100;
/// Events published on the fan-out rows (each delivered `FANOUT` times).
const FANOUT_EVENTS: usize = 20_000;

/// One bulk publisher, `subs` wildcard subscribers on one connection;
/// returns (deliveries/s, deliveries lost).
async fn events_fanout(url: &str, subs: usize, n: usize) -> (f64, usize) {
    let sub_client = Client::connect(url).expect("client");
    let pub_client = Client::connect(url).expect("client");
    let mut readers = Vec::with_capacity(subs);
    for _ in 0..subs {
        let mut sub = sub_client
            .subscriber(SubscribeOptions::new("bench.fan.>"))
            .await
            .expect("subscribe");
        readers.push(tokio::spawn(async move {
            let mut got = 0;
            while got < n {
                match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
                    Ok(Some(_)) => got += 1,
                    _ => break,
                }
            }
            got
        }));
    }
    let mut publisher = pub_client
        .bulk_publisher()
        .await
        .expect("publisher")
        .timeout(Duration::from_secs(30));
    let payload = Bytes::from(vec![1u8; EVENT_PAYLOAD]);
    let start = Instant::now();
    for _ in 0..n {
        publisher
            .publish("bench.fan.x", payload.clone())
            .await
            .expect("publish stream");
    }
    assert!(publisher.flush().await.expect("flush").is_empty());
    let mut got = 0;
    for r in readers {
        got += r.await.unwrap_or(0);
    }
    (got as f64 / start.elapsed().as_secs_f64(), subs * n - got)
}

/// NATS core with the fan-out's shape; returns (deliveries/s, lost).
async fn nats_fanout(subs: usize, n: usize) -> Option<(f64, usize)> {
    use futures::StreamExt;
    let sub_c = async_nats::connect("127.0.0.1:4222").await.ok()?;
    let pub_c = async_nats::connect("127.0.0.1:4222").await.ok()?;
    let mut readers = Vec::with_capacity(subs);
    for _ in 0..subs {
        let mut sub = sub_c.subscribe("bench.fan.>").await.ok()?;
        readers.push(tokio::spawn(async move {
            let mut got = 0;
            while got < n {
                match tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
                    Ok(Some(_)) => got += 1,
                    _ => break,
                }
            }
            got
        }));
    }
    sub_c.flush().await.ok()?;
    let payload = Bytes::from(vec![1u8; EVENT_PAYLOAD]);
    let start = Instant::now();
    for _ in 0..n {
        let _ = pub_c.publish("bench.fan.x", payload.clone()).await;
    }
    let _ = pub_c.flush().await;
    let mut got = 0;
    for r in readers {
        got += r.await.unwrap_or(0);
    }
    Some((got as f64 / start.elapsed().as_secs_f64(), subs * n - got))
}

/// NATS core pub/sub with the same shape; returns (msg/s, lost).
pub(crate) async fn nats_pubsub(n: usize, size: usize) -> Option<(f64, usize)> {
    use futures::StreamExt;
    let sub_c = async_nats::connect("127.0.0.1:4222").await.ok()?;
    let pub_c = async_nats::connect("127.0.0.1:4222").await.ok()?;
    let mut sub = sub_c.subscribe("bench.ev.>").await.ok()?;
    sub_c.flush().await.ok()?;
    let payload = Bytes::from(vec![1u8; size]);
    let start = Instant::now();
    let publisher = tokio::spawn(async move {
        for _ in 0..n {
            let _ = pub_c.publish("bench.ev.x", payload.clone()).await;
        }
        let _ = pub_c.flush().await;
    });
    let mut got = 0;
    let mut last = Instant::now();
    while got < n {
        match tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
            Ok(Some(_)) => {
                got += 1;
                last = Instant::now();
            }
            _ => break,
        }
    }
    let _ = publisher.await;
    let elapsed = last.duration_since(start);
    Some((got as f64 / elapsed.as_secs_f64(), n - got))
}
