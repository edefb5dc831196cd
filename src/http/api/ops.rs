//! Health, readiness, metrics, the OpenAPI document and the permission matrix.

use std::time::Duration;

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use wabridge_events::StreamKind;
use wabridge_handlers::access::permissions::{matrix, MatrixRow};
use wabridge_projections::views::{self, dead_letters};

use crate::{app::App, http::error::AppError};

/// How far behind the log a projection may be for `/readyz` to pass.
pub const READY_LAG: u64 = 1000;

/// `GET /healthz`.
pub async fn healthz() -> &'static str {
    "ok"
}

/// The readiness report.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Readiness {
    /// All checks passed.
    pub ready: bool,
    /// Log reachable.
    pub log: bool,
    /// Store reachable.
    pub store: bool,
    /// Projections more than the bound behind the log.
    pub lagging: Vec<String>,
    /// Units of work (projections, webhook processor, reactors) no instance runs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unheld_units: Vec<String>,
    /// Why it is not ready, for a person.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// Lag per projection: (name, log head - checkpoint).
pub async fn lags(app: &App) -> anyhow::Result<Vec<(String, u64)>> {
    let mut heads = std::collections::HashMap::new();
    let mut out = vec![];
    for p in views::all(&app.projection_keys()) {
        let head = match heads.get(&p.stream()) {
            Some(h) => *h,
            None => {
                let h = app.ctx.log.last_seq(p.stream()).await?;
                heads.insert(p.stream(), h);
                h
            }
        };
        out.push((
            p.name().to_string(),
            head.saturating_sub(app.ctx.store.checkpoint(p.name()).await?),
        ));
    }
    let raw_head = app.ctx.log.last_seq(StreamKind::Raw).await?;
    let processor = wabridge_handlers::webhooks::processor::NAME;
    out.push((
        processor.to_string(),
        raw_head.saturating_sub(app.ctx.store.checkpoint(processor).await?),
    ));
    Ok(out)
}

/// `GET /readyz`: log and store reachable, projections within [`READY_LAG`] events.
pub async fn readyz(State(app): State<App>) -> Response {
    let log = tokio::time::timeout(Duration::from_secs(2), app.ctx.log.ping())
        .await
        .is_ok_and(|r| r.is_ok());
    let store = tokio::time::timeout(Duration::from_secs(2), app.ctx.store.ping())
        .await
        .is_ok_and(|r| r.is_ok());
    let lagging = if log && store {
        lags(&app)
            .await
            .map(|l| {
                l.into_iter()
                    .filter(|(_, lag)| *lag > READY_LAG)
                    .map(|(n, _)| n)
                    .collect()
            })
            .unwrap_or_default()
    } else {
        vec![]
    };
    let unheld: Vec<String> = if log {
        crate::replay::units(&app)
            .await
            .map(|u| {
                u.into_iter()
                    .filter(|u| u.holder.is_none())
                    .map(|u| u.unit)
                    .collect()
            })
            .unwrap_or_default()
    } else {
        vec![]
    };
    let mut problems = vec![];
    if !log {
        problems.push("the event log is unreachable".to_string());
    }
    if !store {
        problems.push("the read-model database is unreachable".to_string());
    }
    if !unheld.is_empty() {
        problems.push(format!(
            "no instance runs these units of work: {} — start one with WABRIDGE_ROLES=workers (or api,workers); until then commands that need them answer 503 workers_unavailable",
            unheld.join(", ")
        ));
    }
    if !lagging.is_empty() {
        problems.push(format!(
            "more than {READY_LAG} events behind the log: {}",
            lagging.join(", ")
        ));
    }
    let ready = problems.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ready,
            log,
            store,
            lagging,
            unheld_units: unheld,
            problems,
        }),
    )
        .into_response()
}

/// `GET /metrics`: the OpenMetrics text exposition (Prometheus reads it), with the
/// read-model gauges set as of now.
pub async fn metrics(State(app): State<App>) -> Result<Response, AppError> {
    if let Ok(lags) = lags(&app).await {
        for (projection, lag) in lags {
            app.metrics
                .projection_lag
                .get_or_create(&crate::metrics::ConsumerLabels { projection })
                .set(lag as i64);
        }
    }
    if let Ok(n) = dead_letters::count_open(&app.ctx.store).await {
        app.metrics.dead_letters_open.set(n);
    }
    if let Ok(eps) = wabridge_projections::views::endpoints::all_live(&app.ctx.store).await {
        let now = wabridge_events::Timestamp::now();
        for status in ["enabled", "paused", "disabled"] {
            let n = eps.iter().filter(|e| e.status() == status).count();
            app.metrics
                .endpoints
                .get_or_create(&crate::metrics::StatusLabels { status })
                .set(n as i64);
        }
        let failing: Vec<std::time::Duration> = eps
            .iter()
            .filter(|e| e.active())
            .filter_map(|e| e.failing_since.as_deref())
            .filter_map(|t| wabridge_events::Timestamp::parse(t).ok())
            .map(|t| now.since(t))
            .collect();
        app.metrics.endpoints_failing.set(failing.len() as i64);
        app.metrics
            .endpoint_failing_seconds
            .set(failing.iter().max().map_or(0, |d| d.as_secs() as i64));
    }
    let body = app.metrics.render();
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

/// `GET /v1/permissions`: the role × permission matrix.
pub async fn permissions() -> Json<Vec<MatrixRow>> {
    Json(matrix())
}
