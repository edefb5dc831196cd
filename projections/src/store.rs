//! The read-model database: a pool over SQLite or PostgreSQL, migrated at connect.

use std::time::Duration;

use anyhow::Context;
use sqlx::{any::AnyPoolOptions, AnyPool, Executor};

/// How long a SQLite statement waits for another writer's lock before failing with
/// `database is locked` (which the driver then retries with backoff, for as long as
/// the lock lasts).
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Which database the store runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite (one file under the data dir).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// What a store is opened for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Use {
    /// The live read models.
    Live,
    /// A rebuild's shadow, loaded in bulk and thrown away when the rebuild ends or
    /// fails: on SQLite no fsync at all (a crash mid-rebuild leaves a shadow that is
    /// deleted, never a live table) and a large page cache. On PostgreSQL its tables
    /// are logged like the live ones: the swap moves them in as they are.
    Shadow,
}

/// The read-model store (cheap to clone).
#[derive(Clone, Debug)]
pub struct Store {
    /// The pool for writes (projection transactions). On SQLite it holds one
    /// connection, so writers queue in the pool instead of sleeping in SQLite's
    /// busy handler. Every query uses `$n` placeholders.
    pub pool: AnyPool,
    /// The pool for reads (API queries, checkpoints). The same pool on PostgreSQL.
    pub reads: AnyPool,
    /// The backend.
    pub backend: Backend,
    /// The URL it was opened with (a rebuild opens its shadow beside it); it may
    /// hold a password.
    pub url: secrecy::SecretString,
}

impl Store {
    /// Connects to `sqlite://…` or `postgres://…`, failing within seconds when the
    /// database is unreachable, and applies pending migrations.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Self::open(url, None, Use::Live).await
    }

    /// A rebuild's shadow beside the live tables: on PostgreSQL every table in
    /// `schema` (the connection's `search_path`); on SQLite a file of its own, set
    /// for a bulk load (see [`Use::Shadow`]).
    pub async fn connect_shadow(url: &str, schema: Option<&str>) -> anyhow::Result<Self> {
        Self::open(url, schema, Use::Shadow).await
    }

    async fn open(url: &str, schema: Option<&str>, purpose: Use) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let given_url = url.to_string();
        let schema = schema.map(str::to_owned);
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            anyhow::bail!("DATABASE_URL must start with sqlite:// or postgres://");
        };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
            }
            _ => url.to_string(),
        };
        if backend == Backend::Sqlite {
            if let Some(path) = url
                .strip_prefix("sqlite://")
                .and_then(|p| p.split('?').next())
            {
                if let Some(dir) = std::path::Path::new(path).parent() {
                    std::fs::create_dir_all(dir).ok();
                }
            }
        }
        // `writer`: the pool that writes (SQLite: its one connection), else a reader.
        let options = |max: u32, writer: bool| {
            AnyPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(Duration::from_secs(5))
                // No ping before every acquire (a round trip per query, about 5 % of
                // the server's CPU under send load); a dead connection fails its
                // query, which callers already treat as unavailable and retry.
                .test_before_acquire(false)
                .after_connect({
                    let schema = schema.clone();
                    move |conn, _| {
                        let schema = schema.clone();
                        Box::pin(async move {
                            if let Some(schema) = schema.filter(|_| backend == Backend::Postgres) {
                                conn.execute(format!("SET search_path TO {schema}").as_str())
                                    .await?;
                            }
                            if backend == Backend::Sqlite {
                                conn.execute(
                                    format!(
                                        "PRAGMA busy_timeout = {}",
                                        SQLITE_BUSY_TIMEOUT.as_millis()
                                    )
                                    .as_str(),
                                )
                                .await?;
                                // Read models are rebuilt from the log, and each checkpoint
                                // commits with its rows: NORMAL (no fsync per commit in WAL
                                // mode) can lose the last commits on power loss, never
                                // consistency; the projection replays what it lacks.
                                conn.execute(match purpose {
                                    Use::Live => "PRAGMA synchronous = NORMAL",
                                    Use::Shadow => "PRAGMA synchronous = OFF",
                                })
                                .await?;
                                // A multi-row statement inside a transaction keeps a
                                // statement journal to undo itself: in memory, not in
                                // a temporary file written page by page.
                                conn.execute("PRAGMA temp_store = MEMORY").await?;
                                if purpose == Use::Shadow {
                                    // Written by one connection, read once at the
                                    // end: no WAL to write twice and checkpoint.
                                    conn.execute("PRAGMA journal_mode = MEMORY").await?;
                                }
                                // A batch's pages stay in the cache until its commit
                                // instead of spilling into the WAL half-way (the
                                // default cache is 2 MiB).
                                // A shadow's readers read each table once, in order
                                // (its checksum): a large cache there only holds memory
                                // (with four readers of 128 MiB a rebuild of 300,000
                                // events peaked at about 490 MiB, with 16 MiB at 440).
                                conn.execute(match (purpose, writer) {
                                    (Use::Shadow, true) => "PRAGMA cache_size = -131072",
                                    _ => "PRAGMA cache_size = -16384",
                                })
                                .await?;
                            }
                            Ok(())
                        })
                    }
                })
        };
        let pool = options(
            match backend {
                Backend::Sqlite => 1,
                Backend::Postgres => 16,
            },
            true,
        )
        .connect(&url)
        .await
        .context("connecting to DATABASE_URL")?;
        if backend == Backend::Sqlite && purpose == Use::Live {
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await
                .context("enabling WAL")?;
        }
        let reads = match backend {
            Backend::Sqlite => options(4, false)
                .connect(&url)
                .await
                .context("connecting to DATABASE_URL")?,
            Backend::Postgres => pool.clone(),
        };
        let store = Store {
            pool,
            reads,
            backend,
            url: given_url.into(),
        };
        crate::migrations::run(&store)
            .await
            .context("migrating the read-model database")?;
        Ok(store)
    }

    /// Cheap reachability check.
    pub async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1").execute(&self.reads).await?;
        Ok(())
    }

    /// A read-only view of several read models as of one moment (a reading
    /// transaction; `REPEATABLE READ` on PostgreSQL, SQLite's read snapshot in WAL
    /// mode), so that an answer built from two tables never mixes a batch's writes
    /// with the state before it. Commit (or drop) it when done.
    pub async fn snapshot(&self) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Any>> {
        let mut tx = self.reads.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }
}
