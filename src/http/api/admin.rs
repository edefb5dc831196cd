//! Operator routes: unrouted webhooks, dead letters, and the read models (status and
//! rebuilds).

use axum::{extract::State, Json as AxumJson};
use serde::{Deserialize, Serialize};
use wabridge_events::Slug;
use wabridge_handlers::commands::{dead_letters as dl_cmd, numbers};
use wabridge_projections::views::{
    dead_letters::{self, DeadLetter},
    unrouted::{self, UnroutedNumber},
};

use crate::{
    app::App,
    http::{
        auth::Authed,
        error::AppError,
        extract::{Json, OptionalJson, Page, PageParams, Path, Query},
        respond::{Accepted, NoContent},
    },
};

/// Numbers with unrouted items.
pub async fn unrouted(
    State(app): State<App>,
    _auth: Authed,
    Query(page): Query<PageParams>,
) -> Result<AxumJson<Page<UnroutedNumber>>, AppError> {
    let limit = page.limit()?;
    let items = unrouted::numbers(&app.ctx.store, page.cursor.as_deref(), limit).await?;
    Ok(AxumJson(Page::new(items, limit, |n| {
        n.phone_number_id.clone()
    })))
}

/// `POST /v1/admin/unrouted/{phone_number_id}/assign` body.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Assign {
    /// The workspace receiving the items.
    pub workspace: Slug,
}

/// The assignment result.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Assigned {
    /// Items attached.
    pub items: u64,
}

/// Path with a phone number id.
#[derive(Deserialize, schemars::JsonSchema)]
pub struct NumberOnly {
    /// Meta's phone number id.
    pub phone_number_id: String,
}

/// Attaches a number's unrouted items to a workspace.
pub async fn assign(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<NumberOnly>,
    Json(body): Json<Assign>,
) -> Result<AxumJson<Assigned>, AppError> {
    let items =
        numbers::assign_unrouted(&app.ctx, &auth.caller, &p.phone_number_id, &body.workspace)
            .await?;
    Ok(AxumJson(Assigned { items }))
}

/// `PUT /v1/admin/wabas/{waba_id}` body.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignWaba {
    /// The workspace that owns the WABA from now on.
    pub workspace: Slug,
}

/// Path with a WABA id.
#[derive(Deserialize, schemars::JsonSchema)]
pub struct WabaPath {
    /// The WABA id.
    pub waba_id: String,
}

/// Places a WABA in a workspace.
pub async fn assign_waba(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<WabaPath>,
    Json(body): Json<AssignWaba>,
) -> Result<NoContent, AppError> {
    numbers::assign_waba(&app.ctx, &auth.caller, &p.waba_id, &body.workspace).await?;
    Ok(NoContent)
}

/// Dead-letter list parameters.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterParams {
    /// Only dead letters in this state.
    pub status: Option<DeadLetterStatus>,
    /// Cursor.
    pub cursor: Option<String>,
    /// Page size.
    pub limit: Option<i64>,
}

/// Lists dead letters.
pub async fn dead_letters(
    State(app): State<App>,
    _auth: Authed,
    Query(p): Query<DeadLetterParams>,
) -> Result<AxumJson<Page<DeadLetter>>, AppError> {
    let limit = PageParams {
        cursor: None,
        limit: p.limit,
    }
    .limit()?;
    let items = dead_letters::list(
        &app.ctx.store,
        p.status.map(DeadLetterStatus::as_str),
        p.cursor.as_deref(),
        limit,
    )
    .await?;
    Ok(AxumJson(Page::new(items, limit, |d| d.id.clone())))
}

/// The state of a dead letter.
#[derive(Clone, Copy, Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterStatus {
    /// Waiting for the operator.
    Open,
    /// A redrive was requested.
    Redriving,
    /// A redrive succeeded.
    Resolved,
    /// The operator gave up on it.
    Discarded,
}

impl DeadLetterStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterStatus::Open => "open",
            DeadLetterStatus::Redriving => "redriving",
            DeadLetterStatus::Resolved => "resolved",
            DeadLetterStatus::Discarded => "discarded",
        }
    }
}

/// Path with a dead-letter id.
#[derive(Deserialize, schemars::JsonSchema)]
pub struct DeadLetterPath {
    /// The id.
    pub id: String,
}

/// One dead letter.
pub async fn dead_letter(
    State(app): State<App>,
    _auth: Authed,
    Path(p): Path<DeadLetterPath>,
) -> Result<AxumJson<DeadLetter>, AppError> {
    let d = dead_letters::get(&app.ctx.store, &p.id)
        .await?
        .ok_or_else(|| AppError::not_found("no such dead letter"))?;
    Ok(AxumJson(d))
}

/// Redrives a dead letter.
pub async fn redrive(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<DeadLetterPath>,
) -> Result<Accepted<RedriveRequested>, AppError> {
    dl_cmd::redrive(&app.ctx, &auth.caller, &p.id).await?;
    Ok(Accepted(RedriveRequested {
        id: p.id,
        status: "redriving",
    }))
}

/// A redrive was requested; the dead letter's status shows the outcome.
#[derive(Serialize, schemars::JsonSchema)]
pub struct RedriveRequested {
    /// The dead letter.
    pub id: String,
    /// `redriving` until the consumer tried again.
    pub status: &'static str,
}

/// Discard body.
#[derive(Deserialize, schemars::JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Discard {
    /// Why.
    pub reason: Option<String>,
}

/// Discards a dead letter.
pub async fn discard(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<DeadLetterPath>,
    Json(body): Json<Discard>,
) -> Result<NoContent, AppError> {
    dl_cmd::discard(&app.ctx, &auth.caller, &p.id, body.reason).await?;
    Ok(NoContent)
}

/// Every read model's checkpoint, the log's head, the lag in events and seconds,
/// who holds the workers lease, and rebuilds started here.
pub async fn projections(
    State(app): State<App>,
    _auth: Authed,
) -> Result<AxumJson<crate::replay::ProjectionsReport>, AppError> {
    Ok(AxumJson(crate::replay::status(&app).await?))
}

/// Path of a projection.
#[derive(Deserialize, schemars::JsonSchema)]
pub struct ProjectionPath {
    /// A projection's name (see `GET /v1/admin/projections`), or `all`.
    pub name: String,
}

/// A rebuild that was started.
#[derive(Serialize, schemars::JsonSchema)]
pub struct RebuildStarted {
    /// What is rebuilt.
    pub name: String,
    /// `running`: follow it in `GET /v1/admin/projections`.
    pub state: &'static str,
}

/// `POST /v1/admin/projections/{name}/rebuild` body (optional: no body rebuilds and
/// swaps).
#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RebuildRequest {
    /// A read model: rebuild and compare with the live state, swap nothing. The
    /// webhook processor: count what would be appended, append nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// `webhook_processor` only: process the raw webhooks stored since this time
    /// (RFC 3339) again, up to where the live processor stands.
    pub since: Option<String>,
    /// `webhook_processor` only: the same from this raw-stream sequence.
    pub from_seq: Option<u64>,
}

/// Rebuilds a read model (or `all`) from the log beside the live one, then swaps it
/// in atomically; or, for `webhook_processor` with `since` or `from_seq`, processes
/// the stored webhooks since then again (202 at once; 409 while one of that name
/// runs).
pub async fn rebuild(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<ProjectionPath>,
    OptionalJson(body): OptionalJson<RebuildRequest>,
) -> Result<Accepted<RebuildStarted>, AppError> {
    let spelling = crate::replay::Spelling {
        since: "since",
        from_seq: "from_seq",
    };
    let job = match crate::replay::job(
        &app,
        &p.name,
        body.since.as_deref(),
        body.from_seq,
        body.dry_run,
        &spelling,
    ) {
        Ok(job) => job,
        Err(crate::replay::BadRequest::Unknown) => {
            return Err(AppError::not_found(format!(
                "no projection {:?}; see GET /v1/admin/projections",
                p.name
            )))
        }
        Err(crate::replay::BadRequest::Invalid(why)) => return Err(AppError::validation(why)),
    };
    match crate::replay::start(&app, &auth.caller, &p.name, job).await {
        Ok(()) => {}
        Err(crate::replay::NotStarted::Running) => {
            return Err(AppError::new(
                axum::http::StatusCode::CONFLICT,
                "conflict",
                format!("a rebuild of {} is running", p.name),
            ))
        }
        Err(crate::replay::NotStarted::Unrecorded(e)) => return Err(e.into()),
    }
    Ok(Accepted(RebuildStarted {
        name: p.name,
        state: "running",
    }))
}
