//! Request contexts end to end: the tree, baggage, trace, deadlines,
//! cancellation, budgets, branch kill, causality, caller identity,
//! transaction scopes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kernel_node::config::Config;
use kernel_proto::v1::{self as pb, admin_client::AdminClient};
use kernel_sdk::{Bytes, CallOptions, Client, Context, Error, Plugin, SubscribeOptions};
use kernel_tests::{Node, PluginProcess};
use parking_lot::Mutex;
use tonic::Code;

fn req(service: &str) -> tonic::Request<pb::CallRequest> {
    tonic::Request::new(pb::CallRequest {
        service: service.into(),
        ..Default::default()
    })
}

/// Three plugin processes `pa` → `pb` → `pc` providing `<prefix>.a/b/c`:
/// the first two call on down the chain, the last runs `last_mode`.
async fn three_hops(node: &Node, prefix: &str, last_mode: &str) -> Vec<PluginProcess> {
    let (a, b, c) = (
        format!("{prefix}.a"),
        format!("{prefix}.b"),
        format!("{prefix}.c"),
    );
    let plugins = vec![
        PluginProcess::spawn(
            node,
            &[
                "--name",
                "pa",
                "--service",
                &a,
                "--mode",
                "chain",
                "--next",
                &b,
            ],
        ),
        PluginProcess::spawn(
            node,
            &[
                "--name",
                "pb",
                "--service",
                &b,
                "--mode",
                "chain",
                "--next",
                &c,
            ],
        ),
        PluginProcess::spawn(
            node,
            &["--name", "pc", "--service", &c, "--mode", last_mode],
        ),
    ];
    for s in [&a, &b, &c] {
        node.wait_providers(s, 1).await;
    }
    plugins
}

#[tokio::test]
async fn three_hop_chain_paths_baggage_and_one_trace() {
    let node = Node::start().await;
    let _plugins = three_hops(&node, "chain", "chain").await;
    let mut r = req("chain.a");
    r.metadata_mut()
        .insert("baggage", "tenant=acme".parse().expect("ascii"));
    r.metadata_mut().insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            .parse()
            .expect("ascii"),
    );
    let out = node.raw().await.call(r).await.expect("chain call");
    let hops: Vec<serde_json::Value> =
        serde_json::from_slice(&out.get_ref().payload).expect("json");
    assert_eq!(hops.len(), 3);
    let root = hops[0]["path"]
        .as_str()
        .expect("path")
        .split('.')
        .next()
        .expect("root")
        .to_owned();
    assert_eq!(root.len(), 16);
    for (i, want) in [".1", ".1.1", ".1.1.1"].iter().enumerate() {
        assert_eq!(hops[i]["path"], format!("{root}{want}"), "hop {i}");
        assert_eq!(
            hops[i]["trace_id"], "0af7651916cd43dd8448eb211c80319c",
            "hop {i}"
        );
    }
    assert_eq!(hops[2]["baggage"], "tenant=acme");
    assert_eq!(hops[1]["caller"], "pa");
    assert_eq!(hops[2]["caller"], "pb");

    // Without a traceparent the kernel starts one, still shared by every hop.
    let out = node
        .raw()
        .await
        .call(req("chain.a"))
        .await
        .expect("chain call");
    let hops: Vec<serde_json::Value> =
        serde_json::from_slice(&out.get_ref().payload).expect("json");
    let t = hops[0]["trace_id"].as_str().expect("trace id").to_owned();
    assert!(hops.iter().all(|h| h["trace_id"] == t.as_str()));
}

#[tokio::test]
async fn runaway_recursion_stops_at_depth_budget_and_others_carry_on() {
    let mut config = Config::default();
    config.budget.depth = 8;
    let node = Node::start_with(config).await;
    let _loop = PluginProcess::spawn(&node, &["--service", "loop.me", "--mode", "recurse"]);
    let _ok = PluginProcess::spawn(&node, &["--service", "fine.echo"]);
    node.wait_providers("loop.me", 1).await;
    node.wait_providers("fine.echo", 1).await;
    let client = node.client();
    let c = client.clone();
    let runaway = tokio::spawn(async move { c.call("loop.me", "x").await });
    let unrelated = client
        .call("fine.echo", "y")
        .await
        .expect("unrelated request succeeds");
    assert_eq!(unrelated, "y");
    let err = runaway.await.expect("join").expect_err("stopped");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("depth"), "{err}");
    // The path of the call that went one level too deep: 9 numbers below the root.
    let msg = err.message();
    let path = msg
        .split("context ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("path in message");
    assert_eq!(path.split('.').count(), 1 + 8, "{msg}");
    assert_eq!(
        client
            .call("fine.echo", "z")
            .await
            .expect("node keeps serving"),
        "z"
    );
}

#[tokio::test]
async fn custom_sql_budget_kills_the_charging_branch_not_its_sibling() {
    let mut config = Config::default();
    config.budget.custom.insert("sql".into(), 50);
    let node = Node::start_with(config).await;
    let mut charger = PluginProcess::spawn(&node, &["--service", "sql.heavy", "--mode", "charge"]);
    let _sibling = PluginProcess::spawn(
        &node,
        &[
            "--service",
            "sql.light",
            "--mode",
            "whoami",
            "--instance",
            "sibling",
            "--delay-ms",
            "300",
        ],
    );
    node.wait_providers("sql.heavy", 1).await;
    node.wait_providers("sql.light", 1).await;
    let _root = Plugin::new("root")
        .provide("sql.root", |ctx: Context, _p: Bytes| async move {
            let (heavy, light) = tokio::join!(ctx.call("sql.heavy", ""), ctx.call("sql.light", ""));
            let heavy = heavy.err().map(|e| e.to_string()).unwrap_or_default();
            let light = light?;
            Ok(Bytes::from(
                serde_json::json!({ "heavy": heavy, "light": String::from_utf8_lossy(&light) })
                    .to_string(),
            ))
        })
        .attach(&node.kernel)
        .expect("attach root");
    let out = node
        .client()
        .call("sql.root", "")
        .await
        .expect("root completes");
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(v["light"], "sibling", "the sibling branch finished");
    let heavy = v["heavy"].as_str().expect("heavy error");
    assert!(
        heavy.contains("ResourceExhausted") && heavy.contains("sql"),
        "{heavy}"
    );
    let line = charger
        .expect_line("CHARGE_FAILED", Duration::from_secs(5))
        .await;
    assert!(line.starts_with("CHARGE_FAILED 51 "), "{line}");
    assert!(
        line.ends_with("cancelled=true"),
        "the charging branch was cancelled: {line}"
    );
}

/// Records when each in-process handler saw its context cancelled.
#[derive(Default)]
struct Seen {
    cancelled: Mutex<Vec<(String, Instant)>>,
    started: Mutex<Vec<String>>,
}

fn watching(seen: &Arc<Seen>, ctx: &Context) {
    seen.started.lock().push(ctx.path().to_owned());
    let (seen, ctx) = (seen.clone(), ctx.clone());
    tokio::spawn(async move {
        ctx.cancelled().await;
        seen.cancelled
            .lock()
            .push((ctx.service().to_owned(), Instant::now()));
    });
}

async fn cancel_chain(
    node: &Node,
    seen: &Arc<Seen>,
) -> (kernel_core::LocalRegistration, PluginProcess) {
    let s1 = seen.clone();
    let s2 = seen.clone();
    let reg = Plugin::new("chain")
        .provide("cx.a", move |ctx: Context, p: Bytes| {
            let seen = s1.clone();
            async move {
                watching(&seen, &ctx);
                ctx.call("cx.b", p).await
            }
        })
        .provide("cx.b", move |ctx: Context, p: Bytes| {
            let seen = s2.clone();
            async move {
                watching(&seen, &ctx);
                ctx.call("cx.c", p).await
            }
        })
        .attach(&node.kernel)
        .expect("attach");
    let p = PluginProcess::spawn(node, &["--service", "cx.c", "--mode", "hang"]);
    node.wait_providers("cx.c", 1).await;
    (reg, p)
}

#[tokio::test]
async fn caller_cancel_mid_chain_reaches_every_hop() {
    let node = Node::start().await;
    let seen = Arc::new(Seen::default());
    let (_reg, mut bottom) = cancel_chain(&node, &seen).await;
    let client = node.client();
    let call = tokio::spawn(async move { client.call("cx.a", "").await });
    bottom.expect_line("STARTED", Duration::from_secs(5)).await;
    let cancelled_at = Instant::now();
    call.abort();
    bottom
        .expect_line("CANCELLED", Duration::from_secs(5))
        .await;
    let bottom_after = cancelled_at.elapsed();
    kernel_tests::wait_until(
        Duration::from_secs(5),
        "both in-process hops cancelled",
        || seen.cancelled.lock().len() == 2,
    )
    .await;
    let worst = seen
        .cancelled
        .lock()
        .iter()
        .map(|(_, t)| t.duration_since(cancelled_at))
        .max()
        .unwrap_or_default()
        .max(bottom_after);
    eprintln!("caller cancel reached every hop in {worst:?}");
    // Prompt (the calls have no deadline to end them otherwise); the bound
    // leaves room for a loaded machine, the figure is printed above.
    assert!(worst < Duration::from_secs(3), "{worst:?}");
}

#[tokio::test]
async fn operator_cancel_context_kills_a_branch() {
    let node = Node::start().await;
    let seen = Arc::new(Seen::default());
    let (_reg, mut bottom) = cancel_chain(&node, &seen).await;
    let client = node.client();
    let call = tokio::spawn(async move { client.call("cx.a", "").await });
    let started = bottom.expect_line("STARTED", Duration::from_secs(5)).await;
    let c_path = started.trim_start_matches("STARTED ").to_owned();
    let b_path = c_path.rsplit_once('.').expect("parent").0.to_owned();
    let root = c_path.split('.').next().expect("root").to_owned();

    let mut admin = AdminClient::connect(node.url.clone()).await.expect("admin");
    let tree = admin
        .get_context(pb::GetContextRequest { root: root.clone() })
        .await
        .expect("get context")
        .into_inner();
    let paths: Vec<&str> = tree.nodes.iter().map(|n| n.path.as_str()).collect();
    assert_eq!(
        paths,
        [format!("{root}.1"), b_path.clone(), c_path.clone()],
        "live tree"
    );
    assert_eq!(tree.nodes[2].service, "cx.c");

    let t0 = Instant::now();
    let r = admin
        .cancel_context(pb::CancelContextRequest {
            path: b_path.clone(),
        })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(r.cancelled, 2, "b and c");
    bottom
        .expect_line("CANCELLED", Duration::from_secs(2))
        .await;
    eprintln!(
        "operator cancel reached the bottom hop in {:?}",
        t0.elapsed()
    );
    let err = call.await.expect("join").expect_err("branch killed");
    assert_eq!(err.code(), Code::Cancelled, "{err}");
    assert!(err.message().contains("operator"), "{err}");
    let cancelled: Vec<String> = seen
        .cancelled
        .lock()
        .iter()
        .map(|(s, _)| s.clone())
        .collect();
    assert!(cancelled.contains(&"cx.b".to_owned()), "{cancelled:?}");
    let err = admin
        .cancel_context(pb::CancelContextRequest { path: b_path })
        .await
        .expect_err("gone now");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn deadline_across_three_hops_never_starts_the_third_late() {
    let node = Node::start().await;
    let third_started = Arc::new(AtomicUsize::new(0));
    let t = third_started.clone();
    let _reg = Plugin::new("slow")
        .provide("dl.a", |ctx: Context, p: Bytes| async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            ctx.call("dl.b", p).await
        })
        .provide("dl.b", |ctx: Context, p: Bytes| async move {
            // Not cancellation-aware on purpose: it tries to call on regardless.
            let r = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                ctx.call("dl.c", p).await
            });
            r.await.map_err(|e| Error::internal(e.to_string()))?
        })
        .provide("dl.c", move |_ctx: Context, p: Bytes| {
            let t = t.clone();
            async move {
                t.fetch_add(1, Ordering::SeqCst);
                Ok(p)
            }
        })
        .attach(&node.kernel)
        .expect("attach");
    let opts = CallOptions {
        timeout: Some(Duration::from_millis(50)),
        ..Default::default()
    };
    let err = node
        .client()
        .call_with("dl.a", "", opts)
        .await
        .expect_err("deadline");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    // Give the detached task time to try the third hop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        third_started.load(Ordering::SeqCst),
        0,
        "the third hop must not start"
    );
}

#[tokio::test]
async fn spoofed_caller_header_is_replaced() {
    let node = Node::start().await;
    let _p = PluginProcess::spawn(&node, &["--service", "who.info", "--mode", "info"]);
    node.wait_providers("who.info", 1).await;
    let mut r = req("who.info");
    r.metadata_mut()
        .insert("x-kernel-caller", "root-admin".parse().expect("ascii"));
    r.metadata_mut()
        .insert("x-kernel-plugin", "billing".parse().expect("ascii"));
    let out = node.raw().await.call(r).await.expect("call");
    let v: serde_json::Value = serde_json::from_slice(&out.get_ref().payload).expect("json");
    assert_eq!(v["caller"], "billing");
    let mut r = req("who.info");
    r.metadata_mut()
        .insert("x-kernel-caller", "root-admin".parse().expect("ascii"));
    let out = node.raw().await.call(r).await.expect("call");
    let v: serde_json::Value = serde_json::from_slice(&out.get_ref().payload).expect("json");
    assert_eq!(
        v["caller"],
        serde_json::Value::Null,
        "a client-sent caller is ignored"
    );
}

#[tokio::test]
async fn transaction_scope_commits_in_order_or_not_at_all() {
    let node = Node::start().await;
    let _reg = Plugin::new("orders")
        .provide("tx.place", |ctx: Context, p: Bytes| async move {
            let mut tx = ctx.begin();
            for i in 0..5 {
                tx.emit("order.line", format!("{i}"));
            }
            if &p[..] == b"fail" {
                tx.rollback();
                return Err(Error::new(Code::Aborted, "payment declined"));
            }
            tx.commit().await.map_err(|(_, e)| e)?;
            Ok(Bytes::from_static(b"placed"))
        })
        .attach(&node.kernel)
        .expect("attach");
    let client = node.client();
    let mut sub = client
        .subscriber(SubscribeOptions::new("order.*"))
        .await
        .expect("subscribe");
    let err = client
        .call("tx.place", "fail")
        .await
        .expect_err("rolled back");
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(
        client.call("tx.place", "ok").await.expect("committed"),
        "placed"
    );
    let mut got = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        got.push(String::from_utf8_lossy(&e.payload).into_owned());
        assert!(e
            .headers
            .get("x-kernel-context")
            .is_some_and(|c| c.contains('.')));
    }
    assert_eq!(
        got,
        ["0", "1", "2", "3", "4"],
        "only the committed scope, in order"
    );
}

#[tokio::test]
async fn causality_chain_shows_where_a_failure_started() {
    let node = Node::start().await;
    let _plugins = three_hops(&node, "cause", "fail").await;
    let err = node
        .client()
        .call("cause.a", "")
        .await
        .expect_err("fails two hops down");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let chain: Vec<(&str, &str)> = err
        .causality()
        .iter()
        .map(|h| (h.service.as_str(), h.plugin.as_str()))
        .collect();
    assert_eq!(
        chain,
        [("cause.c", "pc"), ("cause.b", "pb"), ("cause.a", "pa")],
        "{err}"
    );
    let origin = &err.causality()[0];
    assert_eq!(
        origin.context.split('.').count(),
        4,
        "origin path {}",
        origin.context
    );
    assert!(err.to_string().contains("cause.c (pc)"), "{err}");
    // In-process callers see the same chain.
    let local = Client::in_process(node.kernel.clone());
    let err = local.call("cause.a", "").await.expect_err("fails");
    assert_eq!(err.causality().len(), 3, "{err}");
    // Unary callers get the same chain in the status details and message.
    let status = node
        .raw()
        .await
        .call(req("cause.a"))
        .await
        .expect_err("fails");
    assert!(
        status.message().contains("origin: cause.c"),
        "{}",
        status.message()
    );
    let f = kernel_proto::failure::status_to_failure(&status);
    assert_eq!(f.causality.len(), 3);
}

#[tokio::test]
async fn events_budget_stops_emits_and_cancels_the_emitting_branch() {
    let mut config = Config::default();
    config.budget.events = 2;
    let node = Node::start_with(config).await;
    let _reg = Plugin::new("chatty")
        .provide("chatty.emit", |ctx: Context, _p: Bytes| async move {
            ctx.emit("chatty.said", "1").await?;
            ctx.emit("chatty.said", "2").await?;
            let third = ctx.emit("chatty.said", "3").await.expect_err("over budget");
            Ok(Bytes::from(format!(
                "{}|cancelled={}",
                third,
                ctx.is_cancelled()
            )))
        })
        .attach(&node.kernel)
        .expect("attach");
    // The third emit fails naming the budget, and the emitting branch (the
    // handler's own context) is cancelled.
    let out = node
        .client()
        .call("chatty.emit", "")
        .await
        .expect("handler answers");
    let out = String::from_utf8_lossy(&out).into_owned();
    assert!(
        out.contains("ResourceExhausted") && out.contains("`events`"),
        "{out}"
    );
    assert!(out.ends_with("cancelled=true"), "{out}");
}
