//! The read models and their queries.
//!
//! Each projection's decision is a pure function from the row it holds (if any) and
//! one event to the row after it; `apply` only loads that row, asks the decision and
//! writes the answer. The decisions are unit-tested without a database with the
//! given/when/then helper in `spec`.

pub mod api_keys;
pub mod audit;
pub mod consent;
mod consent_batch;
pub mod dead_letters;
pub mod endpoints;
pub mod media;
pub mod messages;
pub mod onboarding;
pub mod phone_numbers;
pub mod rate_limits;
pub mod send_context;
pub mod sends;
pub mod tokens;
pub mod unrouted;
pub mod webhook_items;
pub mod workspaces;

use std::sync::Arc;

use wabridge_events::{DomainEvent, StoredEvent};

use crate::{driver::Follower, projection, Projection};

/// The consumer name of the projection follower.
pub const CONSUMER: &str = "proj_group";

/// Every read model on one subscription to the domain stream: each batch is applied
/// to all of them in one transaction (each keeps its own checkpoint).
pub fn follower(keys: &Keys) -> Follower {
    Follower {
        consumer: CONSUMER,
        stream: wabridge_events::StreamKind::Domain,
        reactors: projection::reactors(all(keys)),
    }
}

/// The names of every projection (their checkpoints).
pub fn names() -> Vec<&'static str> {
    all(&Keys::default()).iter().map(|p| p.name()).collect()
}

/// What the projections need from the configuration.
#[derive(Clone, Default)]
pub struct Keys {
    /// `AUDIT_SIGNING_KEY`, which keys the audit chain.
    pub audit: Option<secrecy::SecretString>,
}

/// Every projection, in the order they are started.
pub fn all(keys: &Keys) -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(workspaces::Workspaces),
        Arc::new(api_keys::ApiKeys),
        Arc::new(phone_numbers::PhoneNumbers),
        Arc::new(audit::Audit::new(keys.audit.as_ref())),
        Arc::new(dead_letters::DeadLetters),
        Arc::new(unrouted::Unrouted),
        Arc::new(tokens::Tokens),
        Arc::new(messages::Messages),
        Arc::new(consent::Consent),
        Arc::new(sends::Sends),
        Arc::new(send_context::SendContext),
        Arc::new(rate_limits::RateLimits),
        Arc::new(onboarding::Onboarding),
        Arc::new(endpoints::Endpoints),
        Arc::new(media::InboundMedia),
    ]
}

/// Whether a projection may skip an event without decoding it: its type is one this
/// build knows and `relevant` says the projection does not fold it. An unknown type
/// is never skipped (decoding it fails: a dead letter, not a silent gap).
pub fn skip(event: &StoredEvent, relevant: impl Fn(&str) -> bool) -> bool {
    let t = event.envelope.event_type.as_str();
    !relevant(t) && wabridge_events::types::is_known(t, event.envelope.v)
}

/// Decodes a domain event (an unknown type or bad data is an error: dead-lettered).
/// Decoded once per stored event: every projection of a batch shares the decoding.
pub fn decode(event: &StoredEvent) -> anyhow::Result<&DomainEvent> {
    Ok(event.decoded()?)
}

/// The JSON document of a workspace's row `id` in `table` (the projections that
/// keep each state as one document: onboarding, endpoints, deliveries).
pub(crate) async fn load_doc<T: serde::de::DeserializeOwned>(
    conn: &mut sqlx::AnyConnection,
    table: &'static str,
    ws: &str,
    id: &str,
) -> anyhow::Result<Option<T>> {
    let sql = format!("SELECT doc FROM {table} WHERE workspace = $1 AND id = $2");
    let doc: Option<String> = sqlx::query_scalar(&sql)
        .bind(ws)
        .bind(id)
        .fetch_optional(conn)
        .await?;
    doc.map(|d| serde_json::from_str(&d).map_err(Into::into))
        .transpose()
}

/// What the decisions of the read models need from an event's envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventMeta {
    /// The event's sequence in its stream.
    pub seq: u64,
    /// When it was logged (the read models' clock), as text.
    pub recorded_at: String,
    /// Its workspace slug ("" for global events).
    pub workspace: String,
}

impl EventMeta {
    /// The envelope facts of a stored event.
    pub fn of(event: &StoredEvent) -> Self {
        EventMeta {
            seq: event.seq,
            recorded_at: event.envelope.recorded_at.to_string(),
            workspace: ws_of(event),
        }
    }
}

/// `Some(new)` unless it is what is already stored: a decision that would write the
/// same row changes nothing.
pub(crate) fn changed<R: PartialEq>(current: Option<&R>, new: R) -> Option<R> {
    (current != Some(&new)).then_some(new)
}

/// The workspace slug of an event, as text ("" for global events).
pub fn ws_of(event: &StoredEvent) -> String {
    event
        .envelope
        .workspace
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// Given/when/then for the pure decisions: a model of a projection's tables is folded
/// over the events that happened (`given`), then over the one under test (`when`),
/// and the test looks at what changed (`then_*`).
#[cfg(test)]
pub(crate) mod spec {
    use std::{collections::BTreeMap, fmt::Debug};

    use wabridge_events::{DomainEvent, Timestamp};

    use super::EventMeta;

    /// The workspace of events unless a test says otherwise.
    pub(crate) const WS: &str = "acme";

    /// A projection's tables as its decisions see them.
    pub(crate) trait Model: Clone + Debug + Default + PartialEq {
        /// Applies one event through the projection's decisions.
        fn fold(&mut self, event: &DomainEvent, meta: &EventMeta);
    }

    /// The log time of the event at `seq`: one second apart, in log order.
    pub(crate) fn at(seq: u64) -> String {
        Timestamp::from_unix_seconds(1_790_000_000 + seq as i64)
            .expect("a valid time")
            .to_string()
    }

    /// The envelope of the event at `seq` in workspace `ws`.
    pub(crate) fn meta(seq: u64, ws: &str) -> EventMeta {
        EventMeta {
            seq,
            recorded_at: at(seq),
            workspace: ws.to_string(),
        }
    }

    /// Folds a one-row decision into a table: the row at `key` becomes what `decide`
    /// answers for it, when it answers.
    pub(crate) fn fold_row<K: Ord, R>(
        table: &mut BTreeMap<K, R>,
        key: K,
        decide: impl FnOnce(Option<&R>) -> Option<R>,
    ) {
        if let Some(row) = decide(table.get(&key)) {
            table.insert(key, row);
        }
    }

    /// What happened before the event under test.
    pub(crate) struct Given<M> {
        model: M,
        seq: u64,
    }

    /// Starts a test: `events` happened in [`WS`], in this order (seqs 1, 2, ...).
    pub(crate) fn given<M: Model>(events: &[DomainEvent]) -> Given<M> {
        Given {
            model: M::default(),
            seq: 0,
        }
        .and_in(WS, events)
    }

    impl<M: Model> Given<M> {
        /// Then `events` happened in workspace `ws`.
        pub(crate) fn and_in(mut self, ws: &str, events: &[DomainEvent]) -> Self {
            for event in events {
                self.seq += 1;
                self.model.fold(event, &meta(self.seq, ws));
            }
            self
        }

        /// The tables after what happened.
        pub(crate) fn model(&self) -> &M {
            &self.model
        }

        /// The event under test, in [`WS`].
        pub(crate) fn when(self, event: DomainEvent) -> Then<M> {
            self.when_in(WS, event)
        }

        /// The event under test, in workspace `ws`.
        pub(crate) fn when_in(self, ws: &str, event: DomainEvent) -> Then<M> {
            let meta = meta(self.seq + 1, ws);
            let mut after = self.model.clone();
            after.fold(&event, &meta);
            Then {
                before: self.model,
                after,
                event,
                meta,
            }
        }
    }

    /// What the event under test did.
    pub(crate) struct Then<M> {
        before: M,
        after: M,
        event: DomainEvent,
        meta: EventMeta,
    }

    impl<M: Model> Then<M> {
        /// The tables after the event.
        pub(crate) fn state(&self) -> &M {
            &self.after
        }

        /// Asserts the tables after the event.
        pub(crate) fn then_expect(&self, expected: M) -> &Self {
            assert_eq!(self.after, expected, "after {:?}", self.event);
            self
        }

        /// Asserts the event changed nothing.
        pub(crate) fn then_unchanged(&self) -> &Self {
            assert_eq!(
                self.after, self.before,
                "{:?} changed the tables",
                self.event
            );
            self
        }

        /// Asserts that the same logged event applied again (the same seq: a
        /// redelivery) changes nothing more.
        pub(crate) fn then_replay_changes_nothing(&self) -> &Self {
            let mut again = self.after.clone();
            again.fold(&self.event, &self.meta);
            assert_eq!(again, self.after, "{:?} applied twice", self.event);
            self
        }
    }
}
