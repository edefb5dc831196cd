//! API keys of a workspace.

use axum::{extract::State, http::StatusCode, Json as AxumJson};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use wabridge_events::Timestamp;
use wabridge_handlers::{access::Role, commands::keys as cmd};
use wabridge_projections::views::api_keys::{self, ApiKeyRow};

use crate::{
    app::App,
    http::{
        auth::Authed,
        error::AppError,
        extract::{Json, Page, PageParams, Path, Query},
    },
};

/// `POST …/api-keys` body.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Display name.
    pub name: String,
    /// `owner`, `admin`, `agent` or `viewer` (at most the caller's own role).
    pub role: String,
    /// Optional expiry (RFC 3339).
    pub expires_at: Option<String>,
}

/// The created key; `key` is shown only here.
#[derive(Serialize, schemars::JsonSchema)]
pub struct CreatedKey {
    /// Key id.
    pub id: String,
    /// The key text. Store it now: only its hash is kept.
    pub key: String,
    /// Role.
    pub role: String,
}

/// Creates a key.
pub async fn create(
    State(app): State<App>,
    auth: Authed,
    Json(body): Json<CreateKey>,
) -> Result<(StatusCode, AxumJson<CreatedKey>), AppError> {
    let role = Role::parse(&body.role)
        .ok_or_else(|| AppError::validation("role must be owner, admin, agent or viewer"))?;
    if role > auth.principal.role() {
        return Err(AppError::forbidden(format!(
            "a {} key cannot create {} keys",
            auth.principal.role().as_str(),
            role.as_str()
        )));
    }
    let expires_at = body
        .expires_at
        .as_deref()
        .map(Timestamp::parse)
        .transpose()
        .map_err(|_| AppError::validation("expires_at must be an RFC 3339 time"))?;
    let k = cmd::create(
        &app.ctx,
        &auth.caller,
        Some(auth.ws()),
        &body.name,
        Some(role),
        expires_at,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        AxumJson(CreatedKey {
            id: k.id,
            key: k.key.expose_secret().to_string(),
            role: k.role,
        }),
    ))
}

/// Lists keys (no secrets).
pub async fn list(
    State(app): State<App>,
    auth: Authed,
    Query(page): Query<PageParams>,
) -> Result<AxumJson<Page<ApiKeyRow>>, AppError> {
    let limit = page.limit()?;
    let items = api_keys::list(
        &app.ctx.store,
        auth.ws().as_str(),
        page.cursor.as_deref(),
        limit,
    )
    .await?;
    Ok(AxumJson(Page::new(items, limit, |k| k.id.clone())))
}

/// Path of a key.
#[derive(Deserialize)]
pub struct KeyPath {
    /// Workspace.
    pub ws: String,
    /// Key id.
    pub id: String,
}

/// Revokes a key at once.
pub async fn revoke(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<KeyPath>,
) -> Result<StatusCode, AppError> {
    cmd::revoke(&app.ctx, &auth.caller, auth.ws(), &p.id).await?;
    Ok(StatusCode::NO_CONTENT)
}
