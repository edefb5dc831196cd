//! Workspaces (operator).

use axum::{extract::State, Json as AxumJson};
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
        respond::Created,
    },
};

/// `POST /v1/workspaces` body.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspace {
    /// Immutable slug.
    pub slug: Slug,
    /// Display name.
    pub name: String,
}

/// Creates a workspace.
pub async fn create(
    State(app): State<App>,
    auth: Authed,
    Json(body): Json<CreateWorkspace>,
) -> Result<Created<Workspace>, AppError> {
    let ws = cmd::create(&app.ctx, &auth.caller, &body.slug, &body.name).await?;
    Ok(Created(ws))
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
