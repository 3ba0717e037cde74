//! The transport rows: remote calls over the Unix-domain socket against
//! TCP and NATS, unary `Call` against a direct tonic unary echo, and one
//! raw `CallStream` per caller (a client written from the proto alone, no
//! SDK) against NATS.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kernel_proto::v1::{self as pb, kernel_client::KernelClient};
use kernel_sdk::{Bytes, Client};
use tokio::process::Command;
use tonic::transport::Channel;

use crate::local::CALL_PAYLOAD;
use crate::measure::{latency, row, throughput, Latency, Row};
use crate::procs::{free_port, sibling, spawn, start_node, wait_ready};

/// The peers' figures measured earlier in the same run.
pub(crate) struct Peers {
    /// NATS request-reply p50 (µs) and 32-requester rate, when reachable.
    pub(crate) nats: Option<(f64, f64)>,
    /// The kernel over TCP: p50 (µs) and 32-caller rate through the SDK.
    pub(crate) tcp: Option<(f64, f64)>,
}

const CALLERS: usize = 32;

pub(crate) async fn all(rows: &mut Vec<Row>, secs: u64, samples: usize, peers: &Peers) {
    let payload = Bytes::from(vec![7u8; CALL_PAYLOAD]);
    let dir = std::env::temp_dir().join(format!("kernel-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let sock = dir.join("kernel.sock");
    let unix = format!("unix://{}", sock.display());
    let (mut node, tcp) = start_node(&[("KERNEL_SERVER__UNIX_SOCKET", &sock)]).await;

    // --- both plugins on the socket -----------------------------------------
    let mut provider =
        spawn(Command::new(sibling("kernel-bench")).args(["provider", "--url", &unix])).await;
    let caller = Client::connect(&unix)
        .expect("unix client")
        .with_plugin("bench-caller");
    wait_ready(&caller, "bench.echo").await;
    let c = caller.clone();
    let p = payload.clone();
    let lat = latency(samples, || {
        let (c, p) = (c.clone(), p.clone());
        async move {
            c.call("bench.echo", p).await.expect("uds call");
        }
    })
    .await;
    let c = caller.clone();
    let p = payload.clone();
    let tput = throughput(CALLERS, secs, move || {
        let (c, p) = (c.clone(), p.clone());
        async move {
            c.call("bench.echo", p).await.expect("uds call");
        }
    })
    .await;
    let vs_tcp = |mine: f64, tcp: Option<f64>| {
        tcp.map_or(String::new(), |t| format!("{:.2} × the TCP path", mine / t))
    };
    let (tcp_p50, tcp_tput) = (peers.tcp.map(|t| t.0), peers.tcp.map(|t| t.1));
    row(
        rows,
        "kernel call over the Unix socket (plugin→kernel→plugin) p50",
        us(lat),
        match peers.nats {
            Some((n, _)) => format!(
                "= {:.2} × NATS req-reply p50 (target ≤ 0.8); {}",
                lat.p50_us / n,
                vs_tcp(lat.p50_us, tcp_p50)
            ),
            None => vs_tcp(lat.p50_us, tcp_p50),
        },
    );
    row(
        rows,
        "kernel call over the Unix socket, 32 callers",
        format!("{tput:.0} calls/s"),
        match peers.nats {
            Some((_, n)) => format!(
                "= {:.2} × NATS req-reply; {}",
                tput / n,
                vs_tcp(tput, tcp_tput)
            ),
            None => vs_tcp(tput, tcp_tput),
        },
    );
    let _ = provider.kill().await;

    // --- raw clients over TCP: unary Call, and a CallStream per caller ------
    let mut provider =
        spawn(Command::new(sibling("kernel-bench")).args(["provider", "--url", &tcp])).await;
    let sdk = Client::connect(&tcp).expect("client");
    wait_ready(&sdk, "bench.echo").await;
    let channel = Channel::from_shared(tcp.clone())
        .expect("url")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("connect");
    let kernel_unary = unary_rate(channel.clone(), secs, &payload).await;
    let streams = streams_rate(channel, secs, &payload).await;
    let _ = provider.kill().await;
    let _ = node.kill().await;
    let _ = std::fs::remove_dir_all(&dir);

    let echo_port = free_port();
    let mut echo = spawn(Command::new(sibling("kernel-bench")).args([
        "echo-server",
        "--listen",
        &format!("127.0.0.1:{echo_port}"),
    ]))
    .await;
    let direct = Client::connect(&format!("http://127.0.0.1:{echo_port}")).expect("client");
    wait_ready(&direct, "bench.echo").await;
    let channel = Channel::from_shared(format!("http://127.0.0.1:{echo_port}"))
        .expect("url")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("connect");
    let direct_unary = unary_rate(channel, secs, &payload).await;
    let _ = echo.kill().await;
    row(
        rows,
        "unary Call, 32 callers, raw tonic client (plugin→kernel→plugin)",
        format!("{kernel_unary:.0} calls/s"),
        format!(
            "= {:.2} × a direct tonic unary echo {direct_unary:.0}/s (target ≥ 0.8)",
            kernel_unary / direct_unary
        ),
    );
    row(
        rows,
        "one CallStream per caller, 32 callers, raw tonic client",
        format!("{streams:.0} calls/s"),
        match peers.nats {
            Some((_, n)) => format!(
                "= {:.2} × NATS req-reply {n:.0}/s (target ≥ 1.0)",
                streams / n
            ),
            None => String::new(),
        },
    );
}

fn us(l: Latency) -> String {
    format!("{:.1} µs (p99 {:.1} µs)", l.p50_us, l.p99_us)
}

/// Unary `Kernel/Call` from `CALLERS` tasks on one connection: calls/s.
async fn unary_rate(channel: Channel, secs: u64, payload: &Bytes) -> f64 {
    let client = KernelClient::new(channel);
    let payload = payload.clone();
    throughput(CALLERS, secs, move || {
        let (mut c, p) = (client.clone(), payload.clone());
        async move {
            c.call(pb::CallRequest {
                service: "bench.echo".into(),
                payload: p,
                ..Default::default()
            })
            .await
            .expect("unary call");
        }
    })
    .await
}

/// `CALLERS` tasks, each with a `CallStream` of its own on one connection,
/// each sending a call and waiting for its reply before the next: calls/s.
async fn streams_rate(channel: Channel, secs: u64, payload: &Bytes) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..CALLERS {
        let mut client = KernelClient::new(channel.clone());
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::CallStreamUp>(1);
        let payload = payload.clone();
        let frame = move |id| pb::CallStreamUp {
            calls: vec![pb::CallFrame {
                id,
                service: "bench.echo".into(),
                payload: payload.clone(),
                ..Default::default()
            }],
            cancels: Vec::new(),
        };
        tx.send(frame(0)).await.expect("first frame");
        let mut down = client
            .call_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("open CallStream")
            .into_inner();
        let (done, stop) = (done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut id = 0;
            while let Ok(Some(reply)) = down.message().await {
                assert!(reply.replies.iter().all(|r| r.error.is_none()), "{reply:?}");
                done.fetch_add(reply.replies.len() as u64, Ordering::Relaxed);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                id += 1;
                if tx.send(frame(id)).await.is_err() {
                    break;
                }
            }
        }));
    }
    // Warm-up, then the measured window.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let start = (std::time::Instant::now(), done.load(Ordering::Relaxed));
    tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
    let rate = (done.load(Ordering::Relaxed) - start.1) as f64 / start.0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    rate
}
