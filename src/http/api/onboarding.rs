//! Embedded Signup onboarding: start a saga with what the front end got from Meta's
//! flow, and follow its steps.

use axum::{extract::State, Json as AxumJson};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use wabridge_handlers::commands::onboarding as cmd;
use wabridge_projections::views::{
    onboarding::{self as view, Saga, SagaState, StepState},
    tokens,
};

use crate::{
    app::App,
    http::{
        auth::Authed,
        error::AppError,
        extract::{Json, Page, PageParams, Path, Query},
        respond::Accepted,
    },
};

/// `POST …/onboarding` body: what Embedded Signup gave the front end.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartOnboarding {
    /// The exchangeable code (`FB.login`'s `authResponse.code`; it lives about 30 s).
    #[schemars(with = "String")]
    pub code: SecretString,
    /// `waba_id` from the `WA_EMBEDDED_SIGNUP` session message.
    pub waba_id: String,
    /// `phone_number_id` from the same message.
    pub phone_number_id: String,
    /// The number's two-step verification PIN: 6 digits (the existing one if set,
    /// otherwise the one to set).
    #[schemars(with = "String")]
    pub pin: SecretString,
}

/// The answer to a start.
#[derive(Serialize, schemars::JsonSchema)]
pub struct OnboardingStarted {
    /// The onboarding id (the same code always gives the same id).
    pub id: String,
    /// `running` (or the state of the saga this code started before).
    pub state: SagaState,
}

/// Path of an onboarding.
#[derive(Deserialize, schemars::JsonSchema)]
pub struct OnboardingPath {
    /// Workspace.
    pub ws: String,
    /// The onboarding id.
    pub id: String,
}

/// Meta's (or wabridge's) error of a step.
#[derive(Serialize, schemars::JsonSchema)]
pub struct StepErrorView {
    /// Meta's numeric error code, when Meta gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
    /// Meta's subcode (36007: the code expired; 36009: it was used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subcode: Option<i64>,
    /// The HTTP status Meta answered with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// What happened.
    pub message: String,
}

/// One step.
#[derive(Serialize, schemars::JsonSchema)]
pub struct StepView {
    /// `exchange_code`, `subscribe_webhooks`, `register_number`, `route_number`.
    pub name: &'static str,
    /// Where it is.
    pub state: StepState,
    /// When it last changed (absent while pending).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// Attempts started.
    pub attempts: u32,
    /// When its first attempt started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When a transient failure is retried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<String>,
    /// What it produced (the token's fingerprint and expiry, the display number).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The last error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<StepErrorView>,
}

/// Why the onboarding failed.
#[derive(Serialize, schemars::JsonSchema)]
pub struct FailureView {
    /// The step it stopped at.
    pub step: &'static str,
    /// Stable reason: `code_expired`, `code_used`, `code_invalid`,
    /// `app_credentials_rejected`, `registration_limit`, `wrong_pin`,
    /// `number_held_by_another_workspace`, `waba_held_by_another_workspace`,
    /// `retries_exhausted`, `token_rejected`, `permission_denied`, `meta_error`, ...
    pub reason: String,
    /// What to do about it.
    pub detail: String,
}

/// A partner event Meta sent about the WABA (`account_update`).
#[derive(Serialize, schemars::JsonSchema)]
pub struct PartnerEventView {
    /// `PARTNER_APP_INSTALLED`, `PARTNER_ADDED`, `PARTNER_APP_UNINSTALLED`, ...
    pub event: String,
    /// When wabridge logged it.
    pub at: String,
    /// What wabridge did about it, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
}

/// The stored token of the number, as the vault has it.
#[derive(Serialize, schemars::JsonSchema)]
pub struct TokenView {
    /// `valid`, `invalid` (Meta rejected it, or the app was uninstalled) or `revoked`.
    pub status: String,
    /// First 8 bytes of SHA-256 of the token, hex.
    pub fingerprint: String,
    /// When it expires, when Meta said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// An onboarding's report.
#[derive(Serialize, schemars::JsonSchema)]
pub struct OnboardingReport {
    /// `onb_…`.
    pub id: String,
    /// `running`, `done` or `failed`.
    pub state: SagaState,
    /// The WABA.
    pub waba_id: String,
    /// The number.
    pub phone_number_id: String,
    /// Whether the app is subscribed to the WABA's webhooks.
    pub webhooks_subscribed: bool,
    /// When it was asked for.
    pub started_at: String,
    /// When it last changed.
    pub updated_at: String,
    /// The steps, in order.
    pub steps: Vec<StepView>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureView>,
    /// Partner events for the WABA from an hour before the start on.
    pub partner_events: Vec<PartnerEventView>,
    /// The number's token, once stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenView>,
}

async fn report(app: &App, saga: Saga) -> Result<OnboardingReport, AppError> {
    // One snapshot: the partner events and the token a partner event changed are
    // never read across that batch's commit (seen: an uninstall's invalid token
    // beside a list without the uninstall).
    let mut snapshot = app.ctx.store.snapshot().await?;
    let partner = view::partner_events_on(&mut snapshot, &saga).await?;
    let token = tokens::get_on(&mut snapshot, &saga.workspace, &saga.phone_number_id)
        .await?
        .map(|t| TokenView {
            status: t.status,
            fingerprint: t.fingerprint,
            expires_at: t.expires_at,
        });
    snapshot.commit().await.map_err(anyhow::Error::from)?;
    Ok(OnboardingReport {
        id: saga.id,
        state: saga.state,
        waba_id: saga.waba_id,
        phone_number_id: saga.phone_number_id,
        webhooks_subscribed: saga.webhooks_subscribed,
        started_at: saga.started_at,
        updated_at: saga.updated_at,
        steps: saga
            .steps
            .into_iter()
            .map(|s| StepView {
                name: s.name.as_str(),
                state: s.state,
                at: s.at,
                attempts: s.attempts,
                started_at: s.started_at,
                retry_at: s.retry_at,
                detail: s.detail,
                error: s.error.map(|e| StepErrorView {
                    code: e.code,
                    subcode: e.subcode,
                    http_status: e.http_status,
                    message: e.message,
                }),
            })
            .collect(),
        failure: saga.failure.map(|f| FailureView {
            step: f.step.as_str(),
            reason: f.reason,
            detail: f.detail,
        }),
        partner_events: partner
            .into_iter()
            .map(|p| PartnerEventView {
                effect: (p.event == "PARTNER_APP_UNINSTALLED")
                    .then(|| "the number's token was marked invalid".to_string()),
                event: p.event,
                at: p.at,
            })
            .collect(),
        token,
    })
}

/// Starts onboarding (202 at once; the code exchange starts within milliseconds).
pub async fn start(
    State(app): State<App>,
    auth: Authed,
    Json(body): Json<StartOnboarding>,
) -> Result<Accepted<OnboardingStarted>, AppError> {
    let meta_app = cmd::MetaApp {
        id: app.cfg.meta_app_id.clone(),
        secrets: app.cfg.meta_app_secrets.clone(),
    };
    let started = cmd::start(
        &app.ctx,
        app.cfg.token_keys.as_ref(),
        &meta_app,
        &auth.caller,
        auth.ws(),
        cmd::StartRequest {
            code: body.code,
            waba_id: body.waba_id,
            phone_number_id: body.phone_number_id,
            pin: body.pin,
        },
    )
    .await?;
    let state = if started.created {
        SagaState::Running
    } else {
        cmd::get(&app.ctx, auth.ws(), &started.id).await?.state
    };
    Ok(Accepted(OnboardingStarted {
        id: started.id,
        state,
    }))
}

/// An onboarding's state, steps, errors and partner events.
pub async fn get(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<OnboardingPath>,
) -> Result<AxumJson<OnboardingReport>, AppError> {
    let saga = cmd::get(&app.ctx, auth.ws(), &p.id).await?;
    Ok(AxumJson(report(&app, saga).await?))
}

/// The workspace's onboardings, newest first.
pub async fn list(
    State(app): State<App>,
    auth: Authed,
    Query(page): Query<PageParams>,
) -> Result<AxumJson<Page<OnboardingReport>>, AppError> {
    let limit = page.limit()?;
    app.ctx.fresh_as_log(&["onboarding"]).await?;
    let before = match page.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            c.parse::<u64>()
                .map_err(|_| AppError::validation("cursor is not one this API gave"))?,
        ),
    };
    let sagas = view::list(&app.ctx.store, auth.ws().as_str(), before, limit).await?;
    let cursors: Vec<String> = sagas.iter().map(|s| s.started_seq.to_string()).collect();
    let mut items = Vec::with_capacity(sagas.len());
    for saga in sagas {
        items.push(report(&app, saga).await?);
    }
    let full = items.len() as i64 == limit;
    Ok(AxumJson(Page {
        items,
        next_cursor: if full { cursors.last().cloned() } else { None },
    }))
}
