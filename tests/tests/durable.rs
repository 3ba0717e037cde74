//! Durable subscriptions end to end: a real node process with a real
//! PostgreSQL. Events published while the subscriber is away arrive when
//! it is back, also across a node killed with SIGKILL, with its unacked
//! events redelivered under the same ids; a full backlog, a lost database
//! and a misuse each get their status; Admin lists and deletes.

use std::time::Duration;

use kernel_proto::v1::{self as pb, admin_client::AdminClient};
use kernel_sdk::{Client, Code, Event, SubscribeOptions, Subscriber};
use kernel_tests::pg::{node_on, ready, TestDb};
use kernel_tests::{eventually, free_addr, http_get, NodeProcess};

async fn node(db: &str, admin: &str, extra: &[(&str, &str)]) -> NodeProcess {
    let mut env = vec![("KERNEL_OUTBOX__START_DELAY_MS", "0")];
    env.extend_from_slice(extra);
    let node = node_on(db, admin, &env).await;
    ready(admin).await;
    node
}

async fn durable(
    client: &Client,
    name: &str,
    pattern: &str,
) -> Result<Subscriber, kernel_sdk::Error> {
    client
        .subscriber(SubscribeOptions::new(pattern).durable(name).window(2_000))
        .await
}

async fn next(sub: &mut Subscriber) -> Event {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an event within 10 s")
        .expect("subscription open")
}

async fn durables(url: &str) -> Vec<pb::DurableInfo> {
    AdminClient::connect(url.to_owned())
        .await
        .expect("admin")
        .list_durables(pb::ListDurablesRequest {})
        .await
        .expect("list")
        .into_inner()
        .durables
}

/// Waits until durable `name` shows `backlog` and `connected` in Admin.
async fn wait_durable(url: &str, name: &str, backlog: u64, connected: bool) {
    eventually(
        Duration::from_secs(10),
        &format!("{name}: backlog {backlog}, connected {connected}"),
        || async {
            let all = durables(url).await;
            match all.iter().find(|d| d.name == name) {
                Some(d) if d.backlog == backlog && d.connected == connected => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_while_away_arrive_also_across_a_sigkill() {
    let db = TestDb::create().await;
    let admin = free_addr();
    let mut n = node(&db.url, &admin, &[]).await;
    let client = Client::connect(&n.url).expect("client");
    let mut sub = durable(&client, "audit", "acct.>").await.expect("durable");
    client.publish("acct.x", "0").await.expect("publish");
    let first = next(&mut sub).await;
    sub.ack(&first);
    wait_durable(&n.url, "audit", 0, true).await;
    drop(sub);
    wait_durable(&n.url, "audit", 0, false).await;
    // Away: 1,000 events, each kept before its publisher is answered.
    for i in 1..=1_000 {
        client
            .publish("acct.x", format!("{i}"))
            .await
            .expect("publish");
    }
    client
        .publish("other.x", "not wanted")
        .await
        .expect("publish");
    wait_durable(&n.url, "audit", 1_000, false).await;
    let mut sub = durable(&client, "audit", "acct.>").await.expect("back");
    let mut unacked = Vec::new();
    for i in 1..=1_000 {
        let e = next(&mut sub).await;
        assert_eq!(
            String::from_utf8_lossy(&e.payload),
            i.to_string(),
            "in publish order"
        );
        if i > 990 {
            unacked.push(e.id.clone());
        } else {
            sub.ack(&e);
        }
    }
    wait_durable(&n.url, "audit", 10, true).await;
    // The node dies with 10 events delivered and not acked.
    n.child.kill().await.expect("SIGKILL");
    drop(sub);
    n = node(&db.url, &admin, &[]).await;
    let client = Client::connect(&n.url).expect("client");
    for i in 1_001..=1_005 {
        client
            .publish("acct.x", format!("{i}"))
            .await
            .expect("publish");
    }
    let mut sub = durable(&client, "audit", "acct.>")
        .await
        .expect("after the restart");
    let mut again = Vec::new();
    let mut payloads = Vec::new();
    for _ in 0..15 {
        let e = next(&mut sub).await;
        payloads.push(String::from_utf8_lossy(&e.payload).into_owned());
        again.push(e.id.clone());
        sub.ack(&e);
    }
    let want: Vec<String> = (991..=1_005).map(|i| i.to_string()).collect();
    assert_eq!(payloads, want);
    assert_eq!(&again[..10], &unacked[..], "redelivered under the same ids");
    wait_durable(&n.url, "audit", 0, true).await;
}

#[tokio::test]
async fn misuse_a_full_backlog_and_deletion_get_their_answers() {
    // Without a database.
    let plain = NodeProcess::start(&[]).await;
    let e = durable(&Client::connect(&plain.url).expect("client"), "x", "a.>")
        .await
        .expect_err("no database");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    drop(plain);

    let db = TestDb::create().await;
    let admin = free_addr();
    let n = node(&db.url, &admin, &[("KERNEL_DURABLE__MAX_BACKLOG", "5")]).await;
    let client = Client::connect(&n.url).expect("client");
    let sub = durable(&client, "ledger", "led.>").await.expect("durable");
    let twice = durable(&client, "ledger", "led.>")
        .await
        .expect_err("one subscriber at a time");
    assert_eq!(twice.code(), Code::FailedPrecondition, "{twice}");
    let bad = durable(&client, "bad name!", "led.>")
        .await
        .expect_err("a bad name");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad}");
    drop(sub);
    wait_durable(&n.url, "ledger", 0, false).await;
    let other = durable(&client, "ledger", "other.>")
        .await
        .expect_err("patterns are fixed");
    assert_eq!(other.code(), Code::FailedPrecondition, "{other}");
    for i in 0..5 {
        client
            .publish("led.x", format!("{i}"))
            .await
            .expect("within the backlog");
    }
    let full = client
        .publish("led.x", "6")
        .await
        .expect_err("the backlog is full");
    assert_eq!(full.code(), Code::ResourceExhausted, "{full}");
    assert!(full.message().contains("ledger"), "{full}");
    let (_, metrics) = http_get(&admin, "/metrics").await.expect("metrics");
    assert!(
        metrics.contains("kernel_durable_backlog{durable=\"ledger\"} 5"),
        "{metrics}"
    );
    let deleted = AdminClient::connect(n.url.clone())
        .await
        .expect("admin")
        .delete_durable(pb::DeleteDurableRequest {
            name: "ledger".into(),
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(deleted.deleted_events, 5);
    assert!(durables(&n.url).await.is_empty());
    client
        .publish("led.x", "7")
        .await
        .expect("nobody keeps it now");
}

#[tokio::test]
async fn a_lost_database_fails_durable_publishes_only() {
    let db = TestDb::create().await;
    let admin = free_addr();
    let n = node(&db.url, &admin, &[]).await;
    let client = Client::connect(&n.url).expect("client");
    drop(durable(&client, "keep", "keep.>").await.expect("durable"));
    wait_durable(&n.url, "keep", 0, false).await;
    let name = db.url.rsplit('/').next().expect("db name").to_owned();
    let pg = kernel_tests::pg::connect(&db.url.replace(&format!("/{name}"), "/postgres")).await;
    pg.batch_execute(&format!(
        "ALTER DATABASE {name} ALLOW_CONNECTIONS false; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .await
    .expect("cut the database off");
    let e = client
        .publish("keep.x", "1")
        .await
        .expect_err("cannot be kept");
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    assert!(e.message().contains(&name), "names the database: {e}");
    client
        .publish("mem.x", "1")
        .await
        .expect("in-memory traffic goes on");
    pg.batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .await
        .expect("back");
    eventually(
        Duration::from_secs(15),
        "durable publishes again",
        || async {
            client
                .publish("keep.x", "2")
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        },
    )
    .await;
}

/// The Python SDK's `durable=`: a Python subscriber gets what was published
/// while it was away (needs the environment `make test` prepares).
#[tokio::test]
async fn a_python_durable_subscriber_gets_what_it_missed() {
    let python = std::env::var("KERNEL_TEST_PYTHON")
        .expect("KERNEL_TEST_PYTHON is not set: run the tests with `make test`");
    let db = TestDb::create().await;
    let admin = free_addr();
    let n = node(&db.url, &admin, &[]).await;
    let script = r#"
import asyncio, sys
from kernel_sdk import Client

async def main() -> None:
    client = Client(sys.argv[1])
    sub = await client.subscribe("py.>", durable="pyaudit")
    if sys.argv[2] == "open":
        print("opened", flush=True)
        return
    got = []
    while len(got) < 3:
        event = await asyncio.wait_for(sub.next(), 10)
        got.append(event.payload.decode())
        sub.ack(event)
    await sub.close()  # sends the acks before it goes
    print("got", ",".join(got), flush=True)

asyncio.run(main())
"#;
    let run = |mode: &'static str| {
        let (python, url) = (python.clone(), n.url.clone());
        async move {
            tokio::process::Command::new(python)
                .args(["-c", script, &url, mode])
                .env(
                    "PYTHONPATH",
                    std::env::var("KERNEL_TEST_PYTHONPATH").unwrap_or_default(),
                )
                .output()
                .await
                .expect("python runs")
        }
    };
    let out = run("open").await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("opened"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_durable(&n.url, "pyaudit", 0, false).await;
    let client = Client::connect(&n.url).expect("client");
    for p in ["a", "b", "c"] {
        client.publish("py.x", p).await.expect("publish");
    }
    let out = run("read").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("got a,b,c"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_durable(&n.url, "pyaudit", 0, false).await;
}

/// A publish stream (the bulk publisher) to a durable topic: events are
/// accepted while earlier ones are still being written, and every one is
/// stored, in order, before the stream answers it.
#[tokio::test]
async fn a_publish_stream_keeps_every_event_in_order() {
    let db = TestDb::create().await;
    let admin = free_addr();
    let n = node(&db.url, &admin, &[]).await;
    let client = Client::connect(&n.url).expect("client");
    drop(durable(&client, "stream", "bulk.>").await.expect("durable"));
    wait_durable(&n.url, "stream", 0, false).await;
    let mut bulk = client.bulk_publisher().await.expect("bulk").window(512);
    for i in 0..3_000 {
        bulk.publish("bulk.x", format!("{i}"))
            .await
            .expect("publish");
    }
    assert!(
        bulk.flush().await.expect("flush").is_empty(),
        "nothing refused"
    );
    // Every answered event is stored already.
    let stored = durables(&n.url).await;
    assert_eq!(stored[0].backlog, 3_000, "{stored:?}");
    let mut sub = durable(&client, "stream", "bulk.>").await.expect("back");
    for i in 0..3_000 {
        let e = next(&mut sub).await;
        assert_eq!(String::from_utf8_lossy(&e.payload), i.to_string());
        sub.ack(&e);
    }
    wait_durable(&n.url, "stream", 0, true).await;
}
