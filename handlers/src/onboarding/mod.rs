//! The Embedded Signup runner: drives each onboarding saga through its steps, one
//! task per saga, with the saga's state read from the log before every step.
//!
//! - A new `onboarding.started` is seen on the live domain stream within
//!   milliseconds, so the code exchange starts at once (the code lives ~30 s).
//! - Each attempt is `step_started`, the call, then `step_succeeded` or
//!   `step_failed`, each appended with an optimistic-concurrency check on the saga's
//!   subject: a second runner (a split brain) loses the race and stops.
//! - After a restart the runner resumes every running saga from the read model and
//!   the log: a succeeded step never runs again; a step found started without an
//!   outcome (the process died during its call) counts as a transient failure and is
//!   retried within its budget — registration at most three times in all, and only
//!   after transient failures, so Meta's 10-per-72-hours limit is never burnt.

pub mod steps;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use secrecy::SecretString;
use tokio::task::JoinSet;
use wabridge_events::{
    types::{
        EventData, OnboardingCompleted, OnboardingFailed, OnboardingStarted, OnboardingStep,
        OnboardingStepFailed, OnboardingStepStarted, OnboardingStepSucceeded, StepError,
    },
    AppendError, DomainEvent, ReadFrom, Slug, StreamKind, Timestamp,
};
use wabridge_projections::views::{
    onboarding::{self as view, Next, Saga},
    EventMeta,
};

use crate::commands::{onboarding as cmd, Caller, CommandError, Ctx};
use crate::sender::graph::{Graph, GraphConfig};
use crate::vault::KeyRing;
use steps::StepOutcome;

/// The runner's name (its actor on the events it appends).
pub const NAME: &str = "onboarding";

/// The pause before attempt `attempt + 1` of a step (jitter `r` in [0, 1)): the code
/// exchange retries within the code's life (0.5 s, 1 s); the others from 1 s,
/// doubling, capped at a minute.
pub fn backoff(step: OnboardingStep, attempt: u32, r: f64) -> Duration {
    let (first, cap) = match step {
        OnboardingStep::ExchangeCode => (Duration::from_millis(500), Duration::from_secs(2)),
        _ => (Duration::from_secs(1), Duration::from_secs(60)),
    };
    let step = first
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(cap);
    step.mul_f64(0.5 + 0.5 * r.clamp(0.0, 1.0))
}

/// The onboarding runner.
pub struct Onboarder {
    ctx: Ctx,
    keys: Option<KeyRing>,
    app_id: Option<String>,
    app_secrets: Vec<SecretString>,
    graph: Graph,
    active: Mutex<HashSet<String>>,
}

/// A saga as the log has it, with its (sealed) start.
struct Loaded {
    saga: Saga,
    started: OnboardingStarted,
}

impl Onboarder {
    /// A runner over the log, the vault and the Graph API.
    pub fn new(
        ctx: Ctx,
        keys: Option<KeyRing>,
        app: cmd::MetaApp,
        graph: GraphConfig,
    ) -> anyhow::Result<Arc<Onboarder>> {
        Ok(Arc::new(Onboarder {
            graph: Graph::new(graph)?,
            ctx,
            keys,
            app_id: app.id,
            app_secrets: app.secrets,
            active: Mutex::new(HashSet::new()),
        }))
    }

    /// Resumes every running saga, then follows new ones. Every saga task belongs to
    /// this future: dropping it (the workers stop) stops them.
    pub async fn run(self: Arc<Self>) -> anyhow::Result<()> {
        let ctx = &self.ctx;
        let head = ctx.log.last_seq(StreamKind::Domain).await?;
        ctx.wait("onboarding", head).await?;
        let mut tasks = JoinSet::new();
        for saga in view::running(&ctx.store).await? {
            let Ok(ws) = Slug::parse(&saga.workspace) else {
                continue;
            };
            tasks.spawn(self.clone().drive(ws, saga.id, saga.started_seq));
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
                    if ev.envelope.event_type != "onboarding.started" {
                        continue;
                    }
                    let DomainEvent::OnboardingStarted(s) = DomainEvent::decode(&ev.envelope, &ev.payload)? else {
                        continue;
                    };
                    let Some(ws) = ev.envelope.workspace.clone() else { continue };
                    tasks.spawn(self.clone().drive(ws, s.id, ev.seq));
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
    }

    /// Drives one saga to its end (or until another runner takes it over).
    async fn drive(self: Arc<Self>, ws: Slug, id: String, from_seq: u64) {
        if !self.active.lock().expect("active lock").insert(id.clone()) {
            return;
        }
        let mut pause = Duration::from_millis(200);
        loop {
            match self.step(&ws, &id, from_seq).await {
                Ok(true) => pause = Duration::from_millis(200),
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(onboarding = %id, error = %format!("{e:#}"), "onboarding: step failed to record; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
            }
        }
        self.active.lock().expect("active lock").remove(&id);
    }

    /// Reads the saga from the log.
    async fn load(&self, ws: &Slug, id: &str, from_seq: u64) -> anyhow::Result<Option<Loaded>> {
        let subject = cmd::subject(&self.ctx, ws, id);
        let events = self
            .ctx
            .log
            .read(
                StreamKind::Domain,
                ReadFrom::Seq(from_seq.max(1)),
                Some(&subject),
                10_000,
            )
            .await?;
        let mut decoded = Vec::with_capacity(events.len());
        let mut started = None;
        for ev in &events {
            let d = DomainEvent::decode(&ev.envelope, &ev.payload)?;
            if let DomainEvent::OnboardingStarted(s) = &d {
                started.get_or_insert_with(|| s.clone());
            }
            decoded.push((d, EventMeta::of(ev)));
        }
        let saga = view::fold_all(decoded.iter().map(|(d, m)| (d, m.clone())));
        Ok(match (saga, started) {
            (Some(saga), Some(started)) => Some(Loaded { saga, started }),
            _ => None,
        })
    }

    /// Appends one of the saga's events after `last_seq`: its sequence, or `None`
    /// when another runner appended first.
    async fn append<T: EventData>(
        &self,
        ws: &Slug,
        data: &T,
        last_seq: u64,
    ) -> anyhow::Result<Option<u64>> {
        let mut ev = self.ctx.event(Some(ws), &Caller::system(NAME), data);
        ev.expected_last_subject_seq = Some(last_seq);
        match self.ctx.log.append(ev).await {
            Ok(a) => Ok(Some(a.seq)),
            Err(AppendError::WrongLastSequence { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes the saga one action further; `false` when there is nothing more to do.
    async fn step(&self, ws: &Slug, id: &str, from_seq: u64) -> anyhow::Result<bool> {
        let Some(Loaded { saga, started }) = self.load(ws, id, from_seq).await? else {
            anyhow::bail!("onboarding {id} is not in the log");
        };
        match view::next(&saga, Timestamp::now()) {
            Next::Stop => Ok(false),
            Next::Wait(at) => {
                tokio::time::sleep(at.since(Timestamp::now())).await;
                Ok(true)
            }
            Next::Complete => {
                self.append(
                    ws,
                    &OnboardingCompleted { id: id.to_string() },
                    saga.last_seq,
                )
                .await?;
                tracing::info!(onboarding = %id, "onboarding completed");
                Ok(false)
            }
            Next::Fail {
                step,
                reason,
                detail,
            } => {
                let data = OnboardingFailed {
                    id: id.to_string(),
                    step,
                    reason,
                    detail,
                };
                self.append(ws, &data, saga.last_seq).await?;
                tracing::info!(onboarding = %id, step = step.as_str(), reason = %data.reason, "onboarding failed");
                Ok(false)
            }
            Next::Run { step, attempt } => {
                if step == OnboardingStep::ExchangeCode && attempt == 1 {
                    // Before anything reaches Meta: a number or WABA another
                    // workspace holds (it may have been claimed since the request).
                    match cmd::check_routing(&self.ctx, ws, &saga.waba_id, &saga.phone_number_id)
                        .await
                    {
                        Ok(()) => {}
                        Err(CommandError::Conflict(d)) => {
                            let reason = if d.contains("WABA") {
                                "waba_held_by_another_workspace"
                            } else {
                                "number_held_by_another_workspace"
                            };
                            let data = OnboardingFailed {
                                id: id.to_string(),
                                step,
                                reason: reason.into(),
                                detail: d,
                            };
                            self.append(ws, &data, saga.last_seq).await?;
                            return Ok(false);
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                let data = OnboardingStepStarted {
                    id: id.to_string(),
                    step,
                    attempt,
                };
                let Some(started_seq) = self.append(ws, &data, saga.last_seq).await? else {
                    return Ok(true);
                };
                let outcome = self.attempt(ws, &saga, &started, step).await;
                self.record(ws, id, step, attempt, outcome, started_seq)
                    .await?;
                Ok(true)
            }
        }
    }

    /// One attempt's call.
    async fn attempt(
        &self,
        ws: &Slug,
        saga: &Saga,
        started: &OnboardingStarted,
        step: OnboardingStep,
    ) -> StepOutcome {
        let (Some(keys), Some(app_id)) = (self.keys.as_ref(), self.app_id.as_deref()) else {
            let missing = if self.keys.is_none() {
                "TOKEN_MASTER_KEYS"
            } else {
                "META_APP_ID"
            };
            return StepOutcome::Transient(StepError {
                code: None,
                subcode: None,
                http_status: None,
                message: format!("{missing} is not set on the instance running the workers"),
            });
        };
        let ctx = &self.ctx;
        match step {
            OnboardingStep::ExchangeCode => {
                steps::exchange_code(
                    ctx,
                    &self.graph,
                    keys,
                    app_id,
                    &self.app_secrets,
                    ws,
                    &saga.id,
                    &saga.phone_number_id,
                    &started.code,
                )
                .await
            }
            OnboardingStep::SubscribeWebhooks => {
                steps::subscribe(
                    ctx,
                    &self.graph,
                    keys,
                    ws,
                    &saga.waba_id,
                    &saga.phone_number_id,
                )
                .await
            }
            OnboardingStep::RegisterNumber => {
                steps::register(
                    ctx,
                    &self.graph,
                    keys,
                    ws,
                    &saga.id,
                    &saga.phone_number_id,
                    &started.pin,
                )
                .await
            }
            OnboardingStep::RouteNumber => {
                steps::route(
                    ctx,
                    &self.graph,
                    keys,
                    ws,
                    &saga.waba_id,
                    &saga.phone_number_id,
                )
                .await
            }
        }
    }

    /// Appends an attempt's outcome (retrying the append until the log takes it).
    async fn record(
        &self,
        ws: &Slug,
        id: &str,
        step: OnboardingStep,
        attempt: u32,
        outcome: StepOutcome,
        last_seq: u64,
    ) -> anyhow::Result<()> {
        let mut pause = Duration::from_millis(100);
        loop {
            let result = match &outcome {
                StepOutcome::Done(detail) => {
                    let data = OnboardingStepSucceeded {
                        id: id.to_string(),
                        step,
                        attempt,
                        detail: detail.clone(),
                    };
                    self.append(ws, &data, last_seq).await
                }
                StepOutcome::Transient(error) => {
                    let retry = attempt < view::max_attempts(step);
                    let data = OnboardingStepFailed {
                        id: id.to_string(),
                        step,
                        attempt,
                        transient: true,
                        error: error.clone(),
                        retry_at: retry
                            .then(|| Timestamp::now().plus(backoff(step, attempt, rand::random()))),
                        reason: (!retry).then(|| "retries_exhausted".to_string()),
                    };
                    self.append(ws, &data, last_seq).await
                }
                StepOutcome::Permanent {
                    reason,
                    error,
                    detail,
                } => {
                    let data = OnboardingStepFailed {
                        id: id.to_string(),
                        step,
                        attempt,
                        transient: false,
                        error: error.clone(),
                        retry_at: None,
                        reason: Some(reason.to_string()),
                    };
                    match self.append(ws, &data, last_seq).await {
                        Ok(Some(seq)) => {
                            let failed = OnboardingFailed {
                                id: id.to_string(),
                                step,
                                reason: reason.to_string(),
                                detail: detail.clone(),
                            };
                            self.append(ws, &failed, seq).await
                        }
                        other => other,
                    }
                }
            };
            match result {
                Ok(_) => return Ok(()),
                Err(e) => {
                    tracing::warn!(onboarding = %id, error = %e, "onboarding: recording an outcome failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        use OnboardingStep::*;
        assert_eq!(backoff(SubscribeWebhooks, 1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(SubscribeWebhooks, 2, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(SubscribeWebhooks, 3, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(SubscribeWebhooks, 30, 1.0), Duration::from_secs(60));
        // The code dies after ~30 s: the exchange retries fast.
        assert_eq!(backoff(ExchangeCode, 1, 1.0), Duration::from_millis(500));
        assert_eq!(backoff(ExchangeCode, 5, 1.0), Duration::from_secs(2));
    }
}
