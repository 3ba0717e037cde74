//! A real PostgreSQL for the tests: `KERNEL_TEST_DATABASE_URL` (the
//! Makefile sets it: `DATABASE_URL`, else the local server, else a
//! throwaway cluster), else the local server on 127.0.0.1:5432. Each test
//! gets a database of its own, dropped when it ends, so tests run in
//! parallel.

use std::time::Duration;

use crate::{eventually, http_get, NodeProcess};

/// A database made for one test.
pub struct TestDb {
    /// URL of the test's database.
    pub url: String,
    name: String,
    admin: String,
}

/// The server the tests use, as a URL naming a database to connect to for
/// `CREATE DATABASE`.
fn admin_url() -> String {
    std::env::var("KERNEL_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `url` naming database `db` instead.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let rest = base.split_once("://").map(|(_, r)| r).unwrap_or(base);
    let server = match rest.split_once('/') {
        Some((s, _)) => s,
        None => rest,
    };
    let scheme = base.split_once("://").map(|(s, _)| s).unwrap_or("postgres");
    format!("{scheme}://{server}/{db}{query}")
}

/// Connects to `url`, driving the connection on a task.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot reach PostgreSQL at {url}: {e} (run `make test`: it starts one)")
        });
    tokio::spawn(conn);
    client
}

impl TestDb {
    /// A new, empty database.
    pub async fn create() -> TestDb {
        let admin = admin_url();
        let name = format!("kt_{:016x}", rand_u64());
        connect(&admin)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        TestDb {
            url: with_database(&admin, &name),
            name,
            admin,
        }
    }

    /// A connection to the test's database.
    pub async fn connect(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop may run inside a runtime: the cleanup gets a thread and a
        // runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok((c, conn)) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// A node process on database `db`, its admin port at `admin`, with extra
/// environment `env`; not waiting for it to be ready (see [`ready`]).
pub async fn node_on(db: &str, admin: &str, env: &[(&str, &str)]) -> NodeProcess {
    let mut all = vec![
        ("KERNEL_DATABASE_URL", db),
        ("KERNEL_TELEMETRY__ADMIN_LISTEN", admin),
    ];
    all.extend_from_slice(env);
    NodeProcess::start(&all).await
}

/// Waits (30 s at most) until the node with admin port `admin` is ready:
/// its database reached and migrated.
pub async fn ready(admin: &str) {
    eventually(Duration::from_secs(30), "the node ready", || async {
        match http_get(admin, "/readyz").await {
            Some((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn urls_name_the_test_database() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "kt_1"),
            "postgres://postgres@127.0.0.1:5432/kt_1"
        );
        assert_eq!(
            with_database("postgresql://u:p@h/db?sslmode=disable", "kt_2"),
            "postgresql://u:p@h/kt_2?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:1", "kt_3"),
            "postgres://h:1/kt_3"
        );
    }
}
