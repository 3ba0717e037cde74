//! Shared harness for the end-to-end tests: a real node on `127.0.0.1:0`,
//! real plugin processes (the `test-plugin` binary), bounded polling.

pub mod otlp;
pub mod pg;
pub mod supervision;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kernel_node::{server, Config, Kernel};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// A node serving on an ephemeral loopback port, stopped on drop.
pub struct Node {
    /// The listen address.
    pub addr: SocketAddr,
    /// `http://addr`.
    pub url: String,
    /// The kernel behind it (for in-process plugins and white-box checks).
    pub kernel: Arc<Kernel>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Starts a node with the default config.
    pub async fn start() -> Node {
        Node::start_with(Config::default()).await
    }

    /// Starts a node with `config` (its `listen` is ignored).
    pub async fn start_with(config: Config) -> Node {
        Node::start_full(config, kernel_proto::trace::Telemetry::disabled()).await
    }

    /// Starts a node with `config` exporting traces through `telemetry`.
    pub async fn start_full(config: Config, telemetry: kernel_proto::trace::Telemetry) -> Node {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        Node::serve(listener, config, telemetry)
    }

    /// Starts a node on a given address (to restart one where it was).
    pub async fn start_at(addr: SocketAddr) -> Node {
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    tracing::debug!(cause = %e, "rebinding");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot rebind {addr}: {e}"),
            }
        };
        Node::serve(
            listener,
            Config::default(),
            kernel_proto::trace::Telemetry::disabled(),
        )
    }

    fn serve(
        listener: tokio::net::TcpListener,
        mut config: Config,
        telemetry: kernel_proto::trace::Telemetry,
    ) -> Node {
        init_logs();
        config.server.shutdown_grace_ms = config.server.shutdown_grace_ms.min(2_000);
        let addr = listener.local_addr().expect("local addr");
        let server = config.server.clone();
        let kernel = Kernel::with_telemetry(config, telemetry);
        let (stop, rx) = oneshot::channel::<()>();
        let k = kernel.clone();
        let task = tokio::spawn(async move {
            let _ = server::run(listener, k, server, None, None, async {
                let _ = rx.await;
            })
            .await;
        });
        Node {
            addr,
            url: format!("http://{addr}"),
            kernel,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the node and waits for it.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    /// Waits until `n` instances provide `service`.
    pub async fn wait_providers(&self, service: &str, n: usize) {
        let k = self.kernel.clone();
        let s = service.to_owned();
        wait_until(
            Duration::from_secs(20),
            &format!("{n} providers of {service}"),
            move || k.registry().pool(&s).map_or(0, |p| p.instances.len()) == n,
        )
        .await;
    }

    /// A raw generated gRPC client.
    pub async fn raw(
        &self,
    ) -> kernel_proto::v1::kernel_client::KernelClient<tonic::transport::Channel> {
        kernel_proto::v1::kernel_client::KernelClient::connect(self.url.clone())
            .await
            .expect("connect raw client")
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024)
    }

    /// A hand-written provider (what a Go or Python author writes without
    /// an SDK): a Register stream that has sent its hello for `service`.
    /// Send further frames up through the sender; read invocations from
    /// the stream.
    pub async fn raw_provider(
        &self,
        plugin: &str,
        service: &str,
    ) -> (
        tokio::sync::mpsc::UnboundedSender<kernel_proto::v1::ProviderUp>,
        tonic::Streaming<kernel_proto::v1::ProviderDown>,
    ) {
        use kernel_proto::v1 as pb;
        let (up, rx) = tokio::sync::mpsc::unbounded_channel();
        up.send(pb::ProviderUp {
            hello: Some(pb::Hello {
                plugin: plugin.into(),
                services: vec![pb::ServiceDecl {
                    name: service.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        })
        .expect("queue hello");
        let down = self
            .raw()
            .await
            .register(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await
            .expect("register")
            .into_inner();
        (up, down)
    }

    /// An SDK client over the network.
    pub fn client(&self) -> kernel_sdk::Client {
        kernel_sdk::Client::connect(&self.url).expect("client")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Polls `check` every 10 ms until it returns `Ok`; after `limit`, panics
/// naming `what` and the last thing `check` saw (its last `Err`), so a
/// failure says what was there instead of only that time ran out.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let last = match check().await {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}; last saw: {last}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`eventually`] for a plain condition: panics with `what` after `limit`.
pub async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    eventually(limit, what, || {
        let ok = cond();
        async move {
            ok.then_some(())
                .ok_or_else(|| "the condition false".to_owned())
        }
    })
    .await
}

/// `Ok` once some provider instance of the node at `url` has a call in
/// flight (asked through Admin `ListPlugins`); else what it saw.
pub async fn provider_busy(url: &str) -> Result<(), String> {
    let mut admin = kernel_proto::v1::admin_client::AdminClient::connect(url.to_owned())
        .await
        .map_err(|e| e.to_string())?;
    let plugins = admin
        .list_plugins(kernel_proto::v1::ListPluginsRequest::default())
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .plugins;
    if plugins.iter().any(|p| p.in_flight > 0) {
        Ok(())
    } else {
        Err(format!(
            "in flight: {:?}",
            plugins.iter().map(|p| p.in_flight).collect::<Vec<_>>()
        ))
    }
}

/// A path next to the test binaries (`make test` builds every binary).
pub fn binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join(name);
    assert!(
        bin.exists(),
        "{} missing: run `make test` (it builds the binaries)",
        bin.display()
    );
    bin
}

/// The real `kernel-node` binary as a child process on a free loopback
/// port (admin HTTP off); killed on drop.
pub struct NodeProcess {
    /// The child.
    pub child: Child,
    /// `http://127.0.0.1:port`.
    pub url: String,
}

impl NodeProcess {
    /// Starts the binary with extra environment `env` and waits for its
    /// "listening" line.
    pub async fn start(env: &[(&str, &str)]) -> NodeProcess {
        NodeProcess::start_program("kernel-node", &[], env).await
    }

    /// Starts `program` (a node binary next to the tests, such as the
    /// examples' `kernel-system`) with `args` and extra environment `env`.
    pub async fn start_program(program: &str, args: &[&str], env: &[(&str, &str)]) -> NodeProcess {
        // The node picks its own port and names it in its first line, so no
        // other test can take the port between picking and binding.
        let mut cmd = Command::new(binary(program));
        cmd.args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env("KERNEL_TELEMETRY__ADMIN_LISTEN", "")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn node");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("node starts")
            .expect("read")
            .expect("a line");
        let addr = first
            .split_once("listening on ")
            .map(|(_, addr)| addr.trim().to_owned())
            .unwrap_or_else(|| panic!("not a listening line: {first}"));
        // Keep reading, so the node never writes into a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        NodeProcess {
            child,
            url: format!("http://{addr}"),
        }
    }

    /// Sends SIGTERM.
    pub async fn terminate(&self) {
        sigterm(&self.child).await;
    }
}

/// Sends SIGTERM to `child`.
pub async fn sigterm(child: &Child) {
    let pid = child.id().expect("pid");
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .expect("kill");
    assert!(killed.success());
}

/// A `test-plugin` child process; killed on drop.
pub struct PluginProcess {
    /// The child.
    pub child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl PluginProcess {
    /// Spawns `test-plugin` with `args` against `node`.
    pub fn spawn(node: &Node, args: &[&str]) -> PluginProcess {
        PluginProcess::spawn_env(node, args, &[])
    }

    /// Spawns `test-plugin` with extra environment variables.
    pub fn spawn_env(node: &Node, args: &[&str], env: &[(&str, &str)]) -> PluginProcess {
        PluginProcess::spawn_at(&node.url, args, env)
    }

    /// Spawns `test-plugin` with `args` against the node at `url`.
    pub fn spawn_at(url: &str, args: &[&str], env: &[(&str, &str)]) -> PluginProcess {
        let mut all = vec!["--url", url];
        all.extend_from_slice(args);
        PluginProcess::spawn_program(&plugin_binary(), &all, env)
    }

    /// Spawns any plugin program (another language's, say) with `args` and
    /// `env`; its stdin is a pipe held open until the process is dropped.
    pub fn spawn_program(
        program: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> PluginProcess {
        let mut child = Command::new(program)
            .envs(env.iter().copied())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut r = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = r.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        PluginProcess { child, lines }
    }

    /// Waits for a stdout line starting with `prefix`; returns it.
    pub async fn expect_line(&mut self, prefix: &str, limit: Duration) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(l)) if l.starts_with(prefix) => return l,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("plugin exited before printing `{prefix}`"),
                Err(_) => panic!("no `{prefix}` line from the plugin within {limit:?}"),
            }
        }
    }

    /// Sends SIGTERM.
    pub async fn terminate(&self) {
        sigterm(&self.child).await;
    }

    /// SIGKILLs the process.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGKILLs this provider while `call`, already running on it, hangs:
    /// the call must fail `UNAVAILABLE`, promptly (at the disconnect, not
    /// at a deadline: the call has none). Returns its error.
    pub async fn kill_mid_call(
        &mut self,
        call: tokio::task::JoinHandle<Result<bytes::Bytes, kernel_sdk::Error>>,
    ) -> kernel_sdk::Error {
        let killed_at = Instant::now();
        self.kill().await;
        let err = call.await.expect("join").expect_err("provider died");
        let took = killed_at.elapsed();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
        err
    }
}

/// The `test-plugin` binary: cargo builds it next to the test binaries'
/// `deps/` folder for every integration test of this package.
fn plugin_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    dir.join("test-plugin")
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// GET `path` on an admin HTTP port: (status, body).
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut buf))
        .await
        .ok()?
        .ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Some((status, body))
}

/// A free loopback address for an admin port.
pub fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    format!("127.0.0.1:{port}")
}

/// Runs `code` with the Python `make test` prepares (`KERNEL_TEST_PYTHON`,
/// the SDK on `KERNEL_TEST_PYTHONPATH`), with `args` and extra `env`, and
/// panics with both of its outputs unless its stdout contains `expect`.
pub async fn python_prints(code: &str, args: &[&str], env: &[(&str, &str)], expect: &str) {
    let Ok(python) = std::env::var("KERNEL_TEST_PYTHON") else {
        panic!("KERNEL_TEST_PYTHON is not set: run the tests with `make test`");
    };
    let out = Command::new(python)
        .arg("-c")
        .arg(code)
        .args(args)
        .envs(env.iter().copied())
        .env(
            "PYTHONPATH",
            std::env::var("KERNEL_TEST_PYTHONPATH").unwrap_or_default(),
        )
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(expect),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
