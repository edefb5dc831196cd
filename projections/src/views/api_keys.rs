//! API keys (hashes only) and their `last_used_at`.

use sqlx::{AnyConnection, Row};
use wabridge_events::{types::ApiKeyCreated, DomainEvent, StoredEvent};

use super::EventMeta;
use crate::{Projection, Store};

/// The `api_keys` projection.
pub struct ApiKeys;

/// A key as the read model holds it (its hash, never the key).
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// The key an event names, when it is one this projection folds.
fn key_of(event: &DomainEvent) -> Option<&str> {
    match event {
        DomainEvent::ApiKeyCreated(k) => Some(&k.key_id),
        DomainEvent::ApiKeyRevoked(k) => Some(&k.key_id),
        DomainEvent::ApiKeyUsed(u) => Some(&u.key_id),
        _ => None,
    }
}

/// The key after an event (the projection's decision, pure): `None` when the event
/// changes nothing. `current` is the stored row of the key the event names.
///
/// - `api_key.created` adds the key, created at the log time; a key that exists stays
///   as it is (the first creation wins).
/// - `api_key.revoked` sets `revoked_at` to the log time once: a later revocation
///   keeps the first time, and records its seq as the key's last key event.
/// - `api_key.used` moves `last_used_at` forward to the minute of use, never back (it
///   does not touch `log_seq`: uses are not on the keys' subject).
/// - Anything for a key that is not stored, and any other event, changes nothing.
pub fn next_key(
    current: Option<&ApiKeyRow>,
    event: &DomainEvent,
    meta: &EventMeta,
) -> Option<ApiKeyRow> {
    let next = match (event, current) {
        (DomainEvent::ApiKeyCreated(k), None) => created(k, meta),
        (DomainEvent::ApiKeyRevoked(_), Some(key)) => ApiKeyRow {
            revoked_at: Some(first(key.revoked_at.as_deref(), &meta.recorded_at)),
            log_seq: meta.seq,
            ..key.clone()
        },
        (DomainEvent::ApiKeyUsed(u), Some(key)) => ApiKeyRow {
            last_used_at: Some(latest(key.last_used_at.as_deref(), u.minute.to_string())),
            ..key.clone()
        },
        _ => return None,
    };
    super::changed(current, next)
}

/// A new key's row.
fn created(k: &ApiKeyCreated, meta: &EventMeta) -> ApiKeyRow {
    ApiKeyRow {
        id: k.key_id.clone(),
        workspace: k.workspace.as_ref().map(|w| w.to_string()),
        name: k.name.clone(),
        role: k.role.clone(),
        created_at: meta.recorded_at.clone(),
        expires_at: k.expires_at.map(|t| t.to_string()),
        revoked_at: None,
        last_used_at: None,
        secret_hash: k.secret_hash.clone(),
        log_seq: meta.seq,
    }
}

/// The time already set, else `now`.
fn first(set: Option<&str>, now: &str) -> String {
    set.unwrap_or(now).to_string()
}

/// The later of two times (one format throughout, so text order is time order).
fn latest(current: Option<&str>, new: String) -> String {
    match current {
        Some(cur) if cur >= new.as_str() => cur.to_string(),
        _ => new,
    }
}

#[async_trait::async_trait]
impl Projection for ApiKeys {
    fn name(&self) -> &'static str {
        "api_keys"
    }
    fn tables(&self) -> &'static [&'static str] {
        &["api_keys"]
    }
    fn dump_sql(&self) -> &'static str {
        "SELECT key_id || '|' || COALESCE(workspace, '') || '|' || name || '|' || role || '|' || secret_hash || '|' || created_at || '|' || COALESCE(expires_at, '') || '|' || COALESCE(revoked_at, '') || '|' || COALESCE(last_used_at, '') || '|' || CAST(log_seq AS TEXT) FROM api_keys ORDER BY 1"
    }
    async fn apply(&self, conn: &mut AnyConnection, event: &StoredEvent) -> anyhow::Result<()> {
        if super::skip(event, relevant) {
            return Ok(());
        }
        let decoded = super::decode(event)?;
        let Some(key_id) = key_of(decoded) else {
            return Ok(());
        };
        let current = load(&mut *conn, key_id).await?;
        if let Some(next) = next_key(current.as_ref(), decoded, &EventMeta::of(event)) {
            put(conn, &next).await?;
        }
        Ok(())
    }

    /// The batch folded in memory: the keys it names loaded in one statement, each
    /// event decided by [`next_key`] in log order, the changed rows written in one.
    async fn apply_batch(
        &self,
        conn: &mut AnyConnection,
        events: &[StoredEvent],
    ) -> anyhow::Result<()> {
        use crate::batch::{by_keys, insert_rows, Col};
        let mut items = vec![];
        for event in events {
            if super::skip(event, relevant) {
                continue;
            }
            let decoded = super::decode(event)?;
            if let Some(key_id) = key_of(decoded) {
                items.push((event, decoded, key_id));
            }
        }
        if items.is_empty() {
            return Ok(());
        }
        let mut ids: Vec<[&str; 1]> = items.iter().map(|(_, _, k)| [*k]).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut rows: std::collections::HashMap<String, ApiKeyRow> =
            by_keys(&mut *conn, COLUMNS, "api_keys", &["key_id"], &ids)
                .await?
                .into_iter()
                .map(|r| {
                    let r = row(r);
                    (r.id.clone(), r)
                })
                .collect();
        let mut changed = std::collections::BTreeSet::new();
        for (event, decoded, key_id) in items {
            if let Some(next) = next_key(rows.get(key_id), decoded, &EventMeta::of(event)) {
                changed.insert(key_id);
                rows.insert(key_id.to_string(), next);
            }
        }
        let out: Vec<_> = changed
            .iter()
            .map(|id| {
                let k = &rows[*id];
                (
                    &k.id,
                    &k.workspace,
                    &k.name,
                    &k.role,
                    &k.secret_hash,
                    &k.created_at,
                    &k.expires_at,
                    &k.revoked_at,
                    &k.last_used_at,
                    k.log_seq as i64,
                )
            })
            .collect();
        use Col::{Int, Text};
        insert_rows(
            conn,
            &format!("INSERT INTO api_keys ({PUT_COLUMNS})"),
            &[Text, Text, Text, Text, Text, Text, Text, Text, Text, Int],
            PUT_CONFLICT,
            &out,
        )
        .await
    }
}

/// The stored row of a key, in the projection's transaction.
async fn load(conn: &mut AnyConnection, key_id: &str) -> anyhow::Result<Option<ApiKeyRow>> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE key_id = $1");
    Ok(sqlx::query(&sql)
        .bind(key_id)
        .fetch_optional(conn)
        .await?
        .map(row))
}

/// Writes a key's row (inserted, or replacing the stored one).
async fn put(conn: &mut AnyConnection, k: &ApiKeyRow) -> anyhow::Result<()> {
    let sql = format!("INSERT INTO api_keys ({PUT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) {PUT_CONFLICT}");
    sqlx::query(&sql)
        .bind(&k.id)
        .bind(&k.workspace)
        .bind(&k.name)
        .bind(&k.role)
        .bind(&k.secret_hash)
        .bind(&k.created_at)
        .bind(&k.expires_at)
        .bind(&k.revoked_at)
        .bind(&k.last_used_at)
        .bind(k.log_seq as i64)
        .execute(conn)
        .await?;
    Ok(())
}

/// The columns a write gives, in order.
const PUT_COLUMNS: &str = "key_id, workspace, name, role, secret_hash, created_at, expires_at, revoked_at, last_used_at, log_seq";

/// A write replaces the stored row.
const PUT_CONFLICT: &str = "ON CONFLICT (key_id) DO UPDATE SET workspace = excluded.workspace, name = excluded.name, role = excluded.role, secret_hash = excluded.secret_hash, created_at = excluded.created_at, expires_at = excluded.expires_at, revoked_at = excluded.revoked_at, last_used_at = excluded.last_used_at, log_seq = excluded.log_seq";

/// The event types this projection folds.
fn relevant(t: &str) -> bool {
    matches!(t, "api_key.created" | "api_key.revoked" | "api_key.used")
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use wabridge_events::{
        types::{ApiKeyRevoked, ApiKeyUsed, EventData, WorkspaceCreated},
        Slug, Timestamp,
    };

    use super::*;
    use crate::views::spec::{at, fold_row, given, Model};

    /// The `api_keys` table by key id.
    #[derive(Clone, Debug, Default, PartialEq)]
    struct Keys(BTreeMap<String, ApiKeyRow>);

    impl Model for Keys {
        fn fold(&mut self, event: &DomainEvent, meta: &EventMeta) {
            if let Some(id) = key_of(event) {
                fold_row(&mut self.0, id.to_string(), |cur| {
                    next_key(cur, event, meta)
                });
            }
        }
    }

    impl Keys {
        fn key(&self, id: &str) -> &ApiKeyRow {
            self.0.get(id).expect("the key is stored")
        }
    }

    fn created(id: &str, workspace: Option<&str>) -> DomainEvent {
        ApiKeyCreated {
            key_id: id.into(),
            workspace: workspace.map(|w| Slug::parse(w).unwrap()),
            name: format!("{id} key"),
            role: if workspace.is_some() {
                "admin"
            } else {
                "operator"
            }
            .into(),
            secret_hash: "ab".repeat(32),
            expires_at: Some(Timestamp::parse("2030-01-01T00:00:00Z").unwrap()),
        }
        .into_event()
    }

    fn revoked(id: &str) -> DomainEvent {
        ApiKeyRevoked { key_id: id.into() }.into_event()
    }

    fn used(id: &str, minute: &str) -> DomainEvent {
        ApiKeyUsed {
            key_id: id.into(),
            minute: Timestamp::parse(minute).unwrap(),
        }
        .into_event()
    }

    #[test]
    fn a_creation_adds_the_key_at_the_log_time() {
        let then = given::<Keys>(&[]).when(created("k1", Some("acme")));
        then.then_replay_changes_nothing();
        assert_eq!(
            then.state().key("k1"),
            &ApiKeyRow {
                id: "k1".into(),
                workspace: Some("acme".into()),
                name: "k1 key".into(),
                role: "admin".into(),
                created_at: at(1),
                expires_at: Some("2030-01-01T00:00:00.000000Z".into()),
                revoked_at: None,
                last_used_at: None,
                secret_hash: "ab".repeat(32),
                log_seq: 1,
            }
        );
    }

    #[test]
    fn an_operator_key_has_no_workspace() {
        let then = given::<Keys>(&[]).when(created("op", None));
        assert_eq!(then.state().key("op").workspace, None);
        assert_eq!(then.state().key("op").role, "operator");
    }

    #[test]
    fn the_first_creation_wins() {
        given::<Keys>(&[created("k1", Some("acme"))])
            .when(created("k1", Some("globex")))
            .then_unchanged();
    }

    #[test]
    fn a_revocation_sets_revoked_at_and_the_last_seq() {
        let then = given::<Keys>(&[created("k1", Some("acme"))]).when(revoked("k1"));
        then.then_replay_changes_nothing();
        let key = then.state().key("k1");
        assert_eq!(key.revoked_at.as_deref(), Some(at(2).as_str()));
        assert_eq!(key.log_seq, 2);
    }

    #[test]
    fn a_second_revocation_keeps_the_first_time() {
        let then = given::<Keys>(&[created("k1", Some("acme")), revoked("k1")]).when(revoked("k1"));
        let key = then.state().key("k1");
        assert_eq!(key.revoked_at.as_deref(), Some(at(2).as_str()));
        // It is still the key's last key event (freshness checks compare with it).
        assert_eq!(key.log_seq, 3);
    }

    #[test]
    fn uses_move_last_used_at_forward_only() {
        let history = [
            created("k1", Some("acme")),
            used("k1", "2026-09-21T10:05:00Z"),
        ];
        let then = given::<Keys>(&history).when(used("k1", "2026-09-21T10:07:00Z"));
        then.then_replay_changes_nothing();
        let key = then.state().key("k1");
        assert_eq!(
            key.last_used_at.as_deref(),
            Some("2026-09-21T10:07:00.000000Z")
        );
        assert_eq!(key.log_seq, 1, "a use is not a key event");
        // An older minute delivered late, and the same minute again, change nothing.
        given::<Keys>(&history)
            .when(used("k1", "2026-09-21T10:03:00Z"))
            .then_unchanged();
        given::<Keys>(&history)
            .when(used("k1", "2026-09-21T10:05:00Z"))
            .then_unchanged();
    }

    #[test]
    fn a_use_logged_after_the_revocation_still_counts() {
        let then = given::<Keys>(&[created("k1", Some("acme")), revoked("k1")])
            .when(used("k1", "2026-09-21T10:05:00Z"));
        let key = then.state().key("k1");
        assert!(key.revoked_at.is_some());
        assert!(key.last_used_at.is_some());
    }

    #[test]
    fn events_for_unknown_keys_change_nothing() {
        given::<Keys>(&[created("k1", Some("acme"))])
            .when(revoked("k2"))
            .then_unchanged();
        given::<Keys>(&[created("k1", Some("acme"))])
            .when(used("k2", "2026-09-21T10:05:00Z"))
            .then_unchanged();
        assert_eq!(
            next_key(None, &revoked("k2"), &crate::views::spec::meta(1, "acme")),
            None
        );
    }

    #[test]
    fn other_events_are_ignored() {
        let other = WorkspaceCreated {
            slug: Slug::parse("acme").unwrap(),
            name: "Acme".into(),
        }
        .into_event();
        assert_eq!(key_of(&other), None);
        given::<Keys>(&[created("k1", Some("acme"))])
            .when(other)
            .then_unchanged();
    }
}
