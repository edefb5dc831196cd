//! API keys (hashes only) and their `last_used_at`.

use sqlx::{AnyConnection, Row};
use wabridge_events::{DomainEvent, StoredEvent};

use crate::{Projection, Store};

/// The `api_keys` projection.
pub struct ApiKeys;

/// A key as the read model holds it (its hash, never the key).
#[derive(Clone, Debug)]
pub struct ApiKeyRow {
    /// Key id.
    pub id: String,
    /// Workspace (none for operator keys).
    pub workspace: Option<String>,
    /// Name.
    pub name: String,
    /// Role.
    pub role: String,
    /// Creation time.
    pub created_at: String,
    /// Expiry.
    pub expires_at: Option<String>,
    /// Revocation time.
    pub revoked_at: Option<String>,
    /// Last use, to the minute.
    pub last_used_at: Option<String>,
    /// Hex SHA-256 of the key text.
    pub secret_hash: String,
    /// Sequence of the last event applied to this key.
    pub log_seq: u64,
}

#[async_trait::async_trait]
impl Projection for ApiKeys {
    fn name(&self) -> &'static str {
        "api_keys"
    }
    fn dump_sql(&self) -> &'static str {
        "SELECT key_id || '|' || COALESCE(workspace, '') || '|' || name || '|' || role || '|' || secret_hash || '|' || created_at || '|' || COALESCE(expires_at, '') || '|' || COALESCE(revoked_at, '') || '|' || COALESCE(last_used_at, '') || '|' || CAST(log_seq AS TEXT) FROM api_keys ORDER BY key_id"
    }
    async fn apply(&self, conn: &mut AnyConnection, event: &StoredEvent) -> anyhow::Result<()> {
        let at = event.envelope.recorded_at.to_string();
        let seq = event.seq as i64;
        match super::decode(event)? {
            DomainEvent::ApiKeyCreated(k) => {
                sqlx::query("INSERT INTO api_keys (key_id, workspace, name, role, secret_hash, created_at, expires_at, log_seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (key_id) DO NOTHING")
                    .bind(&k.key_id)
                    .bind(k.workspace.map(|w| w.to_string()))
                    .bind(&k.name)
                    .bind(&k.role)
                    .bind(&k.secret_hash)
                    .bind(&at)
                    .bind(k.expires_at.map(|t| t.to_string()))
                    .bind(seq)
                    .execute(conn)
                    .await?;
            }
            DomainEvent::ApiKeyRevoked(k) => {
                sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1), log_seq = $2 WHERE key_id = $3")
                    .bind(&at)
                    .bind(seq)
                    .bind(&k.key_id)
                    .execute(conn)
                    .await?;
            }
            DomainEvent::ApiKeyUsed(u) => {
                sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE key_id = $2 AND (last_used_at IS NULL OR last_used_at < $1)")
                    .bind(u.minute.to_string())
                    .bind(&u.key_id)
                    .execute(conn)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }
}

const COLUMNS: &str = "key_id, workspace, name, role, created_at, expires_at, revoked_at, last_used_at, secret_hash, log_seq";

fn row(r: sqlx::any::AnyRow) -> ApiKeyRow {
    ApiKeyRow {
        id: r.get(0),
        workspace: r.get(1),
        name: r.get(2),
        role: r.get(3),
        created_at: r.get(4),
        expires_at: r.get(5),
        revoked_at: r.get(6),
        last_used_at: r.get(7),
        secret_hash: r.get(8),
        log_seq: r.get::<i64, _>(9) as u64,
    }
}

/// One key by id.
pub async fn get(store: &Store, key_id: &str) -> anyhow::Result<Option<ApiKeyRow>> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE key_id = $1");
    Ok(sqlx::query(&sql)
        .bind(key_id)
        .fetch_optional(&store.reads)
        .await?
        .map(row))
}

/// A workspace's keys after a cursor (id order).
pub async fn list(
    store: &Store,
    workspace: &str,
    after: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<ApiKeyRow>> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE workspace = $1 AND key_id > $2 ORDER BY key_id LIMIT $3");
    let rows = sqlx::query(&sql)
        .bind(workspace)
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&store.reads)
        .await?;
    Ok(rows.into_iter().map(row).collect())
}

/// Operator keys after a cursor (id order).
pub async fn list_operators(
    store: &Store,
    after: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<ApiKeyRow>> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE workspace IS NULL AND key_id > $1 ORDER BY key_id LIMIT $2");
    let rows = sqlx::query(&sql)
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&store.reads)
        .await?;
    Ok(rows.into_iter().map(row).collect())
}

/// The number of keys of a role in a workspace that are neither revoked nor expired.
pub async fn count_valid(
    store: &Store,
    workspace: &str,
    role: &str,
    now: &str,
) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE workspace = $1 AND role = $2 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $3)")
        .bind(workspace)
        .bind(role)
        .bind(now)
        .fetch_one(&store.reads)
        .await?)
}
