//! Success answers other than `200 OK` with a JSON body, typed so the OpenAPI
//! document derives each route's success status from its handler.

use aide::{
    generate::GenContext,
    openapi::{Operation, Response, StatusCode as DocStatus},
    OperationOutput,
};
use axum::{
    http::StatusCode,
    response::{IntoResponse, Response as HttpResponse},
};
use schemars::JsonSchema;
use serde::Serialize;

pub use axum::response::NoContent;

macro_rules! json_status {
    ($name:ident, $status:expr, $code:literal, $doc:literal) => {
        #[doc = $doc]
        pub struct $name<T>(pub T);

        impl<T: Serialize> IntoResponse for $name<T> {
            fn into_response(self) -> HttpResponse {
                ($status, axum::Json(self.0)).into_response()
            }
        }

        impl<T: JsonSchema> OperationOutput for $name<T> {
            type Inner = T;

            fn operation_response(ctx: &mut GenContext, op: &mut Operation) -> Option<Response> {
                axum::Json::<T>::operation_response(ctx, op)
            }

            fn inferred_responses(
                ctx: &mut GenContext,
                op: &mut Operation,
            ) -> Vec<(Option<DocStatus>, Response)> {
                Self::operation_response(ctx, op)
                    .map(|r| (Some(DocStatus::Code($code)), r))
                    .into_iter()
                    .collect()
            }
        }
    };
}

json_status!(
    Created,
    StatusCode::CREATED,
    201,
    "`201 Created` with a JSON body."
);
json_status!(
    Accepted,
    StatusCode::ACCEPTED,
    202,
    "`202 Accepted` with a JSON body."
);

/// `202 Accepted` with a JSON body and extra headers (the `RateLimit` fields of a send).
pub struct AcceptedWith<T>(pub T, pub Vec<(&'static str, String)>);

impl<T: Serialize> IntoResponse for AcceptedWith<T> {
    fn into_response(self) -> HttpResponse {
        let mut res = (StatusCode::ACCEPTED, axum::Json(self.0)).into_response();
        for (name, value) in self.1 {
            if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
                res.headers_mut().insert(name, v);
            }
        }
        res
    }
}

impl<T: JsonSchema> OperationOutput for AcceptedWith<T> {
    type Inner = T;

    fn operation_response(ctx: &mut GenContext, op: &mut Operation) -> Option<Response> {
        axum::Json::<T>::operation_response(ctx, op)
    }

    fn inferred_responses(
        ctx: &mut GenContext,
        op: &mut Operation,
    ) -> Vec<(Option<DocStatus>, Response)> {
        Self::operation_response(ctx, op)
            .map(|r| (Some(DocStatus::Code(202)), r))
            .into_iter()
            .collect()
    }
}

/// `200 OK` with a streamed binary body (a media object) and its own `Content-Type`.
pub struct Binary(pub HttpResponse);

impl IntoResponse for Binary {
    fn into_response(self) -> HttpResponse {
        self.0
    }
}

impl OperationOutput for Binary {
    type Inner = ();

    fn operation_response(_ctx: &mut GenContext, _op: &mut Operation) -> Option<Response> {
        let media = aide::openapi::MediaType {
            schema: Some(aide::openapi::SchemaObject {
                json_schema: schemars::json_schema!({"type": "string", "format": "binary"}),
                external_docs: None,
                example: None,
            }),
            ..Default::default()
        };
        Some(Response {
            description: "The bytes, streamed, with the object's Content-Type.".into(),
            content: [("application/octet-stream".to_string(), media)]
                .into_iter()
                .collect(),
            ..Default::default()
        })
    }

    fn inferred_responses(
        ctx: &mut GenContext,
        op: &mut Operation,
    ) -> Vec<(Option<DocStatus>, Response)> {
        Self::operation_response(ctx, op)
            .map(|r| (Some(DocStatus::Code(200)), r))
            .into_iter()
            .collect()
    }
}
