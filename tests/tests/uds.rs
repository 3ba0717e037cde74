//! The Unix-domain socket (`server.unix_socket`): plugins and callers on
//! `unix:///path` reach the same kernel as TCP ones; a plugin dying
//! mid-call over the socket fails the call fast; garbage on the socket
//! harms nothing; the file is owner-only, a stale one is replaced, a live
//! one or a file that is not a socket is refused, and it is removed at
//! exit unless a newer node's socket has taken its place.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use kernel_sdk::Client;
use kernel_tests::supervision::TempDir;
use kernel_tests::{eventually, NodeProcess, PluginProcess};
use tokio::io::AsyncWriteExt;
use tonic::Code;

async fn uds_node(sock: &std::path::Path) -> (NodeProcess, String) {
    let node = NodeProcess::start(&[(
        "KERNEL_SERVER__UNIX_SOCKET",
        sock.to_str().expect("utf-8 path"),
    )])
    .await;
    (node, format!("unix://{}", sock.display()))
}

/// Calls `service` on `client` until it has a provider.
async fn reachable(client: &Client, service: &str) {
    eventually(Duration::from_secs(10), service, || async {
        match client.call(service, "ping").await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Code::NotFound => Err(e.to_string()),
            Err(e) => panic!("{service}: {e}"),
        }
    })
    .await;
}

#[tokio::test]
async fn plugins_and_callers_meet_over_the_socket_and_tcp() {
    let dir = TempDir::new("uds-serve");
    let sock = dir.0.join("kernel.sock");
    let (node, unix) = uds_node(&sock).await;
    let mode = std::fs::metadata(&sock)
        .expect("socket file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    let _plugin = PluginProcess::spawn_at(&unix, &["--service", "uds.echo"], &[]);
    let over_unix = Client::connect(&unix).expect("unix client");
    let over_tcp = Client::connect(&node.url).expect("tcp client");
    reachable(&over_unix, "uds.echo").await;
    assert_eq!(over_unix.call("uds.echo", "a").await.expect("uds"), "a");
    assert_eq!(over_tcp.call("uds.echo", "b").await.expect("tcp"), "b");
    // Events cross the two transports too.
    let mut sub = over_tcp
        .subscriber(kernel_sdk::SubscribeOptions::new("uds.*"))
        .await
        .expect("subscribe");
    over_unix.publish("uds.ev", "e1").await.expect("publish");
    let ev = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("delivered in time")
        .expect("an event");
    assert_eq!(ev.payload, "e1");

    // Garbage on the socket: the node closes that connection, nothing else.
    for _ in 0..20 {
        let mut s = tokio::net::UnixStream::connect(&sock)
            .await
            .expect("connect");
        let junk: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 13) as u8).collect();
        let _ = s.write_all(&junk).await;
    }
    assert_eq!(over_unix.call("uds.echo", "c").await.expect("still"), "c");

    // A unix:// URL without a path is refused by the SDK, clearly.
    let Err(err) = Client::connect("unix://") else {
        panic!("unix:// without a path accepted");
    };
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    node.terminate().await;
    let mut child = node.child;
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(status.success(), "{status}");
    assert!(!sock.exists(), "the socket file is removed at exit");
}

#[tokio::test]
async fn a_plugin_dying_mid_call_over_the_socket_fails_the_call_fast() {
    let dir = TempDir::new("uds-crash");
    let sock = dir.0.join("kernel.sock");
    let (_node, unix) = uds_node(&sock).await;
    let mut victim =
        PluginProcess::spawn_at(&unix, &["--service", "uds.hang", "--mode", "hang"], &[]);
    let _healthy = PluginProcess::spawn_at(&unix, &["--service", "uds.echo"], &[]);
    let client = Client::connect(&unix).expect("unix client");
    reachable(&client, "uds.echo").await;
    let c = client.clone();
    // Wait until the hanging provider is registered: a probe that is not
    // NOT_FOUND but runs out of time reached it (and it printed STARTED).
    eventually(Duration::from_secs(10), "uds.hang registered", || async {
        let r = c
            .call_with(
                "uds.hang",
                "",
                kernel_sdk::CallOptions {
                    timeout: Some(Duration::from_millis(200)),
                    ..Default::default()
                },
            )
            .await;
        match r {
            Err(e) if e.code() == Code::DeadlineExceeded => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let c = client.clone();
    let call = tokio::spawn(async move { c.call("uds.hang", "").await });
    // The probe's STARTED, then this call's.
    victim.expect_line("STARTED", Duration::from_secs(5)).await;
    victim.expect_line("STARTED", Duration::from_secs(5)).await;
    victim.kill_mid_call(call).await;
    assert_eq!(
        client.call("uds.echo", "after").await.expect("node serves"),
        "after"
    );
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    let dir = TempDir::new("uds-stale");
    let sock = dir.0.join("kernel.sock");
    // A socket file nobody listens on any more (a node that was SIGKILLed).
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind"));
    assert!(sock.exists());
    let (_node, unix) = uds_node(&sock).await;
    let client = Client::connect(&unix).expect("unix client");
    answers(&client).await;

    // A second node on the same path: refused at start, naming the key.
    let stderr = refused_start(("KERNEL_SERVER__UNIX_SOCKET", &sock), 1).await;
    assert!(stderr.contains("another process"), "{stderr}");
    // The first node still answers on it.
    answers(&client).await;
}

/// The node behind `client` answers (a call to nobody is `NOT_FOUND`).
async fn answers(client: &Client) {
    let err = client
        .call("nobody.here", "x")
        .await
        .expect_err("no provider");
    assert_eq!(err.code(), Code::NotFound, "{err}");
}

/// Starts a node with extra environment `env`, expecting it to refuse to
/// start with exit `code` and a message naming `server.unix_socket`;
/// returns its stderr.
async fn refused_start(env: (&str, &std::path::Path), code: i32) -> String {
    let out = tokio::process::Command::new(kernel_tests::binary("kernel-node"))
        .args(["--listen", "127.0.0.1:0"])
        .env("KERNEL_TELEMETRY__ADMIN_LISTEN", "")
        .env(env.0, env.1)
        .output()
        .await
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert!(stderr.contains("server.unix_socket"), "{stderr}");
    stderr
}

/// A path that holds something other than a socket (a mistyped config
/// key pointing at a real file) is refused and left as it was.
#[tokio::test]
async fn a_file_that_is_not_a_socket_is_refused_and_kept() {
    let dir = TempDir::new("uds-notsock");
    let path = dir.0.join("kernel.toml");
    std::fs::write(&path, "keep me").expect("write");
    let stderr = refused_start(("KERNEL_SERVER__UNIX_SOCKET", &path), 1).await;
    assert!(stderr.contains("not a socket"), "{stderr}");
    assert_eq!(std::fs::read(&path).expect("still there"), b"keep me");
}

/// A node exiting removes the socket only while it is its own: one a newer
/// node put at the path (here after the file was removed under the first)
/// stays, and that node still answers on it.
#[tokio::test]
async fn an_exiting_node_leaves_a_newer_nodes_socket_alone() {
    let dir = TempDir::new("uds-handover");
    let sock = dir.0.join("kernel.sock");
    let (mut old, _) = uds_node(&sock).await;
    std::fs::remove_file(&sock).expect("remove the old node's file");
    let (_new, unix) = uds_node(&sock).await;
    old.terminate().await;
    let status = tokio::time::timeout(Duration::from_secs(15), old.child.wait())
        .await
        .expect("the old node exits")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(sock.exists(), "the newer node's socket was removed");
    let client = Client::connect(&unix).expect("unix client");
    answers(&client).await;
}

/// A supervised plugin whose manifest says `transport = "unix"` is given
/// the socket's URL as `KERNEL_URL` and serves through it; on a node
/// without a socket such a manifest stops the node at start, naming the
/// plugin and the setting.
#[tokio::test]
async fn a_supervised_plugin_reaches_the_node_over_the_socket_when_its_manifest_says_so() {
    let dir = TempDir::new("uds-supervised");
    let sock = dir.0.join("kernel.sock");
    let seen = dir.0.join("kernel_url");
    let plugins = dir.0.join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    let manifest = format!(
        r#"
        name = "near"
        command = "sh"
        args = ["-c", "printf %s \"$KERNEL_URL\" > {seen}; exec {plugin} --service uds.near"]
        transport = "unix"
        services = ["uds.near"]
        "#,
        seen = seen.display(),
        plugin = kernel_tests::binary("test-plugin").display(),
    );
    std::fs::write(plugins.join("near.toml"), manifest).expect("manifest");
    let plugins_dir = plugins.to_str().expect("utf-8 path");
    let node = NodeProcess::start(&[
        (
            "KERNEL_SERVER__UNIX_SOCKET",
            sock.to_str().expect("utf-8 path"),
        ),
        ("KERNEL_PLUGINS_DIR", plugins_dir),
    ])
    .await;
    let client = Client::connect(&node.url).expect("tcp client");
    eventually(Duration::from_secs(20), "uds.near answering", || {
        let c = client.clone();
        async move { c.call("uds.near", "hi").await.map_err(|e| e.to_string()) }
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(&seen).expect("the plugin wrote its KERNEL_URL"),
        format!("unix://{}", sock.display())
    );
    drop(node);

    let stderr = refused_start(("KERNEL_PLUGINS_DIR", &plugins), 2).await;
    assert!(stderr.contains("`near`"), "{stderr}");
}

/// The Python SDK over `unix:///path` (grpc's own Unix-socket support;
/// needs the environment `make test` prepares).
#[tokio::test]
async fn the_python_sdk_connects_over_the_socket() {
    let dir = TempDir::new("uds-python");
    let sock = dir.0.join("kernel.sock");
    let (_node, unix) = uds_node(&sock).await;
    let _plugin = PluginProcess::spawn_at(&unix, &["--service", "uds.echo"], &[]);
    reachable(&Client::connect(&unix).expect("client"), "uds.echo").await;
    let code = r#"
import asyncio, sys
from kernel_sdk import Client

async def main() -> None:
    client = Client(sys.argv[1])
    print("reply", (await client.call("uds.echo", b"from python")).decode())

asyncio.run(main())
"#;
    kernel_tests::python_prints(code, &[&unix], &[], "reply from python").await;
}
