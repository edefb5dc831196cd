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

/// An interactive answer: a reply button, a list row, a Flow's response, a call
/// permission, ...
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InteractiveReply {
    /// `button_reply`, `list_reply`, `nfm_reply`, `call_permission_reply` (or another).
    pub kind: String,
    /// The id the business set.
    pub id: Option<String>,
    /// The title shown.
    pub title: Option<String>,
    /// A Flow's `response_json`, parsed (Meta sends it as a JSON string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<serde_json::Value>,
}

/// Who a message or preference is from: Meta names a user by phone number (`wa_id`),
/// by business-scoped user id, or both. A user id is scoped to one business
/// portfolio, so it is only ever used within its workspace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ContactRef {
    /// The WhatsApp id (phone number digits), when Meta shares it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wa_id: Option<String>,
    /// The business-scoped user id (`US.1349…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The parent user id (`US.ENT.…`), for enrolled businesses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_user_id: Option<String>,
    /// The username, when the user has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The profile name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_name: Option<String>,
}

impl ContactRef {
    /// The reference a [`ContactRef::key`] names: digits are a wa_id, anything else
    /// a user id.
    pub fn from_key(key: &str) -> Self {
        if !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit()) {
            ContactRef {
                wa_id: Some(key.to_owned()),
                ..ContactRef::default()
            }
        } else {
            ContactRef {
                user_id: Some(key.to_owned()),
                ..ContactRef::default()
            }
        }
    }

    /// One identifier for subjects and keys: the wa_id when known, else the user id.
    pub fn key(&self) -> String {
        self.wa_id
            .clone()
            .or_else(|| self.user_id.clone())
            .unwrap_or_default()
    }
}

/// A reaction to a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Reaction {
    /// The wamid reacted to.
    pub message_id: Option<String>,
    /// The emoji; absent when the reaction was removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
}

/// A media object of an inbound message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Media {
    /// `image`, `document`, `audio`, `video`, `sticker`.
    pub kind: String,
    /// Meta's media id (downloadable for 7 days).
    pub id: Option<String>,
    /// MIME type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// SHA-256 as Meta gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A document's file name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// A voice note (`audio.voice`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<bool>,
}

/// What a `system` message says changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SystemChange {
    /// `user_changed_number`, `user_changed_user_id`, `customer_identity_changed`, ...
    pub kind: String,
    /// Meta's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The new wa_id (a number change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wa_id: Option<String>,
    /// The new user id (a user id change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
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

/// What an opt-out blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConsentScope {
    /// Every message.
    All,
    /// Marketing templates only (utility and authentication messages still go).
    Marketing,
}

impl ConsentScope {
    /// The name used in the API and the read model.
    pub fn as_str(&self) -> &'static str {
        match self {
            ConsentScope::All => "all",
            ConsentScope::Marketing => "marketing",
        }
    }
}

/// What caused a consent change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConsentSourceKind {
    /// A keyword in an inbound message (STOP, START, ...).
    Keyword,
    /// A template quick-reply button ("Stop promotions").
    Button,
    /// The `user_preferences` webhook (WhatsApp's own marketing setting).
    Preference,
    /// A failed status with error 131050.
    DeliveryError,
    /// A workspace key, through the API.
    Api,
    /// An operator or a host command.
    Admin,
}

/// The source of a consent change, for the history an auditor reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ConsentSource {
    /// What kind of source.
    pub kind: ConsentSourceKind,
    /// The keyword or button label matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyword: Option<String>,
    /// The keyword's language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// The message (inbound, or the failed outbound one) that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The raw stream sequence of the signed webhook that carried it, the evidence
    /// that Meta sent it (`wabridge events verify-webhook --seq N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_seq: Option<u64>,
}

/// A consent keyword of a workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ConsentKeyword {
    /// The keyword (matched on the whole message, normalised).
    pub keyword: String,
    /// Its language code (`en`, `pt-BR`, ...).
    pub language: String,
    /// `opt_out`, `opt_in` or `help`.
    pub kind: String,
    /// `all` or `marketing` (opt-outs).
    pub scope: ConsentScope,
}

/// A confirmation reply in one language.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ConsentConfirmation {
    /// The language code.
    pub language: String,
    /// The text sent after an opt-out in that language.
    pub text: String,
}

/// A step of Embedded Signup onboarding, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnboardingStep {
    /// Exchange the signup code for a business token and store it in the vault.
    ExchangeCode,
    /// Subscribe the app to the WABA's webhooks (`POST /{waba_id}/subscribed_apps`).
    SubscribeWebhooks,
    /// Register the number for Cloud API (`POST /{phone_number_id}/register`).
    RegisterNumber,
    /// Route the number's webhooks to the workspace (the phone-number claim).
    RouteNumber,
}

impl OnboardingStep {
    /// Every step, in order.
    pub const ALL: [OnboardingStep; 4] = [
        OnboardingStep::ExchangeCode,
        OnboardingStep::SubscribeWebhooks,
        OnboardingStep::RegisterNumber,
        OnboardingStep::RouteNumber,
    ];

    /// The name used in the API and the read model.
    pub fn as_str(&self) -> &'static str {
        match self {
            OnboardingStep::ExchangeCode => "exchange_code",
            OnboardingStep::SubscribeWebhooks => "subscribe_webhooks",
            OnboardingStep::RegisterNumber => "register_number",
            OnboardingStep::RouteNumber => "route_number",
        }
    }
}

/// Why an onboarding step failed (never a secret: Meta's code and message, or ours).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StepError {
    /// Meta's numeric error code, when Meta answered with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
    /// Meta's error subcode, when it sent one (e.g. 36007: the code expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subcode: Option<i64>,
    /// The HTTP status of Meta's answer, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// What happened.
    pub message: String,
}

/// How a delivery attempt to an outbound webhook endpoint ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryOutcome {
    /// The endpoint answered 2xx.
    Succeeded,
    /// It failed and is tried again at `next_attempt_at`.
    Retrying,
    /// It failed for good (the endpoint answered 410, or failed for the whole retry
    /// period, or a manual redelivery failed).
    Failed,
}

impl DeliveryOutcome {
    /// The name used in the API and the read model.
    pub fn as_str(&self) -> &'static str {
        match self {
            DeliveryOutcome::Succeeded => "succeeded",
            DeliveryOutcome::Retrying => "retrying",
            DeliveryOutcome::Failed => "failed",
        }
    }
}

/// One attempt to deliver one event to one endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeliveryAttempt {
    /// `dlv_…`: the delivery (one event to one endpoint).
    pub delivery_id: String,
    /// The delivered event's id (the `webhook-id` header).
    pub event_id: String,
    /// Its domain-log sequence.
    pub event_seq: u64,
    /// Its type.
    pub event_type: String,
    /// 1 for the first attempt of this delivery.
    pub attempt: u32,
    /// When the request was made.
    pub at: Timestamp,
    /// How it ended.
    pub outcome: DeliveryOutcome,
    /// The endpoint's HTTP status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_status: Option<u16>,
    /// What went wrong (a timeout, no connection, the status), when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long the request took.
    pub duration_ms: u64,
    /// For `retrying`: when the next attempt is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Timestamp>,
    /// A redelivery asked for by a person: the log sequence of the request (it never
    /// moves the endpoint's position).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redelivery_of: Option<u64>,
    /// The recovery the endpoint's worker was on (the log sequence of the last
    /// `endpoint.recovery_requested`, 0 before any): an attempt of an older one never
    /// moves the position back past a newer recovery.
    #[serde(default)]
    pub generation: u64,
}

/// A JSON value kept as its text, for data that is stored and passed on whole but
/// never read field by field (a received message's object as Meta sent it). Decoding
/// it skips building a tree of maps and strings, which was a good part of decoding a
/// message (a replay decodes every one). Equal when the values are equal, whatever
/// their spacing; its schema is any JSON value.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(Box<serde_json::value::RawValue>);

impl RawJson {
    /// The text of a JSON object (compact).
    pub fn object(map: &serde_json::Map<String, serde_json::Value>) -> Self {
        // A map of JSON values with string keys always serializes (the error cases
        // are non-string keys and a failing `Serialize` impl).
        Self(serde_json::value::to_raw_value(map).expect("a JSON object serializes"))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The value as a tree, for the rare reader.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).expect("RawJson holds valid JSON")
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get() || self.to_value() == other.to_value()
    }
}

impl PartialEq<serde_json::Value> for RawJson {
    fn eq(&self, other: &serde_json::Value) -> bool {
        self.to_value() == *other
    }
}

impl schemars::JsonSchema for RawJson {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        <serde_json::Value as schemars::JsonSchema>::schema_name()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <serde_json::Value as schemars::JsonSchema>::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::RawJson;
    use serde_json::json;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Holder {
        raw: RawJson,
    }

    #[test]
    fn raw_json_keeps_a_value_whole_from_text_and_from_a_tree() {
        let v = json!({"id": "wamid.X", "location": {"latitude": 1.5, "name": "a \"q\" \u{e9}"}, "n": [1, null, true]});
        let raw = RawJson::object(v.as_object().unwrap());
        assert_eq!(raw, v);
        // Written as the value itself, not as a string.
        let text = serde_json::to_string(&Holder { raw: raw.clone() }).unwrap();
        assert_eq!(
            text,
            format!("{{\"raw\":{}}}", serde_json::to_string(&v).unwrap())
        );
        // Read from bytes (an event at its current version) and from a tree (the
        // upcaster's path for older versions).
        let from_text: Holder = serde_json::from_str(&text).unwrap();
        assert_eq!(from_text.raw, v);
        let from_tree: Holder = serde_json::from_value(json!({"raw": v.clone()})).unwrap();
        assert_eq!(from_tree.raw, v);
        // Equal whatever the spacing; another value is not.
        let pretty = format!("{{\"raw\": {}}}", serde_json::to_string_pretty(&v).unwrap());
        let spaced: Holder = serde_json::from_str(&pretty).unwrap();
        assert_eq!(spaced.raw, raw);
        let other = json!({"id": "other"});
        assert_ne!(RawJson::object(other.as_object().unwrap()), raw);
    }
}
