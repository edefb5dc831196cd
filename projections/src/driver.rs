//! The consumer driver: the one loop behind every follower of the log — the
//! projections, the webhook processor, the redrive reactor and the reactors to come.
//!
//! A [`Reactor`] supplies only what it does with a batch of events: effects outside
//! the read-model transaction ([`Reactor::stage`]: appends with dedup ids, calls to
//! Meta; they may run again after a crash, so they must be idempotent) and the rows
//! it writes inside it ([`Reactor::record`]). The driver owns the rest, once:
//! following from the checkpoints, resubscribing after errors, batching, moving each
//! reactor's checkpoint in the same transaction as its rows (so a crash or a
//! redelivery never applies an event twice), one retry policy, and dead letters.
//!
//! Failures are of two kinds. Unavailability — the read-model database locked,
//! restarting or unreachable, the log unreachable — only delays: the batch is retried
//! with backoff for as long as it lasts, never skipped. Anything else is this event
//! failing: the batch is retried per reactor, then one event at a time, and an event
//! that still fails after [`MAX_ATTEMPTS`] becomes a `dead_letter.recorded` event and
//! the reactor's checkpoint moves past it.

use std::{any::Any, collections::HashMap, sync::Arc, time::Duration};

use anyhow::Context;
use futures_util::StreamExt;
use rand::Rng;
use sqlx::AnyConnection;
use wabridge_events::{
    types::{new_event, DeadLetterRecorded},
    Actor, AppendError, EventLog, LogError, ReadFrom, StoredEvent, StreamKind,
};

use crate::{checkpoint, Progress, Store};

/// A page of the log being read ahead, on a task of its own.
type PageRead = tokio::task::JoinHandle<Result<Vec<StoredEvent>, LogError>>;

/// The most events handled in one transaction.
pub const BATCH: usize = 500;

/// How many times an event is tried before it becomes a dead letter.
pub const MAX_ATTEMPTS: u32 = 5;

/// What [`Reactor::stage`] hands to [`Reactor::record`] (any type the reactor likes).
pub struct Staged(Option<Box<dyn Any + Send>>);

impl Staged {
    /// Nothing staged.
    pub fn none() -> Self {
        Staged(None)
    }

    /// Wraps a reactor's staged value.
    pub fn new<T: Any + Send>(value: T) -> Self {
        Staged(Some(Box::new(value)))
    }

    /// The staged value, if it is a `T`.
    pub fn take<T: Any>(self) -> Option<T> {
        self.0.and_then(|b| b.downcast().ok()).map(|b| *b)
    }
}

/// A follower of the log: what it does with a batch of events.
#[async_trait::async_trait]
pub trait Reactor: Send + Sync + 'static {
    /// Stable name: its checkpoint, its dead letters.
    fn name(&self) -> &'static str;

    /// Effects outside the read-model transaction, for events after the checkpoint.
    /// They run again when the transaction fails or the process dies before it
    /// commits, so they must be idempotent (e.g. appends with natural dedup ids).
    async fn stage(&self, _batch: &[StoredEvent]) -> anyhow::Result<Staged> {
        Ok(Staged::none())
    }

    /// Rows written in the transaction that also moves the checkpoint past `batch`.
    /// Must not commit.
    async fn record(
        &self,
        tx: &mut AnyConnection,
        batch: &[StoredEvent],
        staged: Staged,
    ) -> anyhow::Result<()>;
}

/// Reactors fed by one subscription to one stream.
pub struct Follower {
    /// The subscription's name (a durable consumer on JetStream).
    pub consumer: &'static str,
    /// The stream followed.
    pub stream: StreamKind,
    /// The reactors; each batch goes to all of them in one transaction.
    pub reactors: Vec<Arc<dyn Reactor>>,
}

/// Exponential backoff with jitter.
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `first`, doubling up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff { next: first, max }
    }

    /// The policy for an unavailable database or log: 100 ms doubling to 10 s.
    pub fn unavailable() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(10))
    }

    /// The next pause: between half and all of the current step, which then doubles.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = step / 2;
        half + half.mul_f64(rand::thread_rng().gen::<f64>())
    }
}

/// How a batch failed.
#[derive(Debug)]
enum Failure {
    /// Another applier (a host command catching up) moved a checkpoint meanwhile.
    Moved,
    /// The database or the log is unavailable: retry, never skip.
    Unavailable(anyhow::Error),
    /// The events failed: isolate, retry, dead-letter.
    Failed(anyhow::Error),
}

fn classify(e: impl Into<anyhow::Error>) -> Failure {
    let e = e.into();
    if is_unavailable(&e) {
        Failure::Unavailable(e)
    } else {
        Failure::Failed(e)
    }
}

/// A reactor cannot decide yet: the state its decision needs cannot be confirmed
/// fresh (a read model it reads lags behind the log, or the log cannot say where its
/// head is). Like the database or the log being down, this only delays: the batch
/// waits and is tried again for as long as it lasts, and never becomes a dead
/// letter (a webhook routed while the routing table lags would be dropped for a
/// moment's election).
#[derive(Debug, thiserror::Error)]
#[error("not ready: {0}")]
pub struct NotReady(pub String);

/// Whether an error is the read-model database or the log being unavailable, or a
/// reactor [`NotReady`] (retried for as long as it lasts) rather than the event
/// failing.
pub fn is_unavailable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        if c.downcast_ref::<LogError>().is_some()
            || c.downcast_ref::<NotReady>().is_some()
            || matches!(c.downcast_ref::<AppendError>(), Some(AppendError::Log(_)))
        {
            return true;
        }
        match c.downcast_ref::<sqlx::Error>() {
            Some(
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed,
            ) => true,
            Some(sqlx::Error::Database(db)) => database_unavailable(&**db),
            _ => false,
        }
    })
}

/// SQLite busy/locked/full/I-O errors; PostgreSQL connection, resource, shutdown,
/// read-only (a standby during fail-over) and serialisation errors.
fn database_unavailable(db: &dyn sqlx::error::DatabaseError) -> bool {
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        let code = pg.code();
        return ["08", "53", "57P", "58"]
            .iter()
            .any(|class| code.starts_with(class))
            || matches!(code, "25006" | "40001" | "40P01" | "55P03");
    }
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // Primary result codes (the low byte of extended codes): BUSY, LOCKED,
        // IOERR, CORRUPT is not one, FULL, CANTOPEN.
        let primary = db
            .code()
            .and_then(|c| c.parse::<i64>().ok())
            .map(|c| c & 0xff);
        return matches!(primary, Some(5 | 6 | 10 | 13 | 14));
    }
    let msg = db.message();
    msg.contains("database is locked") || msg.contains("database table is locked")
}

/// Whether an error is an event that cannot be decoded (retrying cannot help).
fn undecodable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<wabridge_events::types::DecodeError>()
            .is_some()
    })
}

/// Splits a chunk of follow results into the events before the first error, and
/// that error (after which the caller resubscribes).
pub fn split_ready(
    items: Vec<Result<StoredEvent, LogError>>,
) -> (Vec<StoredEvent>, Option<LogError>) {
    let mut events = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Ok(e) => events.push(e),
            Err(e) => return (events, Some(e)),
        }
    }
    (events, None)
}

/// How many events of `batch` follow the subscription's previous ones without a
/// hole: the first event of a subscription sets the start (a fresh subscription
/// starts at the first event the log has from its position); after that each event
/// must be the next sequence, or an older one again (a redelivery, which the
/// checkpoints skip). `last` is the highest sequence accepted so far.
fn cut_at_gap(batch: &[StoredEvent], last: &mut Option<u64>) -> usize {
    for (i, e) in batch.iter().enumerate() {
        match *last {
            Some(l) if e.seq > l + 1 => return i,
            Some(l) if e.seq <= l => {}
            _ => *last = Some(e.seq),
        }
    }
    batch.len()
}

/// The events of a sorted batch after `done`.
fn after(batch: &[StoredEvent], done: u64) -> &[StoredEvent] {
    &batch[batch.partition_point(|e| e.seq <= done)..]
}

/// Runs followers against a log and a store.
#[derive(Clone)]
pub struct Driver {
    /// The log.
    pub log: Arc<dyn EventLog>,
    /// The store.
    pub store: Store,
    /// This process's progress (read-your-writes).
    pub progress: Progress,
}

type Positions = HashMap<&'static str, u64>;

impl Driver {
    /// Follows the stream for ever, from the lowest checkpoint of the reactors.
    pub async fn run(&self, f: &Follower) -> anyhow::Result<()> {
        loop {
            let mut done = self.positions(f).await?;
            let from = done.values().copied().min().unwrap_or(0) + 1;
            let mut events = self
                .log
                .follow(f.stream, f.consumer, from)
                .await?
                .ready_chunks(BATCH);
            let mut last = None;
            while let Some(items) = events.next().await {
                let (mut batch, failed) = split_ready(items);
                let contiguous = cut_at_gap(&batch, &mut last);
                let gap = (contiguous < batch.len()).then(|| batch[contiguous].seq);
                batch.truncate(contiguous);
                self.handle(f, &mut done, &batch).await?;
                if let Some(seq) = gap {
                    // A subscription that skips events (a JetStream consumer whose
                    // server restarted can go on past messages it delivered into a
                    // dead connection, and never delivers them again): never move
                    // past them. Start again
                    // at the checkpoint; a fresh subscription starts at the first
                    // event the log has, so a gap the log really has (expired raw
                    // webhooks) costs one resubscription, not a loop.
                    tracing::warn!(
                        consumer = f.consumer,
                        after = last.unwrap_or(0),
                        got = seq,
                        "the subscription skipped events; resubscribing from the checkpoint"
                    );
                    break;
                }
                if let Some(e) = failed {
                    tracing::warn!(consumer = f.consumer, error = %e, "log read failed; resubscribing");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            }
        }
    }

    /// Applies events until every reactor has caught up with the log's head as it
    /// was when called (host commands, tests, rebuilds). Returns that head.
    pub async fn catch_up(&self, f: &Follower) -> anyhow::Result<u64> {
        let head = self.log.last_seq(f.stream).await?;
        let mut done = self.positions(f).await?;
        loop {
            let from = done.values().copied().min().unwrap_or(0) + 1;
            if from > head {
                return Ok(head);
            }
            let batch = self
                .log
                .read(f.stream, ReadFrom::Seq(from), None, BATCH)
                .await?;
            if batch.is_empty() {
                return Ok(head);
            }
            self.handle(f, &mut done, &batch).await?;
        }
    }

    /// Applies events up to and including `target` (not past it), reading `batch`
    /// events per transaction; returns the lowest checkpoint of the reactors after.
    /// A rebuild uses it to stop exactly where the live read model stands.
    pub async fn catch_up_to(
        &self,
        f: &Follower,
        target: u64,
        batch: usize,
    ) -> anyhow::Result<u64> {
        // Never past the log's head (that would skip events still to come).
        let target = target.min(self.log.last_seq(f.stream).await?);
        let mut done = self.positions(f).await?;
        // The next page is read (and decoded) while this one is applied: the log's
        // reads and the decoding run beside the database's writes.
        let mut ahead: Option<(u64, PageRead)> = None;
        loop {
            let low = done.values().copied().min().unwrap_or(0);
            if low >= target {
                return Ok(low);
            }
            let mut events = match ahead.take() {
                Some((from, page)) if from == low + 1 => page.await.context("reading ahead")??,
                _ => read_page(self.log.clone(), f.stream, low + 1, batch).await?,
            };
            events.retain(|e| e.seq <= target);
            if events.is_empty() {
                // Nothing more in the log up to `target` (gaps: purged or expired).
                for r in &f.reactors {
                    let cp = done.get(r.name()).copied().unwrap_or(0);
                    if cp < target {
                        let mut conn = self.store.pool.acquire().await?;
                        checkpoint::advance(&mut conn, r.name(), target).await?;
                        done.insert(r.name(), target);
                    }
                }
                continue;
            }
            let last = events[events.len() - 1].seq;
            if last < target {
                let log = self.log.clone();
                ahead = Some((
                    last + 1,
                    tokio::spawn(read_page(log, f.stream, last + 1, batch)),
                ));
            }
            self.handle(f, &mut done, &events).await?;
        }
    }

    /// Brings several followers of one stream to `target`, each applied by its own
    /// driver (a rebuild's lanes: each a store of its own), reading every page of the
    /// log once for all of them: while the lanes apply a page side by side (each on
    /// a task and a database connection of its own), the next is read and decoded.
    /// Returns the lowest position a lane reached.
    pub async fn catch_up_lanes(
        lanes: &[Arc<(Driver, Follower)>],
        target: u64,
        batch: usize,
    ) -> anyhow::Result<u64> {
        let Some(first) = lanes.first() else {
            return Ok(target);
        };
        let (log, stream) = (first.0.log.clone(), first.1.stream);
        let target = target.min(log.last_seq(stream).await?);
        let mut low = u64::MAX;
        let mut positions = Vec::with_capacity(lanes.len());
        for lane in lanes {
            let done = lane.0.positions(&lane.1).await?;
            low = low.min(done.values().copied().min().unwrap_or(0));
            positions.push(done);
        }
        if low < target {
            // Two pages ahead per lane at most: the reader waits for the slowest.
            let mut senders = Vec::with_capacity(lanes.len());
            let mut appliers = Vec::with_capacity(lanes.len());
            for (lane, mut done) in lanes.iter().zip(positions) {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<Arc<Vec<StoredEvent>>>(2);
                senders.push(tx);
                let lane = lane.clone();
                appliers.push(tokio::spawn(async move {
                    let (driver, follower) = (&lane.0, &lane.1);
                    while let Some(page) = rx.recv().await {
                        driver.handle(follower, &mut done, &page).await?;
                    }
                    anyhow::Ok(())
                }));
            }
            let reader = async {
                let mut from = low + 1;
                let mut ahead = Some(tokio::spawn(read_page(log.clone(), stream, from, batch)));
                while let Some(page) = ahead.take() {
                    let mut events = page.await.context("reading ahead")??;
                    events.retain(|e| e.seq <= target);
                    let Some(last) = events.last().map(|e| e.seq) else {
                        break; // a gap up to `target`: each lane's catch-up below moves past it
                    };
                    if last < target {
                        from = last + 1;
                        ahead = Some(tokio::spawn(read_page(log.clone(), stream, from, batch)));
                    }
                    let events = Arc::new(events);
                    for tx in &senders {
                        if tx.send(events.clone()).await.is_err() {
                            // That lane failed: its error is returned below.
                            return anyhow::Ok(());
                        }
                    }
                }
                anyhow::Ok(())
            };
            let read = reader.await;
            drop(senders);
            for applier in appliers {
                applier.await.context("a replay lane panicked")??;
            }
            read?;
        }
        // What is left: gaps, or events a lane's isolation retried alone.
        let mut reached = u64::MAX;
        for lane in lanes {
            reached = reached.min(lane.0.catch_up_to(&lane.1, target, batch).await?);
        }
        Ok(reached)
    }

    /// Each reactor's checkpoint (also published as this process's progress).
    async fn positions(&self, f: &Follower) -> anyhow::Result<Positions> {
        let mut done = HashMap::new();
        for r in &f.reactors {
            let cp = self.store.checkpoint(r.name()).await?;
            self.progress.set(r.name(), cp);
            done.insert(r.name(), cp);
        }
        Ok(done)
    }

    /// Handles a batch for every reactor: in one transaction when all goes well;
    /// else each reactor alone, then each event alone (see the module docs).
    pub async fn handle(
        &self,
        f: &Follower,
        done: &mut Positions,
        batch: &[StoredEvent],
    ) -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        if self
            .retry_while_unavailable(f, &f.reactors, done, batch)
            .await?
            .is_none()
        {
            return Ok(());
        }
        for r in &f.reactors {
            self.handle_alone(f, r, done, batch).await?;
        }
        Ok(())
    }

    /// Tries a batch until it succeeds (`None`) or fails for a reason other than
    /// unavailability (that failure).
    async fn retry_while_unavailable(
        &self,
        f: &Follower,
        reactors: &[Arc<dyn Reactor>],
        done: &mut Positions,
        batch: &[StoredEvent],
    ) -> anyhow::Result<Option<anyhow::Error>> {
        let mut backoff = Backoff::unavailable();
        loop {
            match self.apply(reactors, done, batch).await {
                Ok(()) => return Ok(None),
                Err(Failure::Moved) => *done = self.positions(f).await?,
                Err(Failure::Unavailable(e)) => {
                    let pause = backoff.next_delay();
                    tracing::warn!(consumer = f.consumer, error = %format!("{e:#}"), ?pause, "unavailable; retrying");
                    tokio::time::sleep(pause).await;
                }
                Err(Failure::Failed(e)) => {
                    tracing::debug!(consumer = f.consumer, error = %format!("{e:#}"), "batch failed; isolating");
                    return Ok(Some(e));
                }
            }
        }
    }

    /// One reactor: the batch alone, then one event at a time with retries, then a
    /// dead letter.
    async fn handle_alone(
        &self,
        f: &Follower,
        r: &Arc<dyn Reactor>,
        done: &mut Positions,
        batch: &[StoredEvent],
    ) -> anyhow::Result<()> {
        let reactors = std::slice::from_ref(r);
        if batch.len() > 1
            && self
                .retry_while_unavailable(f, reactors, done, batch)
                .await?
                .is_none()
        {
            return Ok(());
        }
        for event in batch {
            let one = std::slice::from_ref(event);
            for attempt in 1..=MAX_ATTEMPTS {
                if event.seq <= done.get(r.name()).copied().unwrap_or(0) {
                    break;
                }
                let Some(e) = self.retry_while_unavailable(f, reactors, done, one).await? else {
                    break;
                };
                // An event that does not decode (a type or version this build does not
                // know) never will: a dead letter at once, without the retries.
                if undecodable(&e) {
                    self.dead_letter(r.name(), event, &format!("{e:#}"), attempt)
                        .await?;
                    done.insert(r.name(), event.seq);
                    break;
                }
                tracing::warn!(consumer = r.name(), seq = event.seq, attempt, error = %format!("{e:#}"), "apply failed");
                if attempt < MAX_ATTEMPTS {
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                } else {
                    self.dead_letter(r.name(), event, &format!("{e:#}"), attempt)
                        .await?;
                    done.insert(r.name(), event.seq);
                }
            }
        }
        Ok(())
    }

    /// Stages and records `batch` for `reactors` in one transaction, each from its
    /// own checkpoint.
    async fn apply(
        &self,
        reactors: &[Arc<dyn Reactor>],
        done: &mut Positions,
        batch: &[StoredEvent],
    ) -> Result<(), Failure> {
        let mut work = Vec::with_capacity(reactors.len());
        for r in reactors {
            let expected = done.get(r.name()).copied().unwrap_or(0);
            let events = after(batch, expected);
            if events.is_empty() {
                continue;
            }
            let staged = r.stage(events).await.map_err(classify)?;
            work.push((r, expected, events, staged));
        }
        if work.is_empty() {
            return Ok(());
        }
        let mut tx = self.store.pool.begin().await.map_err(classify)?;
        // Every checkpoint moves first, each from exactly where this driver left it
        // to the batch's last event (one statement for all at the same position):
        // when another applier moved one meanwhile, nothing is recorded; on
        // PostgreSQL the row locks taken here serialise two appliers before either
        // writes a row. (`after` never leaves a reactor's events empty here.)
        let moves: Vec<(&'static str, u64, u64)> = work
            .iter()
            .map(|(r, expected, events, _)| (r.name(), *expected, events[events.len() - 1].seq))
            .collect();
        if !checkpoint::advance_all_from(&mut tx, &moves)
            .await
            .map_err(classify)?
        {
            return Err(Failure::Moved);
        }
        for (r, _, events, staged) in work {
            r.record(&mut tx, events, staged).await.map_err(classify)?;
        }
        tx.commit().await.map_err(classify)?;
        for (name, _, last) in moves {
            done.insert(name, last);
            self.progress.set(name, last);
        }
        Ok(())
    }

    /// Records a dead letter in the log, then moves the checkpoint past the event
    /// (retrying while the database or the log is unavailable).
    async fn dead_letter(
        &self,
        consumer: &'static str,
        event: &StoredEvent,
        reason: &str,
        attempts: u32,
    ) -> anyhow::Result<()> {
        let mut backoff = Backoff::unavailable();
        loop {
            let result = async {
                record_dead_letter(&*self.log, consumer, event, reason, attempts).await?;
                let mut tx = self.store.pool.begin().await?;
                checkpoint::advance(&mut tx, consumer, event.seq).await?;
                tx.commit().await?;
                anyhow::Ok(())
            }
            .await;
            match result {
                Ok(()) => break,
                Err(e) if is_unavailable(&e) => tokio::time::sleep(backoff.next_delay()).await,
                Err(e) => return Err(e),
            }
        }
        self.progress.set(consumer, event.seq);
        Ok(())
    }

    /// A redrive: `reactor` handles `event` again (it was dead-lettered, so its
    /// checkpoint is past it), guarded in the same transaction by a record of the
    /// redrive, so a crash after the commit never applies it twice. False when a
    /// redrive had already applied it.
    pub async fn redrive(
        &self,
        reactor: &dyn Reactor,
        event: &StoredEvent,
    ) -> anyhow::Result<bool> {
        let one = std::slice::from_ref(event);
        let staged = reactor.stage(one).await?;
        let mut tx = self.store.pool.begin().await?;
        let fresh = sqlx::query(
            "INSERT INTO redrives_applied (consumer, stream, seq) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(reactor.name())
        .bind(event.stream.as_str())
        .bind(event.seq as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if fresh {
            reactor.record(&mut tx, one, staged).await?;
        }
        tx.commit().await?;
        Ok(fresh)
    }
}

/// A page of up to `batch` events from `from`, domain events decoded (the decoding
/// is kept in each event and shared by every reactor).
async fn read_page(
    log: Arc<dyn EventLog>,
    stream: StreamKind,
    from: u64,
    batch: usize,
) -> Result<Vec<StoredEvent>, LogError> {
    let events = log
        .read(stream, ReadFrom::Seq(from), None, batch.max(1))
        .await?;
    if stream == StreamKind::Domain {
        for e in &events {
            // An event that does not decode is dead-lettered when applied.
            let _ = e.decoded();
        }
    }
    Ok(events)
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
    record(log, consumer, event, None, reason, attempts).await
}

/// Appends `dead_letter.recorded` for one item of an event (a part of a webhook body
/// that cannot be understood, at `item`, its path in the body); the event's other
/// items went on. Its id is `<consumer>:<stream>:<seq>:<item>`.
pub async fn record_item_dead_letter(
    log: &dyn EventLog,
    consumer: &str,
    event: &StoredEvent,
    item: &str,
    reason: &str,
) -> anyhow::Result<()> {
    record(log, consumer, event, Some(item), reason, 1).await
}

async fn record(
    log: &dyn EventLog,
    consumer: &str,
    event: &StoredEvent,
    item: Option<&str>,
    reason: &str,
    attempts: u32,
) -> anyhow::Result<()> {
    let mut id = format!("{consumer}:{}:{}", event.stream.as_str(), event.seq);
    if let Some(item) = item {
        id = format!("{id}:{item}");
    }
    tracing::error!(consumer, seq = event.seq, item, event_type = %event.envelope.event_type, reason, "dead letter");
    let data = DeadLetterRecorded {
        id: id.clone(),
        consumer: consumer.to_string(),
        stream: event.stream.as_str().to_string(),
        seq: event.seq,
        event_type: event.envelope.event_type.clone(),
        reason: reason.chars().take(2000).collect(),
        attempts,
        item: item.map(str::to_owned),
    };
    let mut new = new_event(log.namespace(), None, Actor::system(consumer), &data);
    new.envelope = new.envelope.caused_by(&event.envelope);
    new.msg_id = Some(format!("dl:{id}:{attempts}"));
    log.append(new).await.context("recording a dead letter")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seqs: &[u64]) -> Vec<StoredEvent> {
        seqs.iter()
            .map(|&seq| {
                let new = wabridge_events::types::new_event(
                    &wabridge_events::Namespace::default(),
                    None,
                    Actor::cli("t"),
                    &DeadLetterRecorded {
                        id: "x".into(),
                        consumer: "x".into(),
                        stream: "domain".into(),
                        seq,
                        event_type: "x".into(),
                        reason: "x".into(),
                        attempts: 1,
                        item: None,
                    },
                );
                StoredEvent {
                    stream: StreamKind::Domain,
                    seq,
                    subject: new.subject,
                    envelope: new.envelope,
                    payload: new.payload,
                    decoded: Default::default(),
                }
            })
            .collect()
    }

    #[test]
    fn a_hole_in_a_subscription_cuts_the_batch() {
        let mut last = None;
        // The first event sets the start, whatever it is.
        assert_eq!(cut_at_gap(&at(&[7, 8, 9]), &mut last), 3);
        assert_eq!(last, Some(9));
        // Redeliveries of older events pass (the checkpoints skip them).
        assert_eq!(cut_at_gap(&at(&[8, 10, 11]), &mut last), 3);
        assert_eq!(last, Some(11));
        // A hole: only what comes before it.
        assert_eq!(cut_at_gap(&at(&[12, 14, 15]), &mut last), 1);
        assert_eq!(last, Some(12));
        assert_eq!(cut_at_gap(&at(&[20]), &mut last), 0);
        assert_eq!(last, Some(12));
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let delays: Vec<Duration> = (0..5).map(|_| b.next_delay()).collect();
        let steps = [100, 200, 400, 400, 400];
        for (d, step) in delays.iter().zip(steps) {
            let step = Duration::from_millis(step);
            assert!(*d >= step / 2 && *d <= step, "{d:?} for step {step:?}");
        }
    }

    #[test]
    fn unavailability_is_told_apart_from_failure() {
        let io = anyhow::Error::new(sqlx::Error::Io(std::io::Error::other("reset")));
        assert!(is_unavailable(&io.context("applying")));
        assert!(is_unavailable(&anyhow::Error::new(
            sqlx::Error::PoolTimedOut
        )));
        assert!(is_unavailable(&anyhow::Error::new(LogError(
            anyhow::anyhow!("nats down")
        ))));
        assert!(is_unavailable(
            &anyhow::Error::new(NotReady("routing lags".into())).context("staging")
        ));
        let bad = anyhow::anyhow!("no such column");
        assert!(!is_unavailable(&bad));
        let decode = anyhow::Error::new(sqlx::Error::ColumnNotFound("x".into()));
        assert!(!is_unavailable(&decode));
    }

    #[test]
    fn staged_values_come_back_by_type() {
        assert_eq!(Staged::new(vec![1u8]).take::<Vec<u8>>(), Some(vec![1]));
        assert_eq!(Staged::new(1u8).take::<String>(), None);
        assert_eq!(Staged::none().take::<u8>(), None);
    }
}
