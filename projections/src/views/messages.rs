//! Message state: inbound messages and the status history of outbound ones.

use serde::Serialize;
use sqlx::{AnyConnection, Row};
use wabridge_events::{DomainEvent, StoredEvent};

use crate::{Projection, Store};

/// The `messages` projection.
pub struct Messages;

/// A message's current state.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct MessageRow {
    /// The wamid.
    pub wamid: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// The other party's WhatsApp id.
    pub contact: String,
    /// Meta's message type (`status` rows for outbound messages seen only by status).
    pub message_type: String,
    /// `received` for inbound; the latest status for outbound.
    pub status: String,
    /// Meta's time of the first event.
    pub occurred_at: String,
    /// Log time of the last change.
    pub updated_at: String,
}

/// Status precedence, so an out-of-order `delivered` after `read` does not go back.
fn rank(status: &str) -> i64 {
    match status {
        "accepted" => 0,
        "sending" => 1,
        "sent" => 2,
        "delivered" => 3,
        "read" | "played" => 4,
        "failed" => 5,
        _ => 1,
    }
}

#[async_trait::async_trait]
impl Projection for Messages {
    fn name(&self) -> &'static str {
        "messages"
    }
    fn dump_sql(&self) -> &'static str {
        "SELECT workspace || '|' || wamid || '|' || direction || '|' || contact || '|' || message_type || '|' || status || '|' || occurred_at || '|' || updated_at FROM messages \
         UNION ALL SELECT 'h|' || workspace || '|' || wamid || '|' || CAST(log_seq AS TEXT) || '|' || status || '|' || at || '|' || COALESCE(CAST(error_code AS TEXT), '') FROM message_history ORDER BY 1"
    }
    async fn apply(&self, conn: &mut AnyConnection, event: &StoredEvent) -> anyhow::Result<()> {
        let ws = super::ws_of(event);
        let at = event.envelope.recorded_at.to_string();
        match super::decode(event)? {
            DomainEvent::MessageReceived(m) => {
                sqlx::query("INSERT INTO messages (workspace, wamid, direction, contact, message_type, status, occurred_at, updated_at, log_seq) VALUES ($1, $2, 'inbound', $3, $4, 'received', $5, $6, $7) ON CONFLICT (workspace, wamid) DO NOTHING")
                    .bind(&ws)
                    .bind(&m.wamid)
                    .bind(m.contact.key())
                    .bind(&m.message_type)
                    .bind(m.timestamp.to_string())
                    .bind(&at)
                    .bind(event.seq as i64)
                    .execute(conn)
                    .await?;
            }
            DomainEvent::MessageStatusUpdated(s) => {
                let current: Option<String> = sqlx::query_scalar(
                    "SELECT status FROM messages WHERE workspace = $1 AND wamid = $2",
                )
                .bind(&ws)
                .bind(&s.wamid)
                .fetch_optional(&mut *conn)
                .await?;
                match current {
                    None => {
                        sqlx::query("INSERT INTO messages (workspace, wamid, direction, contact, message_type, status, occurred_at, updated_at, log_seq) VALUES ($1, $2, 'outbound', $3, 'unknown', $4, $5, $6, $7)")
                            .bind(&ws)
                            .bind(&s.wamid)
                            .bind(s.recipient_id.clone().unwrap_or_default())
                            .bind(&s.status)
                            .bind(s.timestamp.to_string())
                            .bind(&at)
                            .bind(event.seq as i64)
                            .execute(&mut *conn)
                            .await?;
                    }
                    Some(cur) if rank(&s.status) > rank(&cur) => {
                        sqlx::query("UPDATE messages SET status = $1, updated_at = $2, log_seq = $3 WHERE workspace = $4 AND wamid = $5")
                            .bind(&s.status)
                            .bind(&at)
                            .bind(event.seq as i64)
                            .bind(&ws)
                            .bind(&s.wamid)
                            .execute(&mut *conn)
                            .await?;
                    }
                    Some(_) => {}
                }
                sqlx::query("INSERT INTO message_history (workspace, wamid, log_seq, status, at, error_code) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING")
                    .bind(&ws)
                    .bind(&s.wamid)
                    .bind(event.seq as i64)
                    .bind(&s.status)
                    .bind(s.timestamp.to_string())
                    .bind(s.errors.first().map(|e| e.code))
                    .execute(conn)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// One message of a workspace.
pub async fn get(store: &Store, ws: &str, wamid: &str) -> anyhow::Result<Option<MessageRow>> {
    let r = sqlx::query("SELECT wamid, direction, contact, message_type, status, occurred_at, updated_at FROM messages WHERE workspace = $1 AND wamid = $2")
        .bind(ws)
        .bind(wamid)
        .fetch_optional(&store.reads)
        .await?;
    Ok(r.map(|r| MessageRow {
        wamid: r.get(0),
        direction: r.get(1),
        contact: r.get(2),
        message_type: r.get(3),
        status: r.get(4),
        occurred_at: r.get(5),
        updated_at: r.get(6),
    }))
}

/// How many messages a workspace has (tests and metrics).
pub async fn count(store: &Store, ws: &str) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE workspace = $1")
            .bind(ws)
            .fetch_one(&store.reads)
            .await?,
    )
}
