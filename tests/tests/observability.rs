//! Observability end to end: one trace across every hop (exported over OTLP
//! to a real collector endpoint inside the test), JSON Schema validation,
//! Prometheus metrics and health endpoints, gRPC health and reflection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kernel_node::config::Config;
use kernel_node::telemetry::Telemetry;
use kernel_proto::v1 as pb;
use kernel_sdk::{Bytes, CallOptions, Plugin, SubscribeOptions};
use kernel_tests::{Node, PluginProcess};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

/// A span as the receiver saw it.
#[derive(Debug, Clone)]
struct Seen {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attrs: HashMap<String, String>,
}

/// A real OTLP/gRPC trace collector endpoint.
#[derive(Default, Clone)]
struct Receiver {
    spans: Arc<Mutex<Vec<Seen>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.spans.lock();
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let attrs = s
                        .attributes
                        .iter()
                        .map(|kv| {
                            let v = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                                Some(Value::StringValue(s)) => s,
                                Some(Value::IntValue(i)) => i.to_string(),
                                Some(other) => format!("{other:?}"),
                                None => String::new(),
                            };
                            (kv.key.clone(), v)
                        })
                        .collect();
                    out.push(Seen {
                        name: s.name,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        attrs,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn start_receiver() -> (Receiver, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let r = Receiver::default();
    let svc = TraceServiceServer::new(r.clone());
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await;
    });
    (r, format!("http://{addr}"))
}

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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        node.kernel.telemetry.flush();
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
        if ok {
            return spans;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "missing spans; have {:?}",
            spans
                .iter()
                .map(|s| (&s.name, s.attrs.get("kernel.service")))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let telemetry = Telemetry::otlp(&endpoint, Some("kernel-node")).expect("exporter");
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
    let telemetry = Telemetry::otlp(&endpoint, Some("kernel-node")).expect("exporter");
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

const ORDER_SCHEMA: &str = r#"{
  "type": "object",
  "required": ["sku", "qty"],
  "properties": { "sku": { "type": "string" }, "qty": { "type": "integer", "minimum": 1 } }
}"#;

#[tokio::test]
async fn schema_validation_refuses_bad_arguments_before_the_provider() {
    let node = Node::start().await;
    let invoked = Arc::new(AtomicUsize::new(0));
    let i = invoked.clone();
    let _reg = Plugin::new("orders")
        .provide("orders.place", move |_ctx, p: Bytes| {
            let i = i.clone();
            async move {
                i.fetch_add(1, Ordering::SeqCst);
                Ok(p)
            }
        })
        .schema("orders.place", "", ORDER_SCHEMA)
        .attach(&node.kernel)
        .expect("attach");
    let client = node.client();
    for (payload, path) in [
        (r#"{"sku":"A1","qty":"two"}"#, "/qty"),
        (r#"{"qty":3}"#, "sku"),
        ("not json at all", "not valid JSON"),
        (
            &format!("{}1{}", "[".repeat(200), "]".repeat(200)),
            "not valid JSON",
        ),
    ] {
        let err = client
            .call("orders.place", payload.to_owned())
            .await
            .expect_err(payload);
        assert_eq!(err.code(), Code::InvalidArgument, "{payload}: {err}");
        assert!(err.message().contains(path), "{payload}: {err}");
    }
    let err = client
        .call("orders.place", r#"{"sku":7,"qty":0}"#)
        .await
        .expect_err("two failures");
    assert!(
        err.message().contains("/sku") && err.message().contains("/qty"),
        "each failing path listed: {err}"
    );
    assert_eq!(
        invoked.load(Ordering::SeqCst),
        0,
        "the provider is never invoked"
    );
    assert_eq!(
        client
            .call("orders.place", r#"{"sku":"A1","qty":2}"#)
            .await
            .expect("valid"),
        r#"{"sku":"A1","qty":2}"#
    );
    assert_eq!(invoked.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn hostile_arrays_are_refused_with_their_first_failure_and_json_content_is_checked() {
    let node = Node::start().await;
    let invoked = Arc::new(AtomicUsize::new(0));
    let (i, j) = (invoked.clone(), invoked.clone());
    let _reg = Plugin::new("batches")
        .provide("batch.put", move |_ctx, p: Bytes| {
            i.fetch_add(1, Ordering::SeqCst);
            async move { Ok(p) }
        })
        .schema(
            "batch.put",
            "",
            r#"{"type":"array","items":{"type":"string"}}"#,
        )
        .provide("raw.put", move |_ctx, p: Bytes| {
            j.fetch_add(1, Ordering::SeqCst);
            async move { Ok(p) }
        })
        .attach(&node.kernel)
        .expect("attach");
    let client = node.client();

    // Small: every failing item listed.
    let err = client
        .call("batch.put", r#"[1,"a",2]"#)
        .await
        .expect_err("two bad items");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        err.message().contains("at `/0`") && err.message().contains("at `/2`"),
        "{err}"
    );

    // About 2 MiB of failing items: refused with the first failure only
    // (listing would build a million errors first).
    let huge = format!("[{}1]", "1,".repeat(1_000_000));
    let err = client
        .call("batch.put", huge)
        .await
        .expect_err("a million bad items");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("at `/0`"), "{err}");
    assert!(!err.message().contains("at `/1`"), "{err}");
    assert!(err.message().contains("only the first failure"), "{err}");

    // No schema, but the content type says JSON: the payload must be JSON.
    let json = CallOptions {
        content_type: "application/json".into(),
        ..Default::default()
    };
    let err = client
        .call_with("raw.put", "{not json", json.clone())
        .await
        .expect_err("declared JSON, is not");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("not valid JSON"), "{err}");
    assert_eq!(invoked.load(Ordering::SeqCst), 0, "no provider invoked");

    // The same bytes as opaque content, and valid JSON, go through.
    let opaque = CallOptions {
        content_type: "application/octet-stream".into(),
        ..Default::default()
    };
    client
        .call_with("raw.put", "{not json", opaque)
        .await
        .expect("opaque payload");
    client
        .call_with("raw.put", r#"{"ok":true}"#, json)
        .await
        .expect("declared JSON, is JSON");
    assert_eq!(invoked.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_schema_that_does_not_compile_is_refused_at_register() {
    let node = Node::start().await;
    let mut decl = pb::ServiceDecl {
        name: "bad.schema".into(),
        ..Default::default()
    };
    decl.method_schemas
        .insert("".into(), r#"{"type": 12}"#.into());
    let hello = pb::ProviderUp {
        hello: Some(pb::Hello {
            plugin: "bad".into(),
            services: vec![decl],
            ..Default::default()
        }),
        ..Default::default()
    };
    let err = node
        .raw()
        .await
        .register(futures::stream::iter(vec![hello]))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("does not compile"),
        "{}",
        err.message()
    );
    assert!(node.kernel.registry.pool("bad.schema").is_none());
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect admin");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.expect("read");
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// The services server reflection `$version` (`v1`, `v1alpha`: the same
/// messages in two packages) lists over `$channel`.
macro_rules! list_services {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest,
        };
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut resp = ServerReflectionClient::new($channel)
            .server_reflection_info(futures::stream::iter(vec![req]))
            .await
            .expect(stringify!($version))
            .into_inner();
        let msg = resp.message().await.expect("frame").expect("response");
        let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
            panic!("unexpected {} reflection answer", stringify!($version));
        };
        list.service
            .into_iter()
            .map(|s| s.name)
            .collect::<Vec<String>>()
    }};
}

#[tokio::test]
async fn metrics_health_and_reflection() {
    let node = Node::start().await;
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind admin");
    let admin_addr = admin.local_addr().expect("addr");
    tokio::spawn(kernel_node::server::serve_admin_http(
        admin,
        node.kernel.clone(),
    ));
    let _reg = Plugin::new("m")
        .provide("m.echo", |_ctx, p: Bytes| async move { Ok(p) })
        .attach(&node.kernel)
        .expect("attach");
    let client = node.client();
    let mut sub = client
        .subscriber(SubscribeOptions::new("m.*").name("metrics-sub"))
        .await
        .expect("sub");
    for _ in 0..5 {
        client.call("m.echo", "x").await.expect("call");
    }
    let _ = client.call("m.nobody", "x").await;
    for _ in 0..3 {
        client.publish("m.evt", "e").await.expect("publish");
    }
    // A second subscription under the same name, acking nothing.
    let mut unacking = client
        .subscriber(
            SubscribeOptions::new("m.*")
                .name("metrics-sub")
                .explicit_ack(),
        )
        .await
        .expect("second sub");
    for _ in 0..3 {
        client.publish("m.evt", "e").await.expect("publish");
    }
    for _ in 0..6 {
        tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("event")
            .expect("open");
    }
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(5), unacking.next())
            .await
            .expect("event")
            .expect("open");
    }
    let (status, body) = http_get(admin_addr, "/metrics").await;
    // One series per subscription, the shared name notwithstanding.
    let series = |metric: &str| -> Vec<String> {
        body.lines()
            .filter(|l| {
                l.starts_with(&format!("{metric}{{id=\""))
                    && l.contains("subscription=\"metrics-sub\"")
            })
            .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(series("kernel_subscription_buffered"), ["0", "0"], "{body}");
    let mut unacked = series("kernel_subscription_unacked");
    unacked.sort();
    assert_eq!(unacked, ["0", "3"], "{body}");
    assert_eq!(status, 200);
    for needle in [
        "kernel_calls_total{service=\"m.echo\",code=\"OK\"} 5",
        "kernel_calls_total{service=\"_unknown\",code=\"NOT_FOUND\"} 1",
        "kernel_call_duration_seconds_count{service=\"m.echo\"} 5",
        "kernel_events_published_total 6",
        "kernel_events_delivered_total 9",
        "kernel_plugins_connected 1",
        // The transport edge counts every RPC by path, admin included.
        "kernel_edge_requests_total{path=\"/kernel.v1.Kernel/Subscribe\"} 2",
        "kernel_edge_in_flight{path=\"/kernel.v1.Kernel/Subscribe\"} 2",
        "kernel_edge_response_head_seconds_count{path=\"/kernel.v1.Kernel/Subscribe\"} 2",
    ] {
        assert!(body.contains(needle), "missing `{needle}` in\n{body}");
    }
    // The transport edge gives every request an id and returns it.
    let r = node
        .raw()
        .await
        .call(pb::CallRequest {
            service: "m.echo".into(),
            ..Default::default()
        })
        .await
        .expect("call");
    assert!(
        r.metadata().get("x-request-id").is_some(),
        "{:?}",
        r.metadata()
    );
    assert_eq!(http_get(admin_addr, "/healthz").await.0, 200);
    assert_eq!(http_get(admin_addr, "/readyz").await.0, 200);
    assert_eq!(http_get(admin_addr, "/nope").await.0, 404);

    let channel = tonic::transport::Endpoint::from_shared(node.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "kernel.v1.Kernel".into(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Both reflection versions list the services (v1 for grpcurl and most
    // tools, v1alpha for older ones).
    for names in [
        list_services!(v1, channel.clone()),
        list_services!(v1alpha, channel.clone()),
    ] {
        for want in [
            "kernel.v1.Kernel",
            "kernel.v1.Admin",
            "grpc.health.v1.Health",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
    }

    // Shutdown turns health to NOT_SERVING for whoever watches it.
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: "kernel.v1.Kernel".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("frame").expect("status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let stopping = tokio::spawn(node.stop());
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("told in time")
        .expect("frame")
        .expect("status");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    stopping.await.expect("stopped");
}
