//! Webhook items for numbers no workspace held, waiting for the operator.

use serde::Serialize;
use sqlx::{AnyConnection, Row};
use wabridge_events::{DomainEvent, StoredEvent};

use crate::{Projection, Store};

/// The `unrouted` projection.
pub struct Unrouted;

/// One unrouted item.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct UnroutedRow {
    /// Natural key of the item.
    pub dedup_key: String,
    /// The number nobody held.
    pub phone_number_id: String,
    /// Its WABA.
    pub waba_id: String,
    /// The event type it becomes.
    pub event_type: String,
    /// Schema version.
    #[serde(skip)]
    pub v: i64,
    /// The data (JSON text).
    #[serde(skip)]
    pub data: String,
    /// When it happened.
    pub occurred_at: String,
    /// When it was recorded unrouted.
    pub recorded_at: String,
    /// The workspace it was assigned to, once assigned.
    pub assigned_to: Option<String>,
}

/// Per-number summary for the operator.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct UnroutedNumber {
    /// The number.
    pub phone_number_id: String,
    /// Its WABA.
    pub waba_id: String,
    /// Items waiting.
    pub pending: i64,
    /// First item seen.
    pub first_seen: String,
    /// Last item seen.
    pub last_seen: String,
}

#[async_trait::async_trait]
impl Projection for Unrouted {
    fn name(&self) -> &'static str {
        "unrouted"
    }
    fn dump_sql(&self) -> &'static str {
        "SELECT dedup_key || '|' || phone_number_id || '|' || waba_id || '|' || event_type || '|' || data || '|' || occurred_at || '|' || recorded_at || '|' || COALESCE(assigned_to, '') FROM unrouted ORDER BY dedup_key"
    }
    async fn apply(&self, conn: &mut AnyConnection, event: &StoredEvent) -> anyhow::Result<()> {
        match super::decode(event)? {
            DomainEvent::WebhookUnrouted(u) => {
                sqlx::query("INSERT INTO unrouted (dedup_key, phone_number_id, waba_id, event_type, v, data, occurred_at, recorded_at, log_seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (dedup_key) DO NOTHING")
                    .bind(&u.dedup_key)
                    .bind(&u.phone_number_id)
                    .bind(&u.waba_id)
                    .bind(&u.item.event_type)
                    .bind(u.item.v as i64)
                    .bind(u.item.data.to_string())
                    .bind(u.item.occurred_at.to_string())
                    .bind(event.envelope.recorded_at.to_string())
                    .bind(event.seq as i64)
                    .execute(conn)
                    .await?;
            }
            DomainEvent::UnroutedAssigned(a) => {
                sqlx::query("UPDATE unrouted SET assigned_to = $1 WHERE phone_number_id = $2 AND assigned_to IS NULL AND log_seq < $3")
                    .bind(a.workspace.as_str())
                    .bind(&a.phone_number_id)
                    .bind(event.seq as i64)
                    .execute(conn)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Numbers with items waiting.
pub async fn numbers(
    store: &Store,
    after: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<UnroutedNumber>> {
    let rows = sqlx::query("SELECT phone_number_id, MIN(waba_id), COUNT(*), MIN(recorded_at), MAX(recorded_at) FROM unrouted WHERE assigned_to IS NULL AND phone_number_id > $1 GROUP BY phone_number_id ORDER BY phone_number_id LIMIT $2")
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&store.reads)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| UnroutedNumber {
            phone_number_id: r.get(0),
            waba_id: r.get(1),
            pending: r.get(2),
            first_seen: r.get(3),
            last_seen: r.get(4),
        })
        .collect())
}

/// The items of a number still waiting, oldest first.
pub async fn pending(store: &Store, phone_number_id: &str) -> anyhow::Result<Vec<UnroutedRow>> {
    let rows = sqlx::query("SELECT dedup_key, phone_number_id, waba_id, event_type, v, data, occurred_at, recorded_at, assigned_to FROM unrouted WHERE phone_number_id = $1 AND assigned_to IS NULL ORDER BY log_seq")
        .bind(phone_number_id)
        .fetch_all(&store.reads)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| UnroutedRow {
            dedup_key: r.get(0),
            phone_number_id: r.get(1),
            waba_id: r.get(2),
            event_type: r.get(3),
            v: r.get(4),
            data: r.get(5),
            occurred_at: r.get(6),
            recorded_at: r.get(7),
            assigned_to: r.get(8),
        })
        .collect())
}
