//! The Node.js example in `examples/node` (plain `@grpc/grpc-js`, the proto
//! loaded at run time, no SDK) against a real node: its provider serves
//! through the Register session and its failure reaches a raw caller as the
//! kernel's `Failure`; its subscriber hears published events with their
//! context and acks them; SIGTERM deregisters the provider and exits 0; a
//! restarted node gets the provider back. Needs `node` on the PATH and the
//! example's packages, which `make test` installs (`npm ci` in
//! examples/node).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kernel_proto::v1 as pb;
use kernel_tests::{Node, PluginProcess};
use tonic::Code;

/// `examples/node`, with its packages installed.
fn example_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/node");
    for package in ["@grpc/grpc-js", "@grpc/proto-loader"] {
        assert!(
            dir.join("node_modules").join(package).exists(),
            "{}/node_modules/{package} is missing: run the tests with `make test`, which installs \
             the Node example's packages (npm ci --prefix examples/node)",
            dir.display()
        );
    }
    dir.canonicalize().expect("examples/node")
}

/// One of the example's scripts run by `node` (its stdout read line by
/// line, stderr inherited; killed on drop).
fn script(url: &str, script: &str, args: &[&str]) -> PluginProcess {
    let path = example_dir().join(script);
    let mut all = vec![path.to_str().expect("a UTF-8 path")];
    all.extend_from_slice(args);
    PluginProcess::spawn_program(Path::new("node"), &all, &[("KERNEL_URL", url)])
}

/// A unary Call with a JSON payload, a 10 s deadline and optionally an
/// `x-kernel-context` parent.
fn call(service: &str, json: &str, parent: Option<&str>) -> tonic::Request<pb::CallRequest> {
    let mut r = tonic::Request::new(pb::CallRequest {
        service: service.into(),
        payload: json.as_bytes().to_vec().into(),
        content_type: "application/json".into(),
        ..Default::default()
    });
    r.set_timeout(Duration::from_secs(10));
    r.metadata_mut()
        .insert("x-kernel-plugin", "rust-test".parse().expect("ascii"));
    if let Some(p) = parent {
        r.metadata_mut()
            .insert("x-kernel-context", p.parse().expect("ascii"));
    }
    r
}

/// `<16 hex digits>.1`: the path of a call that started a tree.
fn is_root_call(path: &str) -> bool {
    path.split_once('.').is_some_and(|(root, rest)| {
        root.len() == 16 && root.chars().all(|c| c.is_ascii_hexdigit()) && rest == "1"
    })
}

#[tokio::test]
async fn the_node_provider_answers_and_fails_with_the_kernels_failure() {
    let node = Node::start().await;
    let mut provider = script(&node.url, "provider.js", &[]);
    provider.expect_line("READY", Duration::from_secs(20)).await;
    node.wait_providers("node.greet", 1).await;
    node.wait_providers("node.fail", 1).await;
    let mut raw = node.raw().await;

    // A root call: the provider sees the path of this call, `<root>.1`.
    let out = raw
        .call(call("node.greet", r#"{"name":"rust"}"#, None))
        .await
        .expect("node.greet");
    let reply: serde_json::Value = serde_json::from_slice(&out.get_ref().payload).expect("json");
    assert_eq!(reply["greeting"], "hello, rust", "{reply}");
    let path = reply["path"].as_str().expect("path");
    assert!(is_root_call(path), "a root call's path: {path}");

    // Under a parent: the invocation's x-kernel-context is a child of it.
    let parent = "00000000000000ab.7";
    let out = raw
        .call(call("node.greet", r#"{"name":"child"}"#, Some(parent)))
        .await
        .expect("node.greet under a parent");
    let reply: serde_json::Value = serde_json::from_slice(&out.get_ref().payload).expect("json");
    assert_eq!(reply["greeting"], "hello, child", "{reply}");
    let path = reply["path"].as_str().expect("path");
    let child = path
        .strip_prefix(&format!("{parent}."))
        .unwrap_or_else(|| panic!("{path} is not a child of {parent}"));
    assert!(
        !child.is_empty() && child.chars().all(|c| c.is_ascii_digit()),
        "{path} is one level below {parent}"
    );

    // Arguments the handler refuses come back as its INVALID_ARGUMENT.
    let err = raw
        .call(call("node.greet", r#"{"nom":1}"#, None))
        .await
        .expect_err("no name");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // node.fail: the provider's Failure, with the kernel's hop appended.
    let err = raw
        .call(call("node.fail", "{}", None))
        .await
        .expect_err("node.fail fails");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let message = "node.fail: there is nothing here, by design";
    assert!(err.message().starts_with(message), "{}", err.message());
    assert!(
        err.message().contains("(origin: node.fail at "),
        "{}",
        err.message()
    );
    let failure = kernel_proto::failure::status_to_failure(&err);
    assert_eq!(failure.code, Code::NotFound as i32);
    assert_eq!(failure.message, message);
    assert_eq!(failure.causality.len(), 1, "{failure:?}");
    let hop = &failure.causality[0];
    assert_eq!(
        (hop.service.as_str(), hop.plugin.as_str()),
        ("node.fail", "node-greeter")
    );
    assert!(is_root_call(&hop.context), "{hop:?}");

    // SIGTERM: the provider half-closes, is deregistered and exits 0.
    provider.terminate().await;
    let status = tokio::time::timeout(Duration::from_secs(10), provider.child.wait())
        .await
        .expect("the provider exits after SIGTERM")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    node.wait_providers("node.greet", 0).await;
    let err = raw
        .call(call("node.greet", r#"{"name":"gone"}"#, None))
        .await
        .expect_err("no provider left");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    node.stop().await;
}

#[tokio::test]
async fn the_node_subscriber_prints_and_acks_what_is_published() {
    let node = Node::start().await;
    let mut subscriber = script(&node.url, "subscriber.js", &["order.*"]);
    subscriber
        .expect_line("SUBSCRIBED", Duration::from_secs(20))
        .await;
    let mut raw = node.raw().await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut ids = Vec::new();
    for (topic, payload, trace) in [
        ("order.created", r#"{"id":"o-1","qty":2}"#, None),
        (
            "order.paid",
            r#"{"id":"o-1","amount":15}"#,
            Some(traceparent),
        ),
    ] {
        let mut r = tonic::Request::new(pb::PublishRequest {
            topic: topic.into(),
            payload: payload.as_bytes().to_vec().into(),
            content_type: "application/json".into(),
            ..Default::default()
        });
        r.set_timeout(Duration::from_secs(5));
        if let Some(t) = trace {
            r.metadata_mut()
                .insert("traceparent", t.parse().expect("ascii"));
        }
        let out = raw.publish(r).await.expect("publish").into_inner();
        assert_eq!(out.matched, 1, "{topic} reaches the subscriber");
        ids.push(out.event_id);
    }

    let created: serde_json::Value =
        serde_json::from_str(&subscriber.expect_line("", Duration::from_secs(10)).await)
            .expect("json");
    assert_eq!(created["topic"], "order.created", "{created}");
    assert_eq!(
        created["payload"],
        serde_json::json!({"id": "o-1", "qty": 2})
    );
    // Published outside any context: the delivery's path is `<event id>.1`.
    assert_eq!(created["context"], format!("{}.1", ids[0]), "{created}");
    assert_eq!(created["traceparent"], serde_json::Value::Null, "{created}");

    let paid: serde_json::Value =
        serde_json::from_str(&subscriber.expect_line("", Duration::from_secs(10)).await)
            .expect("json");
    assert_eq!(paid["topic"], "order.paid", "{paid}");
    assert_eq!(
        paid["payload"],
        serde_json::json!({"id": "o-1", "amount": 15})
    );
    assert_eq!(paid["context"], format!("{}.1", ids[1]), "{paid}");
    assert_eq!(paid["traceparent"], traceparent, "{paid}");

    // Both were acked: nothing stays unacked in the subscription.
    let admin = pb::admin_client::AdminClient::connect(node.url.clone())
        .await
        .expect("admin");
    kernel_tests::eventually(Duration::from_secs(10), "both events acked", || {
        let mut admin = admin.clone();
        async move {
            let subs = admin
                .list_subscriptions(pb::ListSubscriptionsRequest::default())
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .subscriptions;
            match subs.iter().find(|s| s.name == "node-subscriber") {
                Some(s) if s.unacked == 0 && s.buffered == 0 => Ok(()),
                _ => Err(format!("{subs:?}")),
            }
        }
    })
    .await;
    let _ = subscriber.child.kill().await;
    node.stop().await;
}

#[tokio::test]
async fn the_node_provider_registers_again_when_its_node_comes_back() {
    let node = Node::start().await;
    let addr = node.addr;
    let mut provider = script(&node.url, "provider.js", &[]);
    provider.expect_line("READY", Duration::from_secs(20)).await;
    node.stop().await;

    // Same address: the provider's backoff (at most 5 s) finds it again.
    let node = Node::start_at(addr).await;
    provider.expect_line("READY", Duration::from_secs(20)).await;
    node.wait_providers("node.greet", 1).await;
    let out = node
        .raw()
        .await
        .call(call("node.greet", r#"{"name":"again"}"#, None))
        .await
        .expect("node.greet after the restart");
    let reply: serde_json::Value = serde_json::from_slice(&out.get_ref().payload).expect("json");
    assert_eq!(reply["greeting"], "hello, again", "{reply}");
    let _ = provider.child.kill().await;
    node.stop().await;
}
