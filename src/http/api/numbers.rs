//! Phone numbers of a workspace (webhook routing).

use axum::{extract::State, Json as AxumJson};
use serde::Deserialize;
use wabridge_handlers::commands::numbers as cmd;
use wabridge_projections::views::phone_numbers::{self, PhoneNumber};

use crate::{
    app::App,
    http::{
        auth::Authed,
        error::AppError,
        extract::{Json, Page, PageParams, Path, Query},
        respond::NoContent,
    },
};

/// `PUT …/phone-numbers/{phone_number_id}` body.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimNumber {
    /// The WABA id.
    pub waba_id: String,
    /// The number as displayed.
    pub display_phone_number: String,
}

/// Path of a number.
#[derive(Deserialize, schemars::JsonSchema)]
pub struct NumberPath {
    /// Workspace.
    pub ws: String,
    /// Meta's phone number id.
    pub phone_number_id: String,
}

/// Claims a number (409 when another workspace holds it).
pub async fn claim(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<NumberPath>,
    Json(body): Json<ClaimNumber>,
) -> Result<AxumJson<PhoneNumber>, AppError> {
    let n = cmd::claim(
        &app.ctx,
        &auth.caller,
        auth.ws(),
        &p.phone_number_id,
        &body.waba_id,
        &body.display_phone_number,
    )
    .await?;
    Ok(AxumJson(n))
}

/// Lists the workspace's numbers.
pub async fn list(
    State(app): State<App>,
    auth: Authed,
    Query(page): Query<PageParams>,
) -> Result<AxumJson<Page<PhoneNumber>>, AppError> {
    let limit = page.limit()?;
    let items = phone_numbers::list(
        &app.ctx.store,
        auth.ws().as_str(),
        page.cursor.as_deref(),
        limit,
    )
    .await?;
    Ok(AxumJson(Page::new(items, limit, |n| {
        n.phone_number_id.clone()
    })))
}

/// Releases a number.
pub async fn release(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<NumberPath>,
) -> Result<NoContent, AppError> {
    cmd::release(&app.ctx, &auth.caller, auth.ws(), &p.phone_number_id).await?;
    Ok(NoContent)
}
