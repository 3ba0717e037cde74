//! The node's lifecycle: the real binary's config errors, and plugins and
//! clients reconnecting after a restart. Graceful shutdown has its own
//! file, `shutdown.rs`.

use std::time::Duration;

use kernel_tests::{binary, eventually, Node, PluginProcess};
use tokio::process::Command;

#[tokio::test]
async fn bad_config_exits_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("kernel-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[router]\nqueue_limitt = 3\n").expect("write");
    let out = Command::new(binary("kernel-node"))
        .arg("--config")
        .arg(&file)
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("queue_limitt"), "{err}");

    let out = Command::new(binary("kernel-node"))
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
        let out = Command::new(binary("kernel-node"))
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
async fn a_taken_admin_port_is_refused_naming_the_setting_and_the_way_out() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let out = Command::new(binary("kernel-node"))
        .args(["--listen", "127.0.0.1:0"])
        .env(
            "KERNEL_TELEMETRY__ADMIN_LISTEN",
            format!("127.0.0.1:{port}"),
        )
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("telemetry.admin_listen 127.0.0.1:{port}"))
            && err.contains("KERNEL_TELEMETRY__ADMIN_LISTEN="),
        "{err}"
    );
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
    let reply = eventually(Duration::from_secs(10), "the client reconnected", || {
        let c = client.clone();
        async move { c.call("re.echo", "after").await.map_err(|e| e.to_string()) }
    })
    .await;
    assert_eq!(reply, "after");
}
