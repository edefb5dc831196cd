//! The token vault's routes. The token is deserialised straight into a
//! `SecretString` and never answered, logged or appended in plain text.

use axum::{extract::State, Json as AxumJson};
use serde::{Deserialize, Serialize};
use wabridge_events::Timestamp;
use wabridge_handlers::commands::tokens as cmd;
use wabridge_projections::views::tokens::{self, TokenRow};

use super::numbers::NumberPath;
use crate::{
    app::App,
    http::{
        auth::Authed,
        error::AppError,
        extract::{Json, Page, Path, Query},
        respond::NoContent,
    },
};

/// `PUT …/token` body.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PutToken {
    /// The Meta access token (write-only).
    #[schemars(with = "String")]
    pub access_token: secrecy::SecretString,
    /// Expiry, when known.
    pub expires_at: Option<Timestamp>,
}

/// Token metadata.
#[derive(Serialize, schemars::JsonSchema)]
pub struct TokenMetadata {
    /// Master key version.
    pub key_version: String,
    /// `valid`, `invalid` or `revoked`.
    pub status: String,
    /// When stored.
    pub stored_at: String,
    /// Expiry.
    pub expires_at: Option<String>,
    /// First 8 bytes of SHA-256 of the token, hex.
    pub fingerprint: String,
}

impl From<TokenRow> for TokenMetadata {
    fn from(r: TokenRow) -> Self {
        TokenMetadata {
            key_version: r.key_version,
            status: r.status,
            stored_at: r.stored_at,
            expires_at: r.expires_at,
            fingerprint: r.fingerprint,
        }
    }
}

/// Stores a token (204).
pub async fn put(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<NumberPath>,
    Json(body): Json<PutToken>,
) -> Result<NoContent, AppError> {
    cmd::store(
        &app.ctx,
        app.cfg.token_keys.as_ref(),
        &auth.caller,
        auth.ws(),
        &p.phone_number_id,
        &body.access_token,
        body.expires_at,
    )
    .await?;
    Ok(NoContent)
}

/// Reads a token's metadata.
pub async fn get(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<NumberPath>,
) -> Result<AxumJson<TokenMetadata>, AppError> {
    Ok(AxumJson(
        cmd::metadata(&app.ctx, auth.ws(), &p.phone_number_id)
            .await?
            .into(),
    ))
}

/// Revokes a token (204).
pub async fn revoke(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<NumberPath>,
) -> Result<NoContent, AppError> {
    cmd::revoke(&app.ctx, &auth.caller, auth.ws(), &p.phone_number_id).await?;
    Ok(NoContent)
}

/// `GET …/tokens` parameters.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListTokens {
    /// Only valid tokens expiring within this duration (e.g. `7d`, `12h`).
    pub expiring_within: Option<String>,
    /// Cursor.
    pub cursor: Option<String>,
    /// Page size (default 50, at most 500).
    pub limit: Option<i64>,
}

/// A token in a list.
#[derive(Serialize, schemars::JsonSchema)]
pub struct TokenListItem {
    /// The number.
    pub phone_number_id: String,
    /// Metadata.
    #[serde(flatten)]
    pub metadata: TokenMetadata,
}

/// The longest `expiring_within` accepted (ten years).
const MAX_EXPIRING_WITHIN: std::time::Duration = std::time::Duration::from_secs(3650 * 86_400);

/// Lists the workspace's tokens, optionally those expiring soon.
pub async fn list(
    State(app): State<App>,
    auth: Authed,
    Query(q): Query<ListTokens>,
) -> Result<AxumJson<Page<TokenListItem>>, AppError> {
    let limit = crate::http::extract::PageParams {
        cursor: None,
        limit: q.limit,
    }
    .limit()?;
    let before = match &q.expiring_within {
        Some(d) => {
            let d = crate::config::parse_duration(d)
                .filter(|d| *d <= MAX_EXPIRING_WITHIN)
                .ok_or_else(|| {
                    AppError::validation(
                        "expiring_within must be a duration like 7d or 12h, at most 3650d",
                    )
                })?;
            Some(Timestamp::now().plus(d).to_string())
        }
        None => None,
    };
    let rows = tokens::list(
        &app.ctx.store,
        auth.ws().as_str(),
        before.as_deref(),
        q.cursor.as_deref(),
        limit,
    )
    .await?;
    let items = rows
        .into_iter()
        .map(|r| TokenListItem {
            phone_number_id: r.phone_number_id.clone(),
            metadata: r.into(),
        })
        .collect();
    Ok(AxumJson(Page::new(items, limit, |t: &TokenListItem| {
        t.phone_number_id.clone()
    })))
}
