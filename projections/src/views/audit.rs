//! The audit log: one chain per workspace (global operator actions use the workspace
//! ""), built in log order so a rebuild yields identical hashes.
//!
//! Each entry's `hash` is HMAC-SHA256 (keyed with `AUDIT_SIGNING_KEY`) over a
//! canonical encoding of the entry, which includes the previous entry's hash.
//! Someone who can write the read-model database but does not hold the key cannot
//! re-chain entries after an edit or a deletion; and [`verify_with_log`] rebuilds
//! the expected chain from the log (the source of truth) and compares it with the
//! stored one, which also catches a truncated chain whose head was rewritten.
//! Without a key the chain falls back to plain SHA-256 (development only).

use std::sync::Arc;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Row};
use wabridge_events::{DomainEvent, EventLog, ReadFrom, StoredEvent, StreamKind};

use crate::{Projection, Store};

/// The `audit` projection.
#[derive(Clone, Default)]
pub struct Audit {
    key: Option<Arc<SecretString>>,
}

impl Audit {
    /// The projection keyed with `AUDIT_SIGNING_KEY` (`None`: unkeyed SHA-256).
    pub fn new(key: Option<&SecretString>) -> Self {
        Audit {
            key: key.map(|k| Arc::new(k.clone())),
        }
    }

    fn key(&self) -> Option<&[u8]> {
        self.key.as_deref().map(|k| k.expose_secret().as_bytes())
    }
}

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
    /// HMAC-SHA256 (or SHA-256 without a key) of this entry's canonical encoding.
    pub hash: String,
}

/// The chain head and retention boundary of a workspace.
#[derive(Clone, Debug, PartialEq)]
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

impl Default for AuditHead {
    fn default() -> Self {
        AuditHead {
            seq: 0,
            hash: GENESIS.into(),
            cut_through: 0,
            cut_hash: GENESIS.into(),
            cut_signature: None,
        }
    }
}

/// The canonical encoding that is hashed: a JSON array of the fields, keyed with the
/// audit signing key when there is one.
pub fn entry_hash(key: Option<&[u8]>, workspace: &str, e: &AuditEntry) -> String {
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
    ])
    .to_string();
    match key {
        Some(k) => {
            let mut mac = Hmac::<Sha256>::new_from_slice(k).expect("any key length");
            mac.update(canonical.as_bytes());
            hex::encode(mac.finalize().into_bytes())
        }
        None => hex::encode(Sha256::digest(canonical.as_bytes())),
    }
}

/// The target and outcome an event contributes to the audit log, if any.
pub fn describe(event: &DomainEvent) -> Option<(String, &'static str)> {
    use wabridge_events::types::ConsentSourceKind as K;
    use DomainEvent as E;
    let manual = |k: K| matches!(k, K::Api | K::Admin);
    let target = match event {
        // Consent changes made by a person (the automatic ones are in the history).
        E::ContactOptedOut(o) if manual(o.source.kind) => {
            format!("contact:{} opt_out:{}", o.contact.key(), o.scope.as_str())
        }
        E::ContactOptedIn(o) if manual(o.source.kind) => {
            format!("contact:{} opt_in:{}", o.contact.key(), o.scope.as_str())
        }
        E::OptoutSuspicionResolved(r) => format!("suspected_opt_out:{} {}", r.id, r.outcome),
        E::ConsentKeywordsSet(k) => format!("consent:keywords ({})", k.keywords.len()),
        E::ConsentSettingsSet(s) => format!(
            "consent:settings suspected_automatic={} confirmations={}",
            s.suspected_automatic,
            s.confirmations.len()
        ),
        E::RateLimitSet(p) => format!("rate_limit: {}/s burst {}", p.requests_per_second, p.burst),
        E::WorkspaceCreated(w) => format!("workspace:{}", w.slug),
        E::ApiKeyCreated(k) => format!("api_key:{} role:{}", k.key_id, k.role),
        E::ApiKeyRevoked(k) => format!("api_key:{}", k.key_id),
        E::PhoneNumberClaimed(p) => format!("phone_number:{}", p.phone_number_id),
        E::PhoneNumberReleased(p) => format!("phone_number:{}", p.phone_number_id),
        E::WabaAssigned(w) => format!("waba:{}", w.waba_id),
        E::UnroutedAssigned(u) => format!("phone_number:{} items:{}", u.phone_number_id, u.items),
        E::TokenStored(t) => format!("token:{}", t.phone_number_id),
        E::TokenRewrapped(t) => format!("token:{} key:{}", t.phone_number_id, t.sealed.key_version),
        E::TokenRevoked(t) => format!("token:{}", t.phone_number_id),
        E::TokenInvalidated(t) => format!("token:{}", t.phone_number_id),
        E::OnboardingStarted(o) => format!(
            "onboarding:{} waba:{} number:{}",
            o.id, o.waba_id, o.phone_number_id
        ),
        E::OnboardingStepStarted(s) => {
            format!(
                "onboarding:{} {} attempt {}",
                s.id,
                s.step.as_str(),
                s.attempt
            )
        }
        E::OnboardingStepSucceeded(s) => {
            format!(
                "onboarding:{} {} attempt {}",
                s.id,
                s.step.as_str(),
                s.attempt
            )
        }
        E::OnboardingStepFailed(f) => {
            let code = f
                .error
                .code
                .map(|c| format!(" (Meta {c})"))
                .unwrap_or_default();
            return Some((
                format!(
                    "onboarding:{} {} attempt {}{code}{}",
                    f.id,
                    f.step.as_str(),
                    f.attempt,
                    if f.retry_at.is_some() {
                        ", retrying"
                    } else {
                        ""
                    }
                ),
                "failed",
            ));
        }
        E::OnboardingCompleted(c) => format!("onboarding:{}", c.id),
        E::OnboardingFailed(f) => {
            return Some((
                format!("onboarding:{} {}: {}", f.id, f.step.as_str(), f.reason),
                "failed",
            ))
        }
        E::EndpointCreated(e) => format!("endpoint:{} url:{}", e.endpoint_id, e.url),
        E::EndpointUpdated(e) => format!(
            "endpoint:{} url:{} {}",
            e.endpoint_id,
            e.url,
            if e.enabled { "enabled" } else { "paused" }
        ),
        E::EndpointSecretRotated(e) => format!("endpoint:{} secret", e.endpoint_id),
        E::EndpointSecretRewrapped(e) => {
            format!("endpoint:{} key:{}", e.endpoint_id, e.secret.key_version)
        }
        E::EndpointDisabled(e) => {
            return Some((
                format!(
                    "endpoint:{} disabled: {} ({})",
                    e.endpoint_id, e.reason, e.detail
                ),
                "failed",
            ))
        }
        E::EndpointDeleted(e) => format!("endpoint:{}", e.endpoint_id),
        E::EndpointRecoveryRequested(e) => {
            format!("endpoint:{} since:{}", e.endpoint_id, e.since)
        }
        E::DeliveryRedeliveryRequested(e) => {
            format!("endpoint:{} delivery:{}", e.endpoint_id, e.delivery_id)
        }
        E::ProjectionRebuildRequested(r) => format!(
            "projection:{}{}{}",
            r.name,
            r.from
                .as_deref()
                .map(|f| format!(" from {f}"))
                .unwrap_or_default(),
            if r.dry_run { " (dry run)" } else { "" }
        ),
        E::ProjectionRebuildFinished(r) => {
            return Some((
                format!(
                    "projection:{}{} {}: {}",
                    r.name,
                    if r.dry_run { " (dry run)" } else { "" },
                    r.outcome,
                    r.detail
                ),
                if r.outcome == "failed" {
                    "failed"
                } else {
                    "ok"
                },
            ))
        }
        E::DeadLetterRedriven(x) => format!("dead_letter:{}", x.id),
        E::DeadLetterDiscarded(x) => format!("dead_letter:{}", x.id),
        E::AuditRetentionCut(c) => format!("audit:through:{}", c.through_seq),
        E::AccessDenied(a) => {
            let target = match &a.path {
                Some(path) => format!("{path} (another workspace's resource; {})", a.route),
                None => format!("{} needs {}", a.route, a.permission),
            };
            return Some((target, "denied"));
        }
        E::AuthFailuresSummarised(a) => {
            return Some((format!("{}:{} x{}", a.kind, a.source, a.count), "denied"))
        }
        _ => return None,
    };
    Some((target, "ok"))
}

/// What one event does to a chain.
#[derive(Clone, Debug, PartialEq)]
pub struct ChainStep {
    /// The new entry.
    pub entry: AuditEntry,
    /// Entries up to this seq leave the view (a retention cut).
    pub cut_through: Option<i64>,
}

/// The chain's next step for an event (the projection's decision, pure): `None` when
/// the event is not audited. Moves `head` forward.
pub fn step(
    key: Option<&[u8]>,
    workspace: &str,
    head: &mut AuditHead,
    event: &StoredEvent,
    decoded: &DomainEvent,
) -> Option<ChainStep> {
    let (target, outcome) = describe(decoded)?;
    let mut cut_through = None;
    if let DomainEvent::AuditRetentionCut(cut) = decoded {
        let through = (cut.through_seq as i64).min(head.seq);
        if through > head.cut_through {
            head.cut_through = through;
            head.cut_hash = cut.boundary_hash.clone();
            head.cut_signature = cut.signature.clone();
            cut_through = Some(through);
        }
    }
    let mut entry = AuditEntry {
        seq: head.seq + 1,
        at: event.envelope.recorded_at.to_string(),
        actor: event.envelope.actor.render(),
        action: event.envelope.event_type.clone(),
        target,
        outcome: outcome.to_string(),
        ip: event.envelope.source_ip.clone(),
        prev_hash: head.hash.clone(),
        hash: String::new(),
    };
    entry.hash = entry_hash(key, workspace, &entry);
    head.seq = entry.seq;
    head.hash = entry.hash.clone();
    Some(ChainStep { entry, cut_through })
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
    fn tables(&self) -> &'static [&'static str] {
        &["audit_entries", "audit_heads"]
    }
    fn dump_sql(&self) -> &'static str {
        "SELECT workspace || '|' || CAST(seq AS TEXT) || '|' || at || '|' || actor || '|' || action || '|' || target || '|' || outcome || '|' || COALESCE(ip, '') || '|' || prev_hash || '|' || hash FROM audit_entries \
         UNION ALL SELECT 'head|' || workspace || '|' || CAST(seq AS TEXT) || '|' || hash || '|' || CAST(cut_through AS TEXT) || '|' || cut_hash || '|' || COALESCE(cut_signature, '') FROM audit_heads ORDER BY 1"
    }
    async fn apply(&self, conn: &mut AnyConnection, event: &StoredEvent) -> anyhow::Result<()> {
        let decoded = super::decode(event)?;
        if describe(decoded).is_none() {
            return Ok(());
        }
        let ws = super::ws_of(event);
        let mut h = head(&mut *conn, &ws).await?.unwrap_or_default();
        let Some(step) = step(self.key(), &ws, &mut h, event, decoded) else {
            return Ok(());
        };
        if let Some(through) = step.cut_through {
            cut(&mut *conn, &ws, through).await?;
        }
        let entry = step.entry;
        sqlx::query(&format!("INSERT INTO audit_entries ({ENTRY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"))
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
        sqlx::query(&format!(
            "INSERT INTO audit_heads ({HEAD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) {HEAD_CONFLICT}"
        ))
            .bind(&ws)
            .bind(h.seq)
            .bind(&h.hash)
            .bind(h.cut_through)
            .bind(&h.cut_hash)
            .bind(&h.cut_signature)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// The batch folded in memory: each workspace's head loaded once, the chain
    /// stepped in log order, the entries and the heads each written in one
    /// statement (a retention cut writes what came before it, then deletes).
    async fn apply_batch(
        &self,
        conn: &mut AnyConnection,
        events: &[StoredEvent],
    ) -> anyhow::Result<()> {
        let mut heads: std::collections::BTreeMap<String, (AuditHead, bool)> = Default::default();
        let mut entries: Vec<serde_json::Value> = vec![];
        for event in events {
            let decoded = super::decode(event)?;
            if describe(decoded).is_none() {
                continue;
            }
            let ws = super::ws_of(event);
            let (h, touched) = match heads.entry(ws.clone()) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let h = head(&mut *conn, &ws).await?.unwrap_or_default();
                    e.insert((h, false))
                }
            };
            let Some(step) = step(self.key(), &ws, h, event, decoded) else {
                continue;
            };
            *touched = true;
            if let Some(through) = step.cut_through {
                write_entries(&mut *conn, std::mem::take(&mut entries)).await?;
                cut(&mut *conn, &ws, through).await?;
            }
            let e = step.entry;
            entries.push(serde_json::json!([
                ws,
                e.seq,
                e.at,
                e.actor,
                e.action,
                e.target,
                e.outcome,
                e.ip,
                e.prev_hash,
                e.hash,
                event.seq as i64
            ]));
        }
        write_entries(&mut *conn, entries).await?;
        let rows: Vec<serde_json::Value> = heads
            .iter()
            .filter(|(_, (_, touched))| *touched)
            .map(|(ws, (h, _))| {
                serde_json::json!([
                    ws,
                    h.seq,
                    h.hash,
                    h.cut_through,
                    h.cut_hash,
                    h.cut_signature
                ])
            })
            .collect();
        use crate::batch::Col::{Int, Text};
        crate::batch::insert_rows(
            conn,
            &format!("INSERT INTO audit_heads ({HEAD_COLUMNS})"),
            &[Text, Int, Text, Int, Text, Text],
            HEAD_CONFLICT,
            &rows,
        )
        .await
    }
}

const ENTRY_COLUMNS: &str =
    "workspace, seq, at, actor, action, target, outcome, ip, prev_hash, hash, log_seq";
const HEAD_COLUMNS: &str = "workspace, seq, hash, cut_through, cut_hash, cut_signature";
const HEAD_CONFLICT: &str = "ON CONFLICT (workspace) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, cut_through = excluded.cut_through, cut_hash = excluded.cut_hash, cut_signature = excluded.cut_signature";

/// A retention cut: a workspace's entries up to `through` leave the view.
async fn cut(conn: &mut AnyConnection, ws: &str, through: i64) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM audit_entries WHERE workspace = $1 AND seq <= $2")
        .bind(ws)
        .bind(through)
        .execute(conn)
        .await?;
    Ok(())
}

/// Entries (as JSON rows in [`ENTRY_COLUMNS`] order) in one statement.
async fn write_entries(
    conn: &mut AnyConnection,
    entries: Vec<serde_json::Value>,
) -> anyhow::Result<()> {
    use crate::batch::Col::{Int, Text};
    crate::batch::insert_rows(
        conn,
        &format!("INSERT INTO audit_entries ({ENTRY_COLUMNS})"),
        &[
            Text, Int, Text, Text, Text, Text, Text, Text, Text, Text, Int,
        ],
        "",
        &entries,
    )
    .await
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

const COLUMNS: &str = "seq, at, actor, action, target, outcome, ip, prev_hash, hash";

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
    let sql = format!(
        "SELECT {COLUMNS} FROM audit_entries \
         WHERE workspace = $1 AND ($2 = '' OR actor = $2) AND ($3 = '' OR action = $3) AND ($4 = '' OR at >= $4) AND ($5 = '' OR at < $5) AND seq < $6 \
         ORDER BY seq DESC LIMIT $7"
    );
    let rows = sqlx::query(&sql)
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
    let sql = format!("SELECT {COLUMNS} FROM audit_entries WHERE workspace = $1 AND at >= $2 AND seq > $3 ORDER BY seq LIMIT $4");
    let rows = sqlx::query(&sql)
        .bind(ws)
        .bind(since)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&store.reads)
        .await?;
    Ok(rows.into_iter().map(row).collect())
}

/// Stored entries in chain order from `from_seq`, a page at a time.
async fn page(store: &Store, ws: &str, from_seq: i64) -> anyhow::Result<Vec<AuditEntry>> {
    let sql = format!("SELECT {COLUMNS} FROM audit_entries WHERE workspace = $1 AND seq >= $2 ORDER BY seq LIMIT 1000");
    let rows = sqlx::query(&sql)
        .bind(ws)
        .bind(from_seq)
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
    /// What does not match, when something does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Verification {
    fn bad(entries_checked: u64, seq: i64, reason: impl Into<String>) -> Self {
        Verification {
            ok: false,
            entries_checked,
            first_bad_seq: Some(seq),
            reason: Some(reason.into()),
        }
    }
}

/// Stored entries in chain order, a page at a time.
struct Pager<'a> {
    store: &'a Store,
    ws: &'a str,
    next_from: i64,
    buf: std::collections::VecDeque<AuditEntry>,
}

impl Pager<'_> {
    async fn next(&mut self) -> anyhow::Result<Option<AuditEntry>> {
        if self.buf.is_empty() {
            self.buf = page(self.store, self.ws, self.next_from).await?.into();
            if let Some(last) = self.buf.back() {
                self.next_from = last.seq + 1;
            }
        }
        Ok(self.buf.pop_front())
    }
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

/// Recomputes the stored chain from the retention boundary to the head with the key:
/// each entry's hash, each link, contiguous seqs, and that the last entry is the head.
pub async fn verify(
    store: &Store,
    key: Option<&SecretString>,
    ws: &str,
) -> anyhow::Result<Verification> {
    let key = key.map(|k| k.expose_secret().as_bytes());
    let Some(h) = get_head(store, ws).await? else {
        return Ok(Verification {
            ok: true,
            entries_checked: 0,
            first_bad_seq: None,
            reason: None,
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
        let rows = page(store, ws, expected_seq).await?;
        if rows.is_empty() {
            break;
        }
        for e in rows {
            checked += 1;
            if e.seq != expected_seq {
                return Ok(Verification::bad(
                    checked,
                    expected_seq,
                    "an entry is missing",
                ));
            }
            if e.prev_hash != prev {
                return Ok(Verification::bad(
                    checked,
                    e.seq,
                    "the link to the previous entry is broken",
                ));
            }
            if entry_hash(key, ws, &e) != e.hash {
                return Ok(Verification::bad(
                    checked,
                    e.seq,
                    "the entry does not match its hash",
                ));
            }
            prev = e.hash.clone();
            expected_seq += 1;
        }
    }
    if expected_seq - 1 != h.seq || prev != h.hash {
        return Ok(Verification::bad(
            checked,
            expected_seq,
            "the chain does not end at its head",
        ));
    }
    Ok(Verification {
        ok: true,
        entries_checked: checked,
        first_bad_seq: None,
        reason: None,
    })
}

/// Rebuilds the chain of `ws` from the log (every domain event up to `through`, the
/// audit projection's checkpoint) and compares it with the stored entries and head:
/// an entry edited, deleted, added or cut away without a logged retention cut is
/// reported, whatever was done to the stored hashes.
pub async fn verify_with_log(
    store: &Store,
    log: &dyn EventLog,
    key: Option<&SecretString>,
    ws: &str,
    through: u64,
) -> anyhow::Result<Verification> {
    let key = key.map(|k| k.expose_secret().as_bytes());
    let mut head = AuditHead::default();
    let mut expected: std::collections::VecDeque<AuditEntry> = Default::default();
    let mut from = 1;
    'read: while from <= through {
        let batch = log
            .read(StreamKind::Domain, ReadFrom::Seq(from), None, 1000)
            .await?;
        let Some(last) = batch.last().map(|e| e.seq) else {
            break;
        };
        for event in &batch {
            if event.seq > through {
                break 'read;
            }
            if super::ws_of(event) != ws {
                continue;
            }
            // The projection dead-letters what does not decode; so does this fold.
            let Ok(decoded) = super::decode(event) else {
                continue;
            };
            if let Some(s) = step(key, ws, &mut head, event, decoded) {
                if let Some(cut) = s.cut_through {
                    while expected.front().is_some_and(|e| e.seq <= cut) {
                        expected.pop_front();
                    }
                }
                expected.push_back(s.entry);
            }
        }
        from = last + 1;
    }
    let stored_head = get_head(store, ws).await?;
    let mut stored = Pager {
        store,
        ws,
        next_from: head.cut_through + 1,
        buf: Default::default(),
    };
    let mut checked = 0u64;
    for want in &expected {
        checked += 1;
        match stored.next().await? {
            Some(got) if got == *want => {}
            Some(got) if got.seq == want.seq => {
                return Ok(Verification::bad(
                    checked,
                    want.seq,
                    "the stored entry differs from the log",
                ))
            }
            _ => {
                return Ok(Verification::bad(
                    checked,
                    want.seq,
                    "an entry of the log is missing from the stored chain",
                ))
            }
        }
    }
    if stored.next().await?.is_some() {
        return Ok(Verification::bad(
            checked,
            head.seq + 1,
            "the stored chain has entries the log does not",
        ));
    }
    let head_matches = match &stored_head {
        None => head.seq == 0,
        Some(h) => *h == head,
    };
    if !head_matches {
        return Ok(Verification::bad(
            checked,
            head.seq,
            "the stored chain head differs from the log",
        ));
    }
    Ok(Verification {
        ok: true,
        entries_checked: checked,
        first_bad_seq: None,
        reason: None,
    })
}

/// The newest entry recorded before `cutoff` (the candidate retention boundary).
pub async fn last_before(
    store: &Store,
    ws: &str,
    cutoff: &str,
) -> anyhow::Result<Option<AuditEntry>> {
    let sql = format!("SELECT {COLUMNS} FROM audit_entries WHERE workspace = $1 AND at < $2 ORDER BY seq DESC LIMIT 1");
    let r = sqlx::query(&sql)
        .bind(ws)
        .bind(cutoff)
        .fetch_optional(&store.reads)
        .await?;
    Ok(r.map(row))
}

#[cfg(test)]
mod tests {
    use wabridge_events::{
        types::{new_event, ApiKeyRevoked, AuditRetentionCut, PhoneNumberClaimed},
        Actor, Namespace, Slug, Timestamp,
    };

    use super::*;

    fn stored(seq: u64, new: wabridge_events::NewEvent) -> StoredEvent {
        StoredEvent {
            stream: StreamKind::Domain,
            seq,
            subject: new.subject,
            envelope: new.envelope,
            payload: new.payload,
            decoded: Default::default(),
        }
    }

    fn event<T: wabridge_events::types::EventData>(seq: u64, data: &T) -> StoredEvent {
        let ws = Slug::parse("acme").unwrap();
        stored(
            seq,
            new_event(&Namespace::default(), Some(ws), Actor::cli("t"), data),
        )
    }

    fn run(key: Option<&[u8]>, events: &[StoredEvent]) -> (AuditHead, Vec<ChainStep>) {
        let mut head = AuditHead::default();
        let steps = events
            .iter()
            .filter_map(|e| step(key, "acme", &mut head, e, super::super::decode(e).unwrap()))
            .collect();
        (head, steps)
    }

    #[test]
    fn entries_chain_and_the_key_changes_every_hash() {
        let revoke = event(
            1,
            &ApiKeyRevoked {
                key_id: "k1".into(),
            },
        );
        let claim = event(
            2,
            &PhoneNumberClaimed {
                phone_number_id: "1".into(),
                waba_id: "2".into(),
                display_phone_number: "3".into(),
            },
        );
        let (head, steps) = run(Some(b"key"), &[revoke.clone(), claim.clone()]);
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].entry.prev_hash, GENESIS);
        assert_eq!(steps[1].entry.prev_hash, steps[0].entry.hash);
        assert_eq!(
            (head.seq, head.hash.as_str()),
            (2, steps[1].entry.hash.as_str())
        );
        assert_eq!(steps[0].entry.target, "api_key:k1");
        assert_eq!(steps[1].entry.action, "phone_number.claimed");
        // Another key (or none) gives other hashes for the same entries: a database
        // writer without the key cannot re-chain.
        let (_, other) = run(Some(b"other"), &[revoke.clone(), claim.clone()]);
        let (_, plain) = run(None, &[revoke, claim]);
        assert_ne!(other[0].entry.hash, steps[0].entry.hash);
        assert_ne!(plain[0].entry.hash, steps[0].entry.hash);
        assert_eq!(
            entry_hash(Some(b"key"), "acme", &steps[0].entry),
            steps[0].entry.hash
        );
    }

    #[test]
    fn unaudited_events_add_nothing_and_a_cut_moves_the_boundary() {
        let used = event(
            1,
            &wabridge_events::types::ApiKeyUsed {
                key_id: "k".into(),
                minute: Timestamp::now(),
            },
        );
        let a = event(2, &ApiKeyRevoked { key_id: "a".into() });
        let b = event(3, &ApiKeyRevoked { key_id: "b".into() });
        let (_, steps) = run(None, &[used.clone(), a.clone(), b.clone()]);
        assert_eq!(steps.len(), 2);
        let cut = event(
            4,
            &AuditRetentionCut {
                through_seq: 1,
                boundary_hash: steps[0].entry.hash.clone(),
                cutoff: Timestamp::now(),
                signature: None,
            },
        );
        let (head, steps) = run(None, &[used, a, b, cut]);
        assert_eq!(steps[2].cut_through, Some(1));
        assert_eq!((head.cut_through, head.seq), (1, 3));
        assert_eq!(head.cut_hash, steps[0].entry.hash);
    }
}
