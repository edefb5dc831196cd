//! Which workspace holds which phone number (webhook routing).

use serde::Serialize;
use sqlx::{AnyConnection, Row};
use wabridge_events::{DomainEvent, StoredEvent};

use super::EventMeta;
use crate::{Projection, Store};

/// The `phone_numbers` projection.
pub struct PhoneNumbers;

/// A claimed number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct PhoneNumber {
    /// Meta's phone number id.
    pub phone_number_id: String,
    /// The holding workspace.
    pub workspace: String,
    /// The WABA id.
    pub waba_id: String,
    /// The number as displayed.
    pub display_phone_number: String,
    /// When it was claimed.
    pub claimed_at: String,
}

/// What an event does to a number's routing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Routing {
    /// The workspace holds the number with these details.
    Hold(PhoneNumber),
    /// The number is free again.
    Release,
}

/// A number's routing after an event (the decision, pure); `None`: nothing changes.
/// A free number goes to the claiming workspace; a re-claim by its holder updates the
/// WABA and display number and keeps `claimed_at`; claims and releases by another
/// workspace change nothing.
pub fn next_holder(
    current: Option<&PhoneNumber>,
    event: &DomainEvent,
    meta: &EventMeta,
) -> Option<Routing> {
    match (event, current) {
        (DomainEvent::PhoneNumberClaimed(p), None) => Some(Routing::Hold(PhoneNumber {
            phone_number_id: p.phone_number_id.clone(),
            workspace: meta.workspace.clone(),
            waba_id: p.waba_id.clone(),
            display_phone_number: p.display_phone_number.clone(),
            claimed_at: meta.recorded_at.clone(),
        })),
        (DomainEvent::PhoneNumberClaimed(p), Some(cur)) if cur.workspace == meta.workspace => {
            let next = PhoneNumber {
                waba_id: p.waba_id.clone(),
                display_phone_number: p.display_phone_number.clone(),
                ..cur.clone()
            };
            (next != *cur).then_some(Routing::Hold(next))
        }
        (DomainEvent::PhoneNumberReleased(_), Some(cur)) if cur.workspace == meta.workspace => {
            Some(Routing::Release)
        }
        _ => None,
    }
}

/// A WABA's owner after an event (the decision, pure): `Some(Some(ws))` sets it,
/// `Some(None)` frees it, `None` leaves it. The first workspace to claim one of a
/// WABA's numbers owns it; an operator's assignment moves it; a workspace that
/// releases its last number of the WABA (`left` = its numbers of that WABA after the
/// event) frees it.
pub fn next_waba_owner(
    owner: Option<&str>,
    event: &DomainEvent,
    ws: &str,
    left: i64,
) -> Option<Option<String>> {
    match event {
        DomainEvent::PhoneNumberClaimed(_) if owner.is_none() => Some(Some(ws.to_owned())),
        DomainEvent::WabaAssigned(a) if owner != Some(a.workspace.as_str()) => {
            Some(Some(a.workspace.to_string()))
        }
        DomainEvent::PhoneNumberReleased(_) if owner == Some(ws) && left == 0 => Some(None),
        _ => None,
    }
}

#[async_trait::async_trait]
impl Projection for PhoneNumbers {
    fn name(&self) -> &'static str {
        "phone_numbers"
    }
    fn tables(&self) -> &'static [&'static str] {
        &["phone_numbers", "wabas"]
    }
    fn dump_sql(&self) -> &'static str {
        "SELECT phone_number_id || '|' || workspace || '|' || waba_id || '|' || display_phone_number || '|' || claimed_at FROM phone_numbers \
         UNION ALL SELECT 'waba|' || waba_id || '|' || workspace FROM wabas ORDER BY 1"
    }
    async fn apply(&self, conn: &mut AnyConnection, event: &StoredEvent) -> anyhow::Result<()> {
        if super::skip(event, |t| {
            matches!(
                t,
                "phone_number.claimed" | "phone_number.released" | "waba.assigned"
            )
        }) {
            return Ok(());
        }
        let decoded = super::decode(event)?;
        let meta = EventMeta::of(event);
        let (number, waba) = match &decoded {
            DomainEvent::PhoneNumberClaimed(p) => {
                (Some(p.phone_number_id.clone()), Some(p.waba_id.clone()))
            }
            DomainEvent::PhoneNumberReleased(p) => (Some(p.phone_number_id.clone()), None),
            DomainEvent::WabaAssigned(a) => (None, Some(a.waba_id.clone())),
            _ => return Ok(()),
        };
        let current = match &number {
            Some(n) => load(&mut *conn, n).await?,
            None => None,
        };
        // A release names no WABA: it is the one the number was held in.
        let waba = waba.or_else(|| {
            current
                .as_ref()
                .filter(|c| c.workspace == meta.workspace)
                .map(|c| c.waba_id.clone())
        });
        match next_holder(current.as_ref(), decoded, &meta) {
            Some(Routing::Hold(row)) => {
                sqlx::query("INSERT INTO phone_numbers (phone_number_id, workspace, waba_id, display_phone_number, claimed_at) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (phone_number_id) DO UPDATE SET workspace = excluded.workspace, waba_id = excluded.waba_id, display_phone_number = excluded.display_phone_number, claimed_at = excluded.claimed_at")
                    .bind(&row.phone_number_id)
                    .bind(&row.workspace)
                    .bind(&row.waba_id)
                    .bind(&row.display_phone_number)
                    .bind(&row.claimed_at)
                    .execute(&mut *conn)
                    .await?;
            }
            Some(Routing::Release) => {
                sqlx::query("DELETE FROM phone_numbers WHERE phone_number_id = $1")
                    .bind(number.as_deref().unwrap_or_default())
                    .execute(&mut *conn)
                    .await?;
            }
            None => {}
        }
        let Some(waba) = waba else { return Ok(()) };
        let owner: Option<String> =
            sqlx::query_scalar("SELECT workspace FROM wabas WHERE waba_id = $1")
                .bind(&waba)
                .fetch_optional(&mut *conn)
                .await?;
        let left: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM phone_numbers WHERE waba_id = $1 AND workspace = $2",
        )
        .bind(&waba)
        .bind(&meta.workspace)
        .fetch_one(&mut *conn)
        .await?;
        match next_waba_owner(owner.as_deref(), decoded, &meta.workspace, left) {
            Some(Some(ws)) => {
                sqlx::query("INSERT INTO wabas (waba_id, workspace) VALUES ($1, $2) ON CONFLICT (waba_id) DO UPDATE SET workspace = excluded.workspace")
                    .bind(&waba)
                    .bind(&ws)
                    .execute(conn)
                    .await?;
            }
            Some(None) => {
                sqlx::query("DELETE FROM wabas WHERE waba_id = $1")
                    .bind(&waba)
                    .execute(conn)
                    .await?;
            }
            None => {}
        }
        Ok(())
    }
}

async fn load(
    conn: &mut AnyConnection,
    phone_number_id: &str,
) -> anyhow::Result<Option<PhoneNumber>> {
    let r = sqlx::query("SELECT phone_number_id, workspace, waba_id, display_phone_number, claimed_at FROM phone_numbers WHERE phone_number_id = $1")
        .bind(phone_number_id)
        .fetch_optional(conn)
        .await?;
    Ok(r.map(row))
}

fn row(r: sqlx::any::AnyRow) -> PhoneNumber {
    PhoneNumber {
        phone_number_id: r.get(0),
        workspace: r.get(1),
        waba_id: r.get(2),
        display_phone_number: r.get(3),
        claimed_at: r.get(4),
    }
}

/// Who holds a number.
pub async fn get(store: &Store, phone_number_id: &str) -> anyhow::Result<Option<PhoneNumber>> {
    Ok(sqlx::query("SELECT phone_number_id, workspace, waba_id, display_phone_number, claimed_at FROM phone_numbers WHERE phone_number_id = $1")
        .bind(phone_number_id)
        .fetch_optional(&store.reads)
        .await?
        .map(row))
}

/// A workspace's numbers after a cursor.
pub async fn list(
    store: &Store,
    workspace: &str,
    after: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<PhoneNumber>> {
    let rows = sqlx::query("SELECT phone_number_id, workspace, waba_id, display_phone_number, claimed_at FROM phone_numbers WHERE workspace = $1 AND phone_number_id > $2 ORDER BY phone_number_id LIMIT $3")
        .bind(workspace)
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&store.reads)
        .await?;
    Ok(rows.into_iter().map(row).collect())
}

/// Every held number of a WABA, in any workspace.
pub async fn numbers_of_waba(store: &Store, waba_id: &str) -> anyhow::Result<Vec<PhoneNumber>> {
    let rows = sqlx::query("SELECT phone_number_id, workspace, waba_id, display_phone_number, claimed_at FROM phone_numbers WHERE waba_id = $1 ORDER BY phone_number_id")
        .bind(waba_id)
        .fetch_all(&store.reads)
        .await?;
    Ok(rows.into_iter().map(row).collect())
}

/// The workspaces holding at least one number of a WABA.
pub async fn workspaces_of_waba(store: &Store, waba_id: &str) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT workspace FROM phone_numbers WHERE waba_id = $1 ORDER BY workspace",
    )
    .bind(waba_id)
    .fetch_all(&store.reads)
    .await?)
}

/// The subject of the routing table: every claim and release, of every workspace.
pub fn routing_subject(ns: &wabridge_events::Namespace) -> String {
    use wabridge_events::types::EventData;
    wabridge_events::types::PhoneNumberClaimed::subject(ns, None, "numbers")
}

/// The number of a WABA whose display number has these digits (the routing of
/// fields that carry only `display_phone_number`).
pub async fn by_display(
    store: &Store,
    waba_id: &str,
    digits: &str,
) -> anyhow::Result<Option<PhoneNumber>> {
    let rows = sqlx::query("SELECT phone_number_id, workspace, waba_id, display_phone_number, claimed_at FROM phone_numbers WHERE waba_id = $1 ORDER BY phone_number_id")
        .bind(waba_id)
        .fetch_all(&store.reads)
        .await?;
    Ok(rows.into_iter().map(row).find(|n| {
        n.display_phone_number
            .chars()
            .filter(char::is_ascii_digit)
            .collect::<String>()
            == digits
    }))
}

/// The workspace that owns a WABA: its account-level webhooks go there, and only its
/// keys may claim the WABA's numbers.
pub async fn owner_of_waba(store: &Store, waba_id: &str) -> anyhow::Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT workspace FROM wabas WHERE waba_id = $1")
            .bind(waba_id)
            .fetch_optional(&store.reads)
            .await?,
    )
}

#[cfg(test)]
mod tests {
    use wabridge_events::{
        types::{EventData, PhoneNumberClaimed, PhoneNumberReleased, WabaAssigned},
        Slug,
    };

    use super::*;

    fn meta(ws: &str, seq: u64) -> EventMeta {
        EventMeta {
            seq,
            recorded_at: format!("t{seq}"),
            workspace: ws.into(),
        }
    }

    fn claimed(waba: &str, display: &str) -> DomainEvent {
        PhoneNumberClaimed {
            phone_number_id: "1".into(),
            waba_id: waba.into(),
            display_phone_number: display.into(),
        }
        .into_event()
    }

    fn released() -> DomainEvent {
        PhoneNumberReleased {
            phone_number_id: "1".into(),
        }
        .into_event()
    }

    fn held(r: Option<Routing>) -> PhoneNumber {
        match r {
            Some(Routing::Hold(p)) => p,
            other => panic!("not held: {other:?}"),
        }
    }

    #[test]
    fn a_free_number_goes_to_the_claimer_and_a_reclaim_keeps_claimed_at() {
        let first = held(next_holder(None, &claimed("9", "155"), &meta("acme", 1)));
        assert_eq!(
            (first.workspace.as_str(), first.claimed_at.as_str()),
            ("acme", "t1")
        );
        let again = held(next_holder(
            Some(&first),
            &claimed("9", "156"),
            &meta("acme", 2),
        ));
        assert_eq!(again.display_phone_number, "156");
        assert_eq!(again.claimed_at, "t1");
        // The same details again: nothing to write.
        assert_eq!(
            next_holder(Some(&again), &claimed("9", "156"), &meta("acme", 3)),
            None
        );
    }

    #[test]
    fn another_workspace_can_neither_take_nor_release_it() {
        let first = held(next_holder(None, &claimed("9", "155"), &meta("acme", 1)));
        assert_eq!(
            next_holder(Some(&first), &claimed("9", "155"), &meta("globex", 2)),
            None
        );
        assert_eq!(
            next_holder(Some(&first), &released(), &meta("globex", 2)),
            None
        );
        assert_eq!(
            next_holder(Some(&first), &released(), &meta("acme", 3)),
            Some(Routing::Release)
        );
        assert_eq!(next_holder(None, &released(), &meta("acme", 4)), None);
    }

    #[test]
    fn a_waba_belongs_to_its_first_claimer_until_its_last_number_goes() {
        assert_eq!(
            next_waba_owner(None, &claimed("9", "1"), "acme", 1),
            Some(Some("acme".into()))
        );
        assert_eq!(
            next_waba_owner(Some("acme"), &claimed("9", "1"), "globex", 1),
            None
        );
        assert_eq!(next_waba_owner(Some("acme"), &released(), "acme", 1), None);
        assert_eq!(
            next_waba_owner(Some("acme"), &released(), "acme", 0),
            Some(None)
        );
        assert_eq!(
            next_waba_owner(Some("acme"), &released(), "globex", 0),
            None
        );
        let assigned = WabaAssigned {
            waba_id: "9".into(),
            workspace: Slug::parse("globex").unwrap(),
        }
        .into_event();
        assert_eq!(
            next_waba_owner(Some("acme"), &assigned, "", 0),
            Some(Some("globex".into()))
        );
        assert_eq!(next_waba_owner(Some("globex"), &assigned, "", 0), None);
    }
}
