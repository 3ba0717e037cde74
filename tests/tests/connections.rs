//! Connections that never speak are closed after the handshake timeout,
//! and connections past `server.max_connections` are closed at once, while
//! a well-behaved client keeps working.

use std::time::Duration;

use kernel_node::config::Config;
use kernel_tests::Node;
use tokio::io::AsyncReadExt;

/// Whether the node closes `stream` within `limit` (EOF or reset).
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // The node may say something (HTTP/2 settings) before it gives up.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn silent_connections_are_closed_after_the_handshake_timeout() {
    let mut config = Config::default();
    config.server.handshake_timeout_ms = 300;
    let node = Node::start_with(config).await;
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(
            tokio::net::TcpStream::connect(node.addr)
                .await
                .expect("connect"),
        );
    }
    // A client that speaks is served meanwhile.
    node.client()
        .publish("still.served", "{}")
        .await
        .expect("served");
    for s in &mut silent {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "a silent connection stayed open"
        );
    }
    // ... and after.
    node.client()
        .publish("still.served", "{}")
        .await
        .expect("served");
    node.stop().await;
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once() {
    let mut config = Config::default();
    config.server.max_connections = 4;
    config.server.handshake_timeout_ms = 2_000;
    let node = Node::start_with(config).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            tokio::net::TcpStream::connect(node.addr)
                .await
                .expect("connect"),
        );
    }
    let mut extra = tokio::net::TcpStream::connect(node.addr)
        .await
        .expect("the kernel accepts it");
    assert!(
        closed_within(&mut extra, Duration::from_millis(1_000)).await,
        "a connection past the cap was kept"
    );
    // The held ones time out (silent), freeing their places.
    drop(held);
    let client = node.client();
    kernel_tests::eventually(Duration::from_secs(10), "a place again", || {
        let client = client.clone();
        async move {
            client
                .publish("after.cap", "{}")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    node.stop().await;
}
