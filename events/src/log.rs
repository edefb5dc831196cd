//! The event-log contract both backends implement (and one conformance suite checks).
//!
//! Semantics follow JetStream's, so the two backends are interchangeable:
//! - two streams ([`StreamKind`]), each with its own gap-free sequence starting at 1;
//! - an append is acknowledged only once durable, and returns its sequence;
//! - `msg_id` deduplicates inside the duplicate window: a repeat gets the original
//!   sequence with `duplicate: true`. The dedup check comes before the concurrency check;
//! - `expected_last_subject_seq`: the stream sequence of the last event on the
//!   subject must equal it (0 = the subject has no event yet), else
//!   [`AppendError::WrongLastSequence`].

use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;

use crate::{Envelope, Timestamp};

/// Which stream an event lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamKind {
    /// Domain events: kept forever.
    Domain,
    /// Raw Meta webhooks, byte-exact (may get a shorter retention).
    Raw,
}

impl StreamKind {
    /// Short name used in checkpoints and CLI output.
    pub fn as_str(&self) -> &'static str {
        match self {
            StreamKind::Domain => "domain",
            StreamKind::Raw => "raw",
        }
    }

    /// Parses the short name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "domain" => Some(StreamKind::Domain),
            "raw" => Some(StreamKind::Raw),
            _ => None,
        }
    }
}

/// An event to append.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// Full subject (see [`crate::Namespace`]); it selects the stream.
    pub subject: String,
    /// The metadata.
    pub envelope: Envelope,
    /// The data: JSON for domain events, the exact bytes for a raw webhook.
    pub payload: Bytes,
    /// Deduplication id (`Nats-Msg-Id`).
    pub msg_id: Option<String>,
    /// Optimistic concurrency: expected stream sequence of the subject's last event.
    pub expected_last_subject_seq: Option<u64>,
}

/// The result of an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The stream sequence of the (original, when duplicate) event.
    pub seq: u64,
    /// True when the msg id was seen inside the window and nothing new was stored.
    pub duplicate: bool,
}

/// An event as read back from the log.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    /// Its stream.
    pub stream: StreamKind,
    /// Its sequence in that stream.
    pub seq: u64,
    /// Its subject.
    pub subject: String,
    /// The metadata (with `recorded_at` as stored).
    pub envelope: Envelope,
    /// The data bytes.
    pub payload: Bytes,
    /// The payload decoded, once, for every reader of this event.
    pub decoded: DecodedOnce,
}

/// A stored event's decoded data, computed on first use (every projection of a
/// batch reads the same event, so the same decoding). No allocation until used;
/// boxed, so that an event is about a quarter of the size to move until then (a decoded
/// event is 832 bytes inline: events were 1,128 bytes, and a replay's pages of
/// thousands of them were mostly copies of empty slots).
#[derive(Clone, Default)]
pub struct DecodedOnce(std::sync::OnceLock<Box<crate::types::DomainEvent>>);

impl std::fmt::Debug for DecodedOnce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DecodedOnce")
    }
}

impl StoredEvent {
    /// The event's data decoded (once; later calls return the same decoding). An
    /// unknown type or bad data is an error each time.
    pub fn decoded(&self) -> Result<&crate::types::DomainEvent, crate::types::DecodeError> {
        if let Some(d) = self.decoded.0.get() {
            return Ok(d);
        }
        let d = crate::types::DomainEvent::decode(&self.envelope, &self.payload)?;
        Ok(self.decoded.0.get_or_init(|| Box::new(d)))
    }
}

/// Where a read starts.
#[derive(Clone, Copy, Debug)]
pub enum ReadFrom {
    /// The first event with this sequence or a later one.
    Seq(u64),
    /// The first event recorded at or after this time.
    Time(Timestamp),
}

/// Why an append failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The optimistic-concurrency check failed.
    #[error("wrong last sequence for subject {subject}: expected {expected}, found {actual}")]
    WrongLastSequence {
        /// The subject.
        subject: String,
        /// What the caller expected.
        expected: u64,
        /// What the log has (0 = nothing), when known.
        actual: u64,
    },
    /// The payload is larger than the log accepts.
    #[error("payload of {size} bytes exceeds the log's limit of {limit} bytes")]
    PayloadTooLarge {
        /// Payload size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The subject does not belong to this log's namespace.
    #[error("subject {0:?} is not in this log's namespace")]
    BadSubject(String),
    /// The log could not be reached or failed.
    #[error(transparent)]
    Log(#[from] LogError),
}

/// A failure of the log itself (unreachable, I/O, corrupt record).
#[derive(Debug, thiserror::Error)]
#[error("event log: {0:#}")]
pub struct LogError(pub anyhow::Error);

impl LogError {
    /// Wraps any error.
    pub fn new(e: impl Into<anyhow::Error>) -> Self {
        LogError(e.into())
    }
}

/// A time-bound claim on a piece of work.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    /// Who holds it (an instance id).
    pub holder: String,
    /// When it lapses unless renewed.
    pub expires_at: Timestamp,
}

impl Lease {
    /// Whether it is still live at `now`.
    pub fn live_at(&self, now: Timestamp) -> bool {
        self.expires_at > now
    }
}

/// A value in the log's small compare-and-set key-value store, with its revision.
///
/// The store is for shared state that must survive restarts and be safe across
/// instances on the same log: every write names the revision it replaces (see
/// [`EventLog::kv_cas`]), so of two instances racing on a key exactly one wins. Its
/// first user is the rate limiter, which keeps each key's theoretical arrival time
/// (TAT) there. It is not an event: nothing is appended to a stream, there is no
/// history, and followers never see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEntry {
    /// The stored bytes.
    pub value: Bytes,
    /// The revision of this value: strictly increasing per key, never 0 (0 means
    /// "absent" in [`EventLog::kv_cas`]). On JetStream it is the bucket stream's
    /// sequence, so it grows by more than 1 between writes; on the embedded log it
    /// grows by 1.
    pub revision: u64,
}

/// Longest key-value bucket name.
pub const KV_BUCKET_MAX: usize = 32;
/// Longest key-value key, in bytes.
pub const KV_KEY_MAX: usize = 200;

/// Checks a key-value bucket and key: buckets are short names `[a-z0-9_]+` (at most
/// [`KV_BUCKET_MAX`]); keys are any non-empty text of at most [`KV_KEY_MAX`] bytes
/// (backends encode what their store does not allow).
pub fn check_kv_names(bucket: &str, key: &str) -> Result<(), LogError> {
    let bucket_ok = !bucket.is_empty()
        && bucket.len() <= KV_BUCKET_MAX
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !bucket_ok {
        return Err(LogError(anyhow::anyhow!(
            "key-value bucket {bucket:?} is not 1 to {KV_BUCKET_MAX} characters of [a-z0-9_]"
        )));
    }
    if key.is_empty() || key.len() > KV_KEY_MAX {
        return Err(LogError(anyhow::anyhow!(
            "key-value key {key:?} is not 1 to {KV_KEY_MAX} bytes"
        )));
    }
    Ok(())
}

/// A stream of events read from the log, in sequence order.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<StoredEvent, LogError>> + Send>>;

/// The event log: append, read, follow.
#[async_trait::async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends one event; returns once it is durable.
    async fn append(&self, event: NewEvent) -> Result<Appended, AppendError>;

    /// Reads up to `limit` events of a stream from a position, optionally only the
    /// subjects matching `filter` (NATS wildcards).
    async fn read(
        &self,
        stream: StreamKind,
        from: ReadFrom,
        filter: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, LogError>;

    /// Follows a stream from `from_seq` (inclusive) for ever, in order, waiting for
    /// new events. `consumer` names the reader (a durable consumer on JetStream).
    async fn follow(
        &self,
        stream: StreamKind,
        consumer: &str,
        from_seq: u64,
    ) -> Result<EventStream, LogError>;

    /// Follows a stream like [`EventLog::follow`] without a named consumer (an
    /// ephemeral ordered consumer on JetStream): for in-memory views each process
    /// keeps for itself.
    async fn follow_ephemeral(
        &self,
        stream: StreamKind,
        from_seq: u64,
    ) -> Result<EventStream, LogError>;

    /// The sequence of the last event in a stream (0 when empty).
    async fn last_seq(&self, stream: StreamKind) -> Result<u64, LogError>;

    /// The sequence of the last event on a subject (0 when none).
    async fn last_subject_seq(&self, subject: &str) -> Result<u64, LogError>;

    /// A sequence that covers the last event on each of `subjects` (all in one
    /// stream): at least the last sequence of every one of them, at most the
    /// stream's head. A projection that has applied it is fresh for all of them, so
    /// a decision about many aggregates (the consent settings of every workspace a
    /// chunk of webhooks reaches) needs one look-up, not one per subject. The
    /// embedded log answers exactly; JetStream asks its stream leader for the last
    /// event on the subjects' [`covering_patterns`](crate::subject::covering_patterns)
    /// (one request for subjects of one shape), which may be a later event on
    /// another subject of that shape. 0 when none of them has an event (on
    /// JetStream: nor any subject its pattern matches), and for no subjects.
    async fn last_seq_covering(&self, subjects: &[String]) -> Result<u64, LogError>;

    /// Takes or renews the lease `name` for `holder` for `ttl`, unless another holder
    /// has a live one (other than `replacing`, a holder known to be dead). Returns the
    /// lease as it stands afterwards: held by us when its `holder` is ours. One lease
    /// serialises a piece of work (the workers) across the processes on this log.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
        replacing: Option<&str>,
    ) -> Result<Lease, LogError>;

    /// Gives up the lease if `holder` holds it.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), LogError>;

    /// The live lease `name`, if anyone holds one.
    async fn lease(&self, name: &str) -> Result<Option<Lease>, LogError>;

    /// The current value of `key` in the key-value `bucket` (see [`KvEntry`]), or
    /// `None` when the key was never written (or was deleted). Buckets are small
    /// names `[a-z0-9_]+` (see [`check_kv_names`]), created on first use.
    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, LogError>;

    /// Compare-and-set: writes `value` only if the key's current revision equals
    /// `expected_revision` (0 = the key must not exist). Returns `Some(new_revision)`
    /// once the write is durable, `None` when the revision did not match (a
    /// concurrent writer won: read again with [`EventLog::kv_get`] and retry). It
    /// never overwrites blindly. An `Err` leaves the outcome unknown (the write may
    /// or may not have landed): re-read before retrying.
    async fn kv_cas(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        expected_revision: u64,
    ) -> Result<Option<u64>, LogError>;

    /// Cheap reachability check for `/readyz`.
    async fn ping(&self) -> Result<(), LogError>;

    /// The largest payload the log accepts.
    fn max_payload(&self) -> usize;

    /// The subject namespace.
    fn namespace(&self) -> &crate::Namespace;
}

/// The error of a look-up over subjects that are not all in one stream (see
/// [`EventLog::last_seq_covering`]): their sequences would not compare.
pub(crate) fn not_one_stream(subjects: &[String]) -> anyhow::Error {
    anyhow::anyhow!(
        "the subjects {:?} are not all in one stream of this namespace",
        subjects.iter().take(3).collect::<Vec<_>>()
    )
}
