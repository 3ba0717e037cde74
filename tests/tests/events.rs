//! The event bus end to end: wildcards, queue groups, backpressure,
//! redelivery, dead letters, ordering.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use kernel_node::config::Config;
use kernel_sdk::{Client, Event, SubscribeOptions, Subscriber};
use kernel_tests::{Node, PluginProcess};
use tonic::Code;

/// Drains whatever arrives within `quiet` of the last event.
async fn drain(sub: &mut Subscriber, quiet: Duration) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(quiet, sub.next()).await {
        out.push(e);
    }
    out
}

async fn next(sub: &mut Subscriber) -> Event {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an event within 10 s")
        .expect("subscription open")
}

#[tokio::test]
async fn wildcard_semantics_table() {
    let node = Node::start().await;
    let client = node.client();
    let patterns = ["order.*", "order.>", "*.created", "order.created"];
    let mut subs = Vec::new();
    for p in patterns {
        subs.push(
            client
                .subscriber(SubscribeOptions::new(p))
                .await
                .expect("subscribe"),
        );
    }
    let mut multi = client
        .subscriber(
            SubscribeOptions::new("order.*")
                .pattern("*.created")
                .pattern("order.>"),
        )
        .await
        .expect("multi-pattern subscribe");
    for t in ["order.created", "order.a.b", "order", "user.created"] {
        client.publish(t, t.to_owned()).await.expect("publish");
    }
    let want: [&[&str]; 4] = [
        &["order.created"],
        &["order.created", "order.a.b"],
        &["order.created", "user.created"],
        &["order.created"],
    ];
    for ((p, sub), want) in patterns.iter().zip(subs.iter_mut()).zip(want) {
        let got: Vec<String> = drain(sub, Duration::from_millis(200))
            .await
            .into_iter()
            .map(|e| e.topic)
            .collect();
        assert_eq!(got, want, "pattern {p}");
    }
    let got: Vec<String> = drain(&mut multi, Duration::from_millis(200))
        .await
        .into_iter()
        .map(|e| e.topic)
        .collect();
    assert_eq!(
        got,
        ["order.created", "order.a.b", "user.created"],
        "each event once"
    );
}

#[tokio::test]
async fn invalid_topics_and_patterns_name_the_token() {
    let node = Node::start().await;
    let client = node.client();
    for (topic, needle) in [
        ("order..x", "token 2"),
        ("order.*", "wildcard"),
        ("a b", "`a b`"),
        ("", "empty"),
    ] {
        let err = client.publish(topic, "x").await.expect_err(topic);
        assert_eq!(err.code(), Code::InvalidArgument, "{topic}");
        assert!(err.message().contains(needle), "{topic}: {err}");
    }
    let err = client
        .subscriber(SubscribeOptions::new("a.>.b"))
        .await
        .expect_err("> not last");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("`>`"), "{err}");
    let long = vec!["t"; 40].join(".");
    let err = client
        .publish(&long, "x")
        .await
        .expect_err("too many tokens");
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn queue_group_members_share_3000_events_exactly_once() {
    let node = Node::start().await;
    let client = node.client();
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(
            client
                .subscriber(
                    SubscribeOptions::new("jobs.*")
                        .queue_group("workers")
                        .name(&format!("w{i}")),
                )
                .await
                .expect("join group"),
        );
    }
    let publisher = client.publisher().await.expect("publisher");
    let acks: Vec<_> = (0..3000)
        .map(|i| publisher.send("jobs.run", i.to_string(), None))
        .collect();
    for a in futures::future::join_all(acks).await {
        assert_eq!(a.expect("accepted").matched, 1, "a group counts once");
    }
    let mut seen = HashSet::new();
    let mut per_member = Vec::new();
    for m in members.iter_mut() {
        let got = drain(m, Duration::from_millis(300)).await;
        per_member.push(got.len());
        for e in got {
            assert!(seen.insert(e.id.clone()), "event {} delivered twice", e.id);
        }
    }
    assert_eq!(seen.len(), 3000, "per member: {per_member:?}");
    assert!(
        per_member.iter().all(|n| *n > 500),
        "uneven: {per_member:?}"
    );
}

#[tokio::test]
async fn slow_subscriber_loses_nothing_and_publisher_waits_then_fails_on_short_deadline() {
    let mut config = Config::default();
    config.broker.buffer = 512;
    let node = Node::start_with(config).await;
    let client = node.client();
    let mut sub = client
        .subscriber(SubscribeOptions::new("load.>").name("slowpoke"))
        .await
        .expect("subscribe");
    const N: usize = 100_000;
    let publisher = client.publisher().await.expect("publisher");
    let pub_task = tokio::spawn(async move {
        let mut acks = Vec::with_capacity(N);
        for i in 0..N {
            acks.push(publisher.send("load.x", i.to_string(), Some(Duration::from_secs(30))));
        }
        for a in futures::future::join_all(acks).await {
            a.expect("accepted while the subscriber catches up");
        }
    });
    // The subscriber is slower than the publisher: it pauses every 2,000 events.
    let kernel = node.kernel.clone();
    let mut max_buffered = 0;
    let mut expected = 0usize;
    while expected < N {
        let e = next(&mut sub).await;
        let n: usize = std::str::from_utf8(&e.payload)
            .expect("utf8")
            .parse()
            .expect("number");
        assert_eq!(n, expected, "events arrive complete and in order");
        expected += 1;
        if expected.is_multiple_of(2_000) {
            // Pause; until the buffer was once seen full, for as long as
            // the publisher takes to fill it (at most a second: on a loaded
            // machine it may need more than one tick).
            let ticks = if max_buffered >= 500 { 1 } else { 50 };
            for _ in 0..ticks {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let b = kernel
                    .broker()
                    .subscriptions()
                    .iter()
                    .map(|s| s.buffered())
                    .max()
                    .unwrap_or(0);
                max_buffered = max_buffered.max(b);
                if b >= 500 {
                    break;
                }
            }
        }
    }
    pub_task.await.expect("publisher finished");
    assert_eq!(expected, N, "zero lost");
    assert!(
        max_buffered >= 500,
        "the buffer filled (publisher had to wait): max {max_buffered}"
    );

    // Stop reading: fill the buffer, then a short deadline fails naming the subscription.
    let mut short_err = None;
    let big = "x".repeat(4096);
    for _ in 0..50_000 {
        match client
            .publish_with_timeout("load.y", big.clone(), Duration::from_millis(50))
            .await
        {
            Ok(_) => continue,
            Err(e) => {
                short_err = Some(e);
                break;
            }
        }
    }
    let err = short_err.expect("a publish that times out on the full buffer");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("slowpoke"), "{err}");
    // Everything accepted before the refusal is still delivered.
    let got = drain(&mut sub, Duration::from_millis(300)).await;
    assert!(got.len() >= 512, "buffered events delivered: {}", got.len());
}

#[tokio::test]
async fn nack_and_ack_timeout_redeliver_then_dead_letter() {
    let node = Node::start().await;
    let client = node.client();
    let mut sub = client
        .subscriber(
            SubscribeOptions::new("pay.*")
                .explicit_ack()
                // Long enough that an ack or nack always beats the
                // redelivery, on a loaded machine too.
                .ack_wait(Duration::from_secs(1))
                .max_deliver(3),
        )
        .await
        .expect("subscribe");
    let mut dlq = client
        .subscriber(SubscribeOptions::new("$dlq.>"))
        .await
        .expect("dlq subscribe");

    client.publish("pay.nack", "n").await.expect("publish");
    let e = next(&mut sub).await;
    assert_eq!(e.attempt, 1);
    sub.nack(&e, Duration::ZERO);
    let e = next(&mut sub).await;
    assert_eq!(
        (e.topic.as_str(), e.attempt),
        ("pay.nack", 2),
        "redelivered on nack"
    );
    sub.ack(&e);

    client.publish("pay.timeout", "t").await.expect("publish");
    let e = next(&mut sub).await;
    assert_eq!(e.attempt, 1);
    // No ack: it comes back after ack_wait, twice more, then goes to the DLQ.
    let e2 = next(&mut sub).await;
    assert_eq!(
        (e2.id.as_str(), e2.attempt),
        (e.id.as_str(), 2),
        "redelivered after ack wait"
    );
    let e3 = next(&mut sub).await;
    assert_eq!(e3.attempt, 3);
    let dead = next(&mut dlq).await;
    assert_eq!(dead.topic, "$dlq.pay.timeout");
    assert_eq!(dead.id, e.id);
    assert_eq!(
        dead.headers
            .get("x-kernel-dlq-attempts")
            .map(String::as_str),
        Some("3")
    );
    assert!(
        dead.headers
            .get("x-kernel-dlq-reason")
            .is_some_and(|r| r.contains("ack timeout")),
        "{:?}",
        dead.headers
    );
    // Nack past max deliver dead-letters too, with its own reason.
    client.publish("pay.bad", "b").await.expect("publish");
    for attempt in 1..=3 {
        let e = next(&mut sub).await;
        assert_eq!((e.topic.as_str(), e.attempt), ("pay.bad", attempt));
        sub.nack(&e, Duration::from_millis(10));
    }
    let dead = next(&mut dlq).await;
    assert_eq!(dead.topic, "$dlq.pay.bad");
    assert!(dead
        .headers
        .get("x-kernel-dlq-reason")
        .is_some_and(|r| r.contains("nack")));
}

#[tokio::test]
async fn killed_queue_member_hands_unacked_events_to_its_peer() {
    let node = Node::start().await;
    let client = node.client();
    let mut victim = PluginProcess::spawn(
        &node,
        &[
            "--subscribe",
            "ship.*",
            "--group",
            "shippers",
            "--explicit",
            "--no-ack",
            "--name",
            "victim",
        ],
    );
    victim
        .expect_line("SUBSCRIBED", Duration::from_secs(10))
        .await;
    let mut peer = client
        .subscriber(
            SubscribeOptions::new("ship.*")
                .queue_group("shippers")
                .explicit_ack()
                .name("peer"),
        )
        .await
        .expect("peer joins");
    for i in 0..100 {
        client
            .publish("ship.order", i.to_string())
            .await
            .expect("publish");
    }
    // The victim received its share and acked none of it.
    victim.expect_line("EVENT", Duration::from_secs(5)).await;
    let mut got: HashMap<String, u32> = HashMap::new();
    let first = drain(&mut peer, Duration::from_millis(300)).await;
    for e in &first {
        peer.ack(e);
        got.insert(String::from_utf8_lossy(&e.payload).into_owned(), e.attempt);
    }
    assert!(got.len() < 100, "the victim had a share");
    victim.kill().await;
    let rest = drain(&mut peer, Duration::from_millis(1500)).await;
    for e in &rest {
        peer.ack(e);
        got.insert(String::from_utf8_lossy(&e.payload).into_owned(), e.attempt);
    }
    assert_eq!(got.len(), 100, "every event reached the surviving member");
}

#[tokio::test]
async fn per_subscription_order_for_one_publisher_in_process_and_remote() {
    let node = Node::start().await;
    for client in [node.client(), Client::in_process(node.kernel.clone())] {
        let mut sub = client
            .subscriber(SubscribeOptions::new("seq.>"))
            .await
            .expect("subscribe");
        let publisher = client.publisher().await.expect("publisher");
        let publishing = tokio::spawn(async move {
            let acks: Vec<_> = (0..20_000)
                .map(|i| publisher.send("seq.n", i.to_string(), None))
                .collect();
            for a in futures::future::join_all(acks).await {
                a.expect("accepted");
            }
        });
        for i in 0..20_000 {
            let e = next(&mut sub).await;
            assert_eq!(e.payload, i.to_string(), "in publish order");
        }
        publishing.await.expect("publisher done");
    }
}

#[tokio::test]
async fn events_without_subscribers_match_zero() {
    let node = Node::start().await;
    let r = node
        .client()
        .publish("nobody.listens", "x")
        .await
        .expect("publish ok");
    assert_eq!(r.matched, 0);
}

#[tokio::test]
async fn window_limits_unacked_and_credit_or_acks_open_it() {
    let node = Node::start().await;
    let client = node.client();
    let mut sub = client
        .subscriber(SubscribeOptions::new("win.*").explicit_ack().window(2))
        .await
        .expect("subscribe");
    for i in 0..5 {
        client
            .publish("win.x", i.to_string())
            .await
            .expect("publish");
    }
    let first = drain(&mut sub, Duration::from_millis(300)).await;
    assert_eq!(first.len(), 2, "no more than the window unacked");
    sub.credit(1);
    let more = drain(&mut sub, Duration::from_millis(300)).await;
    assert_eq!(more.len(), 1, "credit opens the window by one");
    for e in first.iter().chain(more.iter()) {
        sub.ack(e);
    }
    let rest = drain(&mut sub, Duration::from_millis(300)).await;
    assert_eq!(rest.len(), 2, "acks free the window");
    let all: Vec<String> = first
        .iter()
        .chain(&more)
        .chain(&rest)
        .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
        .collect();
    assert_eq!(all, ["0", "1", "2", "3", "4"]);
}

#[tokio::test]
async fn publish_returns_distinct_16_hex_digit_event_ids_the_subscriber_sees() {
    let node = Node::start().await;
    let clients = [node.client(), Client::in_process(node.kernel.clone())];
    for (n, client) in clients.into_iter().enumerate() {
        // A topic per client: the first one's subscription may outlive its
        // loop turn briefly (its stream closes in the background).
        let (pattern, topic) = (format!("ids{n}.*"), format!("ids{n}.x"));
        let mut sub = client
            .subscriber(SubscribeOptions::new(&pattern))
            .await
            .expect("subscribe");
        let mut ids = HashSet::new();
        for i in 0..3 {
            let p = client
                .publish(&topic, i.to_string())
                .await
                .expect("publish");
            let id = p.event_id().into_owned();
            assert_eq!(id.len(), 16, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
            assert_eq!(p.matched, 1);
            let e = next(&mut sub).await;
            assert_eq!(e.id, id, "the subscriber sees the id the publisher got");
            assert!(ids.insert(id), "ids are distinct");
        }
    }
}

/// `dedupe(n)`: a redelivery of an event this subscriber already handed
/// out (same id) is acked and skipped, not handed out again.
#[tokio::test]
async fn dedupe_skips_a_redelivered_event_and_acks_it() {
    let node = Node::start().await;
    let client = node.client();
    let mut sub = client
        .subscriber(
            SubscribeOptions::new("dd.*")
                .explicit_ack()
                .ack_wait(Duration::from_millis(150))
                .dedupe(16),
        )
        .await
        .expect("subscribe");
    client.publish("dd.a", "a").await.expect("publish");
    let a = next(&mut sub).await;
    assert_eq!(&a.payload[..], b"a");
    // Not acked: redelivered after 150 ms with the same id, while `b`
    // waits behind it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    client.publish("dd.b", "b").await.expect("publish");
    let b = next(&mut sub).await;
    assert_eq!(&b.payload[..], b"b", "the redelivery of `a` was skipped");
    sub.ack(&b);
    let rest = drain(&mut sub, Duration::from_millis(500)).await;
    assert!(
        rest.is_empty(),
        "the skipped redelivery was acked: {rest:?}"
    );
}
