//! The embedded event log: one SQLite file (separate from the read models), WAL with
//! `synchronous=FULL`, so an acknowledged append survives a crash like JetStream with
//! `sync_interval: always`.
//!
//! Appends go through one writer task that groups whatever is waiting into a single
//! `BEGIN IMMEDIATE` transaction (group commit: one fsync for many events). Followers
//! in this process are woken through a watch channel; a slow poll also sees appends
//! made by another process (a CLI command) on the same file.

use std::{collections::HashMap, path::Path, str::FromStr, time::Duration};

use anyhow::Context;
use bytes::Bytes;
use sqlx::{
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    Connection, QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool,
};
use tokio::sync::{mpsc, oneshot, watch};

use super::headers;
use crate::{
    log::{check_kv_names, KvEntry},
    subject::subject_matches,
    AppendError, Appended, EventLog, EventStream, Lease, LogError, Namespace, NewEvent, ReadFrom,
    StoredEvent, StreamKind, Timestamp,
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
    /// Max age of raw webhooks (`WABRIDGE_RAW_RETENTION`); none: kept for ever.
    pub raw_max_age: Option<Duration>,
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
            raw_max_age: None,
        }
    }
}

type Reply = oneshot::Sender<Result<Appended, AppendError>>;

/// The embedded log (cheap to clone).
#[derive(Clone)]
pub struct EmbeddedLog {
    cfg: std::sync::Arc<EmbeddedConfig>,
    reads: SqlitePool,
    /// One connection for lease and key-value writes (appends go through the writer
    /// task).
    leases: SqlitePool,
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
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_us INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS kv (bucket TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, revision INTEGER NOT NULL, PRIMARY KEY (bucket, key))",
];

/// A log file belongs to one namespace: opening it with another would read and
/// write subjects nobody else sees. Recorded on first open, checked after.
async fn check_namespace(conn: &mut SqliteConnection, cfg: &EmbeddedConfig) -> anyhow::Result<()> {
    let ns = cfg.namespace.as_str();
    const READ: &str = "SELECT value FROM meta WHERE key = 'namespace'";
    // Only the first open writes (a reading command needs no write lock).
    let recorded = match sqlx::query_scalar::<_, String>(READ)
        .fetch_optional(&mut *conn)
        .await?
    {
        Some(r) => r,
        None => {
            sqlx::query("INSERT INTO meta (key, value) VALUES ('namespace', ?) ON CONFLICT (key) DO NOTHING").bind(ns).execute(&mut *conn).await?;
            sqlx::query_scalar::<_, String>(READ)
                .fetch_one(&mut *conn)
                .await?
        }
    };
    anyhow::ensure!(
        recorded == ns,
        "the event log {} belongs to namespace {recorded:?}, but WABRIDGE_NAMESPACE is {ns:?}",
        cfg.path.display()
    );
    Ok(())
}

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
        check_namespace(&mut conn, &cfg).await?;
        let reads = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.clone().read_only(true))
            .await
            .context("opening event log readers")?;
        let leases = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await
            .context("opening the event log's lease connection")?;
        let (tx, rx) = mpsc::channel(4096);
        let (head_tx, heads) = watch::channel(0);
        let cfg = std::sync::Arc::new(cfg);
        tokio::spawn(writer_loop(conn, rx, head_tx, cfg.clone()));
        Ok(EmbeddedLog {
            cfg,
            reads,
            leases,
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
    // Expired raw webhooks are deleted about every tenth of their max age (1 s to
    // 1 min), between append transactions.
    let purge_every = cfg
        .raw_max_age
        .map(|a| (a / 10).clamp(Duration::from_secs(1), Duration::from_secs(60)))
        .unwrap_or(Duration::from_secs(3600));
    let mut purge = tokio::time::interval(purge_every);
    purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            next = rx.recv() => match next {
                Some(first) => first,
                None => break,
            },
            _ = purge.tick() => {
                if let Some(max_age) = cfg.raw_max_age {
                    purge_raw(&mut conn, max_age).await;
                }
                continue;
            }
        };
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
        if batches.is_multiple_of(1000) {
            prune_dedup(&mut conn, &cfg).await;
        }
    }
}

/// Deletes raw webhooks older than `max_age`, always keeping the newest (sequences
/// are never reused: a new append follows the last one).
async fn purge_raw(conn: &mut SqliteConnection, max_age: Duration) {
    let cutoff = Timestamp::now().minus(max_age).unix_micros();
    match sqlx::query(
        "DELETE FROM events_raw WHERE recorded_us < ? AND seq < (SELECT MAX(seq) FROM events_raw)",
    )
    .bind(cutoff)
    .execute(conn)
    .await
    {
        Ok(r) if r.rows_affected() > 0 => {
            tracing::info!(
                expired = r.rows_affected(),
                "embedded log: raw webhooks past WABRIDGE_RAW_RETENTION deleted"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "embedded log: expiring raw webhooks failed"),
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
    let now = Timestamp::now();
    let window_start = now.minus(cfg.duplicate_window).unix_micros();
    let known = known_msg_ids(conn, batch, window_start).await?;
    let mut heads: HashMap<StreamKind, u64> = HashMap::new();
    let mut subject_heads: HashMap<(StreamKind, String), u64> = HashMap::new();
    let mut seen: HashMap<(StreamKind, String), u64> = HashMap::new();
    let mut rows: Vec<(StreamKind, u64, &NewEvent, String)> = Vec::with_capacity(batch.len());
    let mut results = Vec::with_capacity(batch.len());
    for (event, stream, _) in batch {
        let stream = *stream;
        if let Some(id) = &event.msg_id {
            let key = (stream, id.clone());
            if let Some(seq) = seen.get(&key).or_else(|| known.get(&key)) {
                results.push(Ok(Appended {
                    seq: *seq,
                    duplicate: true,
                }));
                continue;
            }
        }
        if let Some(expected) = event.expected_last_subject_seq {
            let key = (stream, event.subject.clone());
            let actual = match subject_heads.get(&key) {
                Some(s) => *s,
                None => last_subject_seq(&mut *conn, stream, &event.subject).await?,
            };
            if actual != expected {
                results.push(Err(AppendError::WrongLastSequence {
                    subject: event.subject.clone(),
                    expected,
                    actual,
                }));
                continue;
            }
        }
        let head = match heads.get(&stream) {
            Some(h) => *h,
            None => last_seq(&mut *conn, stream).await?,
        };
        let seq = head + 1;
        heads.insert(stream, seq);
        subject_heads.insert((stream, event.subject.clone()), seq);
        if let Some(id) = &event.msg_id {
            seen.insert((stream, id.clone()), seq);
        }
        let mut envelope = event.envelope.clone();
        envelope.recorded_at = now;
        rows.push((stream, seq, event, headers::encode_compact(&envelope)));
        results.push(Ok(Appended {
            seq,
            duplicate: false,
        }));
    }
    insert_rows(conn, &rows, now.unix_micros()).await?;
    sqlx::query("COMMIT")
        .execute(&mut *conn)
        .await
        .context("COMMIT")?;
    Ok(results)
}

/// The msg ids of the batch already stored inside the window: one query a chunk.
async fn known_msg_ids(
    conn: &mut SqliteConnection,
    batch: &[(NewEvent, StreamKind, Reply)],
    window_start: i64,
) -> anyhow::Result<HashMap<(StreamKind, String), u64>> {
    let ids: Vec<(&str, &str)> = batch
        .iter()
        .filter_map(|(e, s, _)| e.msg_id.as_deref().map(|id| (s.as_str(), id)))
        .collect();
    let mut known = HashMap::new();
    for chunk in ids.chunks(400) {
        let mut q =
            QueryBuilder::<Sqlite>::new("SELECT stream, msg_id, seq FROM dedup WHERE at_us >= ");
        q.push_bind(window_start).push(" AND (stream, msg_id) IN (");
        let mut sep = q.separated(", ");
        for (stream, id) in chunk {
            sep.push("(")
                .push_bind_unseparated(*stream)
                .push_unseparated(", ")
                .push_bind_unseparated(*id)
                .push_unseparated(")");
        }
        q.push(")");
        for row in q.build().fetch_all(&mut *conn).await? {
            let stream = StreamKind::parse(row.get::<&str, _>(0)).context("dedup stream")?;
            known.insert(
                (stream, row.get::<String, _>(1)),
                row.get::<i64, _>(2) as u64,
            );
        }
    }
    Ok(known)
}

/// Inserts the new events and their dedup ids with multi-row statements.
async fn insert_rows(
    conn: &mut SqliteConnection,
    rows: &[(StreamKind, u64, &NewEvent, String)],
    recorded_us: i64,
) -> anyhow::Result<()> {
    for stream in [StreamKind::Domain, StreamKind::Raw] {
        let mine: Vec<_> = rows.iter().filter(|r| r.0 == stream).collect();
        for chunk in mine.chunks(1000) {
            let mut q = QueryBuilder::<Sqlite>::new(format!(
                "INSERT INTO {} (seq, subject, headers, payload, recorded_us) ",
                table(stream)
            ));
            q.push_values(chunk, |mut b, (_, seq, event, headers)| {
                b.push_bind(*seq as i64)
                    .push_bind(event.subject.as_str())
                    .push_bind(headers.as_str())
                    .push_bind(event.payload.as_ref())
                    .push_bind(recorded_us);
            });
            q.build().execute(&mut *conn).await?;
        }
        let with_ids: Vec<_> = mine.iter().filter(|r| r.2.msg_id.is_some()).collect();
        for chunk in with_ids.chunks(1000) {
            let mut q =
                QueryBuilder::<Sqlite>::new("INSERT INTO dedup (stream, msg_id, seq, at_us) ");
            q.push_values(chunk, |mut b, (_, seq, event, _)| {
                b.push_bind(stream.as_str())
                    .push_bind(event.msg_id.as_deref())
                    .push_bind(*seq as i64)
                    .push_bind(recorded_us);
            });
            q.push(" ON CONFLICT (stream, msg_id) DO UPDATE SET seq = excluded.seq, at_us = excluded.at_us");
            q.build().execute(&mut *conn).await?;
        }
    }
    Ok(())
}

async fn last_seq(conn: &mut SqliteConnection, stream: StreamKind) -> anyhow::Result<u64> {
    let sql = format!("SELECT COALESCE(MAX(seq), 0) FROM {}", table(stream));
    let seq: i64 = sqlx::query_scalar(&sql).fetch_one(conn).await?;
    Ok(seq as u64)
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

/// Subjects per statement of [`last_seq_of_subjects`] (well under SQLite's limit of
/// bound values).
const COVERING_SUBJECTS_PER_QUERY: usize = 200;

/// The greatest of the last sequences of `subjects`, in one statement: a round trip
/// to the connection's worker thread costs more than each subject's index look-up
/// (a `MAX` per subject, each answered from the `(subject, seq)` index; one `MAX`
/// over `subject IN (…)` would read every event of those subjects).
async fn last_seq_of_subjects(
    conn: &mut SqliteConnection,
    stream: StreamKind,
    subjects: &[String],
) -> anyhow::Result<u64> {
    let mut q = QueryBuilder::<Sqlite>::new("SELECT COALESCE(MAX(m), 0) FROM (");
    for (i, s) in subjects.iter().enumerate() {
        if i > 0 {
            q.push(" UNION ALL ");
        }
        q.push(format!(
            "SELECT (SELECT MAX(seq) FROM {} WHERE subject = ",
            table(stream)
        ));
        q.push_bind(s.as_str());
        q.push(") AS m");
    }
    q.push(")");
    let seq: i64 = q.build_query_scalar().fetch_one(conn).await?;
    Ok(seq as u64)
}

/// Events per page read at most (one SQLite value holds the page: bounded, so a
/// read of a large `limit` is not one value of hundreds of megabytes).
const READ_PAGE_MAX: usize = 5000;

/// Reads up to `limit` events from `from_seq` on, in order.
///
/// The page comes back as one value, not a row per event: sqlx hands each row of a
/// SQLite query from its worker thread to the caller on its own (a channel message,
/// a copy of each value, often a thread wake-up), which cost more than reading the
/// rows. Each event is `seq,S,H,P;` (the byte lengths of its subject, headers and
/// payload) followed by those three fields; the payloads are slices of the page's
/// one buffer.
async fn read_page(
    pool: &SqlitePool,
    stream: StreamKind,
    from_seq: u64,
    limit: usize,
) -> Result<Vec<StoredEvent>, LogError> {
    let sql = format!(
        "SELECT CAST(group_concat(seq || ',' || octet_length(subject) || ',' || octet_length(headers) || ',' || octet_length(payload) || ';' || subject || headers || payload, '') AS BLOB) \
         FROM (SELECT seq, subject, headers, payload FROM {} WHERE seq >= ? ORDER BY seq LIMIT ?)",
        table(stream)
    );
    let page: Option<Vec<u8>> = sqlx::query_scalar(&sql)
        .bind(from_seq as i64)
        .bind(limit as i64)
        .fetch_one(pool)
        .await
        .map_err(LogError::new)?;
    let Some(page) = page else {
        return Ok(vec![]);
    };
    let mut events = parse_page(stream, Bytes::from(page))
        .with_context(|| format!("reading {} from {from_seq}", stream.as_str()))
        .map_err(LogError)?;
    // The aggregate's order is the subquery's in practice, not by contract.
    if !events.is_sorted_by_key(|e| e.seq) {
        events.sort_by_key(|e| e.seq);
    }
    Ok(events)
}

/// Splits a page written by [`read_page`]'s query into events.
fn parse_page(stream: StreamKind, page: Bytes) -> anyhow::Result<Vec<StoredEvent>> {
    let mut events = Vec::new();
    let mut at = 0;
    while at < page.len() {
        let end = page[at..]
            .iter()
            .position(|&b| b == b';')
            .map(|i| at + i)
            .context("an event's lengths are not terminated")?;
        let head = std::str::from_utf8(&page[at..end]).context("an event's lengths")?;
        let mut numbers = head.split(',').map(|n| n.parse::<u64>());
        let mut next = || -> anyhow::Result<u64> {
            Ok(numbers.next().context("an event's lengths are short")??)
        };
        let (seq, s, h, p) = (
            next()?,
            next()? as usize,
            next()? as usize,
            next()? as usize,
        );
        let subject_at = end + 1;
        let headers_at = subject_at + s;
        let payload_at = headers_at + h;
        let done = payload_at + p;
        anyhow::ensure!(done <= page.len(), "event {seq} runs past the page");
        let subject = std::str::from_utf8(&page[subject_at..headers_at])
            .with_context(|| format!("event {seq}'s subject"))?;
        let headers = std::str::from_utf8(&page[headers_at..payload_at])
            .with_context(|| format!("event {seq}'s headers"))?;
        let envelope = headers::from_stored(headers)
            .with_context(|| format!("{} event {seq}", stream.as_str()))?;
        events.push(StoredEvent {
            stream,
            seq,
            subject: subject.to_string(),
            envelope,
            payload: page.slice(payload_at..done),
            decoded: Default::default(),
        });
        at = done;
    }
    Ok(events)
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
        // Unfiltered, the first page is the answer (no copy into another vector);
        // filtered, pages of the rest until `limit` events match.
        let mut out: Vec<StoredEvent> = Vec::new();
        while out.len() < limit {
            let want = if filter.is_none() {
                limit - out.len()
            } else {
                500
            };
            let page = read_page(&self.reads, stream, seq, want.min(READ_PAGE_MAX)).await?;
            let Some(last) = page.last() else { break };
            seq = last.seq + 1;
            match filter {
                None if out.is_empty() => out = page,
                _ => out.extend(
                    page.into_iter()
                        .filter(|e| filter.is_none_or(|f| subject_matches(f, &e.subject))),
                ),
            }
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

    async fn follow_ephemeral(
        &self,
        stream: StreamKind,
        from_seq: u64,
    ) -> Result<EventStream, LogError> {
        self.follow(stream, "", from_seq).await
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

    async fn last_seq_covering(&self, subjects: &[String]) -> Result<u64, LogError> {
        if subjects.is_empty() {
            return Ok(0);
        }
        let stream = self
            .cfg
            .namespace
            .stream_of_all(subjects)
            .ok_or_else(|| LogError(crate::log::not_one_stream(subjects)))?;
        let mut conn = self.reads.acquire().await.map_err(LogError::new)?;
        let mut max = 0;
        for part in subjects.chunks(COVERING_SUBJECTS_PER_QUERY) {
            max = max.max(
                last_seq_of_subjects(&mut conn, stream, part)
                    .await
                    .map_err(LogError)?,
            );
        }
        Ok(max)
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        replacing: Option<&str>,
    ) -> Result<Lease, LogError> {
        let now = Timestamp::now();
        // Taken when free, lapsed or already ours; one statement, so two processes
        // racing for it cannot both win.
        sqlx::query(
            "INSERT INTO leases (name, holder, expires_us) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_us = excluded.expires_us \
             WHERE leases.holder = excluded.holder OR leases.expires_us <= ?4 OR leases.holder = ?5",
        )
        .bind(name)
        .bind(holder)
        .bind(now.plus(ttl).unix_micros())
        .bind(now.unix_micros())
        .bind(replacing.unwrap_or(""))
        .execute(&self.leases)
        .await
        .map_err(LogError::new)?;
        self.lease(name)
            .await?
            .ok_or_else(|| LogError(anyhow::anyhow!("lease {name} vanished")))
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), LogError> {
        sqlx::query("DELETE FROM leases WHERE name = ?1 AND holder = ?2")
            .bind(name)
            .bind(holder)
            .execute(&self.leases)
            .await
            .map_err(LogError::new)?;
        Ok(())
    }

    async fn lease(&self, name: &str) -> Result<Option<Lease>, LogError> {
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT holder, expires_us FROM leases WHERE name = ?1")
                .bind(name)
                .fetch_optional(&self.leases)
                .await
                .map_err(LogError::new)?;
        Ok(row.and_then(|(holder, us)| {
            let lease = Lease {
                holder,
                expires_at: Timestamp::from_unix_micros(us)?,
            };
            lease.live_at(Timestamp::now()).then_some(lease)
        }))
    }

    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, LogError> {
        check_kv_names(bucket, key)?;
        let row: Option<(Vec<u8>, i64)> =
            sqlx::query_as("SELECT value, revision FROM kv WHERE bucket = ?1 AND key = ?2")
                .bind(bucket)
                .bind(key)
                .fetch_optional(&self.reads)
                .await
                .map_err(LogError::new)?;
        Ok(row.map(|(value, revision)| KvEntry {
            value: Bytes::from(value),
            revision: revision as u64,
        }))
    }

    async fn kv_cas(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        expected_revision: u64,
    ) -> Result<Option<u64>, LogError> {
        check_kv_names(bucket, key)?;
        // One statement each: SQLite's write lock makes the check and the write one
        // step, also against another process on the same file.
        if expected_revision == 0 {
            let done = sqlx::query(
                "INSERT INTO kv (bucket, key, value, revision) VALUES (?1, ?2, ?3, 1) \
                 ON CONFLICT (bucket, key) DO NOTHING",
            )
            .bind(bucket)
            .bind(key)
            .bind(value.as_ref())
            .execute(&self.leases)
            .await
            .map_err(LogError::new)?;
            return Ok((done.rows_affected() == 1).then_some(1));
        }
        let Ok(expected) = i64::try_from(expected_revision) else {
            return Ok(None);
        };
        let revision: Option<i64> = sqlx::query_scalar(
            "UPDATE kv SET value = ?3, revision = revision + 1 \
             WHERE bucket = ?1 AND key = ?2 AND revision = ?4 RETURNING revision",
        )
        .bind(bucket)
        .bind(key)
        .bind(value.as_ref())
        .bind(expected)
        .fetch_optional(&self.leases)
        .await
        .map_err(LogError::new)?;
        Ok(revision.map(|r| r as u64))
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
