//! Deliveries of events emitted inside a context are live nodes of its
//! tree, and cancelling the branch drops the deliveries still queued.

use std::time::Duration;

use kernel_proto::v1::{self as pb, admin_client::AdminClient};
use kernel_sdk::{Bytes, Plugin, SubscribeOptions};
use kernel_tests::Node;
use tokio::sync::mpsc;

const BURST: usize = 5;

#[tokio::test]
async fn cancelling_a_branch_drops_its_queued_deliveries_and_nothing_else() {
    let node = Node::start().await;
    // A handler that emits a burst, tells the test its path, then runs
    // until the kernel gives up on it.
    let (paths, mut path_rx) = mpsc::unbounded_channel::<String>();
    let _reg = Plugin::new("burster")
        .provide("em.burst", move |ctx, _p: Bytes| {
            let paths = paths.clone();
            async move {
                for i in 0..BURST {
                    ctx.emit("burst.x", format!("{i}")).await?;
                }
                let _ = paths.send(ctx.path().to_owned());
                std::future::pending::<()>().await;
                Ok(Bytes::new())
            }
        })
        .attach(&node.kernel)
        .expect("attach");

    // One delivery in flight at a time: the rest of the burst stays queued.
    let client = node.client().with_plugin("burst-watcher");
    let mut sub = client
        .subscriber(SubscribeOptions::new("burst.*").explicit_ack().window(1))
        .await
        .expect("subscribe");
    let caller = node.client();
    let call = tokio::spawn(async move { caller.call("em.burst", "").await });
    let handler_path = tokio::time::timeout(Duration::from_secs(5), path_rx.recv())
        .await
        .expect("handler ran")
        .expect("path");
    let first = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("first delivery")
        .expect("open");
    let delivery_path = first
        .headers
        .get("x-kernel-context")
        .expect("delivery context")
        .clone();
    assert!(
        delivery_path.starts_with(&format!("{handler_path}.")),
        "{delivery_path} is not under {handler_path}"
    );

    // The queued deliveries are live nodes of the tree, under the handler.
    let mut admin = AdminClient::connect(node.url.clone()).await.expect("admin");
    let root = handler_path.split('.').next().expect("root").to_owned();
    let tree = admin
        .get_context(pb::GetContextRequest { root })
        .await
        .expect("get context")
        .into_inner();
    let below: Vec<_> = tree
        .nodes
        .iter()
        .filter(|n| n.path.starts_with(&format!("{handler_path}.")))
        .collect();
    assert_eq!(
        below.len(),
        BURST,
        "one live node per delivery: {:?}",
        tree.nodes
    );
    // Each shows what it is (admin.proto: `event:<topic>`) and whose.
    for n in &below {
        assert_eq!(n.service, "event:burst.x", "{n:?}");
        assert_eq!(n.plugin, "burst-watcher", "{n:?}");
    }

    // Cancel the handler's branch: its queued deliveries go, an unrelated
    // event does not.
    admin
        .cancel_context(pb::CancelContextRequest {
            path: handler_path.clone(),
        })
        .await
        .expect("cancel");
    let err = call.await.expect("join").expect_err("cancelled call");
    assert_eq!(err.code(), tonic::Code::Cancelled, "{err:?}");
    client
        .publish("burst.other", "unrelated")
        .await
        .expect("publish");
    sub.ack(&first);
    let next = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("next delivery")
        .expect("open");
    assert_eq!(next.topic, "burst.other", "a cancelled delivery was sent");
    assert_eq!(
        node.kernel
            .stats()
            .events_cancelled
            .load(std::sync::atomic::Ordering::Relaxed),
        (BURST - 1) as u64
    );
}
