//! The JetStream event log (async-nats). Streams are configured by the code: file
//! storage, the configured replicas and duplicate window, `discard: new` (a full log
//! refuses appends rather than dropping old events), deletes and purges denied.
//!
//! Appends return only after the server's `PubAck`; with `sync_interval: always`
//! (the shipped nats.conf) that means fsynced. Projections follow through a pull
//! consumer created for each subscription at the position the read model's
//! checkpoint names, so the read-model database stays the authority.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use anyhow::Context;
use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy},
    context::PublishErrorKind,
    kv,
    message::PublishMessage,
    stream::{self, DiscardPolicy, StorageType},
};
use bytes::Bytes;
use futures_util::StreamExt;

use super::headers;
use crate::{
    log::{check_kv_names, KvEntry},
    AppendError, Appended, EventLog, EventStream, Lease, LogError, Namespace, NewEvent, ReadFrom,
    StoredEvent, StreamKind, Timestamp,
};

/// Room kept for headers: the server's `max_payload` and the stream's
/// `max_message_size` count headers and payload together.
const HEADER_ROOM: usize = 4096;

/// How long a follower's pull request lasts.
const FOLLOW_PULL_EXPIRY: Duration = Duration::from_secs(5);
/// The idle heartbeat the server sends a follower meanwhile (two missed
/// ones end the subscription with an error).
const FOLLOW_HEARTBEAT: Duration = Duration::from_secs(1);
/// How long the server keeps a follower's consumer nobody pulls from (one left by a
/// process that died, or whose deletion failed).
const FOLLOWER_INACTIVE: Duration = Duration::from_secs(60);

/// The dedup id of a probe publish that can never be the stream's last message id.
const DEDUP_PROBE: &str = "wabridge:dedup-probe";

/// How to reach JetStream and how to shape the streams.
#[derive(Clone, Debug)]
pub struct JetStreamConfig {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// `NATS_CREDS`: a credentials file.
    pub creds_file: Option<PathBuf>,
    /// `NATS_TLS_CA`: root certificates to trust.
    pub tls_ca: Option<PathBuf>,
    /// `NATS_TLS_CERT` / `NATS_TLS_KEY`: a client certificate.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// `NATS_TLS_REQUIRED`: refuse plain connections.
    pub tls_required: bool,
    /// Stream replicas (1 in development, 3 in a cluster).
    pub replicas: usize,
    /// The duplicate window.
    pub duplicate_window: Duration,
    /// Max age of the raw stream's messages (`WABRIDGE_RAW_RETENTION`); none: kept.
    pub raw_max_age: Option<Duration>,
    /// Largest payload we append (the server's `max_payload` also applies).
    pub max_payload: usize,
    /// The subject and stream namespace.
    pub namespace: Namespace,
    /// How long the first connection may take before start-up fails.
    pub connect_timeout: Duration,
}

impl JetStreamConfig {
    /// Defaults for a URL: R1, 10-minute window, 8 MiB payloads.
    pub fn new(url: &str) -> Self {
        JetStreamConfig {
            url: url.to_string(),
            creds_file: None,
            tls_ca: None,
            tls_client: None,
            tls_required: false,
            replicas: 1,
            duplicate_window: Duration::from_secs(600),
            raw_max_age: None,
            max_payload: 8 * 1024 * 1024,
            namespace: Namespace::default(),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// The JetStream log (cheap to clone).
#[derive(Clone)]
pub struct JetStreamLog {
    client: async_nats::Client,
    js: jetstream::Context,
    cfg: std::sync::Arc<JetStreamConfig>,
    max_payload: usize,
    /// Stream handles (domain, raw), fetched once: message look-ups need no info.
    handles: std::sync::Arc<std::sync::OnceLock<(stream::Stream, stream::Stream)>>,
    /// The lease bucket (`<NS>_LEASES`).
    leases: std::sync::Arc<std::sync::OnceLock<kv::Store>>,
    /// The key-value buckets (`<NS>_KV_<BUCKET>`) opened so far, by logical name.
    kv_stores: std::sync::Arc<tokio::sync::Mutex<HashMap<String, kv::Store>>>,
    /// Each follower's current consumer on the server, by the follower's name, to
    /// delete when it subscribes again.
    followers: std::sync::Arc<std::sync::Mutex<HashMap<String, String>>>,
}

impl JetStreamLog {
    /// Reads up to `limit` events through `consumer`, created at `from`.
    async fn read_from(
        &self,
        kind: StreamKind,
        consumer: jetstream::consumer::Consumer<pull::OrderedConfig>,
        from: ReadFrom,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, LogError> {
        let pending = consumer.cached_info().num_pending as usize;
        let want = pending.min(limit);
        let mut out = Vec::with_capacity(want);
        if want == 0 {
            return Ok(out);
        }
        let mut messages = consumer.messages().await.map_err(LogError::new)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while out.len() < want {
            let msg = match tokio::time::timeout(Duration::from_secs(1), messages.next()).await {
                Ok(Some(m)) => m.map_err(LogError::new)?,
                Ok(None) => break,
                Err(_) => {
                    // Counted as pending but not coming: expired (a raw stream's
                    // max age) or purged meanwhile when the stream now starts past
                    // what was read; the page ends there (the next read counts
                    // again). Otherwise wait, up to the deadline.
                    let next = match (out.last(), &from) {
                        (Some(e), _) => Some(e.seq + 1),
                        (None, ReadFrom::Seq(n)) => Some(*n),
                        (None, ReadFrom::Time(_)) => None,
                    };
                    let state = self
                        .fetch_stream(kind)
                        .await
                        .map(|s| s.cached_info().state.clone())
                        .map_err(|e| LogError(anyhow::anyhow!("{e}")))?;
                    let gone = state.messages == 0
                        || next
                            .is_some_and(|n| state.first_sequence > n || state.last_sequence < n);
                    if gone {
                        break;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(LogError(anyhow::anyhow!(
                            "timed out reading the {} stream: {} of {want} pending events read, next {next:?}; the stream holds {} from {} to {}",
                            kind.as_str(),
                            out.len(),
                            state.messages,
                            state.first_sequence,
                            state.last_sequence,
                        )));
                    }
                    continue;
                }
            };
            let seq = msg
                .info()
                .map_err(|e| LogError(anyhow::anyhow!("{e}")))?
                .stream_sequence;
            out.push(to_stored(kind, &msg, seq)?);
        }
        Ok(out)
    }

    /// Connects (failing fast when the server is unreachable) and creates or updates
    /// both streams.
    pub async fn connect(cfg: JetStreamConfig) -> anyhow::Result<Self> {
        let mut opts = async_nats::ConnectOptions::new()
            .connection_timeout(cfg.connect_timeout)
            .name("wabridge");
        if let Some(creds) = &cfg.creds_file {
            opts = opts
                .credentials_file(creds)
                .await
                .with_context(|| format!("reading NATS_CREDS {}", creds.display()))?;
        }
        if let Some(ca) = &cfg.tls_ca {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &cfg.tls_client {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        opts = opts.require_tls(cfg.tls_required);
        let urls: Vec<&str> = cfg
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let client = tokio::time::timeout(cfg.connect_timeout, opts.connect(urls))
            .await
            .map_err(|_| anyhow::anyhow!("timed out connecting to NATS_URL"))?
            .context("connecting to NATS_URL")?;
        let js = jetstream::new(client.clone());
        let max_payload = cfg
            .max_payload
            .min(client.server_info().max_payload.saturating_sub(HEADER_ROOM));
        let log = JetStreamLog {
            client,
            js,
            cfg: std::sync::Arc::new(cfg),
            max_payload,
            handles: Default::default(),
            leases: Default::default(),
            kv_stores: Default::default(),
            followers: Default::default(),
        };
        for kind in [StreamKind::Domain, StreamKind::Raw] {
            log.ensure_stream(kind).await?;
        }
        let domain = log.fetch_stream(StreamKind::Domain).await?;
        let raw = log.fetch_stream(StreamKind::Raw).await?;
        let _ = log.handles.set((domain, raw));
        let leases = log.ensure_lease_bucket().await?;
        let _ = log.leases.set(leases);
        Ok(log)
    }

    async fn ensure_stream(&self, kind: StreamKind) -> anyhow::Result<()> {
        let ns = &self.cfg.namespace;
        // Raw webhooks expire after their max age (the domain stream keeps
        // everything); JetStream wants the duplicate window within the max age.
        let max_age = match kind {
            StreamKind::Raw => self.cfg.raw_max_age.unwrap_or_default(),
            StreamKind::Domain => Duration::ZERO,
        };
        let duplicate_window = if max_age.is_zero() {
            self.cfg.duplicate_window
        } else {
            self.cfg.duplicate_window.min(max_age)
        };
        let config = stream::Config {
            name: ns.stream_name(kind),
            subjects: vec![ns.stream_filter(kind)],
            storage: StorageType::File,
            num_replicas: self.cfg.replicas,
            duplicate_window,
            max_age,
            discard: DiscardPolicy::New,
            deny_delete: true,
            deny_purge: true,
            allow_direct: true,
            max_message_size: (self.max_payload + HEADER_ROOM).min(i32::MAX as usize) as i32,
            ..Default::default()
        };
        tokio::time::timeout(
            Duration::from_secs(10),
            self.js.create_or_update_stream(config),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!("timed out creating the JetStream stream (is JetStream enabled?)")
        })?
        .with_context(|| format!("creating JetStream stream {}", ns.stream_name(kind)))?;
        Ok(())
    }

    async fn ensure_lease_bucket(&self) -> anyhow::Result<kv::Store> {
        let bucket = format!(
            "{}_LEASES",
            self.cfg.namespace.as_str().to_ascii_uppercase()
        );
        let config = kv::Config {
            bucket: bucket.clone(),
            history: 1,
            storage: StorageType::File,
            num_replicas: self.cfg.replicas,
            ..Default::default()
        };
        tokio::time::timeout(
            Duration::from_secs(10),
            self.js.create_or_update_key_value(config),
        )
        .await
        .map_err(|_| anyhow::anyhow!("timed out creating the JetStream lease bucket"))?
        .with_context(|| format!("creating JetStream key-value bucket {bucket}"))
    }

    /// The key-value bucket behind the logical `bucket` (`<NS>_KV_<BUCKET>`, history
    /// 1, file storage, the streams' replicas), created on first use and cached.
    async fn kv_store(&self, bucket: &str) -> Result<kv::Store, LogError> {
        let mut stores = self.kv_stores.lock().await;
        if let Some(store) = stores.get(bucket) {
            return Ok(store.clone());
        }
        let name = format!(
            "{}_KV_{}",
            self.cfg.namespace.as_str().to_ascii_uppercase(),
            bucket.to_ascii_uppercase()
        );
        let config = kv::Config {
            bucket: name.clone(),
            history: 1,
            storage: StorageType::File,
            num_replicas: self.cfg.replicas,
            ..Default::default()
        };
        // Concurrent first uses wait on the lock rather than race to create it.
        let store = tokio::time::timeout(
            Duration::from_secs(10),
            self.js.create_or_update_key_value(config),
        )
        .await
        .map_err(|_| {
            LogError(anyhow::anyhow!(
                "timed out creating key-value bucket {name}"
            ))
        })?
        .with_context(|| format!("creating JetStream key-value bucket {name}"))
        .map_err(LogError)?;
        stores.insert(bucket.to_string(), store.clone());
        Ok(store)
    }

    fn lease_store(&self) -> Result<&kv::Store, LogError> {
        self.leases
            .get()
            .ok_or_else(|| LogError(anyhow::anyhow!("the lease bucket is not open")))
    }

    /// Fetches a stream (with fresh info).
    async fn fetch_stream(&self, kind: StreamKind) -> Result<stream::Stream, LogError> {
        self.js
            .get_stream(self.cfg.namespace.stream_name(kind))
            .await
            .map_err(LogError::new)
    }

    /// A stream handle (its cached info may be stale; use [`Self::fetch_stream`] for info).
    async fn stream(&self, kind: StreamKind) -> Result<stream::Stream, LogError> {
        match (self.handles.get(), kind) {
            (Some((d, _)), StreamKind::Domain) => Ok(d.clone()),
            (Some((_, r)), StreamKind::Raw) => Ok(r.clone()),
            (None, _) => self.fetch_stream(kind).await,
        }
    }

    /// The underlying client (for benchmarks comparing raw publishes).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Waits until everything published has been flushed (used at shutdown).
    pub async fn flush(&self) -> Result<(), LogError> {
        self.client.flush().await.map_err(LogError::new)
    }
}

/// Whether a publish failed its optimistic-concurrency check (a clustered stream
/// reports it as a generic error with code 10164).
fn is_wrong_last_sequence(e: &jetstream::context::PublishError) -> bool {
    if e.kind() == PublishErrorKind::WrongLastSequence {
        return true;
    }
    let code = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .map(|j| j.error_code());
    matches!(code, Some(c) if c == jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE || c == jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT)
}

/// Whether an error chain holds a failed expected-sequence check (a KV revision
/// mismatch): the typed kinds, or the server's error codes (a clustered stream
/// reports code 10164 as a generic error, which the typed kinds miss).
fn is_revision_mismatch(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(u) = err.downcast_ref::<kv::UpdateError>() {
            if u.kind() == kv::UpdateErrorKind::WrongLastRevision {
                return true;
            }
        }
        if let Some(c) = err.downcast_ref::<kv::CreateError>() {
            if c.kind() == kv::CreateErrorKind::AlreadyExists {
                return true;
            }
        }
        if let Some(p) = err.downcast_ref::<jetstream::context::PublishError>() {
            if is_wrong_last_sequence(p) {
                return true;
            }
        }
        if let Some(j) = err.downcast_ref::<jetstream::Error>() {
            let c = j.error_code();
            if c == jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                || c == jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
            {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// A KV key for any key text, one to one: `[A-Za-z0-9_-]` stay, every other byte
/// becomes `=XX` (hex; `=` itself is escaped, so no two keys collide).
fn kv_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// Lease names may hold characters a KV key may not.
fn lease_key(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn decode_lease(entry: &kv::Entry) -> Option<Lease> {
    if entry.operation != kv::Operation::Put {
        return None;
    }
    serde_json::from_slice(&entry.value).ok()
}

fn to_stored(
    kind: StreamKind,
    msg: &async_nats::Message,
    seq: u64,
) -> Result<StoredEvent, LogError> {
    let h = msg.headers.as_ref();
    // One header since the compact form; the separate ones before it.
    let envelope = match h.and_then(|h| h.get(headers::ENVELOPE)) {
        Some(compact) => headers::decode_compact(compact.as_str()),
        None => headers::decode(|name| h.and_then(|h| h.get(name)).map(|v| v.as_str())),
    }
    .with_context(|| format!("{} event {seq}", kind.as_str()))
    .map_err(LogError)?;
    Ok(StoredEvent {
        stream: kind,
        seq,
        subject: msg.subject.to_string(),
        envelope,
        payload: msg.payload.clone(),
        decoded: Default::default(),
    })
}

fn deliver_policy(from: ReadFrom) -> DeliverPolicy {
    match from {
        ReadFrom::Seq(s) => DeliverPolicy::ByStartSequence {
            start_sequence: s.max(1),
        },
        ReadFrom::Time(t) => DeliverPolicy::ByStartTime {
            start_time: t.as_datetime(),
        },
    }
}

#[async_trait::async_trait]
impl EventLog for JetStreamLog {
    async fn append(&self, event: NewEvent) -> Result<Appended, AppendError> {
        if self.cfg.namespace.stream_of(&event.subject).is_none() {
            return Err(AppendError::BadSubject(event.subject));
        }
        // While the client is reconnecting, a publish would wait for its request
        // timeout (seconds) before failing: refuse at once, so an HTTP caller gets a
        // fast 503 (Meta retries) instead of a stalled request.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(AppendError::Log(LogError(anyhow::anyhow!(
                "the JetStream server is not connected (reconnecting)"
            ))));
        }
        let size = event.payload.len();
        if size > self.max_payload {
            return Err(AppendError::PayloadTooLarge {
                size,
                limit: self.max_payload,
            });
        }
        let mut envelope = event.envelope;
        envelope.recorded_at = crate::Timestamp::now();
        let compact = headers::encode_compact(&envelope);
        let header_bytes = event.msg_id.as_ref().map_or(0, |m| m.len() + 16)
            + headers::ENVELOPE.len()
            + compact.len()
            + 4;
        let mut hdrs = async_nats::HeaderMap::new();
        hdrs.insert(headers::ENVELOPE, compact.as_str());
        if header_bytes > HEADER_ROOM {
            return Err(AppendError::Log(LogError(anyhow::anyhow!(
                "event headers exceed {HEADER_ROOM} bytes"
            ))));
        }
        let build = |expected: Option<u64>, probe: bool| {
            let mut publish = PublishMessage::build()
                .payload(event.payload.clone())
                .headers(hdrs.clone());
            if let Some(id) = &event.msg_id {
                publish = publish.message_id(id);
            }
            if let Some(expected) = expected {
                publish = publish.expected_last_subject_sequence(expected);
            }
            if probe {
                publish = publish.expected_last_message_id(DEDUP_PROBE);
            }
            publish
        };
        let map = |e: jetstream::context::PublishError| match e.kind() {
            PublishErrorKind::MaxPayloadExceeded => AppendError::PayloadTooLarge {
                size,
                limit: self.max_payload,
            },
            _ => AppendError::Log(LogError::new(e)),
        };
        let ack = self
            .js
            .send_publish(
                event.subject.clone(),
                build(event.expected_last_subject_seq, false),
            )
            .await
            .map_err(map)?
            .await;
        match ack {
            Ok(ack) => Ok(Appended {
                seq: ack.sequence,
                duplicate: ack.duplicate,
            }),
            Err(e) if is_wrong_last_sequence(&e) => {
                // Newer servers check the expected sequence before the dedup id. A
                // retry of an append that did land must still answer "duplicate":
                // probe with the same id and an expectation that can never hold, so
                // nothing new can be stored.
                if event.msg_id.is_some() {
                    let probe = self
                        .js
                        .send_publish(event.subject.clone(), build(None, true))
                        .await
                        .map_err(map)?
                        .await;
                    if let Ok(ack) = probe {
                        if ack.duplicate {
                            return Ok(Appended {
                                seq: ack.sequence,
                                duplicate: true,
                            });
                        }
                    }
                }
                let actual = self.last_subject_seq(&event.subject).await.unwrap_or(0);
                Err(AppendError::WrongLastSequence {
                    subject: event.subject,
                    expected: event.expected_last_subject_seq.unwrap_or(0),
                    actual,
                })
            }
            Err(e) => Err(map(e)),
        }
    }

    async fn read(
        &self,
        kind: StreamKind,
        from: ReadFrom,
        filter: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, LogError> {
        let stream = self.stream(kind).await?;
        // Named, so that it can be deleted when the read ends. Left to its inactivity
        // threshold (30 s), one consumer per read outran the server's default limit
        // of 1,000 consumers per stream (nats-server 2.15) at a few reads per second.
        // (One the client recreates mid-read, as `<name>_<n>` after a missed
        // heartbeat, is still left to that threshold: rare, and bounded.)
        let name = ephemeral_name("read");
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                name: Some(name.clone()),
                filter_subject: filter.unwrap_or_default().to_string(),
                deliver_policy: deliver_policy(from),
                ..Default::default()
            })
            .await
            .map_err(LogError::new)?;
        let read = self.read_from(kind, consumer, from, limit).await;
        // Aside: the read's answer (the send path reads the log) does not wait for it.
        delete_aside(&stream, vec![name]);
        read
    }

    async fn follow(
        &self,
        kind: StreamKind,
        consumer: &str,
        from_seq: u64,
    ) -> Result<EventStream, LogError> {
        let stream = self.stream(kind).await?;
        // The read model's checkpoint is the authority: each subscription gets a
        // consumer of its own, created at the checkpoint, with one replica held in
        // memory (nothing on the server needs to outlive it). A fresh name, not
        // the durable of the last subscription repositioned: in a cluster, after
        // the node leading a replicated consumer died, deleting or updating that
        // consumer failed ("start sequence can not be updated") or its new
        // subscription stayed silent until a new leader was elected. The previous
        // consumer is deleted; one that cannot be (its node died) expires.
        let name = ephemeral_name(consumer);
        let previous = self
            .followers
            .lock()
            // A panic elsewhere cannot leave the map half-written: take it as it is.
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(consumer.to_string(), name.clone());
        // A durable of that name from earlier versions, and the previous one.
        delete_aside(
            &stream,
            [Some(consumer.to_string()), previous]
                .into_iter()
                .flatten()
                .collect(),
        );
        let durable: jetstream::consumer::Consumer<pull::Config> = stream
            .create_consumer(pull::Config {
                name: Some(name),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from_seq.max(1),
                },
                // Progress lives in the read model's checkpoint, so the server
                // tracks no acknowledgements: each would be one more message both
                // ways.
                ack_policy: AckPolicy::None,
                num_replicas: 1,
                memory_storage: true,
                inactive_threshold: FOLLOWER_INACTIVE,
                ..Default::default()
            })
            .await
            .map_err(LogError::new)?;
        // A short idle heartbeat: a consumer whose server died is noticed within
        // a few seconds, by a missed heartbeat, and the follower subscribes again;
        // the client's default (15 s, a pull expiring after 30 s) left projections
        // stalled for half a minute.
        let messages = durable
            .stream()
            .expires(FOLLOW_PULL_EXPIRY)
            .heartbeat(FOLLOW_HEARTBEAT)
            .messages()
            .await
            .map_err(LogError::new)?;
        Ok(Box::pin(messages.map(move |item| {
            let msg = item.map_err(LogError::new)?;
            let seq = msg
                .info()
                .map_err(|e| LogError(anyhow::anyhow!("{e}")))?
                .stream_sequence;
            to_stored(kind, &msg, seq)
        })))
    }

    async fn follow_ephemeral(
        &self,
        kind: StreamKind,
        from_seq: u64,
    ) -> Result<EventStream, LogError> {
        let stream = self.stream(kind).await?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from_seq.max(1),
                },
                ..Default::default()
            })
            .await
            .map_err(LogError::new)?;
        let messages = consumer.messages().await.map_err(LogError::new)?;
        Ok(Box::pin(messages.map(move |item| {
            let msg = item.map_err(LogError::new)?;
            let seq = msg
                .info()
                .map_err(|e| LogError(anyhow::anyhow!("{e}")))?
                .stream_sequence;
            to_stored(kind, &msg, seq)
        })))
    }

    async fn last_seq(&self, kind: StreamKind) -> Result<u64, LogError> {
        Ok(self
            .fetch_stream(kind)
            .await?
            .cached_info()
            .state
            .last_sequence)
    }

    async fn last_subject_seq(&self, subject: &str) -> Result<u64, LogError> {
        let kind = self
            .cfg
            .namespace
            .stream_of(subject)
            .ok_or_else(|| LogError(anyhow::anyhow!("subject {subject:?} not in namespace")))?;
        match self
            .stream(kind)
            .await?
            .get_last_raw_message_by_subject(subject)
            .await
        {
            Ok(m) => Ok(m.sequence),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(LogError::new(e)),
        }
    }

    async fn last_seq_covering(&self, subjects: &[String]) -> Result<u64, LogError> {
        if !subjects.is_empty() && self.cfg.namespace.stream_of_all(subjects).is_none() {
            return Err(LogError(crate::log::not_one_stream(subjects)));
        }
        // A stream message get by subject takes a wildcard pattern and is answered
        // by the stream's leader (not a replica, as a direct get may be), so what it
        // reports is never behind an acknowledged append.
        let looked_up = futures_util::future::try_join_all(
            crate::subject::covering_patterns(subjects)
                .into_iter()
                .map(|p| async move { self.last_subject_seq(&p).await }),
        )
        .await?;
        Ok(looked_up.into_iter().max().unwrap_or(0))
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        replacing: Option<&str>,
    ) -> Result<Lease, LogError> {
        let store = self.lease_store()?;
        let key = lease_key(name);
        // Compare-and-set on the entry's revision: of two racing instances one wins.
        for _ in 0..5 {
            let now = Timestamp::now();
            let mine = Lease {
                holder: holder.to_string(),
                expires_at: now.plus(ttl),
            };
            let value = Bytes::from(serde_json::to_vec(&mine).map_err(LogError::new)?);
            let entry = store.entry(&key).await.map_err(LogError::new)?;
            let current = entry.as_ref().and_then(decode_lease);
            let written = match (&entry, &current) {
                (Some(_), Some(l))
                    if l.holder != holder
                        && l.live_at(now)
                        && Some(l.holder.as_str()) != replacing =>
                {
                    return Ok(l.clone())
                }
                (Some(e), _) => store
                    .update(&key, value, e.revision)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision),
                (None, _) => store
                    .create(&key, value)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.kind() == kv::CreateErrorKind::AlreadyExists),
            };
            match written {
                Ok(()) => return Ok(mine),
                Err(true) => continue,
                Err(false) => return Err(LogError(anyhow::anyhow!("writing lease {name} failed"))),
            }
        }
        Err(LogError(anyhow::anyhow!("lease {name} is contended")))
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), LogError> {
        let store = self.lease_store()?;
        let key = lease_key(name);
        if let Some(e) = store.entry(&key).await.map_err(LogError::new)? {
            if decode_lease(&e).is_some_and(|l| l.holder == holder) {
                // A revision mismatch: a new holder won meanwhile, nothing to release.
                if let Err(err) = store.delete_expect_revision(&key, Some(e.revision)).await {
                    if !is_revision_mismatch(&err) {
                        return Err(LogError::new(err));
                    }
                }
            }
        }
        Ok(())
    }

    async fn lease(&self, name: &str) -> Result<Option<Lease>, LogError> {
        let store = self.lease_store()?;
        let entry = store.entry(lease_key(name)).await.map_err(LogError::new)?;
        Ok(entry
            .as_ref()
            .and_then(decode_lease)
            .filter(|l| l.live_at(Timestamp::now())))
    }

    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, LogError> {
        check_kv_names(bucket, key)?;
        let store = self.kv_store(bucket).await?;
        // Direct get (the KV streams allow it): on a replicated bucket a follower may
        // answer with a slightly older value; a CAS based on it fails and re-reads,
        // so this costs a retry, never correctness.
        let entry = store.entry(kv_key(key)).await.map_err(LogError::new)?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| KvEntry {
                value: e.value,
                revision: e.revision,
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
        let store = self.kv_store(bucket).await?;
        let key = kv_key(key);
        // `create` also takes a key whose last entry is a delete or purge marker.
        let written = if expected_revision == 0 {
            store
                .create(&key, value)
                .await
                .map_err(|e| (is_revision_mismatch(&e), LogError::new(e)))
        } else {
            store
                .update(&key, value, expected_revision)
                .await
                .map_err(|e| (is_revision_mismatch(&e), LogError::new(e)))
        };
        match written {
            Ok(revision) => Ok(Some(revision)),
            Err((true, _)) => Ok(None),
            // A timeout leaves the outcome unknown: not a mismatch, an error.
            Err((false, e)) => Err(e),
        }
    }

    async fn ping(&self) -> Result<(), LogError> {
        self.fetch_stream(StreamKind::Domain).await.map(|_| ())
    }

    fn max_payload(&self) -> usize {
        self.max_payload
    }

    fn namespace(&self) -> &Namespace {
        &self.cfg.namespace
    }
}

/// Deletes consumers in a task of its own: a consumer on a dead node answers only when
/// the request times out. One that cannot be deleted expires after its inactivity
/// threshold.
fn delete_aside(stream: &stream::Stream, names: Vec<String>) {
    let stream = stream.clone();
    tokio::spawn(async move {
        for name in names {
            if let Err(e) = stream.delete_consumer(&name).await {
                tracing::debug!(consumer = %name, error = %e, "deleting a consumer failed; it expires");
            }
        }
    });
}

/// A unique consumer name: `what` (a follower's name, or `read`) and a nonce, so
/// that an operator reading the server's consumer list sees whose it is.
fn ephemeral_name(what: &str) -> String {
    format!(
        "{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    )
}
