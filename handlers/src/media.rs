//! The media proxy: an inbound media object (a webhook's media id, downloadable for
//! 7 days) fetched from Meta with the receiving number's token — `GET /{media_id}`
//! for the short-lived URL (5 minutes), then the download — and handed to the
//! caller as a stream, never held whole in memory. A URL that answers 404 (expired)
//! is fetched afresh once.

use secrecy::SecretString;
use wabridge_events::Slug;
use wabridge_projections::views::media as view;

use crate::{
    commands::{tokens, CommandError, Ctx},
    sender::graph::{Answer, Graph},
    vault::KeyRing,
};

/// An open download.
pub struct Download {
    /// The MIME type (Meta's `Content-Type`, else the webhook's).
    pub content_type: String,
    /// Its size, when Meta said.
    pub content_length: Option<u64>,
    /// Meta's answer, its body not yet read.
    pub response: reqwest::Response,
}

/// Why a media object could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// Not a media id this workspace received (or refused by the rules).
    #[error(transparent)]
    Command(#[from] CommandError),
    /// Meta refused or failed (its status; expired media is 404).
    #[error("{detail}")]
    Upstream {
        /// Meta's HTTP status, when it answered.
        status: Option<u16>,
        /// What happened.
        detail: String,
    },
}

/// Opens a download of a media id the workspace received.
pub async fn open(
    ctx: &Ctx,
    keys: Option<&KeyRing>,
    graph: &Graph,
    ws: &Slug,
    media_id: &str,
) -> Result<Download, MediaError> {
    if media_id.is_empty()
        || media_id.len() > 64
        || !media_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(CommandError::NotFound(format!("no media {media_id}")).into());
    }
    let found = match view::get(&ctx.store, ws.as_str(), media_id)
        .await
        .map_err(CommandError::from)?
    {
        Some(m) => Some(m),
        None => {
            // It may be in a webhook the read model has not applied yet.
            ctx.fresh_as_log(&["inbound_media"]).await?;
            view::get(&ctx.store, ws.as_str(), media_id)
                .await
                .map_err(CommandError::from)?
        }
    };
    let media = found.ok_or_else(|| {
        CommandError::NotFound(format!("no media {media_id} received by this workspace"))
    })?;
    let token = tokens::retrieve(ctx, keys, ws, &media.phone_number_id).await?;
    for attempt in 0..2 {
        let (url, mime) = media_url(graph, &token, &media).await?;
        let response =
            graph
                .download(url, &token)
                .await
                .map_err(|detail| MediaError::Upstream {
                    status: None,
                    detail,
                })?;
        let status = response.status().as_u16();
        if status == 404 && attempt == 0 {
            continue;
        }
        if !(200..300).contains(&status) {
            return Err(MediaError::Upstream {
                status: Some(status),
                detail: format!("Meta's media download answered {status}"),
            });
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or(mime)
            .or(media.mime_type.clone())
            .unwrap_or_else(|| "application/octet-stream".into());
        return Ok(Download {
            content_type,
            content_length: response.content_length(),
            response,
        });
    }
    unreachable!("the loop returns on its second pass")
}

/// `GET /{media_id}?phone_number_id=…`: the short-lived URL and the MIME type.
async fn media_url(
    graph: &Graph,
    token: &SecretString,
    media: &view::MediaRef,
) -> Result<(reqwest::Url, Option<String>), MediaError> {
    match graph
        .get_json(
            &media.media_id,
            token,
            &[("phone_number_id", &media.phone_number_id)],
        )
        .await
    {
        Answer::Ok(v) => {
            let url = v
                .get("url")
                .and_then(|u| u.as_str())
                .and_then(|u| reqwest::Url::parse(u).ok())
                .ok_or_else(|| MediaError::Upstream {
                    status: Some(200),
                    detail: "Meta's media answer has no url".into(),
                })?;
            if !graph.media_url_allowed(&url) {
                return Err(MediaError::Upstream {
                    status: Some(200),
                    detail: format!(
                        "Meta's media url is on {}, not one of Meta's media hosts; not sending the token there",
                        url.host_str().unwrap_or("no host")
                    ),
                });
            }
            let mime = v
                .get("mime_type")
                .and_then(|m| m.as_str())
                .map(str::to_owned);
            Ok((url, mime))
        }
        Answer::Rejected { status, error } => Err(MediaError::Upstream {
            status: Some(status),
            detail: match error {
                Some(e) => format!(
                    "Meta refused the media id: {} (code {})",
                    e.message.or(e.title).unwrap_or_default(),
                    e.code
                ),
                None => format!("Meta refused the media id ({status})"),
            },
        }),
        Answer::NoAnswer { detail } => Err(MediaError::Upstream {
            status: None,
            detail,
        }),
    }
}
