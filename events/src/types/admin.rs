//! Admin events: workspaces, API keys, phone numbers, unrouted assignment.

use serde::{Deserialize, Serialize};

use crate::{Slug, Timestamp};

/// `workspace.created` v1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WorkspaceCreated {
    /// The immutable slug.
    pub slug: Slug,
    /// Display name.
    pub name: String,
}

/// `api_key.created` v1. Only the SHA-256 of the secret part is logged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApiKeyCreated {
    /// Public key id (part of the key text).
    pub key_id: String,
    /// The workspace, or none for an operator key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<Slug>,
    /// Display name.
    pub name: String,
    /// `owner`, `admin`, `agent`, `viewer`, or `operator`.
    pub role: String,
    /// Hex SHA-256 of the whole key text.
    pub secret_hash: String,
    /// Optional expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

/// `api_key.revoked` v1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApiKeyRevoked {
    /// The key id.
    pub key_id: String,
}

/// `api_key.used` v1: appended at most once a minute per key, for `last_used_at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApiKeyUsed {
    /// The key id.
    pub key_id: String,
    /// The minute of use (seconds and below are zero).
    pub minute: Timestamp,
}

/// `phone_number.claimed` v1: the number's webhooks route to the workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PhoneNumberClaimed {
    /// Meta's phone number id.
    pub phone_number_id: String,
    /// The WABA id.
    pub waba_id: String,
    /// The number as displayed.
    pub display_phone_number: String,
}

/// `phone_number.released` v1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PhoneNumberReleased {
    /// Meta's phone number id.
    pub phone_number_id: String,
}

/// `unrouted.assigned` v1: an operator attached the unrouted items of a number to a
/// workspace (which gets them as domain events).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UnroutedAssigned {
    /// The number.
    pub phone_number_id: String,
    /// The workspace receiving them.
    pub workspace: Slug,
    /// How many items were attached.
    pub items: u64,
}
