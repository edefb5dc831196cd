//! Webhook items for numbers no workspace held, waiting for the operator.

use serde::Serialize;
use sqlx::{AnyConnection, Row};
use wabridge_events::{types::WebhookUnrouted, DomainEvent, StoredEvent};

use super::EventMeta;
use crate::{Projection, Store};

/// The `unrouted` projection.
pub struct Unrouted;

/// One unrouted item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnroutedRow {
    /// Natural key of the item.
    pub dedup_key: String,
    /// The number nobody held.
    pub phone_number_id: String,
    /// Its WABA.
    pub waba_id: String,
    /// The event type it becomes.
    pub event_type: String,
    /// Schema version.
    pub v: i64,
    /// The data (JSON text).
    pub data: String,
    /// When it happened.
    pub occurred_at: String,
    /// When it was recorded unrouted.
    pub recorded_at: String,
    /// The workspace it was assigned to, once assigned.
    pub assigned_to: Option<String>,
}

/// Per-number summary for the operator.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct UnroutedNumber {
    /// The number.
    pub phone_number_id: String,
    /// Its WABA.
    pub waba_id: String,
    /// Items waiting.
    pub pending: i64,
    /// First item seen.
    pub first_seen: String,
    /// Last item seen.
    pub last_seen: String,
}

/// An unrouted item as stored: its row and the seq of the event that recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredItem {
    /// The row.
    pub item: UnroutedRow,
    /// Sequence of the `webhook.unrouted` event.
    pub log_seq: u64,
}

/// Which items an event concerns.
enum Target<'a> {
    /// One item, by its natural key.
    Item(&'a str),
    /// The items of a number still waiting.
    PendingOf(&'a str),
}

fn target_of(event: &DomainEvent) -> Option<Target<'_>> {
    match event {
        DomainEvent::WebhookUnrouted(u) => Some(Target::Item(&u.dedup_key)),
        DomainEvent::UnroutedAssigned(a) => Some(Target::PendingOf(&a.phone_number_id)),
        _ => None,
    }
}

/// An item after an event (the projection's decision, pure): `None` when the event
/// changes nothing. `current` is the stored item: the one a `webhook.unrouted` names
/// by its key, or each item of the number an assignment names.
///
/// - `webhook.unrouted` records the item at the log time; an item already recorded
///   stays as it is (a redelivery).
/// - `unrouted.assigned` gives the assignment's workspace to the number's items that
///   were recorded before it (at or before its `through_seq`, the position the
///   command read them at: an item arriving while it ran stays waiting) and are not
///   assigned yet; items of other numbers,
///   items assigned already and items recorded after it stay as they are.
pub fn next_item(
    current: Option<&StoredItem>,
    event: &DomainEvent,
    meta: &EventMeta,
) -> Option<StoredItem> {
    match (event, current) {
        (DomainEvent::WebhookUnrouted(u), None) => Some(recorded(u, meta)),
        (DomainEvent::UnroutedAssigned(a), Some(cur))
            if cur.item.phone_number_id == a.phone_number_id
                && cur.item.assigned_to.is_none()
                && cur.log_seq < meta.seq
                && (a.through_seq == 0 || cur.log_seq <= a.through_seq) =>
        {
            let mut next = cur.clone();
            next.item.assigned_to = Some(a.workspace.to_string());
            Some(next)
        }
        _ => None,
    }
}

/// A newly recorded item.
fn recorded(u: &WebhookUnrouted, meta: &EventMeta) -> StoredItem {
    StoredItem {
        item: UnroutedRow {
            dedup_key: u.dedup_key.clone(),
            phone_number_id: u.phone_number_id.clone(),
            waba_id: u.waba_id.clone(),
            event_type: u.item.event_type.clone(),
            v: i64::from(u.item.v),
            data: u.item.data.to_string(),
            occurred_at: u.item.occurred_at.to_string(),
            recorded_at: meta.recorded_at.clone(),
            assigned_to: None,
        },
        log_seq: meta.seq,
    }
}

#[async_trait::async_trait]
impl Projection for Unrouted {
    fn name(&self) -> &'static str {
        "unrouted"
    }
    fn tables(&self) -> &'static [&'static str] {
        &["unrouted"]
    }
    fn dump_sql(&self) -> &'static str {
        "SELECT dedup_key || '|' || phone_number_id || '|' || waba_id || '|' || event_type || '|' || data || '|' || occurred_at || '|' || recorded_at || '|' || COALESCE(assigned_to, '') FROM unrouted ORDER BY 1"
    }
    async fn apply(&self, conn: &mut AnyConnection, event: &StoredEvent) -> anyhow::Result<()> {
        if super::skip(event, |t| {
            matches!(t, "webhook.unrouted" | "unrouted.assigned")
        }) {
            return Ok(());
        }
        let decoded = super::decode(event)?;
        let Some(target) = target_of(decoded) else {
            return Ok(());
        };
        let meta = EventMeta::of(event);
        let items = match target {
            Target::Item(key) => vec![load(&mut *conn, key).await?],
            Target::PendingOf(number) => waiting(&mut *conn, number)
                .await?
                .into_iter()
                .map(Some)
                .collect(),
        };
        for current in items {
            if let Some(next) = next_item(current.as_ref(), decoded, &meta) {
                put(&mut *conn, &next).await?;
            }
        }
        Ok(())
    }
}

const COLUMNS: &str = "dedup_key, phone_number_id, waba_id, event_type, v, data, occurred_at, recorded_at, assigned_to, log_seq";

fn stored_item(r: sqlx::any::AnyRow) -> StoredItem {
    StoredItem {
        item: UnroutedRow {
            dedup_key: r.get(0),
            phone_number_id: r.get(1),
            waba_id: r.get(2),
            event_type: r.get(3),
            v: r.get(4),
            data: r.get(5),
            occurred_at: r.get(6),
            recorded_at: r.get(7),
            assigned_to: r.get(8),
        },
        log_seq: r.get::<i64, _>(9) as u64,
    }
}

/// The stored item with a key, in the projection's transaction.
async fn load(conn: &mut AnyConnection, dedup_key: &str) -> anyhow::Result<Option<StoredItem>> {
    let sql = format!("SELECT {COLUMNS} FROM unrouted WHERE dedup_key = $1");
    Ok(sqlx::query(&sql)
        .bind(dedup_key)
        .fetch_optional(conn)
        .await?
        .map(stored_item))
}

/// The items of a number not assigned yet, oldest first (the only ones an
/// assignment can change).
async fn waiting(
    conn: &mut AnyConnection,
    phone_number_id: &str,
) -> anyhow::Result<Vec<StoredItem>> {
    let sql = format!("SELECT {COLUMNS} FROM unrouted WHERE phone_number_id = $1 AND assigned_to IS NULL ORDER BY log_seq");
    let rows = sqlx::query(&sql)
        .bind(phone_number_id)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(stored_item).collect())
}

/// Writes an item (inserted, or replacing the stored one).
async fn put(conn: &mut AnyConnection, s: &StoredItem) -> anyhow::Result<()> {
    let i = &s.item;
    sqlx::query("INSERT INTO unrouted (dedup_key, phone_number_id, waba_id, event_type, v, data, occurred_at, recorded_at, assigned_to, log_seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (dedup_key) DO UPDATE SET phone_number_id = excluded.phone_number_id, waba_id = excluded.waba_id, event_type = excluded.event_type, v = excluded.v, data = excluded.data, occurred_at = excluded.occurred_at, recorded_at = excluded.recorded_at, assigned_to = excluded.assigned_to, log_seq = excluded.log_seq")
        .bind(&i.dedup_key)
        .bind(&i.phone_number_id)
        .bind(&i.waba_id)
        .bind(&i.event_type)
        .bind(i.v)
        .bind(&i.data)
        .bind(&i.occurred_at)
        .bind(&i.recorded_at)
        .bind(&i.assigned_to)
        .bind(s.log_seq as i64)
        .execute(conn)
        .await?;
    Ok(())
}

/// Numbers with items waiting.
pub async fn numbers(
    store: &Store,
    after: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<UnroutedNumber>> {
    let rows = sqlx::query("SELECT phone_number_id, MIN(waba_id), COUNT(*), MIN(recorded_at), MAX(recorded_at) FROM unrouted WHERE assigned_to IS NULL AND phone_number_id > $1 GROUP BY phone_number_id ORDER BY phone_number_id LIMIT $2")
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&store.reads)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| UnroutedNumber {
            phone_number_id: r.get(0),
            waba_id: r.get(1),
            pending: r.get(2),
            first_seen: r.get(3),
            last_seen: r.get(4),
        })
        .collect())
}

/// The items of a number still waiting, oldest first.
pub async fn pending(store: &Store, phone_number_id: &str) -> anyhow::Result<Vec<UnroutedRow>> {
    let mut conn = store.reads.acquire().await?;
    let items = waiting(&mut conn, phone_number_id).await?;
    Ok(items.into_iter().map(|s| s.item).collect())
}

/// As [`pending`], with the log sequence the last of them was recorded at (0 when
/// none): an assignment attaches exactly the items up to it.
pub async fn pending_through(
    store: &Store,
    phone_number_id: &str,
) -> anyhow::Result<(Vec<UnroutedRow>, u64)> {
    let mut conn = store.reads.acquire().await?;
    let items = waiting(&mut conn, phone_number_id).await?;
    let through = items.iter().map(|s| s.log_seq).max().unwrap_or(0);
    Ok((items.into_iter().map(|s| s.item).collect(), through))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use wabridge_events::{
        types::{EventData, TokenRevoked, UnroutedAssigned, UnroutedItem},
        Slug, Timestamp,
    };

    use super::*;
    use crate::views::spec::{at, fold_row, given, meta, Model};

    /// The `unrouted` table by item key.
    #[derive(Clone, Debug, Default, PartialEq)]
    struct Items(BTreeMap<String, StoredItem>);

    impl Model for Items {
        fn fold(&mut self, event: &DomainEvent, meta: &EventMeta) {
            match target_of(event) {
                Some(Target::Item(key)) => fold_row(&mut self.0, key.to_string(), |cur| {
                    next_item(cur, event, meta)
                }),
                // Every stored item goes through the decision (the projection reads
                // only the number's waiting ones; the decision must not need that).
                Some(Target::PendingOf(_)) => {
                    for item in self.0.values_mut() {
                        if let Some(next) = next_item(Some(item), event, meta) {
                            *item = next;
                        }
                    }
                }
                None => {}
            }
        }
    }

    impl Items {
        fn assigned_to(&self, key: &str) -> Option<&str> {
            self.0[key].item.assigned_to.as_deref()
        }
    }

    fn unrouted(key: &str, number: &str) -> DomainEvent {
        WebhookUnrouted {
            phone_number_id: number.into(),
            waba_id: "200".into(),
            item: UnroutedItem {
                event_type: "message.status_updated".into(),
                v: 1,
                data: serde_json::json!({"wamid": key}),
                occurred_at: Timestamp::parse("2026-09-21T10:00:00Z").unwrap(),
            },
            dedup_key: key.into(),
        }
        .into_event()
    }

    fn assigned(number: &str, ws: &str, items: u64) -> DomainEvent {
        UnroutedAssigned {
            phone_number_id: number.into(),
            workspace: Slug::parse(ws).unwrap(),
            items,
            through_seq: 0,
        }
        .into_event()
    }

    #[test]
    fn an_unrouted_item_is_recorded_once() {
        let then = given::<Items>(&[]).when_in("", unrouted("a", "100"));
        then.then_replay_changes_nothing();
        assert_eq!(
            then.state().0["a"],
            StoredItem {
                item: UnroutedRow {
                    dedup_key: "a".into(),
                    phone_number_id: "100".into(),
                    waba_id: "200".into(),
                    event_type: "message.status_updated".into(),
                    v: 1,
                    data: r#"{"wamid":"a"}"#.into(),
                    occurred_at: "2026-09-21T10:00:00.000000Z".into(),
                    recorded_at: at(1),
                    assigned_to: None,
                },
                log_seq: 1,
            }
        );
        given::<Items>(&[unrouted("a", "100")])
            .when(unrouted("a", "100"))
            .then_unchanged();
    }

    #[test]
    fn an_assignment_takes_the_numbers_waiting_items() {
        let then = given::<Items>(&[
            unrouted("a", "100"),
            unrouted("b", "100"),
            unrouted("c", "101"),
        ])
        .when(assigned("100", "globex", 2));
        then.then_replay_changes_nothing();
        let items = then.state();
        assert_eq!(items.assigned_to("a"), Some("globex"));
        assert_eq!(items.assigned_to("b"), Some("globex"));
        assert_eq!(items.assigned_to("c"), None, "another number's item waits");
    }

    #[test]
    fn an_item_arriving_while_the_assignment_runs_keeps_waiting() {
        // "a" at seq 1 was read and delivered; "b" (seq 2) arrived meanwhile.
        let through_1 = UnroutedAssigned {
            phone_number_id: "100".into(),
            workspace: Slug::parse("acme").unwrap(),
            items: 1,
            through_seq: 1,
        }
        .into_event();
        let then = given::<Items>(&[unrouted("a", "100"), unrouted("b", "100")]).when(through_1);
        assert_eq!(then.state().assigned_to("a"), Some("acme"));
        assert_eq!(then.state().assigned_to("b"), None);
    }

    #[test]
    fn assigned_items_keep_their_workspace() {
        let then = given::<Items>(&[
            unrouted("a", "100"),
            assigned("100", "acme", 1),
            unrouted("b", "100"),
        ])
        .when(assigned("100", "globex", 1));
        assert_eq!(then.state().assigned_to("a"), Some("acme"));
        assert_eq!(then.state().assigned_to("b"), Some("globex"));
        given::<Items>(&[unrouted("a", "100"), assigned("100", "acme", 1)])
            .when(assigned("100", "acme", 1))
            .then_unchanged();
    }

    #[test]
    fn items_recorded_after_the_assignment_wait() {
        let then = given::<Items>(&[unrouted("a", "100"), assigned("100", "acme", 1)])
            .when(unrouted("b", "100"));
        assert_eq!(then.state().assigned_to("a"), Some("acme"));
        assert_eq!(then.state().assigned_to("b"), None);
        // The decision compares seqs: an item at or after the assignment's seq stays.
        let late = next_item(
            Some(&then.state().0["b"]),
            &assigned("100", "acme", 1),
            &meta(3, "acme"),
        );
        assert_eq!(late, None);
    }

    #[test]
    fn the_workspace_comes_from_the_assignment_not_the_envelope() {
        let then =
            given::<Items>(&[unrouted("a", "100")]).when_in("", assigned("100", "globex", 1));
        assert_eq!(then.state().assigned_to("a"), Some("globex"));
    }

    #[test]
    fn an_assignment_with_nothing_waiting_changes_nothing() {
        given::<Items>(&[unrouted("c", "101")])
            .when(assigned("100", "acme", 0))
            .then_unchanged();
    }

    #[test]
    fn other_events_are_ignored() {
        let other = TokenRevoked {
            phone_number_id: "100".into(),
        }
        .into_event();
        assert!(target_of(&other).is_none());
        given::<Items>(&[unrouted("a", "100")])
            .when(other)
            .then_unchanged();
    }
}
