//! Per-plugin limits, each reached once: the documented status
//! (`RESOURCE_EXHAUSTED` naming the setting), and others unaffected.

use kernel_node::config::Config;
use kernel_sdk::{Code, Plugin, SubscribeOptions};
use kernel_tests::Node;
use tokio_stream::StreamExt as _;

#[tokio::test]
async fn a_plugin_past_its_instance_limit_is_refused_naming_the_setting() {
    let mut config = Config::default();
    config.router.max_instances_per_plugin = 2;
    let node = Node::start_with(config).await;
    let echo = |name: &str| Plugin::new(name).provide("lim.echo", |_c, p| async move { Ok(p) });
    let _a = echo("many").attach(&node.kernel).expect("first");
    let _b = echo("many").attach(&node.kernel).expect("second");
    let e = echo("many").attach(&node.kernel).expect_err("third");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(
        e.message().contains("router.max_instances_per_plugin"),
        "{e}"
    );
    // Remote sessions count the same way (the SDK would retry with
    // backoff, as a place may free up; a raw session sees the refusal).
    let hello = kernel_proto::v1::ProviderUp {
        hello: Some(kernel_proto::v1::Hello {
            plugin: "many".into(),
            services: vec![kernel_proto::v1::ServiceDecl {
                name: "lim.echo".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let status = node
        .raw()
        .await
        .register(tokio_stream::iter(vec![hello]).chain(tokio_stream::pending()))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    // Another plugin is not affected.
    let _c = echo("other").attach(&node.kernel).expect("another plugin");
    node.stop().await;
}

#[tokio::test]
async fn a_plugin_past_its_subscription_limit_is_refused_naming_the_setting() {
    let mut config = Config::default();
    config.broker.max_subscriptions_per_plugin = 3;
    let node = Node::start_with(config).await;
    let client = node.client().with_plugin("greedy");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            client
                .subscriber(SubscribeOptions::new("lim.*"))
                .await
                .expect("within the limit"),
        );
    }
    let e = client
        .subscriber(SubscribeOptions::new("lim.*"))
        .await
        .map(|_| ())
        .expect_err("past the limit");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(
        e.message().contains("broker.max_subscriptions_per_plugin"),
        "{e}"
    );
    // Closing one frees a place.
    drop(held.pop());
    kernel_tests::eventually(std::time::Duration::from_secs(5), "a freed place", || {
        let c = client.clone();
        async move {
            c.subscriber(SubscribeOptions::new("lim.*"))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    node.stop().await;
}
