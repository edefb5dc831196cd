//! Dead letters: events a consumer could not process, and what became of them.

use serde::Serialize;
use sqlx::{AnyConnection, Row};
use wabridge_events::{types::DeadLetterRecorded, DomainEvent, StoredEvent};

use super::EventMeta;
use crate::{Projection, Store};

/// The `dead_letters` projection.
pub struct DeadLetters;

/// One dead letter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct DeadLetter {
    /// `<consumer>:<stream>:<seq>`.
    pub id: String,
    /// The consumer that failed.
    pub consumer: String,
    /// `domain` or `raw`.
    pub stream: String,
    /// The failed event's sequence.
    pub seq: i64,
    /// Its type.
    pub event_type: String,
    /// Why it failed.
    pub reason: String,
    /// Attempts made.
    pub attempts: i64,
    /// `open`, `redriving`, `resolved` or `discarded`.
    pub status: String,
    /// First recorded.
    pub recorded_at: String,
    /// Last change.
    pub updated_at: String,
}

/// The dead letter an event names, when it is one this projection folds.
fn id_of(event: &DomainEvent) -> Option<&str> {
    match event {
        DomainEvent::DeadLetterRecorded(d) => Some(&d.id),
        DomainEvent::DeadLetterRedriven(d) => Some(&d.id),
        DomainEvent::DeadLetterResolved(d) => Some(&d.id),
        DomainEvent::DeadLetterDiscarded(d) => Some(&d.id),
        _ => None,
    }
}

/// The status an operator action or a redrive outcome gives a dead letter.
fn status_of(event: &DomainEvent) -> Option<&'static str> {
    match event {
        DomainEvent::DeadLetterRedriven(_) => Some("redriving"),
        DomainEvent::DeadLetterResolved(_) => Some("resolved"),
        DomainEvent::DeadLetterDiscarded(_) => Some("discarded"),
        _ => None,
    }
}

/// A dead letter after an event (the projection's decision, pure): `None` when the
/// event changes nothing. `current` is the stored dead letter the event names.
///
/// - `dead_letter.recorded` opens it, first recorded at the log time; recorded again
///   (a redrive failed), it is open again with the new reason and the attempts of
///   every recording summed.
/// - `dead_letter.redriven` / `resolved` / `discarded` set the status `redriving` /
///   `resolved` / `discarded`, and `updated_at` to the log time, even when the status
///   does not change; for an unknown dead letter they change nothing.
///
/// Not idempotent under a replay of the same event (attempts add up): like every
/// projection, it relies on the driver applying each event once.
pub fn next_letter(
    current: Option<&DeadLetter>,
    event: &DomainEvent,
    meta: &EventMeta,
) -> Option<DeadLetter> {
    let next = match (event, current) {
        (DomainEvent::DeadLetterRecorded(d), None) => recorded(d, meta),
        (DomainEvent::DeadLetterRecorded(d), Some(cur)) => DeadLetter {
            reason: d.reason.clone(),
            attempts: cur.attempts + i64::from(d.attempts),
            status: "open".into(),
            updated_at: meta.recorded_at.clone(),
            ..cur.clone()
        },
        (event, Some(cur)) => DeadLetter {
            status: status_of(event)?.into(),
            updated_at: meta.recorded_at.clone(),
            ..cur.clone()
        },
        (_, None) => return None,
    };
    super::changed(current, next)
}

/// A newly recorded dead letter.
fn recorded(d: &DeadLetterRecorded, meta: &EventMeta) -> DeadLetter {
    DeadLetter {
        id: d.id.clone(),
        consumer: d.consumer.clone(),
        stream: d.stream.clone(),
        seq: d.seq as i64,
        event_type: d.event_type.clone(),
        reason: d.reason.clone(),
        attempts: i64::from(d.attempts),
        status: "open".into(),
        recorded_at: meta.recorded_at.clone(),
        updated_at: meta.recorded_at.clone(),
    }
}

#[async_trait::async_trait]
impl Projection for DeadLetters {
    fn name(&self) -> &'static str {
        "dead_letters"
    }
    fn tables(&self) -> &'static [&'static str] {
        &["dead_letters"]
    }
    fn dump_sql(&self) -> &'static str {
        "SELECT id || '|' || consumer || '|' || stream || '|' || CAST(seq AS TEXT) || '|' || event_type || '|' || reason || '|' || CAST(attempts AS TEXT) || '|' || status || '|' || recorded_at || '|' || updated_at FROM dead_letters ORDER BY 1"
    }
    async fn apply(&self, conn: &mut AnyConnection, event: &StoredEvent) -> anyhow::Result<()> {
        if super::skip(event, |t| t.starts_with("dead_letter.")) {
            return Ok(());
        }
        let decoded = super::decode(event)?;
        let Some(id) = id_of(decoded) else {
            return Ok(());
        };
        let current = load(&mut *conn, id).await?;
        if let Some(next) = next_letter(current.as_ref(), decoded, &EventMeta::of(event)) {
            put(conn, &next).await?;
        }
        Ok(())
    }
}

/// The stored dead letter, in the projection's transaction.
async fn load(conn: &mut AnyConnection, id: &str) -> anyhow::Result<Option<DeadLetter>> {
    let sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1");
    Ok(sqlx::query(&sql)
        .bind(id)
        .fetch_optional(conn)
        .await?
        .map(row))
}

/// Writes a dead letter (inserted, or replacing the stored one).
async fn put(conn: &mut AnyConnection, d: &DeadLetter) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO dead_letters (id, consumer, stream, seq, event_type, reason, attempts, status, recorded_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (id) DO UPDATE SET consumer = excluded.consumer, stream = excluded.stream, seq = excluded.seq, event_type = excluded.event_type, reason = excluded.reason, attempts = excluded.attempts, status = excluded.status, recorded_at = excluded.recorded_at, updated_at = excluded.updated_at")
        .bind(&d.id)
        .bind(&d.consumer)
        .bind(&d.stream)
        .bind(d.seq)
        .bind(&d.event_type)
        .bind(&d.reason)
        .bind(d.attempts)
        .bind(&d.status)
        .bind(&d.recorded_at)
        .bind(&d.updated_at)
        .execute(conn)
        .await?;
    Ok(())
}

const COLUMNS: &str =
    "id, consumer, stream, seq, event_type, reason, attempts, status, recorded_at, updated_at";

fn row(r: sqlx::any::AnyRow) -> DeadLetter {
    DeadLetter {
        id: r.get(0),
        consumer: r.get(1),
        stream: r.get(2),
        seq: r.get(3),
        event_type: r.get(4),
        reason: r.get(5),
        attempts: r.get(6),
        status: r.get(7),
        recorded_at: r.get(8),
        updated_at: r.get(9),
    }
}

/// Dead letters, optionally of one status, after a cursor (id order).
pub async fn list(
    store: &Store,
    status: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<DeadLetter>> {
    let sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE ($1 = '' OR status = $1) AND id > $2 ORDER BY id LIMIT $3");
    let rows = sqlx::query(&sql)
        .bind(status.unwrap_or(""))
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&store.reads)
        .await?;
    Ok(rows.into_iter().map(row).collect())
}

/// One dead letter.
pub async fn get(store: &Store, id: &str) -> anyhow::Result<Option<DeadLetter>> {
    let sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1");
    Ok(sqlx::query(&sql)
        .bind(id)
        .fetch_optional(&store.reads)
        .await?
        .map(row))
}

/// How many are open.
pub async fn count_open(store: &Store) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters WHERE status = 'open'")
            .fetch_one(&store.reads)
            .await?,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use wabridge_events::types::{
        DeadLetterDiscarded, DeadLetterRedriven, DeadLetterResolved, EventData, TokenRevoked,
    };

    use super::*;
    use crate::views::spec::{at, fold_row, given, Model};

    /// The `dead_letters` table by id.
    #[derive(Clone, Debug, Default, PartialEq)]
    struct Letters(BTreeMap<String, DeadLetter>);

    impl Model for Letters {
        fn fold(&mut self, event: &DomainEvent, meta: &EventMeta) {
            if let Some(id) = id_of(event) {
                fold_row(&mut self.0, id.to_string(), |cur| {
                    next_letter(cur, event, meta)
                });
            }
        }
    }

    impl Letters {
        fn letter(&self, id: &str) -> &DeadLetter {
            &self.0[id]
        }
    }

    const ID: &str = "messages:domain:7";

    fn recorded(reason: &str, attempts: u32) -> DomainEvent {
        DeadLetterRecorded {
            id: ID.into(),
            consumer: "messages".into(),
            stream: "domain".into(),
            seq: 7,
            event_type: "message.status_updated".into(),
            reason: reason.into(),
            attempts,
            item: None,
        }
        .into_event()
    }

    fn redriven() -> DomainEvent {
        DeadLetterRedriven { id: ID.into() }.into_event()
    }

    fn resolved() -> DomainEvent {
        DeadLetterResolved { id: ID.into() }.into_event()
    }

    fn discarded() -> DomainEvent {
        DeadLetterDiscarded {
            id: ID.into(),
            reason: Some("obsolete".into()),
        }
        .into_event()
    }

    #[test]
    fn a_recording_opens_the_dead_letter() {
        let then = given::<Letters>(&[]).when(recorded("no such column", 5));
        assert_eq!(
            then.state().letter(ID),
            &DeadLetter {
                id: ID.into(),
                consumer: "messages".into(),
                stream: "domain".into(),
                seq: 7,
                event_type: "message.status_updated".into(),
                reason: "no such column".into(),
                attempts: 5,
                status: "open".into(),
                recorded_at: at(1),
                updated_at: at(1),
            }
        );
    }

    #[test]
    fn recorded_again_it_reopens_with_the_attempts_summed() {
        let then =
            given::<Letters>(&[recorded("first", 5), redriven()]).when(recorded("second", 1));
        let d = then.state().letter(ID);
        assert_eq!((d.status.as_str(), d.attempts), ("open", 6));
        assert_eq!(d.reason, "second");
        assert_eq!(
            (d.recorded_at.clone(), d.updated_at.clone()),
            (at(1), at(3))
        );
    }

    #[test]
    fn operator_actions_and_outcomes_set_the_status() {
        for (event, status) in [
            (redriven(), "redriving"),
            (resolved(), "resolved"),
            (discarded(), "discarded"),
        ] {
            let then = given::<Letters>(&[recorded("r", 5)]).when(event);
            then.then_replay_changes_nothing();
            let d = then.state().letter(ID);
            assert_eq!((d.status.as_str(), d.updated_at.clone()), (status, at(2)));
            assert_eq!(d.attempts, 5);
        }
        let then = given::<Letters>(&[recorded("r", 5), redriven()]).when(resolved());
        assert_eq!(then.state().letter(ID).status, "resolved");
    }

    #[test]
    fn the_same_status_again_only_moves_updated_at() {
        let then = given::<Letters>(&[recorded("r", 5), redriven()]).when(redriven());
        let d = then.state().letter(ID);
        assert_eq!(
            (d.status.as_str(), d.updated_at.clone()),
            ("redriving", at(3))
        );
    }

    #[test]
    fn actions_on_an_unknown_dead_letter_change_nothing() {
        for event in [redriven(), resolved(), discarded()] {
            given::<Letters>(&[]).when(event).then_unchanged();
        }
    }

    #[test]
    fn other_events_are_ignored() {
        let other = TokenRevoked {
            phone_number_id: "100".into(),
        }
        .into_event();
        assert_eq!(id_of(&other), None);
        given::<Letters>(&[recorded("r", 5)])
            .when(other)
            .then_unchanged();
    }
}
