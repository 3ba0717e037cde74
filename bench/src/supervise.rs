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
    let mut child = Command::new(host_binary())
        .arg(&file)
        .arg("--kernel")
        .arg("http://127.0.0.1:1")
        .env("RUST_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("plugin-host");
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
    let mut child = Command::new(host_binary())
        .arg(&file)
        .arg("--kernel")
        .arg("http://127.0.0.1:1")
        .env("RUST_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("plugin-host");
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

/// The supervision rows of the report.
pub(crate) async fn all(rows: &mut Vec<Row>) {
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
