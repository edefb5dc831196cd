//! Workspaces (operator).

use axum::{extract::State, http::StatusCode, Json as AxumJson};
use serde::Deserialize;
use wabridge_events::Slug;
use wabridge_handlers::commands::workspaces as cmd;
use wabridge_projections::views::workspaces::{self, Workspace};

use crate::{
    app::App,
    http::{
        auth::Authed,
        error::AppError,
        extract::{Json, Page, PageParams, Query},
    },
};

/// `POST /v1/workspaces` body.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspace {
    /// Immutable slug `[a-z0-9-]{1,40}`.
    pub slug: String,
    /// Display name.
    pub name: String,
}

/// Creates a workspace.
pub async fn create(
    State(app): State<App>,
    auth: Authed,
    Json(body): Json<CreateWorkspace>,
) -> Result<(StatusCode, AxumJson<Workspace>), AppError> {
    let slug = Slug::parse(&body.slug).map_err(|e| AppError::validation(e.to_string()))?;
    let ws = cmd::create(&app.ctx, &auth.caller, &slug, &body.name).await?;
    Ok((StatusCode::CREATED, AxumJson(ws)))
}

/// Lists workspaces.
pub async fn list(
    State(app): State<App>,
    _auth: Authed,
    Query(page): Query<PageParams>,
) -> Result<AxumJson<Page<Workspace>>, AppError> {
    let limit = page.limit()?;
    let items = workspaces::list(&app.ctx.store, page.cursor.as_deref(), limit).await?;
    Ok(AxumJson(Page::new(items, limit, |w| w.slug.clone())))
}

/// One workspace.
pub async fn get(State(app): State<App>, auth: Authed) -> Result<AxumJson<Workspace>, AppError> {
    let ws = workspaces::get(&app.ctx.store, auth.ws().as_str())
        .await?
        .ok_or_else(|| AppError::not_found("no such workspace"))?;
    Ok(AxumJson(ws))
}
