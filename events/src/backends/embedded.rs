//! The embedded event log: one SQLite file (separate from the read models), WAL with
//! `synchronous=FULL`, so an acknowledged append survives a crash like JetStream with
//! `sync_interval: always`.
//!
//! Appends go through one writer task that groups whatever is waiting into a single
//! `BEGIN IMMEDIATE` transaction (group commit: one fsync for many events). Followers
//! in this process are woken through a watch channel; a slow poll also sees appends
//! made by another process (a CLI command) on the same file.

use std::{path::Path, str::FromStr, time::Duration};

use anyhow::Context;
use bytes::Bytes;
use sqlx::{
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    Connection, Row, SqliteConnection, SqlitePool,
};
use tokio::sync::{mpsc, oneshot, watch};

use super::headers;
use crate::{
    subject::subject_matches, AppendError, Appended, EventLog, EventStream, LogError, Namespace,
    NewEvent, ReadFrom, StoredEvent, StreamKind, Timestamp,
};

/// Settings of the embedded log.
#[derive(Clone, Debug)]
pub struct EmbeddedConfig {
    /// The SQLite file.
    pub path: std::path::PathBuf,
    /// Duplicate window for `msg_id`.
    pub duplicate_window: Duration,
    /// Largest payload accepted.
    pub max_payload: usize,
    /// How often followers look for appends by other processes.
    pub poll_interval: Duration,
    /// The subject namespace.
    pub namespace: Namespace,
}

impl EmbeddedConfig {
    /// Defaults for a file: 10-minute window, 8 MiB payloads, 1 s cross-process poll.
    pub fn new(path: impl Into<std::path::PathBuf>) -> Self {
        EmbeddedConfig {
            path: path.into(),
            duplicate_window: Duration::from_secs(600),
            max_payload: 8 * 1024 * 1024,
            poll_interval: Duration::from_secs(1),
            namespace: Namespace::default(),
        }
    }
}

type Reply = oneshot::Sender<Result<Appended, AppendError>>;

/// The embedded log (cheap to clone).
#[derive(Clone)]
pub struct EmbeddedLog {
    cfg: std::sync::Arc<EmbeddedConfig>,
    reads: SqlitePool,
    writer: mpsc::Sender<(NewEvent, StreamKind, Reply)>,
    heads: watch::Receiver<u64>,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS events_domain (seq INTEGER PRIMARY KEY, subject TEXT NOT NULL, headers TEXT NOT NULL, payload BLOB NOT NULL, recorded_us INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS events_raw (seq INTEGER PRIMARY KEY, subject TEXT NOT NULL, headers TEXT NOT NULL, payload BLOB NOT NULL, recorded_us INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS events_domain_subject ON events_domain (subject, seq)",
    "CREATE INDEX IF NOT EXISTS events_raw_subject ON events_raw (subject, seq)",
    "CREATE INDEX IF NOT EXISTS events_domain_time ON events_domain (recorded_us)",
    "CREATE INDEX IF NOT EXISTS events_raw_time ON events_raw (recorded_us)",
    "CREATE TABLE IF NOT EXISTS dedup (stream TEXT NOT NULL, msg_id TEXT NOT NULL, seq INTEGER NOT NULL, at_us INTEGER NOT NULL, PRIMARY KEY (stream, msg_id))",
    "CREATE INDEX IF NOT EXISTS dedup_at ON dedup (at_us)",
];

fn table(stream: StreamKind) -> &'static str {
    match stream {
        StreamKind::Domain => "events_domain",
        StreamKind::Raw => "events_raw",
    }
}

/// Largest batch of appends grouped into one transaction.
const MAX_GROUP: usize = 512;
/// Largest payload total grouped into one transaction.
const MAX_GROUP_BYTES: usize = 32 * 1024 * 1024;

impl EmbeddedLog {
    /// Opens (creating if needed) the log file and starts its writer task.
    pub async fn open(cfg: EmbeddedConfig) -> anyhow::Result<Self> {
        if let Some(dir) = cfg.path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let opts = connect_options(&cfg.path)?;
        let mut conn = SqliteConnection::connect_with(&opts)
            .await
            .with_context(|| format!("opening the event log {}", cfg.path.display()))?;
        for stmt in SCHEMA {
            sqlx::query(stmt)
                .execute(&mut conn)
                .await
                .context("creating the event log schema")?;
        }
        let reads = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.read_only(true))
            .await
            .context("opening event log readers")?;
        let (tx, rx) = mpsc::channel(4096);
        let (head_tx, heads) = watch::channel(0);
        let cfg = std::sync::Arc::new(cfg);
        tokio::spawn(writer_loop(conn, rx, head_tx, cfg.clone()));
        Ok(EmbeddedLog {
            cfg,
            reads,
            writer: tx,
            heads,
        })
    }

    fn stream_of(&self, subject: &str) -> Result<StreamKind, AppendError> {
        self.cfg
            .namespace
            .stream_of(subject)
            .ok_or_else(|| AppendError::BadSubject(subject.to_string()))
    }
}

fn connect_options(path: &Path) -> anyhow::Result<SqliteConnectOptions> {
    Ok(
        SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10)),
    )
}

async fn writer_loop(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<(NewEvent, StreamKind, Reply)>,
    heads: watch::Sender<u64>,
    cfg: std::sync::Arc<EmbeddedConfig>,
) {
    let mut batches: u64 = 0;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let mut bytes = batch[0].0.payload.len();
        while batch.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
            match rx.try_recv() {
                Ok(item) => {
                    bytes += item.0.payload.len();
                    batch.push(item);
                }
                Err(_) => break,
            }
        }
        let outcome = write_batch(&mut conn, &batch, &cfg).await;
        match outcome {
            Ok(results) => {
                for ((_, _, reply), result) in batch.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
                heads.send_modify(|n| *n += 1);
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "embedded log: append transaction failed");
                let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
                let msg = format!("{e:#}");
                for (_, _, reply) in batch {
                    let _ = reply.send(Err(AppendError::Log(LogError(anyhow::anyhow!(
                        msg.clone()
                    )))));
                }
            }
        }
        batches += 1;
        if batches % 1000 == 0 {
            prune_dedup(&mut conn, &cfg).await;
        }
    }
}

async fn prune_dedup(conn: &mut SqliteConnection, cfg: &EmbeddedConfig) {
    let cutoff = Timestamp::now().minus(cfg.duplicate_window).unix_micros();
    if let Err(e) = sqlx::query("DELETE FROM dedup WHERE at_us < ?")
        .bind(cutoff)
        .execute(conn)
        .await
    {
        tracing::warn!(error = %e, "embedded log: pruning the dedup table failed");
    }
}

async fn write_batch(
    conn: &mut SqliteConnection,
    batch: &[(NewEvent, StreamKind, Reply)],
    cfg: &EmbeddedConfig,
) -> anyhow::Result<Vec<Result<Appended, AppendError>>> {
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .context("BEGIN IMMEDIATE")?;
    let mut results = Vec::with_capacity(batch.len());
    for (event, stream, _) in batch {
        results.push(append_one(conn, event, *stream, cfg).await?);
    }
    sqlx::query("COMMIT")
        .execute(&mut *conn)
        .await
        .context("COMMIT")?;
    Ok(results)
}

/// Appends inside the open transaction. `Err` aborts the whole group (I/O failure);
/// `Ok(Err(..))` is a per-event refusal.
async fn append_one(
    conn: &mut SqliteConnection,
    event: &NewEvent,
    stream: StreamKind,
    cfg: &EmbeddedConfig,
) -> anyhow::Result<Result<Appended, AppendError>> {
    let now = Timestamp::now();
    if let Some(id) = &event.msg_id {
        let row = sqlx::query("SELECT seq, at_us FROM dedup WHERE stream = ? AND msg_id = ?")
            .bind(stream.as_str())
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(row) = row {
            let at: i64 = row.get(1);
            if at >= now.minus(cfg.duplicate_window).unix_micros() {
                return Ok(Ok(Appended {
                    seq: row.get::<i64, _>(0) as u64,
                    duplicate: true,
                }));
            }
        }
    }
    if let Some(expected) = event.expected_last_subject_seq {
        let actual = last_subject_seq(&mut *conn, stream, &event.subject).await?;
        if actual != expected {
            return Ok(Err(AppendError::WrongLastSequence {
                subject: event.subject.clone(),
                expected,
                actual,
            }));
        }
    }
    let mut envelope = event.envelope.clone();
    envelope.recorded_at = now;
    let sql = format!(
        "INSERT INTO {} (subject, headers, payload, recorded_us) VALUES (?, ?, ?, ?)",
        table(stream)
    );
    let seq = sqlx::query(&sql)
        .bind(&event.subject)
        .bind(headers::to_json(&envelope))
        .bind(event.payload.as_ref())
        .bind(now.unix_micros())
        .execute(&mut *conn)
        .await?
        .last_insert_rowid() as u64;
    if let Some(id) = &event.msg_id {
        sqlx::query("INSERT INTO dedup (stream, msg_id, seq, at_us) VALUES (?, ?, ?, ?) ON CONFLICT (stream, msg_id) DO UPDATE SET seq = excluded.seq, at_us = excluded.at_us")
            .bind(stream.as_str())
            .bind(id)
            .bind(seq as i64)
            .bind(now.unix_micros())
            .execute(&mut *conn)
            .await?;
    }
    Ok(Ok(Appended {
        seq,
        duplicate: false,
    }))
}

async fn last_subject_seq(
    conn: &mut SqliteConnection,
    stream: StreamKind,
    subject: &str,
) -> anyhow::Result<u64> {
    let sql = format!(
        "SELECT COALESCE(MAX(seq), 0) FROM {} WHERE subject = ?",
        table(stream)
    );
    let seq: i64 = sqlx::query_scalar(&sql)
        .bind(subject)
        .fetch_one(conn)
        .await?;
    Ok(seq as u64)
}

fn row_to_event(
    stream: StreamKind,
    row: &sqlx::sqlite::SqliteRow,
) -> Result<StoredEvent, LogError> {
    let seq: i64 = row.get(0);
    let headers_json: String = row.get(2);
    let envelope = headers::from_json(&headers_json)
        .with_context(|| format!("{} event {seq}", stream.as_str()))
        .map_err(LogError)?;
    let payload: Vec<u8> = row.get(3);
    Ok(StoredEvent {
        stream,
        seq: seq as u64,
        subject: row.get(1),
        envelope,
        payload: Bytes::from(payload),
    })
}

async fn read_page(
    pool: &SqlitePool,
    stream: StreamKind,
    from_seq: u64,
    limit: usize,
) -> Result<Vec<StoredEvent>, LogError> {
    let sql = format!(
        "SELECT seq, subject, headers, payload FROM {} WHERE seq >= ? ORDER BY seq LIMIT ?",
        table(stream)
    );
    let rows = sqlx::query(&sql)
        .bind(from_seq as i64)
        .bind(limit as i64)
        .fetch_all(pool)
        .await
        .map_err(LogError::new)?;
    rows.iter().map(|r| row_to_event(stream, r)).collect()
}

#[async_trait::async_trait]
impl EventLog for EmbeddedLog {
    async fn append(&self, event: NewEvent) -> Result<Appended, AppendError> {
        let stream = self.stream_of(&event.subject)?;
        if event.payload.len() > self.cfg.max_payload {
            return Err(AppendError::PayloadTooLarge {
                size: event.payload.len(),
                limit: self.cfg.max_payload,
            });
        }
        let (tx, rx) = oneshot::channel();
        self.writer
            .send((event, stream, tx))
            .await
            .map_err(|_| LogError(anyhow::anyhow!("the embedded log writer has stopped")))?;
        rx.await
            .map_err(|_| LogError(anyhow::anyhow!("the embedded log writer has stopped")))?
    }

    async fn read(
        &self,
        stream: StreamKind,
        from: ReadFrom,
        filter: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, LogError> {
        let mut seq = match from {
            ReadFrom::Seq(s) => s.max(1),
            ReadFrom::Time(t) => {
                let sql = format!(
                    "SELECT MIN(seq) FROM {} WHERE recorded_us >= ?",
                    table(stream)
                );
                let first: Option<i64> = sqlx::query_scalar(&sql)
                    .bind(t.unix_micros())
                    .fetch_one(&self.reads)
                    .await
                    .map_err(LogError::new)?;
                match first {
                    Some(s) => s as u64,
                    None => return Ok(vec![]),
                }
            }
        };
        let mut out = Vec::new();
        while out.len() < limit {
            let page = read_page(&self.reads, stream, seq, 500).await?;
            let Some(last) = page.last() else { break };
            seq = last.seq + 1;
            out.extend(
                page.into_iter()
                    .filter(|e| filter.is_none_or(|f| subject_matches(f, &e.subject))),
            );
        }
        out.truncate(limit);
        Ok(out)
    }

    async fn follow(
        &self,
        stream: StreamKind,
        _consumer: &str,
        from_seq: u64,
    ) -> Result<EventStream, LogError> {
        let (tx, rx) = mpsc::channel::<Result<StoredEvent, LogError>>(512);
        let pool = self.reads.clone();
        let mut heads = self.heads.clone();
        let poll = self.cfg.poll_interval;
        tokio::spawn(async move {
            let mut next = from_seq.max(1);
            loop {
                heads.borrow_and_update();
                let page = read_page(&pool, stream, next, 256).await;
                match page {
                    Ok(page) if page.is_empty() => {
                        tokio::select! {
                            changed = heads.changed() => if changed.is_err() { return },
                            _ = tokio::time::sleep(poll) => {},
                            _ = tx.closed() => return,
                        }
                    }
                    Ok(page) => {
                        for ev in page {
                            next = ev.seq + 1;
                            if tx.send(Ok(ev)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        if tx.send(Err(e)).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(poll).await;
                    }
                }
            }
        });
        Ok(Box::pin(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|x| (x, rx)) },
        )))
    }

    async fn last_seq(&self, stream: StreamKind) -> Result<u64, LogError> {
        let sql = format!("SELECT COALESCE(MAX(seq), 0) FROM {}", table(stream));
        let seq: i64 = sqlx::query_scalar(&sql)
            .fetch_one(&self.reads)
            .await
            .map_err(LogError::new)?;
        Ok(seq as u64)
    }

    async fn last_subject_seq(&self, subject: &str) -> Result<u64, LogError> {
        let stream = self
            .cfg
            .namespace
            .stream_of(subject)
            .ok_or_else(|| LogError(anyhow::anyhow!("subject {subject:?} not in namespace")))?;
        let mut conn = self.reads.acquire().await.map_err(LogError::new)?;
        last_subject_seq(&mut conn, stream, subject)
            .await
            .map_err(LogError)
    }

    async fn ping(&self) -> Result<(), LogError> {
        sqlx::query("SELECT 1")
            .execute(&self.reads)
            .await
            .map_err(LogError::new)?;
        if self.writer.is_closed() {
            return Err(LogError(anyhow::anyhow!(
                "the embedded log writer has stopped"
            )));
        }
        Ok(())
    }

    fn max_payload(&self) -> usize {
        self.cfg.max_payload
    }

    fn namespace(&self) -> &Namespace {
        &self.cfg.namespace
    }
}
