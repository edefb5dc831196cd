//! Which workspace holds which phone number (webhook routing).

use serde::Serialize;
use sqlx::{AnyConnection, Row};
use wabridge_events::{DomainEvent, StoredEvent};

use crate::{Projection, Store};

/// The `phone_numbers` projection.
pub struct PhoneNumbers;

/// A claimed number.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
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

#[async_trait::async_trait]
impl Projection for PhoneNumbers {
    fn name(&self) -> &'static str {
        "phone_numbers"
    }
    fn dump_sql(&self) -> &'static str {
        "SELECT phone_number_id || '|' || workspace || '|' || waba_id || '|' || display_phone_number || '|' || claimed_at FROM phone_numbers \
         UNION ALL SELECT 'waba|' || waba_id || '|' || workspace FROM wabas ORDER BY 1"
    }
    async fn apply(&self, conn: &mut AnyConnection, event: &StoredEvent) -> anyhow::Result<()> {
        let ws = super::ws_of(event);
        match super::decode(event)? {
            DomainEvent::PhoneNumberClaimed(p) => {
                sqlx::query("INSERT INTO phone_numbers (phone_number_id, workspace, waba_id, display_phone_number, claimed_at) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (phone_number_id) DO UPDATE SET waba_id = excluded.waba_id, display_phone_number = excluded.display_phone_number WHERE phone_numbers.workspace = excluded.workspace")
                    .bind(&p.phone_number_id)
                    .bind(&ws)
                    .bind(&p.waba_id)
                    .bind(&p.display_phone_number)
                    .bind(event.envelope.recorded_at.to_string())
                    .execute(&mut *conn)
                    .await?;
                // The first workspace to claim one of a WABA's numbers owns the WABA.
                sqlx::query("INSERT INTO wabas (waba_id, workspace) VALUES ($1, $2) ON CONFLICT (waba_id) DO NOTHING")
                    .bind(&p.waba_id)
                    .bind(&ws)
                    .execute(conn)
                    .await?;
            }
            DomainEvent::PhoneNumberReleased(p) => {
                let waba: Option<String> = sqlx::query_scalar(
                    "SELECT waba_id FROM phone_numbers WHERE phone_number_id = $1 AND workspace = $2",
                )
                .bind(&p.phone_number_id)
                .bind(&ws)
                .fetch_optional(&mut *conn)
                .await?;
                sqlx::query(
                    "DELETE FROM phone_numbers WHERE phone_number_id = $1 AND workspace = $2",
                )
                .bind(&p.phone_number_id)
                .bind(&ws)
                .execute(&mut *conn)
                .await?;
                // A workspace that releases its last number of a WABA releases the WABA.
                if let Some(waba) = waba {
                    let left: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM phone_numbers WHERE waba_id = $1 AND workspace = $2",
                    )
                    .bind(&waba)
                    .bind(&ws)
                    .fetch_one(&mut *conn)
                    .await?;
                    if left == 0 {
                        sqlx::query("DELETE FROM wabas WHERE waba_id = $1 AND workspace = $2")
                            .bind(&waba)
                            .bind(&ws)
                            .execute(conn)
                            .await?;
                    }
                }
            }
            DomainEvent::WabaAssigned(a) => {
                sqlx::query("INSERT INTO wabas (waba_id, workspace) VALUES ($1, $2) ON CONFLICT (waba_id) DO UPDATE SET workspace = excluded.workspace")
                    .bind(&a.waba_id)
                    .bind(a.workspace.as_str())
                    .execute(conn)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }
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
