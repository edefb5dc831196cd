//! Embedded Signup onboarding: each saga's state, folded from its events, and the
//! partner events Meta sent about the WABAs being onboarded.
//!
//! The saga's state is the log: [`fold`] is the one decision, used by this read
//! model and by the onboarding runner (which folds the saga's own events straight
//! from the log before each step, so a restart resumes exactly where the log says).
//! [`next`] decides what the runner does next, from that state alone.

use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Row};
use wabridge_events::{
    types::{OnboardingStep, StepError},
    DomainEvent, StoredEvent, Timestamp,
};

use super::EventMeta;
use crate::{Projection, Store};

/// The `onboarding` projection.
pub struct Onboarding;

/// Where a saga is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SagaState {
    /// Steps are running or waiting to be retried.
    Running,
    /// Every step succeeded.
    Done,
    /// It stopped on a permanent error.
    Failed,
}

/// Where a step is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Not started.
    Pending,
    /// Its call is in flight (or the process died during it: outcome unknown).
    Running,
    /// It failed transiently and is tried again at `retry_at`.
    Retrying,
    /// Done; never repeated.
    Succeeded,
    /// Failed for good.
    Failed,
}

/// One step of a saga.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReport {
    /// The step.
    pub name: OnboardingStep,
    /// Where it is.
    pub state: StepState,
    /// Attempts started.
    pub attempts: u32,
    /// When its first attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// When it is tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<String>,
    /// What it produced (no secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StepError>,
    /// The stable reason of a permanent failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl StepReport {
    fn pending(name: OnboardingStep) -> Self {
        StepReport {
            name,
            state: StepState::Pending,
            attempts: 0,
            started_at: None,
            at: None,
            retry_at: None,
            detail: None,
            error: None,
            reason: None,
        }
    }
}

/// Why a saga failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaFailure {
    /// The step it stopped at.
    pub step: OnboardingStep,
    /// Stable reason code.
    pub reason: String,
    /// What to do about it.
    pub detail: String,
}

/// One onboarding saga, as its events say.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saga {
    /// `onb_…`.
    pub id: String,
    /// The workspace.
    pub workspace: String,
    /// The WABA.
    pub waba_id: String,
    /// The number.
    pub phone_number_id: String,
    /// Where it is.
    pub state: SagaState,
    /// When it was asked for (log time).
    pub started_at: String,
    /// When it last changed (log time).
    pub updated_at: String,
    /// The log sequence of `onboarding.started`.
    pub started_seq: u64,
    /// The log sequence of its last event (the optimistic-concurrency check of the
    /// runner's next append).
    pub last_seq: u64,
    /// Whether the app is subscribed to the WABA's webhooks.
    pub webhooks_subscribed: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<SagaFailure>,
    /// The steps, in order.
    pub steps: Vec<StepReport>,
}

impl Saga {
    /// A step's report.
    pub fn step(&self, step: OnboardingStep) -> &StepReport {
        self.steps
            .iter()
            .find(|s| s.name == step)
            .expect("every step is listed")
    }

    fn step_mut(&mut self, step: OnboardingStep) -> &mut StepReport {
        self.steps
            .iter_mut()
            .find(|s| s.name == step)
            .expect("every step is listed")
    }
}

/// The saga after one of its events (the decision, pure): `None` when the event
/// does not change it. Events of other sagas, or a step event before the saga
/// started, change nothing.
pub fn fold(current: Option<&Saga>, event: &DomainEvent, meta: &EventMeta) -> Option<Saga> {
    use DomainEvent as E;
    if let E::OnboardingStarted(s) = event {
        if current.is_some() {
            return None;
        }
        return Some(Saga {
            id: s.id.clone(),
            workspace: meta.workspace.clone(),
            waba_id: s.waba_id.clone(),
            phone_number_id: s.phone_number_id.clone(),
            state: SagaState::Running,
            started_at: meta.recorded_at.clone(),
            updated_at: meta.recorded_at.clone(),
            started_seq: meta.seq,
            last_seq: meta.seq,
            webhooks_subscribed: false,
            failure: None,
            steps: OnboardingStep::ALL
                .iter()
                .map(|s| StepReport::pending(*s))
                .collect(),
        });
    }
    let cur = current?;
    if meta.seq <= cur.last_seq {
        return None;
    }
    let mut next = cur.clone();
    next.updated_at = meta.recorded_at.clone();
    next.last_seq = meta.seq;
    let at = Some(meta.recorded_at.clone());
    match event {
        E::OnboardingStepStarted(s) if s.id == cur.id => {
            let step = next.step_mut(s.step);
            step.state = StepState::Running;
            step.attempts = step.attempts.max(s.attempt);
            step.started_at = step.started_at.clone().or(at.clone());
            step.at = at;
            step.retry_at = None;
        }
        E::OnboardingStepSucceeded(s) if s.id == cur.id => {
            let step = next.step_mut(s.step);
            step.state = StepState::Succeeded;
            step.at = at;
            step.retry_at = None;
            step.detail = s.detail.clone();
            // Earlier failures stay in the audit log; the report shows where it is.
            step.error = None;
            if s.step == OnboardingStep::SubscribeWebhooks {
                next.webhooks_subscribed = true;
            }
        }
        E::OnboardingStepFailed(f) if f.id == cur.id => {
            let step = next.step_mut(f.step);
            step.state = if f.retry_at.is_some() {
                StepState::Retrying
            } else {
                StepState::Failed
            };
            step.at = at;
            step.retry_at = f.retry_at.map(|t| t.to_string());
            step.error = Some(f.error.clone());
            step.reason = f.reason.clone();
        }
        E::OnboardingCompleted(c) if c.id == cur.id => {
            next.state = SagaState::Done;
        }
        E::OnboardingFailed(f) if f.id == cur.id => {
            next.state = SagaState::Failed;
            next.failure = Some(SagaFailure {
                step: f.step,
                reason: f.reason.clone(),
                detail: f.detail.clone(),
            });
            let step = next.step_mut(f.step);
            if step.state != StepState::Succeeded {
                step.state = StepState::Failed;
                step.retry_at = None;
            }
        }
        _ => return None,
    }
    Some(next)
}

/// Folds a saga's events in log order (the runner's view of it).
pub fn fold_all<'a>(
    events: impl IntoIterator<Item = (&'a DomainEvent, EventMeta)>,
) -> Option<Saga> {
    let mut saga: Option<Saga> = None;
    for (event, meta) in events {
        if let Some(next) = fold(saga.as_ref(), event, &meta) {
            saga = Some(next);
        }
    }
    saga
}

/// The most attempts a step gets. Registration counts against Meta's limit of 10 per
/// number per 72 hours (133016 blocks the number for 72 h): it is tried once, and
/// again only after a transient failure (a timeout, no connection, a 5xx), at most
/// three times in all. The code exchange races the code's 30-second life.
pub fn max_attempts(step: OnboardingStep) -> u32 {
    match step {
        OnboardingStep::ExchangeCode => 3,
        OnboardingStep::SubscribeWebhooks => 8,
        OnboardingStep::RegisterNumber => 3,
        OnboardingStep::RouteNumber => 8,
    }
}

/// What the runner does next for a saga.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing: the saga is done or failed.
    Stop,
    /// Wait until then, then decide again.
    Wait(Timestamp),
    /// Start this attempt of this step.
    Run {
        /// The step.
        step: OnboardingStep,
        /// Its attempt number.
        attempt: u32,
    },
    /// Record that every step succeeded.
    Complete,
    /// Record that the saga failed.
    Fail {
        /// The step.
        step: OnboardingStep,
        /// Stable reason.
        reason: String,
        /// For a person.
        detail: String,
    },
}

/// The next action for a saga at `now` (pure). A step found running is one whose
/// process died during its call: its outcome is unknown, so it counts as a
/// transient failure (tried again within its budget; registration never more than
/// [`max_attempts`] times).
pub fn next(saga: &Saga, now: Timestamp) -> Next {
    if saga.state != SagaState::Running {
        return Next::Stop;
    }
    let Some(step) = saga.steps.iter().find(|s| s.state != StepState::Succeeded) else {
        return Next::Complete;
    };
    let budget = |step: &StepReport| {
        if step.attempts >= max_attempts(step.name) {
            Next::Fail {
                step: step.name,
                reason: "retries_exhausted".into(),
                detail: format!(
                    "{} failed {} times (the last: {}); start onboarding again",
                    step.name.as_str(),
                    step.attempts,
                    step.error
                        .as_ref()
                        .map(|e| e.message.as_str())
                        .unwrap_or("no answer")
                ),
            }
        } else {
            Next::Run {
                step: step.name,
                attempt: step.attempts + 1,
            }
        }
    };
    match step.state {
        StepState::Pending => Next::Run {
            step: step.name,
            attempt: 1,
        },
        StepState::Running => budget(step),
        StepState::Retrying => match step
            .retry_at
            .as_deref()
            .and_then(|t| Timestamp::parse(t).ok())
        {
            Some(at) if at > now => Next::Wait(at),
            _ => budget(step),
        },
        StepState::Failed => Next::Fail {
            step: step.name,
            reason: step.reason.clone().unwrap_or_else(|| "meta_error".into()),
            detail: step
                .error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_else(|| "the step failed".into()),
        },
        StepState::Succeeded => unreachable!("filtered above"),
    }
}

/// A partner event Meta sent about a WABA (`account_update` with `PARTNER_…`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PartnerEvent {
    /// `PARTNER_APP_INSTALLED`, `PARTNER_ADDED`, `PARTNER_APP_UNINSTALLED`, ...
    pub event: String,
    /// When it was logged.
    pub at: String,
    /// The log sequence of the domain event that carried it.
    pub seq: u64,
}

/// The WABA and partner event an account-level event carries, if it is one: an
/// `account.updated` of a workspace, or one waiting unrouted (a WABA that no
/// workspace owns yet, as during its onboarding).
pub fn partner_event_of(event: &DomainEvent) -> Option<(String, String)> {
    let (waba, name) = match event {
        DomainEvent::AccountUpdated(a) => (a.source.waba_id.clone(), a.event.clone()?),
        DomainEvent::WebhookUnrouted(u) if u.item.event_type == "account.updated" => (
            u.waba_id.clone(),
            u.item.data.get("event")?.as_str()?.to_string(),
        ),
        _ => return None,
    };
    name.starts_with("PARTNER_").then_some((waba, name))
}

#[async_trait::async_trait]
impl Projection for Onboarding {
    fn name(&self) -> &'static str {
        "onboarding"
    }
    fn tables(&self) -> &'static [&'static str] {
        &["onboarding", "onboarding_partner"]
    }
    fn dump_sql(&self) -> &'static str {
        "SELECT 's|' || workspace || '|' || id || '|' || doc FROM onboarding \
         UNION ALL SELECT 'p|' || waba_id || '|' || CAST(seq AS TEXT) || '|' || workspace || '|' || event || '|' || at FROM onboarding_partner ORDER BY 1"
    }
    async fn apply(&self, conn: &mut AnyConnection, event: &StoredEvent) -> anyhow::Result<()> {
        let relevant = |t: &str| {
            t.starts_with("onboarding.") || t == "account.updated" || t == "webhook.unrouted"
        };
        if super::skip(event, relevant) {
            return Ok(());
        }
        let decoded = super::decode(event)?;
        let meta = EventMeta::of(event);
        if let Some((waba, name)) = partner_event_of(decoded) {
            sqlx::query("INSERT INTO onboarding_partner (waba_id, seq, workspace, event, at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (waba_id, seq) DO NOTHING")
                .bind(&waba)
                .bind(meta.seq as i64)
                .bind(&meta.workspace)
                .bind(&name)
                .bind(&meta.recorded_at)
                .execute(&mut *conn)
                .await?;
            return Ok(());
        }
        let id = match &decoded {
            DomainEvent::OnboardingStarted(s) => &s.id,
            DomainEvent::OnboardingStepStarted(s) => &s.id,
            DomainEvent::OnboardingStepSucceeded(s) => &s.id,
            DomainEvent::OnboardingStepFailed(s) => &s.id,
            DomainEvent::OnboardingCompleted(s) => &s.id,
            DomainEvent::OnboardingFailed(s) => &s.id,
            _ => return Ok(()),
        };
        let current = load(&mut *conn, &meta.workspace, id).await?;
        let Some(saga) = fold(current.as_ref(), decoded, &meta) else {
            return Ok(());
        };
        let state = serde_json::to_value(saga.state)?;
        sqlx::query("INSERT INTO onboarding (workspace, id, waba_id, phone_number_id, state, started_seq, doc) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (workspace, id) DO UPDATE SET state = excluded.state, doc = excluded.doc")
            .bind(&saga.workspace)
            .bind(&saga.id)
            .bind(&saga.waba_id)
            .bind(&saga.phone_number_id)
            .bind(state.as_str().unwrap_or("running"))
            .bind(saga.started_seq as i64)
            .bind(serde_json::to_string(&saga)?)
            .execute(conn)
            .await?;
        Ok(())
    }
}

async fn load(conn: &mut AnyConnection, ws: &str, id: &str) -> anyhow::Result<Option<Saga>> {
    super::load_doc(conn, "onboarding", ws, id).await
}

fn sagas(docs: Vec<String>) -> anyhow::Result<Vec<Saga>> {
    docs.iter()
        .map(|d| serde_json::from_str(d).map_err(Into::into))
        .collect()
}

/// A workspace's saga.
pub async fn get(store: &Store, ws: &str, id: &str) -> anyhow::Result<Option<Saga>> {
    let mut conn = store.reads.acquire().await?;
    load(&mut conn, ws, id).await
}

/// A workspace's sagas, newest first, started before the log sequence `before`.
pub async fn list(
    store: &Store,
    ws: &str,
    before: Option<u64>,
    limit: i64,
) -> anyhow::Result<Vec<Saga>> {
    let docs: Vec<String> = sqlx::query_scalar(
        "SELECT doc FROM onboarding WHERE workspace = $1 AND started_seq < $2 ORDER BY started_seq DESC LIMIT $3",
    )
    .bind(ws)
    .bind(before.map(|b| b as i64).unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(&store.reads)
    .await?;
    sagas(docs)
}

/// Every running saga, oldest first (the runner resumes them).
pub async fn running(store: &Store) -> anyhow::Result<Vec<Saga>> {
    let docs: Vec<String> = sqlx::query_scalar(
        "SELECT doc FROM onboarding WHERE state = 'running' ORDER BY started_seq",
    )
    .fetch_all(&store.reads)
    .await?;
    sagas(docs)
}

/// Every saga of a WABA, in any workspace, oldest first.
pub async fn of_waba(store: &Store, waba_id: &str) -> anyhow::Result<Vec<Saga>> {
    let docs: Vec<String> =
        sqlx::query_scalar("SELECT doc FROM onboarding WHERE waba_id = $1 ORDER BY started_seq")
            .bind(waba_id)
            .fetch_all(&store.reads)
            .await?;
    sagas(docs)
}

/// How long before a saga's start a partner event still belongs to it: Meta sends
/// `PARTNER_APP_INSTALLED` when the business finishes the flow, which is usually
/// just before its front end starts onboarding.
pub const PARTNER_EVENT_LEAD_SECONDS: i64 = 3600;

/// The partner events linked to a saga: those for its WABA, unrouted or in its
/// workspace, logged from an hour before it started on.
pub async fn partner_events(store: &Store, saga: &Saga) -> anyhow::Result<Vec<PartnerEvent>> {
    let mut conn = store.reads.acquire().await?;
    partner_events_on(&mut conn, saga).await
}

/// [`partner_events`] on a connection (a [`Store::snapshot`], say).
pub async fn partner_events_on(
    conn: &mut sqlx::AnyConnection,
    saga: &Saga,
) -> anyhow::Result<Vec<PartnerEvent>> {
    let from = Timestamp::parse(&saga.started_at)
        .map(|t| {
            t.minus(std::time::Duration::from_secs(
                PARTNER_EVENT_LEAD_SECONDS as u64,
            ))
            .to_string()
        })
        .unwrap_or_default();
    let rows = sqlx::query(
        "SELECT event, at, seq FROM onboarding_partner WHERE waba_id = $1 AND (workspace = $2 OR workspace = '') AND at >= $3 ORDER BY seq",
    )
    .bind(&saga.waba_id)
    .bind(&saga.workspace)
    .bind(&from)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| PartnerEvent {
            event: r.get(0),
            at: r.get(1),
            seq: r.get::<i64, _>(2) as u64,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use wabridge_events::types::{
        OnboardingFailed, OnboardingStarted, OnboardingStepFailed, OnboardingStepStarted,
        OnboardingStepSucceeded, SealedToken,
    };

    use super::*;
    use crate::views::spec::{at, fold_row, given, Model};

    #[derive(Clone, Debug, Default, PartialEq)]
    struct Sagas(BTreeMap<String, Saga>);

    impl Model for Sagas {
        fn fold(&mut self, event: &DomainEvent, meta: &EventMeta) {
            let id = match event {
                DomainEvent::OnboardingStarted(s) => s.id.clone(),
                DomainEvent::OnboardingStepStarted(s) => s.id.clone(),
                DomainEvent::OnboardingStepSucceeded(s) => s.id.clone(),
                DomainEvent::OnboardingStepFailed(s) => s.id.clone(),
                DomainEvent::OnboardingCompleted(s) => s.id.clone(),
                DomainEvent::OnboardingFailed(s) => s.id.clone(),
                _ => return,
            };
            fold_row(&mut self.0, id, |cur| fold(cur, event, meta));
        }
    }

    const ID: &str = "onb_1";
    use OnboardingStep::*;

    fn sealed() -> SealedToken {
        SealedToken {
            key_version: "v1".into(),
            nonce: "00".into(),
            ciphertext: "00".into(),
        }
    }

    fn started() -> DomainEvent {
        DomainEvent::OnboardingStarted(OnboardingStarted {
            id: ID.into(),
            waba_id: "300".into(),
            phone_number_id: "700".into(),
            code: sealed(),
            pin: sealed(),
            code_fingerprint: "ab".into(),
        })
    }

    fn step_started(step: OnboardingStep, attempt: u32) -> DomainEvent {
        DomainEvent::OnboardingStepStarted(OnboardingStepStarted {
            id: ID.into(),
            step,
            attempt,
        })
    }

    fn ok(step: OnboardingStep) -> DomainEvent {
        DomainEvent::OnboardingStepSucceeded(OnboardingStepSucceeded {
            id: ID.into(),
            step,
            attempt: 1,
            detail: None,
        })
    }

    fn failed(step: OnboardingStep, retry_at: Option<Timestamp>) -> DomainEvent {
        DomainEvent::OnboardingStepFailed(OnboardingStepFailed {
            id: ID.into(),
            step,
            attempt: 1,
            transient: retry_at.is_some(),
            error: StepError {
                code: Some(2),
                subcode: None,
                http_status: Some(500),
                message: "Service temporarily unavailable".into(),
            },
            retry_at,
            reason: None,
        })
    }

    fn saga(events: &[DomainEvent]) -> Saga {
        given::<Sagas>(events).model().0[ID].clone()
    }

    fn now() -> Timestamp {
        Timestamp::parse(&at(100)).unwrap()
    }

    #[test]
    fn a_new_saga_runs_the_exchange_first() {
        let s = saga(&[started()]);
        assert_eq!(s.state, SagaState::Running);
        assert_eq!(s.steps.len(), 4);
        assert!(!s.webhooks_subscribed);
        assert_eq!(
            next(&s, now()),
            Next::Run {
                step: ExchangeCode,
                attempt: 1
            }
        );
    }

    #[test]
    fn a_succeeded_step_never_runs_again() {
        let s = saga(&[started(), step_started(ExchangeCode, 1), ok(ExchangeCode)]);
        assert_eq!(
            next(&s, now()),
            Next::Run {
                step: SubscribeWebhooks,
                attempt: 1
            }
        );
        let s = saga(&[
            started(),
            step_started(ExchangeCode, 1),
            ok(ExchangeCode),
            step_started(SubscribeWebhooks, 1),
            ok(SubscribeWebhooks),
            step_started(RegisterNumber, 1),
            ok(RegisterNumber),
            step_started(RouteNumber, 1),
            ok(RouteNumber),
        ]);
        assert!(s.webhooks_subscribed);
        assert_eq!(next(&s, now()), Next::Complete);
    }

    #[test]
    fn a_transient_failure_waits_for_its_retry_time() {
        let later = now().plus(std::time::Duration::from_secs(5));
        let s = saga(&[
            started(),
            step_started(ExchangeCode, 1),
            failed(ExchangeCode, Some(later)),
        ]);
        assert_eq!(s.step(ExchangeCode).state, StepState::Retrying);
        assert_eq!(next(&s, now()), Next::Wait(later));
        assert_eq!(
            next(&s, later),
            Next::Run {
                step: ExchangeCode,
                attempt: 2
            }
        );
    }

    #[test]
    fn a_step_found_running_is_tried_again_within_its_budget() {
        // The process died during the register call: unknown outcome, retried.
        let mut events = vec![
            started(),
            step_started(ExchangeCode, 1),
            ok(ExchangeCode),
            step_started(SubscribeWebhooks, 1),
            ok(SubscribeWebhooks),
            step_started(RegisterNumber, 1),
        ];
        assert_eq!(
            next(&saga(&events), now()),
            Next::Run {
                step: RegisterNumber,
                attempt: 2
            }
        );
        events.push(step_started(RegisterNumber, 2));
        events.push(step_started(RegisterNumber, 3));
        match next(&saga(&events), now()) {
            Next::Fail { step, reason, .. } => {
                assert_eq!(step, RegisterNumber);
                assert_eq!(reason, "retries_exhausted");
            }
            other => panic!("registered a fourth time: {other:?}"),
        }
    }

    #[test]
    fn a_permanent_failure_stops_the_saga_with_its_reason() {
        let s = saga(&[
            started(),
            step_started(ExchangeCode, 1),
            failed(ExchangeCode, None),
            DomainEvent::OnboardingFailed(OnboardingFailed {
                id: ID.into(),
                step: ExchangeCode,
                reason: "code_expired".into(),
                detail: "run Embedded Signup again".into(),
            }),
        ]);
        assert_eq!(s.state, SagaState::Failed);
        assert_eq!(s.failure.as_ref().unwrap().reason, "code_expired");
        assert_eq!(s.step(ExchangeCode).state, StepState::Failed);
        assert_eq!(next(&s, now()), Next::Stop);
    }

    #[test]
    fn a_permanent_step_failure_without_its_saga_failure_is_completed_by_the_runner() {
        let s = saga(&[
            started(),
            step_started(ExchangeCode, 1),
            failed(ExchangeCode, None),
        ]);
        assert!(matches!(
            next(&s, now()),
            Next::Fail {
                step: ExchangeCode,
                ..
            }
        ));
    }

    #[test]
    fn events_replayed_or_before_the_start_change_nothing() {
        given::<Sagas>(&[]).when(ok(ExchangeCode)).then_unchanged();
        given::<Sagas>(&[started(), step_started(ExchangeCode, 1)])
            .when(ok(ExchangeCode))
            .then_replay_changes_nothing();
        given::<Sagas>(&[started()])
            .when(started())
            .then_unchanged();
    }
}
