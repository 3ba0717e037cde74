//! Event schemas by topic pattern, declared at Register: bad events are
//! refused with the failing path and never delivered; the schema leaves
//! with the plugin that declared it; a schema that does not compile
//! refuses the Register.

use std::time::Duration;

use kernel_proto::v1 as pb;
use kernel_sdk::{Bytes, CancellationToken, Plugin, SubscribeOptions};
use kernel_tests::Node;
use tonic::Code;

const ORDER: &str = r#"{"type":"object","required":["id"],"properties":{"id":{"type":"integer"}}}"#;

#[tokio::test]
async fn a_plugin_s_topic_schema_refuses_bad_events_until_it_leaves() {
    let node = Node::start().await;
    let shutdown = CancellationToken::new();
    let plugin = Plugin::new("orders")
        .provide("orders.noop", |_ctx, p: Bytes| async move { Ok(p) })
        .topic_schema("order.*", ORDER);
    let url = node.url.clone();
    let serving = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { plugin.serve(&url, shutdown).await }
    });
    node.wait_providers("orders.noop", 1).await;

    let client = node.client();
    let mut sub = client
        .subscriber(SubscribeOptions::new("order.*"))
        .await
        .expect("subscribe");
    let wrong = client
        .publish("order.created", r#"{"id":"seven"}"#)
        .await
        .expect_err("wrong type");
    assert_eq!(wrong.code(), Code::InvalidArgument, "{wrong:?}");
    assert!(wrong.message().contains("/id"), "{}", wrong.message());
    assert!(wrong.message().contains("order.*"), "{}", wrong.message());
    let garbage = client
        .publish("order.created", &b"\xff\x00 not json"[..])
        .await
        .expect_err("not JSON");
    assert_eq!(garbage.code(), Code::InvalidArgument);
    assert!(
        garbage.message().contains("not valid JSON"),
        "{}",
        garbage.message()
    );
    client
        .publish("audit.created", "no schema here")
        .await
        .expect("other topics are not checked");
    let ok = client
        .publish("order.created", r#"{"id":7}"#)
        .await
        .expect("valid event");
    assert_eq!(ok.matched, 1);

    // Only the valid event reached the subscriber.
    let first = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("delivered")
        .expect("open");
    assert_eq!(&first.payload[..], br#"{"id":7}"#);
    let more = tokio::time::timeout(Duration::from_millis(200), sub.next()).await;
    assert!(more.is_err(), "a refused event was delivered: {more:?}");

    // The schema leaves with the plugin.
    shutdown.cancel();
    let _ = serving.await;
    let k = node.kernel.clone();
    kernel_tests::wait_until(Duration::from_secs(5), "plugin gone", || {
        k.registry().pool("orders.noop").is_none()
    })
    .await;
    client
        .publish("order.created", "not json")
        .await
        .expect("no schema once its plugin left");
}

#[tokio::test]
async fn a_topic_schema_that_does_not_compile_refuses_the_register() {
    let node = Node::start().await;
    for (pattern, schema, needle) in [
        ("order.*", r#"{"type": 12}"#, "does not compile"),
        ("order.*", "{not json", "is not JSON"),
        ("order.>.x", ORDER, "must be the last token"),
    ] {
        let mut hello = pb::Hello {
            plugin: "bad".into(),
            services: vec![pb::ServiceDecl {
                name: "bad.topics".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        hello.topic_schemas.insert(pattern.into(), schema.into());
        let frame = pb::ProviderUp {
            hello: Some(hello),
            ..Default::default()
        };
        let err = node
            .raw()
            .await
            .register(futures::stream::iter(vec![frame]))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(needle), "{}", err.message());
        assert!(node.kernel.registry().pool("bad.topics").is_none());
    }
}
