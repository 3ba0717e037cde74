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

#[tokio::test]
async fn a_plugin_past_its_in_flight_cap_is_refused_and_others_are_served() {
    let mut config = Config::default();
    config.router.max_in_flight_per_plugin = 2;
    let node = Node::start_with(config).await;
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let held = gate.clone();
    let _slow = Plugin::new("slow")
        .provide("lim.slow", move |_c, p| {
            let held = held.clone();
            async move {
                let _ = held.acquire().await;
                Ok(p)
            }
        })
        .provide("lim.fast", |_c, p| async move { Ok(p) })
        .attach(&node.kernel)
        .expect("attach");
    let greedy = node.client().with_plugin("greedy");
    let mut pending = Vec::new();
    for _ in 0..2 {
        let g = greedy.clone();
        pending.push(tokio::spawn(async move { g.call("lim.slow", "x").await }));
    }
    kernel_tests::wait_until(
        std::time::Duration::from_secs(10),
        "two calls in flight",
        || {
            node.kernel.registry().pool("lim.slow").is_some_and(|p| {
                p.instances
                    .iter()
                    .any(|i| i.in_flight.load(std::sync::atomic::Ordering::Relaxed) == 2)
            })
        },
    )
    .await;
    let e = greedy
        .call("lim.fast", "x")
        .await
        .expect_err("a third call");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(
        e.message().contains("router.max_in_flight_per_plugin"),
        "{e}"
    );
    let polite = node.client().with_plugin("polite");
    assert_eq!(
        &polite.call("lim.fast", "y").await.expect("another plugin")[..],
        b"y"
    );
    gate.add_permits(2);
    for p in pending {
        p.await.expect("join").expect("the held calls finish");
    }
    assert_eq!(
        &greedy
            .call("lim.fast", "z")
            .await
            .expect("places given back")[..],
        b"z"
    );
}

#[tokio::test]
async fn a_plugin_over_its_publish_rate_is_told_and_others_publish() {
    let mut config = Config::default();
    // One a second: the burst is spent long before a token comes back,
    // however slow the machine.
    config.broker.max_publish_rate_per_plugin = 1;
    config.broker.publish_burst_per_plugin = 3;
    let node = Node::start_with(config).await;
    let chatty = node.client().with_plugin("chatty");
    for i in 0..3 {
        chatty
            .publish("lim.ev", format!("{i}"))
            .await
            .expect("within the burst");
    }
    let e = chatty
        .publish("lim.ev", "over")
        .await
        .expect_err("over the rate");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(
        e.message().contains("broker.max_publish_rate_per_plugin"),
        "{e}"
    );
    node.client()
        .with_plugin("quiet")
        .publish("lim.ev", "mine")
        .await
        .expect("another plugin has its own bucket");
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    chatty.publish("lim.ev", "later").await.expect("refilled");
}
