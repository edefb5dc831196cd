//! The envelope every event carries: identity, type and schema version, workspace,
//! times, actor and correlation. The event's data travels beside it as the payload.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Slug, Timestamp};

/// Who caused an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// A workspace API key (id = key id).
    ApiKey,
    /// An operator API key (id = key id).
    Operator,
    /// Meta, through a webhook (id = "meta").
    Meta,
    /// wabridge itself: a reactor or a background task (id = its name).
    System,
    /// A command run on the host (id = the command).
    Cli,
}

impl ActorKind {
    /// The snake_case name used in headers and the audit log.
    pub fn as_str(&self) -> &'static str {
        match self {
            ActorKind::ApiKey => "api_key",
            ActorKind::Operator => "operator",
            ActorKind::Meta => "meta",
            ActorKind::System => "system",
            ActorKind::Cli => "cli",
        }
    }

    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "api_key" => ActorKind::ApiKey,
            "operator" => ActorKind::Operator,
            "meta" => ActorKind::Meta,
            "system" => ActorKind::System,
            "cli" => ActorKind::Cli,
            _ => return None,
        })
    }
}

/// The actor of an event: a kind and an id (never a secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Actor {
    /// What kind of actor.
    pub kind: ActorKind,
    /// Its id: a key id, a reactor name, a command.
    pub id: String,
}

impl Actor {
    /// Meta, sending a webhook.
    pub fn meta() -> Self {
        Actor {
            kind: ActorKind::Meta,
            id: "meta".into(),
        }
    }
    /// wabridge itself, as the named component.
    pub fn system(name: &str) -> Self {
        Actor {
            kind: ActorKind::System,
            id: name.into(),
        }
    }
    /// A host command.
    pub fn cli(command: &str) -> Self {
        Actor {
            kind: ActorKind::Cli,
            id: command.into(),
        }
    }

    /// `kind:id`, as carried in headers and shown in the audit log.
    pub fn render(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.id)
    }

    /// Parses `kind:id`.
    pub fn parse(s: &str) -> Option<Self> {
        let (k, id) = s.split_once(':')?;
        Some(Actor {
            kind: ActorKind::parse(k)?,
            id: id.to_string(),
        })
    }
}

/// The metadata of one event. The data itself is the log message's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Envelope {
    /// Unique event id (UUIDv7, so ids sort by creation time).
    pub id: Uuid,
    /// Event type, e.g. `webhook.received`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Schema version of the data for this type.
    pub v: u16,
    /// The workspace the event belongs to; absent for global events (a raw webhook
    /// may concern several workspaces and is routed later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<Slug>,
    /// When it happened (for a webhook item: Meta's timestamp).
    pub occurred_at: crate::Timestamp,
    /// When wabridge appended it.
    pub recorded_at: crate::Timestamp,
    /// Who caused it.
    pub actor: Actor,
    /// Groups every event caused by one request or one webhook.
    pub correlation_id: Uuid,
    /// The event that directly caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// The client address of the request that caused it, for the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
    /// For a raw webhook: Meta's `X-Hub-Signature-256` as received, kept as evidence
    /// that Meta sent exactly these bytes (`wabridge events verify-webhook`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl Envelope {
    /// A new envelope for an event of `event_type` version `v`, happening now.
    pub fn new(event_type: &str, v: u16, workspace: Option<Slug>, actor: Actor) -> Self {
        let id = Uuid::now_v7();
        let now = Timestamp::now();
        Envelope {
            id,
            event_type: event_type.to_string(),
            v,
            workspace,
            occurred_at: now,
            recorded_at: now,
            actor,
            correlation_id: id,
            causation_id: None,
            source_ip: None,
            signature: None,
        }
    }

    /// Marks this event as caused by `cause` (same correlation, causation = its id).
    pub fn caused_by(mut self, cause: &Envelope) -> Self {
        self.correlation_id = cause.correlation_id;
        self.causation_id = Some(cause.id);
        self
    }

    /// Sets when the event happened.
    pub fn occurred(mut self, at: Timestamp) -> Self {
        self.occurred_at = at;
        self
    }
}
