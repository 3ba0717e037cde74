//! `make bench`: the kernel side by side with its baselines, in one run.
//!
//! Measures (64-byte payloads for calls, 256-byte for events, loopback):
//! - a direct tonic bidi-stream ping-pong between two processes (no kernel);
//! - a call through the kernel (its own process) between two out-of-process
//!   plugins: p50 at 1 caller, throughput at 32 callers;
//! - NATS request-reply and pub/sub through a local nats-server, when one
//!   answers on 127.0.0.1:4222;
//! - in-process call through the full pipeline, and the context bookkeeping
//!   share of it;
//! - events: publisher → kernel → wildcard subscriber over gRPC, in-process
//!   emit → delivery;
//! - trie match cost at 10 and 1,000,000 subscriptions;
//! - the PostgreSQL outbox: commit → delivery latency, relay throughput;
//! - durable publish → delivery against NATS JetStream.

mod baseline;
mod count;
mod durable;
mod local;
mod measure;
mod memory;
mod outbox;
mod procs;
mod scenarios;
mod supervise;
mod transport;

use clap::{Parser, Subcommand};

/// The same allocator as the node binary, so in-process figures are those
/// of an application that embeds the kernel the way the node does.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Seconds per throughput run.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Samples per latency run.
    #[arg(long, default_value_t = 20_000)]
    samples: usize,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Runs every measurement (the default).
    All,
    /// The plugin-supervision rows alone (needs the `plugin-host` binary
    /// beside this one).
    Supervise,
    /// Child process: the direct tonic echo server.
    EchoServer {
        /// Address to bind.
        #[arg(long)]
        listen: String,
    },
    /// Child process: a plugin providing `bench.echo`.
    Provider {
        /// Kernel URL (`KERNEL_URL` when supervised by a node).
        #[arg(long, env = "KERNEL_URL")]
        url: String,
    },
    /// Child process: a NATS responder on `bench.echo`.
    NatsResponder,
    /// Only the in-process rows (calls, shares, events, trie).
    Local,
    /// Only context nodes made and dropped, for `iters` iterations (for profiling).
    Contexts {
        /// Nodes to make.
        #[arg(long, default_value_t = 5_000_000)]
        iters: usize,
    },
    /// Only in-process emit → delivery, for `iters` events (for profiling).
    Emit {
        /// Events to publish.
        #[arg(long, default_value_t = 2_000_000)]
        iters: usize,
    },
    /// Only in-process calls, for `iters` iterations (for profiling).
    Inproc {
        /// Calls to make.
        #[arg(long, default_value_t = 5_000_000)]
        iters: usize,
    },
    /// Only kernel calls through the pipeline (`--bare`: accounting and
    /// dispatch alone), for `iters` iterations (for profiling the
    /// middleware's share).
    Pipeline {
        /// Calls to make.
        #[arg(long, default_value_t = 5_000_000)]
        iters: usize,
        /// Accounting + dispatch only.
        #[arg(long)]
        bare: bool,
    },
    /// Only the PostgreSQL outbox rows.
    Outbox,
    /// Only durable publish → delivery, kernel vs JetStream.
    Durable,
    /// Only the node's memory rows.
    Memory,
    /// Only the transport rows (UDS, unary, raw streams; no peer ratios).
    Transport,
    /// Exactly `iters` operations of one kind, nothing else (what
    /// `make bench-check` counts instructions of under callgrind).
    Count {
        /// Which operation.
        #[arg(value_enum)]
        op: count::Op,
        /// How many.
        #[arg(long)]
        iters: usize,
    },
    /// Only NATS core pub/sub with the events measurement's shape, against
    /// the nats-server on 127.0.0.1:4222 (the baseline alone).
    NatsEvents {
        /// Events to send.
        #[arg(long, default_value_t = 500_000)]
        count: usize,
    },
    /// Only the events-over-gRPC measurement against a node at `url`
    /// (for profiling the kernel in isolation).
    Events {
        /// Kernel URL.
        #[arg(long)]
        url: String,
        /// Events to send.
        #[arg(long, default_value_t = 500_000)]
        count: usize,
    },
}

fn main() {
    let args = Args::parse();
    let threads = std::env::var("BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    // Counting runs on one thread: no wake-ups across threads, whose
    // number varies from run to run, so instruction counts repeat.
    let rt = if matches!(args.cmd, Some(Cmd::Count { .. })) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    rt.block_on(async move {
        match args.cmd.unwrap_or(Cmd::All) {
            Cmd::All => scenarios::all(args.seconds, args.samples).await,
            Cmd::EchoServer { listen } => baseline::echo_server(&listen).await,
            Cmd::Provider { url } => baseline::provider(&url).await,
            Cmd::NatsResponder => baseline::nats_responder().await,
            Cmd::Local => scenarios::local_only().await,
            Cmd::Supervise => scenarios::supervise_only().await,
            Cmd::Contexts { iters } => {
                let ns = local::contexts_only(iters).await;
                println!("context node made + dropped: {ns:.0} ns");
            }
            Cmd::Emit { iters } => {
                let ns = local::emit_only(iters).await;
                println!("in-process emit → delivery: {ns:.0} ns");
            }
            Cmd::Inproc { iters } => {
                let ns = local::inproc_only(iters).await;
                println!("in-process call: {ns:.0} ns");
            }
            Cmd::Pipeline { iters, bare } => {
                let ns = local::pipeline_only(iters, bare).await;
                println!("pipeline call (bare: {bare}): {ns:.0} ns");
            }
            Cmd::Count { op, iters } => count::run(op, iters).await,
            Cmd::Outbox => scenarios::outbox_only().await,
            Cmd::Durable => scenarios::durable_only().await,
            Cmd::Memory => memory::all(&mut Vec::new()).await,
            Cmd::Transport => {
                let peers = transport::Peers {
                    nats: None,
                    tcp: None,
                };
                transport::all(&mut Vec::new(), args.seconds, args.samples, &peers).await;
            }
            Cmd::NatsEvents { count } => match scenarios::nats_pubsub(count, 256).await {
                Some((rate, lost)) => println!("nats events: {rate:.0} msg/s, lost {lost}"),
                None => println!("nats-server not reachable on 127.0.0.1:4222"),
            },
            Cmd::Events { url, count } => {
                let (rate, lost) = scenarios::events_grpc(&url, count, 256).await;
                println!("events: {rate:.0} msg/s, lost {lost}");
            }
        }
    });
}
