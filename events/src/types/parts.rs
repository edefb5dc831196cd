//! Structures shared by several event types (they are not events themselves).

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

/// The sealed form of a token (AES-256-GCM-SIV).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SealedToken {
    /// Master key version, e.g. `v2`.
    pub key_version: String,
    /// 12-byte nonce, hex.
    pub nonce: String,
    /// Ciphertext with tag, hex.
    pub ciphertext: String,
}

impl std::fmt::Debug for SealedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedToken")
            .field("key_version", &self.key_version)
            .finish_non_exhaustive()
    }
}

/// An item waiting for a workspace (see `webhook.unrouted`).
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
