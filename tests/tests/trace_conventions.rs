//! What the exported spans say, beyond their shape (`traces.rs`): delivery
//! spans per attempt on the consumer side, the resource, the RPC
//! conventions, no empty attributes, and a shutdown that does not hang on
//! a collector that never answers.

use std::time::{Duration, Instant};

use kernel_node::config::Config;
use kernel_proto::v1 as pb;
use kernel_sdk::SubscribeOptions;
use kernel_tests::otlp::{start_receiver, Seen};
use kernel_tests::{eventually, Node};

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const SPAN_KIND_CONSUMER: i32 = 5;
const STATUS_OK: i32 = 1;
const STATUS_ERROR: i32 = 2;

fn traceparent() -> String {
    format!("00-{TRACE}-b7ad6b7169203331-01")
}

#[tokio::test]
async fn each_delivery_attempt_is_a_consumer_span_covering_its_wait_and_its_ack() {
    let (receiver, endpoint) = start_receiver().await;
    let telemetry = kernel_node::telemetry::otlp(&endpoint, Some("kernel-node")).expect("exporter");
    let node = Node::start_full(Config::default(), telemetry).await;
    let client = node.client().with_plugin("auditor");
    let mut sub = client
        .subscriber(
            SubscribeOptions::new("audit.*")
                .explicit_ack()
                .max_deliver(3),
        )
        .await
        .expect("subscribe");
    let mut req = tonic::Request::new(pb::PublishRequest {
        topic: "audit.login".into(),
        payload: "{}".into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("traceparent", traceparent().parse().expect("ascii"));
    node.raw().await.publish(req).await.expect("publish");

    // Attempt 1 is nacked, attempt 2 acked after a pause.
    let first = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("first delivery")
        .expect("open");
    sub.nack(&first, Duration::ZERO);
    let second = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("redelivery")
        .expect("open");
    assert_eq!(second.attempt, 2);
    let held = Duration::from_millis(150);
    tokio::time::sleep(held).await;
    sub.ack(&second);

    let spans: Vec<Seen> = eventually(Duration::from_secs(20), "two delivery spans", || {
        node.kernel.telemetry().flush();
        let d: Vec<Seen> = receiver
            .trace(TRACE)
            .into_iter()
            .filter(|s| s.name == "kernel.deliver")
            .collect();
        async move {
            if d.len() == 2 {
                Ok(d)
            } else {
                Err(format!("{d:?}"))
            }
        }
    })
    .await;
    let attempt = |n: &str| {
        spans
            .iter()
            .find(|s| s.attrs.get("kernel.attempt").map(String::as_str) == Some(n))
            .unwrap_or_else(|| panic!("no attempt {n} span: {spans:?}"))
    };
    let (one, two) = (attempt("1"), attempt("2"));
    let publish = receiver
        .trace(TRACE)
        .into_iter()
        .find(|s| s.name == "kernel.publish")
        .expect("publish span");
    for s in [one, two] {
        assert_eq!(s.kind, SPAN_KIND_CONSUMER, "{s:?}");
        assert_eq!(s.parent, publish.span_id, "attempts hang under the publish");
        assert_eq!(
            s.attrs
                .get("messaging.destination.name")
                .map(String::as_str),
            Some("audit.login")
        );
    }
    assert_eq!(
        one.status, STATUS_ERROR,
        "a nacked attempt is an error: {one:?}"
    );
    assert_eq!(two.status, STATUS_OK, "{two:?}");
    // The subscriber's parent on each delivery is that attempt's span.
    let span_of = |e: &pb::Event| {
        e.headers
            .get("traceparent")
            .and_then(|tp| tp.split('-').nth(2))
            .map(str::to_owned)
    };
    assert_eq!(span_of(&first).as_deref(), Some(one.span_id.as_str()));
    assert_eq!(span_of(&second).as_deref(), Some(two.span_id.as_str()));
    // Explicit ack: the attempt lasts until the ack, the pause included.
    assert!(
        two.end_ns - two.start_ns >= held.as_nanos() as u64,
        "attempt 2 lasted {} ns",
        two.end_ns - two.start_ns
    );
    node.stop().await;
}

#[tokio::test]
async fn spans_carry_the_resource_and_rpc_conventions_and_no_empty_attributes() {
    let (receiver, endpoint) = start_receiver().await;
    let telemetry = kernel_node::telemetry::otlp(&endpoint, Some("kernel-node")).expect("exporter");
    let node = Node::start_full(Config::default(), telemetry).await;
    // A call nobody serves still makes its kernel.call span.
    let mut req = tonic::Request::new(pb::CallRequest {
        service: "ledger.post".into(),
        payload: "{}".into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("traceparent", traceparent().parse().expect("ascii"));
    let err = node.raw().await.call(req).await.expect_err("no provider");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let call = eventually(Duration::from_secs(20), "the call span", || {
        node.kernel.telemetry().flush();
        let s = receiver
            .trace(TRACE)
            .into_iter()
            .find(|s| s.name == "kernel.call");
        async move { s.ok_or_else(|| "none yet".to_owned()) }
    })
    .await;
    for key in [
        "service.name",
        "service.version",
        "service.instance.id",
        "host.name",
    ] {
        assert!(
            call.resource.get(key).is_some_and(|v| !v.is_empty()),
            "resource lacks {key}: {:?}",
            call.resource
        );
    }
    assert_eq!(
        call.attrs.get("rpc.system").map(String::as_str),
        Some("kernel")
    );
    assert_eq!(
        call.attrs.get("rpc.service").map(String::as_str),
        Some("ledger.post")
    );
    // No method, no caller: left out, not sent empty.
    assert!(!call.attrs.contains_key("rpc.method"), "{:?}", call.attrs);
    assert!(
        !call.attrs.contains_key("kernel.caller"),
        "{:?}",
        call.attrs
    );
    for s in receiver.spans.lock().iter() {
        for (k, v) in &s.attrs {
            assert!(!v.is_empty(), "{} has an empty `{k}`", s.name);
        }
    }
    node.stop().await;
}

#[tokio::test]
async fn shutdown_with_a_collector_that_never_answers_takes_at_most_the_export_timeout() {
    // A collector that accepts connections and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", silent.local_addr().expect("addr"));
    let mut node = kernel_tests::NodeProcess::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("KERNEL_TELEMETRY__EXPORT_TIMEOUT_MS", "500"),
    ])
    .await;
    // A span waits for export.
    let mut raw = pb::kernel_client::KernelClient::connect(node.url.clone())
        .await
        .expect("connect");
    let _ = raw
        .call(pb::CallRequest {
            service: "nobody.home".into(),
            ..Default::default()
        })
        .await;
    let asked = Instant::now();
    node.terminate().await;
    let status = tokio::time::timeout(Duration::from_secs(30), node.child.wait())
        .await
        .expect("the node exits")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    // Without the bound the SDK waits 10 s and more; the bound is 0.5 s
    // (the rest is the node's own drain and exit).
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        asked.elapsed()
    );
    drop(silent);
}
