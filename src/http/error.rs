//! The one error type of the HTTP API, rendered as `application/problem+json`
//! (RFC 9457) with a stable `code`.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use wabridge_handlers::commands::CommandError;

/// An HTTP error.
#[derive(Debug)]
pub struct AppError {
    /// Status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human detail (never a secret).
    pub detail: String,
    /// Extra response headers (`Retry-After` and the `RateLimit` fields on a 429).
    pub headers: Vec<(&'static str, String)>,
}

/// The problem document.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub type_: String,
    /// Short title.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What went wrong.
    pub detail: String,
    /// Stable code (`validation_failed`, `unauthorized`, ...).
    pub code: String,
}

impl AppError {
    /// Builds an error.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        AppError {
            status,
            code,
            detail: detail.into(),
            headers: vec![],
        }
    }
    /// 400 `validation_failed`.
    pub fn validation(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "validation_failed", detail)
    }
    /// 401 `unauthorized`.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }
    /// 403 `forbidden`.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }
    /// 404 `not_found`.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }
    /// 503 `not_configured`, naming the variable.
    pub fn not_configured(var: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_configured",
            format!("{var} is not set; this route needs it"),
        )
    }
    /// 500, logging the cause but answering without it.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }
}

fn title(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or("Error").to_string()
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = Problem {
            type_: format!(
                "https://wabridge.dev/problems/{}",
                self.code.replace('_', "-")
            ),
            title: title(self.status),
            status: self.status.as_u16(),
            detail: self.detail,
            code: self.code.to_string(),
        };
        let mut res = (self.status, axum::Json(body)).into_response();
        for (name, value) in &self.headers {
            if let Ok(v) = HeaderValue::from_str(value) {
                res.headers_mut().insert(*name, v);
            }
        }
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        res
    }
}

impl aide::OperationOutput for AppError {
    type Inner = Problem;

    fn operation_response(
        ctx: &mut aide::generate::GenContext,
        _operation: &mut aide::openapi::Operation,
    ) -> Option<aide::openapi::Response> {
        Some(aide::openapi::Response {
            description: "A problem document (RFC 9457).".into(),
            content: [(
                "application/problem+json".to_string(),
                aide::openapi::MediaType {
                    schema: Some(aide::openapi::SchemaObject {
                        json_schema: ctx.schema.subschema_for::<Problem>(),
                        example: None,
                        external_docs: None,
                    }),
                    ..Default::default()
                },
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        })
    }
}

impl From<CommandError> for AppError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::NotFound(d) => AppError::not_found(d),
            CommandError::Conflict(d) => AppError::new(StatusCode::CONFLICT, "conflict", d),
            CommandError::Validation(d) => AppError::validation(d),
            CommandError::Forbidden(d) => AppError::forbidden(d),
            CommandError::NotConfigured(v) => AppError::not_configured(v),
            CommandError::Unavailable { code, detail, .. } => {
                AppError::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
            }
            CommandError::Unprocessable { code, detail } => {
                AppError::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
            }
            CommandError::IdempotencyConflict(d) => {
                AppError::new(StatusCode::CONFLICT, "idempotency_conflict", d)
            }
            CommandError::RateLimited { detail, headers } => {
                let mut e = AppError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", detail);
                e.headers = headers;
                e
            }
            CommandError::Internal(e) => e.into(),
        }
    }
}

impl From<wabridge_events::LogError> for AppError {
    fn from(e: wabridge_events::LogError) -> Self {
        anyhow::Error::from(e).into()
    }
}

/// An unexpected failure is `500 internal`, except the event log failing: then the
/// request could not read or record what it needs and may be retried — `503
/// log_unavailable` (as a webhook gets), fail closed.
impl From<anyhow::Error> for AppError {
    fn from(e: anyhow::Error) -> Self {
        if e.chain()
            .any(|c| c.downcast_ref::<wabridge_events::LogError>().is_some())
        {
            tracing::warn!(error = %format!("{e:#}"), "the event log failed a request");
            return AppError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "log_unavailable",
                "the event log is unavailable; retry",
            );
        }
        AppError::internal(format!("{e:#}"))
    }
}

/// Answers a method the route does not have with a problem document.
pub async fn method_not_allowed() -> AppError {
    AppError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not have that method",
    )
}

/// Answers unmatched paths with a problem document.
pub async fn fallback() -> AppError {
    AppError::not_found("no such route")
}
