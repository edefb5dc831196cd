//! The read models and their queries.

pub mod api_keys;
pub mod audit;
pub mod consent;
pub mod dead_letters;
pub mod messages;
pub mod phone_numbers;
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
    ]
}

/// Decodes a domain event (an unknown type or bad data is an error: dead-lettered).
pub fn decode(event: &StoredEvent) -> anyhow::Result<DomainEvent> {
    Ok(DomainEvent::decode(&event.envelope, &event.payload)?)
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
