//! The audit log of a workspace, and the operators' chain.

use axum::{
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    Json as AxumJson,
};
use serde::Deserialize;
use wabridge_events::Timestamp;
use wabridge_handlers::commands::audit as cmd;
use wabridge_projections::views::audit::{self, AuditEntry, AuditQuery, Verification};

use crate::{
    app::App,
    http::{
        auth::Authed,
        error::AppError,
        extract::{Page, PageParams, Query},
    },
};

/// Audit query parameters.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Only this actor (`kind:id`, e.g. `api_key:0123…`).
    pub actor: Option<String>,
    /// Only this action (event type).
    pub action: Option<String>,
    /// At or after.
    pub since: Option<Timestamp>,
    /// Before.
    pub until: Option<Timestamp>,
    /// Cursor.
    pub cursor: Option<String>,
    /// Page size (default 50, at most 500).
    pub limit: Option<i64>,
}

/// Entries newest first.
pub async fn list(
    State(app): State<App>,
    auth: Authed,
    Query(p): Query<AuditParams>,
) -> Result<AxumJson<Page<AuditEntry>>, AppError> {
    entries(&app, auth.ws().as_str(), p).await
}

/// The operators' chain (actions on no one workspace: rebuilds, dead letters,
/// operator keys, WABA assignments), newest first.
pub async fn operator_list(
    State(app): State<App>,
    _auth: Authed,
    Query(p): Query<AuditParams>,
) -> Result<AxumJson<Page<AuditEntry>>, AppError> {
    entries(&app, "", p).await
}

async fn entries(
    app: &App,
    ws: &str,
    p: AuditParams,
) -> Result<AxumJson<Page<AuditEntry>>, AppError> {
    let limit = PageParams {
        cursor: None,
        limit: p.limit,
    }
    .limit()?;
    let before_seq = p
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| AppError::validation("cursor is not valid"))
        })
        .transpose()?;
    let q = AuditQuery {
        actor: p.actor.clone(),
        action: p.action.clone(),
        since: p.since.map(|t| t.to_string()),
        until: p.until.map(|t| t.to_string()),
        before_seq,
        limit,
    };
    let items = audit::query(&app.ctx.store, ws, &q).await?;
    Ok(AxumJson(Page::new(items, limit, |e| e.seq.to_string())))
}

/// Verifies the chain.
pub async fn verify(
    State(app): State<App>,
    auth: Authed,
) -> Result<AxumJson<Verification>, AppError> {
    Ok(AxumJson(
        cmd::verify(
            &app.ctx,
            app.cfg.audit_signing_key.as_ref(),
            auth.ws().as_str(),
        )
        .await?,
    ))
}

/// Export parameters.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    /// Entries at or after; default: everything retained.
    pub since: Option<Timestamp>,
}

/// Entries in chain order as JSON lines (for a SIEM).
pub async fn export(
    State(app): State<App>,
    auth: Authed,
    Query(p): Query<ExportParams>,
) -> Result<Response, AppError> {
    let since = p.since.map(|t| t.to_string()).unwrap_or_default();
    let mut out = String::new();
    let mut after = 0;
    loop {
        let page = audit::export(&app.ctx.store, auth.ws().as_str(), &since, after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in &page {
            out.push_str(&serde_json::to_string(e).map_err(AppError::internal)?);
            out.push('\n');
        }
    }
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response())
}
