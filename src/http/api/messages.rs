//! Sending and message state: `POST …/messages` (202 once durable), `GET
//! …/messages/{id}`, `GET …/messages`, and the workspace's rate limit with its ledger.

use axum::{extract::State, Json as AxumJson};
use serde::{Deserialize, Serialize};
use wabridge_handlers::{commands::send as cmd, ratelimit::Policy, sending::request::SendRequest};
use wabridge_projections::views::{
    rate_limits::{self, Usage},
    sends::{self, HistoryEntry, SendRow},
};

use crate::{
    app::App,
    http::{
        auth::Authed,
        error::AppError,
        extract::{IdempotencyKey, Json, Page, PageParams, Path, Query},
        respond::AcceptedWith,
    },
};

/// The answer to an accepted send.
#[derive(Serialize, schemars::JsonSchema)]
pub struct SendAccepted {
    /// wabridge's message id.
    pub id: String,
    /// Always `accepted`: the request is durable; the sender posts it to Meta.
    pub status: String,
}

/// Accepts a message for sending (202 once durable in the log).
pub async fn send(
    State(app): State<App>,
    auth: Authed,
    IdempotencyKey(key): IdempotencyKey,
    Json(body): Json<SendRequest>,
) -> Result<AcceptedWith<SendAccepted>, AppError> {
    let raw = serde_json::to_value(&body).map_err(|e| AppError::validation(e.to_string()))?;
    let result = cmd::send(
        &app.ctx,
        &app.limiter,
        &app.rejections,
        &auth.caller,
        auth.ws(),
        key.as_deref(),
        raw,
    )
    .await;
    match result {
        Ok(a) => Ok(AcceptedWith(
            SendAccepted {
                id: a.id,
                status: "accepted".into(),
            },
            a.headers,
        )),
        Err(e) => {
            if matches!(
                e,
                wabridge_handlers::commands::CommandError::RateLimited { .. }
            ) {
                app.metrics.count_rate_limited();
            }
            Err(e.into())
        }
    }
}

/// Path of a message.
#[derive(Deserialize, schemars::JsonSchema)]
pub struct MessagePath {
    /// Workspace.
    pub ws: String,
    /// wabridge's message id.
    pub id: String,
}

/// Meta's error on a failed message.
#[derive(Serialize, schemars::JsonSchema)]
pub struct MessageError {
    /// Meta's numeric code, when Meta gave one.
    pub code: Option<i64>,
    /// Meta's title, when Meta gave one.
    pub title: Option<String>,
    /// wabridge's reason (`invalid_recipient`, `no_token`, `expired`, ...).
    pub reason: Option<String>,
}

/// A message's state.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Message {
    /// wabridge's id.
    pub id: String,
    /// The recipient's phone number (digits), when sent to one.
    pub to: Option<String>,
    /// The recipient's business-scoped user id, when sent to one.
    pub recipient: Option<String>,
    /// `accepted`, `sending`, `sent`, `delivered`, `read`, `failed`, `blocked`, or
    /// `unknown` (an attempt whose outcome was lost in a crash; never re-posted).
    pub status: String,
    /// Meta's message id, once known.
    pub wamid: Option<String>,
    /// The sending number.
    pub phone_number_id: String,
    /// The message type.
    #[serde(rename = "type")]
    pub message_type: String,
    /// A template's category.
    pub category: Option<String>,
    /// Calls made to Meta.
    pub attempts: i64,
    /// Why it failed, was blocked, or is being retried.
    pub error: Option<MessageError>,
    /// When the next attempt is due (while retrying).
    pub retry_at: Option<String>,
    /// When it was requested.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// Every step, oldest first (only on `GET …/messages/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<HistoryEntry>>,
}

fn message(r: SendRow, history: Option<Vec<HistoryEntry>>) -> Message {
    let error = (r.reason.is_some() || r.error_code.is_some()).then(|| MessageError {
        code: r.error_code,
        title: r.error_title.clone(),
        reason: r.reason.clone(),
    });
    Message {
        id: r.id,
        to: r.to,
        recipient: r.recipient,
        status: r.status,
        wamid: r.wamid,
        phone_number_id: r.phone_number_id,
        message_type: r.message_type,
        category: r.category,
        attempts: r.attempts,
        error,
        retry_at: r.retry_at,
        created_at: r.created_at,
        updated_at: r.updated_at,
        history,
    }
}

/// Makes the `sends` read model as fresh as the log (read your own writes).
async fn fresh(app: &App) -> Result<(), AppError> {
    Ok(app.ctx.fresh_as_log(&["sends"]).await?)
}

/// A message's state and history.
pub async fn get(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<MessagePath>,
) -> Result<AxumJson<Message>, AppError> {
    fresh(&app).await?;
    let ws = auth.ws().as_str();
    let row = sends::get(&app.ctx.store, ws, &p.id)
        .await?
        .ok_or_else(|| AppError::not_found(format!("no message {}", p.id)))?;
    let history = sends::history(&app.ctx.store, ws, &p.id).await?;
    Ok(AxumJson(message(row, Some(history))))
}

/// `GET …/messages` parameters.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListMessages {
    /// Only this status.
    pub status: Option<String>,
    /// Only to this recipient (digits, `+` optional, or a user id).
    pub to: Option<String>,
    /// Cursor.
    pub cursor: Option<String>,
    /// Page size (default 50, at most 500).
    pub limit: Option<i64>,
}

const STATUSES: &[&str] = &[
    "accepted",
    "sending",
    "sent",
    "delivered",
    "read",
    "failed",
    "blocked",
    "unknown",
];

/// Lists messages, newest first.
pub async fn list(
    State(app): State<App>,
    auth: Authed,
    Query(q): Query<ListMessages>,
) -> Result<AxumJson<Page<Message>>, AppError> {
    let limit = PageParams {
        cursor: None,
        limit: q.limit,
    }
    .limit()?;
    if let Some(s) = &q.status {
        if !STATUSES.contains(&s.as_str()) {
            return Err(AppError::validation(format!(
                "status must be one of {}",
                STATUSES.join(", ")
            )));
        }
    }
    let before = match &q.cursor {
        None => None,
        Some(c) => Some(
            c.parse::<i64>()
                .map_err(|_| AppError::validation("cursor is not one this API gave"))?,
        ),
    };
    let to = q.to.as_deref().map(|t| t.strip_prefix('+').unwrap_or(t));
    fresh(&app).await?;
    let rows = sends::list(
        &app.ctx.store,
        auth.ws().as_str(),
        q.status.as_deref(),
        to,
        before,
        limit,
    )
    .await?;
    let page = Page::new(rows, limit, |r| r.requested_seq.to_string());
    Ok(AxumJson(Page {
        items: page.items.into_iter().map(|r| message(r, None)).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// A workspace's rate limit.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitBody {
    /// Sustained sends per second.
    pub requests_per_second: f64,
    /// Sends allowed at once.
    pub burst: u32,
}

/// The policy and its recent usage.
#[derive(Serialize, schemars::JsonSchema)]
pub struct RateLimitAnswer {
    /// Sustained sends per second.
    pub requests_per_second: f64,
    /// Sends allowed at once.
    pub burst: u32,
    /// Whether this is the default (never set for the workspace).
    pub default: bool,
    /// Recent minutes, newest first: sends admitted and refused.
    pub usage: Vec<Usage>,
}

async fn answer(app: &App, ws: &wabridge_events::Slug) -> Result<RateLimitAnswer, AppError> {
    let policy = cmd::policy(&app.ctx, ws).await?;
    let set = rate_limits::policy(&app.ctx.store, ws.as_str())
        .await?
        .is_some();
    let head = app
        .ctx
        .log
        .last_seq(wabridge_events::StreamKind::Domain)
        .await
        .map_err(anyhow::Error::from)?;
    app.ctx.wait("rate_limits", head).await?;
    Ok(RateLimitAnswer {
        requests_per_second: policy.requests_per_second,
        burst: policy.burst,
        default: !set,
        usage: rate_limits::usage(&app.ctx.store, ws.as_str(), 60).await?,
    })
}

/// Reads the workspace's rate limit and the ledger's recent minutes.
pub async fn get_rate_limit(
    State(app): State<App>,
    auth: Authed,
) -> Result<AxumJson<RateLimitAnswer>, AppError> {
    wabridge_handlers::commands::workspaces::require(&app.ctx, auth.ws()).await?;
    Ok(AxumJson(answer(&app, auth.ws()).await?))
}

/// Sets the workspace's rate limit (audited).
pub async fn put_rate_limit(
    State(app): State<App>,
    auth: Authed,
    Json(body): Json<RateLimitBody>,
) -> Result<AxumJson<RateLimitAnswer>, AppError> {
    cmd::set_policy(
        &app.ctx,
        &auth.caller,
        auth.ws(),
        Policy {
            requests_per_second: body.requests_per_second,
            burst: body.burst,
        },
    )
    .await?;
    Ok(AxumJson(answer(&app, auth.ws()).await?))
}
