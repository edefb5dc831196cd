//! Extractors whose rejections are problem documents (400 `validation_failed`)
//! instead of axum's plain-text 415/422.

use aide::{generate::GenContext, openapi::Operation, OperationInput};
use axum::{
    extract::{rejection::JsonRejection, FromRequest, FromRequestParts, Request},
    http::request::Parts,
};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use super::error::AppError;

/// A JSON body; any malformed body (wrong content type, bad JSON, wrong shape,
/// unknown field) is 400 `validation_failed`.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = AppError;
    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(JsonRejection::BytesRejection(e))
                if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(too_large())
            }
            Err(e) => Err(AppError::validation(e.body_text())),
        }
    }
}

/// 413 `payload_too_large`: the body is over `WABRIDGE_MAX_BODY`.
fn too_large() -> AppError {
    AppError::new(
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the request body is over the limit",
    )
}

/// A JSON body that may be left out: no body (or `null`) is `T::default()`; a body
/// that is there is read as [`Json`] reads it (400 `validation_failed` when it is
/// not JSON of that shape).
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = AppError;
    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        let json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                let v = v.to_ascii_lowercase();
                v.starts_with("application/json") || v.contains("+json")
            });
        let bytes = match axum::body::Bytes::from_request(req, state).await {
            Ok(b) => b,
            Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(too_large())
            }
            Err(e) => return Err(AppError::validation(e.body_text())),
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        if !json {
            return Err(AppError::validation(
                "a request body must be JSON (Content-Type: application/json)",
            ));
        }
        serde_json::from_slice::<Option<T>>(&bytes)
            .map(|v| OptionalJson(v.unwrap_or_default()))
            .map_err(|e| AppError::validation(format!("the body is not valid: {e}")))
    }
}

/// Query parameters; malformed ones are 400 `validation_failed`.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| AppError::validation(e.body_text()))
    }
}

/// Path parameters; malformed ones are 400 `validation_failed`.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| AppError::validation(e.body_text()))
    }
}

// The OpenAPI document describes these extractors as axum's own: the body, query
// and path schemas come from the handler's types.
impl<T: JsonSchema> OperationInput for Json<T> {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        axum::Json::<T>::operation_input(ctx, operation);
    }
}

impl<T: JsonSchema> OperationInput for OptionalJson<T> {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        axum::Json::<T>::operation_input(ctx, operation);
        if let Some(aide::openapi::ReferenceOr::Item(body)) = operation.request_body.as_mut() {
            body.required = false;
        }
    }
}

impl<T: JsonSchema> OperationInput for Query<T> {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        axum::extract::Query::<T>::operation_input(ctx, operation);
    }
}

impl<T: JsonSchema> OperationInput for Path<T> {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        axum::extract::Path::<T>::operation_input(ctx, operation);
    }
}

/// The standard list page parameters.
#[derive(serde::Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    /// Opaque cursor from a previous page.
    pub cursor: Option<String>,
    /// Page size, default 50, at most 500.
    pub limit: Option<i64>,
}

impl PageParams {
    /// The validated limit.
    pub fn limit(&self) -> Result<i64, AppError> {
        match self.limit {
            None => Ok(50),
            Some(n) if (1..=500).contains(&n) => Ok(n),
            Some(_) => Err(AppError::validation("limit must be between 1 and 500")),
        }
    }
}

/// A list answer: `{items, next_cursor}`.
#[derive(serde::Serialize, schemars::JsonSchema)]
#[schemars(rename = "{T}Page")]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; null at the end.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page whose next cursor is taken from the last item when the page is full.
    pub fn new(items: Vec<T>, limit: i64, cursor_of: impl Fn(&T) -> String) -> Self {
        let next_cursor = if items.len() as i64 == limit {
            items.last().map(cursor_of)
        } else {
            None
        };
        Page { items, next_cursor }
    }
}

/// The `Idempotency-Key` request header, when sent (a header that is not text is
/// 400 `validation_failed`).
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, AppError> {
        match parts.headers.get("idempotency-key") {
            None => Ok(IdempotencyKey(None)),
            Some(v) => v
                .to_str()
                .map(|s| IdempotencyKey(Some(s.to_owned())))
                .map_err(|_| AppError::validation("Idempotency-Key must be visible ASCII")),
        }
    }
}

impl OperationInput for IdempotencyKey {
    fn operation_input(_ctx: &mut GenContext, operation: &mut Operation) {
        use aide::openapi::{
            Parameter, ParameterData, ParameterSchemaOrContent, ReferenceOr, SchemaObject,
        };
        operation.parameters.push(ReferenceOr::Item(Parameter::Header {
            parameter_data: ParameterData {
                name: "Idempotency-Key".into(),
                description: Some(
                    "A key of the client's choice (1 to 255 characters): the same key with the same body gets the same answer; with another body, 409 idempotency_conflict.".into(),
                ),
                required: false,
                deprecated: None,
                format: ParameterSchemaOrContent::Schema(SchemaObject {
                    json_schema: schemars::json_schema!({"type": "string", "minLength": 1, "maxLength": 255}),
                    external_docs: None,
                    example: None,
                }),
                example: None,
                examples: Default::default(),
                explode: None,
                extensions: Default::default(),
            },
            style: Default::default(),
        }));
    }
}
