//! The in-process measurements: calls through the pipeline, the share of
//! the middleware and of the context bookkeeping, events, and the trie.
//!
//! Shares are differences of two costs, so the two are measured in
//! interleaved blocks (A, B, A, B, ...) and each is summarized by the median
//! of its block means: a burst of noise from a neighbour on this shared
//! machine then lands in one block of each, not in one whole measurement.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use kernel_core::{ChildSpec, Config, Kernel, LocalRegistration, Parent, Request, Trie};
use kernel_sdk::{Bytes, Client, Plugin, SubscribeOptions};

use crate::measure::{mean_ns, row, Row};

pub(crate) const CALL_PAYLOAD: usize = 64;
pub(crate) const EVENT_PAYLOAD: usize = 256;
/// Interleaved rounds per paired measurement.
const ROUNDS: usize = 15;
/// Iterations per block.
const BLOCK: usize = 40_000;

/// One operation under measurement, boxed so several can be interleaved.
type Op<'a> = Box<dyn FnMut() -> std::pin::Pin<Box<dyn Future<Output = ()> + 'a>> + 'a>;

/// Runs every op for [`BLOCK`] iterations, [`ROUNDS`] times, interleaved;
/// returns each op's median block mean in nanoseconds. The boxing costs the
/// same for every op, so differences between ops are unaffected by it; the
/// absolute figures come from unboxed loops.
async fn interleaved(ops: &mut [Op<'_>]) -> Vec<f64> {
    let mut means = vec![Vec::with_capacity(ROUNDS); ops.len()];
    for op in ops.iter_mut() {
        for _ in 0..BLOCK / 4 {
            op().await;
        }
    }
    for _ in 0..ROUNDS {
        for (i, op) in ops.iter_mut().enumerate() {
            let t = Instant::now();
            for _ in 0..BLOCK {
                op().await;
            }
            means[i].push(t.elapsed().as_nanos() as f64 / BLOCK as f64);
        }
    }
    means
        .into_iter()
        .map(|mut v| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        })
        .collect()
}

fn echo_request(payload: Bytes) -> Request {
    Request {
        service: "bench.echo".into(),
        payload,
        ..Default::default()
    }
}

/// A root call's node as the pipeline asks for it: the call's start time
/// was read by the trace layer, the service name comes from its pool.
fn root_spec(started: quanta::Instant, service: &Arc<str>) -> ChildSpec<'_> {
    ChildSpec {
        service,
        shared_service: Some(service),
        is_call: true,
        started: Some(started),
        ..ChildSpec::default()
    }
}

/// A kernel with an in-process `bench.echo` provider, and a client of it.
pub(crate) fn echo_kernel() -> (Arc<Kernel>, LocalRegistration, Client) {
    let kernel = Kernel::new(Config::default());
    let reg = Plugin::new("inproc")
        .provide("bench.echo", |_ctx, p: Bytes| async move { Ok(p) })
        .attach(&kernel)
        .expect("attach");
    let local = Client::in_process(kernel.clone());
    (kernel, reg, local)
}

/// In-process calls through the full pipeline, alone (for profiling).
pub(crate) async fn inproc_only(iters: usize) -> f64 {
    let (_kernel, _reg, local) = echo_kernel();
    let payload = Bytes::from(vec![7u8; CALL_PAYLOAD]);
    mean_ns(iters, || {
        let (l, p) = (&local, payload.clone());
        async move {
            l.call("bench.echo", p).await.expect("in-process call");
        }
    })
    .await
}

/// Calls through the kernel's pipeline, or through accounting + dispatch
/// alone, by themselves (for profiling the middleware's share).
pub(crate) async fn pipeline_only(iters: usize, bare: bool) -> f64 {
    let (kernel, _reg, _local) = echo_kernel();
    let payload = Bytes::from(vec![7u8; CALL_PAYLOAD]);
    mean_ns(iters, || {
        let (k, p) = (&kernel, payload.clone());
        async move {
            let out = if bare {
                k.call_bare(echo_request(p)).await
            } else {
                k.call(echo_request(p)).await
            };
            out.expect("pipeline call");
        }
    })
    .await
}

/// Root context nodes made and dropped, alone (for profiling).
pub(crate) async fn contexts_only(iters: usize) -> f64 {
    let kernel = Kernel::new(Config::default());
    let (c, name, t) = (
        &kernel.contexts(),
        Arc::from("bench.echo"),
        quanta::Instant::now(),
    );
    let name = &name;
    mean_ns(iters, || async move {
        drop(c.child(Parent::None, root_spec(t, name)));
    })
    .await
}

/// Every in-process row of the report.
pub(crate) async fn all(rows: &mut Vec<Row>) {
    let payload = Bytes::from(vec![7u8; CALL_PAYLOAD]);
    let (kernel, _reg, local) = echo_kernel();
    let p = payload.clone();
    let inproc = mean_ns(1_000_000, || {
        let (l, p) = (&local, p.clone());
        async move {
            l.call("bench.echo", p).await.expect("in-process call");
        }
    })
    .await;
    row(
        rows,
        "in-process call, full pipeline (SDK client → kernel → SDK handler)",
        format!("{inproc:.0} ns"),
        "(target ≤ 260 ns)".into(),
    );

    // The shares: the full pipeline vs the minimum that still works
    // (accounting + dispatch: no trace, metrics or validation), and a
    // context node made and dropped, interleaved with the whole call.
    let contexts = kernel.contexts();
    let (name, t): (Arc<str>, _) = (Arc::from("bench.echo"), quanta::Instant::now());
    let (k, l, c, name) = (&kernel, &local, contexts, &name);
    let p = &payload;
    let mut ops: Vec<Op<'_>> = vec![
        Box::new(move || {
            Box::pin(async move {
                l.call("bench.echo", p.clone()).await.expect("call");
            })
        }),
        Box::new(move || {
            Box::pin(async move {
                k.call(echo_request(p.clone())).await.expect("pipeline");
            })
        }),
        Box::new(move || {
            Box::pin(async move {
                k.call_bare(echo_request(p.clone())).await.expect("bare");
            })
        }),
        Box::new(move || {
            Box::pin(async move {
                drop(c.child(Parent::None, root_spec(t, name)));
            })
        }),
    ];
    let m = interleaved(&mut ops).await;
    drop(ops);
    let (call, full, bare_ns, ctx) = (m[0], m[1], m[2], m[3]);
    let mw = (full - bare_ns).max(0.0);
    row(
        rows,
        "middleware (trace+metrics+validate), no exporter",
        format!("{mw:.0} ns (pipeline {full:.0} ns vs accounting+dispatch {bare_ns:.0} ns)"),
        format!(
            "adds {:.1} % to the in-process call ({call:.0} ns here) (target ≤ 10 %)",
            mw / (call - mw) * 100.0
        ),
    );
    row(
        rows,
        "context bookkeeping (root node made + dropped)",
        format!("{ctx:.0} ns"),
        format!(
            "adds {:.1} % to the in-process call ({call:.0} ns here) (target ≤ 10 %)",
            ctx / (call - ctx) * 100.0
        ),
    );

    exported(rows, &payload).await;
    emit(rows, &local).await;
    trie(rows);
}

/// The pipeline with an OTLP exporter at 100 % sampling.
async fn exported(rows: &mut Vec<Row>, payload: &Bytes) {
    let (sink, endpoint) = otlp_sink().await;
    let traced = Kernel::with_telemetry(
        Config::default(),
        kernel_node::telemetry::otlp(&endpoint, Some("bench")).expect("exporter"),
    );
    let _traced_reg = Plugin::new("inproc")
        .provide("bench.echo", |_ctx, p: Bytes| async move { Ok(p) })
        .telemetry(traced.telemetry().clone())
        .attach(&traced)
        .expect("attach");
    let ns = mean_ns(200_000, || {
        let (k, p) = (&traced, payload.clone());
        async move {
            k.call(echo_request(p)).await.expect("traced call");
        }
    })
    .await;
    traced.telemetry().flush();
    row(
        rows,
        "in-process call, OTLP exporter on, 100 % sampling",
        format!("{ns:.0} ns"),
        format!(
            "(3 spans per call, batched export; {} spans reached the collector so far)",
            sink.load(std::sync::atomic::Ordering::Relaxed)
        ),
    );
}

/// In-process emit → delivery, alone (for profiling).
pub(crate) async fn emit_only(iters: usize) -> f64 {
    let kernel = Kernel::new(Config::default());
    emit_ns(&Client::in_process(kernel), iters).await
}

/// In-process publish, then the wildcard subscriber takes the delivery.
async fn emit(rows: &mut Vec<Row>, local: &Client) {
    let ns = emit_ns(local, 600_000).await;
    row(
        rows,
        "in-process emit → wildcard delivery (median of 15 blocks)",
        format!("{ns:.0} ns"),
        "(target ≤ 400 ns, 0.05 × Moleculer)".into(),
    );
}

/// The median of [`ROUNDS`] block means of `iters / ROUNDS` emits each.
async fn emit_ns(local: &Client, iters: usize) -> f64 {
    let mut sub = local
        .subscriber(SubscribeOptions::new("bench.*"))
        .await
        .expect("subscribe");
    let ev_payload = Bytes::from(vec![1u8; EVENT_PAYLOAD]);
    let block = (iters / ROUNDS).max(1);
    let mut means = Vec::with_capacity(ROUNDS + 1);
    // The first block warms up and is not counted.
    for round in 0..=ROUNDS {
        let t = Instant::now();
        for _ in 0..block {
            local
                .publish("bench.ev", ev_payload.clone())
                .await
                .expect("publish");
            sub.next().await.expect("delivery");
        }
        if round > 0 {
            means.push(t.elapsed().as_nanos() as f64 / block as f64);
        }
    }
    means.sort_by(|a, b| a.total_cmp(b));
    means[means.len() / 2]
}

/// A real OTLP/gRPC collector endpoint that counts spans.
async fn otlp_sink() -> (std::sync::Arc<std::sync::atomic::AtomicU64>, String) {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    struct Sink(std::sync::Arc<std::sync::atomic::AtomicU64>);
    #[tonic::async_trait]
    impl TraceService for Sink {
        async fn export(
            &self,
            req: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let n: usize = req
                .into_inner()
                .resource_spans
                .iter()
                .flat_map(|r| r.scope_spans.iter())
                .map(|s| s.spans.len())
                .sum();
            self.0
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind sink");
    let addr = listener.local_addr().expect("addr");
    let svc = TraceServiceServer::new(Sink(count.clone()));
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await;
    });
    (count, format!("http://{addr}"))
}

fn trie(rows: &mut Vec<Row>) {
    let t10 = trie_cost(10);
    row(
        rows,
        "trie match, 10 subscriptions",
        format!("{t10:.0} ns"),
        String::new(),
    );
    for n in [1_000, 100_000] {
        let t = trie_cost(n);
        row(
            rows,
            &format!("trie match, {n} subscriptions"),
            format!("{t:.0} ns"),
            String::new(),
        );
    }
    let t1m = trie_cost(1_000_000);
    row(
        rows,
        "trie match, 1,000,000 subscriptions",
        format!("{t1m:.0} ns"),
        format!("= {:.2} × the cost at 10 (target ≤ 2)", t1m / t10),
    );
}

/// Mean ns of a match that finds 2 subscriptions, among `total` subscriptions.
fn trie_cost(total: usize) -> f64 {
    let mut t: Trie<u64> = Trie::new();
    t.insert("bench.match.*", 0);
    t.insert("bench.>", 1);
    for i in 2..total as u64 {
        let p = match i % 3 {
            0 => format!("svc{i}.created"),
            1 => format!("svc{i}.*"),
            _ => format!("bench.other{i}.>"),
        };
        t.insert(&p, i);
    }
    let iters = 1_000_000;
    let mut found = 0usize;
    let start = Instant::now();
    for _ in 0..iters {
        t.for_each_match(std::hint::black_box("bench.match.x"), |_| found += 1);
    }
    let ns = start.elapsed().as_nanos() as f64 / iters as f64;
    assert_eq!(found, 2 * iters);
    ns
}
