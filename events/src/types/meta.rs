//! Domain events derived from Meta webhooks (one event per item of a webhook body).
//!
//! Each carries a natural key (`dedup_key`) so that a webhook stored twice (Meta
//! redelivers for up to 7 days, longer than any duplicate window) is processed once.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// Where in Meta's structure an item came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MetaSource {
    /// The WABA id (`entry[].id`).
    pub waba_id: String,
    /// The number's id (`value.metadata.phone_number_id`), for message-level fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number_id: Option<String>,
    /// The number as displayed (`value.metadata.display_phone_number`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_phone_number: Option<String>,
    /// The `field` of the change (`messages`, `message_template_status_update`, ...).
    pub field: String,
    /// Sequence of the `webhook.received` event in the raw stream.
    pub raw_seq: u64,
}

/// `message.received` v1: an inbound message from a WhatsApp user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MessageReceived {
    /// Where it came from.
    pub source: MetaSource,
    /// The wamid (natural key).
    pub wamid: String,
    /// The sender's WhatsApp id.
    pub from: String,
    /// The sender's profile name, when Meta sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_name: Option<String>,
    /// Meta's type: text, button, interactive, image, audio, video, document,
    /// sticker, location, contacts, reaction, unsupported, ...
    pub message_type: String,
    /// The text, for `text` messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `button.payload` / `button.text` for template quick-reply taps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub button: Option<ButtonReply>,
    /// For interactive replies: the kind (`button_reply`, `list_reply`) with id and title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interactive: Option<InteractiveReply>,
    /// The wamid this message replies to (`context.id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_wamid: Option<String>,
    /// Errors Meta attached (e.g. for `unsupported`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<MetaError>,
    /// Meta's timestamp.
    pub timestamp: Timestamp,
    /// The whole message object as Meta sent it (media ids, location, ...).
    pub raw: serde_json::Value,
}

/// A template quick-reply tap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ButtonReply {
    /// `button.payload`.
    pub payload: Option<String>,
    /// `button.text`.
    pub text: Option<String>,
}

/// An interactive (reply button or list) answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InteractiveReply {
    /// `button_reply` or `list_reply` (or another Meta kind).
    pub kind: String,
    /// The id the business set.
    pub id: Option<String>,
    /// The title shown.
    pub title: Option<String>,
}

/// One error object from Meta.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MetaError {
    /// Meta's numeric code (e.g. 131050).
    pub code: i64,
    /// Title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `error_data.details`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

/// `message.status_updated` v1: a status for a message the business sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MessageStatusUpdated {
    /// Where it came from.
    pub source: MetaSource,
    /// The wamid of the outbound message.
    pub wamid: String,
    /// `sent`, `delivered`, `read`, `failed`, `played` (or a newer value).
    pub status: String,
    /// The recipient's WhatsApp id.
    pub recipient_id: Option<String>,
    /// Meta's timestamp.
    pub timestamp: Timestamp,
    /// Echo of `biz_opaque_callback_data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub biz_opaque_callback_data: Option<String>,
    /// `pricing.category`, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing_category: Option<String>,
    /// Errors (for `failed`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<MetaError>,
}

/// `contact.marketing_preference` v1: a `user_preferences` item (the user stopped or
/// resumed marketing messages in WhatsApp itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ContactMarketingPreference {
    /// Where it came from.
    pub source: MetaSource,
    /// The user's WhatsApp id.
    pub wa_id: String,
    /// `marketing_messages` (the only category Meta sends today).
    pub category: String,
    /// `stop` or `resume`.
    pub value: String,
    /// Meta's detail text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Meta's timestamp.
    pub timestamp: Timestamp,
}

/// `template.status_updated` v1: a `message_template_status_update` item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TemplateStatusUpdated {
    /// Where it came from.
    pub source: MetaSource,
    /// The template id (Meta sends an integer; kept as text).
    pub template_id: String,
    /// Template name.
    pub template_name: Option<String>,
    /// Template language.
    pub language: Option<String>,
    /// `APPROVED`, `REJECTED`, `PAUSED`, `DISABLED`, ...
    pub event: String,
    /// Meta's reason, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `entry[].time`.
    pub timestamp: Timestamp,
    /// The whole `value` object.
    pub raw: serde_json::Value,
}

/// `account.updated` v1: an `account_update` (or other account-level) item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AccountUpdated {
    /// Where it came from.
    pub source: MetaSource,
    /// `value.event` (e.g. `PARTNER_APP_INSTALLED`), when present.
    pub event: Option<String>,
    /// `entry[].time`.
    pub timestamp: Timestamp,
    /// The whole `value` object.
    pub raw: serde_json::Value,
}

/// `webhook.unrouted` v1: items for a phone number (or WABA) that no workspace holds.
/// Kept in the log and listed for the operator; never dropped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WebhookUnrouted {
    /// The number nobody held (or the WABA id, for WABA-level items, when `phone_number_id` is empty).
    pub phone_number_id: String,
    /// The WABA id.
    pub waba_id: String,
    /// The domain event that would have been appended, as `{type, v, data}`.
    pub item: UnroutedItem,
    /// The natural key of the item.
    pub dedup_key: String,
}

/// An item waiting for a workspace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UnroutedItem {
    /// Event type it becomes.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Its schema version.
    pub v: u16,
    /// Its data.
    pub data: serde_json::Value,
    /// When it happened.
    pub occurred_at: Timestamp,
}
