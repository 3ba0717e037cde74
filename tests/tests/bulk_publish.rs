//! Bulk publishing (compact acks on a PublishStream) end to end: every event
//! confirmed or reported refused by its seq, delivered in order, and a full
//! subscriber felt as refusals, never as silent loss.

use std::time::Duration;

use kernel_node::config::Config;
use kernel_sdk::{Client, Event, SubscribeOptions, Subscriber};
use kernel_tests::Node;
use tonic::Code;

async fn next(sub: &mut Subscriber) -> Event {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an event within 10 s")
        .expect("subscription open")
}

/// Drains whatever arrives within `quiet` of the last event.
async fn drain(sub: &mut Subscriber, quiet: Duration) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(quiet, sub.next()).await {
        out.push(e);
    }
    out
}

fn number(e: &Event) -> u64 {
    std::str::from_utf8(&e.payload)
        .expect("utf8")
        .parse()
        .expect("number")
}

#[tokio::test]
async fn every_event_is_confirmed_and_delivered_in_order_through_a_small_window() {
    let node = Node::start().await;
    let client = node.client();
    let mut sub = client
        .subscriber(SubscribeOptions::new("bulk.>"))
        .await
        .expect("subscribe");
    // A window far below the count: the publisher must wait for
    // confirmations over and over.
    let mut publisher = client
        .bulk_publisher()
        .await
        .expect("bulk publisher")
        .window(64);
    const N: u64 = 20_000;
    let pub_task = tokio::spawn(async move {
        for i in 1..=N {
            let seq = publisher
                .publish("bulk.x", i.to_string())
                .await
                .expect("stream open");
            assert_eq!(seq, i, "seqs count up from 1");
            assert!(
                seq - publisher.confirmed_through() <= 64,
                "at most `window` unconfirmed"
            );
        }
        let refused = publisher.flush().await.expect("flush");
        assert!(refused.is_empty(), "nothing refused: {refused:?}");
        assert_eq!(publisher.confirmed_through(), N);
    });
    for i in 1..=N {
        assert_eq!(number(&next(&mut sub).await), i, "in publish order");
    }
    pub_task.await.expect("publisher");
}

async fn refusals_are_reported_by_seq(client: Client) {
    let mut sub = client
        .subscriber(SubscribeOptions::new("mixed.*"))
        .await
        .expect("subscribe");
    let mut publisher = client.bulk_publisher().await.expect("bulk publisher");
    publisher.publish("mixed.a", "1").await.expect("queued");
    publisher.publish("mixed..bad", "2").await.expect("queued");
    publisher.publish("mixed.*", "3").await.expect("queued");
    publisher.publish("mixed.b", "4").await.expect("queued");
    let refused = publisher.flush().await.expect("flush");
    let seqs: Vec<u64> = refused.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [2, 3], "{refused:?}");
    for r in &refused {
        assert_eq!(r.error.code(), Code::InvalidArgument, "{}", r.error);
    }
    assert!(
        refused[0].error.message().contains("empty"),
        "{}",
        refused[0].error
    );
    assert!(
        refused[1].error.message().contains("wildcard"),
        "{}",
        refused[1].error
    );
    // A second flush reports nothing new.
    assert!(publisher.flush().await.expect("flush").is_empty());
    let got: Vec<u64> = drain(&mut sub, Duration::from_millis(300))
        .await
        .iter()
        .map(number)
        .collect();
    assert_eq!(got, [1, 4], "only the accepted events are delivered");
}

#[tokio::test]
async fn refused_events_are_reported_by_seq_over_grpc() {
    let node = Node::start().await;
    refusals_are_reported_by_seq(node.client()).await;
}

#[tokio::test]
async fn refused_events_are_reported_by_seq_in_process() {
    let node = Node::start().await;
    refusals_are_reported_by_seq(Client::in_process(node.kernel.clone())).await;
}

#[tokio::test]
async fn a_full_subscriber_turns_into_refusals_and_nothing_accepted_is_lost() {
    let mut config = Config::default();
    config.broker.buffer = 16;
    let node = Node::start_with(config).await;
    let client = node.client();
    // Explicit acks with a window of 1, so the kernel holds the rest in the
    // subscription's buffer instead of handing them to the transport.
    let mut sub = client
        .subscriber(
            SubscribeOptions::new("full.>")
                .name("stuck")
                .explicit_ack()
                .window(1),
        )
        .await
        .expect("subscribe");
    let mut publisher = client
        .bulk_publisher()
        .await
        .expect("bulk publisher")
        .timeout(Duration::from_millis(30));
    const N: u64 = 100;
    for i in 1..=N {
        publisher
            .publish("full.x", i.to_string())
            .await
            .expect("stream open");
    }
    // Nobody reads meanwhile: the buffer fills, then each event waits its
    // timeout and is refused naming the subscription.
    let refused = publisher.flush().await.expect("flush");
    assert!(!refused.is_empty(), "the full buffer refused events");
    for r in &refused {
        assert_eq!(r.error.code(), Code::ResourceExhausted, "{}", r.error);
        assert!(r.error.message().contains("stuck"), "{}", r.error);
    }
    let refused_seqs: Vec<u64> = refused.iter().map(|r| r.seq).collect();
    let accepted: Vec<u64> = (1..=N).filter(|s| !refused_seqs.contains(s)).collect();
    assert!(accepted.len() >= 16, "the buffer's worth was accepted");
    // Every accepted event is delivered, in order; no refused one is.
    let mut got = Vec::new();
    while got.len() < accepted.len() {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap_or_else(|_| panic!("only {got:?} of {accepted:?} delivered"))
            .expect("subscription open");
        got.push(number(&e));
        sub.ack(&e);
    }
    // And nothing more.
    if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        panic!("a refused event was delivered: {}", number(&e));
    }
    assert_eq!(got, accepted);
}
