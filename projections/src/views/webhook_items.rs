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
    for key in keys {
        sqlx::query("INSERT INTO webhook_items (dedup_key, raw_seq) VALUES ($1, $2) ON CONFLICT (dedup_key) DO NOTHING")
            .bind(key)
            .bind(raw_seq as i64)
            .execute(&mut *conn)
            .await?;
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
