//! The read models and their queries.

pub mod api_keys;
pub mod audit;
pub mod dead_letters;
pub mod messages;
pub mod phone_numbers;
pub mod tokens;
pub mod unrouted;
pub mod workspaces;

use std::sync::Arc;

use wabridge_events::{DomainEvent, StoredEvent};

use crate::Projection;

/// Every projection, in the order they are started.
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(workspaces::Workspaces),
        Arc::new(api_keys::ApiKeys),
        Arc::new(phone_numbers::PhoneNumbers),
        Arc::new(audit::Audit),
        Arc::new(dead_letters::DeadLetters),
        Arc::new(unrouted::Unrouted),
        Arc::new(tokens::Tokens),
        Arc::new(messages::Messages),
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
