//! Stored Meta tokens: ciphertext and metadata only.

use sqlx::{AnyConnection, Row};
use wabridge_events::{
    types::{SealedToken, TokenStored},
    DomainEvent, StoredEvent,
};

use super::EventMeta;
use crate::{Projection, Store};

/// The `tokens` projection.
pub struct Tokens;

/// A stored token's row (ciphertext, never plaintext). Not an HTTP type: the API
/// answers `TokenMetadata`, which has no ciphertext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRow {
    /// Workspace.
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
    pub sealed: SealedToken,
    /// Sequence of the last event applied (for optimistic concurrency).
    pub log_seq: u64,
}

/// The number an event names, when it is one this projection folds.
fn number_of(event: &DomainEvent) -> Option<&str> {
    match event {
        DomainEvent::TokenStored(t) => Some(&t.phone_number_id),
        DomainEvent::TokenRewrapped(t) => Some(&t.phone_number_id),
        DomainEvent::TokenRevoked(t) => Some(&t.phone_number_id),
        DomainEvent::TokenInvalidated(t) => Some(&t.phone_number_id),
        _ => None,
    }
}

/// A number's token after an event (the projection's decision, pure): `None` when
/// the event changes nothing. `current` is the stored token of the event's workspace
/// for the number the event names. Every change records the event's seq (what
/// optimistic concurrency on the token's subject compares with).
///
/// - `token.stored`: the new sealed form, `valid`, stored at the log time, whatever
///   was stored before.
/// - `token.rewrapped`: the new sealed form (and its key version) only.
/// - `token.revoked` / `token.invalidated`: the status `revoked` / `invalid`.
/// - A rewrap, revocation or invalidation of a token that is not stored changes
///   nothing.
pub fn next_token(
    current: Option<&TokenRow>,
    event: &DomainEvent,
    meta: &EventMeta,
) -> Option<TokenRow> {
    let next = match (event, current) {
        (DomainEvent::TokenStored(t), _) => stored(t, meta),
        (DomainEvent::TokenRewrapped(t), Some(cur)) => TokenRow {
            key_version: t.sealed.key_version.clone(),
            sealed: t.sealed.clone(),
            log_seq: meta.seq,
            ..cur.clone()
        },
        (DomainEvent::TokenRevoked(_), Some(cur)) => with_status(cur, "revoked", meta),
        (DomainEvent::TokenInvalidated(_), Some(cur)) => with_status(cur, "invalid", meta),
        _ => return None,
    };
    super::changed(current, next)
}

/// A freshly stored token.
fn stored(t: &TokenStored, meta: &EventMeta) -> TokenRow {
    TokenRow {
        workspace: meta.workspace.clone(),
        phone_number_id: t.phone_number_id.clone(),
        key_version: t.sealed.key_version.clone(),
        status: "valid".into(),
        stored_at: meta.recorded_at.clone(),
        expires_at: t.expires_at.map(|e| e.to_string()),
        fingerprint: t.fingerprint.clone(),
        sealed: t.sealed.clone(),
        log_seq: meta.seq,
    }
}

fn with_status(cur: &TokenRow, status: &str, meta: &EventMeta) -> TokenRow {
    TokenRow {
        status: status.into(),
        log_seq: meta.seq,
        ..cur.clone()
    }
}

#[async_trait::async_trait]
impl Projection for Tokens {
    fn name(&self) -> &'static str {
        "tokens"
    }
    fn tables(&self) -> &'static [&'static str] {
        &["tokens"]
    }
    fn dump_sql(&self) -> &'static str {
        "SELECT workspace || '|' || phone_number_id || '|' || key_version || '|' || nonce || '|' || ciphertext || '|' || fingerprint || '|' || status || '|' || stored_at || '|' || COALESCE(expires_at, '') || '|' || CAST(log_seq AS TEXT) FROM tokens ORDER BY 1"
    }
    async fn apply(&self, conn: &mut AnyConnection, event: &StoredEvent) -> anyhow::Result<()> {
        if super::skip(event, |t| t.starts_with("token.")) {
            return Ok(());
        }
        let decoded = super::decode(event)?;
        let Some(number) = number_of(decoded) else {
            return Ok(());
        };
        let meta = EventMeta::of(event);
        let current = load(&mut *conn, &meta.workspace, number).await?;
        if let Some(next) = next_token(current.as_ref(), decoded, &meta) {
            put(conn, &next).await?;
        }
        Ok(())
    }
}

/// The stored token of a number, in the projection's transaction.
async fn load(
    conn: &mut AnyConnection,
    ws: &str,
    phone_number_id: &str,
) -> anyhow::Result<Option<TokenRow>> {
    let sql = format!("SELECT {COLUMNS} FROM tokens WHERE workspace = $1 AND phone_number_id = $2");
    Ok(sqlx::query(&sql)
        .bind(ws)
        .bind(phone_number_id)
        .fetch_optional(conn)
        .await?
        .map(row))
}

/// Writes a token's row (inserted, or replacing the stored one).
async fn put(conn: &mut AnyConnection, t: &TokenRow) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO tokens (workspace, phone_number_id, key_version, nonce, ciphertext, fingerprint, status, stored_at, expires_at, log_seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (workspace, phone_number_id) DO UPDATE SET key_version = excluded.key_version, nonce = excluded.nonce, ciphertext = excluded.ciphertext, fingerprint = excluded.fingerprint, status = excluded.status, stored_at = excluded.stored_at, expires_at = excluded.expires_at, log_seq = excluded.log_seq")
        .bind(&t.workspace)
        .bind(&t.phone_number_id)
        .bind(&t.sealed.key_version)
        .bind(&t.sealed.nonce)
        .bind(&t.sealed.ciphertext)
        .bind(&t.fingerprint)
        .bind(&t.status)
        .bind(&t.stored_at)
        .bind(&t.expires_at)
        .bind(t.log_seq as i64)
        .execute(conn)
        .await?;
    Ok(())
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
    let mut conn = store.reads.acquire().await?;
    get_on(&mut conn, ws, phone_number_id).await
}

/// [`get`] on a connection (a [`Store::snapshot`], say).
pub async fn get_on(
    conn: &mut AnyConnection,
    ws: &str,
    phone_number_id: &str,
) -> anyhow::Result<Option<TokenRow>> {
    let sql = format!("SELECT {COLUMNS} FROM tokens WHERE workspace = $1 AND phone_number_id = $2");
    Ok(sqlx::query(&sql)
        .bind(ws)
        .bind(phone_number_id)
        .fetch_optional(conn)
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use wabridge_events::{
        types::{EventData, TokenInvalidated, TokenRevoked, TokenRewrapped, WorkspaceCreated},
        Slug, Timestamp,
    };

    use super::*;
    use crate::views::spec::{at, fold_row, given, Model, WS};

    /// The `tokens` table by workspace and number.
    #[derive(Clone, Debug, Default, PartialEq)]
    struct Table(BTreeMap<(String, String), TokenRow>);

    impl Model for Table {
        fn fold(&mut self, event: &DomainEvent, meta: &EventMeta) {
            if let Some(number) = number_of(event) {
                let key = (meta.workspace.clone(), number.to_string());
                fold_row(&mut self.0, key, |cur| next_token(cur, event, meta));
            }
        }
    }

    impl Table {
        fn token(&self, number: &str) -> &TokenRow {
            &self.0[&(WS.to_string(), number.to_string())]
        }
    }

    fn sealed(version: &str, nonce: &str) -> SealedToken {
        SealedToken {
            key_version: version.into(),
            nonce: nonce.into(),
            ciphertext: format!("{nonce}{nonce}"),
        }
    }

    fn stored(number: &str, sealed: SealedToken) -> DomainEvent {
        TokenStored {
            phone_number_id: number.into(),
            sealed,
            fingerprint: "0011223344556677".into(),
            expires_at: Some(Timestamp::parse("2030-01-01T00:00:00Z").unwrap()),
        }
        .into_event()
    }

    fn rewrapped(number: &str, sealed: SealedToken) -> DomainEvent {
        TokenRewrapped {
            phone_number_id: number.into(),
            sealed,
            from_key_version: "v1".into(),
        }
        .into_event()
    }

    fn revoked(number: &str) -> DomainEvent {
        TokenRevoked {
            phone_number_id: number.into(),
        }
        .into_event()
    }

    fn invalidated(number: &str) -> DomainEvent {
        TokenInvalidated {
            phone_number_id: number.into(),
            reason: "190".into(),
        }
        .into_event()
    }

    #[test]
    fn a_stored_token_is_valid_with_its_sealed_form() {
        let then = given::<Table>(&[]).when(stored("100", sealed("v1", "aa")));
        then.then_replay_changes_nothing();
        assert_eq!(
            then.state().token("100"),
            &TokenRow {
                workspace: WS.into(),
                phone_number_id: "100".into(),
                key_version: "v1".into(),
                status: "valid".into(),
                stored_at: at(1),
                expires_at: Some("2030-01-01T00:00:00.000000Z".into()),
                fingerprint: "0011223344556677".into(),
                sealed: sealed("v1", "aa"),
                log_seq: 1,
            }
        );
    }

    #[test]
    fn storing_again_replaces_the_token_and_makes_it_valid() {
        let then = given::<Table>(&[stored("100", sealed("v1", "aa")), revoked("100")])
            .when(stored("100", sealed("v2", "bb")));
        let t = then.state().token("100");
        assert_eq!((t.status.as_str(), t.log_seq), ("valid", 3));
        assert_eq!(
            (t.sealed.clone(), t.stored_at.clone()),
            (sealed("v2", "bb"), at(3))
        );
        assert_eq!(t.key_version, "v2");
    }

    #[test]
    fn a_rewrap_changes_the_sealed_form_only() {
        let history = [stored("100", sealed("v1", "aa")), invalidated("100")];
        let then = given::<Table>(&history).when(rewrapped("100", sealed("v2", "bb")));
        then.then_replay_changes_nothing();
        let t = then.state().token("100");
        assert_eq!(
            (t.key_version.as_str(), &t.sealed, t.log_seq),
            ("v2", &sealed("v2", "bb"), 3)
        );
        // The rest is as it was: still invalid, stored at the first event.
        assert_eq!(
            (t.status.as_str(), t.stored_at.as_str()),
            ("invalid", at(1).as_str())
        );
        assert_eq!(t.fingerprint, "0011223344556677");
    }

    #[test]
    fn revocation_and_invalidation_set_the_status() {
        let then = given::<Table>(&[stored("100", sealed("v1", "aa"))]).when(revoked("100"));
        then.then_replay_changes_nothing();
        let t = then.state().token("100");
        assert_eq!((t.status.as_str(), t.log_seq), ("revoked", 2));
        assert_eq!(t.sealed, sealed("v1", "aa"));

        let then = given::<Table>(&[stored("100", sealed("v1", "aa"))]).when(invalidated("100"));
        let t = then.state().token("100");
        assert_eq!((t.status.as_str(), t.log_seq), ("invalid", 2));
    }

    #[test]
    fn a_repeated_status_records_only_its_seq() {
        let then = given::<Table>(&[stored("100", sealed("v1", "aa")), revoked("100")])
            .when(revoked("100"));
        let t = then.state().token("100");
        assert_eq!((t.status.as_str(), t.log_seq), ("revoked", 3));
    }

    #[test]
    fn events_for_an_unknown_token_change_nothing() {
        for event in [
            rewrapped("100", sealed("v2", "bb")),
            revoked("100"),
            invalidated("100"),
        ] {
            given::<Table>(&[]).when(event).then_unchanged();
        }
        // Another workspace's token is another row.
        given::<Table>(&[stored("100", sealed("v1", "aa"))])
            .when_in("globex", revoked("100"))
            .then_unchanged();
    }

    #[test]
    fn other_events_are_ignored() {
        let other = WorkspaceCreated {
            slug: Slug::parse("acme").unwrap(),
            name: "Acme".into(),
        }
        .into_event();
        assert_eq!(number_of(&other), None);
        given::<Table>(&[stored("100", sealed("v1", "aa"))])
            .when(other)
            .then_unchanged();
    }
}
