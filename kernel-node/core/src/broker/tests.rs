//! Broker unit tests: selection, rerouting and redistribution.

use super::*;
use crate::config::BudgetConfig;

fn broker(buffer: usize) -> Broker {
    let config = BrokerConfig {
        buffer,
        ..BrokerConfig::default()
    };
    Broker::new(
        config,
        1024,
        Arc::new(Contexts::new(BudgetConfig::default())),
        Arc::new(Stats::default()),
        Telemetry::disabled(),
    )
}

fn member(b: &Broker, name: &str) -> Arc<Subscription> {
    b.subscribe(SubscribeRequest {
        name: name.into(),
        patterns: vec!["jobs.*".into()],
        group: "g".into(),
        ..Default::default()
    })
    .expect("subscribe")
}

fn publication(n: u32) -> Publication {
    Publication {
        topic: "jobs.run".into(),
        payload: Bytes::from(n.to_string()),
        deadline: Some(Instant::now() + Duration::from_secs(5)),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_member_leaving_while_a_publisher_waits_loses_nothing() {
    let b = Arc::new(broker(1));
    let a = member(&b, "a");
    let c = member(&b, "c");
    b.publish(publication(1)).await.expect("first");
    b.publish(publication(2)).await.expect("second");
    assert_eq!((a.buffered(), c.buffered()), (1, 1), "both members full");
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move { b.publish(publication(3)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "the publisher waits for space");
    // The member the publisher waits on (or the other) leaves: its event
    // goes to the survivor, and so does the waiting publisher's.
    b.unsubscribe(&a);
    let accepted = waiting.await.expect("join").expect("accepted");
    assert_eq!(accepted.matched, 1);
    let mut got = Vec::new();
    while let Ok(Some(batch)) =
        tokio::time::timeout(Duration::from_millis(50), c.next_batch(10)).await
    {
        got.extend(
            batch
                .events
                .into_iter()
                .map(|e| String::from_utf8_lossy(&e.payload).into_owned()),
        );
    }
    got.sort();
    assert_eq!(
        got,
        ["1", "2", "3"],
        "every accepted event reached the survivor"
    );
}

#[tokio::test]
async fn handed_over_events_go_before_newer_ones() {
    let b = broker(16);
    let a = member(&b, "a");
    let c = member(&b, "c");
    for n in 1..=4 {
        b.publish(publication(n)).await.expect("publish");
    }
    // Round robin: a holds 1 and 3, c holds 2 and 4.
    b.unsubscribe(&a);
    let batch = c.next_batch(10).await.expect("open");
    let order: Vec<String> = batch
        .events
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
        .collect();
    assert_eq!(order.len(), 4);
    assert_eq!(
        &order[..2],
        ["1", "3"],
        "the departed member's events first: {order:?}"
    );
}

#[tokio::test]
async fn interest_is_reported_when_a_pattern_gains_its_first_subscriber_and_loses_its_last() {
    let b = broker(16);
    let mut changes = b.watch_interest();
    let a = member(&b, "a");
    let second = member(&b, "b");
    let plain = b
        .subscribe(SubscribeRequest {
            patterns: vec!["jobs.*".into(), "audit.>".into()],
            ..Default::default()
        })
        .expect("subscribe");
    b.unsubscribe(&a);
    b.unsubscribe(&plain);
    b.unsubscribe(&second);
    let mut seen = Vec::new();
    while let Ok(c) = changes.try_recv() {
        seen.push((c.pattern, c.present));
    }
    assert_eq!(
        seen,
        vec![
            ("jobs.*".to_owned(), true),
            ("audit.>".to_owned(), true),
            ("audit.>".to_owned(), false),
            ("jobs.*".to_owned(), false),
        ]
    );
}

#[tokio::test]
async fn one_member_of_a_queue_group_gets_each_event_beside_plain_subscribers() {
    let b = broker(64);
    let members = [member(&b, "a"), member(&b, "b"), member(&b, "c")];
    let plain = b
        .subscribe(SubscribeRequest {
            patterns: vec!["jobs.>".into()],
            ..Default::default()
        })
        .expect("subscribe");
    for n in 0..30 {
        let accepted = b.publish(publication(n)).await.expect("publish");
        assert_eq!(accepted.matched, 2, "the group counts once");
    }
    let counts: Vec<usize> = members.iter().map(|m| m.buffered()).collect();
    assert_eq!(counts.iter().sum::<usize>(), 30, "{counts:?}");
    assert!(counts.iter().all(|&c| c == 10), "round robin: {counts:?}");
    assert_eq!(plain.buffered(), 30);
}
