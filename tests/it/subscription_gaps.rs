//! A subscription that skips events — as a JetStream durable consumer can when its
//! server is SIGKILLed and restarted: it goes on past messages it had delivered
//! into the dead connection and redelivers them only after the ack wait, behind
//! the checkpoint — must never move a checkpoint past them. A log whose first
//! subscription drops one event stands in for that server; the driver must still
//! apply every event, each once.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use sqlx::AnyConnection;
use wabridge_events::{
    backends::embedded::{EmbeddedConfig, EmbeddedLog},
    types::{new_event, WorkspaceCreated},
    Actor, EventLog, EventStream, LogError, Slug, StoredEvent, StreamKind,
};
use wabridge_projections::driver::{Driver, Follower, Reactor, Staged};

/// The embedded log, except that the first subscription skips event `drop_seq`.
struct Skipping {
    inner: EmbeddedLog,
    drop_seq: u64,
    dropped: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl wabridge_events::WrappedLog for Skipping {
    fn inner(&self) -> &dyn EventLog {
        &self.inner
    }

    async fn follow(
        &self,
        stream: StreamKind,
        consumer: &str,
        from_seq: u64,
    ) -> Result<EventStream, LogError> {
        let events = self.inner.follow(stream, consumer, from_seq).await?;
        if self.dropped.swap(true, Ordering::SeqCst) {
            return Ok(events);
        }
        let drop_seq = self.drop_seq;
        Ok(Box::pin(events.filter(move |e| {
            let keep = !matches!(e, Ok(e) if e.seq == drop_seq);
            async move { keep }
        })))
    }
}

/// Notes every event it applies.
struct Recorder(Arc<Mutex<Vec<u64>>>);

#[async_trait::async_trait]
impl Reactor for Recorder {
    fn name(&self) -> &'static str {
        "gap_recorder"
    }

    async fn record(
        &self,
        _tx: &mut AnyConnection,
        batch: &[StoredEvent],
        _staged: Staged,
    ) -> anyhow::Result<()> {
        self.0.lock().unwrap().extend(batch.iter().map(|e| e.seq));
        Ok(())
    }
}

#[tokio::test]
async fn a_subscription_that_skips_an_event_never_moves_a_checkpoint_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let inner = EmbeddedLog::open(EmbeddedConfig::new(dir.path().join("events.db")))
        .await
        .unwrap();
    for i in 0..10 {
        let slug = Slug::parse(&format!("gap-{i}")).unwrap();
        let ev = new_event(
            inner.namespace(),
            Some(slug.clone()),
            Actor::cli("test"),
            &WorkspaceCreated {
                slug,
                name: "x".into(),
            },
        );
        inner.append(ev).await.unwrap();
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Skipping {
        inner,
        drop_seq: 5,
        dropped: dropped.clone(),
    });
    let store = wabridge_projections::Store::connect(&format!(
        "sqlite://{}",
        dir.path().join("read.db").display()
    ))
    .await
    .unwrap();
    let applied = Arc::new(Mutex::new(vec![]));
    let driver = Driver {
        log,
        store: store.clone(),
        progress: Default::default(),
    };
    let follower = Follower {
        consumer: "gappy",
        stream: StreamKind::Domain,
        reactors: vec![Arc::new(Recorder(applied.clone()))],
    };
    let run = tokio::spawn(async move { driver.run(&follower).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.checkpoint("gap_recorder").await.unwrap_or(0) < 10 {
        assert!(
            Instant::now() < deadline,
            "the follower did not reach the head"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    run.abort();
    assert!(dropped.load(Ordering::SeqCst), "the test dropped nothing");
    assert_eq!(
        *applied.lock().unwrap(),
        (1..=10).collect::<Vec<u64>>(),
        "every event applied, in order, once"
    );
}
