//! The plugin host with real child processes: restarts with growing
//! delays, crash loops and operator resets, exit reasons, memory limits,
//! bad manifests, and no process left behind when the host (or a node
//! supervising plugins itself) is killed with SIGKILL.

use std::process::Stdio;
use std::time::Duration;

use kernel_tests::{binary, eventually, NodeProcess};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// A `plugin-host` process over a manifest file; its stdout event lines
/// (`<ms> <plugin> started|exited|state=…`) are collected.
struct HostProcess {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every stdout line so far.
    seen: Vec<String>,
    stderr: mpsc::UnboundedReceiver<String>,
    _dir: TempDir,
}

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
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

fn rand_suffix() -> u32 {
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
    async fn start(tag: &str, manifests: &str) -> HostProcess {
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
    async fn expect(&mut self, needle: &str, limit: Duration) -> String {
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
    async fn arrives_within(&mut self, needle: &str, span: Duration) -> bool {
        let until = tokio::time::Instant::now() + span;
        while let Ok(Some(l)) = tokio::time::timeout_at(until, self.lines.recv()).await {
            self.seen.push(l.clone());
            if l.contains(needle) {
                return true;
            }
        }
        false
    }

    async fn send(&mut self, command: &str) {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("write command");
    }
}

/// The milliseconds at the start of an event line.
fn ms(line: &str) -> u64 {
    line.split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no time in `{line}`"))
}

#[tokio::test]
async fn a_failing_plugin_restarts_with_growing_delays_then_stays_in_a_crash_loop_until_reset() {
    let mut host = HostProcess::start(
        "crash",
        r#"
        [[plugins]]
        name = "crasher"
        command = "sh"
        args = ["-c", "exit 3"]
        backoff = { initial_ms = 200, multiplier = 2.0, max_ms = 5000, jitter = 0.1 }
        crash_loop = { max_restarts = 3, window_ms = 60000 }
        "#,
    )
    .await;
    let limit = Duration::from_secs(10);
    let mut delays = Vec::new();
    let mut ended = ms(&host
        .expect("crasher exited instance=1 reason=exit code 3", limit)
        .await);
    for n in 2..=4 {
        let started = ms(&host
            .expect(&format!("crasher started instance={n}"), limit)
            .await);
        delays.push(started - ended);
        ended = ms(&host
            .expect(
                &format!("crasher exited instance={n} reason=exit code 3"),
                limit,
            )
            .await);
    }
    // 200, 400, 800 ms plus up to 10 % jitter: each longer than the last.
    assert!(delays[0] >= 200, "{delays:?}");
    assert!(delays[1] > delays[0] && delays[2] > delays[1], "{delays:?}");
    host.expect("crasher state=crash-loop", limit).await;
    host.send("status").await;
    let status = host.expect("status crasher", limit).await;
    assert!(
        status.contains("state=crash-loop") && status.contains("last_exit=exit code 3"),
        "{status}"
    );
    // It stays there: no start for longer than its last delay...
    assert!(
        !host
            .arrives_within("started", Duration::from_millis(1500))
            .await,
        "restarted in a crash loop: {:?}",
        host.seen
    );
    // ...until an operator resets it.
    host.send("reset crasher").await;
    host.expect("crasher started instance=5", limit).await;
}

#[tokio::test]
async fn a_plugin_over_its_memory_limit_dies_and_is_restarted_and_a_clean_exit_is_final() {
    let mut host = HostProcess::start(
        "limits",
        r#"
        [[plugins]]
        name = "hungry"
        command = "python3"
        args = ["-c", "b = bytearray(800 * 1024 * 1024)"]
        limits = { address_space_bytes = 268435456 }
        backoff = { initial_ms = 100 }

        [[plugins]]
        name = "done"
        command = "sh"
        args = ["-c", "exit 0"]
        "#,
    )
    .await;
    let limit = Duration::from_secs(20);
    // Python's MemoryError exits 1; the plugin is started again.
    host.expect("hungry exited instance=1 reason=exit code 1", limit)
        .await;
    host.expect("hungry started instance=2", limit).await;
    // restart = on-failure (the default): a clean exit is not restarted.
    host.expect("done exited instance=1 reason=exit code 0", limit)
        .await;
    host.expect("done state=exited", limit).await;
}

#[tokio::test]
async fn a_bad_manifest_is_refused_naming_plugin_and_key_and_the_others_start() {
    let mut host = HostProcess::start(
        "bad",
        r#"
        [[plugins]]
        name = "typo"
        command = "sh"
        restart_policy = "always"

        [[plugins]]
        name = "ghost"
        command = "/no/such/plugin"

        [[plugins]]
        name = "good"
        command = "sh"
        args = ["-c", "sleep 30"]
        "#,
    )
    .await;
    host.expect("good started instance=1", Duration::from_secs(10))
        .await;
    let mut refused = Vec::new();
    eventually(Duration::from_secs(10), "both refusals logged", || {
        while let Ok(l) = host.stderr.try_recv() {
            if l.contains("refused") {
                refused.push(l);
            }
        }
        let r = refused.clone();
        async move {
            let typo = r
                .iter()
                .any(|l| l.contains("`typo`") && l.contains("restart_policy"));
            let ghost = r
                .iter()
                .any(|l| l.contains("`ghost`") && l.contains("/no/such/plugin"));
            (typo && ghost).then_some(()).ok_or(format!("{r:?}"))
        }
    })
    .await;
}

/// Pids of processes whose command line contains `marker`.
fn pids_with(marker: &str) -> Vec<u32> {
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

fn is_zombie(pid: u32) -> bool {
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
fn family_manifest(marker_secs: u32) -> String {
    format!(
        r#"
        [[plugins]]
        name = "family"
        command = "sh"
        args = ["-c", "sleep {marker_secs} & wait"]
        "#
    )
}

async fn expect_gone(marker: &str) {
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

#[tokio::test]
async fn sigkill_of_the_host_leaves_no_plugin_process_behind_nor_its_child() {
    let secs = 100_000 + rand_suffix();
    let marker = format!("sleep {secs}");
    let mut host = HostProcess::start("orphans", &family_manifest(secs)).await;
    host.expect("family started instance=1", Duration::from_secs(10))
        .await;
    // The plugin (sh) and its child (sleep) both run.
    eventually(Duration::from_secs(10), "plugin and child running", || {
        let n = pids_with(&marker).len();
        async move { (n >= 2).then_some(()).ok_or(format!("{n} processes")) }
    })
    .await;
    host.child.start_kill().expect("SIGKILL the host");
    let _ = host.child.wait().await;
    expect_gone(&marker).await;
}

#[tokio::test]
async fn sigkill_of_a_node_supervising_plugins_leaves_none_behind() {
    let secs = 100_000 + rand_suffix();
    let marker = format!("sleep {secs}");
    let dir = TempDir::new("node");
    std::fs::write(
        dir.0.join("family.toml"),
        family_manifest(secs).replace("[[plugins]]", ""),
    )
    .expect("manifest");
    let dir_text = dir.0.display().to_string();
    let mut node = NodeProcess::start(&[("KERNEL_PLUGINS_DIR", dir_text.as_str())]).await;
    eventually(Duration::from_secs(10), "plugin and child running", || {
        let n = pids_with(&marker).len();
        async move { (n >= 2).then_some(()).ok_or(format!("{n} processes")) }
    })
    .await;
    node.child.start_kill().expect("SIGKILL the node");
    let _ = node.child.wait().await;
    expect_gone(&marker).await;
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// GET `path` on the admin port: (status code, body).
async fn get(port: u16, path: &str) -> Result<(u16, String), String> {
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
fn failing(name: &str, service: &str, critical: bool) -> String {
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

#[tokio::test]
async fn a_down_plugin_fails_its_calls_at_once_naming_it_and_only_a_critical_one_makes_the_node_unready(
) {
    let dir = TempDir::new("degrade");
    std::fs::write(
        dir.0.join("flaky.toml"),
        failing("flaky", "flaky.echo", false),
    )
    .expect("write");
    let dir_text = dir.0.display().to_string();
    let admin = free_port();
    let admin_listen = format!("127.0.0.1:{admin}");
    let node = NodeProcess::start(&[
        ("KERNEL_PLUGINS_DIR", dir_text.as_str()),
        ("KERNEL_TELEMETRY__ADMIN_LISTEN", admin_listen.as_str()),
    ])
    .await;
    // Another plugin, connected on its own, keeps answering.
    let _other =
        kernel_tests::PluginProcess::spawn_at(&node.url, &["--service", "other.echo"], &[]);
    let client = kernel_sdk::Client::connect(&node.url).expect("client");
    eventually(Duration::from_secs(20), "other.echo answering", || {
        let c = client.clone();
        async move {
            c.call("other.echo", "hi")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    // flaky.echo fails at once, UNAVAILABLE, naming the plugin and its state.
    let started = std::time::Instant::now();
    let err = client
        .call("flaky.echo", "x")
        .await
        .expect_err("flaky is down");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(err.message().contains("plugin `flaky`"), "{err}");
    eventually(Duration::from_secs(10), "flaky in its crash loop", || {
        let c = client.clone();
        async move {
            let e = c.call("flaky.echo", "x").await.expect_err("down");
            e.message()
                .contains("is crash-loop")
                .then_some(())
                .ok_or(e.message().to_owned())
        }
    })
    .await;
    assert_eq!(
        client.call("other.echo", "still").await.expect("other"),
        "still"
    );
    // A non-critical plugin down: the node stays ready.
    let (code, body) = get(admin, "/readyz").await.expect("readyz");
    assert_eq!(code, 200, "{body}");
    let (_, metrics) = get(admin, "/metrics").await.expect("metrics");
    assert!(
        metrics.contains("kernel_plugin_up{plugin=\"flaky\",state=\"crash-loop\"} 0"),
        "{metrics}"
    );

    // A critical one down: not ready, and /readyz names it.
    let dir2 = TempDir::new("critical");
    std::fs::write(
        dir2.0.join("vital.toml"),
        failing("vital", "vital.echo", true),
    )
    .expect("write");
    let dir2_text = dir2.0.display().to_string();
    let admin2 = free_port();
    let admin2_listen = format!("127.0.0.1:{admin2}");
    let _node2 = NodeProcess::start(&[
        ("KERNEL_PLUGINS_DIR", dir2_text.as_str()),
        ("KERNEL_TELEMETRY__ADMIN_LISTEN", admin2_listen.as_str()),
    ])
    .await;
    eventually(
        Duration::from_secs(10),
        "/readyz 503 naming vital",
        || async move {
            match get(admin2, "/readyz").await {
                Ok((503, body)) if body.contains("vital") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

/// Installs `from` at `to` the way a deploy should: a copy beside it, then
/// a rename over it (the running program's file is never written).
fn install(from: &std::path::Path, to: &std::path::Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).expect("copy");
    std::fs::rename(&tmp, to).expect("rename");
}

/// The instance ids the node lists for `plugin`, through Admin.
async fn instances_of(url: &str, plugin: &str) -> Result<Vec<String>, String> {
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
fn callers(
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
async fn stop_callers(
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
async fn metric_shows(admin: u16, line: &str, what: &str) {
    eventually(Duration::from_secs(30), what, || async move {
        match get(admin, "/metrics").await {
            Ok((200, m)) if m.contains(line) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn a_hot_reload_under_load_fails_no_call_and_a_broken_version_is_rolled_back() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let dir = TempDir::new("reload");
    let program = dir.0.join("reloadable-plugin");
    install(&binary("test-plugin"), &program);
    let manifests = dir.0.join("manifests");
    std::fs::create_dir_all(&manifests).expect("dir");
    std::fs::write(
        manifests.join("reloadable.toml"),
        format!(
            r#"
            name = "reloadable"
            command = "{}"
            args = ["--service", "reload.echo", "--name", "reloadable"]
            services = ["reload.echo"]
            ready_timeout_ms = 5000
            "#,
            program.display()
        ),
    )
    .expect("manifest");
    let admin = free_port();
    let admin_listen = format!("127.0.0.1:{admin}");
    let manifests_text = manifests.display().to_string();
    let node = NodeProcess::start(&[
        ("KERNEL_PLUGINS_DIR", manifests_text.as_str()),
        ("KERNEL_TELEMETRY__ADMIN_LISTEN", admin_listen.as_str()),
    ])
    .await;
    let client = kernel_sdk::Client::connect(&node.url).expect("client");
    eventually(Duration::from_secs(20), "reload.echo answering", || {
        let c = client.clone();
        async move {
            c.call("reload.echo", "hi")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    assert_eq!(
        instances_of(&node.url, "reloadable").await.expect("admin"),
        vec!["reloadable-1:active".to_owned()]
    );

    // A good reload under a continuous stream of calls.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let running = callers(&client, "reload.echo", 4, &stop, &ok);
    eventually(Duration::from_secs(20), "calls flowing", || {
        let n = ok.load(Ordering::Relaxed);
        async move { (n >= 300).then_some(()).ok_or(format!("{n} calls")) }
    })
    .await;
    let before = ok.load(Ordering::Relaxed);
    install(&binary("test-plugin"), &program);
    eventually(
        Duration::from_secs(30),
        "traffic on instance 2 only",
        || {
            let url = node.url.clone();
            async move {
                let ids = instances_of(&url, "reloadable").await?;
                (ids == vec!["reloadable-2:active".to_owned()])
                    .then_some(())
                    .ok_or(format!("{ids:?}"))
            }
        },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "2,000 calls across the reload",
        || {
            let n = ok.load(Ordering::Relaxed) - before;
            async move { (n >= 2000).then_some(()).ok_or(format!("{n} calls")) }
        },
    )
    .await;
    let failures = stop_callers(&stop, running).await;
    assert!(
        failures.is_empty(),
        "failed calls across the reload: {failures:?}"
    );

    // A broken version (exits at start) is rolled back: instance 2 serves on.
    let broken = dir.0.join("broken");
    std::fs::write(&broken, "#!/bin/sh\nexit 1\n").expect("write");
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let running = callers(&client, "reload.echo", 2, &stop, &ok);
    install(&broken, &program);
    metric_shows(
        admin,
        "kernel_plugin_reload_failures_total{plugin=\"reloadable\"} 1",
        "the rollback reported",
    )
    .await;
    let after_rollback = ok.load(Ordering::Relaxed);
    eventually(Duration::from_secs(20), "calls still answered", || {
        let n = ok.load(Ordering::Relaxed);
        async move {
            (n >= after_rollback + 200)
                .then_some(())
                .ok_or(format!("{n}"))
        }
    })
    .await;
    let failures = stop_callers(&stop, running).await;
    assert!(
        failures.is_empty(),
        "failed calls during the rollback: {failures:?}"
    );

    // A version that starts but fails its calls: it serves beside the old
    // one in its probation, fails, and is rolled back; the calls it failed
    // are the only failures, and the old instance answers the rest.
    let failing = dir.0.join("failing");
    std::fs::write(
        &failing,
        format!(
            "#!/bin/sh\nexec {} \"$@\" --mode internal\n",
            binary("test-plugin").display()
        ),
    )
    .expect("write");
    std::fs::set_permissions(
        &failing,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let running = callers(&client, "reload.echo", 2, &stop, &ok);
    install(&failing, &program);
    metric_shows(
        admin,
        "kernel_plugin_reload_failures_total{plugin=\"reloadable\"} 2",
        "the second rollback reported",
    )
    .await;
    let during = stop_callers(&stop, running).await;
    assert!(
        during.iter().all(|f| f.contains("broken build")),
        "only the broken version's own failures: {during:?}"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let running = callers(&client, "reload.echo", 2, &stop, &ok);
    eventually(
        Duration::from_secs(20),
        "calls answered after the rollback",
        || {
            let n = ok.load(Ordering::Relaxed);
            async move { (n >= 200).then_some(()).ok_or(format!("{n}")) }
        },
    )
    .await;
    let failures = stop_callers(&stop, running).await;
    assert!(
        failures.is_empty(),
        "failed calls after the rollback: {failures:?}"
    );
    assert_eq!(
        instances_of(&node.url, "reloadable").await.expect("admin"),
        vec!["reloadable-2:active".to_owned()]
    );
}

#[tokio::test]
async fn admin_lists_supervised_plugins_and_resets_one_out_of_its_crash_loop() {
    use kernel_proto::v1::{admin_client::AdminClient, ListSupervisedRequest, PluginRequest};
    let dir = TempDir::new("admin");
    std::fs::write(
        dir.0.join("looper.toml"),
        failing("looper", "looper.echo", false),
    )
    .expect("write");
    std::fs::write(
        dir.0.join("steady.toml"),
        "name = \"steady\"\ncommand = \"sh\"\nargs = [\"-c\", \"sleep 60\"]\n",
    )
    .expect("write");
    let dir_text = dir.0.display().to_string();
    let node = NodeProcess::start(&[("KERNEL_PLUGINS_DIR", dir_text.as_str())]).await;
    let mut admin = AdminClient::connect(node.url.clone()).await.expect("admin");
    let list = |admin: &mut AdminClient<tonic::transport::Channel>| {
        let mut admin = admin.clone();
        async move {
            admin
                .list_supervised(ListSupervisedRequest {})
                .await
                .map(|r| r.into_inner().plugins)
                .map_err(|e| e.to_string())
        }
    };
    let looping = eventually(Duration::from_secs(10), "looper in its crash loop", || {
        let l = list(&mut admin);
        async move {
            let plugins = l.await?;
            plugins
                .iter()
                .find(|p| p.plugin == "looper" && p.state == "crash-loop")
                .cloned()
                .ok_or(format!("{plugins:?}"))
        }
    })
    .await;
    assert_eq!(looping.last_exit, "exit code 1");
    assert_eq!(looping.restarts, 2);
    assert_eq!(looping.pid, 0);
    assert!(!looping.critical);
    let plugins = list(&mut admin).await.expect("list");
    let steady = plugins
        .iter()
        .find(|p| p.plugin == "steady")
        .expect("steady");
    assert_eq!(steady.state, "running");
    assert!(steady.pid > 0, "{steady:?}");
    // Reset: it starts again, as a later instance, with its count cleared.
    admin
        .reset_plugin(PluginRequest {
            plugin: "looper".into(),
        })
        .await
        .expect("reset");
    eventually(Duration::from_secs(10), "looper started again", || {
        let l = list(&mut admin);
        let before = looping.instance;
        async move {
            let plugins = l.await?;
            let p = plugins
                .iter()
                .find(|p| p.plugin == "looper")
                .ok_or("gone")?;
            (p.instance > before).then_some(()).ok_or(format!("{p:?}"))
        }
    })
    .await;
    let err = admin
        .reset_plugin(PluginRequest {
            plugin: "nobody".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn a_changed_manifest_reloads_the_plugin_and_a_bad_one_leaves_the_old_serving() {
    let dir = TempDir::new("manifest");
    let manifest = |extra: &str| {
        format!(
            "name = \"conf\"\ncommand = \"{}\"\nargs = [\"--service\", \"conf.echo\", \"--name\", \"conf\"]\nservices = [\"conf.echo\"]\nprobation_ms = 100\n{extra}\n",
            binary("test-plugin").display()
        )
    };
    let file = dir.0.join("conf.toml");
    std::fs::write(&file, manifest("")).expect("write");
    let write = |text: String| {
        let tmp = dir.0.join("conf.toml.new");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &file).expect("rename");
    };
    let admin = free_port();
    let admin_listen = format!("127.0.0.1:{admin}");
    let dir_text = dir.0.display().to_string();
    let node = NodeProcess::start(&[
        ("KERNEL_PLUGINS_DIR", dir_text.as_str()),
        ("KERNEL_TELEMETRY__ADMIN_LISTEN", admin_listen.as_str()),
    ])
    .await;
    let client = kernel_sdk::Client::connect(&node.url).expect("client");
    eventually(Duration::from_secs(20), "conf.echo answering", || {
        let c = client.clone();
        async move {
            c.call("conf.echo", "hi")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    // A bad manifest: refused, counted, and instance 1 serves on.
    write(manifest("restart_policy = \"always\""));
    metric_shows(
        admin,
        "kernel_plugin_reload_failures_total{plugin=\"conf\"} 1",
        "the refusal counted",
    )
    .await;
    assert_eq!(
        client.call("conf.echo", "still").await.expect("old serves"),
        "still"
    );
    assert_eq!(
        instances_of(&node.url, "conf").await.expect("admin"),
        vec!["conf-1:active".to_owned()]
    );
    // A good change: the plugin reloads by it.
    write(manifest("env = { CONF_VERSION = \"2\" }"));
    eventually(Duration::from_secs(20), "instance 2 serving alone", || {
        let url = node.url.clone();
        async move {
            let ids = instances_of(&url, "conf").await?;
            (ids == vec!["conf-2:active".to_owned()])
                .then_some(())
                .ok_or(format!("{ids:?}"))
        }
    })
    .await;
    assert_eq!(
        client.call("conf.echo", "new").await.expect("new serves"),
        "new"
    );
}

#[tokio::test]
async fn sigkill_of_the_host_right_after_a_start_leaves_nothing_behind() {
    // The host dies before its shim may even have looked at its parent:
    // the shim is told the host's pid, so it does not mistake init for it.
    for _ in 0..5 {
        let secs = 100_000 + rand_suffix();
        let marker = format!("sleep {secs}");
        let mut host = HostProcess::start("early", &family_manifest(secs)).await;
        host.expect("family started instance=1", Duration::from_secs(10))
            .await;
        host.child.start_kill().expect("SIGKILL the host");
        let _ = host.child.wait().await;
        expect_gone(&marker).await;
    }
}
