//! Register + Call: round trips over every path, and the documented status
//! for each way a call can fail.

use std::time::{Duration, Instant};

use kernel_node::config::Config;
use kernel_proto::v1 as pb;
use kernel_sdk::{Bytes, CallOptions, Client, Error, Plugin};
use kernel_tests::{Node, PluginProcess};
use tonic::Code;

fn unary(service: &str, payload: &[u8]) -> pb::CallRequest {
    pb::CallRequest {
        service: service.into(),
        payload: payload.to_vec().into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn out_of_process_round_trip_unary_and_stream() {
    let node = Node::start().await;
    let _p = PluginProcess::spawn(&node, &["--service", "test.echo", "--mode", "echo"]);
    node.wait_providers("test.echo", 1).await;

    let r = node
        .raw()
        .await
        .call(unary("test.echo", b"hello"))
        .await
        .expect("unary call");
    assert_eq!(&r.get_ref().payload[..], b"hello");

    let client = node.client();
    for i in 0..50 {
        let body = format!("stream-{i}");
        let out = client
            .call("test.echo", body.clone())
            .await
            .expect("stream call");
        assert_eq!(out, Bytes::from(body));
    }
}

#[tokio::test]
async fn in_process_round_trip_local_and_remote_callers() {
    let node = Node::start().await;
    let _reg = Plugin::new("local")
        .provide("local.upper", |_ctx, p: Bytes| async move {
            Ok(Bytes::from(String::from_utf8_lossy(&p).to_uppercase()))
        })
        .attach(&node.kernel)
        .expect("attach");
    let local = Client::in_process(node.kernel.clone());
    assert_eq!(
        local
            .call("local.upper", "abc")
            .await
            .expect("in-process call"),
        "ABC"
    );
    // A remote caller reaches the in-process provider through the same router.
    let remote = node.client();
    assert_eq!(
        remote
            .call("local.upper", "xyz")
            .await
            .expect("remote call"),
        "XYZ"
    );
    let r = node
        .raw()
        .await
        .call(unary("local.upper", b"q"))
        .await
        .expect("unary");
    assert_eq!(&r.get_ref().payload[..], b"Q");
}

#[tokio::test]
async fn in_process_caller_reaches_out_of_process_provider() {
    let node = Node::start().await;
    let _p = PluginProcess::spawn(&node, &["--service", "test.echo"]);
    node.wait_providers("test.echo", 1).await;
    let local = Client::in_process(node.kernel.clone());
    assert_eq!(local.call("test.echo", "ping").await.expect("call"), "ping");
}

#[tokio::test]
async fn unknown_service_is_not_found_naming_it() {
    let node = Node::start().await;
    let err = node
        .raw()
        .await
        .call(unary("nobody.home", b""))
        .await
        .expect_err("no provider");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("nobody.home"), "{}", err.message());
    let err = node
        .client()
        .call("nobody.home", "")
        .await
        .expect_err("no provider");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn invalid_service_names_are_invalid_argument() {
    let node = Node::start().await;
    let client = node.client();
    for bad in ["", "a..b", "has space", "wild.*"] {
        let err = client.call(bad, "").await.expect_err(bad);
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err}");
    }
}

#[tokio::test]
async fn deadline_exceeded_unary_and_stream() {
    let node = Node::start().await;
    let mut p = PluginProcess::spawn(&node, &["--service", "test.hang", "--mode", "hang"]);
    node.wait_providers("test.hang", 1).await;

    let mut req = tonic::Request::new(unary("test.hang", b""));
    req.set_timeout(Duration::from_millis(200));
    let started = Instant::now();
    let err = node.raw().await.call(req).await.expect_err("deadline");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // The provider was told to stop.
    p.expect_line("CANCELLED", Duration::from_secs(2)).await;

    let opts = CallOptions {
        timeout: Some(Duration::from_millis(150)),
        ..Default::default()
    };
    let err = node
        .client()
        .call_with("test.hang", "", opts)
        .await
        .expect_err("deadline");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    p.expect_line("CANCELLED", Duration::from_secs(2)).await;
}

#[tokio::test]
async fn the_node_request_limit_caps_unary_calls_but_not_open_streams() {
    let mut config = Config::default();
    config.server.max_request_ms = 400;
    let node = Node::start_with(config).await;
    let mut p = PluginProcess::spawn(&node, &["--service", "test.hang", "--mode", "hang"]);
    node.wait_providers("test.hang", 1).await;

    // A unary call with no deadline of its own is cut at the node's limit,
    // and the provider is told to stop.
    let err = node
        .raw()
        .await
        .call(unary("test.hang", b""))
        .await
        .expect_err("cut at the limit");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("server.max_request_ms"), "{err:?}");
    p.expect_line("CANCELLED", Duration::from_secs(5)).await;

    // A subscription open for longer than the limit still gets its events.
    let client = node.client();
    let mut sub = client
        .subscriber(kernel_sdk::SubscribeOptions::new("limit.>"))
        .await
        .expect("subscribe");
    tokio::time::sleep(Duration::from_millis(800)).await;
    client
        .publish("limit.after", "late")
        .await
        .expect("publish");
    let ev = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("delivered in time")
        .expect("stream open");
    assert_eq!(&ev.payload[..], b"late");
}

#[tokio::test]
async fn caller_cancel_reaches_provider() {
    let node = Node::start().await;
    let mut p = PluginProcess::spawn(&node, &["--service", "test.hang", "--mode", "hang"]);
    node.wait_providers("test.hang", 1).await;
    let client = node.client();
    let call = tokio::spawn(async move { client.call("test.hang", "").await });
    let started = p.expect_line("STARTED", Duration::from_secs(5)).await;
    call.abort();
    let cancelled = p.expect_line("CANCELLED", Duration::from_secs(2)).await;
    assert_eq!(
        started.replace("STARTED", ""),
        cancelled.replace("CANCELLED", "")
    );

    // The same through a unary caller that goes away.
    let mut raw = node.raw().await;
    let call = tokio::spawn(async move { raw.call(unary("test.hang", b"")).await });
    p.expect_line("STARTED", Duration::from_secs(5)).await;
    call.abort();
    p.expect_line("CANCELLED", Duration::from_secs(2)).await;
}

#[tokio::test]
async fn provider_errors_keep_code_and_message() {
    let node = Node::start().await;
    let _p = PluginProcess::spawn(&node, &["--service", "test.fail", "--mode", "fail"]);
    node.wait_providers("test.fail", 1).await;
    let err = node
        .client()
        .call("test.fail", "")
        .await
        .expect_err("fails");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("stock table locked"), "{err}");
    let err = node
        .raw()
        .await
        .call(unary("test.fail", b""))
        .await
        .expect_err("fails");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("stock table locked"));
}

#[tokio::test]
async fn oversized_payload_gets_out_of_range() {
    let mut config = Config::default();
    config.router.max_payload_bytes = 64 * 1024;
    let node = Node::start_with(config).await;
    let _p = PluginProcess::spawn(&node, &["--service", "test.echo"]);
    node.wait_providers("test.echo", 1).await;
    let client = node.client();
    // Just over the limit: refused by the router with the sizes named.
    let err = client
        .call("test.echo", vec![0u8; 64 * 1024 + 1])
        .await
        .expect_err("too big");
    assert_eq!(err.code(), Code::OutOfRange, "{err}");
    assert!(err.message().contains("exceeds the limit"), "{err}");
    // Far over: refused by the transport limit, same code; the stream is
    // re-opened for the next call.
    let err = node
        .raw()
        .await
        .call(unary("test.echo", &vec![0u8; 1024 * 1024]))
        .await
        .expect_err("way too big");
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert_eq!(
        client
            .call("test.echo", "small")
            .await
            .expect("still serving"),
        "small"
    );
}

#[tokio::test]
async fn concurrency_queue_full_is_resource_exhausted() {
    let mut config = Config::default();
    config.router.queue_limit = 1;
    // Long enough that the queued call is still queued when the third
    // arrives, on a loaded machine too.
    config.router.queue_timeout_ms = 3_000;
    let node = Node::start_with(config).await;
    let mut p = PluginProcess::spawn(
        &node,
        &[
            "--service",
            "test.hang",
            "--mode",
            "hang",
            "--concurrency",
            "1",
        ],
    );
    node.wait_providers("test.hang", 1).await;
    let client = node.client();
    let c1 = client.clone();
    let first = tokio::spawn(async move { c1.call("test.hang", "").await });
    p.expect_line("STARTED", Duration::from_secs(5)).await;
    // Second waits in the queue; third finds the queue full at once.
    let c2 = client.clone();
    let second = tokio::spawn(async move { c2.call("test.hang", "").await });
    kernel_tests::wait_until(Duration::from_secs(5), "a queued call", || {
        node.kernel.registry().pool("test.hang").is_some_and(|p| {
            p.instances[0]
                .waiting
                .load(std::sync::atomic::Ordering::Relaxed)
                == 1
        })
    })
    .await;
    let err = client.call("test.hang", "").await.expect_err("queue full");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("queue_limit"), "{err}");
    // The queued one gives up after queue_timeout_ms with the same code.
    let err = second.await.expect("join").expect_err("queue timeout");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    first.abort();
}

#[tokio::test]
async fn handler_panic_is_internal_for_that_call_only() {
    let node = Node::start().await;
    let _reg = Plugin::new("panicky")
        .provide("p.maybe", |_ctx, p: Bytes| async move {
            if &p[..] == b"panic" {
                panic!("handler blew up");
            }
            Ok::<_, Error>(p)
        })
        .attach(&node.kernel)
        .expect("attach");
    let client = node.client();
    let err = client.call("p.maybe", "panic").await.expect_err("panics");
    assert_eq!(err.code(), Code::Internal);
    assert!(err.message().contains("blew up"), "{err}");
    assert_eq!(
        client
            .call("p.maybe", "fine")
            .await
            .expect("next call fine"),
        "fine"
    );
}

#[tokio::test]
async fn call_stream_half_close_still_gets_replies_and_duplicate_ids_are_refused() {
    let node = Node::start().await;
    let _p = PluginProcess::spawn(
        &node,
        &[
            "--service",
            "test.slow",
            "--mode",
            "echo",
            "--delay-ms",
            "100",
        ],
    );
    node.wait_providers("test.slow", 1).await;
    let frame = |id: u64| pb::CallFrame {
        id,
        service: "test.slow".into(),
        payload: format!("call-{id}").into_bytes().into(),
        ..Default::default()
    };
    // Two calls with the same id, then half-close the sending side.
    let up = futures::stream::iter(vec![
        pb::CallStreamUp {
            calls: vec![frame(1)],
            cancels: vec![],
        },
        pb::CallStreamUp {
            calls: vec![frame(1), frame(2)],
            cancels: vec![],
        },
    ]);
    let mut down = node
        .raw()
        .await
        .call_stream(up)
        .await
        .expect("open")
        .into_inner();
    let mut replies = Vec::new();
    while let Some(f) = down.message().await.expect("frame") {
        replies.extend(f.replies);
        if replies.len() == 3 {
            break;
        }
    }
    let dup = replies
        .iter()
        .find(|r| r.error.is_some())
        .expect("duplicate refused");
    let err = dup.error.as_ref().expect("error");
    assert_eq!(err.code, Code::InvalidArgument as i32);
    assert!(err.message.contains("already in flight"), "{}", err.message);
    let mut ok: Vec<String> = replies
        .iter()
        .filter(|r| r.error.is_none())
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect();
    ok.sort();
    assert_eq!(
        ok,
        ["call-1", "call-2"],
        "half-closed stream still answered"
    );
}

#[tokio::test]
async fn a_provider_failure_without_a_code_becomes_unknown() {
    let node = Node::start().await;
    // A hand-written provider (as a Go or Python author might write one)
    // that leaves `Failure.code` at its proto default, 0 (OK).
    let (up_tx, mut down) = node.raw_provider("sloppy", "sloppy.fail").await;
    let provider = tokio::spawn(async move {
        while let Ok(Some(frame)) = down.message().await {
            for inv in frame.invocations {
                let _ = up_tx.send(pb::ProviderUp {
                    results: vec![pb::CallResult {
                        call_id: inv.call_id,
                        error: Some(pb::Failure {
                            code: 0,
                            message: "forgot the code".into(),
                            causality: vec![],
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                });
            }
        }
    });
    node.wait_providers("sloppy.fail", 1).await;
    let err = node
        .client()
        .call("sloppy.fail", "")
        .await
        .expect_err("a failure");
    assert_eq!(err.code(), Code::Unknown, "{err}");
    assert!(err.message().contains("forgot the code"));
    let err = node
        .raw()
        .await
        .call(unary("sloppy.fail", b""))
        .await
        .expect_err("a failure");
    assert_eq!(err.code(), Code::Unknown, "{err:?}");
    provider.abort();
}

/// The in-process fast path (a free slot, no span: the handler's future is
/// held inline by dispatch) keeps the general path's duties: an abandoned
/// call cancels the handler's context and drops its future, and its slot
/// and in-flight count are given back.
#[tokio::test]
async fn in_process_fast_path_abandoned_call_cancels_and_gives_back_its_slot() {
    let node = Node::start().await;
    let held = std::sync::Arc::new(std::sync::Mutex::new(None::<kernel_sdk::Context>));
    /// Says when the handler's future is dropped.
    struct Dropped(tokio::sync::mpsc::UnboundedSender<()>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    let (dropped_tx, mut dropped) = tokio::sync::mpsc::unbounded_channel::<()>();
    let keep = held.clone();
    let _reg = Plugin::new("slow")
        .max_concurrency(1)
        .provide("slow.wait", move |ctx, p: Bytes| {
            let (keep, dropped) = (keep.clone(), dropped_tx.clone());
            async move {
                if &p[..] == b"fast" {
                    return Ok(p);
                }
                let _dropped = Dropped(dropped);
                *keep.lock().expect("lock") = Some(ctx);
                // Deaf to the cancel: only dropping its future stops it.
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok(p)
            }
        })
        .attach(&node.kernel)
        .expect("attach");
    let local = Client::in_process(node.kernel.clone());
    let short = CallOptions {
        timeout: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    let started = Instant::now();
    let err = local
        .call_with("slow.wait", "wait", short)
        .await
        .expect_err("times out");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered at the deadline, not when the handler ended: {:?}",
        started.elapsed()
    );
    let ctx = held.lock().expect("lock").take().expect("handler ran");
    assert!(
        ctx.is_cancelled(),
        "the abandoned call's context is cancelled"
    );
    // The only slot is free again: a call that answers at once gets it.
    assert_eq!(local.call("slow.wait", "fast").await.expect("slot"), "fast");
    let instances = node.kernel.registry().instances();
    assert_eq!(instances.len(), 1);
    assert_eq!(
        instances[0]
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the abandoned call left the in-flight count"
    );
    tokio::time::timeout(Duration::from_secs(5), dropped.recv())
        .await
        .expect("the abandoned handler's future is dropped, long before it would end")
        .expect("the handler's future said so");
}

/// A handler that panics before it returns its future (here: indexing an
/// empty payload) fails that call `INTERNAL`, like one that panics while
/// it runs, and leaves nothing held: the provider's one slot, the caller's
/// one place under `router.max_in_flight_per_plugin` and the instance's
/// in-flight count are all free for the next call.
#[tokio::test]
async fn a_handler_panicking_before_its_future_fails_that_call_and_holds_nothing() {
    let mut config = Config::default();
    config.router.max_in_flight_per_plugin = 1;
    let node = Node::start_with(config).await;
    let _reg = Plugin::new("eager")
        .max_concurrency(1)
        .provide("eager.first", |_ctx, p: Bytes| {
            let first = p[0];
            async move { Ok::<_, Error>(Bytes::from(vec![first])) }
        })
        .attach(&node.kernel)
        .expect("attach");
    let caller = Client::in_process(node.kernel.clone()).with_plugin("caller");
    for _ in 0..3 {
        let err = caller.call("eager.first", "").await.expect_err("panics");
        assert_eq!(err.code(), Code::Internal, "{err}");
        assert!(err.message().contains("panicked"), "{err}");
    }
    assert_eq!(
        &caller
            .call("eager.first", "ok")
            .await
            .expect("a slot and a place")[..],
        b"o"
    );
    let instances = node.kernel.registry().instances();
    assert_eq!(
        instances[0]
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}
