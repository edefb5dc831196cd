//! The HTTP layer: the router built from the route table, errors, extractors,
//! authentication and the OpenAPI document.

pub mod api;
pub mod auth;
pub mod error;
pub mod extract;
pub mod openapi;
pub mod routes;

use std::time::Duration;

use axum::{
    extract::{DefaultBodyLimit, MatchedPath, Request},
    middleware::{self, Next},
    response::Response,
    Router,
};
use tower_http::{timeout::TimeoutLayer, trace::TraceLayer};

use crate::app::App;

/// Counts responses by matched route.
async fn count(
    axum::extract::State(app): axum::extract::State<App>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let res = next.run(req).await;
    app.metrics.count_http(&route, res.status().as_u16());
    res
}

/// The whole router.
pub fn router(app: App) -> Router {
    let mut router = Router::new();
    for route in routes::routes() {
        let guarded = route.handler.route_layer(middleware::from_fn_with_state(
            (app.clone(), route.access, route.path),
            auth::authorize,
        ));
        router = router.route(route.path, guarded);
    }
    router
        .fallback(error::fallback)
        .layer(middleware::from_fn_with_state(app.clone(), count))
        .layer(DefaultBodyLimit::max(app.cfg.max_body))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map(|m| m.as_str().to_string())
                .unwrap_or_default();
            tracing::info_span!("http", method = %req.method(), route)
        }))
        .with_state(app)
}
