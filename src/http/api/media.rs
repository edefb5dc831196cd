//! The media proxy: an inbound media object streamed from Meta.

use axum::{body::Body, extract::State, http::header};
use serde::Deserialize;
use wabridge_handlers::media::{self, MediaError};

use crate::{
    app::App,
    http::{auth::Authed, error::AppError, extract::Path, respond::Binary},
};

/// Path of a media object.
#[derive(Deserialize, schemars::JsonSchema)]
pub struct MediaPath {
    /// Workspace.
    pub ws: String,
    /// Meta's media id, from a `message.received` event's `media.id`.
    pub media_id: String,
}

/// Streams a media object the workspace received (404 for any other id).
pub async fn get(
    State(app): State<App>,
    auth: Authed,
    Path(p): Path<MediaPath>,
) -> Result<Binary, AppError> {
    let download = media::open(
        &app.ctx,
        app.cfg.token_keys.as_ref(),
        &app.graph,
        auth.ws(),
        &p.media_id,
    )
    .await
    .map_err(|e| match e {
        MediaError::Command(c) => AppError::from(c),
        MediaError::Upstream { status, detail } => match status {
            Some(404) => AppError::not_found(format!(
                "{detail}: media ids from webhooks can be downloaded for 7 days"
            )),
            _ => AppError::new(
                axum::http::StatusCode::BAD_GATEWAY,
                "meta_unavailable",
                detail,
            ),
        },
    })?;
    let mut res = axum::response::Response::builder()
        .header(header::CONTENT_TYPE, &download.content_type)
        .header(header::CACHE_CONTROL, "private, max-age=300");
    if let Some(len) = download.content_length {
        res = res.header(header::CONTENT_LENGTH, len);
    }
    let body = Body::from_stream(download.response.bytes_stream());
    Ok(Binary(res.body(body).map_err(AppError::internal)?))
}
