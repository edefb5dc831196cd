//! The audit log: one hash chain per workspace (global operator actions use the
//! workspace ""), built in log order so a rebuild yields identical hashes.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Row};
use wabridge_events::{DomainEvent, StoredEvent};

use crate::{Projection, Store};

/// The `audit` projection.
pub struct Audit;

/// The `prev_hash` of a workspace's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit entry.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct AuditEntry {
    /// Contiguous per-workspace sequence.
    pub seq: i64,
    /// When (log time).
    pub at: String,
    /// `kind:id` of the actor.
    pub actor: String,
    /// The action (the event type).
    pub action: String,
    /// What it acted on.
    pub target: String,
    /// `ok` or `denied`.
    pub outcome: String,
    /// Client address, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Hash of the previous entry.
    pub prev_hash: String,
    /// SHA-256 of this entry's canonical encoding.
    pub hash: String,
}

/// The chain head and retention boundary of a workspace.
#[derive(Clone, Debug)]
pub struct AuditHead {
    /// Last seq.
    pub seq: i64,
    /// Last hash.
    pub hash: String,
    /// Entries up to this seq were cut by retention.
    pub cut_through: i64,
    /// The hash at the cut (the next entry's prev_hash).
    pub cut_hash: String,
    /// HMAC of the cut, when signed.
    pub cut_signature: Option<String>,
}

/// The canonical encoding that is hashed: a JSON array of the fields.
pub fn entry_hash(workspace: &str, e: &AuditEntry) -> String {
    let canonical = serde_json::json!([
        workspace,
        e.seq,
        e.at,
        e.actor,
        e.action,
        e.target,
        e.outcome,
        e.ip,
        e.prev_hash
    ]);
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

/// The action, target and outcome an event contributes to the audit log, if any.
fn describe(event: &DomainEvent) -> Option<(String, &'static str)> {
    use DomainEvent as E;
    let target = match event {
        E::WorkspaceCreated(w) => format!("workspace:{}", w.slug),
        E::ApiKeyCreated(k) => format!("api_key:{} role:{}", k.key_id, k.role),
        E::ApiKeyRevoked(k) => format!("api_key:{}", k.key_id),
        E::PhoneNumberClaimed(p) => format!("phone_number:{}", p.phone_number_id),
        E::PhoneNumberReleased(p) => format!("phone_number:{}", p.phone_number_id),
        E::UnroutedAssigned(u) => format!("phone_number:{} items:{}", u.phone_number_id, u.items),
        E::TokenStored(t) => format!("token:{}", t.phone_number_id),
        E::TokenRewrapped(t) => format!("token:{} key:{}", t.phone_number_id, t.sealed.key_version),
        E::TokenRevoked(t) => format!("token:{}", t.phone_number_id),
        E::TokenInvalidated(t) => format!("token:{}", t.phone_number_id),
        E::DeadLetterRedriven(x) => format!("dead_letter:{}", x.id),
        E::DeadLetterDiscarded(x) => format!("dead_letter:{}", x.id),
        E::AuditRetentionCut(c) => format!("audit:through:{}", c.through_seq),
        E::AccessDenied(a) => {
            return Some((format!("{} needs {}", a.route, a.permission), "denied"))
        }
        E::AuthFailuresSummarised(a) => {
            return Some((format!("{}:{} x{}", a.kind, a.source, a.count), "denied"))
        }
        _ => return None,
    };
    Some((target, "ok"))
}

async fn head(conn: &mut AnyConnection, ws: &str) -> anyhow::Result<Option<AuditHead>> {
    let r = sqlx::query("SELECT seq, hash, cut_through, cut_hash, cut_signature FROM audit_heads WHERE workspace = $1")
        .bind(ws)
        .fetch_optional(conn)
        .await?;
    Ok(r.map(|r| AuditHead {
        seq: r.get(0),
        hash: r.get(1),
        cut_through: r.get(2),
        cut_hash: r.get(3),
        cut_signature: r.get(4),
    }))
}

#[async_trait::async_trait]
impl Projection for Audit {
    fn name(&self) -> &'static str {
        "audit"
    }
    fn dump_sql(&self) -> &'static str {
        "SELECT workspace || '|' || CAST(seq AS TEXT) || '|' || at || '|' || actor || '|' || action || '|' || target || '|' || outcome || '|' || COALESCE(ip, '') || '|' || prev_hash || '|' || hash FROM audit_entries \
         UNION ALL SELECT 'head|' || workspace || '|' || CAST(seq AS TEXT) || '|' || hash || '|' || CAST(cut_through AS TEXT) || '|' || cut_hash || '|' || COALESCE(cut_signature, '') FROM audit_heads ORDER BY 1"
    }
    async fn apply(&self, conn: &mut AnyConnection, event: &StoredEvent) -> anyhow::Result<()> {
        let decoded = super::decode(event)?;
        let Some((target, outcome)) = describe(&decoded) else {
            return Ok(());
        };
        let ws = super::ws_of(event);
        let mut h = head(&mut *conn, &ws).await?.unwrap_or(AuditHead {
            seq: 0,
            hash: GENESIS.into(),
            cut_through: 0,
            cut_hash: GENESIS.into(),
            cut_signature: None,
        });
        if let DomainEvent::AuditRetentionCut(cut) = &decoded {
            let through = (cut.through_seq as i64).min(h.seq);
            if through > h.cut_through {
                sqlx::query("DELETE FROM audit_entries WHERE workspace = $1 AND seq <= $2")
                    .bind(&ws)
                    .bind(through)
                    .execute(&mut *conn)
                    .await?;
                h.cut_through = through;
                h.cut_hash = cut.boundary_hash.clone();
                h.cut_signature = cut.signature.clone();
            }
        }
        let mut entry = AuditEntry {
            seq: h.seq + 1,
            at: event.envelope.recorded_at.to_string(),
            actor: event.envelope.actor.render(),
            action: event.envelope.event_type.clone(),
            target,
            outcome: outcome.to_string(),
            ip: event.envelope.source_ip.clone(),
            prev_hash: h.hash.clone(),
            hash: String::new(),
        };
        entry.hash = entry_hash(&ws, &entry);
        sqlx::query("INSERT INTO audit_entries (workspace, seq, at, actor, action, target, outcome, ip, prev_hash, hash, log_seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
            .bind(&ws)
            .bind(entry.seq)
            .bind(&entry.at)
            .bind(&entry.actor)
            .bind(&entry.action)
            .bind(&entry.target)
            .bind(&entry.outcome)
            .bind(&entry.ip)
            .bind(&entry.prev_hash)
            .bind(&entry.hash)
            .bind(event.seq as i64)
            .execute(&mut *conn)
            .await?;
        sqlx::query("INSERT INTO audit_heads (workspace, seq, hash, cut_through, cut_hash, cut_signature) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (workspace) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, cut_through = excluded.cut_through, cut_hash = excluded.cut_hash, cut_signature = excluded.cut_signature")
            .bind(&ws)
            .bind(entry.seq)
            .bind(&entry.hash)
            .bind(h.cut_through)
            .bind(&h.cut_hash)
            .bind(&h.cut_signature)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

/// Filters of the audit query.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    /// Only this actor (`kind:id`).
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// At or after.
    pub since: Option<String>,
    /// Before.
    pub until: Option<String>,
    /// Entries with a seq below this (newest first paging).
    pub before_seq: Option<i64>,
    /// Page size.
    pub limit: i64,
}

fn row(r: sqlx::any::AnyRow) -> AuditEntry {
    AuditEntry {
        seq: r.get(0),
        at: r.get(1),
        actor: r.get(2),
        action: r.get(3),
        target: r.get(4),
        outcome: r.get(5),
        ip: r.get(6),
        prev_hash: r.get(7),
        hash: r.get(8),
    }
}

/// A workspace's entries, newest first.
pub async fn query(store: &Store, ws: &str, q: &AuditQuery) -> anyhow::Result<Vec<AuditEntry>> {
    let rows = sqlx::query(
        "SELECT seq, at, actor, action, target, outcome, ip, prev_hash, hash FROM audit_entries \
         WHERE workspace = $1 AND ($2 = '' OR actor = $2) AND ($3 = '' OR action = $3) AND ($4 = '' OR at >= $4) AND ($5 = '' OR at < $5) AND seq < $6 \
         ORDER BY seq DESC LIMIT $7",
    )
    .bind(ws)
    .bind(q.actor.clone().unwrap_or_default())
    .bind(q.action.clone().unwrap_or_default())
    .bind(q.since.clone().unwrap_or_default())
    .bind(q.until.clone().unwrap_or_default())
    .bind(q.before_seq.unwrap_or(i64::MAX))
    .bind(q.limit)
    .fetch_all(&store.reads)
    .await?;
    Ok(rows.into_iter().map(row).collect())
}

/// Entries in chain order with `at` at or after `since` (for export).
pub async fn export(
    store: &Store,
    ws: &str,
    since: &str,
    after_seq: i64,
    limit: i64,
) -> anyhow::Result<Vec<AuditEntry>> {
    let rows = sqlx::query("SELECT seq, at, actor, action, target, outcome, ip, prev_hash, hash FROM audit_entries WHERE workspace = $1 AND at >= $2 AND seq > $3 ORDER BY seq LIMIT $4")
        .bind(ws)
        .bind(since)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&store.reads)
        .await?;
    Ok(rows.into_iter().map(row).collect())
}

/// The result of a chain verification.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Verification {
    /// True when every entry matches.
    pub ok: bool,
    /// How many entries were checked.
    pub entries_checked: u64,
    /// The first entry (or expected seq) that does not match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_seq: Option<i64>,
}

/// The chain head of a workspace.
pub async fn get_head(store: &Store, ws: &str) -> anyhow::Result<Option<AuditHead>> {
    let mut conn = store.reads.acquire().await?;
    head(&mut conn, ws).await
}

/// Every workspace that has an audit chain ("" is the global chain).
pub async fn chains(store: &Store) -> anyhow::Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT workspace FROM audit_heads ORDER BY workspace")
            .fetch_all(&store.reads)
            .await?,
    )
}

/// Recomputes the chain from the retention boundary to the head: each entry's hash,
/// each link, contiguous seqs, and that the last entry is the head.
pub async fn verify(store: &Store, ws: &str) -> anyhow::Result<Verification> {
    let Some(h) = get_head(store, ws).await? else {
        return Ok(Verification {
            ok: true,
            entries_checked: 0,
            first_bad_seq: None,
        });
    };
    let mut expected_seq = h.cut_through + 1;
    let mut prev = if h.cut_through == 0 {
        GENESIS.to_string()
    } else {
        h.cut_hash.clone()
    };
    let mut checked = 0u64;
    loop {
        let rows = sqlx::query("SELECT seq, at, actor, action, target, outcome, ip, prev_hash, hash FROM audit_entries WHERE workspace = $1 AND seq >= $2 ORDER BY seq LIMIT 1000")
            .bind(ws)
            .bind(expected_seq)
            .fetch_all(&store.reads)
            .await?;
        if rows.is_empty() {
            break;
        }
        for e in rows.into_iter().map(row) {
            checked += 1;
            if e.seq != expected_seq || e.prev_hash != prev || entry_hash(ws, &e) != e.hash {
                let bad = if e.seq != expected_seq {
                    expected_seq
                } else {
                    e.seq
                };
                return Ok(Verification {
                    ok: false,
                    entries_checked: checked,
                    first_bad_seq: Some(bad),
                });
            }
            prev = e.hash.clone();
            expected_seq += 1;
        }
    }
    if expected_seq - 1 != h.seq || prev != h.hash {
        return Ok(Verification {
            ok: false,
            entries_checked: checked,
            first_bad_seq: Some(expected_seq),
        });
    }
    Ok(Verification {
        ok: true,
        entries_checked: checked,
        first_bad_seq: None,
    })
}

/// The newest entry recorded before `cutoff` (the candidate retention boundary).
pub async fn last_before(
    store: &Store,
    ws: &str,
    cutoff: &str,
) -> anyhow::Result<Option<AuditEntry>> {
    let r = sqlx::query("SELECT seq, at, actor, action, target, outcome, ip, prev_hash, hash FROM audit_entries WHERE workspace = $1 AND at < $2 ORDER BY seq DESC LIMIT 1")
        .bind(ws)
        .bind(cutoff)
        .fetch_optional(&store.reads)
        .await?;
    Ok(r.map(row))
}
