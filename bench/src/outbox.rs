//! The PostgreSQL outbox rows of `make bench`: commit → subscriber delivery
//! latency (one row per transaction, the next committed after the last
//! arrived), and the relay's sustained throughput over a backlog of rows
//! written while the relay waited. Against a release `kernel-node` with
//! `KERNEL_DATABASE_URL` on a fresh database of the server in
//! `BENCH_DATABASE_URL` (`make bench` sets it like `make test`; default the
//! local server). Dapr's outbox, the anchor: ≥ 1 s per message.

use std::time::{Duration, Instant};

use kernel_sdk::{Client, SubscribeOptions, Subscriber};
use tokio::process::Command;

use crate::measure::{row, Row};

async fn connect(url: &str) -> Option<tokio_postgres::Client> {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(c)
}

/// A fresh database for one group of rows, on the server
/// `BENCH_DATABASE_URL` names (default the local server); dropped by
/// [`BenchDb::drop_it`].
pub(crate) struct BenchDb {
    admin: tokio_postgres::Client,
    name: String,
    /// Its URL.
    pub(crate) url: String,
}

impl BenchDb {
    /// `<tag>_<pid>`, made anew; Err says why not.
    pub(crate) async fn create(tag: &str) -> Result<BenchDb, String> {
        let server = std::env::var("BENCH_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let admin = connect(&server)
            .await
            .ok_or_else(|| format!("no PostgreSQL at {server}"))?;
        let name = format!("{tag}_{}", std::process::id());
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|e| format!("cannot create {name}: {e}"))?;
        let url = match server.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => server.clone(),
        };
        Ok(BenchDb { admin, name, url })
    }

    pub(crate) async fn drop_it(self) {
        let _ = self
            .admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await;
    }
}

/// Runs the rows, or says why it cannot (no PostgreSQL).
pub(crate) async fn all(rows: &mut Vec<Row>, sibling: impl Fn(&str) -> std::path::PathBuf) {
    let db = match BenchDb::create("kbench").await {
        Ok(db) => db,
        Err(why) => {
            println!("  (outbox rows skipped: {why})");
            return;
        }
    };
    latency(rows, &sibling, &db.url).await;
    throughput(rows, &sibling, &db.url).await;
    db.drop_it().await;
}

/// A node on `db` (relay start delay `delay_ms`) and a subscriber on
/// `ob.>` connected to it.
async fn node(
    sibling: &impl Fn(&str) -> std::path::PathBuf,
    db: &str,
    delay_ms: u64,
) -> (tokio::process::Child, Subscriber) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new(sibling("kernel-node"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("KERNEL_DATABASE_URL", db)
        .env("KERNEL_TELEMETRY__ADMIN_LISTEN", "")
        .env("KERNEL_OUTBOX__START_DELAY_MS", delay_ms.to_string())
        .env("KERNEL_SERVER__WORKER_THREADS", "1")
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn kernel-node");
    let client = Client::connect(&format!("http://127.0.0.1:{port}")).expect("client");
    let start = Instant::now();
    let sub = loop {
        match client.subscriber(SubscribeOptions::new("ob.>")).await {
            Ok(s) => break s,
            Err(e) if start.elapsed() > Duration::from_secs(20) => panic!("node never up: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    (child, sub)
}

async fn latency(rows: &mut Vec<Row>, sibling: &impl Fn(&str) -> std::path::PathBuf, db: &str) {
    let (mut child, mut sub) = node(sibling, db, 0).await;
    let pg = connect(db).await.expect("bench database");
    // Until the relay has migrated the schema.
    let start = Instant::now();
    while pg
        .batch_execute("SELECT 1 FROM kernel.outbox LIMIT 1")
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "schema never appeared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let insert = pg
        .prepare("INSERT INTO kernel.outbox (topic, payload) VALUES ('ob.lat', $1)")
        .await
        .expect("prepare");
    let samples = 2_000;
    let mut v = Vec::with_capacity(samples);
    for i in 0..samples + 200 {
        pg.batch_execute("BEGIN").await.expect("begin");
        pg.execute(&insert, &[&vec![0u8; 64]])
            .await
            .expect("insert");
        pg.batch_execute("COMMIT").await.expect("commit");
        let t = Instant::now();
        sub.next().await.expect("delivery");
        if i >= 200 {
            v.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99) = (v[v.len() / 2], v[v.len() * 99 / 100]);
    row(
        rows,
        "outbox commit → subscriber delivery",
        format!("p50 {p50:.2} ms, p99 {p99:.2} ms"),
        "(target p50 ≤ 5 ms, p99 ≤ 50 ms; Dapr ≥ 1 s)".into(),
    );
    let _ = child.kill().await;
}

async fn throughput(rows: &mut Vec<Row>, sibling: &impl Fn(&str) -> std::path::PathBuf, db: &str) {
    let pg = connect(db).await.expect("bench database");
    let n: usize = 100_000;
    // The backlog, written while no node relays.
    for _ in 0..n / 1_000 {
        pg.batch_execute(
            "INSERT INTO kernel.outbox (topic, payload) \
             SELECT 'ob.tput', '\\x00000000000000000000000000000000' FROM generate_series(1, 1000)",
        )
        .await
        .expect("backlog");
    }
    let (mut child, mut sub) = node(sibling, db, 1_500).await;
    let first = sub.next().await.expect("first");
    drop(first);
    let t = Instant::now();
    for _ in 1..n {
        sub.next().await.expect("delivery");
    }
    let rate = (n - 1) as f64 / t.elapsed().as_secs_f64();
    row(
        rows,
        "outbox relay throughput (100,000-row backlog, auto-ack subscriber)",
        format!("{rate:.0} events/s"),
        "(target ≥ 20,000/s)".into(),
    );
    let _ = child.kill().await;
}
