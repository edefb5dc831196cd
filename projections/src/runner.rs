//! Runs projections: follows the log from each projection's checkpoint, applies every
//! event in one transaction with the checkpoint, retries failures with backoff and
//! records what still fails as a dead letter (never silently skipped).

use std::{collections::HashMap, sync::Arc, time::Duration};

use anyhow::Context;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use sqlx::AnyConnection;
use tokio::sync::watch;
use wabridge_events::{
    types::{new_event, DeadLetterRecorded},
    Actor, EventLog, StoredEvent, StreamKind,
};

use crate::{checkpoint, Store};

/// A read model: a fold over events into tables.
#[async_trait::async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Stable name (checkpoint key and consumer name).
    fn name(&self) -> &'static str;
    /// The stream it folds (domain events by default).
    fn stream(&self) -> StreamKind {
        StreamKind::Domain
    }
    /// One SQL query returning one TEXT column per row, in a stable order: the
    /// canonical dump that [`checksum`] hashes (the same on SQLite and PostgreSQL).
    fn dump_sql(&self) -> &'static str;
    /// Applies one event inside the caller's transaction. Events it does not care
    /// about are a no-op. Must not commit.
    async fn apply(&self, conn: &mut AnyConnection, event: &StoredEvent) -> anyhow::Result<()>;
}

/// The sequence each projection has applied, shared by the runners of this process
/// (for read-your-writes without polling).
#[derive(Clone, Default)]
pub struct Progress {
    inner: Arc<std::sync::Mutex<HashMap<String, watch::Sender<u64>>>>,
}

impl Progress {
    fn sender(&self, name: &str) -> watch::Sender<u64> {
        let mut map = self.inner.lock().expect("progress lock");
        map.entry(name.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .clone()
    }

    /// Records that `name` applied through `seq`.
    pub fn set(&self, name: &str, seq: u64) {
        self.sender(name).send_if_modified(|cur| {
            let moved = *cur < seq;
            if moved {
                *cur = seq;
            }
            moved
        });
    }

    /// A receiver for `name`'s applied sequence.
    pub fn watch(&self, name: &str) -> watch::Receiver<u64> {
        self.sender(name).subscribe()
    }
}

impl Store {
    /// Read-your-writes: waits until projection `name` has applied at least `seq`.
    /// Wakes on this process's progress, and polls the checkpoint table so a
    /// projection running in another instance counts too. False on timeout.
    pub async fn wait_for(
        &self,
        progress: &Progress,
        name: &str,
        seq: u64,
        timeout: Duration,
    ) -> anyhow::Result<bool> {
        let mut rx = progress.watch(name);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if *rx.borrow_and_update() >= seq {
                return Ok(true);
            }
            let mut conn = self.reads.acquire().await?;
            if checkpoint::get(&mut conn, name).await? >= seq {
                return Ok(true);
            }
            drop(conn);
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            let _ = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(20)),
                rx.changed(),
            )
            .await;
        }
    }

    /// The checkpoint of a projection or reactor.
    pub async fn checkpoint(&self, name: &str) -> anyhow::Result<u64> {
        let mut conn = self.reads.acquire().await?;
        Ok(checkpoint::get(&mut conn, name).await?)
    }
}

/// SHA-256 (hex) of a projection's canonical dump.
pub async fn checksum(store: &Store, projection: &dyn Projection) -> anyhow::Result<String> {
    let rows: Vec<String> = sqlx::query_scalar(projection.dump_sql())
        .fetch_all(&store.reads)
        .await?;
    let mut h = Sha256::new();
    for row in rows {
        h.update(row.as_bytes());
        h.update(b"\n");
    }
    Ok(hex::encode(h.finalize()))
}

/// Runs projections against a log and a store.
#[derive(Clone)]
pub struct ProjectionRunner {
    /// The log.
    pub log: Arc<dyn EventLog>,
    /// The store.
    pub store: Store,
    /// Shared progress.
    pub progress: Progress,
}

/// Splits a chunk of follow results into the events before the first error, and
/// that error (after which the caller resubscribes).
pub fn split_ready(
    items: Vec<Result<StoredEvent, wabridge_events::LogError>>,
) -> (Vec<StoredEvent>, Option<wabridge_events::LogError>) {
    let mut events = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Ok(e) => events.push(e),
            Err(e) => return (events, Some(e)),
        }
    }
    (events, None)
}

/// The most events applied in one transaction.
pub const BATCH: usize = 500;

/// How many times an event is tried before it becomes a dead letter.
pub const MAX_ATTEMPTS: u32 = 5;

/// Whether an error is the database being unavailable (retry for ever) rather than
/// this event failing (dead-letter after [`MAX_ATTEMPTS`]).
pub fn is_unavailable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<sqlx::Error>(),
            Some(
                sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
            )
        )
    })
}

impl ProjectionRunner {
    /// Runs several projections of the domain stream together: one consumer, and
    /// each batch applied to every projection in ONE transaction (each projection
    /// still has its own checkpoint, moved in that transaction). A batch that fails
    /// falls back to each projection on its own, so a failing event is retried and
    /// dead-lettered for the projection it fails in only.
    pub async fn run_group(self, projections: Vec<Arc<dyn Projection>>) -> anyhow::Result<()> {
        loop {
            let mut from = u64::MAX;
            for p in &projections {
                let cp = self.store.checkpoint(p.name()).await?;
                self.progress.set(p.name(), cp);
                from = from.min(cp + 1);
            }
            let mut events = self
                .log
                .follow(StreamKind::Domain, "proj_group", from)
                .await?
                .ready_chunks(BATCH);
            'follow: while let Some(items) = events.next().await {
                let (batch, failed) = split_ready(items);
                if let Some(last) = batch.last().map(|e| e.seq) {
                    match self.apply_group(&projections, &batch).await {
                        Ok(()) => {
                            for p in &projections {
                                self.progress.set(p.name(), last);
                            }
                        }
                        Err(e) => {
                            tracing::debug!(error = %format!("{e:#}"), "group batch failed; applying per projection");
                            for p in &projections {
                                self.handle_batch(&**p, batch.clone()).await?;
                            }
                        }
                    }
                }
                if let Some(e) = failed {
                    tracing::warn!(error = %e, "log read failed; resubscribing");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break 'follow;
                }
            }
        }
    }

    async fn apply_group(
        &self,
        projections: &[Arc<dyn Projection>],
        batch: &[StoredEvent],
    ) -> anyhow::Result<()> {
        let mut tx = self.store.pool.begin().await?;
        for p in projections {
            // Another applier (a host command) moved a checkpoint meanwhile: start over per projection.
            anyhow::ensure!(
                apply_in(&mut tx, &**p, batch).await?,
                "checkpoint of {} moved concurrently",
                p.name()
            );
        }
        tx.commit().await?;
        Ok(())
    }

    /// Applies events until the projection has caught up with the log's head as it
    /// was when called (for tests, rebuilds and CLI commands).
    pub async fn catch_up(&self, projection: &dyn Projection) -> anyhow::Result<u64> {
        let head = self.log.last_seq(projection.stream()).await?;
        loop {
            let from = self.store.checkpoint(projection.name()).await? + 1;
            if from > head {
                return Ok(head);
            }
            let batch = self
                .log
                .read(
                    projection.stream(),
                    wabridge_events::ReadFrom::Seq(from),
                    None,
                    500,
                )
                .await?;
            if batch.is_empty() {
                return Ok(head);
            }
            self.handle_batch(projection, batch).await?;
        }
    }

    /// Applies a batch in one transaction; when that fails, one event at a time (so
    /// only the failing event is retried and dead-lettered).
    async fn handle_batch(
        &self,
        projection: &dyn Projection,
        batch: Vec<StoredEvent>,
    ) -> anyhow::Result<()> {
        let Some(last) = batch.last().map(|e| e.seq) else {
            return Ok(());
        };
        if batch.len() > 1 {
            match self.apply_batch(projection, &batch).await {
                Ok(()) => {
                    self.progress.set(projection.name(), last);
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(projection = projection.name(), error = %format!("{e:#}"), "batch failed; applying one at a time")
                }
            }
        }
        for event in batch {
            self.handle(projection, event).await?;
        }
        Ok(())
    }

    /// Applies a batch (possibly one event) to one projection in one transaction.
    async fn apply_batch(
        &self,
        projection: &dyn Projection,
        batch: &[StoredEvent],
    ) -> anyhow::Result<()> {
        let mut tx = self.store.pool.begin().await?;
        // Not moved: another applier got there first (it held the row lock until it
        // committed), so this transaction's work is dropped.
        if apply_in(&mut tx, projection, batch).await? {
            tx.commit().await?;
        }
        Ok(())
    }

    async fn handle(&self, projection: &dyn Projection, event: StoredEvent) -> anyhow::Result<()> {
        let name = projection.name();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self
                .apply_batch(projection, std::slice::from_ref(&event))
                .await
            {
                Ok(()) => break,
                Err(e) if is_unavailable(&e) => {
                    tracing::warn!(projection = name, seq = event.seq, error = %format!("{e:#}"), "store unavailable; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) if attempt < MAX_ATTEMPTS => {
                    tracing::warn!(projection = name, seq = event.seq, attempt, error = %format!("{e:#}"), "apply failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
                Err(e) => {
                    self.dead_letter(name, &event, &format!("{e:#}"), attempt)
                        .await?;
                    break;
                }
            }
        }
        self.progress.set(name, event.seq);
        Ok(())
    }

    /// Records a dead letter in the log, then moves the checkpoint past the event.
    async fn dead_letter(
        &self,
        consumer: &str,
        event: &StoredEvent,
        reason: &str,
        attempts: u32,
    ) -> anyhow::Result<()> {
        record_dead_letter(&*self.log, consumer, event, reason, attempts).await?;
        let mut tx = self.store.pool.begin().await?;
        checkpoint::advance(&mut tx, consumer, event.seq).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Inside `tx`: applies the events of `batch` after the projection's checkpoint and
/// moves the checkpoint to the batch's last sequence. False when the checkpoint did
/// not move because another applier moved it first (the caller must roll back; on
/// PostgreSQL the row lock taken here serialises two appliers).
async fn apply_in(
    tx: &mut AnyConnection,
    projection: &dyn Projection,
    batch: &[StoredEvent],
) -> anyhow::Result<bool> {
    let name = projection.name();
    let Some(last) = batch.last().map(|e| e.seq) else {
        return Ok(true);
    };
    let done = checkpoint::get(&mut *tx, name).await?;
    if done >= last {
        return Ok(true);
    }
    for event in batch.iter().filter(|e| e.seq > done) {
        projection.apply(&mut *tx, event).await.with_context(|| {
            format!(
                "{name}: applying {} #{}",
                event.envelope.event_type, event.seq
            )
        })?;
    }
    Ok(checkpoint::advance(&mut *tx, name, last).await?)
}

/// Appends `dead_letter.recorded` for an event a consumer could not process. The id
/// `<consumer>:<stream>:<seq>` doubles as the dedup id, so a retry records it once.
pub async fn record_dead_letter(
    log: &dyn EventLog,
    consumer: &str,
    event: &StoredEvent,
    reason: &str,
    attempts: u32,
) -> anyhow::Result<()> {
    let id = format!("{consumer}:{}:{}", event.stream.as_str(), event.seq);
    tracing::error!(consumer, seq = event.seq, event_type = %event.envelope.event_type, reason, "dead letter");
    let data = DeadLetterRecorded {
        id: id.clone(),
        consumer: consumer.to_string(),
        stream: event.stream.as_str().to_string(),
        seq: event.seq,
        event_type: event.envelope.event_type.clone(),
        reason: reason.chars().take(2000).collect(),
        attempts,
    };
    let mut new = new_event(log.namespace(), None, Actor::system(consumer), &data);
    new.envelope = new.envelope.caused_by(&event.envelope);
    new.msg_id = Some(format!("dl:{id}:{attempts}"));
    log.append(new).await.context("recording a dead letter")?;
    Ok(())
}
