//! Helpers for the plugin-supervision tests: the `plugin-host` binary as a
//! child process with its event lines, temporary manifest directories,
//! processes found by their command line, the admin HTTP port, and callers
//! that keep calling while a plugin is reloaded.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::{binary, eventually};

/// A `plugin-host` process over a manifest file; its stdout event lines
/// (`<ms> <plugin> started|exited|state=…`) are collected.
pub struct HostProcess {
    /// The `plugin-host` process.
    pub child: Child,
    /// Its stdin: operator commands.
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every stdout line so far.
    pub seen: Vec<String>,
    /// Its stderr (the log), line by line.
    pub stderr: mpsc::UnboundedReceiver<String>,
    _dir: TempDir,
}

/// A directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// A new directory under the system's temp dir, named for `tag`.
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "plugin-host-{tag}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A number that differs between runs (for unique names and markers).
pub fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .elapsed()
            .map_or(0, |d| d.as_nanos() as u64),
    );
    (h.finish() % 1_000_000) as u32
}

/// Lines of `r`, sent on as they come.
fn pump<R: tokio::io::AsyncRead + Unpin + Send + 'static>(r: R) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

impl HostProcess {
    /// Starts `plugin-host` over the manifests `manifests` (TOML text).
    pub async fn start(tag: &str, manifests: &str) -> HostProcess {
        let dir = TempDir::new(tag);
        let file = dir.0.join("plugins.toml");
        std::fs::write(&file, manifests).expect("write manifests");
        let mut child = Command::new(binary("plugin-host"))
            .arg(&file)
            .arg("--kernel")
            .arg("http://127.0.0.1:1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn plugin-host");
        let stdin = child.stdin.take().expect("stdin");
        let lines = pump(child.stdout.take().expect("stdout"));
        let stderr = pump(child.stderr.take().expect("stderr"));
        HostProcess {
            child,
            stdin,
            lines,
            seen: Vec::new(),
            stderr,
            _dir: dir,
        }
    }

    /// The first stdout line, so far or still to come, containing
    /// `needle`; panics with what it saw after `limit`.
    pub async fn expect(&mut self, needle: &str, limit: Duration) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let until = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(until, self.lines.recv()).await {
                Ok(Some(l)) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Ok(None) => panic!("plugin-host ended before `{needle}`; saw {:?}", self.seen),
                Err(_) => panic!("no `{needle}` within {limit:?}; saw {:?}", self.seen),
            }
        }
    }

    /// Reads what arrives for `span`; true if a line containing `needle`
    /// came in meanwhile.
    pub async fn arrives_within(&mut self, needle: &str, span: Duration) -> bool {
        let until = tokio::time::Instant::now() + span;
        while let Ok(Some(l)) = tokio::time::timeout_at(until, self.lines.recv()).await {
            self.seen.push(l.clone());
            if l.contains(needle) {
                return true;
            }
        }
        false
    }

    /// Sends an operator command (`reset <plugin>`, `status`, …).
    pub async fn send(&mut self, command: &str) {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("write command");
    }
}

/// The milliseconds at the start of an event line.
pub fn ms(line: &str) -> u64 {
    line.split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no time in `{line}`"))
}

/// Pids of processes whose command line contains `marker`.
pub fn pids_with(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) && !is_zombie(pid) {
                out.push(pid);
            }
        }
    }
    out
}

/// Whether `pid` is a zombie (or gone).
pub fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// A plugin that starts a child of its own and waits: the sleep's odd
/// length marks both processes.
pub fn family_manifest(marker_secs: u32) -> String {
    format!(
        r#"
        [[plugins]]
        name = "family"
        command = "sh"
        args = ["-c", "sleep {marker_secs} & wait"]
        "#
    )
}

/// Waits until no process has `marker` in its command line.
pub async fn expect_gone(marker: &str) {
    eventually(Duration::from_secs(10), "no plugin process left", || {
        let left = pids_with(marker);
        async move {
            left.is_empty()
                .then_some(())
                .ok_or(format!("left: {left:?}"))
        }
    })
    .await;
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// GET `path` on the admin port: (status code, body).
pub async fn get(port: u16, path: &str) -> Result<(u16, String), String> {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .await
        .map_err(|e| e.to_string())?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(format!("no status in {text:?}"))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Ok((code, body))
}

/// A manifest for a plugin that fails at once and lands in a crash loop.
pub fn failing(name: &str, service: &str, critical: bool) -> String {
    format!(
        r#"
        name = "{name}"
        command = "sh"
        args = ["-c", "exit 1"]
        critical = {critical}
        services = ["{service}"]
        backoff = {{ initial_ms = 20 }}
        crash_loop = {{ max_restarts = 2, window_ms = 60000 }}
        "#
    )
}

/// Installs `from` at `to` the way a deploy should: a copy beside it, then
/// a rename over it (the running program's file is never written).
pub fn install(from: &std::path::Path, to: &std::path::Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).expect("copy");
    std::fs::rename(&tmp, to).expect("rename");
}

/// The instance ids the node lists for `plugin`, through Admin.
pub async fn instances_of(url: &str, plugin: &str) -> Result<Vec<String>, String> {
    let mut admin = kernel_proto::v1::admin_client::AdminClient::connect(url.to_owned())
        .await
        .map_err(|e| e.to_string())?;
    let list = admin
        .list_plugins(kernel_proto::v1::ListPluginsRequest::default())
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .plugins;
    let mut ids: Vec<String> = list
        .into_iter()
        .filter(|p| p.plugin == plugin)
        .map(|p| format!("{}:{}", p.instance_id, p.state))
        .collect();
    ids.sort();
    Ok(ids)
}

/// Callers calling `service` until told to stop: (ok, failures seen).
pub fn callers(
    client: &kernel_sdk::Client,
    service: &'static str,
    n: usize,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: &std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    use std::sync::atomic::Ordering;
    (0..n)
        .map(|i| {
            let (client, stop, ok) = (client.clone(), stop.clone(), ok.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    let payload = format!("{i}-{k}");
                    match client.call(service, payload.clone()).await {
                        Ok(r) if r == payload.as_bytes() => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failures.push(format!("wrong reply {r:?}")),
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                failures
            })
        })
        .collect()
}

/// Stops callers started by [`callers`] and gathers their failures.
pub async fn stop_callers(
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    running: Vec<tokio::task::JoinHandle<Vec<String>>>,
) -> Vec<String> {
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in running {
        failures.extend(c.await.expect("join"));
    }
    failures
}

/// Waits until the admin port's `/metrics` has the line `line`.
pub async fn metric_shows(admin: u16, line: &str, what: &str) {
    eventually(Duration::from_secs(30), what, || async move {
        match get(admin, "/metrics").await {
            Ok((200, m)) if m.contains(line) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}
