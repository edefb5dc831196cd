//! Consent: per contact, whether it opted out of every message or of marketing only,
//! since when and why, with the full history; suspected opt-outs waiting for a
//! person; each workspace's own keywords and settings.
//!
//! A contact is named by its wa_id, its business-scoped user id, or both; the
//! projection keeps aliases (learned from every event that carries both, and from
//! user-id changes), so a STOP sent by a user id blocks a send to the phone number of
//! the same person, and the other way round. Aliases are kept per workspace.

use serde::Serialize;
use sqlx::{AnyConnection, Row};
use wabridge_events::{
    types::{ConsentKeyword, ConsentScope, ConsentSource, ContactRef},
    DomainEvent, StoredEvent,
};

use crate::{Projection, Store};

/// The `consent` projection.
pub struct Consent;

/// Whether a contact may be messaged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsentState {
    /// Opted out of every message.
    pub opted_out: bool,
    /// Opted out of marketing templates.
    pub marketing_opted_out: bool,
}

/// A change of consent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// An opt-out of a scope.
    OptOut(ConsentScope),
    /// An opt-in to a scope (`All` lifts both).
    OptIn(ConsentScope),
}

/// The state after a change (the decision, pure).
pub fn next_state(state: ConsentState, change: Change) -> ConsentState {
    match change {
        Change::OptOut(ConsentScope::All) => ConsentState {
            opted_out: true,
            ..state
        },
        Change::OptOut(ConsentScope::Marketing) => ConsentState {
            marketing_opted_out: true,
            ..state
        },
        Change::OptIn(ConsentScope::All) => ConsentState::default(),
        Change::OptIn(ConsentScope::Marketing) => ConsentState {
            marketing_opted_out: false,
            ..state
        },
    }
}

/// Since when each opt-out in effect holds, and the entry that began it: the fold
/// of a history (oldest first). A repeated STOP does not move `since`; an opt-in
/// that lifts a scope clears it.
pub fn in_effect(history: &[HistoryEntry]) -> (Option<&HistoryEntry>, Option<&HistoryEntry>) {
    let (mut all, mut marketing) = (None, None);
    for h in history {
        match (h.action.as_str(), h.scope.as_str()) {
            ("opt_out", "all") => all = all.or(Some(h)),
            ("opt_out", "marketing") => marketing = marketing.or(Some(h)),
            ("opt_in", "all") => (all, marketing) = (None, None),
            ("opt_in", "marketing") => marketing = None,
            _ => {}
        }
    }
    (all, marketing)
}

/// One entry of a contact's consent history.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct HistoryEntry {
    /// When (Meta's time, or the request's).
    pub at: String,
    /// `all` or `marketing`.
    pub scope: String,
    /// `opt_out` or `opt_in`.
    pub action: String,
    /// What caused it.
    pub source: HistorySource,
    /// A person's reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who recorded it (`system:webhook_processor`, `api_key:…`, ...).
    pub actor: String,
    /// The log sequence of the event: the proof.
    pub log_seq: i64,
}

/// The source of a history entry.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct HistorySource {
    /// `keyword`, `button`, `preference`, `delivery_error`, `api` or `admin`.
    pub kind: String,
    /// The keyword or label matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyword: Option<String>,
    /// The keyword's language.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// The message that caused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The raw stream sequence of Meta's signed webhook that carried it
    /// (`wabridge events verify-webhook --seq N` re-proves Meta sent it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_seq: Option<i64>,
}

/// A contact's consent as the API shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ContactConsent {
    /// The contact as the read model knows it (its first identifier).
    pub contact_id: Option<String>,
    /// The state.
    pub state: ConsentState,
    /// The history, oldest first.
    pub history: Vec<HistoryEntry>,
}

/// A workspace's consent configuration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConsentConfig {
    /// Its own keywords.
    pub keywords: Vec<ConsentKeyword>,
    /// Suspected opt-outs are automatic.
    pub suspected_automatic: bool,
    /// Confirmation replies (JSON of the event's list).
    pub confirmations: serde_json::Value,
}

/// A listed opt-out or suspicion.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct OptOutItem {
    /// The contact (its first identifier).
    pub contact_id: String,
    /// Every identifier known for it (wa_id, user id).
    pub identifiers: Vec<String>,
    /// Opted out of everything.
    pub opted_out: bool,
    /// Opted out of marketing.
    pub marketing_opted_out: bool,
    /// Last change.
    pub updated_at: String,
}

/// A suspected opt-out.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Suspicion {
    /// Its id (the message's wamid).
    pub id: String,
    /// The contact.
    pub contact_id: String,
    /// The message.
    pub message_id: String,
    /// Its text.
    pub text: String,
    /// What looked like an opt-out.
    pub matched: String,
    /// `open`, `confirmed` or `dismissed`.
    pub status: String,
    /// When it came.
    pub at: String,
}

pub(super) fn identifiers(c: &ContactRef) -> Vec<String> {
    [c.wa_id.clone(), c.user_id.clone()]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect()
}

/// The contact id of a set of identifiers, creating and merging aliases: the pure
/// part (given what each identifier maps to, which id wins and which merge).
pub fn choose(found: &[Option<String>], idents: &[String]) -> (String, Vec<String>) {
    let mut ids: Vec<&String> = found.iter().flatten().collect();
    ids.dedup();
    match ids.first() {
        None => (idents[0].clone(), vec![]),
        Some(first) => {
            let merged = ids[1..]
                .iter()
                .filter(|i| **i != *first)
                .map(|i| (*i).clone())
                .collect();
            ((*first).clone(), merged)
        }
    }
}

async fn alias_of(
    conn: &mut AnyConnection,
    ws: &str,
    ident: &str,
) -> anyhow::Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT contact_id FROM consent_aliases WHERE workspace = $1 AND ident = $2",
    )
    .bind(ws)
    .bind(ident)
    .fetch_optional(conn)
    .await?)
}

/// The contact id of `idents` in the workspace (creating, linking and merging).
async fn resolve(conn: &mut AnyConnection, ws: &str, idents: &[String]) -> anyhow::Result<String> {
    let mut found = Vec::with_capacity(idents.len());
    for i in idents {
        found.push(alias_of(&mut *conn, ws, i).await?);
    }
    let (id, merged) = choose(&found, idents);
    for other in &merged {
        // The same person under two ids: one contact, its state the union.
        let b = state_of(&mut *conn, ws, other).await?;
        let a = state_of(&mut *conn, ws, &id).await?;
        let union = ConsentState {
            opted_out: a.opted_out || b.opted_out,
            marketing_opted_out: a.marketing_opted_out || b.marketing_opted_out,
        };
        for sql in [
            "UPDATE consent_aliases SET contact_id = $1 WHERE workspace = $2 AND contact_id = $3",
            "UPDATE consent_history SET contact_id = $1 WHERE workspace = $2 AND contact_id = $3",
            "UPDATE consent_suspected SET contact_id = $1 WHERE workspace = $2 AND contact_id = $3",
        ] {
            sqlx::query(sql)
                .bind(&id)
                .bind(ws)
                .bind(other)
                .execute(&mut *conn)
                .await?;
        }
        sqlx::query("DELETE FROM consent_contacts WHERE workspace = $1 AND contact_id = $2")
            .bind(ws)
            .bind(other)
            .execute(&mut *conn)
            .await?;
        write_state(&mut *conn, ws, &id, union, None).await?;
    }
    for (ident, f) in idents.iter().zip(&found) {
        if f.as_deref() != Some(id.as_str()) {
            sqlx::query("INSERT INTO consent_aliases (workspace, ident, contact_id) VALUES ($1, $2, $3) ON CONFLICT (workspace, ident) DO UPDATE SET contact_id = excluded.contact_id")
                .bind(ws)
                .bind(ident)
                .bind(&id)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(id)
}

async fn state_of(conn: &mut AnyConnection, ws: &str, id: &str) -> anyhow::Result<ConsentState> {
    let r = sqlx::query("SELECT opted_out, marketing_opted_out FROM consent_contacts WHERE workspace = $1 AND contact_id = $2")
        .bind(ws)
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(r.map(|r| ConsentState {
        opted_out: r.get::<i64, _>(0) != 0,
        marketing_opted_out: r.get::<i64, _>(1) != 0,
    })
    .unwrap_or_default())
}

async fn write_state(
    conn: &mut AnyConnection,
    ws: &str,
    id: &str,
    state: ConsentState,
    at: Option<&str>,
) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO consent_contacts (workspace, contact_id, opted_out, marketing_opted_out, updated_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (workspace, contact_id) DO UPDATE SET opted_out = excluded.opted_out, marketing_opted_out = excluded.marketing_opted_out, updated_at = CASE WHEN excluded.updated_at = '' THEN consent_contacts.updated_at ELSE excluded.updated_at END")
        .bind(ws)
        .bind(id)
        .bind(state.opted_out as i64)
        .bind(state.marketing_opted_out as i64)
        .bind(at.unwrap_or(""))
        .execute(conn)
        .await?;
    Ok(())
}

/// How a history row names a change: its action, scope and source kind.
pub(super) fn history_labels(
    change: Change,
    source: &ConsentSource,
) -> anyhow::Result<(&'static str, ConsentScope, String)> {
    let (action, scope) = match change {
        Change::OptOut(s) => ("opt_out", s),
        Change::OptIn(s) => ("opt_in", s),
    };
    let kind = serde_json::to_value(source.kind)?
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok((action, scope, kind))
}

#[allow(clippy::too_many_arguments)]
async fn record_change(
    conn: &mut AnyConnection,
    event: &StoredEvent,
    contact: &ContactRef,
    change: Change,
    source: &ConsentSource,
    reason: Option<&str>,
    at: &str,
) -> anyhow::Result<()> {
    let ws = super::ws_of(event);
    let idents = identifiers(contact);
    if idents.is_empty() {
        return Ok(());
    }
    let id = resolve(&mut *conn, &ws, &idents).await?;
    let state = next_state(state_of(&mut *conn, &ws, &id).await?, change);
    write_state(&mut *conn, &ws, &id, state, Some(at)).await?;
    let (action, scope, kind) = history_labels(change, source)?;
    sqlx::query("INSERT INTO consent_history (workspace, contact_id, log_seq, at, scope, action, source_kind, keyword, language, message_id, webhook_seq, reason, actor) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT DO NOTHING")
        .bind(&ws)
        .bind(&id)
        .bind(event.seq as i64)
        .bind(at)
        .bind(scope.as_str())
        .bind(action)
        .bind(kind)
        .bind(&source.keyword)
        .bind(&source.language)
        .bind(&source.message_id)
        .bind(source.webhook_seq.map(|s| s as i64))
        .bind(reason)
        .bind(event.envelope.actor.render())
        .execute(conn)
        .await?;
    Ok(())
}

/// The event types consent cares about (most events are not: decided by type
/// before decoding).
pub(super) fn relevant(t: &str) -> bool {
    t.starts_with("contact.") || t.starts_with("consent.") || t == "message.received"
}

#[async_trait::async_trait]
impl Projection for Consent {
    fn name(&self) -> &'static str {
        "consent"
    }
    fn tables(&self) -> &'static [&'static str] {
        &[
            "consent_aliases",
            "consent_config",
            "consent_contacts",
            "consent_history",
            "consent_suspected",
        ]
    }
    fn dump_sql(&self) -> &'static str {
        "SELECT 'c|' || workspace || '|' || contact_id || '|' || CAST(opted_out AS TEXT) || '|' || CAST(marketing_opted_out AS TEXT) || '|' || updated_at FROM consent_contacts \
         UNION ALL SELECT 'a|' || workspace || '|' || ident || '|' || contact_id FROM consent_aliases \
         UNION ALL SELECT 'h|' || workspace || '|' || CAST(log_seq AS TEXT) || '|' || contact_id || '|' || at || '|' || scope || '|' || action || '|' || source_kind || '|' || COALESCE(keyword, '') || '|' || COALESCE(language, '') || '|' || COALESCE(message_id, '') || '|' || COALESCE(CAST(webhook_seq AS TEXT), '') || '|' || COALESCE(reason, '') || '|' || actor FROM consent_history \
         UNION ALL SELECT 's|' || workspace || '|' || id || '|' || contact_id || '|' || message_id || '|' || text || '|' || matched || '|' || status || '|' || at FROM consent_suspected \
         UNION ALL SELECT 'k|' || workspace || '|' || keywords || '|' || CAST(suspected_automatic AS TEXT) || '|' || confirmations FROM consent_config ORDER BY 1"
    }
    async fn apply(&self, conn: &mut AnyConnection, event: &StoredEvent) -> anyhow::Result<()> {
        let ws = super::ws_of(event);
        if super::skip(event, relevant) {
            return Ok(());
        }
        match super::decode(event)? {
            DomainEvent::ContactOptedOut(o) => {
                let change = Change::OptOut(o.scope);
                let reason = o.reason.as_deref();
                record_change(
                    conn,
                    event,
                    &o.contact,
                    change,
                    &o.source,
                    reason,
                    &o.at.to_string(),
                )
                .await?;
            }
            DomainEvent::ContactOptedIn(o) => {
                let change = Change::OptIn(o.scope);
                let reason = o.reason.as_deref();
                record_change(
                    conn,
                    event,
                    &o.contact,
                    change,
                    &o.source,
                    reason,
                    &o.at.to_string(),
                )
                .await?;
            }
            DomainEvent::ContactOptoutSuspected(s) => {
                let idents = identifiers(&s.contact);
                if idents.is_empty() {
                    return Ok(());
                }
                let id = resolve(&mut *conn, &ws, &idents).await?;
                sqlx::query("INSERT INTO consent_suspected (workspace, id, contact_id, message_id, text, matched, status, at, log_seq) VALUES ($1, $2, $3, $4, $5, $6, 'open', $7, $8) ON CONFLICT (workspace, id) DO NOTHING")
                    .bind(&ws)
                    .bind(&s.id)
                    .bind(&id)
                    .bind(&s.message_id)
                    .bind(&s.text)
                    .bind(&s.matched)
                    .bind(s.at.to_string())
                    .bind(event.seq as i64)
                    .execute(conn)
                    .await?;
            }
            DomainEvent::OptoutSuspicionResolved(r) => {
                sqlx::query(
                    "UPDATE consent_suspected SET status = $1 WHERE workspace = $2 AND id = $3",
                )
                .bind(&r.outcome)
                .bind(&ws)
                .bind(&r.id)
                .execute(conn)
                .await?;
            }
            DomainEvent::ConsentKeywordsSet(k) => {
                sqlx::query("INSERT INTO consent_config (workspace, keywords, suspected_automatic, confirmations) VALUES ($1, $2, 0, '[]') ON CONFLICT (workspace) DO UPDATE SET keywords = excluded.keywords")
                    .bind(&ws)
                    .bind(serde_json::to_string(&k.keywords)?)
                    .execute(conn)
                    .await?;
            }
            DomainEvent::ConsentSettingsSet(c) => {
                sqlx::query("INSERT INTO consent_config (workspace, keywords, suspected_automatic, confirmations) VALUES ($1, '[]', $2, $3) ON CONFLICT (workspace) DO UPDATE SET suspected_automatic = excluded.suspected_automatic, confirmations = excluded.confirmations")
                    .bind(&ws)
                    .bind(c.suspected_automatic as i64)
                    .bind(serde_json::to_string(&c.confirmations)?)
                    .execute(conn)
                    .await?;
            }
            // What links two identifiers of one person.
            DomainEvent::MessageReceived(m) => {
                let idents = identifiers(&m.contact);
                if idents.len() > 1 {
                    resolve(conn, &ws, &idents).await?;
                }
            }
            DomainEvent::ContactMarketingPreference(p) => {
                let idents = identifiers(&p.contact);
                if idents.len() > 1 {
                    resolve(conn, &ws, &idents).await?;
                }
            }
            DomainEvent::ContactUserIdChanged(u) => {
                let mut idents: Vec<String> = [u.previous_user_id.clone(), u.wa_id.clone()]
                    .into_iter()
                    .flatten()
                    .collect();
                if idents.is_empty() {
                    return Ok(());
                }
                idents.push(u.current_user_id.clone());
                resolve(conn, &ws, &idents).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Opt-outs, opt-ins and links folded in memory, each table written once per
    /// batch (see `consent_batch`); the rare rest one at a time.
    async fn apply_batch(
        &self,
        conn: &mut AnyConnection,
        events: &[StoredEvent],
    ) -> anyhow::Result<()> {
        super::consent_batch::apply_batch(self, conn, events).await
    }
}

/// A contact's consent: state and history (empty and not opted out when unknown).
pub async fn get(store: &Store, ws: &str, ident: &str) -> anyhow::Result<ContactConsent> {
    let mut conn = store.reads.acquire().await?;
    let Some(id) = alias_of(&mut conn, ws, ident).await? else {
        return Ok(ContactConsent {
            contact_id: None,
            state: ConsentState::default(),
            history: vec![],
        });
    };
    let state = state_of(&mut conn, ws, &id).await?;
    let rows = sqlx::query("SELECT at, scope, action, source_kind, keyword, language, message_id, reason, actor, log_seq, webhook_seq FROM consent_history WHERE workspace = $1 AND contact_id = $2 ORDER BY log_seq")
        .bind(ws)
        .bind(&id)
        .fetch_all(&mut *conn)
        .await?;
    let history = rows
        .into_iter()
        .map(|r| HistoryEntry {
            at: r.get(0),
            scope: r.get(1),
            action: r.get(2),
            source: HistorySource {
                kind: r.get(3),
                keyword: r.get(4),
                language: r.get(5),
                message_id: r.get(6),
                webhook_seq: r.get(10),
            },
            reason: r.get(7),
            actor: r.get(8),
            log_seq: r.get(9),
        })
        .collect();
    Ok(ContactConsent {
        contact_id: Some(id),
        state,
        history,
    })
}

/// The state of the contact any of `idents` names (the union, should they name two).
pub async fn state(store: &Store, ws: &str, idents: &[&str]) -> anyhow::Result<ConsentState> {
    let mut conn = store.reads.acquire().await?;
    let mut state = ConsentState::default();
    for ident in idents {
        if let Some(id) = alias_of(&mut conn, ws, ident).await? {
            let s = state_of(&mut conn, ws, &id).await?;
            state.opted_out |= s.opted_out;
            state.marketing_opted_out |= s.marketing_opted_out;
        }
    }
    Ok(state)
}

/// Every identifier linked to a contact id (wa_id, user ids), sorted.
pub async fn identifiers_of(
    store: &Store,
    ws: &str,
    contact_id: &str,
) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT ident FROM consent_aliases WHERE workspace = $1 AND contact_id = $2 ORDER BY ident",
    )
    .bind(ws)
    .bind(contact_id)
    .fetch_all(&store.reads)
    .await?)
}

/// Opted-out contacts (of `scope`, or any), after a cursor (contact id order).
pub async fn opted_out(
    store: &Store,
    ws: &str,
    scope: Option<ConsentScope>,
    after: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<OptOutItem>> {
    let filter = match scope {
        None => "(opted_out = 1 OR marketing_opted_out = 1)",
        Some(ConsentScope::All) => "opted_out = 1",
        Some(ConsentScope::Marketing) => "marketing_opted_out = 1",
    };
    let sql = format!("SELECT contact_id, opted_out, marketing_opted_out, updated_at FROM consent_contacts WHERE workspace = $1 AND {filter} AND contact_id > $2 ORDER BY contact_id LIMIT $3");
    let rows = sqlx::query(&sql)
        .bind(ws)
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&store.reads)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let contact_id: String = r.get(0);
        let identifiers = identifiers_of(store, ws, &contact_id).await?;
        out.push(OptOutItem {
            contact_id,
            identifiers,
            opted_out: r.get::<i64, _>(1) != 0,
            marketing_opted_out: r.get::<i64, _>(2) != 0,
            updated_at: r.get(3),
        });
    }
    Ok(out)
}

/// Suspected opt-outs of a status (`open` by default), after a cursor (id order).
pub async fn suspicions(
    store: &Store,
    ws: &str,
    status: &str,
    after: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<Suspicion>> {
    let rows = sqlx::query("SELECT id, contact_id, message_id, text, matched, status, at FROM consent_suspected WHERE workspace = $1 AND status = $2 AND id > $3 ORDER BY id LIMIT $4")
        .bind(ws)
        .bind(status)
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&store.reads)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| Suspicion {
            id: r.get(0),
            contact_id: r.get(1),
            message_id: r.get(2),
            text: r.get(3),
            matched: r.get(4),
            status: r.get(5),
            at: r.get(6),
        })
        .collect())
}

/// One suspicion, whatever its status.
pub async fn suspicion(store: &Store, ws: &str, id: &str) -> anyhow::Result<Option<Suspicion>> {
    let r = sqlx::query("SELECT id, contact_id, message_id, text, matched, status, at FROM consent_suspected WHERE workspace = $1 AND id = $2")
        .bind(ws)
        .bind(id)
        .fetch_optional(&store.reads)
        .await?;
    Ok(r.map(|r| Suspicion {
        id: r.get(0),
        contact_id: r.get(1),
        message_id: r.get(2),
        text: r.get(3),
        matched: r.get(4),
        status: r.get(5),
        at: r.get(6),
    }))
}

/// A workspace's consent configuration (defaults when never set).
pub async fn config(store: &Store, ws: &str) -> anyhow::Result<ConsentConfig> {
    let r = sqlx::query("SELECT keywords, suspected_automatic, confirmations FROM consent_config WHERE workspace = $1")
        .bind(ws)
        .fetch_optional(&store.reads)
        .await?;
    let Some(r) = r else {
        return Ok(ConsentConfig {
            confirmations: serde_json::json!([]),
            ..Default::default()
        });
    };
    Ok(ConsentConfig {
        keywords: serde_json::from_str(&r.get::<String, _>(0))?,
        suspected_automatic: r.get::<i64, _>(1) != 0,
        confirmations: serde_json::from_str(&r.get::<String, _>(2))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opt_outs_and_opt_ins_by_scope() {
        let s = |changes: &[Change]| {
            changes
                .iter()
                .fold(ConsentState::default(), |s, c| next_state(s, *c))
        };
        use Change::*;
        use ConsentScope::*;
        assert_eq!(
            s(&[OptOut(All)]),
            ConsentState {
                opted_out: true,
                marketing_opted_out: false
            }
        );
        assert_eq!(
            s(&[OptOut(Marketing)]),
            ConsentState {
                opted_out: false,
                marketing_opted_out: true
            }
        );
        // START lifts every opt-out; a marketing resume only the marketing one.
        assert_eq!(
            s(&[OptOut(All), OptOut(Marketing), OptIn(All)]),
            ConsentState::default()
        );
        assert_eq!(
            s(&[OptOut(All), OptOut(Marketing), OptIn(Marketing)]),
            ConsentState {
                opted_out: true,
                marketing_opted_out: false
            }
        );
        // Idempotent.
        assert_eq!(s(&[OptOut(All), OptOut(All)]), s(&[OptOut(All)]));
    }

    #[test]
    fn since_is_the_first_opt_out_still_in_effect() {
        let h = |seq: i64, action: &str, scope: &str| HistoryEntry {
            at: format!("t{seq}"),
            scope: scope.into(),
            action: action.into(),
            source: HistorySource {
                kind: "keyword".into(),
                keyword: None,
                language: None,
                message_id: None,
                webhook_seq: None,
            },
            reason: None,
            actor: "system:x".into(),
            log_seq: seq,
        };
        let at = |e: Option<&HistoryEntry>| e.map(|e| e.at.clone());
        let hist = vec![
            h(1, "opt_out", "all"),
            h(2, "opt_out", "all"),
            h(3, "opt_out", "marketing"),
        ];
        let (a, m) = in_effect(&hist);
        assert_eq!((at(a), at(m)), (Some("t1".into()), Some("t3".into())));
        let hist = vec![
            h(1, "opt_out", "all"),
            h(2, "opt_in", "all"),
            h(3, "opt_out", "all"),
        ];
        assert_eq!(at(in_effect(&hist).0), Some("t3".into()));
        let hist = vec![
            h(1, "opt_out", "all"),
            h(2, "opt_out", "marketing"),
            h(3, "opt_in", "marketing"),
        ];
        let (a, m) = in_effect(&hist);
        assert_eq!((at(a), at(m)), (Some("t1".into()), None));
        assert_eq!(in_effect(&[]), (None, None));
    }

    #[test]
    fn aliases_create_link_and_merge() {
        let idents = vec!["447700900123".to_string(), "US.1".to_string()];
        assert_eq!(
            choose(&[None, None], &idents),
            ("447700900123".into(), vec![])
        );
        assert_eq!(
            choose(&[None, Some("US.1".into())], &idents),
            ("US.1".into(), vec![])
        );
        assert_eq!(
            choose(&[Some("a".into()), Some("b".into())], &idents),
            ("a".into(), vec!["b".into()])
        );
        assert_eq!(
            choose(&[Some("a".into()), Some("a".into())], &idents),
            ("a".into(), vec![])
        );
    }
}
