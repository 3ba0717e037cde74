//! Plugin supervision, measured with the real `plugin-host` binary: the
//! first restart after a crash, and the host's idle CPU with 20 supervised
//! idle plugins (host and shims together).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::measure::{row, Row};

fn host_binary() -> std::path::PathBuf {
    std::env::current_exe()
        .expect("current exe")
        .with_file_name("plugin-host")
}

/// The `plugin-host` binary over manifest `file` (its plugins point at no
/// node: these rows measure supervision alone), stdout piped or not.
fn spawn_host(file: &std::path::Path, stdout: Stdio) -> tokio::process::Child {
    Command::new(host_binary())
        .arg(file)
        .arg("--kernel")
        .arg("http://127.0.0.1:1")
        .env("RUST_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(stdout)
        .kill_on_drop(true)
        .spawn()
        .expect("plugin-host")
}

fn manifest_file(name: &str, text: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("kernel-bench-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).expect("write manifest");
    path
}

/// The host's event lines' leading milliseconds.
fn ms(line: &str) -> u64 {
    line.split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// Delays between a crash and the next start, in ms, for a plugin that
/// crashes a moment after each start (backoff 50 ms, no jitter).
async fn restart_delays() -> Vec<u64> {
    let file = manifest_file(
        "restart",
        r#"
        [[plugins]]
        name = "crasher"
        command = "sh"
        args = ["-c", "sleep 0.1; exit 1"]
        backoff = { initial_ms = 50, jitter = 0.0 }
        crash_loop = { max_restarts = 4, window_ms = 60000 }
        "#,
    );
    let mut child = spawn_host(&file, Stdio::piped());
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut delays = Vec::new();
    let mut exited = None;
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains(" exited ") {
                exited = Some(ms(&l));
            } else if l.contains(" started ") {
                if let Some(e) = exited.take() {
                    delays.push(ms(&l).saturating_sub(e));
                }
            } else if l.contains("state=crash-loop") {
                break;
            }
        }
    })
    .await;
    let _ = child.kill().await;
    let _ = std::fs::remove_file(file);
    delays
}

/// CPU ticks (user + system) of `pid` and every process below it.
fn tree_ticks(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let stats: Vec<(u32, u32, u64)> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let after = stat.rsplit(')').next()?;
            let f: Vec<&str> = after.split_whitespace().collect();
            // after the name: state, ppid, …, utime (12th), stime (13th)
            let ppid = f.get(1)?.parse().ok()?;
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some((p, ppid, ticks))
        })
        .collect();
    let mut family = vec![pid];
    let mut total = 0;
    let mut i = 0;
    while i < family.len() {
        let parent = family[i];
        for (p, pp, t) in &stats {
            if *p == parent {
                total += t;
            }
            if *pp == parent && !family.contains(p) {
                family.push(*p);
            }
        }
        i += 1;
    }
    total
}

/// The host's CPU share, in %, over `span` with 20 idle plugins.
async fn idle_cpu(span: Duration) -> f64 {
    let mut text = String::new();
    for i in 0..20 {
        text.push_str(&format!(
            "[[plugins]]\nname = \"idle{i}\"\ncommand = \"sleep\"\nargs = [\"3600\"]\n\n"
        ));
    }
    let file = manifest_file("idle", &text);
    let mut child = spawn_host(&file, Stdio::null());
    let pid = child.id().expect("pid");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = tree_ticks(pid);
    tokio::time::sleep(span).await;
    let after = tree_ticks(pid);
    let _ = child.kill().await;
    let _ = std::fs::remove_file(file);
    // Linux reports CPU time in 1/100 s ticks.
    (after - before) as f64 / (span.as_secs_f64() * 100.0) * 100.0
}

/// Sequential calls' latencies (µs, sorted) and errors while `until`
/// says to go on.
async fn sample(
    client: &kernel_sdk::Client,
    mut until: impl FnMut(usize) -> bool,
) -> (Vec<f64>, usize) {
    let mut lat = Vec::new();
    let mut errors = 0;
    while until(lat.len() + errors) {
        let t = std::time::Instant::now();
        match client.call("bench.echo", "x").await {
            Ok(_) => lat.push(t.elapsed().as_nanos() as f64 / 1000.0),
            Err(_) => errors += 1,
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    (lat, errors)
}

fn p99(sorted: &[f64]) -> f64 {
    sorted
        .get(sorted.len() * 99 / 100)
        .copied()
        .unwrap_or(f64::NAN)
}

/// A node supervising the bench provider; p99 of sequential calls in a
/// steady window and in a window around a hot reload (Admin
/// `ReloadPlugin`), and the errors in it.
async fn reload_latency() -> Option<(f64, f64, usize, usize)> {
    let dir = std::env::temp_dir().join(format!("kernel-bench-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let me = std::env::current_exe().ok()?;
    std::fs::write(
        dir.join("provider.toml"),
        format!(
            "name = \"bench-provider\"\ncommand = \"{}\"\nargs = [\"provider\"]\nservices = [\"bench.echo\"]\nprobation_ms = 200\nreload_on_change = false\n",
            me.display()
        ),
    )
    .ok()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .ok()?
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let mut node = Command::new(me.with_file_name("kernel-node"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("KERNEL_PLUGINS_DIR", &dir)
        .env("KERNEL_TELEMETRY__ADMIN_LISTEN", "")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let client = kernel_sdk::Client::connect(&url).ok()?;
    let ready = tokio::time::timeout(Duration::from_secs(20), async {
        while client.call("bench.echo", "x").await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if ready.is_err() {
        let _ = node.kill().await;
        return None;
    }
    let (steady, _) = sample(&client, |n| n < 5_000).await;
    let mut admin = kernel_proto::v1::admin_client::AdminClient::connect(url.clone())
        .await
        .ok()?;
    let reload = tokio::spawn(async move {
        admin
            .reload_plugin(kernel_proto::v1::PluginRequest {
                plugin: "bench-provider".into(),
            })
            .await
            .is_ok()
    });
    // The window: the reload (start, readiness, probation, drain) and a
    // little after it.
    let started = std::time::Instant::now();
    let (during, errors) = sample(&client, |_| started.elapsed() < Duration::from_secs(3)).await;
    let _ = reload.await;
    // The figures count only if the switch happened in the window.
    let mut admin = kernel_proto::v1::admin_client::AdminClient::connect(url.clone())
        .await
        .ok()?;
    let switched = admin
        .list_plugins(kernel_proto::v1::ListPluginsRequest {})
        .await
        .ok()?
        .into_inner()
        .plugins
        .iter()
        .any(|p| p.instance_id == "bench-provider-2");
    let _ = node.kill().await;
    if !switched {
        let _ = std::fs::remove_dir_all(&dir);
        return None;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Some((p99(&steady), p99(&during), during.len(), errors))
}

/// The supervision rows of the report.
pub(crate) async fn all(rows: &mut Vec<Row>) {
    match reload_latency().await {
        Some((steady, during, calls, errors)) => row(
            rows,
            "hot reload switch-over, sequential calls (SDK → node → supervised plugin)",
            format!(
                "p99 {during:.0} µs over {calls} calls during the reload vs {steady:.0} µs steady, {errors} errors"
            ),
            format!("= {:.2} × steady (target ≤ 2, 0 errors)", during / steady),
        ),
        None => row(
            rows,
            "hot reload switch-over",
            "not measured (the node or its plugin did not start)".into(),
            String::new(),
        ),
    }
    let delays = restart_delays().await;
    row(
        rows,
        "plugin restart after a crash (first restart, then backoff)",
        format!("{:?} ms", delays),
        "(target: first ≤ 100 ms)".into(),
    );
    let cpu = idle_cpu(Duration::from_secs(10)).await;
    row(
        rows,
        "supervision idle CPU, 20 idle plugins (host + shims)",
        format!("{cpu:.2} %"),
        "(target < 1 %)".into(),
    );
}
