//! Meta's webhook endpoint: the verification handshake and signed POSTs, appended
//! byte-exact to the raw stream before the 200.

use std::time::Instant;

use axum::{
    body::Bytes,
    extract::{Request, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use secrecy::ExposeSecret;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use wabridge_events::{types::WEBHOOK_RECEIVED, Actor, AppendError, Envelope, NewEvent};
use wabridge_handlers::webhooks::verify_signature;

use crate::{
    app::App,
    http::{auth::client_ip, error::AppError, extract::Query},
};

/// The handshake parameters.
#[derive(Deserialize, schemars::JsonSchema)]
pub struct Handshake {
    /// Must be `subscribe`.
    #[serde(rename = "hub.mode")]
    pub mode: Option<String>,
    /// Must equal `META_VERIFY_TOKEN`.
    #[serde(rename = "hub.verify_token")]
    pub verify_token: Option<String>,
    /// Echoed back.
    #[serde(rename = "hub.challenge")]
    pub challenge: Option<String>,
}

/// `GET /webhooks/meta`: 200 with the challenge when the token matches, else 403.
pub async fn verify(
    State(app): State<App>,
    Query(q): Query<Handshake>,
) -> Result<Response, AppError> {
    let Some(expected) = &app.cfg.meta_verify_token else {
        return Err(AppError::not_configured("META_VERIFY_TOKEN"));
    };
    let token = q.verify_token.unwrap_or_default();
    let ok = q.mode.as_deref() == Some("subscribe")
        && token.len() == expected.expose_secret().len()
        && token
            .bytes()
            .zip(expected.expose_secret().bytes())
            .fold(0u8, |a, (x, y)| a | (x ^ y))
            == 0;
    match (ok, q.challenge) {
        (true, Some(c)) => Ok((StatusCode::OK, c).into_response()),
        _ => Err(AppError::forbidden("verification failed")),
    }
}

/// `POST /webhooks/meta`: verify, append, then answer.
pub async fn receive(State(app): State<App>, req: Request) -> Result<StatusCode, AppError> {
    let started = Instant::now();
    if app.cfg.meta_app_secrets.is_empty() {
        return Err(AppError::not_configured("META_APP_SECRET"));
    }
    let (parts, body) = req.into_parts();
    let body: Bytes = axum::body::to_bytes(body, app.cfg.max_body)
        .await
        .map_err(|_| {
            AppError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is over {} bytes", app.cfg.max_body),
            )
        })?;
    let ip = client_ip(&app, &parts);
    let sig = parts
        .headers
        .get("x-hub-signature-256")
        .map(|v| v.as_bytes());
    if let Err(e) = verify_signature(&app.cfg.meta_app_secrets, sig, &body) {
        app.metrics.signature_failures.inc();
        app.auth_failures.record(ip, "webhook_signature");
        return Err(AppError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_signature",
            e.to_string(),
        ));
    }
    let mut envelope = Envelope::new(WEBHOOK_RECEIVED, 1, None, Actor::meta());
    envelope.source_ip = ip.map(|i| i.to_string());
    // Verified above: exactly `sha256=` and 64 lowercase hex digits.
    envelope.signature = sig
        .and_then(|s| std::str::from_utf8(s).ok())
        .map(str::to_string);
    let event = NewEvent {
        subject: app.ctx.log.namespace().raw_webhook_subject(),
        envelope,
        msg_id: Some(hex::encode(Sha256::digest(&body))),
        payload: body,
        expected_last_subject_seq: None,
    };
    match app.ctx.log.append(event).await {
        Ok(a) => {
            let counter = if a.duplicate {
                &app.metrics.webhooks_duplicate
            } else {
                &app.metrics.webhooks_ingested
            };
            counter.inc();
            app.metrics
                .ingest_latency
                .observe(started.elapsed().as_secs_f64());
            Ok(StatusCode::OK)
        }
        Err(e @ AppendError::PayloadTooLarge { .. }) => Err(AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            e.to_string(),
        )),
        Err(e) => {
            tracing::error!(error = %e, "webhook append failed; Meta will retry");
            Err(AppError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "log_unavailable",
                "the event log is unavailable; retry",
            ))
        }
    }
}
