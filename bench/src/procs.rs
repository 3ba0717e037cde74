//! The bench's child processes: where the sibling binaries are, how many
//! threads each gets, free ports, spawning and waiting for a ready line.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use kernel_sdk::Client;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub(crate) fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.with_file_name(name)
}

/// Threads per process: `BENCH_THREADS` (default 1: three processes share
/// two cores, and one thread each avoids cross-core wake-ups).
pub(crate) fn worker_threads() -> String {
    std::env::var("BENCH_THREADS").unwrap_or_else(|_| "1".into())
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub(crate) async fn spawn(cmd: &mut Command) -> Child {
    cmd.env("TOKIO_WORKER_THREADS", worker_threads());
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn child")
}

pub(crate) async fn wait_line(child: &mut Child, prefix: &str) {
    let Some(out) = child.stdout.take() else {
        return;
    };
    let mut lines = BufReader::new(out).lines();
    let limit = tokio::time::sleep(Duration::from_secs(20));
    tokio::pin!(limit);
    loop {
        tokio::select! {
            l = lines.next_line() => match l {
                Ok(Some(l)) if l.starts_with(prefix) => break,
                Ok(Some(_)) => continue,
                _ => panic!("child exited before `{prefix}`"),
            },
            _ = &mut limit => panic!("no `{prefix}` from child"),
        }
    }
    // Keep draining so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
}

/// Calls `service` until it answers (20 s at most).
pub(crate) async fn wait_ready(client: &Client, service: &str) {
    let start = Instant::now();
    while client.call(service, "ping").await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{service} never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The release `kernel-node` on a free loopback port (admin HTTP off,
/// `BENCH_THREADS` workers) with extra environment `env`, once it listens;
/// and its URL.
pub(crate) async fn start_node(env: &[(&str, &std::path::Path)]) -> (Child, String) {
    let port = free_port();
    let mut cmd = Command::new(sibling("kernel-node"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .env("KERNEL_TELEMETRY__ADMIN_LISTEN", "")
        .env("KERNEL_SERVER__WORKER_THREADS", worker_threads());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut node = spawn(&mut cmd).await;
    wait_line(&mut node, "kernel-node listening").await;
    (node, format!("http://127.0.0.1:{port}"))
}
