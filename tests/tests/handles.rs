//! Service handles (`Client::service`): resolved once, and still right
//! after every registry change: a hot swap of an in-process provider and of
//! an out-of-process one, a provider leaving, one arriving later.

use std::time::Duration;

use kernel_sdk::{Bytes, Client, Plugin};
use kernel_tests::{eventually, Node, PluginProcess};
use tonic::Code;

fn answering(plugin: &str, service: &str, reply: &'static str) -> Plugin {
    Plugin::new(plugin).provide(service, move |_ctx, _p: Bytes| async move {
        Ok(Bytes::from_static(reply.as_bytes()))
    })
}

#[tokio::test]
async fn an_in_process_handle_follows_hot_swaps_and_departures() {
    let node = Node::start().await;
    let local = Client::in_process(node.kernel.clone());
    // A bad name is refused when the handle is made.
    let err = local.service("Not A Name!").expect_err("bad name");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    // Made before anyone provides it: NOT_FOUND, then the provider's reply
    // once one registers.
    let svc = local.service("swap.who").expect("handle");
    let err = svc.call("x").await.expect_err("nobody yet");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    let v1 = answering("swap", "swap.who", "v1")
        .attach(&node.kernel)
        .expect("attach v1");
    assert_eq!(svc.call("x").await.expect("v1"), "v1");
    // A second handle, first resolved while v1 provides the name.
    let warm = local.service("swap.who").expect("handle");
    assert_eq!(warm.call("x").await.expect("v1 again"), "v1");

    // Hot swap: v2 replaces v1 and declares an argument schema; the very
    // next call through the old handle reaches v2 and is held to v2's
    // schema (what the pipeline knows of a service comes from the pool
    // the handle resolves).
    let v2 = answering("swap", "swap.who", "v2")
        .schema("swap.who", "", r#"{"type": "object"}"#)
        .replace()
        .attach(&node.kernel)
        .expect("attach v2");
    for handle in [&warm, &svc] {
        let err = handle.call("[1]").await.expect_err("v2's schema");
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert_eq!(handle.call("{}").await.expect("v2"), "v2");
    }
    // A clone shares the handle.
    assert_eq!(svc.clone().call("{}").await.expect("clone"), "v2");
    drop(v1);
    assert_eq!(svc.call("{}").await.expect("v2 still"), "v2");

    // The provider leaves: NOT_FOUND through the handle, as by name.
    drop(v2);
    let err = svc.call("x").await.expect_err("gone");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    let by_name = local.call("swap.who", "x").await.expect_err("gone");
    assert_eq!(by_name.code(), Code::NotFound);

    // Back again under another plugin: the handle finds it.
    let _v3 = answering("swap-3", "swap.who", "v3")
        .attach(&node.kernel)
        .expect("attach v3");
    assert_eq!(svc.call("x").await.expect("v3"), "v3");
}

#[tokio::test]
async fn handles_follow_an_out_of_process_hot_swap() {
    let node = Node::start().await;
    let _a = PluginProcess::spawn(
        &node,
        &[
            "--service",
            "swap.remote",
            "--mode",
            "whoami",
            "--instance",
            "a",
        ],
    );
    node.wait_providers("swap.remote", 1).await;
    let local = Client::in_process(node.kernel.clone()).service("swap.remote");
    let local = local.expect("in-process handle");
    let remote = node.client().service("swap.remote").expect("remote handle");
    assert_eq!(local.call("").await.expect("a"), "a");
    assert_eq!(remote.call("").await.expect("a"), "a");

    let _b = PluginProcess::spawn(
        &node,
        &[
            "--service",
            "swap.remote",
            "--mode",
            "whoami",
            "--instance",
            "b",
            "--replace",
        ],
    );
    // Once b has replaced a, every call through either handle reaches b.
    eventually(Duration::from_secs(10), "b serves", || async {
        match local.call("").await {
            Ok(who) if who == "b" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    for _ in 0..20 {
        assert_eq!(local.call("").await.expect("b"), "b");
        assert_eq!(remote.call("").await.expect("b"), "b");
    }
}
