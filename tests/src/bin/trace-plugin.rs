//! A Rust plugin for the cross-language trace test: it provides `hop.rust`,
//! which does a piece of its own work in an `#[instrument]`ed function,
//! calls the next hop (`--next`) and emits `hop.done`. Its spans, the SDK's
//! `plugin.handle` and its own, go to `OTEL_EXPORTER_OTLP_ENDPOINT`; its log
//! lines (stdout) carry the trace and span ids.

use std::io::Write;

use clap::Parser;
use kernel_node::config::TelemetryConfig;
use kernel_sdk::telemetry::{tracing_layer, TraceIds};
use kernel_sdk::{Bytes, CancellationToken, Context, Error, Plugin};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

#[derive(Debug, Parser)]
struct Args {
    /// Kernel URL.
    #[arg(long, env = "KERNEL_URL")]
    url: String,
    /// The service `hop.rust` calls next.
    #[arg(long)]
    next: String,
}

/// The handler's own work, traced as its own span.
#[tracing::instrument(skip(order), fields(order_len = order.len()))]
async fn check_order(order: &[u8]) -> Result<(), Error> {
    tracing::info!("order checked");
    Ok(())
}

async fn hop(ctx: Context, payload: Bytes, next: String) -> Result<Bytes, Error> {
    check_order(&payload).await?;
    let reply = ctx.call(&next, payload).await?;
    ctx.emit("hop.done", reply.clone()).await?;
    Ok(reply)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let telemetry = kernel_node::telemetry::from_config(&TelemetryConfig {
        service_name: Some("rust-plugin".into()),
        ..TelemetryConfig::default()
    })
    .map_err(Error::internal)?;
    tracing_subscriber::registry()
        .with(tracing_layer(&telemetry))
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(TraceIds::new())
                .with_writer(std::io::stdout)
                .with_ansi(false)
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        )
        .init();
    let next = args.next.clone();
    let plugin = Plugin::new("rust-hop")
        .telemetry(telemetry.clone())
        .provide("hop.rust", move |ctx, payload| {
            hop(ctx, payload, next.clone())
        });
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        stop.cancel();
    });
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "STARTED");
    }
    let end = plugin.serve(&args.url, shutdown).await;
    telemetry.shutdown();
    end.map(|_| ())
}
