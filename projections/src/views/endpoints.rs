//! Outbound webhook endpoints and their deliveries: each endpoint's settings,
//! sealed secrets and delivery position, and each delivery's attempts, folded from
//! the endpoint events and the sender's `delivery.attempted` records. The sender
//! resumes from this after a restart, so what was delivered is never sent again.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::AnyConnection;
use wabridge_events::{
    types::{DeliveryAttempt, DeliveryOutcome, SealedToken},
    DomainEvent, StoredEvent,
};

use super::EventMeta;
use crate::{Projection, Store};

/// The endpoints projection.
pub struct Endpoints;

/// The projection's name (its checkpoint).
pub const NAME: &str = "endpoints";

/// Why wabridge stopped delivering to an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Disabled {
    /// `gone` (410) or `failing`.
    pub reason: String,
    /// For people.
    pub detail: String,
    /// When.
    pub at: String,
}

/// The delivery at the head of an endpoint's queue while it is being retried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The delivery.
    pub delivery_id: String,
    /// Its event's sequence.
    pub event_seq: u64,
    /// Attempts made.
    pub attempts: u32,
    /// When the first was made.
    pub first_attempt_at: String,
    /// When the next is due.
    pub next_attempt_at: Option<String>,
}

/// A redelivery asked for and not yet made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redelivery {
    /// The delivery.
    pub delivery_id: String,
    /// Its event's sequence.
    pub event_seq: u64,
    /// The log sequence of the request.
    pub requested_seq: u64,
}

/// An endpoint as the read model has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Its workspace.
    pub workspace: String,
    /// `ep_…`.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// Event types it receives (empty: every public type).
    pub types: Vec<String>,
    /// For people.
    pub description: Option<String>,
    /// False when a person paused it.
    pub enabled: bool,
    /// Set when wabridge stopped delivering to it.
    pub disabled: Option<Disabled>,
    /// Deleted endpoints keep their row (their deliveries stay queryable by id).
    pub deleted: bool,
    /// The signing secret, sealed.
    pub secret: SealedToken,
    /// The previous secret while it still signs.
    pub previous_secret: Option<SealedToken>,
    /// Until when.
    pub previous_valid_until: Option<String>,
    /// When it was created.
    pub created_at: String,
    /// When it last changed.
    pub updated_at: String,
    /// The log sequence of its creation (deliveries start after it).
    pub created_seq: u64,
    /// Every event up to this sequence is settled (delivered, or failed for good).
    pub position: u64,
    /// The last recovery's log sequence (0 before any).
    pub generation: u64,
    /// The first event sequence the last recovery delivers again.
    #[serde(default)]
    pub recover_from_seq: Option<u64>,
    /// The head delivery while it is retried.
    pub pending: Option<Pending>,
    /// Redeliveries asked for and not yet made.
    pub redeliveries: Vec<Redelivery>,
    /// Since when its head delivery has been failing.
    pub failing_since: Option<String>,
}

impl Endpoint {
    /// `enabled`, `paused` (a person paused it) or `disabled` (wabridge stopped it).
    pub fn status(&self) -> &'static str {
        if self.disabled.is_some() {
            "disabled"
        } else if !self.enabled {
            "paused"
        } else {
            "enabled"
        }
    }

    /// Whether deliveries are made to it now.
    pub fn active(&self) -> bool {
        !self.deleted && self.enabled && self.disabled.is_none()
    }

    /// Whether it receives events of this type.
    pub fn wants(&self, event_type: &str) -> bool {
        self.types.is_empty() || self.types.iter().any(|t| t == event_type)
    }
}

/// One attempt as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// 1 for the first.
    pub attempt: u32,
    /// When it was made.
    pub at: String,
    /// How it ended.
    pub outcome: DeliveryOutcome,
    /// The endpoint's status, when it answered.
    pub response_status: Option<u16>,
    /// What went wrong.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: u64,
    /// Whether a person asked for it.
    pub manual: bool,
}

/// One event's delivery to one endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// `dlv_…`.
    pub id: String,
    /// Its workspace.
    pub workspace: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// The event's id (`webhook-id`).
    pub event_id: String,
    /// The event's sequence.
    pub event_seq: u64,
    /// Its type.
    pub event_type: String,
    /// `pending` (being retried), `succeeded` or `failed`.
    pub status: String,
    /// The attempts, oldest first.
    pub attempts: Vec<AttemptRecord>,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<String>,
    /// When it changed last.
    pub updated_at: String,
}

/// The id of the delivery of the event at `event_seq` to `endpoint_id`: the same
/// on every attempt, after a restart and after a rebuild.
pub fn delivery_id(endpoint_id: &str, event_seq: u64) -> String {
    let mut h = Sha256::new();
    h.update(endpoint_id.as_bytes());
    h.update(b":");
    h.update(event_seq.to_string().as_bytes());
    format!("dlv_{}", &hex::encode(h.finalize())[..24])
}

/// The endpoint after an endpoint event or a batch of attempts (pure); `None` when
/// the event does not concern it.
pub fn fold_endpoint(
    current: Option<&Endpoint>,
    event: &DomainEvent,
    meta: &EventMeta,
) -> Option<Endpoint> {
    use DomainEvent as E;
    if let E::EndpointCreated(c) = event {
        if current.is_some() {
            return None;
        }
        return Some(Endpoint {
            workspace: meta.workspace.clone(),
            id: c.endpoint_id.clone(),
            url: c.url.clone(),
            types: c.types.clone(),
            description: c.description.clone(),
            enabled: true,
            disabled: None,
            deleted: false,
            secret: c.secret.clone(),
            previous_secret: None,
            previous_valid_until: None,
            created_at: meta.recorded_at.clone(),
            updated_at: meta.recorded_at.clone(),
            created_seq: meta.seq,
            position: meta.seq,
            generation: 0,
            recover_from_seq: None,
            pending: None,
            redeliveries: vec![],
            failing_since: None,
        });
    }
    let mut ep = current?.clone();
    match event {
        E::EndpointUpdated(u) => {
            ep.url = u.url.clone();
            ep.types = u.types.clone();
            ep.description = u.description.clone();
            ep.enabled = u.enabled;
            if u.enabled {
                ep.disabled = None;
                ep.failing_since = None;
            }
        }
        E::EndpointSecretRotated(r) => {
            ep.previous_secret = Some(std::mem::replace(&mut ep.secret, r.secret.clone()));
            ep.previous_valid_until = Some(r.previous_valid_until.to_string());
        }
        E::EndpointSecretRewrapped(r) => {
            ep.secret = r.secret.clone();
            if ep.previous_secret.is_some() {
                ep.previous_secret = r.previous_secret.clone();
            }
        }
        E::EndpointDisabled(d) => {
            ep.disabled = Some(Disabled {
                reason: d.reason.clone(),
                detail: d.detail.clone(),
                at: meta.recorded_at.clone(),
            });
            ep.pending = None;
        }
        E::EndpointDeleted(_) => ep.deleted = true,
        E::EndpointRecoveryRequested(r) => {
            ep.generation = meta.seq;
            ep.recover_from_seq = Some(r.from_seq);
            ep.position = ep.position.min(r.from_seq.saturating_sub(1));
            ep.pending = None;
            ep.failing_since = None;
        }
        E::DeliveryRedeliveryRequested(r) => ep.redeliveries.push(Redelivery {
            delivery_id: r.delivery_id.clone(),
            event_seq: r.event_seq,
            requested_seq: meta.seq,
        }),
        E::DeliveryAttempted(d) => {
            for a in &d.attempts {
                attempt_on_endpoint(&mut ep, a);
            }
        }
        _ => return None,
    }
    ep.updated_at = meta.recorded_at.clone();
    Some(ep)
}

fn attempt_on_endpoint(ep: &mut Endpoint, a: &DeliveryAttempt) {
    if let Some(r) = a.redelivery_of {
        ep.redeliveries.retain(|x| x.requested_seq != r);
        return;
    }
    if a.generation != ep.generation || a.event_seq <= ep.position {
        return;
    }
    match a.outcome {
        DeliveryOutcome::Succeeded | DeliveryOutcome::Failed => {
            ep.position = a.event_seq;
            ep.pending = None;
            if a.outcome == DeliveryOutcome::Succeeded {
                ep.failing_since = None;
            }
        }
        DeliveryOutcome::Retrying => {
            let first = match &ep.pending {
                Some(p) if p.delivery_id == a.delivery_id => p.first_attempt_at.clone(),
                _ => a.at.to_string(),
            };
            ep.pending = Some(Pending {
                delivery_id: a.delivery_id.clone(),
                event_seq: a.event_seq,
                attempts: a.attempt,
                first_attempt_at: first,
                next_attempt_at: a.next_attempt_at.map(|t| t.to_string()),
            });
            if ep.failing_since.is_none() {
                ep.failing_since = Some(a.at.to_string());
            }
        }
    }
}

/// A delivery after one attempt (pure).
pub fn fold_delivery(
    current: Option<&Delivery>,
    endpoint_id: &str,
    a: &DeliveryAttempt,
    meta: &EventMeta,
) -> Delivery {
    let mut d = current.cloned().unwrap_or_else(|| Delivery {
        id: a.delivery_id.clone(),
        workspace: meta.workspace.clone(),
        endpoint_id: endpoint_id.to_string(),
        event_id: a.event_id.clone(),
        event_seq: a.event_seq,
        event_type: a.event_type.clone(),
        status: "pending".into(),
        attempts: vec![],
        next_attempt_at: None,
        updated_at: meta.recorded_at.clone(),
    });
    d.attempts.push(AttemptRecord {
        attempt: a.attempt,
        at: a.at.to_string(),
        outcome: a.outcome,
        response_status: a.response_status,
        error: a.error.clone(),
        duration_ms: a.duration_ms,
        manual: a.redelivery_of.is_some(),
    });
    match a.outcome {
        DeliveryOutcome::Succeeded => {
            d.status = "succeeded".into();
            d.next_attempt_at = None;
        }
        DeliveryOutcome::Failed => {
            // A failed manual redelivery of a delivered event leaves it delivered.
            if !(a.redelivery_of.is_some() && d.status == "succeeded") {
                d.status = "failed".into();
            }
            d.next_attempt_at = None;
        }
        DeliveryOutcome::Retrying => {
            d.status = "pending".into();
            d.next_attempt_at = a.next_attempt_at.map(|t| t.to_string());
        }
    }
    d.updated_at = meta.recorded_at.clone();
    d
}

/// The endpoint an endpoint or delivery event concerns.
pub fn endpoint_of(event: &DomainEvent) -> Option<&str> {
    use DomainEvent as E;
    Some(match event {
        E::EndpointCreated(e) => &e.endpoint_id,
        E::EndpointUpdated(e) => &e.endpoint_id,
        E::EndpointSecretRotated(e) => &e.endpoint_id,
        E::EndpointSecretRewrapped(e) => &e.endpoint_id,
        E::EndpointDisabled(e) => &e.endpoint_id,
        E::EndpointDeleted(e) => &e.endpoint_id,
        E::EndpointRecoveryRequested(e) => &e.endpoint_id,
        E::DeliveryRedeliveryRequested(e) => &e.endpoint_id,
        E::DeliveryAttempted(e) => &e.endpoint_id,
        _ => return None,
    })
}

#[async_trait::async_trait]
impl Projection for Endpoints {
    fn name(&self) -> &'static str {
        NAME
    }
    fn tables(&self) -> &'static [&'static str] {
        &["endpoints", "deliveries"]
    }
    fn dump_sql(&self) -> &'static str {
        "SELECT 'e|' || workspace || '|' || id || '|' || doc FROM endpoints \
         UNION ALL SELECT 'd|' || workspace || '|' || id || '|' || doc FROM deliveries ORDER BY 1"
    }
    async fn apply(&self, conn: &mut AnyConnection, event: &StoredEvent) -> anyhow::Result<()> {
        if super::skip(event, |t| {
            t.starts_with("endpoint.") || t.starts_with("delivery.")
        }) {
            return Ok(());
        }
        let decoded = super::decode(event)?;
        let Some(id) = endpoint_of(decoded) else {
            return Ok(());
        };
        let meta = EventMeta::of(event);
        let current = load(&mut *conn, &meta.workspace, id).await?;
        if let DomainEvent::DeliveryAttempted(d) = decoded {
            for a in &d.attempts {
                let row = load_delivery(&mut *conn, &meta.workspace, &a.delivery_id).await?;
                let next = fold_delivery(row.as_ref(), id, a, &meta);
                sqlx::query("INSERT INTO deliveries (workspace, id, endpoint_id, event_seq, status, doc) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (workspace, id) DO UPDATE SET status = excluded.status, doc = excluded.doc")
                    .bind(&meta.workspace)
                    .bind(&next.id)
                    .bind(id)
                    .bind(next.event_seq as i64)
                    .bind(&next.status)
                    .bind(serde_json::to_string(&next)?)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        let Some(ep) = fold_endpoint(current.as_ref(), decoded, &meta) else {
            return Ok(());
        };
        write_endpoint(conn, &ep).await
    }
    async fn apply_batch(
        &self,
        conn: &mut AnyConnection,
        events: &[StoredEvent],
    ) -> anyhow::Result<()> {
        self.fold_batch(conn, events).await
    }
}

impl Endpoints {
    /// The batch fold: every endpoint and delivery the batch touches is loaded once
    /// (deliveries with one statement per chunk), folded in memory event by event as
    /// [`Projection::apply`] would, and written once (deliveries in multi-row
    /// statements).
    async fn fold_batch(
        &self,
        conn: &mut AnyConnection,
        events: &[StoredEvent],
    ) -> anyhow::Result<()> {
        use std::collections::{BTreeMap, HashSet};
        let relevant = |t: &str| t.starts_with("endpoint.") || t.starts_with("delivery.");
        let mut todo: Vec<(&StoredEvent, &DomainEvent, &str)> = vec![];
        for event in events {
            if super::skip(event, relevant) {
                continue;
            }
            let decoded = super::decode(event)?;
            if let Some(id) = endpoint_of(decoded) {
                todo.push((event, decoded, id));
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        // Load the deliveries the attempts touch.
        let mut wanted: HashSet<(String, String)> = HashSet::new();
        for (event, decoded, _) in &todo {
            if let DomainEvent::DeliveryAttempted(d) = decoded {
                for a in &d.attempts {
                    wanted.insert((super::ws_of(event), a.delivery_id.clone()));
                }
            }
        }
        let mut deliveries: BTreeMap<(String, String), Delivery> = BTreeMap::new();
        let wanted: Vec<(String, String)> = wanted.into_iter().collect();
        for chunk in wanted.chunks(crate::batch::rows_per_statement(2)) {
            let sql = format!(
                "SELECT doc FROM deliveries WHERE (workspace, id) IN (VALUES {})",
                crate::batch::placeholders(chunk.len(), 2)
            );
            let values = chunk.iter().flat_map(|(w, i)| {
                [
                    crate::batch::Value::Text(w.clone()),
                    crate::batch::Value::Text(i.clone()),
                ]
            });
            let docs: Vec<String> = crate::batch::bind_all(sqlx::query(&sql), values)
                .fetch_all(&mut *conn)
                .await?
                .into_iter()
                .map(|r| sqlx::Row::get(&r, 0))
                .collect();
            for d in parse::<Delivery>(docs)? {
                deliveries.insert((d.workspace.clone(), d.id.clone()), d);
            }
        }
        let mut endpoints: BTreeMap<(String, String), Option<Endpoint>> = BTreeMap::new();
        let mut touched_deliveries: HashSet<(String, String)> = HashSet::new();
        let mut touched_endpoints: HashSet<(String, String)> = HashSet::new();
        for (event, decoded, id) in todo {
            let meta = EventMeta::of(event);
            let key = (meta.workspace.clone(), id.to_string());
            if !endpoints.contains_key(&key) {
                let ep = load(&mut *conn, &meta.workspace, id).await?;
                endpoints.insert(key.clone(), ep);
            }
            if let DomainEvent::DeliveryAttempted(d) = decoded {
                for a in &d.attempts {
                    let dk = (meta.workspace.clone(), a.delivery_id.clone());
                    let next = fold_delivery(deliveries.get(&dk), id, a, &meta);
                    deliveries.insert(dk.clone(), next);
                    touched_deliveries.insert(dk);
                }
            }
            let current = endpoints.get(&key).cloned().flatten();
            if let Some(ep) = fold_endpoint(current.as_ref(), decoded, &meta) {
                endpoints.insert(key.clone(), Some(ep));
                touched_endpoints.insert(key);
            }
        }
        let rows: Vec<&Delivery> = deliveries
            .iter()
            .filter(|(k, _)| touched_deliveries.contains(*k))
            .map(|(_, d)| d)
            .collect();
        let rows = rows
            .iter()
            .map(|d| {
                Ok((
                    &d.workspace,
                    &d.id,
                    &d.endpoint_id,
                    d.event_seq as i64,
                    &d.status,
                    serde_json::to_string(d)?,
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        {
            use crate::batch::Col::{Int, Text};
            crate::batch::insert_rows(
                &mut *conn,
                "INSERT INTO deliveries (workspace, id, endpoint_id, event_seq, status, doc)",
                &[Text, Text, Text, Int, Text, Text],
                "ON CONFLICT (workspace, id) DO UPDATE SET status = excluded.status, doc = excluded.doc",
                &rows,
            )
            .await?;
        }
        for key in touched_endpoints {
            if let Some(Some(ep)) = endpoints.get(&key) {
                write_endpoint(&mut *conn, ep).await?;
            }
        }
        Ok(())
    }
}

async fn write_endpoint(conn: &mut AnyConnection, ep: &Endpoint) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO endpoints (workspace, id, created_seq, deleted, doc) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (workspace, id) DO UPDATE SET deleted = excluded.deleted, doc = excluded.doc")
        .bind(&ep.workspace)
        .bind(&ep.id)
        .bind(ep.created_seq as i64)
        .bind(ep.deleted as i64)
        .bind(serde_json::to_string(ep)?)
        .execute(conn)
        .await?;
    Ok(())
}

async fn load(conn: &mut AnyConnection, ws: &str, id: &str) -> anyhow::Result<Option<Endpoint>> {
    super::load_doc(conn, "endpoints", ws, id).await
}

async fn load_delivery(
    conn: &mut AnyConnection,
    ws: &str,
    id: &str,
) -> anyhow::Result<Option<Delivery>> {
    super::load_doc(conn, "deliveries", ws, id).await
}

fn parse<T: serde::de::DeserializeOwned>(docs: Vec<String>) -> anyhow::Result<Vec<T>> {
    docs.iter()
        .map(|d| serde_json::from_str(d).map_err(Into::into))
        .collect()
}

/// A workspace's endpoint (deleted ones too: the caller decides).
pub async fn get(store: &Store, ws: &str, id: &str) -> anyhow::Result<Option<Endpoint>> {
    let mut conn = store.reads.acquire().await?;
    load(&mut conn, ws, id).await
}

/// A workspace's endpoints that are not deleted, oldest first.
pub async fn list(store: &Store, ws: &str) -> anyhow::Result<Vec<Endpoint>> {
    let docs: Vec<String> = sqlx::query_scalar(
        "SELECT doc FROM endpoints WHERE workspace = $1 AND deleted = 0 ORDER BY created_seq",
    )
    .bind(ws)
    .fetch_all(&store.reads)
    .await?;
    parse(docs)
}

/// Every endpoint with a secret not sealed under `version` (a key rotation's work).
pub async fn not_on_version(store: &Store, version: &str) -> anyhow::Result<Vec<Endpoint>> {
    Ok(all_live(store)
        .await?
        .into_iter()
        .filter(|e| {
            e.secret.key_version != version
                || e.previous_secret
                    .as_ref()
                    .is_some_and(|p| p.key_version != version)
        })
        .collect())
}

/// Every endpoint that is not deleted, in every workspace (the sender's start).
pub async fn all_live(store: &Store) -> anyhow::Result<Vec<Endpoint>> {
    let docs: Vec<String> =
        sqlx::query_scalar("SELECT doc FROM endpoints WHERE deleted = 0 ORDER BY created_seq")
            .fetch_all(&store.reads)
            .await?;
    parse(docs)
}

/// A delivery.
pub async fn delivery(store: &Store, ws: &str, id: &str) -> anyhow::Result<Option<Delivery>> {
    let mut conn = store.reads.acquire().await?;
    load_delivery(&mut conn, ws, id).await
}

/// An endpoint's deliveries, newest first, before the event sequence `before`,
/// optionally only those with `status`.
pub async fn deliveries(
    store: &Store,
    ws: &str,
    endpoint_id: &str,
    status: Option<&str>,
    before: Option<u64>,
    limit: i64,
) -> anyhow::Result<Vec<Delivery>> {
    let docs: Vec<String> = sqlx::query_scalar(
        "SELECT doc FROM deliveries WHERE workspace = $1 AND endpoint_id = $2 AND event_seq < $3 \
         AND ($4 = '' OR status = $4) ORDER BY event_seq DESC LIMIT $5",
    )
    .bind(ws)
    .bind(endpoint_id)
    .bind(before.map(|b| b as i64).unwrap_or(i64::MAX))
    .bind(status.unwrap_or(""))
    .bind(limit)
    .fetch_all(&store.reads)
    .await?;
    parse(docs)
}

#[cfg(test)]
mod tests {
    use wabridge_events::{
        types::{
            DeliveryAttempted, EndpointCreated, EndpointDisabled, EndpointRecoveryRequested,
            EndpointUpdated,
        },
        Timestamp,
    };

    use super::*;
    use crate::views::spec::meta;

    fn sealed() -> SealedToken {
        SealedToken {
            key_version: "v1".into(),
            nonce: "00".into(),
            ciphertext: "00".into(),
        }
    }

    fn created() -> DomainEvent {
        DomainEvent::EndpointCreated(EndpointCreated {
            endpoint_id: "ep_1".into(),
            url: "https://example.com/hook".into(),
            types: vec![],
            description: None,
            secret: sealed(),
        })
    }

    fn attempt(
        event_seq: u64,
        n: u32,
        outcome: DeliveryOutcome,
        generation: u64,
    ) -> DeliveryAttempt {
        DeliveryAttempt {
            delivery_id: delivery_id("ep_1", event_seq),
            event_id: format!("ev{event_seq}"),
            event_seq,
            event_type: "message.received".into(),
            attempt: n,
            at: Timestamp::from_unix_seconds(1_790_000_000 + n as i64).unwrap(),
            outcome,
            response_status: Some(if outcome == DeliveryOutcome::Succeeded {
                200
            } else {
                500
            }),
            error: None,
            duration_ms: 3,
            next_attempt_at: None,
            redelivery_of: None,
            generation,
        }
    }

    fn attempted(attempts: Vec<DeliveryAttempt>) -> DomainEvent {
        DomainEvent::DeliveryAttempted(DeliveryAttempted {
            endpoint_id: "ep_1".into(),
            attempts,
        })
    }

    fn fold(events: &[DomainEvent]) -> Endpoint {
        let mut ep: Option<Endpoint> = None;
        for (i, e) in events.iter().enumerate() {
            if let Some(next) = fold_endpoint(ep.as_ref(), e, &meta(10 + i as u64, "acme")) {
                ep = Some(next);
            }
        }
        ep.expect("created")
    }

    #[test]
    fn a_new_endpoint_starts_after_its_creation() {
        let ep = fold(&[created()]);
        assert_eq!(
            (ep.position, ep.created_seq, ep.status()),
            (10, 10, "enabled")
        );
    }

    #[test]
    fn settled_attempts_move_the_position_and_retries_keep_it() {
        let ep = fold(&[
            created(),
            attempted(vec![
                attempt(20, 1, DeliveryOutcome::Succeeded, 0),
                attempt(25, 1, DeliveryOutcome::Retrying, 0),
            ]),
            attempted(vec![attempt(25, 2, DeliveryOutcome::Retrying, 0)]),
        ]);
        assert_eq!(ep.position, 20);
        let p = ep.pending.as_ref().expect("pending");
        assert_eq!((p.event_seq, p.attempts), (25, 2));
        assert_eq!(
            p.first_attempt_at,
            attempt(25, 1, DeliveryOutcome::Retrying, 0).at.to_string()
        );
        assert!(ep.failing_since.is_some());
        let ep = fold(&[
            created(),
            attempted(vec![attempt(25, 1, DeliveryOutcome::Retrying, 0)]),
            attempted(vec![attempt(25, 2, DeliveryOutcome::Succeeded, 0)]),
        ]);
        assert_eq!(
            (
                ep.position,
                ep.pending.is_none(),
                ep.failing_since.is_none()
            ),
            (25, true, true)
        );
    }

    #[test]
    fn a_recovery_moves_the_position_back_and_older_attempts_cannot_undo_it() {
        let ep = fold(&[
            created(),
            attempted(vec![attempt(30, 1, DeliveryOutcome::Succeeded, 0)]),
            DomainEvent::EndpointRecoveryRequested(EndpointRecoveryRequested {
                endpoint_id: "ep_1".into(),
                since: Timestamp::from_unix_seconds(1_790_000_000).unwrap(),
                from_seq: 15,
            }),
            // recorded after the recovery, made before it
            attempted(vec![attempt(40, 1, DeliveryOutcome::Succeeded, 0)]),
        ]);
        assert_eq!((ep.position, ep.generation), (14, 12));
        let ep2 = fold_endpoint(
            Some(&ep),
            &attempted(vec![attempt(20, 1, DeliveryOutcome::Succeeded, 12)]),
            &meta(14, "acme"),
        )
        .unwrap();
        assert_eq!(ep2.position, 20);
    }

    #[test]
    fn disabling_and_enabling_again() {
        let disabled = DomainEvent::EndpointDisabled(EndpointDisabled {
            endpoint_id: "ep_1".into(),
            reason: "gone".into(),
            detail: "410".into(),
        });
        let ep = fold(&[created(), disabled.clone()]);
        assert_eq!((ep.status(), ep.active()), ("disabled", false));
        let ep = fold(&[
            created(),
            disabled,
            DomainEvent::EndpointUpdated(EndpointUpdated {
                endpoint_id: "ep_1".into(),
                url: "https://example.com/hook".into(),
                types: vec!["message.received".into()],
                description: None,
                enabled: true,
            }),
        ]);
        assert_eq!(
            (
                ep.status(),
                ep.wants("message.received"),
                ep.wants("message.sent")
            ),
            ("enabled", true, false)
        );
    }

    #[test]
    fn a_delivery_records_each_attempt_and_ends_with_its_outcome() {
        let m = meta(50, "acme");
        let d = fold_delivery(
            None,
            "ep_1",
            &attempt(20, 1, DeliveryOutcome::Retrying, 0),
            &m,
        );
        assert_eq!((d.status.as_str(), d.attempts.len()), ("pending", 1));
        let d = fold_delivery(
            Some(&d),
            "ep_1",
            &attempt(20, 2, DeliveryOutcome::Succeeded, 0),
            &m,
        );
        assert_eq!((d.status.as_str(), d.attempts.len()), ("succeeded", 2));
        let mut manual = attempt(20, 3, DeliveryOutcome::Failed, 0);
        manual.redelivery_of = Some(60);
        let d = fold_delivery(Some(&d), "ep_1", &manual, &m);
        assert_eq!(
            (d.status.as_str(), d.attempts[2].manual),
            ("succeeded", true)
        );
    }
}
