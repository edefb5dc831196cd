//! Stored Meta tokens: ciphertext and metadata only.

use serde::Serialize;
use sqlx::{AnyConnection, Row};
use wabridge_events::{types::SealedToken, DomainEvent, StoredEvent};

use crate::{Projection, Store};

/// The `tokens` projection.
pub struct Tokens;

/// A stored token's row (ciphertext, never plaintext).
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct TokenRow {
    /// Workspace.
    #[serde(skip)]
    pub workspace: String,
    /// The number.
    pub phone_number_id: String,
    /// Master key version of the ciphertext.
    pub key_version: String,
    /// `valid`, `invalid` or `revoked`.
    pub status: String,
    /// When it was stored.
    pub stored_at: String,
    /// Expiry, when known.
    pub expires_at: Option<String>,
    /// First 8 bytes of SHA-256 of the token, hex.
    pub fingerprint: String,
    /// The sealed token.
    #[serde(skip)]
    pub sealed: SealedToken,
    /// Sequence of the last event applied (for optimistic concurrency).
    #[serde(skip)]
    pub log_seq: u64,
}

#[async_trait::async_trait]
impl Projection for Tokens {
    fn name(&self) -> &'static str {
        "tokens"
    }
    fn dump_sql(&self) -> &'static str {
        "SELECT workspace || '|' || phone_number_id || '|' || key_version || '|' || nonce || '|' || ciphertext || '|' || fingerprint || '|' || status || '|' || stored_at || '|' || COALESCE(expires_at, '') || '|' || CAST(log_seq AS TEXT) FROM tokens ORDER BY workspace, phone_number_id"
    }
    async fn apply(&self, conn: &mut AnyConnection, event: &StoredEvent) -> anyhow::Result<()> {
        let ws = super::ws_of(event);
        let seq = event.seq as i64;
        let status = |number: String, status: &'static str| {
            sqlx::query("UPDATE tokens SET status = $1, log_seq = $2 WHERE workspace = $3 AND phone_number_id = $4").bind(status).bind(seq).bind(ws.clone()).bind(number)
        };
        match super::decode(event)? {
            DomainEvent::TokenStored(t) => {
                sqlx::query("INSERT INTO tokens (workspace, phone_number_id, key_version, nonce, ciphertext, fingerprint, status, stored_at, expires_at, log_seq) VALUES ($1, $2, $3, $4, $5, $6, 'valid', $7, $8, $9) \
                     ON CONFLICT (workspace, phone_number_id) DO UPDATE SET key_version = excluded.key_version, nonce = excluded.nonce, ciphertext = excluded.ciphertext, fingerprint = excluded.fingerprint, status = 'valid', stored_at = excluded.stored_at, expires_at = excluded.expires_at, log_seq = excluded.log_seq")
                    .bind(&ws)
                    .bind(&t.phone_number_id)
                    .bind(&t.sealed.key_version)
                    .bind(&t.sealed.nonce)
                    .bind(&t.sealed.ciphertext)
                    .bind(&t.fingerprint)
                    .bind(event.envelope.recorded_at.to_string())
                    .bind(t.expires_at.map(|e| e.to_string()))
                    .bind(seq)
                    .execute(conn)
                    .await?;
            }
            DomainEvent::TokenRewrapped(t) => {
                sqlx::query("UPDATE tokens SET key_version = $1, nonce = $2, ciphertext = $3, log_seq = $4 WHERE workspace = $5 AND phone_number_id = $6")
                    .bind(&t.sealed.key_version)
                    .bind(&t.sealed.nonce)
                    .bind(&t.sealed.ciphertext)
                    .bind(seq)
                    .bind(&ws)
                    .bind(&t.phone_number_id)
                    .execute(conn)
                    .await?;
            }
            DomainEvent::TokenRevoked(t) => {
                status(t.phone_number_id, "revoked").execute(conn).await?;
            }
            DomainEvent::TokenInvalidated(t) => {
                status(t.phone_number_id, "invalid").execute(conn).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

const COLUMNS: &str = "workspace, phone_number_id, key_version, status, stored_at, expires_at, fingerprint, nonce, ciphertext, log_seq";

fn row(r: sqlx::any::AnyRow) -> TokenRow {
    TokenRow {
        workspace: r.get(0),
        phone_number_id: r.get(1),
        key_version: r.get(2),
        status: r.get(3),
        stored_at: r.get(4),
        expires_at: r.get(5),
        fingerprint: r.get(6),
        sealed: SealedToken {
            key_version: r.get(2),
            nonce: r.get(7),
            ciphertext: r.get(8),
        },
        log_seq: r.get::<i64, _>(9) as u64,
    }
}

/// One number's token.
pub async fn get(
    store: &Store,
    ws: &str,
    phone_number_id: &str,
) -> anyhow::Result<Option<TokenRow>> {
    let sql = format!("SELECT {COLUMNS} FROM tokens WHERE workspace = $1 AND phone_number_id = $2");
    Ok(sqlx::query(&sql)
        .bind(ws)
        .bind(phone_number_id)
        .fetch_optional(&store.reads)
        .await?
        .map(row))
}

/// A workspace's valid tokens expiring before `before` (or all, when `None`).
pub async fn list(
    store: &Store,
    ws: &str,
    expiring_before: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<TokenRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM tokens WHERE workspace = $1 AND ($2 = '' OR (status = 'valid' AND expires_at IS NOT NULL AND expires_at < $2)) AND phone_number_id > $3 ORDER BY phone_number_id LIMIT $4"
    );
    let rows = sqlx::query(&sql)
        .bind(ws)
        .bind(expiring_before.unwrap_or(""))
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&store.reads)
        .await?;
    Ok(rows.into_iter().map(row).collect())
}

/// Every stored token not yet under `current_version` (for rotation), any workspace.
pub async fn not_on_version(store: &Store, current_version: &str) -> anyhow::Result<Vec<TokenRow>> {
    let sql = format!("SELECT {COLUMNS} FROM tokens WHERE key_version <> $1 AND status <> 'revoked' ORDER BY workspace, phone_number_id");
    let rows = sqlx::query(&sql)
        .bind(current_version)
        .fetch_all(&store.reads)
        .await?;
    Ok(rows.into_iter().map(row).collect())
}

/// Every token row (for the in-memory cache).
pub async fn all(store: &Store) -> anyhow::Result<Vec<TokenRow>> {
    let sql = format!("SELECT {COLUMNS} FROM tokens ORDER BY workspace, phone_number_id");
    let rows = sqlx::query(&sql).fetch_all(&store.reads).await?;
    Ok(rows.into_iter().map(row).collect())
}
