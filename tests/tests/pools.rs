//! Provider pools, hot swap, provider crashes, and hostile connections.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::future::join_all;
use kernel_proto::v1 as pb;
use kernel_tests::{wait_until, Node, PluginProcess};
use tokio::io::AsyncWriteExt;
use tonic::Code;

#[tokio::test]
async fn two_providers_share_load() {
    let node = Node::start().await;
    let _a = PluginProcess::spawn(
        &node,
        &[
            "--service",
            "lb.who",
            "--mode",
            "whoami",
            "--instance",
            "a",
            "--delay-ms",
            "5",
        ],
    );
    let _b = PluginProcess::spawn(
        &node,
        &[
            "--service",
            "lb.who",
            "--mode",
            "whoami",
            "--instance",
            "b",
            "--delay-ms",
            "5",
        ],
    );
    node.wait_providers("lb.who", 2).await;
    let client = node.client();
    let answers = join_all((0..400).map(|_| client.call("lb.who", ""))).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for a in answers {
        let who = a.expect("call succeeds");
        *counts
            .entry(String::from_utf8_lossy(&who).into_owned())
            .or_default() += 1;
    }
    let a = counts.get("a").copied().unwrap_or(0);
    let b = counts.get("b").copied().unwrap_or(0);
    assert_eq!(a + b, 400);
    assert!(a >= 80 && b >= 80, "load not shared: {counts:?}");
}

#[tokio::test]
async fn replace_during_1000_calls_in_flight_loses_none() {
    let node = Node::start().await;
    let mut old = PluginProcess::spawn(
        &node,
        &[
            "--service",
            "swap.who",
            "--mode",
            "whoami",
            "--instance",
            "old",
            // Long enough that all 1,000 are seen in flight at once, even
            // on a loaded machine.
            "--delay-ms",
            "3000",
            "--concurrency",
            "2000",
        ],
    );
    node.wait_providers("swap.who", 1).await;
    let client = node.client();
    let in_flight: Vec<_> = (0..1000)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.call("swap.who", "").await })
        })
        .collect();
    let k = node.kernel.clone();
    wait_until(
        Duration::from_secs(10),
        "1000 calls in flight on the old instance",
        move || {
            k.registry().pool("swap.who").is_some_and(|p| {
                p.instances[0]
                    .in_flight
                    .load(std::sync::atomic::Ordering::Relaxed)
                    == 1000
            })
        },
    )
    .await;
    let _new = PluginProcess::spawn(
        &node,
        &[
            "--service",
            "swap.who",
            "--mode",
            "whoami",
            "--instance",
            "new",
            "--replace",
        ],
    );
    let k = node.kernel.clone();
    wait_until(
        Duration::from_secs(10),
        "the new instance alone in the pool",
        move || {
            k.registry()
                .pool("swap.who")
                .is_some_and(|p| p.instances.len() == 1 && &*p.instances[0].id == "new")
        },
    )
    .await;
    // New calls go to the new instance at once.
    assert_eq!(client.call("swap.who", "").await.expect("new call"), "new");
    // Every call that was in flight completes on the old one.
    let mut old_answers = 0;
    for h in in_flight {
        let r = h
            .await
            .expect("join")
            .expect("in-flight call survives the swap");
        assert_eq!(r, "old");
        old_answers += 1;
    }
    assert_eq!(old_answers, 1000);
    // The old instance was told to drain, and did.
    let end = old.expect_line("END", Duration::from_secs(10)).await;
    assert!(end.contains("Drained"), "{end}");
}

#[tokio::test]
async fn killed_provider_fails_in_flight_calls_fast_and_node_keeps_serving() {
    let node = Node::start().await;
    let mut victim = PluginProcess::spawn(&node, &["--service", "crash.hang", "--mode", "hang"]);
    let _healthy = PluginProcess::spawn(&node, &["--service", "crash.echo"]);
    node.wait_providers("crash.hang", 1).await;
    node.wait_providers("crash.echo", 1).await;
    let client = node.client();
    let c = client.clone();
    let call = tokio::spawn(async move { c.call("crash.hang", "").await });
    victim.expect_line("STARTED", Duration::from_secs(5)).await;
    let err = victim.kill_mid_call(call).await;
    assert!(err.message().contains("disconnected"), "{err}");
    // Gone from the registry; others unaffected.
    let err = client
        .call("crash.hang", "")
        .await
        .expect_err("no provider left");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        client
            .call("crash.echo", "still")
            .await
            .expect("node serves"),
        "still"
    );
}

#[tokio::test]
async fn killed_pool_member_is_never_chosen_again() {
    let node = Node::start().await;
    let mut a = PluginProcess::spawn(
        &node,
        &[
            "--service",
            "pool.who",
            "--mode",
            "whoami",
            "--instance",
            "a",
        ],
    );
    let _b = PluginProcess::spawn(
        &node,
        &[
            "--service",
            "pool.who",
            "--mode",
            "whoami",
            "--instance",
            "b",
        ],
    );
    node.wait_providers("pool.who", 2).await;
    a.kill().await;
    node.wait_providers("pool.who", 1).await;
    let client = node.client();
    for _ in 0..50 {
        assert_eq!(client.call("pool.who", "").await.expect("served by b"), "b");
    }
}

#[tokio::test]
async fn garbage_instead_of_http2_does_not_hurt_the_node() {
    let node = Node::start().await;
    let _p = PluginProcess::spawn(&node, &["--service", "g.echo"]);
    node.wait_providers("g.echo", 1).await;
    let garbage: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(),
        vec![0u8; 1 << 16],
    ];
    for g in garbage {
        let mut s = tokio::net::TcpStream::connect(node.addr)
            .await
            .expect("connect");
        let _ = s.write_all(&g).await;
        let _ = s.flush().await;
        // Leave some half-open, close others.
        drop(s);
    }
    // Well-formed gRPC framing around protobuf garbage: a clear status.
    let channel = tonic::transport::Endpoint::from_shared(node.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    for (path, body) in [
        ("/kernel.v1.Kernel/Call", vec![0xff; 32]),
        (
            "/kernel.v1.Kernel/Call",
            vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
        ),
        ("/kernel.v1.Kernel/Publish", vec![0x12, 0x80]),
        ("/kernel.v1.Kernel/NoSuchMethod", vec![1, 2, 3]),
    ] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.expect("ready");
        let status = grpc
            .unary(
                tonic::Request::new(body),
                http::uri::PathAndQuery::from_static(path),
                raw_codec::RawCodec,
            )
            .await
            .expect_err("garbage is refused");
        assert!(
            matches!(
                status.code(),
                Code::Internal | Code::InvalidArgument | Code::Unimplemented
            ),
            "{path}: {status:?}"
        );
    }
    let mut raw = node.raw().await;
    let req = pb::CallRequest {
        service: "g.echo".into(),
        payload: vec![0xff; 16].into(),
        ..Default::default()
    };
    assert_eq!(
        &raw.call(req).await.expect("serves").get_ref().payload[..],
        &[0xff; 16]
    );
    assert_eq!(
        node.client()
            .call("g.echo", "ok")
            .await
            .expect("still serving"),
        "ok"
    );
}

/// A codec that sends and receives raw bytes, to put arbitrary bodies in
/// well-formed gRPC frames.
mod raw_codec {
    use bytes::{Buf, BufMut};
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::Status;

    pub(crate) struct RawCodec;

    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = RawCodec;
        type Decoder = RawCodec;
        fn encoder(&mut self) -> Self::Encoder {
            RawCodec
        }
        fn decoder(&mut self) -> Self::Decoder {
            RawCodec
        }
    }

    impl Encoder for RawCodec {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for RawCodec {
        type Item = Vec<u8>;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
            let v = src.chunk().to_vec();
            src.advance(v.len());
            Ok(Some(v))
        }
    }
}

#[tokio::test]
async fn a_silent_provider_is_deregistered_after_the_heartbeat_timeout() {
    let mut config = kernel_node::config::Config::default();
    config.router.heartbeat_interval_ms = 100;
    config.router.heartbeat_timeout_ms = 400;
    let node = Node::start_with(config).await;
    // A hand-written provider that says hello and then never sends a frame
    // again (hung, but its TCP connection stays up).
    // Timed from before the hello: the node cannot have heard it earlier.
    let registering = Instant::now();
    let (up_tx, _down) = node.raw_provider("silent", "silent.svc").await;
    node.wait_providers("silent.svc", 1).await;
    node.wait_providers("silent.svc", 0).await;
    assert!(
        registering.elapsed() >= Duration::from_millis(400),
        "not before the timeout"
    );
    let err = node
        .client()
        .call("silent.svc", "")
        .await
        .expect_err("gone");
    assert_eq!(err.code(), Code::NotFound);
    drop(up_tx);
}
