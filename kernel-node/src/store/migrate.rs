//! Versioned schema migrations, applied at start in one transaction under
//! an advisory lock: two nodes starting at once on one database take turns,
//! and the second finds the work done. Each version runs once; its SQL is
//! in `kernel-node/migrations/`.

use tokio_postgres::Client;

/// Every migration, in order: (version, name, SQL).
const MIGRATIONS: [(i32, &str, &str); 2] = [
    (
        1,
        "outbox",
        include_str!("../../migrations/0001_outbox.sql"),
    ),
    (
        2,
        "durable",
        include_str!("../../migrations/0002_durable.sql"),
    ),
];

/// The advisory lock key the migrations hold (`kernel` in ASCII).
const LOCK: i64 = 0x6b65726e656c;

/// Applies the migrations `client`'s database lacks; returns how many.
pub(super) async fn apply(client: &mut Client) -> Result<usize, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
        .await?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS kernel;
         CREATE TABLE IF NOT EXISTS kernel.schema_migrations (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM kernel.schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut n = 0;
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO kernel.schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await?;
        tracing::info!(version, name, "schema migration applied");
        n += 1;
    }
    tx.commit().await?;
    Ok(n)
}
