//! Outbound webhook endpoints of a workspace, their deliveries, and redeliveries.

use axum::{extract::State, Json as AxumJson};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use wabridge_events::Timestamp;
use wabridge_handlers::commands::endpoints as cmd;
use wabridge_projections::views::endpoints::{AttemptRecord, Delivery, Endpoint};

use crate::{
    app::App,
    http::{
        auth::Authed,
        error::AppError,
        extract::{Json, Page, PageParams, Path, Query},
        respond::{Accepted, Created, NoContent},
    },
};

/// `POST …/endpoints` body.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// Where deliveries are POSTed: http(s), a public address (unless the server
    /// allows private ones).
    pub url: String,
    /// The event types it receives (see the feed); empty or absent: every one.
    #[serde(default)]
    pub types: Vec<String>,
    /// For people (at most 500 characters).
    pub description: Option<String>,
}

/// `PATCH …/endpoints/{id}` body: the fields to change.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchEndpoint {
    /// New URL.
    pub url: Option<String>,
    /// New types (empty: every one).
    pub types: Option<Vec<String>>,
    /// New description (null clears it).
    #[serde(default, deserialize_with = "double_option")]
    #[schemars(with = "Option<String>")]
    pub description: Option<Option<String>>,
    /// `false` pauses deliveries; `true` resumes them from where they stopped (and
    /// re-enables an endpoint wabridge disabled).
    pub enabled: Option<bool>,
}

fn double_option<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

/// Why wabridge disabled an endpoint.
#[derive(Serialize, schemars::JsonSchema)]
pub struct DisabledView {
    /// `gone` (it answered 410) or `failing` (every attempt failed for the retry period).
    pub reason: String,
    /// For people.
    pub detail: String,
    /// When.
    pub at: String,
}

/// An endpoint.
#[derive(Serialize, schemars::JsonSchema)]
pub struct EndpointView {
    /// `ep_…`.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// Event types it receives (empty: every one).
    pub types: Vec<String>,
    /// For people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `enabled`, `paused` or `disabled`.
    pub status: &'static str,
    /// Why it is disabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled: Option<DisabledView>,
    /// Since when its oldest undelivered event has been failing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<String>,
    /// Until when the previous secret still signs (after a rotation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_valid_until: Option<String>,
    /// When it was created.
    pub created_at: String,
    /// When it last changed.
    pub updated_at: String,
}

impl From<Endpoint> for EndpointView {
    fn from(e: Endpoint) -> Self {
        EndpointView {
            status: e.status(),
            id: e.id,
            url: e.url,
            types: e.types,
            description: e.description,
            disabled: e.disabled.map(|d| DisabledView {
                reason: d.reason,
                detail: d.detail,
                at: d.at,
            }),
            failing_since: e.failing_since,
            previous_secret_valid_until: e.previous_valid_until,
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

/// An endpoint with its signing secret: shown once, at creation or rotation.
#[derive(Serialize, schemars::JsonSchema)]
pub struct EndpointWithSecret {
    /// The endpoint.
    #[serde(flatten)]
    pub endpoint: EndpointView,
    /// `whsec_…`: verify deliveries with it (any Standard Webhooks library). It is
    /// not shown again.
    pub secret: String,
}

/// A new signing secret.
#[derive(Serialize, schemars::JsonSchema)]
pub struct RotatedSecret {
    /// `whsec_…` (shown once).
    pub secret: String,
    /// Until when the previous secret signs too (a second signature).
    pub previous_valid_until: String,
}

/// Path of an endpoint.
#[derive(Deserialize, schemars::JsonSchema)]
pub struct EndpointPath {
    /// Workspace.
    pub ws: String,
    /// The endpoint.
    pub id: String,
}

/// Path of a delivery.
#[derive(Deserialize, schemars::JsonSchema)]
pub struct DeliveryPath {
    /// Workspace.
    pub ws: String,
    /// The endpoint.
    pub id: String,
    /// The delivery.
    pub delivery_id: String,
}

/// One attempt.
#[derive(Serialize, schemars::JsonSchema)]
pub struct AttemptView {
    /// When it was made.
    pub at: String,
    /// `succeeded`, `retrying` or `failed`.
    pub outcome: &'static str,
    /// The endpoint's HTTP status, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_status: Option<u16>,
    /// What went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: u64,
    /// A redelivery asked for by a person.
    pub manual: bool,
}

impl From<AttemptRecord> for AttemptView {
    fn from(a: AttemptRecord) -> Self {
        AttemptView {
            at: a.at,
            outcome: a.outcome.as_str(),
            response_status: a.response_status,
            error: a.error,
            duration_ms: a.duration_ms,
            manual: a.manual,
        }
    }
}

/// One event's delivery to the endpoint.
#[derive(Serialize, schemars::JsonSchema)]
pub struct DeliveryView {
    /// `dlv_…`.
    pub id: String,
    /// The event's id (the `webhook-id` header; the feed's item id).
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// `pending` (being retried), `succeeded` or `failed`.
    pub status: String,
    /// When the next attempt is due, while pending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// The attempts, oldest first.
    pub attempts: Vec<AttemptView>,
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        DeliveryView {
            id: d.id,
            event_id: d.event_id,
            event_type: d.event_type,
            status: d.status,
            next_attempt_at: d.next_attempt_at,
            attempts: d.attempts.into_iter().map(Into::into).collect(),
        }
    }
}

/// `GET …/deliveries` parameters.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryParams {
    /// Only `pending`, `succeeded` or `failed` ones.
    pub status: Option<String>,
    /// Opaque cursor from a previous page.
    pub cursor: Option<String>,
    /// Page size, default 50, at most 500.
    pub limit: Option<i64>,
}

/// `POST …/endpoints/{id}/recover` body.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Recover {
    /// Deliver again every matching event recorded at or after this time (RFC 3339), in order.
    pub since: String,
}

/// The answer to a recovery.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Recovering {
    /// The time asked for.
    pub since: String,
    /// `recovering`.
    pub status: &'static str,
}

/// Adds an endpoint (201 with its signing secret, shown once).
pub async fn create(
    State(app): State<App>,
    auth: Authed,
    Json(body): Json<CreateEndpoint>,
) -> Result<Created<EndpointWithSecret>, AppError> {
    let (ep, secret) = cmd::create(
        &app.ctx,
        app.cfg.token_keys.as_ref(),
        app.cfg.delivery.allow_private,
        &auth.caller,
        auth.ws(),
        cmd::NewEndpoint {
            url: body.url,
            types: body.types,
            description: body.description,
        },
    )
    .await?;
    Ok(Created(EndpointWithSecret {
        endpoint: ep.into(),
        secret: secret.expose_secret().to_string(),
    }))
}

/// The workspace's endpoints.
pub async fn list(
    State(app): State<App>,
    auth: Authed,
) -> Result<AxumJson<Page<EndpointView>>, AppError> {
    let eps = cmd::list(&app.ctx, auth.ws()).await?;
    Ok(AxumJson(Page {
        items: eps.into_iter().map(Into::into).collect(),
        next_cursor: None,
    }))
}

/// One endpoint.
pub async fn get(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<EndpointPath>,
) -> Result<AxumJson<EndpointView>, AppError> {
    Ok(AxumJson(cmd::get(&app.ctx, auth.ws(), &p.id).await?.into()))
}

/// Changes an endpoint (pause, resume, URL, types, description).
pub async fn patch(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<EndpointPath>,
    Json(body): Json<PatchEndpoint>,
) -> Result<AxumJson<EndpointView>, AppError> {
    let ep = cmd::update(
        &app.ctx,
        app.cfg.delivery.allow_private,
        &auth.caller,
        auth.ws(),
        &p.id,
        cmd::EndpointPatch {
            url: body.url,
            types: body.types,
            description: body.description,
            enabled: body.enabled,
        },
    )
    .await?;
    Ok(AxumJson(ep.into()))
}

/// Deletes an endpoint.
pub async fn delete(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<EndpointPath>,
) -> Result<NoContent, AppError> {
    cmd::delete(&app.ctx, &auth.caller, auth.ws(), &p.id).await?;
    Ok(NoContent)
}

/// Replaces the signing secret (the previous one signs too for 24 h).
pub async fn rotate_secret(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<EndpointPath>,
) -> Result<AxumJson<RotatedSecret>, AppError> {
    let secret = cmd::rotate_secret(
        &app.ctx,
        app.cfg.token_keys.as_ref(),
        &auth.caller,
        auth.ws(),
        &p.id,
    )
    .await?;
    let ep = cmd::get(&app.ctx, auth.ws(), &p.id).await?;
    Ok(AxumJson(RotatedSecret {
        secret: secret.expose_secret().to_string(),
        previous_valid_until: ep.previous_valid_until.unwrap_or_default(),
    }))
}

/// The endpoint's deliveries, newest first.
pub async fn deliveries(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<EndpointPath>,
    Query(q): Query<DeliveryParams>,
) -> Result<AxumJson<Page<DeliveryView>>, AppError> {
    let limit = PageParams {
        cursor: None,
        limit: q.limit,
    }
    .limit()?;
    let before = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            c.parse::<u64>()
                .map_err(|_| AppError::validation("cursor is not one this API gave"))?,
        ),
    };
    let ds = cmd::deliveries(
        &app.ctx,
        auth.ws(),
        &p.id,
        q.status.as_deref(),
        before,
        limit,
    )
    .await?;
    let cursors: Vec<String> = ds.iter().map(|d| d.event_seq.to_string()).collect();
    let full = ds.len() as i64 == limit;
    Ok(AxumJson(Page {
        items: ds.into_iter().map(Into::into).collect(),
        next_cursor: if full { cursors.last().cloned() } else { None },
    }))
}

/// The answer to a redelivery.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Redelivering {
    /// The delivery.
    pub id: String,
    /// `redelivering`.
    pub status: &'static str,
}

/// Sends one delivery again (202; the same `webhook-id`).
pub async fn redeliver(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<DeliveryPath>,
) -> Result<Accepted<Redelivering>, AppError> {
    cmd::redeliver(&app.ctx, &auth.caller, auth.ws(), &p.id, &p.delivery_id).await?;
    Ok(Accepted(Redelivering {
        id: p.delivery_id,
        status: "redelivering",
    }))
}

/// Delivers every matching event since a time again, in order (202).
pub async fn recover(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<EndpointPath>,
    Json(body): Json<Recover>,
) -> Result<Accepted<Recovering>, AppError> {
    let since = Timestamp::parse(&body.since)
        .map_err(|_| AppError::validation("since must be an RFC 3339 time"))?;
    cmd::recover(&app.ctx, &auth.caller, auth.ws(), &p.id, since).await?;
    Ok(Accepted(Recovering {
        since: since.to_string(),
        status: "recovering",
    }))
}
