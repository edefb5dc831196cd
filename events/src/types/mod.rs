//! Every event type, its schema version and its subject, declared once.
//!
//! Adding a type: one declaration in [`catalog`] (the `#[event(..)]` line and the
//! struct), then `cargo run -- schemas write` to regenerate `schemas/events/` (a test
//! fails when it drifts). The declaration generates the [`EventData`] impl, the
//! [`DomainEvent`] variant, decoding, the JSON Schema and the registry entry in
//! [`ALL`]. Subjects are only ever built from the type ([`EventData::subject`],
//! [`DomainEvent::subject`]).

mod catalog;
mod parts;

pub use catalog::*;
pub use parts::*;

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::{Actor, Envelope, Namespace, NewEvent, Slug};

/// Whether a type's subject carries the event's workspace or the global token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubjectScope {
    /// `<ns>.<workspace>.<category>.<aggregate>` (`_` for events without a workspace).
    Workspace,
    /// `<ns>._.<category>.<aggregate>` whatever the event's workspace: one aggregate
    /// shared by every workspace (e.g. the routing table of phone numbers).
    Global,
}

/// Typed data of one event type (implemented by the [`catalog`] declarations).
pub trait EventData: Serialize + DeserializeOwned + schemars::JsonSchema {
    /// The type name, e.g. `workspace.created`.
    const TYPE: &'static str;
    /// The current schema version.
    const VERSION: u16;
    /// The subject category token.
    const CATEGORY: &'static str;
    /// Whether the subject names the workspace.
    const SCOPE: SubjectScope;
    /// The aggregate id within the category (the last subject token).
    fn aggregate(&self) -> String;
    /// Wraps the data in its [`DomainEvent`] variant.
    fn into_event(self) -> DomainEvent;

    /// The subject of this type's events for an aggregate: what optimistic
    /// concurrency and freshness checks look up.
    fn subject(ns: &Namespace, workspace: Option<&Slug>, aggregate: &str) -> String {
        let ws = match Self::SCOPE {
            SubjectScope::Workspace => workspace,
            SubjectScope::Global => None,
        };
        ns.domain_subject(ws, Self::CATEGORY, aggregate)
    }

    /// The subject of this event.
    fn subject_of(&self, ns: &Namespace, workspace: Option<&Slug>) -> String {
        Self::subject(ns, workspace, &self.aggregate())
    }
}

/// One registered event type.
#[derive(Clone, Copy)]
pub struct EventType {
    /// The type name.
    pub name: &'static str,
    /// Its current schema version.
    pub version: u16,
    /// Its subject category.
    pub category: &'static str,
    /// Its JSON Schema.
    pub schema: fn() -> schemars::Schema,
}

impl std::fmt::Debug for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} v{}", self.name, self.version)
    }
}

/// The raw webhook's type. Its payload is Meta's body, byte-exact (not JSON data), so
/// it is not a [`DomainEvent`].
pub const WEBHOOK_RECEIVED: &str = "webhook.received";

/// Why an event could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A type this build does not know (a newer writer); consumers dead-letter it.
    #[error("unknown event type {0:?} v{1}")]
    UnknownType(String, u16),
    /// The data did not match the schema.
    #[error("event {0} v{1} does not decode: {2}")]
    BadData(String, u16, serde_json::Error),
}

/// Declares event types: see [`catalog`].
macro_rules! events {
    ($(
        $(#[doc = $doc:literal])*
        #[event(type = $name:literal, v = $v:literal, category = $cat:literal, scope = $scope:ident, aggregate = |$s:ident| $agg:expr)]
        pub struct $ty:ident { $($fields:tt)* }
    )*) => {
        $(
            $(#[doc = $doc])*
            #[doc = concat!("\n\nEvent type `", $name, "` v", $v, ".")]
            #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
            pub struct $ty { $($fields)* }

            impl $crate::types::EventData for $ty {
                const TYPE: &'static str = $name;
                const VERSION: u16 = $v;
                const CATEGORY: &'static str = $cat;
                const SCOPE: $crate::types::SubjectScope = $crate::types::SubjectScope::$scope;
                fn aggregate(&self) -> String {
                    let $s = self;
                    $agg
                }
                fn into_event(self) -> $crate::types::DomainEvent {
                    $crate::types::DomainEvent::$ty(self)
                }
            }
        )*

        /// A decoded domain event: one variant per declared type. (Not boxed: it is
        /// decoded once per stored event and kept with it, so a box would be one
        /// more allocation per event for no saving.)
        #[derive(Clone, Debug, PartialEq)]
        #[allow(clippy::large_enum_variant)]
        pub enum DomainEvent {
            $(
                #[doc = concat!("`", $name, "`")]
                $ty($ty),
            )*
        }

        /// Every domain event type with its current version, category and schema.
        pub const ALL: &[$crate::types::EventType] = &[
            $(
                $crate::types::EventType {
                    name: $name,
                    version: $v,
                    category: $cat,
                    schema: || schemars::schema_for!($ty),
                },
            )*
        ];

        impl DomainEvent {
            /// Decodes an event from its envelope and payload (older versions are
            /// upcast first). Unknown fields are ignored.
            pub fn decode(
                env: &$crate::Envelope,
                payload: &[u8],
            ) -> Result<Self, $crate::types::DecodeError> {
                match env.event_type.as_str() {
                    $( $name => Ok(DomainEvent::$ty($crate::types::data(env, payload)?)), )*
                    other => Err($crate::types::DecodeError::UnknownType(other.to_string(), env.v)),
                }
            }

            /// Decodes `{type, v, data}` parts (an unrouted item, an upcast test).
            pub fn from_parts(
                event_type: &str,
                v: u16,
                data: serde_json::Value,
            ) -> Result<Self, $crate::types::DecodeError> {
                let bad = |e| $crate::types::DecodeError::BadData(event_type.to_string(), v, e);
                let data = $crate::types::upcast(event_type, v, data)?;
                match event_type {
                    $( $name => Ok(DomainEvent::$ty(serde_json::from_value(data).map_err(bad)?)), )*
                    other => Err($crate::types::DecodeError::UnknownType(other.to_string(), v)),
                }
            }

            /// The type name.
            pub fn event_type(&self) -> &'static str {
                match self { $( DomainEvent::$ty(_) => $name, )* }
            }

            /// The schema version this build writes.
            pub fn version(&self) -> u16 {
                match self { $( DomainEvent::$ty(_) => $v, )* }
            }

            /// The subject of this event in a workspace.
            pub fn subject(&self, ns: &$crate::Namespace, workspace: Option<&$crate::Slug>) -> String {
                use $crate::types::EventData;
                match self { $( DomainEvent::$ty(d) => d.subject_of(ns, workspace), )* }
            }

            /// The data as JSON.
            pub fn data_json(&self) -> serde_json::Value {
                let v = match self { $( DomainEvent::$ty(d) => serde_json::to_value(d), )* };
                v.expect("event data serialises")
            }
        }
    };
}
pub(crate) use events;

/// Whether this build knows the event type at this version (current or older).
/// Consumers that skip types they do not care about must still fail on the unknown.
pub fn is_known(event_type: &str, version: u16) -> bool {
    ALL.iter()
        .any(|t| t.name == event_type && version >= 1 && version <= t.version)
}

/// The JSON Schema of an event type's data.
pub fn schema_of(event_type: &str) -> Option<schemars::Schema> {
    ALL.iter()
        .find(|t| t.name == event_type)
        .map(|t| (t.schema)())
}

/// Brings older versions of an event's data up to the current version, keyed by
/// (type, version). Data at the current version passes through.
pub fn upcast(
    event_type: &str,
    v: u16,
    data: serde_json::Value,
) -> Result<serde_json::Value, DecodeError> {
    let current = ALL
        .iter()
        .find(|t| t.name == event_type)
        .map(|t| t.version)
        .ok_or_else(|| DecodeError::UnknownType(event_type.to_string(), v))?;
    let mut data = data;
    let mut v = v;
    while v < current {
        data = match (event_type, v) {
            // v2 names the sender as a contact (wa_id and/or user id).
            ("message.received", 1) => sender_to_contact(data, "from", "profile_name"),
            ("contact.marketing_preference", 1) => sender_to_contact(data, "wa_id", ""),
            _ => return Err(DecodeError::UnknownType(event_type.to_string(), v)),
        };
        v += 1;
    }
    if v == current {
        Ok(data)
    } else {
        // A newer writer than this build.
        Err(DecodeError::UnknownType(event_type.to_string(), v))
    }
}

/// Moves a v1 sender (`wa_id_field`, and `name_field` when given) into `contact`.
fn sender_to_contact(
    mut data: serde_json::Value,
    wa_id_field: &str,
    name_field: &str,
) -> serde_json::Value {
    if let Some(obj) = data.as_object_mut() {
        let mut contact = serde_json::Map::new();
        if let Some(w) = obj.remove(wa_id_field) {
            contact.insert("wa_id".into(), w);
        }
        if let Some(n) = obj.remove(name_field).filter(|n| !n.is_null()) {
            contact.insert("profile_name".into(), n);
        }
        obj.insert("contact".into(), serde_json::Value::Object(contact));
    }
    data
}

/// Decodes an event's payload as `T`, upcasting older versions.
/// Data at the current version is read straight into `T` (no `Value` tree in
/// between: about a third of a replay's decoding was building and dropping it);
/// only older versions go through [`upcast`].
pub(crate) fn data<T: EventData>(env: &Envelope, payload: &[u8]) -> Result<T, DecodeError> {
    let bad = |e| DecodeError::BadData(env.event_type.clone(), env.v, e);
    if env.v == T::VERSION && env.event_type == T::TYPE {
        return serde_json::from_slice(payload).map_err(bad);
    }
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(bad)?;
    let value = upcast(&env.event_type, env.v, value)?;
    serde_json::from_value(value).map_err(bad)
}

/// Builds the [`NewEvent`] for typed data: the subject from the type, the envelope
/// with its type and version, the JSON payload.
pub fn new_event<T: EventData>(
    ns: &Namespace,
    workspace: Option<Slug>,
    actor: Actor,
    data: &T,
) -> NewEvent {
    let subject = data.subject_of(ns, workspace.as_ref());
    let envelope = Envelope::new(T::TYPE, T::VERSION, workspace, actor);
    NewEvent {
        subject,
        envelope,
        payload: Bytes::from(serde_json::to_vec(data).expect("event data serialises")),
        msg_id: None,
        expected_last_subject_seq: None,
    }
}

impl DomainEvent {
    /// Builds the [`NewEvent`] for this event (see [`new_event`]).
    pub fn to_new_event(&self, ns: &Namespace, workspace: Option<Slug>, actor: Actor) -> NewEvent {
        let subject = self.subject(ns, workspace.as_ref());
        let envelope = Envelope::new(self.event_type(), self.version(), workspace, actor);
        NewEvent {
            subject,
            envelope,
            payload: Bytes::from(self.data_json().to_string().into_bytes()),
            msg_id: None,
            expected_last_subject_seq: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_a_schema_and_a_unique_name() {
        let mut names = std::collections::HashSet::new();
        for t in ALL {
            assert!(names.insert(t.name), "{t:?} declared twice");
            assert!(schema_of(t.name).is_some(), "{t:?}");
            assert!(t.name.contains('.'), "{t:?}");
        }
    }

    #[test]
    fn subjects_come_from_the_type() {
        let ns = Namespace::default();
        let ws = Slug::parse("acme").unwrap();
        let claim = PhoneNumberClaimed {
            phone_number_id: "1".into(),
            waba_id: "2".into(),
            display_phone_number: "3".into(),
        };
        // The routing table is global whatever the workspace.
        let ev = new_event(&ns, Some(ws.clone()), Actor::system("t"), &claim);
        assert_eq!(ev.subject, "wb._.routing.numbers");
        let revoked = ApiKeyRevoked { key_id: "k".into() };
        assert_eq!(revoked.subject_of(&ns, Some(&ws)), "wb.acme.keys.all");
        assert_eq!(revoked.subject_of(&ns, None), "wb._.keys.all");
        let event = claim.clone().into_event();
        assert_eq!(event.subject(&ns, Some(&ws)), ev.subject);
        assert_eq!(event.event_type(), "phone_number.claimed");
    }

    #[test]
    fn old_versions_are_upcast() {
        let v1 = serde_json::json!({
            "source": {"waba_id": "1", "phone_number_id": "2", "field": "messages", "raw_seq": 3},
            "wamid": "wamid.A", "from": "447700900123", "profile_name": "Ana",
            "message_type": "text", "text": "hi", "timestamp": "2026-01-01T00:00:00.000000Z",
            "raw": {}
        });
        let DomainEvent::MessageReceived(m) =
            DomainEvent::from_parts("message.received", 1, v1).unwrap()
        else {
            panic!("not a message")
        };
        assert_eq!(m.contact.wa_id.as_deref(), Some("447700900123"));
        assert_eq!(m.contact.profile_name.as_deref(), Some("Ana"));
        assert_eq!(m.contact.user_id, None);
        let v1 = serde_json::json!({
            "source": {"waba_id": "1", "field": "user_preferences", "raw_seq": 3},
            "wa_id": "447700900126", "category": "marketing_messages", "value": "stop",
            "timestamp": "2026-01-01T00:00:00.000000Z"
        });
        let DomainEvent::ContactMarketingPreference(p) =
            DomainEvent::from_parts("contact.marketing_preference", 1, v1).unwrap()
        else {
            panic!("not a preference")
        };
        assert_eq!(p.contact.key(), "447700900126");
        // A version newer than this build is refused, not guessed.
        assert!(matches!(
            upcast("message.received", 3, serde_json::json!({})),
            Err(DecodeError::UnknownType(..))
        ));
    }

    #[test]
    fn decoding_tolerates_unknown_fields_and_refuses_unknown_types() {
        let ns = Namespace::default();
        let data = PhoneNumberReleased {
            phone_number_id: "1".into(),
        };
        let ev = new_event(&ns, None, Actor::system("t"), &data);
        let mut v: serde_json::Value = serde_json::from_slice(&ev.payload).unwrap();
        v["future_field"] = serde_json::json!(true);
        let back = DomainEvent::decode(&ev.envelope, &serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(back, DomainEvent::PhoneNumberReleased(data.clone()));
        assert_eq!(
            DomainEvent::from_parts("phone_number.released", 1, v).unwrap(),
            back
        );
        let mut env = ev.envelope.clone();
        env.event_type = "nope".into();
        assert!(matches!(
            DomainEvent::decode(&env, &ev.payload),
            Err(DecodeError::UnknownType(..))
        ));
        env.event_type = "phone_number.released".into();
        env.v = 9;
        assert!(matches!(
            DomainEvent::decode(&env, &ev.payload),
            Err(DecodeError::UnknownType(..))
        ));
    }
}
