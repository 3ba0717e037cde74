//! The `plugin-host` binary: supervises the plugins in a manifest file or
//! directory for a kernel node elsewhere, until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Supervises out-of-process plugins for a kernel node.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Flags {
    /// The node's address, given to every plugin as `KERNEL_URL`.
    #[arg(long, env = "KERNEL_URL", default_value = "http://127.0.0.1:50051")]
    kernel: String,
    /// A TOML file with `[[plugins]]` tables, or a directory of manifests
    /// (one `*.toml` per plugin).
    #[arg(value_name = "MANIFESTS")]
    manifests: PathBuf,
}

fn main() -> ExitCode {
    plugin_host::shim::run_if_requested();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let flags = Flags::parse();
    let (manifests, refused) = if flags.manifests.is_dir() {
        plugin_host::manifest::load_dir(&flags.manifests)
    } else {
        match std::fs::read_to_string(&flags.manifests) {
            Ok(text) => plugin_host::manifest::parse_list(&text),
            Err(e) => {
                eprintln!(
                    "plugin-host: cannot read {}: {e}",
                    flags.manifests.display()
                );
                return ExitCode::from(2);
            }
        }
    };
    for e in &refused {
        tracing::error!(cause = %e, "manifest refused; the other plugins start");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("plugin-host: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let host = std::sync::Arc::new(plugin_host::Host::start(
            manifests,
            plugin_host::KernelUrls::one(&flags.kernel),
            None,
        ));
        println!("plugin-host supervising {} plugins", host.status().len());
        let started = std::time::Instant::now();
        if let Some(mut events) = host.take_events() {
            tokio::spawn(async move {
                while let Some(e) = events.recv().await {
                    println!("{}", event_line(started.elapsed().as_millis(), &e));
                }
            });
        }
        let commands = host.clone();
        tokio::spawn(async move { read_commands(&commands).await });
        shutdown_signal().await;
        host.stop().await;
    });
    ExitCode::SUCCESS
}

/// One line per event on stdout, for operators and scripts:
/// `<ms since start> <plugin> started instance=<n> pid=<pid>`,
/// `<ms> <plugin> exited instance=<n> reason=<exit>`,
/// `<ms> <plugin> state=<state>`.
fn event_line(ms: u128, e: &plugin_host::Event) -> String {
    use plugin_host::Event;
    match e {
        Event::Started {
            plugin,
            instance,
            pid,
        } => format!("{ms} {plugin} started instance={instance} pid={pid}"),
        Event::Exited {
            plugin,
            instance,
            exit,
        } => format!("{ms} {plugin} exited instance={instance} reason={exit}"),
        Event::State { plugin, state } => format!("{ms} {plugin} state={}", state.as_str()),
        Event::Reloaded { plugin, from, to } => {
            format!("{ms} {plugin} reloaded from={from} to={to}")
        }
        Event::ReloadFailed {
            plugin,
            instance,
            reason,
        } => format!("{ms} {plugin} reload-failed instance={instance} reason={reason}"),
    }
}

/// Operator commands, one a line on stdin: `reset <plugin>` (out of a
/// crash loop), `reload <plugin>` (hot reload), `status`.
async fn read_commands(host: &plugin_host::Host) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("reset"), Some(name)) => match host.reset(name) {
                Ok(()) => println!("reset {name}"),
                Err(e) => println!("error {e}"),
            },
            (Some("reload"), Some(name)) => match host.reload(name) {
                Ok(()) => println!("reload {name}"),
                Err(e) => println!("error {e}"),
            },
            (Some("status"), None) => {
                for s in host.status() {
                    let last = s.last_exit().map(ToString::to_string).unwrap_or_default();
                    println!(
                        "status {} state={} restarts={} pid={} last_exit={last}",
                        s.name,
                        s.state.as_str(),
                        s.restarts,
                        s.pid().unwrap_or_default()
                    );
                }
            }
            _ => println!("error unknown command `{line}` (reset|reload <plugin> | status)"),
        }
    }
}

async fn shutdown_signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
