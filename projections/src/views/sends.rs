//! Outbound message state: each send request from `accepted` to `sent`, `delivered`,
//! `read`, or `failed` / `blocked`, with its history. The sender's own events move it
//! through `sending`; Meta's status webhooks (matched by the `biz_opaque_callback_data`
//! wabridge sets to the message id, else by wamid) move it on, never backwards.

use serde::Serialize;
use sqlx::{AnyConnection, Row};
use wabridge_events::{types::ContactRef, DomainEvent, StoredEvent};

use super::EventMeta;
use crate::{Projection, Store};

/// The `sends` projection.
pub struct Sends;

/// Where the sender stands with a message (what a restarted sender must do).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Accepted, nothing posted yet: post it.
    Requested,
    /// An attempt is recorded without its outcome: never re-post it blindly.
    Attempting,
    /// A retry is scheduled at `retry_at`.
    Waiting,
    /// Nothing left for the sender to do.
    Done,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Requested => "requested",
            Phase::Attempting => "attempting",
            Phase::Waiting => "waiting",
            Phase::Done => "done",
        }
    }
    fn parse(s: &str) -> Phase {
        match s {
            "requested" => Phase::Requested,
            "attempting" => Phase::Attempting,
            "waiting" => Phase::Waiting,
            _ => Phase::Done,
        }
    }
}

/// One outbound message.
#[derive(Clone, Debug, PartialEq)]
pub struct SendRow {
    /// Workspace.
    pub workspace: String,
    /// wabridge's id.
    pub id: String,
    /// The sending number.
    pub phone_number_id: String,
    /// The recipient's wa_id (digits), when sent to a phone number.
    pub to: Option<String>,
    /// The recipient's business-scoped user id, when sent to one.
    pub recipient: Option<String>,
    /// The message type.
    pub message_type: String,
    /// Template category.
    pub category: Option<String>,
    /// `accepted`, `sending`, `sent`, `delivered`, `read`, `failed`, `blocked`, `unknown`.
    pub status: String,
    /// The sender's phase.
    pub phase: Phase,
    /// Meta's id.
    pub wamid: Option<String>,
    /// Attempts made.
    pub attempts: i64,
    /// Why it failed, was blocked, or is retried.
    pub reason: Option<String>,
    /// Meta's error code.
    pub error_code: Option<i64>,
    /// Meta's error title.
    pub error_title: Option<String>,
    /// When the next attempt is due.
    pub retry_at: Option<String>,
    /// When requested (log time).
    pub created_at: String,
    /// Last change (log time).
    pub updated_at: String,
    /// The request event's log sequence (list order and cursor).
    pub requested_seq: i64,
}

/// One step of a message's history.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct HistoryEntry {
    /// The status after the step.
    pub status: String,
    /// What happened (`requested`, `attempt 1`, `retrying: rate_limited`, `status webhook`, ...).
    pub detail: String,
    /// When (log time; Meta's time for a status webhook).
    pub at: String,
    /// Meta's error code, when the step carried one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    /// The log sequence of the event.
    pub log_seq: i64,
}

/// Status order: a message never moves back. `failed` and `blocked` end it; a status
/// webhook's `failed` beats even `read` (a failure after the fact is still news).
pub fn rank(status: &str) -> i64 {
    match status {
        "accepted" => 0,
        "sending" => 1,
        "unknown" => 2,
        "sent" => 3,
        "delivered" => 4,
        "read" | "played" => 5,
        "failed" | "blocked" => 6,
        _ => 1,
    }
}

fn contact_parts(c: &ContactRef) -> (Option<String>, Option<String>) {
    (c.wa_id.clone(), c.user_id.clone())
}

/// The message an event is about: its id, or for a status webhook the callback data
/// (wabridge sets it to the id) else the wamid to look up.
pub enum Target {
    /// By wabridge's id.
    Id(String),
    /// By Meta's id on a number.
    Wamid(String, String),
}

/// Which message an event moves, if any.
pub fn target(event: &DomainEvent) -> Option<Target> {
    use DomainEvent as E;
    Some(match event {
        E::MessageSendRequested(e) => Target::Id(e.id.clone()),
        E::MessageSendBlocked(e) => Target::Id(e.id.clone()),
        E::MessageSendAttempted(e) => Target::Id(e.id.clone()),
        E::MessageSent(e) => Target::Id(e.id.clone()),
        E::MessageSendRetrying(e) => Target::Id(e.id.clone()),
        E::MessageSendFailed(e) => Target::Id(e.id.clone()),
        E::MessageSendUnknown(e) => Target::Id(e.id.clone()),
        E::MessageStatusUpdated(s) => match &s.biz_opaque_callback_data {
            Some(id) if id.starts_with("msg_") => Target::Id(id.clone()),
            _ => Target::Wamid(
                s.source.phone_number_id.clone().unwrap_or_default(),
                s.wamid.clone(),
            ),
        },
        _ => return None,
    })
}

/// The row after an event (the decision, pure), and the history step it adds.
/// `None`: nothing changes (an unknown message, a repeat, a step backwards).
pub fn next_send(
    current: Option<&SendRow>,
    event: &DomainEvent,
    meta: &EventMeta,
) -> Option<(SendRow, HistoryEntry)> {
    use DomainEvent as E;
    let at = meta.recorded_at.to_string();
    let step = |status: &str, detail: String, error_code: Option<i64>, at: &str| HistoryEntry {
        status: status.to_owned(),
        detail,
        at: at.to_owned(),
        error_code,
        log_seq: meta.seq as i64,
    };
    let fresh = |id: &str, number: &str, c: &ContactRef, ty: &str, cat: &Option<String>| {
        let (to, recipient) = contact_parts(c);
        SendRow {
            workspace: meta.workspace.clone(),
            id: id.to_owned(),
            phone_number_id: number.to_owned(),
            to,
            recipient,
            message_type: ty.to_owned(),
            category: cat.clone(),
            status: "accepted".into(),
            phase: Phase::Requested,
            wamid: None,
            attempts: 0,
            reason: None,
            error_code: None,
            error_title: None,
            retry_at: None,
            created_at: at.clone(),
            updated_at: at.clone(),
            requested_seq: meta.seq as i64,
        }
    };
    match (event, current) {
        (E::MessageSendRequested(r), None) => {
            let row = fresh(
                &r.id,
                &r.phone_number_id,
                &r.recipient,
                &r.message_type,
                &r.category,
            );
            Some((row, step("accepted", "requested".into(), None, &at)))
        }
        (E::MessageSendBlocked(b), None) => {
            let mut row = fresh(
                &b.id,
                &b.phone_number_id,
                &b.recipient,
                &b.message_type,
                &b.category,
            );
            row.status = "blocked".into();
            row.phase = Phase::Done;
            row.reason = Some(b.reason.clone());
            Some((
                row,
                step("blocked", format!("blocked: {}", b.reason), None, &at),
            ))
        }
        (_, None) => None,
        // A blocked request does not take its key: the same request may be accepted
        // later (once the contact opted back in).
        (E::MessageSendRequested(r), Some(cur)) if cur.status == "blocked" => {
            let row = fresh(
                &r.id,
                &r.phone_number_id,
                &r.recipient,
                &r.message_type,
                &r.category,
            );
            Some((row, step("accepted", "requested".into(), None, &at)))
        }
        (E::MessageSendRequested(_) | E::MessageSendBlocked(_), Some(_)) => None,
        (E::MessageSendAttempted(a), Some(cur)) if rank(&cur.status) <= rank("sending") => {
            let mut row = cur.clone();
            row.status = "sending".into();
            row.phase = Phase::Attempting;
            row.attempts = row.attempts.max(a.attempt as i64);
            row.retry_at = None;
            row.updated_at = at.clone();
            Some((
                row,
                step("sending", format!("attempt {}", a.attempt), None, &at),
            ))
        }
        (E::MessageSendRetrying(r), Some(cur)) if rank(&cur.status) <= rank("sending") => {
            let mut row = cur.clone();
            row.status = "sending".into();
            row.phase = Phase::Waiting;
            row.reason = Some(r.reason.clone());
            row.error_code = r.error.as_ref().map(|e| e.code);
            row.error_title = r.error.as_ref().and_then(|e| e.title.clone());
            row.retry_at = Some(r.retry_at.to_string());
            row.updated_at = at.clone();
            let code = row.error_code;
            Some((
                row,
                step("sending", format!("retrying: {}", r.reason), code, &at),
            ))
        }
        (E::MessageSent(s), Some(cur)) => {
            let mut row = cur.clone();
            if rank(&cur.status) < rank("sent") {
                row.status = "sent".into();
            }
            row.wamid = Some(s.wamid.clone());
            row.phase = Phase::Done;
            row.retry_at = None;
            row.reason = None;
            row.error_code = None;
            row.error_title = None;
            row.updated_at = at.clone();
            let status = row.status.clone();
            Some((row, step(&status, "accepted by Meta".into(), None, &at)))
        }
        (E::MessageSendFailed(f), Some(cur)) if rank(&cur.status) < rank("sent") => {
            let mut row = cur.clone();
            row.status = "failed".into();
            row.phase = Phase::Done;
            row.reason = Some(f.reason.clone());
            row.error_code = f.error.as_ref().map(|e| e.code);
            row.error_title = f.error.as_ref().and_then(|e| e.title.clone());
            row.retry_at = None;
            row.updated_at = at.clone();
            let code = row.error_code;
            Some((
                row,
                step("failed", format!("failed: {}", f.reason), code, &at),
            ))
        }
        (E::MessageSendUnknown(u), Some(cur)) if rank(&cur.status) < rank("unknown") => {
            let mut row = cur.clone();
            row.status = "unknown".into();
            row.phase = Phase::Done;
            row.reason = Some("outcome_unknown".into());
            row.updated_at = at.clone();
            Some((
                row,
                step(
                    "unknown",
                    format!(
                        "attempt {} has no recorded outcome; not re-posted",
                        u.attempt
                    ),
                    None,
                    &at,
                ),
            ))
        }
        (E::MessageStatusUpdated(s), Some(cur)) => {
            let mut row = cur.clone();
            let moved = rank(&s.status) > rank(&cur.status);
            if moved {
                row.status = s.status.clone();
            }
            let learned_wamid = row.wamid.is_none();
            if learned_wamid {
                row.wamid = Some(s.wamid.clone());
            }
            if !moved && !learned_wamid {
                return None;
            }
            row.phase = Phase::Done;
            row.retry_at = None;
            if s.status == "failed" && moved {
                let e = s.errors.first();
                row.reason = Some("meta_failed".into());
                row.error_code = e.map(|e| e.code);
                row.error_title = e.and_then(|e| e.title.clone());
            }
            row.updated_at = at.clone();
            let code = if s.status == "failed" {
                row.error_code
            } else {
                None
            };
            let status = row.status.clone();
            Some((
                row,
                step(
                    &status,
                    format!("status webhook: {}", s.status),
                    code,
                    &s.timestamp.to_string(),
                ),
            ))
        }
        _ => None,
    }
}

const COLUMNS: &str = "workspace, id, phone_number_id, recipient_to, recipient_user, message_type, category, status, phase, wamid, attempts, reason, error_code, error_title, retry_at, created_at, updated_at, requested_seq";

fn row_of(r: &sqlx::any::AnyRow) -> SendRow {
    SendRow {
        workspace: r.get(0),
        id: r.get(1),
        phone_number_id: r.get(2),
        to: r.get(3),
        recipient: r.get(4),
        message_type: r.get(5),
        category: r.get(6),
        status: r.get(7),
        phase: Phase::parse(&r.get::<String, _>(8)),
        wamid: r.get(9),
        attempts: r.get(10),
        reason: r.get(11),
        error_code: r.get(12),
        error_title: r.get(13),
        retry_at: r.get(14),
        created_at: r.get(15),
        updated_at: r.get(16),
        requested_seq: r.get(17),
    }
}

async fn load(conn: &mut AnyConnection, ws: &str, id: &str) -> anyhow::Result<Option<SendRow>> {
    let sql = format!("SELECT {COLUMNS} FROM sends WHERE workspace = $1 AND id = $2");
    let r = sqlx::query(&sql)
        .bind(ws)
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(r.as_ref().map(row_of))
}

async fn put(conn: &mut AnyConnection, row: &SendRow, h: &HistoryEntry) -> anyhow::Result<()> {
    let sql = format!(
        "INSERT INTO sends ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
         ON CONFLICT (workspace, id) DO UPDATE SET status = excluded.status, phase = excluded.phase, wamid = excluded.wamid, attempts = excluded.attempts, reason = excluded.reason, error_code = excluded.error_code, error_title = excluded.error_title, retry_at = excluded.retry_at, updated_at = excluded.updated_at"
    );
    sqlx::query(&sql)
        .bind(&row.workspace)
        .bind(&row.id)
        .bind(&row.phone_number_id)
        .bind(&row.to)
        .bind(&row.recipient)
        .bind(&row.message_type)
        .bind(&row.category)
        .bind(&row.status)
        .bind(row.phase.as_str())
        .bind(&row.wamid)
        .bind(row.attempts)
        .bind(&row.reason)
        .bind(row.error_code)
        .bind(&row.error_title)
        .bind(&row.retry_at)
        .bind(&row.created_at)
        .bind(&row.updated_at)
        .bind(row.requested_seq)
        .execute(&mut *conn)
        .await?;
    if let Some(wamid) = &row.wamid {
        sqlx::query("INSERT INTO send_wamids (workspace, phone_number_id, wamid, id) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(&row.workspace)
            .bind(&row.phone_number_id)
            .bind(wamid)
            .bind(&row.id)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("INSERT INTO send_history (workspace, id, log_seq, status, detail, at, error_code) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING")
        .bind(&row.workspace)
        .bind(&row.id)
        .bind(h.log_seq)
        .bind(&h.status)
        .bind(&h.detail)
        .bind(&h.at)
        .bind(h.error_code)
        .execute(conn)
        .await?;
    Ok(())
}

#[async_trait::async_trait]
impl Projection for Sends {
    fn name(&self) -> &'static str {
        "sends"
    }
    fn tables(&self) -> &'static [&'static str] {
        &["sends", "send_history", "send_wamids"]
    }
    fn dump_sql(&self) -> &'static str {
        "SELECT workspace || '|' || id || '|' || phone_number_id || '|' || COALESCE(recipient_to, '') || '|' || COALESCE(recipient_user, '') || '|' || message_type || '|' || COALESCE(category, '') || '|' || status || '|' || phase || '|' || COALESCE(wamid, '') || '|' || CAST(attempts AS TEXT) || '|' || COALESCE(reason, '') || '|' || COALESCE(CAST(error_code AS TEXT), '') || '|' || COALESCE(error_title, '') || '|' || COALESCE(retry_at, '') || '|' || created_at || '|' || updated_at || '|' || CAST(requested_seq AS TEXT) FROM sends \
         UNION ALL SELECT 'h|' || workspace || '|' || id || '|' || CAST(log_seq AS TEXT) || '|' || status || '|' || detail || '|' || at || '|' || COALESCE(CAST(error_code AS TEXT), '') FROM send_history \
         UNION ALL SELECT 'w|' || workspace || '|' || phone_number_id || '|' || wamid || '|' || id FROM send_wamids ORDER BY 1"
    }
    async fn apply(&self, conn: &mut AnyConnection, event: &StoredEvent) -> anyhow::Result<()> {
        let relevant = |t: &str| {
            t.starts_with("message.send") || t == "message.sent" || t == "message.status_updated"
        };
        if super::skip(event, relevant) {
            return Ok(());
        }
        let decoded = super::decode(event)?;
        let meta = EventMeta::of(event);
        let id = match target(decoded) {
            None => return Ok(()),
            Some(Target::Id(id)) => id,
            Some(Target::Wamid(number, wamid)) => {
                let id: Option<String> = sqlx::query_scalar(
                    "SELECT id FROM send_wamids WHERE workspace = $1 AND phone_number_id = $2 AND wamid = $3",
                )
                .bind(&meta.workspace)
                .bind(&number)
                .bind(&wamid)
                .fetch_optional(&mut *conn)
                .await?;
                match id {
                    Some(id) => id,
                    None => return Ok(()),
                }
            }
        };
        let current = load(&mut *conn, &meta.workspace, &id).await?;
        if let Some((row, step)) = next_send(current.as_ref(), decoded, &meta) {
            put(conn, &row, &step).await?;
        }
        Ok(())
    }

    /// Status webhooks name messages by wamid; most name messages wabridge did not
    /// send (or sent without a status yet). The batch looks the wamids up once, and
    /// a status whose wamid maps to no message of ours is a no-op without a query,
    /// as [`Projection::apply`] would find. Every other event applies as one.
    async fn apply_batch(
        &self,
        conn: &mut AnyConnection,
        events: &[StoredEvent],
    ) -> anyhow::Result<()> {
        use std::collections::HashSet;
        let relevant = |t: &str| {
            t.starts_with("message.send") || t == "message.sent" || t == "message.status_updated"
        };
        let mut wanted: Vec<(String, String, String)> = vec![];
        for event in events {
            if super::skip(event, relevant) {
                continue;
            }
            if let Some(Target::Wamid(number, wamid)) = target(super::decode(event)?) {
                wanted.push((super::ws_of(event), number, wamid));
            }
        }
        let mut known: HashSet<(String, String, String)> = HashSet::new();
        if !wanted.is_empty() {
            for r in crate::batch::by_message_keys(
                &mut *conn,
                "workspace, phone_number_id, wamid",
                "send_wamids",
                &wanted,
            )
            .await?
            {
                known.insert((r.get(0), r.get(1), r.get(2)));
            }
        }
        // A message event of a workspace may map a new wamid: from then on its
        // statuses are looked up one by one.
        let mut mapping: HashSet<String> = HashSet::new();
        for event in events {
            if super::skip(event, relevant) {
                continue;
            }
            let ws = super::ws_of(event);
            match target(super::decode(event)?) {
                Some(Target::Wamid(number, wamid))
                    if !mapping.contains(&ws)
                        && !known.contains(&(ws.clone(), number.clone(), wamid.clone())) => {}
                Some(Target::Id(_)) => {
                    mapping.insert(ws);
                    self.apply(&mut *conn, event).await?;
                }
                _ => self.apply(&mut *conn, event).await?,
            }
        }
        Ok(())
    }
}

/// One message.
pub async fn get(store: &Store, ws: &str, id: &str) -> anyhow::Result<Option<SendRow>> {
    let mut conn = store.reads.acquire().await?;
    load(&mut conn, ws, id).await
}

/// A message's history, oldest first.
pub async fn history(store: &Store, ws: &str, id: &str) -> anyhow::Result<Vec<HistoryEntry>> {
    let rows = sqlx::query("SELECT status, detail, at, error_code, log_seq FROM send_history WHERE workspace = $1 AND id = $2 ORDER BY log_seq")
        .bind(ws)
        .bind(id)
        .fetch_all(&store.reads)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| HistoryEntry {
            status: r.get(0),
            detail: r.get(1),
            at: r.get(2),
            error_code: r.get(3),
            log_seq: r.get(4),
        })
        .collect())
}

/// Messages newest first, optionally of a status and to a recipient, before a cursor
/// (the `requested_seq` of the last item of the previous page).
pub async fn list(
    store: &Store,
    ws: &str,
    status: Option<&str>,
    to: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> anyhow::Result<Vec<SendRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM sends WHERE workspace = $1 AND ($2 = '' OR status = $2) AND ($3 = '' OR recipient_to = $3 OR recipient_user = $3) AND requested_seq < $4 ORDER BY requested_seq DESC LIMIT $5"
    );
    let rows = sqlx::query(&sql)
        .bind(ws)
        .bind(status.unwrap_or(""))
        .bind(to.unwrap_or(""))
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&store.reads)
        .await?;
    Ok(rows.iter().map(row_of).collect())
}

/// Every message the sender still has to act on (a restarted sender resumes them).
pub async fn pending(store: &Store) -> anyhow::Result<Vec<SendRow>> {
    let sql = format!("SELECT {COLUMNS} FROM sends WHERE phase <> 'done' ORDER BY requested_seq");
    let rows = sqlx::query(&sql).fetch_all(&store.reads).await?;
    Ok(rows.iter().map(row_of).collect())
}

#[cfg(test)]
mod tests {
    use wabridge_events::{
        types::{
            MessageSendAttempted, MessageSendRequested, MessageSent, MessageStatusUpdated,
            MetaSource,
        },
        Timestamp,
    };

    use super::*;

    fn meta(seq: u64) -> EventMeta {
        EventMeta {
            seq,
            recorded_at: "2026-12-01T10:00:00.000000Z".into(),
            workspace: "acme".into(),
        }
    }

    fn requested() -> DomainEvent {
        DomainEvent::MessageSendRequested(MessageSendRequested {
            id: "msg_1".into(),
            idempotency_key: None,
            request_hash: "h".into(),
            phone_number_id: "1".into(),
            recipient: ContactRef::from_key("447700900123"),
            message_type: "text".into(),
            category: None,
            body: serde_json::json!({"body": "hi"}),
        })
    }

    fn status(s: &str, callback: Option<&str>) -> DomainEvent {
        DomainEvent::MessageStatusUpdated(MessageStatusUpdated {
            source: MetaSource {
                waba_id: "9".into(),
                phone_number_id: Some("1".into()),
                display_phone_number: None,
                field: "messages".into(),
                raw_seq: 1,
            },
            wamid: "wamid.A".into(),
            status: s.into(),
            recipient_id: Some("447700900123".into()),
            recipient_user_id: None,
            recipient_parent_user_id: None,
            timestamp: Timestamp::parse("2026-12-01T10:00:05Z").unwrap(),
            biz_opaque_callback_data: callback.map(String::from),
            pricing_category: None,
            pricing: None,
            conversation: None,
            errors: vec![],
        })
    }

    fn run(events: &[DomainEvent]) -> (Option<SendRow>, Vec<HistoryEntry>) {
        let mut row = None;
        let mut hist = vec![];
        for (i, e) in events.iter().enumerate() {
            if let Some((r, h)) = next_send(row.as_ref(), e, &meta(i as u64 + 1)) {
                row = Some(r);
                hist.push(h);
            }
        }
        (row, hist)
    }

    #[test]
    fn a_send_moves_forward_and_never_back() {
        let attempted = DomainEvent::MessageSendAttempted(MessageSendAttempted {
            id: "msg_1".into(),
            attempt: 1,
        });
        let sent = DomainEvent::MessageSent(MessageSent {
            id: "msg_1".into(),
            phone_number_id: "1".into(),
            wamid: "wamid.A".into(),
            attempt: 1,
        });
        let (row, hist) = run(&[
            requested(),
            attempted,
            sent,
            status("read", Some("msg_1")),
            status("delivered", Some("msg_1")),
            status("sent", Some("msg_1")),
        ]);
        let row = row.unwrap();
        assert_eq!(row.status, "read");
        assert_eq!(row.phase, Phase::Done);
        assert_eq!(row.wamid.as_deref(), Some("wamid.A"));
        let statuses: Vec<&str> = hist.iter().map(|h| h.status.as_str()).collect();
        assert_eq!(statuses, ["accepted", "sending", "sent", "read"]);
    }

    #[test]
    fn a_status_before_the_sent_event_still_counts_and_an_unknown_outcome_resolves() {
        let attempted = DomainEvent::MessageSendAttempted(MessageSendAttempted {
            id: "msg_1".into(),
            attempt: 1,
        });
        let unknown = DomainEvent::MessageSendUnknown(wabridge_events::types::MessageSendUnknown {
            id: "msg_1".into(),
            attempt: 1,
        });
        let (row, _) = run(&[
            requested(),
            attempted.clone(),
            unknown,
            status("delivered", Some("msg_1")),
        ]);
        let row = row.unwrap();
        assert_eq!(row.status, "delivered");
        assert_eq!(row.wamid.as_deref(), Some("wamid.A"));
        // An attempt after a delivered status does not move it back.
        let (row, _) = run(&[requested(), status("delivered", Some("msg_1")), attempted]);
        assert_eq!(row.unwrap().status, "delivered");
        // A status for an unknown message changes nothing.
        assert!(next_send(None, &status("sent", Some("msg_9")), &meta(1)).is_none());
    }
}
