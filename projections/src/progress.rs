//! Read-your-writes: the sequence each consumer has applied, shared by the drivers of
//! this process, and waiting for a consumer to reach a sequence.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::sync::watch;

use crate::{checkpoint, Store};

/// The sequence each projection (or reactor) has applied, shared by the drivers of
/// this process (for read-your-writes without polling).
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

    /// What `name` has applied, as far as this process knows.
    pub fn get(&self, name: &str) -> u64 {
        *self.sender(name).borrow()
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
