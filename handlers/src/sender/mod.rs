//! The outbound sender: a reactor on `message.send_requested` that posts each
//! message to Meta and records the outcome.
//!
//! - Each message runs as its own task: it waits for its (number, recipient) pair's
//!   turn (Meta's pair limit), then its number's turn (the number's throughput), then
//!   a slot among its workspace's in-flight calls. A noisy workspace or recipient
//!   never holds up another's sends: there is no shared queue.
//! - `message.send_attempted` is appended before each call, so a crash between the
//!   call and its outcome is never re-posted: a restarted sender finds the attempt
//!   without an outcome and records `message.send_unknown`; a status webhook naming
//!   the message (wabridge sets `biz_opaque_callback_data` to its id) resolves it.
//! - Retryable answers (see `sending::meta_errors`) are retried with exponential
//!   backoff and jitter; a timeout is re-posted only if no status webhook has named
//!   the message meanwhile. Permanent ones fail at once with a reason; 190 marks the
//!   number's token invalid; 131050 opts the contact out of marketing.

pub mod graph;
pub mod pacing;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use tokio::{sync::Semaphore, task::JoinSet};
use wabridge_events::{
    types::{
        ConsentScope, ConsentSource, ConsentSourceKind, ContactOptedOut, ContactRef, EventData,
        MessageSendAttempted, MessageSendFailed, MessageSendRetrying, MessageSendUnknown,
        MessageSent, MetaError as EventMetaError,
    },
    DomainEvent, Slug, StreamKind, Timestamp,
};
use wabridge_projections::views::sends::{self, Phase};

use crate::commands::{tokens, Caller, CommandError, Ctx};
use crate::sending::meta_errors::{self, classify, MetaError, RetryScope, Verdict};
use crate::sending::request::{meta_body, MessageKind, Recipient, ValidSend};
use crate::vault::KeyRing;
use graph::{CallOutcome, Graph, GraphConfig};
use pacing::Pacer;

/// The sender's name (its actor on the events it appends).
pub const NAME: &str = "sender";

/// Retries this process's sender scheduled (for `/metrics`).
pub static RETRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How the sender paces and calls.
#[derive(Clone, Debug)]
pub struct SenderConfig {
    /// The Graph API.
    pub graph: GraphConfig,
    /// Sends per second per phone number (Meta's default throughput is 80).
    pub number_mps: u32,
    /// Sends per second per (number, recipient) pair (Meta: about one per 6 s).
    pub pair_per_second: f64,
    /// Sends a pair may make at once before the pair pace applies.
    pub pair_burst: u32,
    /// Calls in flight per workspace.
    pub workspace_concurrency: usize,
    /// Retryable failures are retried until the message is this old, then it fails
    /// with `expired`.
    pub max_age: Duration,
    /// How long after a timeout the sender waits for a status webhook naming the
    /// message before it posts it again.
    pub timeout_grace: Duration,
}

impl SenderConfig {
    /// The defaults around a Graph API configuration.
    pub fn new(graph: GraphConfig, number_mps: u32) -> Self {
        SenderConfig {
            graph,
            number_mps,
            pair_per_second: 1.0 / 6.0,
            pair_burst: 10,
            workspace_concurrency: 32,
            max_age: Duration::from_secs(24 * 3600),
            timeout_grace: Duration::from_secs(10),
        }
    }
}

/// A message to deliver.
#[derive(Clone, Debug)]
struct Job {
    ws: Slug,
    id: String,
    number: String,
    recipient: ContactRef,
    message_type: String,
    body: serde_json::Value,
    /// The attempt to make next.
    attempt: u32,
    /// When it was requested.
    requested_at: Timestamp,
    /// Wait this long first (a scheduled retry after a restart).
    delay: Duration,
}

/// The outbound sender.
pub struct Sender {
    ctx: Ctx,
    keys: Option<KeyRing>,
    cfg: SenderConfig,
    graph: Graph,
    numbers: Pacer,
    pairs: Pacer,
    slots: Mutex<HashMap<Slug, Arc<Semaphore>>>,
}

fn caller() -> Caller {
    Caller::system(NAME)
}

fn event_error(e: &MetaError) -> EventMetaError {
    EventMetaError {
        code: e.code,
        title: e.title.clone(),
        message: e.message.clone(),
        details: e.details.clone(),
    }
}

/// The body Meta gets for a stored request (the request's own checks ran when it
/// was accepted).
fn meta_body_of(job: &Job) -> Option<serde_json::Value> {
    let kind: MessageKind = serde_json::from_value(serde_json::json!(job.message_type)).ok()?;
    let recipient = Recipient::of_contact(&job.recipient)?;
    let v = ValidSend {
        recipient,
        kind,
        category: None,
        phone_number_id: Some(job.number.clone()),
        is_template: kind == MessageKind::Template,
        body: job.body.clone(),
    };
    Some(meta_body(&v, Some(&job.id)))
}

impl Sender {
    /// A sender over the log and the vault.
    pub fn new(ctx: Ctx, keys: Option<KeyRing>, cfg: SenderConfig) -> anyhow::Result<Arc<Sender>> {
        let graph = Graph::new(cfg.graph.clone())?;
        Ok(Arc::new(Sender {
            numbers: Pacer::new(cfg.number_mps as f64, cfg.number_mps.max(1)),
            pairs: Pacer::new(cfg.pair_per_second, cfg.pair_burst),
            ctx,
            keys,
            cfg,
            graph,
            slots: Mutex::new(HashMap::new()),
        }))
    }

    /// Resumes what a previous sender left (from the `sends` read model, caught up with
    /// the log), then follows new requests. Every message task belongs to this future:
    /// dropping it (the workers stop) stops them.
    pub async fn run(self: Arc<Self>) -> anyhow::Result<()> {
        let ctx = &self.ctx;
        let head = ctx.log.last_seq(StreamKind::Domain).await?;
        ctx.wait("sends", head).await?;
        let mut tasks = JoinSet::new();
        for row in sends::pending(&ctx.store).await? {
            let Ok(ws) = Slug::parse(&row.workspace) else {
                continue;
            };
            match row.phase {
                Phase::Attempting => {
                    // Posted or not, we cannot know: never post it again blindly.
                    let data = MessageSendUnknown {
                        id: row.id.clone(),
                        attempt: row.attempts as u32,
                    };
                    self.append(&ws, &data).await;
                }
                Phase::Requested | Phase::Waiting => {
                    if let Some(job) = self.job_of_row(&ws, &row).await? {
                        tasks.spawn(self.clone().deliver(job));
                    }
                }
                Phase::Done => {}
            }
        }
        let mut events = ctx
            .log
            .follow_ephemeral(StreamKind::Domain, head + 1)
            .await?;
        loop {
            tokio::select! {
                next = events.next() => {
                    let Some(ev) = next else { anyhow::bail!("the domain stream ended") };
                    let ev = ev?;
                    if ev.envelope.event_type != "message.send_requested" {
                        continue;
                    }
                    let DomainEvent::MessageSendRequested(r) = DomainEvent::decode(&ev.envelope, &ev.payload)? else {
                        continue;
                    };
                    let Some(ws) = ev.envelope.workspace.clone() else { continue };
                    tasks.spawn(self.clone().deliver(Job {
                        ws,
                        id: r.id,
                        number: r.phone_number_id,
                        recipient: r.recipient,
                        message_type: r.message_type,
                        body: r.body,
                        attempt: 1,
                        requested_at: ev.envelope.recorded_at,
                        delay: Duration::ZERO,
                    }));
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
    }

    /// The job of a pending row: its request's body comes from the log.
    async fn job_of_row(&self, ws: &Slug, row: &sends::SendRow) -> anyhow::Result<Option<Job>> {
        let subject = wabridge_events::types::MessageSendRequested::subject(
            self.ctx.log.namespace(),
            Some(ws),
            &row.id,
        );
        let first = self
            .ctx
            .log
            .read(
                StreamKind::Domain,
                wabridge_events::ReadFrom::Seq(row.requested_seq.max(1) as u64),
                Some(&subject),
                1,
            )
            .await?;
        let Some(ev) = first.first() else {
            return Ok(None);
        };
        let DomainEvent::MessageSendRequested(r) = DomainEvent::decode(&ev.envelope, &ev.payload)?
        else {
            return Ok(None);
        };
        let delay = row
            .retry_at
            .as_deref()
            .and_then(|t| Timestamp::parse(t).ok())
            .map(|t| {
                let now = Timestamp::now();
                if t > now {
                    t.since(now)
                } else {
                    Duration::ZERO
                }
            })
            .unwrap_or_default();
        Ok(Some(Job {
            ws: ws.clone(),
            id: r.id,
            number: r.phone_number_id,
            recipient: r.recipient,
            message_type: r.message_type,
            body: r.body,
            attempt: row.attempts as u32 + 1,
            requested_at: ev.envelope.recorded_at,
            delay,
        }))
    }

    fn slots(&self, ws: &Slug) -> Arc<Semaphore> {
        self.slots
            .lock()
            .expect("slots lock")
            .entry(ws.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.cfg.workspace_concurrency)))
            .clone()
    }

    /// Appends, retrying until the log takes it (the workers stop if the lease goes).
    async fn append<T: EventData>(&self, ws: &Slug, data: &T) {
        let mut pause = Duration::from_millis(100);
        loop {
            match self
                .ctx
                .log
                .append(self.ctx.event(Some(ws), &caller(), data))
                .await
            {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "sender: append failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn fail(&self, job: &Job, attempt: u32, reason: &str, error: Option<&MetaError>) {
        let data = MessageSendFailed {
            id: job.id.clone(),
            attempt,
            reason: reason.to_owned(),
            error: error.map(event_error),
        };
        self.append(&job.ws, &data).await;
    }

    /// Whether a status webhook named the message (Meta has it).
    async fn known_to_meta(&self, job: &Job) -> bool {
        match sends::get(&self.ctx.store, job.ws.as_str(), &job.id).await {
            Ok(Some(row)) => row.wamid.is_some() || sends::rank(&row.status) >= sends::rank("sent"),
            _ => false,
        }
    }

    /// Delivers one message: pacing, the call, retries, the outcome.
    async fn deliver(self: Arc<Self>, mut job: Job) {
        if !job.delay.is_zero() {
            tokio::time::sleep(job.delay).await;
        }
        let Some(body) = meta_body_of(&job) else {
            return self.fail(&job, 0, "unreadable_request", None).await;
        };
        let pair = format!("{}:{}", job.number, job.recipient.key());
        let mut after_timeout = false;
        loop {
            if after_timeout && self.known_to_meta(&job).await {
                return;
            }
            tokio::time::sleep(self.pairs.reserve(&pair)).await;
            tokio::time::sleep(self.numbers.reserve(&job.number)).await;
            let slots = self.slots(&job.ws);
            let Ok(_slot) = slots.acquire().await else {
                return;
            };
            let token =
                match tokens::retrieve(&self.ctx, self.keys.as_ref(), &job.ws, &job.number).await {
                    Ok(t) => t,
                    Err(CommandError::NotFound(_)) | Err(CommandError::NotConfigured(_)) => {
                        return self.fail(&job, job.attempt - 1, "no_token", None).await;
                    }
                    Err(CommandError::Conflict(d)) => {
                        // Revoked or invalid: nothing can be posted.
                        tracing::info!(id = %job.id, detail = %d, "sender: no usable token");
                        return self.fail(&job, job.attempt - 1, "no_token", None).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "sender: token retrieval failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
            let attempt = job.attempt;
            self.append(
                &job.ws,
                &MessageSendAttempted {
                    id: job.id.clone(),
                    attempt,
                },
            )
            .await;
            let outcome = self.graph.send(&job.number, &token, &body).await;
            drop(token);
            let (verdict, error, timed_out) = match outcome {
                CallOutcome::Accepted { wamid } => {
                    let data = MessageSent {
                        id: job.id.clone(),
                        phone_number_id: job.number.clone(),
                        wamid,
                        attempt,
                    };
                    return self.append(&job.ws, &data).await;
                }
                CallOutcome::Rejected { status, error } => {
                    (classify(Some(status), error.as_ref()), error, false)
                }
                CallOutcome::NoAnswer { detail } => {
                    tracing::info!(id = %job.id, %detail, "sender: no answer from Meta");
                    (classify(None, None), None, true)
                }
            };
            match verdict {
                Verdict::Retry { scope, reason } => {
                    let age = Timestamp::now().since(job.requested_at);
                    if age >= self.cfg.max_age {
                        return self.fail(&job, attempt, "expired", error.as_ref()).await;
                    }
                    if attempt >= meta_errors::MAX_ATTEMPTS && !timed_out && error.is_some() {
                        return self
                            .fail(&job, attempt, "retries_exhausted", error.as_ref())
                            .await;
                    }
                    let mut delay = meta_errors::backoff(attempt - 1, rand::random::<f64>());
                    if timed_out {
                        delay = delay.max(self.cfg.timeout_grace);
                    }
                    match scope {
                        RetryScope::Number => self.numbers.penalise(&job.number, delay),
                        RetryScope::Recipient => self.pairs.penalise(&pair, delay),
                        RetryScope::Once => {}
                    }
                    RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let data = MessageSendRetrying {
                        id: job.id.clone(),
                        attempt,
                        reason: reason.to_owned(),
                        error: error.as_ref().map(event_error),
                        retry_at: Timestamp::now().plus(delay),
                    };
                    self.append(&job.ws, &data).await;
                    drop(_slot);
                    tokio::time::sleep(delay).await;
                    after_timeout = timed_out;
                    job.attempt += 1;
                }
                Verdict::Permanent { reason } => {
                    return self.fail(&job, attempt, reason, error.as_ref()).await;
                }
                Verdict::TokenInvalid => {
                    let why = error
                        .as_ref()
                        .map(|e| {
                            format!(
                                "Meta error {}: {}",
                                e.code,
                                e.message.clone().unwrap_or_default()
                            )
                        })
                        .unwrap_or_else(|| "Meta rejected the token".into());
                    if let Err(e) =
                        tokens::invalidate(&self.ctx, &caller(), &job.ws, &job.number, &why).await
                    {
                        tracing::warn!(error = %e, "sender: marking the token invalid failed");
                    }
                    return self
                        .fail(&job, attempt, "token_invalid", error.as_ref())
                        .await;
                }
                Verdict::MarketingOptOut => {
                    let data = ContactOptedOut {
                        contact: job.recipient.clone(),
                        scope: ConsentScope::Marketing,
                        source: ConsentSource {
                            kind: ConsentSourceKind::DeliveryError,
                            keyword: Some(crate::consent::detect::MARKETING_STOPPED.to_string()),
                            language: None,
                            message_id: Some(job.id.clone()),
                            webhook_seq: None,
                        },
                        reason: None,
                        at: Timestamp::now(),
                    };
                    self.append(&job.ws, &data).await;
                    return self
                        .fail(&job, attempt, "marketing_opted_out", error.as_ref())
                        .await;
                }
            }
        }
    }
}
