//! Logs that wrap another log and change only some of its methods (timing appends,
//! sharing a subscription, or, in tests, counting calls and injecting faults).
//!
//! Implement [`WrappedLog`]: name the inner log, override what changes; every other
//! method goes to the inner log, and the wrapper is an [`EventLog`].

use std::time::Duration;

use bytes::Bytes;

use crate::{
    log::{KvEntry, Lease},
    AppendError, Appended, EventLog, EventStream, LogError, Namespace, NewEvent, ReadFrom,
    StoredEvent, StreamKind,
};

/// A log around another. The methods here default to the inner log's and may be
/// overridden (see [`EventLog`] for what each does); the others always go to the
/// inner log.
#[async_trait::async_trait]
pub trait WrappedLog: Send + Sync + 'static {
    /// The wrapped log.
    fn inner(&self) -> &dyn EventLog;

    /// [`EventLog::append`].
    async fn append(&self, event: NewEvent) -> Result<Appended, AppendError> {
        self.inner().append(event).await
    }

    /// [`EventLog::follow`].
    async fn follow(
        &self,
        stream: StreamKind,
        consumer: &str,
        from_seq: u64,
    ) -> Result<EventStream, LogError> {
        self.inner().follow(stream, consumer, from_seq).await
    }

    /// [`EventLog::follow_ephemeral`].
    async fn follow_ephemeral(
        &self,
        stream: StreamKind,
        from_seq: u64,
    ) -> Result<EventStream, LogError> {
        self.inner().follow_ephemeral(stream, from_seq).await
    }

    /// [`EventLog::kv_get`].
    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, LogError> {
        self.inner().kv_get(bucket, key).await
    }

    /// [`EventLog::kv_cas`].
    async fn kv_cas(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        expected_revision: u64,
    ) -> Result<Option<u64>, LogError> {
        self.inner()
            .kv_cas(bucket, key, value, expected_revision)
            .await
    }
}

#[async_trait::async_trait]
impl<T: WrappedLog> EventLog for T {
    async fn append(&self, event: NewEvent) -> Result<Appended, AppendError> {
        WrappedLog::append(self, event).await
    }

    async fn read(
        &self,
        stream: StreamKind,
        from: ReadFrom,
        filter: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, LogError> {
        self.inner().read(stream, from, filter, limit).await
    }

    async fn follow(
        &self,
        stream: StreamKind,
        consumer: &str,
        from_seq: u64,
    ) -> Result<EventStream, LogError> {
        WrappedLog::follow(self, stream, consumer, from_seq).await
    }

    async fn follow_ephemeral(
        &self,
        stream: StreamKind,
        from_seq: u64,
    ) -> Result<EventStream, LogError> {
        WrappedLog::follow_ephemeral(self, stream, from_seq).await
    }

    async fn last_seq(&self, stream: StreamKind) -> Result<u64, LogError> {
        self.inner().last_seq(stream).await
    }

    async fn last_subject_seq(&self, subject: &str) -> Result<u64, LogError> {
        self.inner().last_subject_seq(subject).await
    }

    async fn last_seq_covering(&self, subjects: &[String]) -> Result<u64, LogError> {
        self.inner().last_seq_covering(subjects).await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        replacing: Option<&str>,
    ) -> Result<Lease, LogError> {
        self.inner()
            .acquire_lease(name, holder, ttl, replacing)
            .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), LogError> {
        self.inner().release_lease(name, holder).await
    }

    async fn lease(&self, name: &str) -> Result<Option<Lease>, LogError> {
        self.inner().lease(name).await
    }

    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, LogError> {
        WrappedLog::kv_get(self, bucket, key).await
    }

    async fn kv_cas(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        expected_revision: u64,
    ) -> Result<Option<u64>, LogError> {
        WrappedLog::kv_cas(self, bucket, key, value, expected_revision).await
    }

    async fn ping(&self) -> Result<(), LogError> {
        self.inner().ping().await
    }

    fn max_payload(&self) -> usize {
        self.inner().max_payload()
    }

    fn namespace(&self) -> &Namespace {
        self.inner().namespace()
    }
}
