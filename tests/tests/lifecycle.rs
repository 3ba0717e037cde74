//! The node's lifecycle: the real binary's config errors and graceful
//! shutdown, and plugins and clients reconnecting after a restart.

use std::process::Stdio;
use std::time::{Duration, Instant};

use kernel_tests::{Node, PluginProcess};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// The `kernel-node` binary (built by `make test` next to the test binaries).
fn node_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("kernel-node");
    assert!(
        bin.exists(),
        "{} missing: run `make test` (it builds the binaries)",
        bin.display()
    );
    bin
}

#[tokio::test]
async fn bad_config_exits_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("kernel-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[router]\nqueue_limitt = 3\n").expect("write");
    let out = Command::new(node_binary())
        .arg("--config")
        .arg(&file)
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("queue_limitt"), "{err}");

    let out = Command::new(node_binary())
        .env("KERNEL_BUDGET__DEPTH", "deep")
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("depth") && err.contains("KERNEL_BUDGET__DEPTH"),
        "{err}"
    );

    // A sampler the node does not know is refused, not replaced.
    for (key, value, expect) in [
        (
            "OTEL_TRACES_SAMPLER",
            "always-on",
            "unknown sampler `always-on`",
        ),
        ("OTEL_TRACES_SAMPLER_ARG", "2", "not a sampling ratio"),
    ] {
        let out = Command::new(node_binary())
            .args(["--listen", "127.0.0.1:0"])
            .env("KERNEL_TELEMETRY__ADMIN_LISTEN", "")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
            .env("OTEL_TRACES_SAMPLER", "traceidratio")
            .env(key, value)
            .output()
            .await
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{key}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key) && err.contains(expect), "{err}");
    }
}

#[tokio::test]
async fn sigterm_lets_in_flight_calls_finish_then_exits() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut node = Command::new(node_binary())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("KERNEL_TELEMETRY__ADMIN_LISTEN", "")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("node starts")
        .expect("read")
        .expect("a line");
    assert!(first.contains("listening"), "{first}");
    let url = format!("http://127.0.0.1:{port}");
    let mut plugin = tokio::process::Command::new(
        std::env::current_exe()
            .expect("exe")
            .parent()
            .and_then(|d| d.parent())
            .expect("dir")
            .join("test-plugin"),
    )
    .args(["--url", &url, "--service", "slow.echo", "--delay-ms", "700"])
    .stdout(Stdio::null())
    .kill_on_drop(true)
    .spawn()
    .expect("plugin");
    let client = kernel_sdk::Client::connect(&url).expect("client");
    let start = Instant::now();
    loop {
        if client.call("slow.echo", "warm").await.is_ok() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "plugin never registered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = client.clone();
    let in_flight = tokio::spawn(async move { c.call("slow.echo", "finish me").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = node.id().expect("pid");
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .expect("kill");
    assert!(killed.success());
    let reply = in_flight
        .await
        .expect("join")
        .expect("the in-flight call completes");
    assert_eq!(reply, "finish me");
    let status = tokio::time::timeout(Duration::from_secs(10), node.wait())
        .await
        .expect("the node exits within its grace period")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    let _ = plugin.kill().await;
}

#[tokio::test]
async fn plugins_and_clients_reconnect_after_a_node_restart() {
    let first = Node::start().await;
    let addr = first.addr;
    let _plugin = PluginProcess::spawn(&first, &["--service", "re.echo"]);
    first.wait_providers("re.echo", 1).await;
    let client = first.client();
    assert_eq!(
        client
            .call("re.echo", "before")
            .await
            .expect("before restart"),
        "before"
    );
    first.stop().await;
    let second = Node::start_at(addr).await;
    second.wait_providers("re.echo", 1).await;
    // The same client object: its stream died with the old node and is
    // re-opened on the new one.
    let start = Instant::now();
    let reply = loop {
        match client.call("re.echo", "after").await {
            Ok(r) => break r,
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "client never reconnected: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(reply, "after");
}
