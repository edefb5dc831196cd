//! The HTTP layer: the router built from the route table, errors, extractors,
//! authentication and the OpenAPI document.

pub mod api;
pub mod auth;
pub mod error;
pub mod extract;
pub mod openapi;
pub mod respond;
pub mod routes;

use std::time::Duration;

use axum::{
    extract::{DefaultBodyLimit, Request, State},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    Router,
};
use tower_http::timeout::TimeoutLayer;
use tracing::Instrument;

use crate::app::App;

/// What every route passes through: a tracing span named by the route template,
/// authorisation ([`auth::authorize`]), and the response count in `/metrics`.
async fn per_route(
    State((app, access, route)): State<(App, auth::Access, &'static str)>,
    req: Request,
    next: Next,
) -> Response {
    let span = tracing::info_span!("http", method = %req.method(), route);
    async move {
        let started = std::time::Instant::now();
        let res = match auth::authorize(&app, access, route, req).await {
            Ok(req) => next.run(req).await,
            Err(e) => e.into_response(),
        };
        let status = res.status().as_u16();
        app.metrics.count_http(route, status);
        tracing::debug!(
            status,
            latency_us = started.elapsed().as_micros() as u64,
            "response"
        );
        res
    }
    .instrument(span)
    .await
}

/// The whole router: every route of the table behind [`per_route`], the OpenAPI
/// document at `/openapi.json`, problem documents for unknown paths and methods.
pub fn router(app: App) -> Router {
    let layer_app = app.clone();
    let (router, doc) = openapi::build(routes::routes(), move |route, handler| {
        handler.route_layer(middleware::from_fn_with_state(
            (layer_app.clone(), route.access, route.path),
            per_route,
        ))
    });
    let doc: std::sync::Arc<str> =
        (serde_json::to_string_pretty(&doc).expect("json") + "\n").into();
    let serve_doc = axum::routing::get(move || {
        let doc = doc.clone();
        async move {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                doc.to_string(),
            )
        }
    })
    .route_layer(middleware::from_fn_with_state(
        (app.clone(), routes::Access::Public, openapi::DOCUMENT_PATH),
        per_route,
    ));
    let (unmatched, wrong_method) = (app.clone(), app.clone());
    router
        .route(openapi::DOCUMENT_PATH, serve_doc)
        .fallback(move || async move {
            unmatched.metrics.count_http("unmatched", 404);
            error::fallback().await
        })
        .method_not_allowed_fallback(move || async move {
            wrong_method.metrics.count_http("method_not_allowed", 405);
            error::method_not_allowed().await
        })
        .layer(DefaultBodyLimit::max(app.cfg.max_body))
        // Above the longest long-poll (`wait` up to 30 s on the event feed).
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(40),
        ))
        .with_state(app)
}
