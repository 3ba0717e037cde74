//! Prometheus metrics and health endpoints, gRPC health and reflection,
//! against a real node.

use std::time::Duration;

use kernel_proto::v1 as pb;
use kernel_sdk::{Bytes, Plugin, SubscribeOptions};
use kernel_tests::Node;

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    kernel_tests::http_get(&addr.to_string(), path)
        .await
        .expect("the admin port answers")
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
