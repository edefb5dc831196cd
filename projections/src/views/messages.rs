//! Message state: inbound messages and the status history of outbound ones, keyed by
//! business number and wamid (a wamid is unique per number only).

use sqlx::{AnyConnection, Row};
use wabridge_events::{DomainEvent, StoredEvent};

use crate::{Projection, Store};

/// The `messages` projection.
pub struct Messages;

/// A message's current state.
#[derive(Clone, Debug, PartialEq)]
pub struct MessageRow {
    /// The business number.
    pub phone_number_id: String,
    /// The wamid.
    pub wamid: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// The other party (wa_id, else business-scoped user id).
    pub contact: String,
    /// Meta's message type (`unknown` for outbound messages seen only by status).
    pub message_type: String,
    /// `received` for inbound; the latest status for outbound.
    pub status: String,
    /// Meta's time of the first event.
    pub occurred_at: String,
    /// Log time of the last change.
    pub updated_at: String,
}

/// Status precedence: `accepted < sending < sent < delivered < read/played`, with
/// `failed` above every other (a failure after `read` is still news) and unknown
/// statuses ranked with `sending`.
pub fn rank(status: &str) -> i64 {
    match status {
        "accepted" => 0,
        "sending" => 1,
        "sent" => 2,
        "delivered" => 3,
        "read" | "played" => 4,
        "failed" => 5,
        _ => 1,
    }
}

/// The state after a status webhook (the decision, pure): the new status when it
/// moves the message forward, `None` when it would move it back (out of order, or a
/// repeat). A message first seen by its status takes that status.
pub fn next_status<'a>(current: Option<&str>, incoming: &'a str) -> Option<&'a str> {
    match current {
        None => Some(incoming),
        Some(cur) if rank(incoming) > rank(cur) => Some(incoming),
        Some(_) => None,
    }
}

#[async_trait::async_trait]
impl Projection for Messages {
    fn name(&self) -> &'static str {
        "messages"
    }
    fn tables(&self) -> &'static [&'static str] {
        &["messages", "message_history"]
    }
    fn replay_weight(&self) -> u32 {
        // Every inbound message and status update writes it: at 1,000,000 mixed
        // events it takes more than every other read model together (SQLite 13.5 s
        // of 21, PostgreSQL 18.5 s of 34), so it gets a lane of its own.
        40
    }
    fn rebuild_without_indexes(&self) -> &'static [&'static str] {
        // The fold looks rows up by the primary key; the API by wamid alone.
        &["messages_wamid"]
    }
    fn dump_sql(&self) -> &'static str {
        "SELECT workspace || '|' || phone_number_id || '|' || wamid || '|' || direction || '|' || contact || '|' || message_type || '|' || status || '|' || occurred_at || '|' || updated_at FROM messages \
         UNION ALL SELECT 'h|' || workspace || '|' || phone_number_id || '|' || wamid || '|' || CAST(log_seq AS TEXT) || '|' || status || '|' || at || '|' || COALESCE(CAST(error_code AS TEXT), '') FROM message_history ORDER BY 1"
    }
    async fn apply(&self, conn: &mut AnyConnection, event: &StoredEvent) -> anyhow::Result<()> {
        if super::skip(event, |t| {
            matches!(t, "message.received" | "message.status_updated")
        }) {
            return Ok(());
        }
        let ws = super::ws_of(event);
        let at = event.envelope.recorded_at.to_string();
        let seq = event.seq as i64;
        match super::decode(event)? {
            DomainEvent::MessageReceived(m) => {
                let number = m.source.phone_number_id.clone().unwrap_or_default();
                sqlx::query("INSERT INTO messages (workspace, phone_number_id, wamid, direction, contact, message_type, status, occurred_at, updated_at, log_seq) VALUES ($1, $2, $3, 'inbound', $4, $5, 'received', $6, $7, $8) ON CONFLICT (workspace, phone_number_id, wamid) DO NOTHING")
                    .bind(&ws)
                    .bind(&number)
                    .bind(&m.wamid)
                    .bind(m.contact.key())
                    .bind(&m.message_type)
                    .bind(m.timestamp.to_string())
                    .bind(&at)
                    .bind(seq)
                    .execute(conn)
                    .await?;
            }
            DomainEvent::MessageStatusUpdated(s) => {
                let number = s.source.phone_number_id.clone().unwrap_or_default();
                let current: Option<String> = sqlx::query_scalar(
                    "SELECT status FROM messages WHERE workspace = $1 AND phone_number_id = $2 AND wamid = $3",
                )
                .bind(&ws)
                .bind(&number)
                .bind(&s.wamid)
                .fetch_optional(&mut *conn)
                .await?;
                let contact = s
                    .recipient_id
                    .clone()
                    .or_else(|| s.recipient_user_id.clone())
                    .unwrap_or_default();
                match (
                    current.is_some(),
                    next_status(current.as_deref(), &s.status),
                ) {
                    (false, Some(status)) => {
                        sqlx::query("INSERT INTO messages (workspace, phone_number_id, wamid, direction, contact, message_type, status, occurred_at, updated_at, log_seq) VALUES ($1, $2, $3, 'outbound', $4, 'unknown', $5, $6, $7, $8)")
                            .bind(&ws)
                            .bind(&number)
                            .bind(&s.wamid)
                            .bind(&contact)
                            .bind(status)
                            .bind(s.timestamp.to_string())
                            .bind(&at)
                            .bind(seq)
                            .execute(&mut *conn)
                            .await?;
                    }
                    (true, Some(status)) => {
                        sqlx::query("UPDATE messages SET status = $1, updated_at = $2, log_seq = $3 WHERE workspace = $4 AND phone_number_id = $5 AND wamid = $6")
                            .bind(status)
                            .bind(&at)
                            .bind(seq)
                            .bind(&ws)
                            .bind(&number)
                            .bind(&s.wamid)
                            .execute(&mut *conn)
                            .await?;
                    }
                    (_, None) => {}
                }
                sqlx::query("INSERT INTO message_history (workspace, phone_number_id, wamid, log_seq, status, at, error_code) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING")
                    .bind(&ws)
                    .bind(&number)
                    .bind(&s.wamid)
                    .bind(seq)
                    .bind(&s.status)
                    .bind(s.timestamp.to_string())
                    .bind(s.errors.first().map(|e| e.code))
                    .execute(conn)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The batch folded in memory: the rows its events touch are loaded once, each
    /// event decides as [`Projection::apply`] does, and each table is written once
    /// with multi-row statements (the same rows as one event at a time).
    async fn apply_batch(
        &self,
        conn: &mut AnyConnection,
        events: &[StoredEvent],
    ) -> anyhow::Result<()> {
        use crate::batch::{insert_rows, Col};
        use std::collections::HashMap;
        type Key = (String, String, String);
        /// A row as the batch leaves it: `full` when it is new (every column),
        /// else only status, updated_at and log_seq change.
        struct Row {
            status: String,
            updated_at: String,
            log_seq: i64,
            new: Option<(String, String, String, String)>,
            dirty: bool,
        }
        enum Item {
            Received(Key, String, String, String, String, i64),
            Status(Key, String, String, String, String, i64, Option<i64>),
        }
        let mut items = Vec::new();
        for event in events {
            if super::skip(event, |t| {
                matches!(t, "message.received" | "message.status_updated")
            }) {
                continue;
            }
            let ws = super::ws_of(event);
            let at = event.envelope.recorded_at.to_string();
            let seq = event.seq as i64;
            match super::decode(event)? {
                DomainEvent::MessageReceived(m) => {
                    let number = m.source.phone_number_id.clone().unwrap_or_default();
                    items.push(Item::Received(
                        (ws, number, m.wamid.clone()),
                        m.contact.key(),
                        m.message_type.clone(),
                        m.timestamp.to_string(),
                        at,
                        seq,
                    ));
                }
                DomainEvent::MessageStatusUpdated(s) => {
                    let number = s.source.phone_number_id.clone().unwrap_or_default();
                    let contact = s
                        .recipient_id
                        .clone()
                        .or_else(|| s.recipient_user_id.clone())
                        .unwrap_or_default();
                    items.push(Item::Status(
                        (ws, number, s.wamid.clone()),
                        contact,
                        s.status.clone(),
                        s.timestamp.to_string(),
                        at,
                        seq,
                        s.errors.first().map(|e| e.code),
                    ));
                }
                _ => {}
            }
        }
        if items.is_empty() {
            return Ok(());
        }
        // The current rows of the keys a status touches (a key only received is
        // written with `ON CONFLICT DO NOTHING`, as one at a time: no need to load it).
        let mut keys: Vec<&Key> = items
            .iter()
            .filter_map(|i| match i {
                Item::Status(k, ..) => Some(k),
                Item::Received(..) => None,
            })
            .collect();
        keys.sort();
        keys.dedup();
        let mut rows: HashMap<Key, Row> = HashMap::new();
        for r in crate::batch::by_message_keys(
            &mut *conn,
            "workspace, phone_number_id, wamid, status, updated_at, log_seq",
            "messages",
            &keys,
        )
        .await?
        {
            let key: Key = (r.get(0), r.get(1), r.get(2));
            rows.insert(
                key,
                Row {
                    status: r.get(3),
                    updated_at: r.get(4),
                    log_seq: r.get(5),
                    new: None,
                    dirty: false,
                },
            );
        }
        // Each event decides, in log order.
        let status_keys: std::collections::HashSet<Key> =
            keys.iter().map(|k| (*k).clone()).collect();
        let mut received_only: Vec<(Key, String, String, String, String, i64)> = Vec::new();
        let mut received_seen: std::collections::HashSet<Key> = std::collections::HashSet::new();
        let mut history = Vec::new();
        for item in items {
            match item {
                Item::Received(key, contact, message_type, occurred_at, at, seq)
                    if !status_keys.contains(&key) =>
                {
                    // The first one wins, as DO NOTHING does one at a time.
                    if received_seen.insert(key.clone()) {
                        received_only.push((key, contact, message_type, occurred_at, at, seq));
                    }
                }
                Item::Received(key, contact, message_type, occurred_at, at, seq) => {
                    rows.entry(key).or_insert(Row {
                        status: "received".into(),
                        updated_at: at,
                        log_seq: seq,
                        new: Some(("inbound".into(), contact, message_type, occurred_at)),
                        dirty: true,
                    });
                }
                Item::Status(key, contact, status, timestamp, at, seq, error_code) => {
                    let current = rows.get(&key).map(|r| r.status.as_str());
                    if let Some(next) = next_status(current, &status) {
                        let next = next.to_string();
                        match rows.get_mut(&key) {
                            Some(row) => {
                                row.status = next;
                                row.updated_at = at;
                                row.log_seq = seq;
                                row.dirty = true;
                            }
                            None => {
                                rows.insert(
                                    key.clone(),
                                    Row {
                                        status: next,
                                        updated_at: at,
                                        log_seq: seq,
                                        new: Some((
                                            "outbound".into(),
                                            contact,
                                            "unknown".into(),
                                            timestamp.clone(),
                                        )),
                                        dirty: true,
                                    },
                                );
                            }
                        }
                    }
                    history.push((key, seq, status, timestamp, error_code));
                }
            }
        }
        // Each table written once (in chunks), in a stable order. Rows the batch
        // creates were not there when it loaded its keys, and a history row is
        // new with its event: both are plain inserts (see
        // [`crate::batch::insert_new_rows`]); a received message's row may exist
        // from an earlier batch (Meta sending it again past the log's duplicate
        // window), which the fallback's `DO NOTHING` keeps as it was.
        let mut dirty: Vec<(&Key, &Row)> = rows.iter().filter(|(_, r)| r.dirty).collect();
        dirty.sort_by(|a, b| a.0.cmp(b.0));
        const COLUMNS: &str = "INSERT INTO messages (workspace, phone_number_id, wamid, direction, contact, message_type, status, occurred_at, updated_at, log_seq)";
        const UPSERT: &str = "ON CONFLICT (workspace, phone_number_id, wamid) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at, log_seq = excluded.log_seq";
        use Col::{Int, Text};
        const TYPES: [Col; 10] = [Text, Text, Text, Text, Text, Text, Text, Text, Text, Int];
        type Out<'a> = (
            &'a str,
            &'a str,
            &'a str,
            &'a str,
            &'a str,
            &'a str,
            &'a str,
            &'a str,
            &'a str,
            i64,
        );
        /// An existing row keeps its other columns (only the three the upsert sets
        /// change): the values given for them are not used.
        fn as_row<'a>((w, n, m): &'a Key, r: &'a Row) -> Out<'a> {
            let (direction, contact, message_type, occurred_at) = match &r.new {
                Some((d, c, t, o)) => (d.as_str(), c.as_str(), t.as_str(), o.as_str()),
                None => ("", "", "", ""),
            };
            (
                w,
                n,
                m,
                direction,
                contact,
                message_type,
                &r.status,
                occurred_at,
                &r.updated_at,
                r.log_seq,
            )
        }
        let (created, updated): (Vec<_>, Vec<_>) = dirty.iter().partition(|(_, r)| r.new.is_some());
        let created: Vec<Out> = created.iter().map(|(k, r)| as_row(k, r)).collect();
        let updated: Vec<Out> = updated.iter().map(|(k, r)| as_row(k, r)).collect();
        crate::batch::insert_new_rows(&mut *conn, COLUMNS, &TYPES, UPSERT, &created).await?;
        insert_rows(&mut *conn, COLUMNS, &TYPES, UPSERT, &updated).await?;
        let received: Vec<_> = received_only
            .iter()
            .map(|((w, n, m), contact, message_type, occurred_at, at, seq)| {
                (
                    w,
                    n,
                    m,
                    "inbound",
                    contact,
                    message_type,
                    "received",
                    occurred_at,
                    at,
                    *seq,
                )
            })
            .collect();
        crate::batch::insert_new_rows(
            &mut *conn,
            COLUMNS,
            &TYPES,
            "ON CONFLICT (workspace, phone_number_id, wamid) DO NOTHING",
            &received,
        )
        .await?;
        let history: Vec<_> = history
            .iter()
            .map(|((w, n, m), seq, status, at, code)| (w, n, m, *seq, status, at, *code))
            .collect();
        crate::batch::insert_new_rows(
            &mut *conn,
            "INSERT INTO message_history (workspace, phone_number_id, wamid, log_seq, status, at, error_code)",
            &[Text, Text, Text, Int, Text, Text, Int],
            "ON CONFLICT DO NOTHING",
            &history,
        )
        .await?;
        Ok(())
    }
}

fn row(r: sqlx::any::AnyRow) -> MessageRow {
    MessageRow {
        phone_number_id: r.get(0),
        wamid: r.get(1),
        direction: r.get(2),
        contact: r.get(3),
        message_type: r.get(4),
        status: r.get(5),
        occurred_at: r.get(6),
        updated_at: r.get(7),
    }
}

const COLUMNS: &str =
    "phone_number_id, wamid, direction, contact, message_type, status, occurred_at, updated_at";

/// A message of a workspace by wamid (the first number's, when several numbers of
/// the workspace have one with that wamid).
pub async fn get(store: &Store, ws: &str, wamid: &str) -> anyhow::Result<Option<MessageRow>> {
    let sql = format!("SELECT {COLUMNS} FROM messages WHERE workspace = $1 AND wamid = $2 ORDER BY phone_number_id LIMIT 1");
    let r = sqlx::query(&sql)
        .bind(ws)
        .bind(wamid)
        .fetch_optional(&store.reads)
        .await?;
    Ok(r.map(row))
}

/// The messages of a workspace with a wamid, one per number.
pub async fn by_wamid(store: &Store, ws: &str, wamid: &str) -> anyhow::Result<Vec<MessageRow>> {
    let sql = format!("SELECT {COLUMNS} FROM messages WHERE workspace = $1 AND wamid = $2 ORDER BY phone_number_id");
    let rows = sqlx::query(&sql)
        .bind(ws)
        .bind(wamid)
        .fetch_all(&store.reads)
        .await?;
    Ok(rows.into_iter().map(row).collect())
}

/// How many messages a workspace has (tests and metrics).
pub async fn count(store: &Store, ws: &str) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE workspace = $1")
            .bind(ws)
            .fetch_one(&store.reads)
            .await?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_never_move_back() {
        // Given / when / then, over the ranking.
        let fold = |statuses: &[&str]| {
            statuses.iter().fold(None::<String>, |cur, s| {
                next_status(cur.as_deref(), s).map(str::to_string).or(cur)
            })
        };
        assert_eq!(
            fold(&["sent", "delivered", "read"]).as_deref(),
            Some("read")
        );
        assert_eq!(
            fold(&["read", "delivered", "sent"]).as_deref(),
            Some("read")
        );
        assert_eq!(fold(&["delivered", "sent"]).as_deref(), Some("delivered"));
        assert_eq!(fold(&["read", "failed"]).as_deref(), Some("failed"));
        assert_eq!(fold(&["failed", "delivered"]).as_deref(), Some("failed"));
        assert_eq!(fold(&["sent", "played"]).as_deref(), Some("played"));
        assert_eq!(
            next_status(Some("read"), "read"),
            None,
            "a repeat changes nothing"
        );
        assert_eq!(next_status(None, "delivered"), Some("delivered"));
        assert_eq!(next_status(Some("sent"), "something_new"), None);
    }
}
