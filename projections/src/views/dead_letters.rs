//! Dead letters: events a consumer could not process, and what became of them.

use serde::Serialize;
use sqlx::{AnyConnection, Row};
use wabridge_events::{DomainEvent, StoredEvent};

use crate::{Projection, Store};

/// The `dead_letters` projection.
pub struct DeadLetters;

/// One dead letter.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct DeadLetter {
    /// `<consumer>:<stream>:<seq>`.
    pub id: String,
    /// The consumer that failed.
    pub consumer: String,
    /// `domain` or `raw`.
    pub stream: String,
    /// The failed event's sequence.
    pub seq: i64,
    /// Its type.
    pub event_type: String,
    /// Why it failed.
    pub reason: String,
    /// Attempts made.
    pub attempts: i64,
    /// `open`, `redriving`, `resolved` or `discarded`.
    pub status: String,
    /// First recorded.
    pub recorded_at: String,
    /// Last change.
    pub updated_at: String,
}

#[async_trait::async_trait]
impl Projection for DeadLetters {
    fn name(&self) -> &'static str {
        "dead_letters"
    }
    fn dump_sql(&self) -> &'static str {
        "SELECT id || '|' || consumer || '|' || stream || '|' || CAST(seq AS TEXT) || '|' || event_type || '|' || reason || '|' || CAST(attempts AS TEXT) || '|' || status || '|' || recorded_at || '|' || updated_at FROM dead_letters ORDER BY id"
    }
    async fn apply(&self, conn: &mut AnyConnection, event: &StoredEvent) -> anyhow::Result<()> {
        let at = event.envelope.recorded_at.to_string();
        let status = match super::decode(event)? {
            DomainEvent::DeadLetterRecorded(d) => {
                sqlx::query("INSERT INTO dead_letters (id, consumer, stream, seq, event_type, reason, attempts, status, recorded_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'open', $8, $8) \
                     ON CONFLICT (id) DO UPDATE SET reason = excluded.reason, attempts = dead_letters.attempts + excluded.attempts, status = 'open', updated_at = excluded.updated_at")
                    .bind(&d.id)
                    .bind(&d.consumer)
                    .bind(&d.stream)
                    .bind(d.seq as i64)
                    .bind(&d.event_type)
                    .bind(&d.reason)
                    .bind(d.attempts as i64)
                    .bind(&at)
                    .execute(conn)
                    .await?;
                return Ok(());
            }
            DomainEvent::DeadLetterRedriven(d) => (d.id, "redriving"),
            DomainEvent::DeadLetterResolved(d) => (d.id, "resolved"),
            DomainEvent::DeadLetterDiscarded(d) => (d.id, "discarded"),
            _ => return Ok(()),
        };
        sqlx::query("UPDATE dead_letters SET status = $1, updated_at = $2 WHERE id = $3")
            .bind(status.1)
            .bind(&at)
            .bind(status.0)
            .execute(conn)
            .await?;
        Ok(())
    }
}

const COLUMNS: &str =
    "id, consumer, stream, seq, event_type, reason, attempts, status, recorded_at, updated_at";

fn row(r: sqlx::any::AnyRow) -> DeadLetter {
    DeadLetter {
        id: r.get(0),
        consumer: r.get(1),
        stream: r.get(2),
        seq: r.get(3),
        event_type: r.get(4),
        reason: r.get(5),
        attempts: r.get(6),
        status: r.get(7),
        recorded_at: r.get(8),
        updated_at: r.get(9),
    }
}

/// Dead letters, optionally of one status, after a cursor (id order).
pub async fn list(
    store: &Store,
    status: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<DeadLetter>> {
    let sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE ($1 = '' OR status = $1) AND id > $2 ORDER BY id LIMIT $3");
    let rows = sqlx::query(&sql)
        .bind(status.unwrap_or(""))
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&store.reads)
        .await?;
    Ok(rows.into_iter().map(row).collect())
}

/// One dead letter.
pub async fn get(store: &Store, id: &str) -> anyhow::Result<Option<DeadLetter>> {
    let sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1");
    Ok(sqlx::query(&sql)
        .bind(id)
        .fetch_optional(&store.reads)
        .await?
        .map(row))
}

/// How many are open.
pub async fn count_open(store: &Store) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters WHERE status = 'open'")
            .fetch_one(&store.reads)
            .await?,
    )
}
