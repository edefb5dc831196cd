//! API keys of a workspace.

use axum::{extract::State, Json as AxumJson};
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
        respond::{Created, NoContent},
    },
};

/// `POST …/api-keys` body.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Display name.
    pub name: String,
    /// At most the caller's own role.
    pub role: Role,
    /// Optional expiry.
    pub expires_at: Option<Timestamp>,
}

/// The created key; `key` is shown only here.
#[derive(Serialize, schemars::JsonSchema)]
pub struct CreatedKey {
    /// Key id.
    pub id: String,
    /// The key text. Store it now: only its hash is kept.
    pub key: String,
    /// Role.
    pub role: Role,
}

/// A key as the API shows it (no secret, no hash).
#[derive(Serialize, schemars::JsonSchema)]
pub struct ApiKey {
    /// Key id.
    pub id: String,
    /// Workspace (absent for operator keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// Name.
    pub name: String,
    /// Role (`operator` for operator keys).
    pub role: String,
    /// Creation time.
    pub created_at: String,
    /// Expiry.
    pub expires_at: Option<String>,
    /// Revocation time.
    pub revoked_at: Option<String>,
    /// Last use, to the minute.
    pub last_used_at: Option<String>,
}

impl From<ApiKeyRow> for ApiKey {
    fn from(r: ApiKeyRow) -> Self {
        ApiKey {
            id: r.id,
            workspace: r.workspace,
            name: r.name,
            role: r.role,
            created_at: r.created_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            last_used_at: r.last_used_at,
        }
    }
}

/// A page of keys.
pub fn key_page(rows: Vec<ApiKeyRow>, limit: i64) -> Page<ApiKey> {
    let items: Vec<ApiKey> = rows.into_iter().map(ApiKey::from).collect();
    Page::new(items, limit, |k| k.id.clone())
}

/// Creates a key.
pub async fn create(
    State(app): State<App>,
    auth: Authed,
    Json(body): Json<CreateKey>,
) -> Result<Created<CreatedKey>, AppError> {
    let k = cmd::create(
        &app.ctx,
        &auth.caller,
        Some(auth.ws()),
        &body.name,
        Some(body.role),
        body.expires_at,
    )
    .await?;
    Ok(Created(CreatedKey {
        id: k.id,
        key: k.key.expose_secret().to_string(),
        role: body.role,
    }))
}

/// Lists keys (no secrets).
pub async fn list(
    State(app): State<App>,
    auth: Authed,
    Query(page): Query<PageParams>,
) -> Result<AxumJson<Page<ApiKey>>, AppError> {
    let limit = page.limit()?;
    let rows = api_keys::list(
        &app.ctx.store,
        auth.ws().as_str(),
        page.cursor.as_deref(),
        limit,
    )
    .await?;
    Ok(AxumJson(key_page(rows, limit)))
}

/// Lists operator keys (operators).
pub async fn list_operators(
    State(app): State<App>,
    _auth: Authed,
    Query(page): Query<PageParams>,
) -> Result<AxumJson<Page<ApiKey>>, AppError> {
    let limit = page.limit()?;
    let rows = api_keys::list_operators(&app.ctx.store, page.cursor.as_deref(), limit).await?;
    Ok(AxumJson(key_page(rows, limit)))
}

/// Path with a key id only.
#[derive(Deserialize, schemars::JsonSchema)]
pub struct KeyOnly {
    /// Key id.
    pub id: String,
}

/// Revokes any key by id, operator or workspace (operators).
pub async fn revoke_any(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<KeyOnly>,
) -> Result<NoContent, AppError> {
    cmd::revoke_any(&app.ctx, &auth.caller, &p.id).await?;
    Ok(NoContent)
}

/// Path of a key.
#[derive(Deserialize, schemars::JsonSchema)]
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
) -> Result<NoContent, AppError> {
    cmd::revoke(&app.ctx, &auth.caller, Some(auth.ws()), &p.id).await?;
    Ok(NoContent)
}
