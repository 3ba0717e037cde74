//! Durable subscriptions: a subscription by name whose unacked events live
//! in `kernel.durable_event`, so it outlives its subscriber's absence and
//! node restarts.
//!
//! Two halves. Keeping: the kernel asks [`Durables`] (its [`Keeper`]) on
//! every publish whether a durable subscription wants the topic (an
//! in-memory trie of their patterns) and, if so, waits until the event is
//! stored before answering the publisher; one writer task batches the rows
//! of concurrent publishers into one `INSERT`. Delivering: a connected
//! durable subscriber gets a detached in-memory subscription (acks, nacks,
//! window, ack wait and dead letters as for any other), and a feeder task
//! fills it from the table in `seq` order and deletes each row once its
//! delivery is settled (acked, or dead-lettered). A row whose subscriber
//! went away before acking stays, and is delivered again on reconnect.

mod feed;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kernel_core::{
    Action, BoxFuture, Error, Keeper, Kept, Kernel, Match, SubscribeRequest, Subscription, Trie,
};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot, Notify};

/// Rows fetched per feeder round.
const FETCH: i64 = 256;
/// Events a writer batch takes at most.
const BATCH: usize = 512;

type Pending = (Kept, oneshot::Sender<Result<(), Error>>);

/// The durable subscriptions of this node's database.
#[derive(Debug)]
pub struct Durables {
    pool: deadpool_postgres::Pool,
    shown: String,
    max_backlog: u64,
    defs: RwLock<Defs>,
    backlog: Mutex<HashMap<String, u64>>,
    connected: Mutex<HashSet<String>>,
    wake: Mutex<HashMap<String, Arc<Notify>>>,
    writer: mpsc::UnboundedSender<Pending>,
}

/// Names and patterns, and a trie of the patterns to the names' indexes.
#[derive(Debug, Default)]
struct Defs {
    names: Vec<(String, Vec<String>)>,
    trie: Trie<u64>,
}

impl Defs {
    fn add(&mut self, name: &str, patterns: Vec<String>) {
        if self.names.iter().any(|(n, _)| n == name) {
            return;
        }
        let i = self.names.len() as u64;
        for p in &patterns {
            self.trie.insert(p, i);
        }
        self.names.push((name.to_owned(), patterns));
    }

    fn remove(&mut self, name: &str) {
        let mut next = Defs::default();
        for (n, p) in self.names.drain(..) {
            if n != name {
                next.add(&n, p);
            }
        }
        *self = next;
    }

    fn wanting(&self, topic: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        self.trie.for_each_match(topic, |m| {
            if let Match::Plain(i) = m {
                let n = &self.names[i as usize].0;
                if !out.contains(n) {
                    out.push(n.clone());
                }
            }
        });
        out
    }
}

/// Held while a durable subscriber is connected.
#[derive(Debug)]
pub struct Connected {
    durables: Arc<Durables>,
    name: String,
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.durables.connected.lock().remove(&self.name);
    }
}

impl Durables {
    /// The durable side of the database at `config` (connections made on
    /// use); `max_backlog` events kept per durable subscription at most.
    pub(super) fn new(
        config: tokio_postgres::Config,
        shown: String,
        max_backlog: u64,
    ) -> Arc<Durables> {
        let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(8)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .build()
            .expect("a pool with a runtime and no hooks builds");
        let (writer, rx) = mpsc::unbounded_channel();
        let durables = Arc::new(Durables {
            pool,
            shown,
            max_backlog,
            defs: RwLock::new(Defs::default()),
            backlog: Mutex::new(HashMap::new()),
            connected: Mutex::new(HashSet::new()),
            wake: Mutex::new(HashMap::new()),
            writer,
        });
        tokio::spawn(write(Arc::downgrade(&durables), rx));
        durables
    }

    fn unavailable(&self, cause: impl std::fmt::Display) -> Error {
        Error::StoreUnavailable {
            database: self.shown.clone(),
            cause: cause.to_string(),
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, Error> {
        self.pool.get().await.map_err(|e| self.unavailable(e))
    }

    /// Reads the durable subscriptions and their backlogs (at start, once
    /// the schema is migrated).
    pub(super) async fn load(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<(), tokio_postgres::Error> {
        let defs = client
            .query("SELECT name, patterns FROM kernel.durable", &[])
            .await?;
        let counts = client
            .query(
                "SELECT name, count(*) FROM kernel.durable_event GROUP BY name",
                &[],
            )
            .await?;
        let mut d = self.defs.write();
        for r in defs {
            d.add(r.get(0), r.get(1));
        }
        let mut b = self.backlog.lock();
        for r in counts {
            b.insert(r.get(0), r.get::<_, i64>(1) as u64);
        }
        Ok(())
    }

    fn wake_of(&self, name: &str) -> Arc<Notify> {
        self.wake.lock().entry(name.to_owned()).or_default().clone()
    }

    /// Opens durable subscription `name` for a subscriber (creating it on
    /// first use, its patterns fixed then): a detached subscription fed
    /// from the table, and what to hold while it is connected.
    pub async fn open(
        self: &Arc<Self>,
        kernel: &Arc<Kernel>,
        name: &str,
        mut req: SubscribeRequest,
    ) -> Result<(Arc<Subscription>, Connected), Error> {
        check_name(name)?;
        for p in &req.patterns {
            kernel
                .capabilities()
                .check(req.plugin.as_deref(), Action::Subscribe, p)?;
            let b = &kernel.config().broker;
            kernel_core::validate_pattern(p, b.max_topic_bytes, b.max_topic_tokens)?;
        }
        req.patterns.sort();
        req.patterns.dedup();
        if req.patterns.is_empty() {
            return Err(Error::Precondition(format!(
                "durable subscription `{name}` needs at least one pattern"
            )));
        }
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO kernel.durable (name, patterns) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                &[&name, &req.patterns],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        let stored: Vec<String> = client
            .query_one(
                "SELECT patterns FROM kernel.durable WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(|e| self.unavailable(e))?
            .get(0);
        if stored != req.patterns {
            return Err(Error::Precondition(format!(
                "durable subscription `{name}` exists with patterns {stored:?}, not {:?} (delete it to change them)",
                req.patterns
            )));
        }
        if !self.connected.lock().insert(name.to_owned()) {
            return Err(Error::Precondition(format!(
                "durable subscription `{name}` already has a subscriber connected"
            )));
        }
        let connected = Connected {
            durables: self.clone(),
            name: name.to_owned(),
        };
        self.defs.write().add(name, req.patterns.clone());
        req.explicit_ack = true;
        if req.name.is_empty() {
            req.name = format!("durable:{name}");
        }
        req.group = String::new();
        let sub = kernel.broker().subscribe_detached(req)?;
        tokio::spawn(feed::feed(
            self.clone(),
            kernel.clone(),
            sub.clone(),
            name.to_owned(),
        ));
        Ok((sub, connected))
    }

    /// Every durable subscription with its backlog and whether it is
    /// connected now.
    pub fn list(&self) -> Vec<(String, Vec<String>, u64, bool)> {
        let (backlog, connected) = (self.backlog.lock(), self.connected.lock());
        self.defs
            .read()
            .names
            .iter()
            .map(|(n, p)| {
                (
                    n.clone(),
                    p.clone(),
                    backlog.get(n).copied().unwrap_or(0),
                    connected.contains(n),
                )
            })
            .collect()
    }

    /// Deletes durable subscription `name` and its stored events; returns
    /// how many events went with it.
    pub async fn delete(&self, name: &str) -> Result<u64, Error> {
        if self.connected.lock().contains(name) {
            return Err(Error::Precondition(format!(
                "durable subscription `{name}` has a subscriber connected; delete it once that one is gone"
            )));
        }
        let client = self.client().await?;
        let events = client
            .query_one(
                "WITH d AS (DELETE FROM kernel.durable_event WHERE name = $1 RETURNING 1) \
                 SELECT count(*) FROM d",
                &[&name],
            )
            .await
            .map_err(|e| self.unavailable(e))?
            .get::<_, i64>(0);
        let gone = client
            .execute("DELETE FROM kernel.durable WHERE name = $1", &[&name])
            .await
            .map_err(|e| self.unavailable(e))?;
        if gone == 0 {
            return Err(Error::Precondition(format!(
                "no durable subscription `{name}`"
            )));
        }
        self.defs.write().remove(name);
        self.backlog.lock().remove(name);
        Ok(events as u64)
    }

    /// `kernel_durable_backlog{durable}` lines.
    pub(super) fn render_metrics(&self, out: &mut String) {
        out.push_str("# HELP kernel_durable_backlog Events kept for a durable subscription and not yet acked.\n# TYPE kernel_durable_backlog gauge\n");
        for (name, _, backlog, _) in self.list() {
            out.push_str(&format!(
                "kernel_durable_backlog{{durable=\"{name}\"}} {backlog}\n"
            ));
        }
    }
}

impl Keeper for Durables {
    fn wants(&self, topic: &str) -> bool {
        let defs = self.defs.read();
        let mut any = false;
        defs.trie.for_each_match(topic, |_| any = true);
        any
    }

    fn keep(&self, event: Kept) -> BoxFuture<Result<(), Error>> {
        let (tx, rx) = oneshot::channel();
        let shown = self.shown.clone();
        if self.writer.send((event, tx)).is_err() {
            return Box::pin(std::future::ready(Err(
                self.unavailable("the writer stopped")
            )));
        }
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(Error::StoreUnavailable {
                    database: shown,
                    cause: "the writer stopped".into(),
                })
            })
        })
    }
}

/// A durable name: 1 to 128 of `[A-Za-z0-9_.-]`.
fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what: "durable subscription name",
            name: name.chars().take(64).collect(),
            reason: "1 to 128 of A-Z a-z 0-9 _ . -".into(),
        })
    }
}

/// The writer: batches the events of concurrent publishers into one
/// `INSERT`, then answers each.
async fn write(durables: std::sync::Weak<Durables>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let Some(d) = durables.upgrade() else {
            return;
        };
        d.write_batch(std::mem::take(&mut batch)).await;
    }
}

impl Durables {
    async fn write_batch(&self, batch: Vec<Pending>) {
        let mut rows = Rows::default();
        let mut accepted = Vec::with_capacity(batch.len());
        let mut woken: Vec<String> = Vec::new();
        {
            let defs = self.defs.read();
            let mut backlog = self.backlog.lock();
            for (kept, reply) in batch {
                let names = defs.wanting(&kept.topic);
                if let Some(full) = names
                    .iter()
                    .find(|n| backlog.get(*n).copied().unwrap_or(0) >= self.max_backlog)
                {
                    let _ = reply.send(Err(Error::BacklogFull {
                        durable: full.clone(),
                        limit: self.max_backlog,
                    }));
                    continue;
                }
                for n in &names {
                    *backlog.entry(n.clone()).or_default() += 1;
                    rows.push(n, &kept);
                    if !woken.contains(n) {
                        woken.push(n.clone());
                    }
                }
                accepted.push((reply, names));
            }
        }
        let result = match self.client().await {
            Ok(c) => rows.insert(&c).await.map_err(|e| self.unavailable(e)),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                for (reply, _) in accepted {
                    let _ = reply.send(Ok(()));
                }
                for n in woken {
                    self.wake_of(&n).notify_one();
                }
            }
            Err(e) => {
                let mut backlog = self.backlog.lock();
                let cause = match e {
                    Error::StoreUnavailable { cause, .. } => cause,
                    other => other.to_string(),
                };
                for (reply, names) in accepted {
                    for n in names {
                        if let Some(b) = backlog.get_mut(&n) {
                            *b = b.saturating_sub(1);
                        }
                    }
                    let _ = reply.send(Err(self.unavailable(&cause)));
                }
            }
        }
    }

    async fn fetch(&self, name: &str, after: i64) -> Result<Vec<tokio_postgres::Row>, Error> {
        let client = self.client().await?;
        client
            .query(
                "SELECT seq, event_id, topic, payload, content_type, headers, publish_time \
                 FROM kernel.durable_event WHERE name = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                &[&name, &after, &FETCH],
            )
            .await
            .map_err(|e| self.unavailable(e))
    }

    /// Deletes settled rows. Without waiting for the WAL flush
    /// (`synchronous_commit` off for this transaction only): a delete lost
    /// to a database crash means a redelivery, which at-least-once allows,
    /// and it saves an fsync per batch of acks.
    async fn delete_settled(&self, name: &str, seqs: &[i64]) -> Result<(), Error> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| self.unavailable(e))?;
        tx.batch_execute("SET LOCAL synchronous_commit TO OFF")
            .await
            .map_err(|e| self.unavailable(e))?;
        let n = tx
            .execute(
                "DELETE FROM kernel.durable_event WHERE name = $1 AND seq = ANY($2)",
                &[&name, &seqs],
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        tx.commit().await.map_err(|e| self.unavailable(e))?;
        if let Some(b) = self.backlog.lock().get_mut(name) {
            *b = b.saturating_sub(n);
        }
        Ok(())
    }
}

/// One `INSERT`'s columns.
#[derive(Default)]
struct Rows {
    names: Vec<String>,
    ids: Vec<i64>,
    topics: Vec<String>,
    payloads: Vec<Vec<u8>>,
    content_types: Vec<String>,
    headers: Vec<serde_json::Value>,
    times: Vec<i64>,
}

impl Rows {
    fn push(&mut self, name: &str, k: &Kept) {
        self.names.push(name.to_owned());
        self.ids.push(k.id as i64);
        self.topics.push(k.topic.clone());
        self.payloads.push(k.payload.to_vec());
        self.content_types.push(k.content_type.clone());
        self.headers.push(serde_json::Value::Object(
            k.headers
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        ));
        self.times.push(k.publish_time_unix_ns);
    }

    async fn insert(&self, c: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
        if self.names.is_empty() {
            return Ok(());
        }
        c.execute(
            "INSERT INTO kernel.durable_event \
               (name, event_id, topic, payload, content_type, headers, publish_time) \
             SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::bytea[], \
                                  $5::text[], $6::jsonb[], $7::int8[])",
            &[
                &self.names,
                &self.ids,
                &self.topics,
                &self.payloads,
                &self.content_types,
                &self.headers,
                &self.times,
            ],
        )
        .await
        .map(drop)
    }
}
