//! The media ids each workspace received in inbound messages, with the number that
//! received them: the media proxy serves only these (and with that number's token).

use sqlx::AnyConnection;
use wabridge_events::{DomainEvent, StoredEvent};

use super::EventMeta;
use crate::{Projection, Store};

/// The inbound-media projection.
pub struct InboundMedia;

/// A media object a workspace received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaRef {
    /// Meta's media id.
    pub media_id: String,
    /// The number that received it.
    pub phone_number_id: String,
    /// The MIME type the webhook gave.
    pub mime_type: Option<String>,
}

/// The media a message carries, if any, with its receiving number (pure).
pub fn media_of(event: &DomainEvent) -> Option<MediaRef> {
    let DomainEvent::MessageReceived(m) = event else {
        return None;
    };
    let media = m.media.as_ref()?;
    Some(MediaRef {
        media_id: media.id.clone()?,
        phone_number_id: m.source.phone_number_id.clone()?,
        mime_type: media.mime_type.clone(),
    })
}

#[async_trait::async_trait]
impl Projection for InboundMedia {
    fn name(&self) -> &'static str {
        "inbound_media"
    }
    fn tables(&self) -> &'static [&'static str] {
        &["inbound_media"]
    }
    fn dump_sql(&self) -> &'static str {
        "SELECT workspace || '|' || media_id || '|' || phone_number_id || '|' || COALESCE(mime_type, '') || '|' || CAST(log_seq AS TEXT) FROM inbound_media ORDER BY 1"
    }
    async fn apply(&self, conn: &mut AnyConnection, event: &StoredEvent) -> anyhow::Result<()> {
        if super::skip(event, |t| t == "message.received") {
            return Ok(());
        }
        let Some(m) = media_of(super::decode(event)?) else {
            return Ok(());
        };
        let meta = EventMeta::of(event);
        sqlx::query("INSERT INTO inbound_media (workspace, media_id, phone_number_id, mime_type, log_seq) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (workspace, media_id) DO NOTHING")
            .bind(&meta.workspace)
            .bind(&m.media_id)
            .bind(&m.phone_number_id)
            .bind(&m.mime_type)
            .bind(meta.seq as i64)
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// A media id the workspace received.
pub async fn get(store: &Store, ws: &str, media_id: &str) -> anyhow::Result<Option<MediaRef>> {
    let row: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT phone_number_id, mime_type FROM inbound_media WHERE workspace = $1 AND media_id = $2",
    )
    .bind(ws)
    .bind(media_id)
    .fetch_optional(&store.reads)
    .await?;
    Ok(row.map(|(phone_number_id, mime_type)| MediaRef {
        media_id: media_id.to_string(),
        phone_number_id,
        mime_type,
    }))
}
