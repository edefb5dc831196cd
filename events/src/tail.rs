//! One live subscription to the domain stream, shared by every in-process follower
//! of it.
//!
//! A process runs several followers of the domain stream that only watch what
//! happens now (the feed's hub, the delivery dispatcher, the sender, the
//! onboarding runner, the token cache). Each with a subscription of its own, every
//! event was delivered, parsed and decoded once per follower; with [`SharedTail`]
//! it is read once and handed to each of them. A follower that starts behind the
//! tail reads the gap from the log first, then joins the tail, so each still gets
//! every event from its position, in order, once.
//!
//! The tail itself resubscribes (from its last event) when the log fails, so its
//! followers never see that. A follower that falls more than [`TAIL_CAPACITY`]
//! events behind gets an error and ends, as on a read failure: it follows again.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use futures_util::StreamExt;
use tokio::sync::broadcast;

use crate::{EventLog, EventStream, LogError, ReadFrom, StoredEvent, StreamKind};

/// Events a follower may be behind the tail before it must follow again.
pub const TAIL_CAPACITY: usize = 4096;

/// Events read from the log per page when a follower catches up to the tail.
const PAGE: usize = 500;

/// An [`EventLog`] whose `follow_ephemeral` of the domain stream shares one
/// subscription; everything else goes to the inner log.
pub struct SharedTail {
    inner: Arc<dyn EventLog>,
    tail: Mutex<Option<Tail>>,
    /// Subscriptions the tail opened on the inner log (one, unless it failed).
    subscriptions: Arc<AtomicU64>,
}

#[derive(Clone)]
struct Tail {
    tx: broadcast::Sender<StoredEvent>,
    /// The last sequence handed to `tx` (stored before it is sent).
    position: Arc<AtomicU64>,
}

impl SharedTail {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn EventLog>) -> Self {
        SharedTail {
            inner,
            tail: Mutex::new(None),
            subscriptions: Arc::default(),
        }
    }

    /// The running tail, started at `from` when there is none yet.
    fn tail(&self, from: u64) -> Tail {
        let mut slot = self.tail.lock().expect("tail lock");
        if let Some(t) = slot.as_ref() {
            return t.clone();
        }
        let (tx, _) = broadcast::channel(TAIL_CAPACITY);
        let tail = Tail {
            tx,
            position: Arc::new(AtomicU64::new(from.max(1) - 1)),
        };
        tokio::spawn(run_tail(
            self.inner.clone(),
            tail.clone(),
            self.subscriptions.clone(),
        ));
        *slot = Some(tail.clone());
        tail
    }
}

/// Follows the domain stream for ever from the tail's position, handing each event
/// to the followers; a read failure only resubscribes.
async fn run_tail(log: Arc<dyn EventLog>, tail: Tail, subscriptions: Arc<AtomicU64>) {
    loop {
        let from = tail.position.load(Ordering::SeqCst) + 1;
        subscriptions.fetch_add(1, Ordering::SeqCst);
        match log.follow_ephemeral(StreamKind::Domain, from).await {
            Ok(mut events) => {
                while let Some(item) = events.next().await {
                    match item {
                        Ok(e) => {
                            if e.seq <= tail.position.load(Ordering::SeqCst) {
                                continue;
                            }
                            // Position first: a follower that joins now either
                            // reads this event from the log or receives it.
                            tail.position.store(e.seq, Ordering::SeqCst);
                            // An error only says no follower listens now; one that
                            // joins later reads this event from the log.
                            let _ = tail.tx.send(e);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "domain tail: read failed; following again");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "domain tail: follow failed; trying again"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A follower's state: catching up from the log, then on the tail.
struct Joining {
    log: Arc<dyn EventLog>,
    rx: broadcast::Receiver<StoredEvent>,
    /// The next sequence this follower wants.
    next: u64,
    /// The tail's position when the follower joined: up to it, read the log.
    caught_up_at: u64,
    page: VecDeque<StoredEvent>,
    failed: bool,
}

impl Joining {
    async fn next_event(&mut self) -> Option<Result<StoredEvent, LogError>> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(e) = self.page.pop_front() {
                self.next = e.seq + 1;
                return Some(Ok(e));
            }
            if self.next <= self.caught_up_at {
                match self
                    .log
                    .read(StreamKind::Domain, ReadFrom::Seq(self.next), None, PAGE)
                    .await
                {
                    Ok(events) => {
                        let before = self.caught_up_at;
                        self.page
                            .extend(events.into_iter().filter(|e| e.seq <= before));
                        if self.page.is_empty() {
                            // Nothing more up to the join point (a hole the log has).
                            self.next = self.caught_up_at + 1;
                        }
                        continue;
                    }
                    Err(e) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                }
            }
            match self.rx.recv().await {
                Ok(e) if e.seq < self.next => continue,
                Ok(e) => {
                    self.next = e.seq + 1;
                    return Some(Ok(e));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.failed = true;
                    return Some(Err(LogError(anyhow::anyhow!(
                        "fell {n} events behind the shared domain tail"
                    ))));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[async_trait::async_trait]
impl crate::WrappedLog for SharedTail {
    fn inner(&self) -> &dyn EventLog {
        &*self.inner
    }

    async fn follow_ephemeral(
        &self,
        stream: StreamKind,
        from_seq: u64,
    ) -> Result<EventStream, LogError> {
        if stream != StreamKind::Domain {
            return self.inner.follow_ephemeral(stream, from_seq).await;
        }
        let tail = self.tail(from_seq);
        // Subscribe, then read the position: whatever comes after it is received.
        let rx = tail.tx.subscribe();
        let caught_up_at = tail.position.load(Ordering::SeqCst);
        let joining = Joining {
            log: self.inner.clone(),
            rx,
            next: from_seq.max(1),
            caught_up_at,
            page: VecDeque::new(),
            failed: false,
        };
        Ok(Box::pin(futures_util::stream::unfold(
            joining,
            |mut j| async move { j.next_event().await.map(|item| (item, j)) },
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        backends::embedded::{EmbeddedConfig, EmbeddedLog},
        types::{new_event, WorkspaceCreated},
        Actor, Slug,
    };

    async fn append(log: &dyn EventLog, i: usize) {
        let slug = Slug::parse(&format!("tail-{i}")).unwrap();
        log.append(new_event(
            log.namespace(),
            Some(slug.clone()),
            Actor::cli("t"),
            &WorkspaceCreated {
                slug,
                name: "x".into(),
            },
        ))
        .await
        .unwrap();
    }

    async fn take(stream: &mut EventStream, n: usize) -> Vec<u64> {
        let mut seqs = vec![];
        while seqs.len() < n {
            let e = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("an event within 10 s")
                .expect("the stream goes on")
                .expect("no error");
            seqs.push(e.seq);
        }
        seqs
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn followers_from_any_position_get_every_event_in_order_once() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn EventLog> = Arc::new(
            EmbeddedLog::open(EmbeddedConfig::new(dir.path().join("e.db")))
                .await
                .unwrap(),
        );
        for i in 0..20 {
            append(&*inner, i).await;
        }
        let log = Arc::new(SharedTail::new(inner));
        // The first follower starts the tail at 21 (the head + 1).
        let mut live = log.follow_ephemeral(StreamKind::Domain, 21).await.unwrap();
        // Appends while followers join, from behind the tail and ahead of it.
        let writer = {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 20..220 {
                    append(&*log, i).await;
                    if i % 50 == 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        };
        let mut from_start = log.follow_ephemeral(StreamKind::Domain, 1).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let mut from_five = log.follow_ephemeral(StreamKind::Domain, 5).await.unwrap();
        let mut ahead = log.follow_ephemeral(StreamKind::Domain, 200).await.unwrap();
        writer.await.unwrap();
        assert_eq!(take(&mut live, 200).await, (21..=220).collect::<Vec<_>>());
        assert_eq!(
            take(&mut from_start, 220).await,
            (1..=220).collect::<Vec<_>>()
        );
        assert_eq!(
            take(&mut from_five, 216).await,
            (5..=220).collect::<Vec<_>>()
        );
        assert_eq!(take(&mut ahead, 21).await, (200..=220).collect::<Vec<_>>());
        // One subscription to the log behind all four.
        assert_eq!(log.subscriptions.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_too_far_behind_gets_an_error_and_ends() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn EventLog> = Arc::new(
            EmbeddedLog::open(EmbeddedConfig::new(dir.path().join("e.db")))
                .await
                .unwrap(),
        );
        let log = Arc::new(SharedTail::new(inner));
        let mut slow = log.follow_ephemeral(StreamKind::Domain, 1).await.unwrap();
        let mut fast = log.follow_ephemeral(StreamKind::Domain, 1).await.unwrap();
        let n = TAIL_CAPACITY + 100;
        // One follower keeps up while the events come; the other reads nothing.
        let reader = tokio::spawn(async move { take(&mut fast, n).await });
        for i in 0..n {
            append(&*log, i).await;
        }
        assert_eq!(reader.await.unwrap(), (1..=n as u64).collect::<Vec<_>>());
        let mut got = 0;
        let err = loop {
            match slow.next().await {
                Some(Ok(_)) => got += 1,
                Some(Err(e)) => break e,
                None => panic!("ended without an error after {got} events"),
            }
        };
        assert!(err.to_string().contains("behind"), "{err}");
        assert!(slow.next().await.is_none(), "a lagged follower ends");
    }
}
