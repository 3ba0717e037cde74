//! Identity and capabilities, end to end against a node with auth on:
//! tokens at the edge, deny-by-default grants for providing, calling,
//! publishing, subscribing and Admin, no hijacking of another plugin's
//! service, and in-process plugins held to the same rules.

use std::time::Duration;

use kernel_node::config::Config;
use kernel_node::identity::hash_token;
use kernel_proto::v1::{self as pb, admin_client::AdminClient};
use kernel_sdk::{Bytes, Client, Code, Plugin, SubscribeOptions};
use kernel_tests::Node;

fn grant(tokens: &[&str], f: impl FnOnce(&mut kernel_core::PluginAuth)) -> kernel_core::PluginAuth {
    let mut p = kernel_core::PluginAuth {
        tokens: tokens.iter().map(|t| hash_token(t)).collect(),
        ..Default::default()
    };
    f(&mut p);
    p
}

fn config() -> Config {
    let mut c = Config::default();
    c.auth.enabled = true;
    let plugins = &mut c.auth.plugins;
    plugins.insert(
        "inventory".into(),
        grant(&["inv-token"], |g| {
            g.provide = vec!["inventory.*".into()];
            g.subscribe = vec!["order.*".into()];
        }),
    );
    plugins.insert(
        "orders".into(),
        grant(&["orders-token", "orders-next"], |g| {
            g.provide = vec!["orders.*".into()];
            g.call = vec!["inventory.>".into()];
            g.publish = vec!["order.*".into()];
        }),
    );
    // Grants as wide as they come, and still no hijacking.
    plugins.insert(
        "rogue".into(),
        grant(&["rogue-token"], |g| {
            g.provide = vec![">".into()];
            g.call = vec![">".into()];
        }),
    );
    plugins.insert("ops".into(), grant(&["ops-token"], |g| g.admin = true));
    c
}

async fn raw_call(node: &Node, token: Option<&str>, service: &str) -> Result<(), tonic::Status> {
    let mut req = tonic::Request::new(pb::CallRequest {
        service: service.into(),
        payload: Bytes::from_static(b"{}"),
        ..Default::default()
    });
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("ascii"),
        );
    }
    node.raw().await.call(req).await.map(|_| ())
}

fn assert_denied<T: std::fmt::Debug>(r: Result<T, kernel_sdk::Error>, capability: &str) {
    let e = r.expect_err("must be refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(
        e.message().contains(capability),
        "`{capability}` not named: {e}"
    );
}

#[tokio::test]
async fn tokens_are_required_and_grants_decide_everything_a_plugin_does() {
    let node = Node::start_with(config()).await;

    // The inventory provider, with its token.
    let inventory = Plugin::new("inventory")
        .token("inv-token")
        .provide("inventory.check", |_ctx, _p| async move {
            Ok(Bytes::from_static(b"{\"in_stock\":true}"))
        });
    let url = node.url.clone();
    let _inventory = tokio::spawn(async move { inventory.serve(&url, Default::default()).await });
    node.wait_providers("inventory.check", 1).await;

    // No token, a wrong token: UNAUTHENTICATED, before any service runs.
    for token in [None, Some("guess"), Some("")] {
        let e = raw_call(&node, token, "inventory.check")
            .await
            .expect_err("refused");
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{token:?}: {e:?}");
    }
    // Health checks need none.
    let channel = tonic::transport::Endpoint::from_shared(node.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health without a token");

    // Calls: inside the grant, outside it; both tokens of a rotation work.
    let orders = Client::connect(&node.url)
        .expect("client")
        .with_token("orders-token");
    orders
        .call("inventory.check", "{}")
        .await
        .expect("granted call");
    let next = Client::connect(&node.url)
        .expect("client")
        .with_token("orders-next");
    next.call("inventory.check", "{}")
        .await
        .expect("the second token");
    assert_denied(
        orders.call("billing.charge", "{}").await,
        "call billing.charge",
    );
    // The verified name wins over a claimed one.
    let claiming = Client::connect(&node.url)
        .expect("client")
        .with_token("orders-token")
        .with_plugin("ops");
    assert_denied(
        claiming.call("billing.charge", "{}").await,
        "call billing.charge",
    );

    // Providing outside the grant; naming another plugin in the hello.
    let out = Plugin::new("orders")
        .token("orders-token")
        .provide("payments.take", |_c, p| async move { Ok(p) })
        .serve(&node.url, Default::default())
        .await;
    assert_denied(out, "provide payments.take");
    let out = Plugin::new("inventory")
        .token("orders-token")
        .provide("inventory.check", |_c, p| async move { Ok(p) })
        .serve(&node.url, Default::default())
        .await;
    assert_denied(out, "register as plugin inventory");

    // Hijacking: a plugin whose grants cover the name still cannot join or
    // replace another plugin's providers.
    for replace in [false, true] {
        let mut p = Plugin::new("rogue")
            .token("rogue-token")
            .provide("inventory.check", |_c, p| async move { Ok(p) });
        if replace {
            p = p.replace();
        }
        let out = p.serve(&node.url, Default::default()).await;
        let e = out.expect_err("hijack refused");
        assert_eq!(e.code(), Code::PermissionDenied, "{e}");
        assert!(
            e.message().contains("provided by plugin `inventory`"),
            "{e}"
        );
    }
    assert_eq!(
        orders
            .call("inventory.check", "{}")
            .await
            .expect("still inventory's"),
        Bytes::from_static(b"{\"in_stock\":true}")
    );

    // Events: subscribe and publish inside and outside the grants.
    let inv = Client::connect(&node.url)
        .expect("client")
        .with_token("inv-token");
    let mut sub = inv
        .subscriber(SubscribeOptions::new("order.*"))
        .await
        .expect("granted subscription");
    assert_denied(
        inv.subscriber(SubscribeOptions::new("order.>"))
            .await
            .map(|_| ()),
        "subscribe order.>",
    );
    assert_denied(
        inv.publish("order.created", "{}").await,
        "publish order.created",
    );
    orders
        .publish("order.created", "{\"id\":1}")
        .await
        .expect("granted publish");
    let ev = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("delivered")
        .expect("open");
    assert_eq!(ev.topic, "order.created");
    assert_eq!(
        ev.headers.get("x-kernel-caller").map(String::as_str),
        Some("orders"),
        "the verified publisher"
    );

    // Admin: only with the capability.
    let admin_call = |token: &'static str| {
        let url = node.url.clone();
        async move {
            let mut admin = AdminClient::connect(url).await.expect("connect");
            let mut req = tonic::Request::new(pb::StatsRequest::default());
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ascii"),
            );
            admin.stats(req).await
        }
    };
    let e = admin_call("orders-token")
        .await
        .expect_err("no admin grant");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(e.message().contains("admin"), "{e:?}");
    admin_call("ops-token").await.expect("admin granted");

    // Every denial is counted.
    let metrics = node.kernel.render_metrics();
    let count = |cap: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("kernel_denials_total{{capability=\"{cap}\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {cap} denials line in\n{metrics}"))
    };
    assert!(count("call") >= 2, "{metrics}");
    assert!(count("provide") >= 3, "{metrics}");
    assert_eq!(count("admin"), 1, "{metrics}");
    node.stop().await;
}

#[tokio::test]
async fn in_process_plugins_are_held_to_the_same_grants() {
    let node = Node::start_with(config()).await;
    // Providing: an in-process plugin without grants cannot register.
    let refused = Plugin::new("stranger")
        .provide("inventory.check", |_c, p| async move { Ok(p) })
        .attach(&node.kernel);
    let e = refused.expect_err("no grant");
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let _inv = Plugin::new("inventory")
        .provide("inventory.check", |_c, p| async move { Ok(p) })
        .attach(&node.kernel)
        .expect("granted");
    // Calling and publishing through an in-process client.
    let orders = Client::in_process(node.kernel.clone()).with_plugin("orders");
    orders.call("inventory.check", "{}").await.expect("granted");
    assert_denied(
        orders.call("billing.charge", "{}").await,
        "call billing.charge",
    );
    let anonymous = Client::in_process(node.kernel.clone());
    assert_denied(
        anonymous.call("inventory.check", "{}").await,
        "call inventory.check",
    );
    assert_denied(orders.publish("stock.low", "{}").await, "publish stock.low");
    node.stop().await;
}

/// With auth on, working under a context path takes holding it: the plugin
/// handling the call there may call under it; another plugin that learned
/// the path (even one allowed to call anything) may not.
#[tokio::test]
async fn only_the_plugin_handling_a_context_may_work_under_it() {
    let node = Node::start_with(config()).await;
    let url: &'static str = Box::leak(node.url.clone().into_boxed_str());
    tokio::spawn(
        Plugin::new("inventory")
            .token("inv-token")
            .provide("inventory.check", |_c, p| async move { Ok(p) })
            .serve(url, Default::default()),
    );
    let (leak_tx, mut leak_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(
        Plugin::new("orders")
            .token("orders-token")
            .provide("orders.place", move |ctx, p| {
                let (leak, mut go) = (leak_tx.clone(), go_rx.clone());
                async move {
                    let _ = leak.send(ctx.path().to_owned());
                    let _ = go.wait_for(|g| *g).await;
                    // The holder calls under its own context.
                    ctx.call("inventory.check", p).await
                }
            })
            .serve(url, Default::default()),
    );
    node.wait_providers("inventory.check", 1).await;
    node.wait_providers("orders.place", 1).await;
    let caller = Client::connect(&node.url)
        .expect("client")
        .with_token("rogue-token");
    let place = tokio::spawn(async move { caller.call("orders.place", "{}").await });
    let path = tokio::time::timeout(Duration::from_secs(10), leak_rx.recv())
        .await
        .expect("the handler runs")
        .expect("its path");
    // The rogue plugin (grants: call anything) names the leaked path.
    let mut req = tonic::Request::new(pb::CallRequest {
        service: "inventory.check".into(),
        payload: Bytes::from_static(b"{}"),
        ..Default::default()
    });
    req.metadata_mut().insert(
        "authorization",
        "Bearer rogue-token".parse().expect("ascii"),
    );
    req.metadata_mut()
        .insert("x-kernel-context", path.parse().expect("ascii"));
    let refused = node
        .raw()
        .await
        .call(req)
        .await
        .expect_err("not its context");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains(&path), "{refused:?}");
    // Charging its budget is refused the same way.
    let mut charge = tonic::Request::new(pb::ChargeRequest {
        counter: "sql".into(),
        amount: 1,
    });
    charge.metadata_mut().insert(
        "authorization",
        "Bearer rogue-token".parse().expect("ascii"),
    );
    charge
        .metadata_mut()
        .insert("x-kernel-context", path.parse().expect("ascii"));
    let refused = node
        .raw()
        .await
        .charge(charge)
        .await
        .expect_err("not its context");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    // Publishing under it is refused the same way.
    let mut publish = tonic::Request::new(pb::PublishRequest {
        topic: "order.leaked".into(),
        ..Default::default()
    });
    publish.metadata_mut().insert(
        "authorization",
        "Bearer orders-token".parse().expect("ascii"),
    );
    publish.metadata_mut().insert(
        "x-kernel-context",
        format!("{path}.99").parse().expect("ascii"),
    );
    let refused = node
        .raw()
        .await
        .publish(publish)
        .await
        .expect_err("no such live node");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    // The holder's own nested call goes through.
    go_tx.send(true).expect("release");
    let reply = place
        .await
        .expect("join")
        .expect("the holder's nested call");
    assert_eq!(&reply[..], b"{}");
}
