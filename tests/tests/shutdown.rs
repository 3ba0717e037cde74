//! Graceful shutdown of the real binary: every tracked piece of work (a
//! provider session, a subscription, a call in flight, streams of calls
//! under load) is drained or ended within the grace period, the process
//! exits as soon as the last one is done, and no call is left without a
//! reply or an error. (The first test also covers what `lifecycle.rs` once
//! checked alone: a call in flight at SIGTERM finishes with its reply and
//! the process exits with success.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kernel_proto::v1::{self as pb, kernel_client::KernelClient};
use kernel_sdk::SubscribeOptions;
use kernel_tests::{eventually, provider_busy, NodeProcess, PluginProcess};
use tokio_stream::wrappers::UnboundedReceiverStream;

/// Long enough that a node which waited for it would fail every bound
/// below: the node must end on its own once its work is done.
const GRACE_MS: &str = "30000";

/// A node binary with a 30 s grace, a `test-plugin` providing `service`
/// (each call taking `delay_ms`), and a client that has seen it answer.
async fn node_with_provider(
    service: &str,
    delay_ms: &str,
) -> (NodeProcess, PluginProcess, kernel_sdk::Client) {
    let node = NodeProcess::start(&[("KERNEL_SERVER__SHUTDOWN_GRACE_MS", GRACE_MS)]).await;
    let plugin = PluginProcess::spawn_at(
        &node.url,
        &["--service", service, "--delay-ms", delay_ms],
        &[],
    );
    let client = kernel_sdk::Client::connect(&node.url).expect("client");
    eventually(
        Duration::from_secs(20),
        &format!("{service} served"),
        || {
            let c = client.clone();
            let s = service.to_owned();
            async move {
                c.call(&s, "warm")
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await;
    (node, plugin, client)
}

/// Waits until the provider holds a call (Admin `ListPlugins`).
async fn at_provider(url: &str) {
    eventually(Duration::from_secs(10), "a call at the provider", || {
        let url = url.to_owned();
        async move { provider_busy(&url).await }
    })
    .await;
}

#[tokio::test]
async fn sigterm_drains_a_session_a_subscription_and_a_call_then_exits_when_they_are_done() {
    let (mut node, _plugin, client) = node_with_provider("slow.echo", "700").await;
    // A subscription, with an event delivered before the signal.
    let mut sub = client
        .subscriber(SubscribeOptions::new("news.>"))
        .await
        .expect("subscribe");
    client
        .publish("news.early", "before")
        .await
        .expect("publish");
    let first = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("delivered")
        .expect("an event");
    assert_eq!(first.payload, "before");
    // A call in flight at SIGTERM.
    let c = client.clone();
    let in_flight = tokio::spawn(async move { c.call("slow.echo", "finish me").await });
    at_provider(&node.url).await;
    let signalled = Instant::now();
    node.terminate().await;

    // The call finishes with its reply...
    let reply = in_flight
        .await
        .expect("join")
        .expect("the in-flight call completes");
    assert_eq!(reply, "finish me");
    // ...the subscription ends (the node closes it once calls are done)...
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if sub.next().await.is_none() {
                break;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the subscription did not end within 10 s");
    // ...and the process exits on its own, far inside the 30 s grace.
    let status = tokio::time::timeout(Duration::from_secs(10), node.child.wait())
        .await
        .expect("the node exits once its work is done, not at the end of the grace")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    let took = signalled.elapsed();
    eprintln!("drained and exited {took:?} after SIGTERM (grace 30 s)");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

/// What one raw CallStream caller saw.
#[derive(Debug, Default)]
struct Seen {
    ok: u64,
    unavailable: u64,
    other: Vec<String>,
    /// Calls sent whose stream ended before they were answered: the node
    /// never read them (PROTOCOL §4.2), and the stream's status says so.
    unanswered: u64,
    /// How the stream ended.
    end: String,
}

/// Calls `service` on one CallStream, `window` calls outstanding at a time,
/// until the stream ends; counts every outcome.
async fn caller(url: String, service: &'static str, window: u64, sent: Arc<AtomicU64>) -> Seen {
    let mut client = KernelClient::connect(url).await.expect("connect");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<pb::CallStreamUp>();
    let mut inbound = client
        .call_stream(UnboundedReceiverStream::new(rx))
        .await
        .expect("open call stream")
        .into_inner();
    let mut next_id = 1u64;
    let mut pending: HashMap<u64, ()> = HashMap::new();
    let mut seen = Seen::default();
    let send = |pending: &mut HashMap<u64, ()>, next_id: &mut u64| {
        let id = *next_id;
        *next_id += 1;
        pending.insert(id, ());
        sent.fetch_add(1, Ordering::Relaxed);
        tx.send(pb::CallStreamUp {
            calls: vec![pb::CallFrame {
                id,
                service: service.into(),
                payload: "x".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .is_ok()
    };
    for _ in 0..window {
        send(&mut pending, &mut next_id);
    }
    loop {
        match inbound.message().await {
            Ok(Some(down)) => {
                for r in down.replies {
                    assert!(pending.remove(&r.id).is_some(), "a reply to an unknown id");
                    match r.error {
                        None => seen.ok += 1,
                        Some(f) if f.code == tonic::Code::Unavailable as i32 => {
                            seen.unavailable += 1
                        }
                        Some(f) => seen.other.push(format!("{}: {}", f.code, f.message)),
                    }
                    send(&mut pending, &mut next_id);
                }
            }
            Ok(None) => {
                seen.end = "OK".into();
                break;
            }
            Err(status) => {
                seen.end = match status.code() {
                    tonic::Code::Unknown => format!("Unknown: {}", status.message()),
                    code => format!("{code:?}"),
                };
                break;
            }
        }
    }
    seen.unanswered = pending.len() as u64;
    seen
}

#[tokio::test]
async fn sigterm_under_call_stream_load_refuses_new_calls_and_answers_every_call() {
    let (mut node, _plugin, _client) = node_with_provider("load.echo", "2").await;
    const CALLERS: u64 = 16;
    const WINDOW: u64 = 4;
    let sent = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| tokio::spawn(caller(node.url.clone(), "load.echo", WINDOW, sent.clone())))
        .collect();
    // Load running: more than 500 calls answered before the signal (a
    // caller sends one call per reply beyond its window, so the answered
    // ones are the sent ones less the windows).
    eventually(Duration::from_secs(20), "calls flowing", || {
        let n = sent.load(Ordering::Relaxed);
        async move {
            (n > 500 + CALLERS * WINDOW)
                .then_some(())
                .ok_or(format!("{n} sent"))
        }
    })
    .await;
    let signalled = Instant::now();
    node.terminate().await;
    let mut total = Seen::default();
    for c in callers {
        let s = tokio::time::timeout(Duration::from_secs(15), c)
            .await
            .expect("every stream ends")
            .expect("join");
        total.ok += s.ok;
        total.unavailable += s.unavailable;
        total.other.extend(s.other.iter().cloned());
        total.unanswered += s.unanswered;
        // Every call the node read got a reply; the ones still on the wire
        // when the stream ended get its status, which must be an error,
        // never a silent OK: `UNAVAILABLE`, or, when the exiting node's
        // socket closes under a caller that is still sending, the
        // transport's own error.
        assert!(
            s.end == "Unavailable" || s.end.starts_with("Unknown"),
            "a stream ended by shutdown says so: {s:?}"
        );
    }
    assert!(
        total.other.is_empty(),
        "unexpected errors: {:?}",
        total.other
    );
    assert!(total.ok > 500, "{total:?}");
    let status = tokio::time::timeout(Duration::from_secs(15), node.child.wait())
        .await
        .expect("the node exits well before the 30 s grace")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    let took = signalled.elapsed();
    eprintln!("under load: exited {took:?} after SIGTERM (grace 30 s): {total:?}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[tokio::test]
async fn a_call_stream_open_at_sigterm_refuses_new_calls_and_finishes_the_running_one() {
    let (mut node, _plugin, _client) = node_with_provider("slow.echo", "4000").await;
    let mut raw = KernelClient::connect(node.url.clone())
        .await
        .expect("connect");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<pb::CallStreamUp>();
    let mut inbound = raw
        .call_stream(UnboundedReceiverStream::new(rx))
        .await
        .expect("open call stream")
        .into_inner();
    let call = |id: u64| pb::CallStreamUp {
        calls: vec![pb::CallFrame {
            id,
            service: "slow.echo".into(),
            payload: format!("call {id}").into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut watch = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(node.url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect"),
    )
    .watch(tonic_health::pb::HealthCheckRequest::default())
    .await
    .expect("watch")
    .into_inner();
    tx.send(call(1)).expect("send");
    at_provider(&node.url).await;
    node.terminate().await;
    // The node heard the signal once its health says so (on a watch
    // opened before: it takes no new streams now).
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(update)) = watch.message().await {
            if update.status
                == tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
            {
                return;
            }
        }
        panic!("the health watch ended before NOT_SERVING");
    })
    .await
    .expect("health NOT_SERVING");
    // The stream is still open (call 1 runs): a new call is refused at once.
    tx.send(call(2)).expect("send");
    let mut replies = HashMap::new();
    let end = loop {
        match inbound.message().await {
            Ok(Some(down)) => {
                for r in down.replies {
                    replies.insert(r.id, r);
                }
            }
            Ok(None) => break "OK".to_owned(),
            Err(status) => break format!("{:?}", status.code()),
        }
    };
    let refused = replies.get(&2).expect("call 2 answered");
    let err = refused.error.as_ref().expect("call 2 refused");
    assert_eq!(err.code, tonic::Code::Unavailable as i32, "{err:?}");
    assert!(err.message.contains("shutting down"), "{}", err.message);
    let done = replies.get(&1).expect("call 1 answered");
    assert!(done.error.is_none(), "{:?}", done.error);
    assert_eq!(done.payload, "call 1");
    assert_eq!(end, "Unavailable");
    let status = tokio::time::timeout(Duration::from_secs(10), node.child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn every_call_a_provider_ran_during_a_shutdown_under_load_was_answered() {
    let node = kernel_tests::Node::start().await;
    let ran = Arc::new(AtomicU64::new(0));
    let counter = ran.clone();
    let _registration = kernel_sdk::Plugin::new("counted")
        .provide("counted.echo", move |_ctx, payload| {
            let counter = counter.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(payload)
            }
        })
        .attach(&node.kernel)
        .expect("attach");
    let sent = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..8)
        .map(|_| tokio::spawn(caller(node.url.clone(), "counted.echo", 4, sent.clone())))
        .collect();
    eventually(Duration::from_secs(20), "calls flowing", || {
        let n = sent.load(Ordering::Relaxed);
        async move { (n > 300).then_some(()).ok_or(format!("{n} sent")) }
    })
    .await;
    node.stop().await;
    let mut ok = 0;
    for c in callers {
        let s = tokio::time::timeout(Duration::from_secs(15), c)
            .await
            .expect("every stream ends")
            .expect("join");
        assert!(s.other.is_empty(), "unexpected errors: {:?}", s.other);
        assert!(
            s.end == "Unavailable" || s.end.starts_with("Unknown"),
            "{s:?}"
        );
        ok += s.ok;
    }
    // Each call the provider ran reached its caller as a reply: none was
    // run and then dropped by the shutdown.
    assert_eq!(ran.load(Ordering::Relaxed), ok);
}
