//! A plugin process for the end-to-end tests. What it does is chosen by
//! `--mode`; it prints one line per notable thing to stdout so tests can
//! observe it (`STARTED <path>`, `CANCELLED <path>`, `EVENT <id> <attempt>`).

use std::io::Write;
use std::time::Duration;

use clap::Parser;
use kernel_node::config::TelemetryConfig;
use kernel_sdk::{Bytes, CancellationToken, Client, Context, Error, Plugin, SubscribeOptions};

#[derive(Debug, Parser)]
struct Args {
    /// Kernel URL (a supervised plugin gets it as `KERNEL_URL`).
    #[arg(long, env = "KERNEL_URL")]
    url: String,
    /// Plugin name.
    #[arg(long, default_value = "test-plugin")]
    name: String,
    /// Service to provide.
    #[arg(long)]
    service: Option<String>,
    /// echo | whoami | hang | info | chain | fail | internal | recurse.
    #[arg(long, default_value = "echo")]
    mode: String,
    /// Instance id.
    #[arg(long, default_value = "")]
    instance: String,
    /// Replace existing providers.
    #[arg(long)]
    replace: bool,
    /// Max concurrent invocations.
    #[arg(long, default_value_t = 0)]
    concurrency: u32,
    /// Delay before answering.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Service the `chain` mode calls next.
    #[arg(long)]
    next: Option<String>,
    /// Subscribe to this pattern instead of providing.
    #[arg(long)]
    subscribe: Option<String>,
    /// Queue group for `--subscribe`.
    #[arg(long, default_value = "")]
    group: String,
    /// Explicit acks for `--subscribe`; events are acked unless `--no-ack`.
    #[arg(long)]
    explicit: bool,
    /// Never ack (with `--explicit`).
    #[arg(long)]
    no_ack: bool,
    /// Topic the `emit` mode publishes to after calling `--next`.
    #[arg(long, default_value = "test.emitted")]
    topic: String,
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn info(ctx: &Context) -> serde_json::Value {
    serde_json::json!({
        "path": ctx.path(),
        "baggage": ctx.baggage(),
        "trace_id": ctx.trace_id(),
        "caller": ctx.caller(),
        "remaining_ms": ctx.remaining().map(|d| d.as_millis() as u64),
    })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    if let Some(pattern) = &args.subscribe {
        return subscribe(&args, pattern).await;
    }
    let service = args.service.clone().unwrap_or_else(|| "test.echo".into());
    let instance = args.instance.clone();
    let delay = Duration::from_millis(args.delay_ms);
    let next = args.next.clone();
    let mode = args.mode.clone();
    let svc = service.clone();
    let topic = args.topic.clone();
    let mut plugin = Plugin::new(&args.name)
        .provide(&service, move |ctx: Context, payload: Bytes| {
            let instance = instance.clone();
            let next = next.clone();
            let mode = mode.clone();
            let svc = svc.clone();
            let topic = topic.clone();
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                match mode.as_str() {
                    "echo" => Ok(payload),
                    "whoami" => Ok(Bytes::from(instance)),
                    "info" => Ok(Bytes::from(info(&ctx).to_string())),
                    "hang" => {
                        say(format!("STARTED {}", ctx.path()));
                        ctx.cancelled().await;
                        say(format!("CANCELLED {}", ctx.path()));
                        Err(Error::new(tonic::Code::Cancelled, "cancelled"))
                    }
                    "chain" => {
                        let mut hops = vec![info(&ctx)];
                        if let Some(n) = next {
                            let below = ctx.call(&n, payload).await?;
                            let rest: Vec<serde_json::Value> = serde_json::from_slice(&below)?;
                            hops.extend(rest);
                        }
                        Ok(Bytes::from(serde_json::Value::Array(hops).to_string()))
                    }
                    "fail" => Err(Error::new(
                        tonic::Code::FailedPrecondition,
                        "boom: stock table locked",
                    )),
                    // A broken build: every call fails inside the plugin.
                    "internal" => Err(Error::new(tonic::Code::Internal, "broken build")),
                    "recurse" => ctx.call(&svc, payload).await,
                    "emit" => {
                        if let Some(n) = next {
                            ctx.call(&n, payload.clone()).await?;
                        }
                        ctx.emit(&topic, payload).await?;
                        Ok(Bytes::from_static(b"emitted"))
                    }
                    "charge" => {
                        for n in 1..=1_000u64 {
                            if let Err(e) = ctx.charge("sql", 1).await {
                                // Give the kernel's branch cancel a moment to land.
                                let cancelled =
                                    tokio::time::timeout(Duration::from_secs(2), ctx.cancelled())
                                        .await
                                        .is_ok();
                                say(format!(
                                    "CHARGE_FAILED {n} {} cancelled={cancelled}",
                                    ctx.path()
                                ));
                                return Err(e);
                            }
                        }
                        Ok(Bytes::from_static(b"never exhausted"))
                    }
                    other => Err(Error::invalid_argument(format!("unknown mode {other}"))),
                }
            }
        })
        .max_concurrency(args.concurrency);
    if args.replace {
        plugin = plugin.replace();
    }
    // Exports handler spans when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let telemetry = kernel_node::telemetry::from_config(&TelemetryConfig::default())
        .map_err(Error::internal)?;
    plugin = plugin.telemetry(telemetry.clone());
    if !args.instance.is_empty() {
        plugin = plugin.instance_id(&args.instance);
    }
    let stop = CancellationToken::new();
    let on_term = stop.clone();
    tokio::spawn(async move {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
            on_term.cancel();
        }
    });
    let end = plugin.serve(&args.url, stop).await?;
    telemetry.shutdown();
    say(format!("END {end:?}"));
    Ok(())
}

async fn subscribe(args: &Args, pattern: &str) -> Result<(), Error> {
    let client = Client::connect(&args.url)?.with_plugin(&args.name);
    let mut opts = SubscribeOptions::new(pattern)
        .queue_group(&args.group)
        .name(&args.name);
    if args.explicit {
        opts = opts.explicit_ack().ack_wait(Duration::from_secs(60));
    }
    let mut sub = client.subscriber(opts).await?;
    say("SUBSCRIBED".into());
    while let Some(e) = sub.next().await {
        say(format!(
            "EVENT {} {} {}",
            e.id,
            e.attempt,
            String::from_utf8_lossy(&e.payload)
        ));
        if args.explicit && !args.no_ack {
            sub.ack(&e);
        }
    }
    Ok(())
}
