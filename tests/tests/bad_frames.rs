//! Bad frames on open streams: a raw HTTP/2 client opens a CallStream,
//! PublishStream or Subscribe properly, then sends a gRPC message the node
//! cannot decode (wire type 7) or one over the size limit. The stream must
//! end with `INTERNAL` or `OUT_OF_RANGE` (PROTOCOL §8.3), never `OK`, and a
//! call in flight on a CallStream must get its own error reply.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kernel_proto::v1 as pb;
use kernel_tests::Node;
use prost::Message;

/// One gRPC length-prefixed message.
fn grpc_frame(body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(body.len() + 5);
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(body.len() as u32).to_be_bytes());
    b.extend_from_slice(body);
    b.freeze()
}

/// Field 1 with wire type 7: no protobuf decoder accepts it.
const GARBAGE: &[u8] = &[0x0f, 0x01, 0x02, 0x03];

/// What came back: the messages' bytes and the final grpc-status.
struct Outcome {
    messages: Vec<Bytes>,
    status: Option<(i32, String)>,
}

/// Opens `path` on `node`, sends `first` (a valid message), then `bad`
/// (raw bytes, already framed or not), and reads until the stream ends.
async fn exchange(node: &Node, path: &str, first: Vec<u8>, bad: Bytes) -> Outcome {
    let tcp = tokio::net::TcpStream::connect(node.addr)
        .await
        .expect("tcp");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.expect("ready");
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}{path}", node.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (response, mut send) = client.send_request(req, false).expect("send");
    send.send_data(grpc_frame(&first), false)
        .expect("first frame");
    // Let the node act on the valid frame first (a call goes in flight).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut sent = 0;
    while sent < bad.len() {
        let chunk = bad.slice(sent..(sent + 16 * 1024).min(bad.len()));
        sent += chunk.len();
        send.reserve_capacity(chunk.len());
        if send.send_data(chunk, false).is_err() {
            break; // the node already reset the stream
        }
        if sent % (1 << 20) < 16 * 1024 {
            tokio::task::yield_now().await;
        }
    }
    let response = tokio::time::timeout(Duration::from_secs(20), response)
        .await
        .expect("a response")
        .expect("response head");
    let mut body = response.into_body();
    let mut buf = BytesMut::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(20), body.data())
        .await
        .expect("the stream ends")
    {
        match chunk {
            Ok(c) => {
                let _ = body.flow_control().release_capacity(c.len());
                buf.extend_from_slice(&c);
            }
            Err(_) => break,
        }
    }
    let trailers = body.trailers().await.ok().flatten();
    let status = trailers.and_then(|t| {
        let code = t.get("grpc-status")?.to_str().ok()?.parse().ok()?;
        let msg = t
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Some((code, msg))
    });
    let mut messages = Vec::new();
    let mut rest = buf.freeze();
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if rest.len() < 5 + len {
            break;
        }
        messages.push(rest.slice(5..5 + len));
        rest = rest.slice(5 + len..);
    }
    Outcome { messages, status }
}

/// A message larger than the node's limit, framed.
fn oversized() -> Bytes {
    let size = 100 * 1024 * 1024;
    let mut b = BytesMut::with_capacity(size + 5);
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(size as u32).to_be_bytes());
    b.resize(size + 5, 0);
    b.freeze()
}

async fn hanging(node: &Node) -> kernel_core::LocalRegistration {
    kernel_sdk::Plugin::new("hang")
        .provide("hang.forever", |ctx, _p| async move {
            ctx.cancelled().await;
            Ok(kernel_sdk::Bytes::new())
        })
        .attach(&node.kernel)
        .expect("attach")
}

fn call_frame() -> Vec<u8> {
    pb::CallStreamUp {
        calls: vec![pb::CallFrame {
            id: 7,
            service: "hang.forever".into(),
            payload: "{}".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec()
}

#[tokio::test]
async fn a_bad_frame_on_a_call_stream_ends_it_and_answers_the_call_in_flight() {
    let node = Node::start().await;
    let _hang = hanging(&node).await;
    for (bad, code) in [(grpc_frame(GARBAGE), 13), (oversized(), 11)] {
        let out = exchange(&node, "/kernel.v1.Kernel/CallStream", call_frame(), bad).await;
        assert_eq!(
            out.status.as_ref().map(|s| s.0),
            Some(code),
            "{:?}",
            out.status
        );
        let replies: Vec<pb::CallReply> = out
            .messages
            .iter()
            .filter_map(|m| pb::CallStreamDown::decode(m.clone()).ok())
            .flat_map(|d| d.replies)
            .collect();
        let reply = replies.iter().find(|r| r.id == 7).expect("call 7 answered");
        assert_eq!(
            reply.error.as_ref().map(|f| f.code),
            Some(code),
            "{reply:?}"
        );
    }
    // The node carries on.
    node.client()
        .publish("still.up", "{}")
        .await
        .expect("the node is fine");
    node.stop().await;
}

#[tokio::test]
async fn a_bad_frame_on_a_publish_stream_or_a_subscription_ends_it_with_an_error() {
    let node = Node::start().await;
    let publish = pb::PublishStreamUp {
        items: vec![pb::PublishItem {
            seq: 1,
            event: Some(pb::PublishRequest {
                topic: "fine.event".into(),
                payload: "{}".into(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let subscribe = pb::SubscribeUp {
        open: Some(pb::SubscribeOpen {
            patterns: vec!["fine.*".into()],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec();
    for (path, first) in [
        ("/kernel.v1.Kernel/PublishStream", publish),
        ("/kernel.v1.Kernel/Subscribe", subscribe),
    ] {
        for (bad, code) in [(grpc_frame(GARBAGE), 13), (oversized(), 11)] {
            let out = exchange(&node, path, first.clone(), bad).await;
            assert_eq!(
                out.status.as_ref().map(|s| s.0),
                Some(code),
                "{path}: {:?}",
                out.status
            );
        }
    }
    node.stop().await;
}
