//! One endpoint's deliveries: its matching events in log order, one request at a
//! time (so a receiver sees them in order), each retried until delivered or given
//! up. A slow or dead endpoint only holds its own queue.
//!
//! The worker starts from the endpoints read model (position, the head delivery's
//! attempts, redeliveries asked for) once that has applied the endpoint's last
//! events, so after a restart nothing delivered and recorded is sent again; an
//! attempt made but not yet recorded when the process died is made again, with the
//! same `webhook-id` (receivers deduplicate on it, as Standard Webhooks asks).

use std::{collections::HashSet, sync::Arc, time::Duration};

use rand::Rng;
use secrecy::SecretString;
use tokio::sync::{mpsc, watch};
use wabridge_events::{
    types::{DeliveryAttempt, DeliveryAttempted, DeliveryOutcome, EndpointDisabled, EventData},
    ReadFrom, Slug, StoredEvent, StreamKind, Timestamp,
};
use wabridge_projections::views::endpoints::{self as view, Endpoint};

use super::{retry::Verdict, sign, target, Shared};
use crate::commands::Caller;

/// Most attempts recorded in one `delivery.attempted` event.
const RECORD_BATCH: usize = 200;

/// What the recorder appends, in order.
enum Record {
    Attempt(DeliveryAttempt),
    Disable { reason: String, detail: String },
}

/// How a delivery ended for the queue.
enum Settled {
    /// Delivered or failed for good: go on with the next event.
    Next,
    /// The endpoint was disabled (410, or failing too long): stop.
    Disabled,
    /// Its settings changed (or a redelivery was asked for): reload, then go on.
    Reload,
}

/// The endpoint worker.
pub struct Worker {
    shared: Arc<Shared>,
    ws: Slug,
    id: String,
    control: watch::Receiver<u64>,
    records: mpsc::Sender<Record>,
    /// Redeliveries made (their request's log sequence).
    redelivered: HashSet<u64>,
    position: u64,
    generation: u64,
    pending: Option<view::Pending>,
    /// The endpoint as last loaded (reloaded when its settings change).
    current: Option<Endpoint>,
}

impl Worker {
    /// Runs the endpoint's queue until it is deleted (or the task is dropped).
    pub async fn run(shared: Arc<Shared>, ws: Slug, id: String, control: watch::Receiver<u64>) {
        let (records, rx) = mpsc::channel(4 * RECORD_BATCH);
        let recorder = tokio::spawn(record(shared.clone(), ws.clone(), id.clone(), rx));
        let mut w = Worker {
            shared,
            ws,
            id,
            control,
            records,
            redelivered: HashSet::new(),
            position: 0,
            generation: 0,
            pending: None,
            current: None,
        };
        let mut started = false;
        loop {
            match w.cycle(&mut started).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(endpoint = %w.id, error = %format!("{e:#}"), "delivery worker failed; starting again");
                    started = false;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        drop(w);
        // The recorder ends once it has appended what the worker queued.
        if let Err(e) = recorder.await {
            tracing::error!(error = %e, "delivery recorder stopped abnormally");
        }
    }

    /// The endpoint as the read model has it once fresh for its settings (and, at
    /// the start, for its recorded attempts, which give the position).
    async fn load(&self, with_attempts: bool) -> anyhow::Result<Option<Endpoint>> {
        let ns = self.shared.ctx.log.namespace();
        let config = wabridge_events::types::EndpointCreated::subject(ns, Some(&self.ws), &self.id);
        self.shared.ctx.fresh(view::NAME, &config).await?;
        if with_attempts {
            let attempts = DeliveryAttempted::subject(ns, Some(&self.ws), &self.id);
            self.shared.ctx.fresh(view::NAME, &attempts).await?;
        }
        view::get(&self.shared.ctx.store, self.ws.as_str(), &self.id).await
    }

    /// One pass: reload when the settings changed, make the redeliveries asked for,
    /// deliver what is waiting (or wait for more). `Ok(false)` when the endpoint is
    /// gone.
    async fn cycle(&mut self, started: &mut bool) -> anyhow::Result<bool> {
        let reload =
            !*started || self.current.is_none() || self.control.has_changed().unwrap_or(true);
        if reload {
            self.control.mark_unchanged();
            let Some(ep) = self.load(!*started).await? else {
                return Ok(false);
            };
            if ep.deleted {
                return Ok(false);
            }
            if !*started {
                self.position = ep.position;
                self.generation = ep.generation;
                self.pending = ep.pending.clone();
                *started = true;
            } else if ep.generation > self.generation {
                self.generation = ep.generation;
                let from = ep.recover_from_seq.unwrap_or(ep.position + 1);
                self.position = self.position.min(from.saturating_sub(1));
                self.pending = None;
            }
            self.current = Some(ep);
        }
        let ep = self.current.clone().expect("loaded above");
        let secrets = self.secrets(&ep)?;
        for r in ep.redeliveries.clone() {
            if self.redelivered.insert(r.requested_seq) {
                self.redeliver(&ep, &secrets, &r).await?;
            }
        }
        if !ep.active() {
            // Paused or disabled: wait for a change of its settings (an error means
            // the dispatcher dropped this endpoint: the reload then finds it deleted).
            let _ = self.control.changed().await;
            self.current = None;
            return Ok(true);
        }
        let mut hub_rx = self.shared.hub.subscribe(&self.ws);
        let wants = |t: &str| ep.wants(t);
        let page = self
            .shared
            .hub
            .page(&self.ws, self.position, 100, &wants)
            .await?;
        if page.events.is_empty() {
            self.position = self.position.max(page.through);
            tokio::select! {
                _ = hub_rx.changed() => {}
                _ = self.control.changed() => self.current = None,
            }
            return Ok(true);
        }
        let mut through = page.through;
        for ev in &page.events {
            match self.deliver(&ep, &secrets, ev).await? {
                Settled::Next => self.position = ev.seq,
                Settled::Disabled => {
                    self.position = ev.seq;
                    // Wait for the disable to be applied before reloading.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), self.control.changed()).await;
                    self.current = None;
                    return Ok(true);
                }
                Settled::Reload => {
                    self.current = None;
                    through = 0;
                    break;
                }
            }
        }
        if through > 0 {
            self.position = self.position.max(through);
        }
        Ok(true)
    }

    /// The secrets that sign now: the current one, and the previous one until its end.
    fn secrets(&self, ep: &Endpoint) -> anyhow::Result<Vec<SecretString>> {
        let keys = self.shared.keys.as_ref().ok_or_else(|| {
            anyhow::anyhow!("TOKEN_MASTER_KEYS is not set: endpoint secrets cannot be opened")
        })?;
        let context = super::seal_context(&ep.id);
        let mut out = vec![crate::vault::open(
            keys,
            &ep.workspace,
            &context,
            &ep.secret,
        )?];
        if let (Some(prev), Some(until)) = (&ep.previous_secret, &ep.previous_valid_until) {
            if Timestamp::parse(until)
                .map(|u| u > Timestamp::now())
                .unwrap_or(false)
            {
                out.push(crate::vault::open(keys, &ep.workspace, &context, prev)?);
            }
        }
        Ok(out)
    }

    /// Delivers one event, retrying until it is delivered, given up, or the
    /// endpoint's settings change.
    async fn deliver(
        &mut self,
        ep: &Endpoint,
        secrets: &[SecretString],
        ev: &StoredEvent,
    ) -> anyhow::Result<Settled> {
        let delivery_id = view::delivery_id(&ep.id, ev.seq);
        let body = bytes::Bytes::from(crate::feed::FeedItem::json(ev)?);
        let (mut attempt, mut first_at, next_at) = match &self.pending {
            Some(p) if p.delivery_id == delivery_id => (
                p.attempts,
                Timestamp::parse(&p.first_attempt_at).unwrap_or_else(|_| Timestamp::now()),
                p.next_attempt_at
                    .as_deref()
                    .and_then(|t| Timestamp::parse(t).ok()),
            ),
            _ => (0, Timestamp::now(), None),
        };
        if let Some(at) = next_at {
            if !self.sleep_until(at).await {
                return Ok(Settled::Reload);
            }
        }
        loop {
            attempt += 1;
            let at = Timestamp::now();
            if attempt == 1 {
                first_at = at;
            }
            let answer = self
                .post(ep, secrets, &ev.envelope.id.to_string(), &body)
                .await;
            let base = DeliveryAttempt {
                delivery_id: delivery_id.clone(),
                event_id: ev.envelope.id.to_string(),
                event_seq: ev.seq,
                event_type: ev.envelope.event_type.clone(),
                attempt,
                at,
                outcome: DeliveryOutcome::Succeeded,
                response_status: answer.status,
                error: answer.error.clone(),
                duration_ms: answer.duration.as_millis() as u64,
                next_attempt_at: None,
                redelivery_of: None,
                generation: self.generation,
            };
            match answer.verdict {
                Verdict::Delivered => {
                    self.pending = None;
                    self.send(Record::Attempt(base)).await;
                    return Ok(Settled::Next);
                }
                Verdict::Gone => {
                    return Ok(self
                        .give_up(base, "gone", "the endpoint answered 410 Gone".into())
                        .await);
                }
                Verdict::Retry { retry_after } => {
                    let policy = self.shared.policy;
                    if policy.exhausted(Timestamp::now().since(first_at)) {
                        let detail = format!(
                            "every attempt to deliver failed for {} (the last: {})",
                            humanize(policy.give_up_after),
                            answer.error.as_deref().unwrap_or("no answer")
                        );
                        return Ok(self.give_up(base, "failing", detail).await);
                    }
                    let r: f64 = rand::thread_rng().gen();
                    let next = Timestamp::now().plus(policy.pause(attempt, r, retry_after));
                    self.pending = Some(view::Pending {
                        delivery_id: delivery_id.clone(),
                        event_seq: ev.seq,
                        attempts: attempt,
                        first_attempt_at: first_at.to_string(),
                        next_attempt_at: Some(next.to_string()),
                    });
                    self.send(Record::Attempt(DeliveryAttempt {
                        outcome: DeliveryOutcome::Retrying,
                        next_attempt_at: Some(next),
                        ..base
                    }))
                    .await;
                    if !self.sleep_until(next).await {
                        return Ok(Settled::Reload);
                    }
                }
            }
        }
    }

    /// Records the attempt as failed for good and disables the endpoint.
    async fn give_up(&mut self, attempt: DeliveryAttempt, reason: &str, detail: String) -> Settled {
        self.pending = None;
        self.send(Record::Attempt(DeliveryAttempt {
            outcome: DeliveryOutcome::Failed,
            ..attempt
        }))
        .await;
        self.send(Record::Disable {
            reason: reason.into(),
            detail,
        })
        .await;
        Settled::Disabled
    }

    /// Sleeps until `at`; false when the endpoint's settings changed first.
    async fn sleep_until(&mut self, at: Timestamp) -> bool {
        let now = Timestamp::now();
        if at <= now {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(at.since(now)) => true,
            _ = self.control.changed() => {
                // A change of settings (a fixed URL, say) retries at once.
                if let Some(p) = self.pending.as_mut() {
                    p.next_attempt_at = None;
                }
                false
            }
        }
    }

    /// One manual redelivery: one attempt, recorded, never moving the position.
    async fn redeliver(
        &mut self,
        ep: &Endpoint,
        secrets: &[SecretString],
        r: &view::Redelivery,
    ) -> anyhow::Result<()> {
        let events = self
            .shared
            .ctx
            .log
            .read(StreamKind::Domain, ReadFrom::Seq(r.event_seq), None, 1)
            .await?;
        let Some(ev) = events.into_iter().find(|e| e.seq == r.event_seq) else {
            anyhow::bail!(
                "event #{} of delivery {} is not in the log",
                r.event_seq,
                r.delivery_id
            );
        };
        let body = bytes::Bytes::from(crate::feed::FeedItem::json(&ev)?);
        let at = Timestamp::now();
        let answer = self
            .post(ep, secrets, &ev.envelope.id.to_string(), &body)
            .await;
        let previous = view::delivery(&self.shared.ctx.store, self.ws.as_str(), &r.delivery_id)
            .await?
            .map(|d| d.attempts.len() as u32)
            .unwrap_or(0);
        self.send(Record::Attempt(DeliveryAttempt {
            delivery_id: r.delivery_id.clone(),
            event_id: ev.envelope.id.to_string(),
            event_seq: ev.seq,
            event_type: ev.envelope.event_type.clone(),
            attempt: previous + 1,
            at,
            outcome: if answer.verdict == Verdict::Delivered {
                DeliveryOutcome::Succeeded
            } else {
                DeliveryOutcome::Failed
            },
            response_status: answer.status,
            error: answer.error,
            duration_ms: answer.duration.as_millis() as u64,
            next_attempt_at: None,
            redelivery_of: Some(r.requested_seq),
            generation: self.generation,
        }))
        .await;
        Ok(())
    }

    async fn send(&self, record: Record) {
        // The recorder only stops when this worker does.
        let _ = self.records.send(record).await;
    }

    /// One signed POST.
    async fn post(
        &self,
        ep: &Endpoint,
        secrets: &[SecretString],
        msg_id: &str,
        body: &bytes::Bytes,
    ) -> Answer {
        let started = std::time::Instant::now();
        let failed = |error: String| Answer {
            verdict: Verdict::Retry { retry_after: None },
            status: None,
            error: Some(error),
            duration: started.elapsed(),
        };
        let url = match reqwest::Url::parse(&ep.url) {
            Ok(u) => u,
            Err(e) => return failed(format!("the endpoint's url does not parse: {e}")),
        };
        if !self.shared.allow_private && target::literal_is_private(&url) {
            return failed("the endpoint's address is not public".into());
        }
        let ts = Timestamp::now().unix_micros() / 1_000_000;
        let refs: Vec<&SecretString> = secrets.iter().collect();
        let signature = match sign::signature_header(&refs, msg_id, ts, body) {
            Ok(s) => s,
            Err(e) => return failed(format!("signing failed: {e}")),
        };
        let sent = self
            .shared
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body.clone())
            .send()
            .await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return failed(format!(
                    "no answer within {}",
                    humanize(self.shared.timeout)
                ))
            }
            Err(e) if e.is_connect() => return failed(format!("could not connect: {}", root(&e))),
            Err(e) => return failed(format!("request failed: {}", root(&e))),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| super::retry::parse_retry_after(v, time::OffsetDateTime::now_utc()));
        // Read (and drop) at most 64 KiB of the answer, so the connection is reused.
        let mut read = 0usize;
        while read < 65_536 {
            match tokio::time::timeout(self.shared.timeout, resp.chunk()).await {
                Ok(Ok(Some(c))) => read += c.len(),
                _ => break,
            }
        }
        let verdict = super::retry::verdict(status, retry_after);
        Answer {
            error: (verdict != Verdict::Delivered)
                .then(|| format!("the endpoint answered {status}")),
            verdict,
            status: Some(status),
            duration: started.elapsed(),
        }
    }
}

/// What one POST came to.
struct Answer {
    verdict: Verdict,
    status: Option<u16>,
    error: Option<String>,
    duration: Duration,
}

fn root(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 86_400 && s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 1 {
        format!("{s}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Appends the worker's records in order, batching what accumulates while an
/// append is in flight; retries an append until the log takes it.
async fn record(shared: Arc<Shared>, ws: Slug, id: String, mut rx: mpsc::Receiver<Record>) {
    let caller = Caller::system(super::NAME);
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < RECORD_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut attempts = vec![];
        for r in batch {
            match r {
                Record::Attempt(a) => attempts.push(a),
                Record::Disable { reason, detail } => {
                    flush(&shared, &ws, &caller, &id, std::mem::take(&mut attempts)).await;
                    append(
                        &shared,
                        &ws,
                        &caller,
                        &EndpointDisabled {
                            endpoint_id: id.clone(),
                            reason,
                            detail,
                        },
                    )
                    .await;
                }
            }
        }
        flush(&shared, &ws, &caller, &id, attempts).await;
    }
}

/// Appends the attempts made (if any) as one `delivery.attempted`.
async fn flush(
    shared: &Shared,
    ws: &Slug,
    caller: &Caller,
    id: &str,
    attempts: Vec<DeliveryAttempt>,
) {
    if attempts.is_empty() {
        return;
    }
    let data = DeliveryAttempted {
        endpoint_id: id.to_string(),
        attempts,
    };
    append(shared, ws, caller, &data).await;
}

async fn append<T: EventData>(shared: &Shared, ws: &Slug, caller: &Caller, data: &T) {
    let mut pause = Duration::from_millis(100);
    loop {
        let ev = shared.ctx.event(Some(ws), caller, data);
        match shared.ctx.log.append(ev).await {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "delivery record append failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}
