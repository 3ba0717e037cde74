//! Traces end to end: one trace across every hop (caller, kernel, provider,
//! nested call, publish, delivery, subscriber handling), exported over OTLP
//! to a real collector endpoint running inside the test.

use std::collections::HashMap;
use std::time::Duration;

use kernel_node::config::Config;
use kernel_proto::v1 as pb;
use kernel_sdk::{Bytes, Plugin, SubscribeOptions};
use kernel_tests::otlp::{start_receiver, Receiver, Seen};
use kernel_tests::{eventually, Node, PluginProcess};

/// The spans of one traced request: two calls, publish, delivery.
const ONE_TREE: &[(&str, usize)] = &[
    ("kernel.call", 2),
    ("kernel.dispatch", 2),
    ("plugin.handle", 2),
    ("kernel.publish", 1),
    ("kernel.deliver", 1),
];

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// Waits until the receiver holds every span name in `want` for our trace.
async fn collect(node: &Node, r: &Receiver, want: &[(&str, usize)]) -> Vec<Seen> {
    eventually(Duration::from_secs(20), "every span of the trace", || {
        node.kernel.telemetry().flush();
        let spans: Vec<Seen> = r
            .spans
            .lock()
            .iter()
            .filter(|s| s.trace_id == TRACE)
            .cloned()
            .collect();
        let ok = want
            .iter()
            .all(|(name, n)| spans.iter().filter(|s| s.name == *name).count() >= *n);
        let out = if ok {
            Ok(spans)
        } else {
            Err(format!(
                "spans {:?}",
                spans
                    .iter()
                    .map(|s| (&s.name, s.attrs.get("kernel.service")))
                    .collect::<Vec<_>>()
            ))
        };
        async move { out }
    })
    .await
}

fn by_id(spans: &[Seen]) -> HashMap<String, Seen> {
    spans
        .iter()
        .map(|s| (s.span_id.clone(), s.clone()))
        .collect()
}

fn find<'a>(spans: &'a [Seen], name: &str, key: &str, val: &str) -> &'a Seen {
    spans
        .iter()
        .find(|s| s.name == name && s.attrs.get(key).map(String::as_str) == Some(val))
        .unwrap_or_else(|| panic!("no {name} span with {key}={val}"))
}

/// Checks the shape: caller → kernel.call(a) → dispatch → handle(a) →
/// kernel.call(b) → dispatch → handle(b); handle(a) → publish → deliver.
fn assert_one_tree(spans: &[Seen], a: &str, b: &str, topic: &str) {
    let ids = by_id(spans);
    let call_a = find(spans, "kernel.call", "kernel.service", a);
    assert_eq!(
        call_a.parent, CALLER_SPAN,
        "kernel.call is a child of the caller's span"
    );
    let disp_a = find(spans, "kernel.dispatch", "kernel.service", a);
    assert_eq!(disp_a.parent, call_a.span_id);
    let handle_a = find(spans, "plugin.handle", "kernel.service", a);
    assert_eq!(
        handle_a.parent, disp_a.span_id,
        "provider span under dispatch"
    );
    let call_b = find(spans, "kernel.call", "kernel.service", b);
    assert_eq!(
        call_b.parent, handle_a.span_id,
        "nested call under the handler"
    );
    let disp_b = find(spans, "kernel.dispatch", "kernel.service", b);
    assert_eq!(disp_b.parent, call_b.span_id);
    let handle_b = find(spans, "plugin.handle", "kernel.service", b);
    assert_eq!(handle_b.parent, disp_b.span_id);
    let publish = find(spans, "kernel.publish", "kernel.topic", topic);
    assert_eq!(
        publish.parent, handle_a.span_id,
        "publish under the emitting handler"
    );
    let deliver = find(spans, "kernel.deliver", "kernel.topic", topic);
    assert_eq!(
        deliver.parent, publish.span_id,
        "delivery under the publish"
    );
    // Context paths on every span, nesting as the calls did.
    let path_a = call_a
        .attrs
        .get("kernel.context")
        .expect("path on kernel.call");
    assert_eq!(disp_a.attrs.get("kernel.context"), Some(path_a));
    assert_eq!(handle_a.attrs.get("kernel.context"), Some(path_a));
    let path_b = call_b
        .attrs
        .get("kernel.context")
        .expect("path on nested call");
    assert!(
        path_b.starts_with(&format!("{path_a}.")),
        "{path_b} under {path_a}"
    );
    assert_eq!(handle_b.attrs.get("kernel.context"), Some(path_b));
    assert_eq!(publish.attrs.get("kernel.context"), Some(path_a));
    assert!(deliver
        .attrs
        .get("kernel.context")
        .is_some_and(|p| p.starts_with(&format!("{path_a}."))));
    for s in [
        call_a, disp_a, handle_a, call_b, disp_b, handle_b, publish, deliver,
    ] {
        assert!(
            s.parent.is_empty() || s.parent == CALLER_SPAN || ids.contains_key(&s.parent),
            "{s:?}"
        );
    }
}

fn traced_request(service: &str) -> tonic::Request<pb::CallRequest> {
    let mut r = tonic::Request::new(pb::CallRequest {
        service: service.into(),
        payload: Bytes::from_static(b"{}"),
        ..Default::default()
    });
    r.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE}-{CALLER_SPAN}-01")
            .parse()
            .expect("ascii"),
    );
    r
}

#[tokio::test]
async fn one_trace_across_out_of_process_providers_publish_and_delivery() {
    let (receiver, endpoint) = start_receiver().await;
    let telemetry = kernel_node::telemetry::otlp(&endpoint, Some("kernel-node")).expect("exporter");
    let node = Node::start_full(Config::default(), telemetry).await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ];
    let _a = PluginProcess::spawn_env(
        &node,
        &[
            "--name",
            "pa",
            "--service",
            "tr.a",
            "--mode",
            "emit",
            "--next",
            "tr.b",
            "--topic",
            "tr.done",
        ],
        &env,
    );
    let _b = PluginProcess::spawn_env(
        &node,
        &["--name", "pb", "--service", "tr.b", "--mode", "echo"],
        &env,
    );
    node.wait_providers("tr.a", 1).await;
    node.wait_providers("tr.b", 1).await;
    let mut sub = node
        .client()
        .subscriber(SubscribeOptions::new("tr.*"))
        .await
        .expect("subscribe");
    node.raw()
        .await
        .call(traced_request("tr.a"))
        .await
        .expect("traced call");
    let event = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("delivery")
        .expect("event");
    assert!(
        event
            .headers
            .get("traceparent")
            .is_some_and(|tp| tp.contains(TRACE)),
        "the subscriber gets the trace: {:?}",
        event.headers
    );
    let spans = collect(&node, &receiver, ONE_TREE).await;
    assert_one_tree(&spans, "tr.a", "tr.b", "tr.done");
}

#[tokio::test]
async fn one_trace_across_in_process_providers() {
    let (receiver, endpoint) = start_receiver().await;
    let telemetry = kernel_node::telemetry::otlp(&endpoint, Some("kernel-node")).expect("exporter");
    let node = Node::start_full(Config::default(), telemetry.clone()).await;
    let _reg = Plugin::new("local")
        .provide("in.a", |ctx, p: Bytes| async move {
            ctx.call("in.b", p.clone()).await?;
            ctx.emit("in.done", p).await?;
            Ok(Bytes::from_static(b"ok"))
        })
        .provide("in.b", |_ctx, p: Bytes| async move { Ok(p) })
        .telemetry(telemetry.clone())
        .attach(&node.kernel)
        .expect("attach");
    // A handler subscription on a client with telemetry: its handling of
    // the event is a span too.
    let (tx, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let _handler = node
        .client()
        .telemetry(telemetry)
        .subscribe(SubscribeOptions::new("in.*").name("in-sub"), move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e);
                Ok(())
            }
        })
        .await
        .expect("subscribe");
    node.raw()
        .await
        .call(traced_request("in.a"))
        .await
        .expect("traced call");
    let event = tokio::time::timeout(Duration::from_secs(5), handled.recv())
        .await
        .expect("delivery")
        .expect("event");
    let want: Vec<(&str, usize)> = ONE_TREE
        .iter()
        .copied()
        .chain([("plugin.event", 1)])
        .collect();
    let spans = collect(&node, &receiver, &want).await;
    assert_one_tree(&spans, "in.a", "in.b", "in.done");
    let deliver = find(&spans, "kernel.deliver", "kernel.topic", "in.done");
    let handled = find(&spans, "plugin.event", "kernel.topic", "in.done");
    assert_eq!(
        handled.parent, deliver.span_id,
        "handling under the delivery"
    );
    assert_eq!(
        handled.attrs.get("kernel.context"),
        deliver.attrs.get("kernel.context")
    );
    assert_eq!(
        handled.attrs.get("kernel.subscription").map(String::as_str),
        Some("in-sub")
    );
    assert!(
        event
            .headers
            .get("traceparent")
            .is_some_and(|tp| tp.contains(&handled.span_id)),
        "the handler's traceparent is its own span: {:?}",
        event.headers
    );
}
