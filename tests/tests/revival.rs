//! Contexts cannot be revived: a provider that ignores its cancel frame and
//! calls onward, publishes or charges under its context after the root's
//! deadline passed, or after an operator cancelled it, is refused with the
//! status that ended the root, and no further hop runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kernel_proto::v1::{self as pb, admin_client::AdminClient};
use kernel_sdk::{Bytes, Plugin};
use kernel_tests::Node;

/// A hand-written provider of `stubborn.work` that never answers and
/// ignores cancels; returns the context path of its first invocation.
async fn stubborn(
    node: &Node,
) -> (
    tokio::sync::mpsc::UnboundedSender<pb::ProviderUp>,
    tokio::sync::oneshot::Receiver<String>,
) {
    let (up, mut down) = node.raw_provider("stubborn", "stubborn.work").await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        while let Ok(Some(frame)) = down.message().await {
            for inv in frame.invocations {
                if let (Some(tx), Some(path)) = (tx.take(), inv.headers.get("x-kernel-context")) {
                    let _ = tx.send(path.clone());
                }
            }
        }
    });
    node.wait_providers("stubborn.work", 1).await;
    (up, rx)
}

/// `req` under context `path`, with a deadline of its own.
fn with_context<T>(mut req: tonic::Request<T>, path: &str) -> tonic::Request<T> {
    req.metadata_mut()
        .insert("x-kernel-context", path.parse().expect("ascii"));
    req.set_timeout(Duration::from_secs(5));
    req
}

/// What the stubborn provider tries once its caller is gone: a call, a
/// publish and a charge under its own (ended) context.
async fn act_under(node: &Node, path: &str) -> [tonic::Status; 3] {
    let mut raw = node.raw().await;
    let call = raw
        .call(with_context(
            tonic::Request::new(pb::CallRequest {
                service: "next.hop".into(),
                payload: Bytes::from_static(b"{}"),
                ..Default::default()
            }),
            path,
        ))
        .await
        .expect_err("no call under an ended root");
    let publish = raw
        .publish(with_context(
            tonic::Request::new(pb::PublishRequest {
                topic: "late.event".into(),
                payload: Bytes::from_static(b"{}"),
                ..Default::default()
            }),
            path,
        ))
        .await
        .expect_err("no publish under an ended root");
    let charge = raw
        .charge(with_context(
            tonic::Request::new(pb::ChargeRequest {
                counter: "sql".into(),
                amount: 1,
            }),
            path,
        ))
        .await
        .expect_err("no charge under an ended root");
    [call, publish, charge]
}

fn next_hop(node: &Node) -> (Arc<AtomicUsize>, kernel_core::LocalRegistration) {
    let ran = Arc::new(AtomicUsize::new(0));
    let seen = ran.clone();
    let reg = Plugin::new("next")
        .provide("next.hop", move |_ctx, p| {
            seen.fetch_add(1, Ordering::SeqCst);
            async move { Ok(p) }
        })
        .attach(&node.kernel)
        .expect("attach");
    (ran, reg)
}

#[tokio::test]
async fn after_the_roots_deadline_nothing_runs_under_it() {
    let node = Node::start().await;
    let (ran, _next) = next_hop(&node);
    let (_up, path) = stubborn(&node).await;
    let mut req = tonic::Request::new(pb::CallRequest {
        service: "stubborn.work".into(),
        payload: Bytes::from_static(b"{}"),
        ..Default::default()
    });
    req.set_timeout(Duration::from_millis(300));
    let err = node.raw().await.call(req).await.expect_err("times out");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
    let path = path.await.expect("the provider saw its path");
    // Well after the deadline, and after the kernel forgot the tree.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for status in act_under(&node, &path).await {
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    }
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "a hop ran after the deadline"
    );
    node.stop().await;
}

#[tokio::test]
async fn after_an_operator_cancel_nothing_runs_under_it() {
    let node = Node::start().await;
    let (ran, _next) = next_hop(&node);
    let (_up, path) = stubborn(&node).await;
    let raw = node.raw().await;
    let call = tokio::spawn(async move {
        let mut raw = raw;
        raw.call(pb::CallRequest {
            service: "stubborn.work".into(),
            payload: Bytes::from_static(b"{}"),
            ..Default::default()
        })
        .await
    });
    let path = tokio::time::timeout(Duration::from_secs(5), path)
        .await
        .expect("invoked")
        .expect("path");
    AdminClient::connect(node.url.clone())
        .await
        .expect("admin")
        .cancel_context(pb::CancelContextRequest { path: path.clone() })
        .await
        .expect("cancel");
    let err = call.await.expect("join").expect_err("cancelled");
    assert_eq!(err.code(), tonic::Code::Cancelled);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for status in act_under(&node, &path).await {
        assert_eq!(status.code(), tonic::Code::Cancelled, "{status:?}");
    }
    assert_eq!(ran.load(Ordering::SeqCst), 0, "a hop ran after the cancel");
    node.stop().await;
}

#[tokio::test]
async fn an_unknown_context_gets_no_more_time_than_the_caller_asked() {
    let node = Node::start().await;
    let (_ran, _next) = next_hop(&node);
    // A path the kernel never saw: a stand-in parent, but the call keeps
    // the caller's own deadline (and any budget header it sent).
    let (_up, _path) = stubborn(&node).await;
    let mut req = tonic::Request::new(pb::CallRequest {
        service: "stubborn.work".into(),
        payload: Bytes::from_static(b"{}"),
        ..Default::default()
    });
    req.metadata_mut().insert(
        "x-kernel-context",
        "00000000000000aa.3".parse().expect("ascii"),
    );
    req.metadata_mut()
        .insert("x-kernel-budget", "calls=1".parse().expect("ascii"));
    req.set_timeout(Duration::from_millis(200));
    let err = node.raw().await.call(req).await.expect_err("bounded");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    node.stop().await;
}
