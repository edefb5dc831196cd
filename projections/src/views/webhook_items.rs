//! The webhook items processed so far: the natural key of every item the webhook
//! processor (or the operator's assignment, or a redrive) turned into a domain event,
//! written in the transaction that moves the processor's checkpoint. Keys outlive
//! the log's duplicate window, so a body Meta redelivers days later is processed once.

use std::collections::HashSet;

use sqlx::AnyConnection;

use crate::Store;

/// The natural key of an item in a workspace (`None`: unrouted).
pub fn item_key(workspace: Option<&str>, dedup_key: &str) -> String {
    format!("{}|{dedup_key}", workspace.unwrap_or("unrouted"))
}

/// Records items as processed (`raw_seq`: the raw event they came from, 0 when
/// attached by the operator).
pub async fn record(conn: &mut AnyConnection, keys: &[String], raw_seq: u64) -> anyhow::Result<()> {
    // Multi-row statements of at most 60 keys (sqlx's SQLite driver binds
    // quadratically in the number of parameters beyond about a hundred).
    for chunk in keys.chunks(60) {
        let values = (0..chunk.len())
            .map(|i| format!("(${}, $1)", i + 2))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO webhook_items (dedup_key, raw_seq) VALUES {values} ON CONFLICT (dedup_key) DO NOTHING"
        );
        let mut q = sqlx::query(&sql).bind(raw_seq as i64);
        for key in chunk {
            q = q.bind(key);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Which of `keys` were processed before (one query per 500 keys).
pub async fn processed(store: &Store, keys: &[&str]) -> anyhow::Result<HashSet<String>> {
    let mut found = HashSet::new();
    for chunk in keys.chunks(500) {
        let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT dedup_key FROM webhook_items WHERE dedup_key IN ({})",
            placeholders.join(", ")
        );
        let mut q = sqlx::query_scalar::<_, String>(&sql);
        for k in chunk {
            q = q.bind(*k);
        }
        found.extend(q.fetch_all(&store.reads).await?);
    }
    Ok(found)
}
