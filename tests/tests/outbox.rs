//! The PostgreSQL outbox end to end: a real node process with
//! `KERNEL_DATABASE_URL`, a real PostgreSQL (a database per test), real
//! subscribers over gRPC. Commit delivers, rollback never does, a node
//! killed mid-relay loses nothing, two nodes never relay one row twice, and
//! the node waits out a database that is not there yet.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use kernel_sdk::{
    CancellationToken, Client, Context, Error, Event, Plugin, SubscribeOptions, Subscriber,
};
use kernel_tests::pg::{node_on, ready, TestDb};
use kernel_tests::{eventually, free_addr, http_get, NodeProcess};

/// A node on `db` with its admin port at `admin`; `delay` = the relay's
/// start delay.
async fn node(db: &str, admin: &str, delay_ms: u64) -> NodeProcess {
    let delay = delay_ms.to_string();
    node_on(
        db,
        admin,
        &[
            ("KERNEL_OUTBOX__START_DELAY_MS", &delay),
            ("KERNEL_OUTBOX__POLL_MS", "200"),
        ],
    )
    .await
}

async fn subscriber(url: &str, pattern: &str) -> Subscriber {
    let client = Client::connect(url).expect("client");
    eventually(Duration::from_secs(10), "a subscription", || {
        let client = client.clone();
        async move {
            client
                .subscriber(SubscribeOptions::new(pattern).explicit_ack().window(4096))
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await
}

async fn drain(sub: &mut Subscriber, quiet: Duration) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(quiet, sub.next()).await {
        sub.ack(&e);
        out.push(e);
    }
    out
}

/// The shop's handler: its own row and an `orders.placed` event in one
/// transaction, then what the payload says.
async fn place(db: String, ctx: Context, how: Bytes) -> Result<Bytes, Error> {
    let mut client = kernel_tests::pg::connect(&db).await;
    let how = String::from_utf8_lossy(&how).into_owned();
    let mut tx = ctx.begin_pg(&mut client).await?;
    tx.sql()
        .execute("INSERT INTO orders (how) VALUES ($1)", &[&how])
        .await
        .map_err(|e| Error::internal(e.to_string()))?;
    tx.emit("orders.placed", how.clone());
    match how.as_str() {
        "commit" => tx.commit().await?,
        "rollback" => tx.rollback().await?,
        "error" => return Err(Error::invalid_argument("the order is refused")),
        _ => panic!("the handler panics inside its transaction"),
    }
    Ok(Bytes::from(how))
}

#[tokio::test]
async fn commit_delivers_once_rollback_error_and_panic_never() {
    let db = TestDb::create().await;
    let admin = free_addr();
    let node = node(&db.url, &admin, 0).await;
    ready(&admin).await;
    db.connect()
        .await
        .batch_execute("CREATE TABLE orders (id serial PRIMARY KEY, how text NOT NULL)")
        .await
        .expect("orders table");
    let mut sub = subscriber(&node.url, "orders.>").await;
    let stop = CancellationToken::new();
    let url = db.url.clone();
    let shop =
        Plugin::new("shop").provide("shop.place", move |ctx, how| place(url.clone(), ctx, how));
    let (node_url, shop_stop) = (node.url.clone(), stop.clone());
    tokio::spawn(async move { shop.serve(&node_url, shop_stop).await });
    let client = Client::connect(&node.url).expect("client");
    eventually(Duration::from_secs(10), "the shop serving", || {
        let client = client.clone();
        async move {
            client
                .call("shop.place", "commit")
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await;
    client
        .call("shop.place", "rollback")
        .await
        .expect("a rollback is the handler's choice");
    for how in ["error", "panic"] {
        let e = client.call("shop.place", how).await.expect_err(how);
        assert!(!e.message().is_empty(), "{how}: {e}");
    }
    let got = drain(&mut sub, Duration::from_millis(1500)).await;
    let payloads: Vec<String> = got
        .iter()
        .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
        .collect();
    assert_eq!(
        payloads,
        ["commit"],
        "only the committed event is delivered, once"
    );
    let event = &got[0];
    assert_eq!(event.topic, "orders.placed");
    assert_eq!(event.id.len(), 16);
    assert!(
        event
            .id
            .starts_with(['8', '9', 'a', 'b', 'c', 'd', 'e', 'f']),
        "an outbox id: {}",
        event.id
    );
    assert!(
        event.headers.contains_key("x-kernel-emitted-in"),
        "the emitting context is kept: {:?}",
        event.headers
    );
    let rows = db
        .connect()
        .await
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("count")
        .get::<_, i64>(0);
    assert_eq!(rows, 1, "the SQL rolled back with the events");
    let left = db
        .connect()
        .await
        .query_one("SELECT count(*) FROM kernel.outbox", &[])
        .await
        .expect("outbox")
        .get::<_, i64>(0);
    assert_eq!(left, 0, "a relayed row is deleted");
    let (_, metrics) = http_get(&admin, "/metrics").await.expect("metrics");
    assert!(
        metrics.contains("kernel_outbox_relayed_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("kernel_database_up 1"), "{metrics}");
    stop.cancel();
}

/// A row written with the documented SQL (what a plugin in any language
/// does), and one the bus can never accept.
#[tokio::test]
async fn documented_sql_rows_are_relayed_and_bad_rows_set_aside() {
    let db = TestDb::create().await;
    let admin = free_addr();
    let node = node(&db.url, &admin, 0).await;
    ready(&admin).await;
    let mut sub = subscriber(&node.url, "billing.>").await;
    let pg = db.connect().await;
    pg.batch_execute(
        "BEGIN;
         INSERT INTO kernel.outbox (topic, payload, content_type, headers)
         VALUES ('billing.invoiced', 'inv-1', 'text/plain',
                 '{\"traceparent\": \"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\"}');
         INSERT INTO kernel.outbox (topic, payload) VALUES ('billing..bad', 'x');
         INSERT INTO kernel.outbox (topic, payload) VALUES ('billing.paid', 'inv-1');
         COMMIT;",
    )
    .await
    .expect("documented insert");
    let got = drain(&mut sub, Duration::from_millis(1500)).await;
    let topics: Vec<&str> = got.iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(
        topics,
        ["billing.invoiced", "billing.paid"],
        "in insertion order"
    );
    assert_eq!(got[0].content_type, "text/plain");
    let rejected = pg
        .query_one("SELECT topic, reason FROM kernel.outbox_rejected", &[])
        .await
        .expect("the bad row set aside");
    assert_eq!(rejected.get::<_, String>(0), "billing..bad");
    assert!(
        rejected.get::<_, String>(1).contains("empty"),
        "{}",
        rejected.get::<_, String>(1)
    );
}

/// 10,000 events in 500 transactions (every tenth rolled back) while the
/// node is killed (SIGKILL) mid-relay twice: every committed event arrives
/// at least once, none rolled back does, a duplicate keeps its id, and a
/// transaction's events arrive in order on each node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_relay_loses_no_committed_event() {
    let db = TestDb::create().await;
    let admin = free_addr();
    let mut node_a = node(&db.url, &admin, 0).await;
    ready(&admin).await;
    // Subscribed before the first commit: the relay starts at once, and an
    // event published before anyone subscribes is settled unseen.
    let mut sub = subscriber(&node_a.url, "load.>").await;
    let pg = db.connect().await;
    let writer = tokio::spawn(async move {
        let mut committed = HashSet::new();
        for t in 0..500u32 {
            let rollback = t % 10 == 9;
            let mut sql = String::from("BEGIN;");
            for s in 0..20u32 {
                sql.push_str(&format!(
                    "INSERT INTO kernel.outbox (topic, payload) VALUES ('load.t{t}', '{t}:{s}');"
                ));
                if !rollback {
                    committed.insert(format!("{t}:{s}"));
                }
            }
            sql.push_str(if rollback { "ROLLBACK;" } else { "COMMIT;" });
            pg.batch_execute(&sql).await.expect("write");
            if t % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        committed
    });
    let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
    for round in 0..3 {
        let mut session: HashMap<String, Vec<u32>> = HashMap::new();
        let want = if round < 2 { 2_000 } else { usize::MAX };
        let mut n = 0;
        while n < want {
            let quiet = if round < 2 { 20 } else { 3 };
            let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(quiet), sub.next()).await
            else {
                break;
            };
            sub.ack(&e);
            let body = String::from_utf8_lossy(&e.payload).into_owned();
            let (t, s) = body.split_once(':').expect("t:s");
            session
                .entry(t.to_owned())
                .or_default()
                .push(s.parse().expect("seq"));
            seen.entry(body).or_default().insert(e.id.clone());
            n += 1;
        }
        for (t, seqs) in &session {
            let mut firsts = Vec::new();
            for s in seqs {
                if !firsts.contains(s) {
                    firsts.push(*s);
                }
            }
            assert!(
                firsts.windows(2).all(|w| w[0] < w[1]),
                "transaction {t} out of order: {seqs:?}"
            );
        }
        if round < 2 {
            node_a.child.kill().await.expect("SIGKILL");
            // The relay waits 1.5 s, so the new subscription is open first.
            node_a = node(&db.url, &admin, 1_500).await;
            sub = subscriber(&node_a.url, "load.>").await;
        }
    }
    let committed = writer.await.expect("writer");
    let left: i64 = db
        .connect()
        .await
        .query_one("SELECT count(*) FROM kernel.outbox", &[])
        .await
        .expect("outbox")
        .get(0);
    assert_eq!(left, 0, "everything relayed");
    let missing: Vec<&String> = committed
        .iter()
        .filter(|k| !seen.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "{} committed events never arrived, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let extra: Vec<&String> = seen.keys().filter(|k| !committed.contains(*k)).collect();
    assert!(extra.is_empty(), "rolled-back events arrived: {extra:?}");
    for (k, ids) in &seen {
        assert_eq!(ids.len(), 1, "{k} arrived under several ids: {ids:?}");
    }
}

/// Two nodes on one database: each committed row is relayed by one of
/// them, never both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_never_relay_one_row_twice() {
    let db = TestDb::create().await;
    let (admin_a, admin_b) = (free_addr(), free_addr());
    let a = node(&db.url, &admin_a, 0).await;
    let b = node(&db.url, &admin_b, 0).await;
    ready(&admin_a).await;
    ready(&admin_b).await;
    let mut sub_a = subscriber(&a.url, "two.>").await;
    let mut sub_b = subscriber(&b.url, "two.>").await;
    let pg = db.connect().await;
    for t in 0..100 {
        let mut sql = String::from("BEGIN;");
        for s in 0..20 {
            sql.push_str(&format!(
                "INSERT INTO kernel.outbox (topic, payload) VALUES ('two.x', '{t}:{s}');"
            ));
        }
        sql.push_str("COMMIT;");
        pg.batch_execute(&sql).await.expect("write");
    }
    let (got_a, got_b) = tokio::join!(
        drain(&mut sub_a, Duration::from_secs(2)),
        drain(&mut sub_b, Duration::from_secs(2))
    );
    let mut all: Vec<String> = got_a
        .iter()
        .chain(&got_b)
        .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
        .collect();
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(
        all.len(),
        2_000,
        "every row relayed ({} by a, {} by b)",
        got_a.len(),
        got_b.len()
    );
    assert_eq!(
        total,
        2_000,
        "no row relayed twice ({} by a, {} by b)",
        got_a.len(),
        got_b.len()
    );
}

/// Started while the database is not there: not ready, naming it; ready
/// once it appears, then the relay works.
#[tokio::test]
async fn the_node_waits_for_its_database() {
    let db = TestDb::create().await;
    let missing = format!("{}_later", db.url);
    let name = missing.rsplit('/').next().expect("db name").to_owned();
    let admin = free_addr();
    let node = node(&missing, &admin, 0).await;
    let body = eventually(Duration::from_secs(10), "a not-ready answer", || async {
        match http_get(&admin, "/readyz").await {
            Some((503, body)) if body.contains("database") => Ok(body),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(body.contains(&name), "names the database: {body}");
    // In-memory traffic goes on meanwhile.
    let client = Client::connect(&node.url).expect("client");
    client
        .publish("mem.ok", "x")
        .await
        .expect("in-memory publish");
    db.connect()
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create it");
    ready(&admin).await;
    let mut sub = subscriber(&node.url, "late.>").await;
    kernel_tests::pg::connect(&missing)
        .await
        .batch_execute("INSERT INTO kernel.outbox (topic, payload) VALUES ('late.one', 'x')")
        .await
        .expect("insert");
    let got = drain(&mut sub, Duration::from_secs(2)).await;
    assert_eq!(got.len(), 1);
    // Lost while running: the relay's connection is cut; the node says so,
    // reconnects, and relays again.
    db.connect()
        .await
        .batch_execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        ))
        .await
        .expect("cut the relay's connection");
    client
        .publish("mem.ok", "y")
        .await
        .expect("in-memory publish goes on");
    ready(&admin).await;
    kernel_tests::pg::connect(&missing)
        .await
        .batch_execute("INSERT INTO kernel.outbox (topic, payload) VALUES ('late.two', 'y')")
        .await
        .expect("insert");
    let got = drain(&mut sub, Duration::from_secs(3)).await;
    assert_eq!(got.len(), 1, "the relay resumed");
    assert_eq!(got[0].topic, "late.two");
    db.connect()
        .await
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .expect("drop");
}
