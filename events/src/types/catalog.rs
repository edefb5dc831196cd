//! The catalog: every domain event type, declared once.
//!
//! Each declaration gives the type name, the schema version, the subject category,
//! whether its subject is global or per workspace, and the aggregate (the last subject
//! token); the struct follows. Everything else — the [`EventData`](super::EventData)
//! impl, the [`DomainEvent`](super::DomainEvent) variant, decoding, the JSON Schema and
//! the registry [`ALL`](super::ALL) — is generated from it.

use super::parts::{
    ButtonReply, ConsentConfirmation, ConsentKeyword, ConsentScope, ConsentSource, ContactRef,
    DeliveryAttempt, InteractiveReply, Media, MetaError, MetaSource, OnboardingStep, RawJson,
    Reaction, SealedToken, StepError, SystemChange, UnroutedItem,
};
use crate::{Slug, Timestamp};

fn is_zero(n: &u64) -> bool {
    *n == 0
}

super::events! {
    // ----- workspaces, keys, numbers -----

    /// A workspace was created.
    #[event(type = "workspace.created", v = 1, category = "workspace", scope = Workspace, aggregate = |s| s.slug.to_string())]
    pub struct WorkspaceCreated {
        /// The immutable slug.
        pub slug: Slug,
        /// Display name.
        pub name: String,
    }

    /// An API key was created. Only the SHA-256 of the key text is logged. Every key
    /// event of a workspace (and every operator key event) is on one subject, so the
    /// last-owner rule holds under races (optimistic concurrency).
    #[event(type = "api_key.created", v = 1, category = "keys", scope = Workspace, aggregate = |_s| "all".to_string())]
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

    /// An API key was revoked.
    #[event(type = "api_key.revoked", v = 1, category = "keys", scope = Workspace, aggregate = |_s| "all".to_string())]
    pub struct ApiKeyRevoked {
        /// The key id.
        pub key_id: String,
    }

    /// A key was used (at most once a minute per key), for `last_used_at`.
    #[event(type = "api_key.used", v = 1, category = "keyuse", scope = Workspace, aggregate = |s| s.key_id.clone())]
    pub struct ApiKeyUsed {
        /// The key id.
        pub key_id: String,
        /// The minute of use (seconds and below are zero).
        pub minute: Timestamp,
    }

    /// The number's webhooks route to the workspace. Claims and releases of every
    /// workspace share one global subject, the routing table.
    #[event(type = "phone_number.claimed", v = 1, category = "routing", scope = Global, aggregate = |_s| "numbers".to_string())]
    pub struct PhoneNumberClaimed {
        /// Meta's phone number id.
        pub phone_number_id: String,
        /// The WABA id.
        pub waba_id: String,
        /// The number as displayed.
        pub display_phone_number: String,
    }

    /// The workspace released the number.
    #[event(type = "phone_number.released", v = 1, category = "routing", scope = Global, aggregate = |_s| "numbers".to_string())]
    pub struct PhoneNumberReleased {
        /// Meta's phone number id.
        pub phone_number_id: String,
    }

    /// A WABA was placed in a workspace (an operator, or Embedded Signup's proof of
    /// ownership): its account-level webhooks go there, and only its owner's keys may
    /// claim its numbers.
    #[event(type = "waba.assigned", v = 1, category = "routing", scope = Global, aggregate = |_s| "numbers".to_string())]
    pub struct WabaAssigned {
        /// The WABA id.
        pub waba_id: String,
        /// Its owner from now on.
        pub workspace: Slug,
    }

    /// An operator attached the unrouted items of a number to a workspace (which gets
    /// them as domain events).
    #[event(type = "unrouted.assigned", v = 1, category = "unrouted", scope = Workspace, aggregate = |s| s.phone_number_id.clone())]
    pub struct UnroutedAssigned {
        /// The number.
        pub phone_number_id: String,
        /// The workspace receiving them.
        pub workspace: Slug,
        /// How many items were attached.
        pub items: u64,
        /// The domain sequence the command read the waiting items up to: only items
        /// recorded at or before it were attached (0 in events before this field:
        /// every item recorded before the assignment).
        #[serde(default, skip_serializing_if = "is_zero")]
        pub through_seq: u64,
    }

    // ----- from Meta's webhooks (one event per item of a body) -----

    /// An inbound message from a WhatsApp user (v2: the sender is a [`ContactRef`],
    /// so a user Meta names only by a business-scoped user id is a sender too).
    #[event(type = "message.received", v = 2, category = "message", scope = Workspace, aggregate = |_s| "inbound".to_string())]
    pub struct MessageReceived {
        /// Where it came from.
        pub source: MetaSource,
        /// The wamid (unique per business number).
        pub wamid: String,
        /// Who sent it: wa_id and/or business-scoped user id, with profile and username.
        pub contact: ContactRef,
        /// Meta's type: text, button, interactive, image, audio, video, document,
        /// sticker, location, contacts, reaction, order, system, unsupported, ...
        pub message_type: String,
        /// The text, for `text` messages (and a media caption).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub text: Option<String>,
        /// `button.payload` / `button.text` for template quick-reply taps.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub button: Option<ButtonReply>,
        /// For interactive replies: the kind (`button_reply`, `list_reply`, `nfm_reply`,
        /// `call_permission_reply`, ...) with id, title and a Flow's parsed response.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub interactive: Option<InteractiveReply>,
        /// For reactions: the message reacted to and the emoji (none: removed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub reaction: Option<Reaction>,
        /// For media messages: the media object (id, MIME type, caption, ...).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub media: Option<Media>,
        /// For `system` messages: what changed (`user_changed_number`,
        /// `user_changed_user_id`, ...).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub system: Option<SystemChange>,
        /// A click-to-WhatsApp ad referral (`ctwa_clid`, source, headline, ...), whole.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub referral: Option<serde_json::Value>,
        /// The wamid this message replies to (`context.id`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub context_wamid: Option<String>,
        /// Errors Meta attached (e.g. for `unsupported`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub errors: Vec<MetaError>,
        /// Meta's timestamp.
        pub timestamp: Timestamp,
        /// The whole message object as Meta sent it (locations, contacts, orders, ...).
        pub raw: RawJson,
    }

    /// A status for a message the business sent.
    #[event(type = "message.status_updated", v = 1, category = "message", scope = Workspace, aggregate = |s| format!("{}:{}", s.source.phone_number_id.as_deref().unwrap_or("-"), s.wamid))]
    pub struct MessageStatusUpdated {
        /// Where it came from.
        pub source: MetaSource,
        /// The wamid of the outbound message.
        pub wamid: String,
        /// `sent`, `delivered`, `read`, `failed`, `played` (or a newer value).
        pub status: String,
        /// The recipient's WhatsApp id (absent when the message went to a user id
        /// and the phone number cannot be shared).
        pub recipient_id: Option<String>,
        /// The recipient's business-scoped user id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub recipient_user_id: Option<String>,
        /// The recipient's parent user id (Meta also spelled it `parent_recipient_user_id`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub recipient_parent_user_id: Option<String>,
        /// Meta's timestamp.
        pub timestamp: Timestamp,
        /// Echo of `biz_opaque_callback_data`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub biz_opaque_callback_data: Option<String>,
        /// `pricing.category`, when present.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub pricing_category: Option<String>,
        /// The whole `pricing` object.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub pricing: Option<serde_json::Value>,
        /// The whole `conversation` object (Meta omits it from v24.0 on).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub conversation: Option<serde_json::Value>,
        /// Errors (for `failed`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub errors: Vec<MetaError>,
    }

    /// A `user_preferences` item: the user stopped or resumed marketing messages in
    /// WhatsApp itself (v2: the user is a [`ContactRef`]).
    #[event(type = "contact.marketing_preference", v = 2, category = "contact", scope = Workspace, aggregate = |_s| "all".to_string())]
    pub struct ContactMarketingPreference {
        /// Where it came from.
        pub source: MetaSource,
        /// The user.
        pub contact: ContactRef,
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

    /// The same person got a new business-scoped user id (the `user_id_update` field,
    /// or a `user_changed_user_id` system message).
    #[event(type = "contact.user_id_changed", v = 1, category = "contact", scope = Workspace, aggregate = |_s| "all".to_string())]
    pub struct ContactUserIdChanged {
        /// Where it came from.
        pub source: MetaSource,
        /// The id before (absent in a system message that names only the new one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub previous_user_id: Option<String>,
        /// The id now.
        pub current_user_id: String,
        /// The parent user id before and now, when enabled.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub previous_parent_user_id: Option<String>,
        /// The parent user id now.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub current_parent_user_id: Option<String>,
        /// The phone number, when Meta shares it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub wa_id: Option<String>,
        /// Meta's detail text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub detail: Option<String>,
        /// Meta's timestamp.
        pub timestamp: Timestamp,
    }

    /// A `message_template_status_update` item.
    #[event(type = "template.status_updated", v = 1, category = "template", scope = Workspace, aggregate = |s| s.template_id.clone())]
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

    /// A `message_template_quality_update` item (also understood when Meta sends it
    /// under `message_template_status_update` without an `event`).
    #[event(type = "template.quality_updated", v = 1, category = "template", scope = Workspace, aggregate = |s| s.template_id.clone())]
    pub struct TemplateQualityUpdated {
        /// Where it came from.
        pub source: MetaSource,
        /// The template id.
        pub template_id: String,
        /// Template name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub template_name: Option<String>,
        /// Template language.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub language: Option<String>,
        /// `GREEN`, `YELLOW`, `RED`, `UNKNOWN`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub previous_quality_score: Option<String>,
        /// The new score.
        pub new_quality_score: String,
        /// `entry[].time`.
        pub timestamp: Timestamp,
        /// The whole `value` object.
        pub raw: serde_json::Value,
    }

    /// A change of one business number that wabridge keeps whole: quality, name,
    /// security, username, throughput, history and app-state syncs, message echoes,
    /// calls, automatic events, groups, account alerts about the number, and any
    /// number-level field Meta adds.
    #[event(type = "number.updated", v = 1, category = "numberevent", scope = Workspace, aggregate = |s| s.source.phone_number_id.clone().unwrap_or_default())]
    pub struct NumberUpdated {
        /// Where it came from (`field` says what kind of change).
        pub source: MetaSource,
        /// `value.event`, when present.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub event: Option<String>,
        /// `entry[].time`, or the item's own time when it has one.
        pub timestamp: Timestamp,
        /// The whole `value` object.
        pub raw: serde_json::Value,
    }

    /// An `account_update` (or other account-level) item, kept whole.
    #[event(type = "account.updated", v = 1, category = "account", scope = Workspace, aggregate = |s| s.source.waba_id.clone())]
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

    /// Items for a phone number (or WABA) that no workspace holds. Kept in the log
    /// and listed for the operator; never dropped.
    #[event(type = "webhook.unrouted", v = 1, category = "unrouted", scope = Global, aggregate = |s| s.phone_number_id.clone())]
    pub struct WebhookUnrouted {
        /// The number nobody held (or the WABA id, for WABA-level items).
        pub phone_number_id: String,
        /// The WABA id.
        pub waba_id: String,
        /// The domain event that would have been appended, as `{type, v, data}`.
        pub item: UnroutedItem,
        /// The natural key of the item.
        pub dedup_key: String,
    }

    // ----- consent -----

    /// A contact opted out: of every message (`all`) or of marketing templates only.
    #[event(type = "contact.opted_out", v = 1, category = "consent", scope = Workspace, aggregate = |_s| "all".to_string())]
    pub struct ContactOptedOut {
        /// Who.
        pub contact: ContactRef,
        /// What it blocks.
        pub scope: ConsentScope,
        /// What caused it.
        pub source: ConsentSource,
        /// A person's reason (manual changes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub reason: Option<String>,
        /// When (Meta's time for a message, a status or a preference).
        pub at: Timestamp,
    }

    /// A contact opted back in (`all`: every opt-out is lifted; `marketing`: the
    /// marketing one).
    #[event(type = "contact.opted_in", v = 1, category = "consent", scope = Workspace, aggregate = |_s| "all".to_string())]
    pub struct ContactOptedIn {
        /// Who.
        pub contact: ContactRef,
        /// What it lifts.
        pub scope: ConsentScope,
        /// What caused it.
        pub source: ConsentSource,
        /// A person's reason (manual changes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub reason: Option<String>,
        /// When.
        pub at: Timestamp,
    }

    /// A contact asked for help (HELP, INFO, AYUDA, ...).
    #[event(type = "contact.help_requested", v = 1, category = "consent", scope = Workspace, aggregate = |_s| "all".to_string())]
    pub struct ContactHelpRequested {
        /// Who.
        pub contact: ContactRef,
        /// The keyword as listed, and its language.
        pub keyword: String,
        /// Its language.
        pub language: String,
        /// The message.
        pub message_id: String,
        /// When.
        pub at: Timestamp,
    }

    /// A message looks like an opt-out but did not match a keyword exactly ("please
    /// stop sending me these"): for a person to confirm or dismiss.
    #[event(type = "contact.optout_suspected", v = 1, category = "consent", scope = Workspace, aggregate = |_s| "all".to_string())]
    pub struct ContactOptoutSuspected {
        /// The suspicion's id (the message's wamid).
        pub id: String,
        /// Who.
        pub contact: ContactRef,
        /// The message.
        pub message_id: String,
        /// Its text.
        pub text: String,
        /// The word or phrase that looked like an opt-out.
        pub matched: String,
        /// When.
        pub at: Timestamp,
    }

    /// A person confirmed (an opt-out follows) or dismissed a suspected opt-out.
    #[event(type = "contact.optout_suspicion_resolved", v = 1, category = "consent", scope = Workspace, aggregate = |s| s.id.clone())]
    pub struct OptoutSuspicionResolved {
        /// The suspicion.
        pub id: String,
        /// `confirmed` or `dismissed`.
        pub outcome: String,
        /// Why.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub reason: Option<String>,
    }

    /// A workspace's own consent keywords, replacing the previous list.
    #[event(type = "consent.keywords_set", v = 1, category = "consent", scope = Workspace, aggregate = |_s| "keywords".to_string())]
    pub struct ConsentKeywordsSet {
        /// The keywords added to the built-in lists.
        pub keywords: Vec<ConsentKeyword>,
    }

    /// A workspace's consent settings.
    #[event(type = "consent.settings_set", v = 1, category = "consent", scope = Workspace, aggregate = |_s| "keywords".to_string())]
    pub struct ConsentSettingsSet {
        /// Messages that look like an opt-out opt the contact out at once.
        pub suspected_automatic: bool,
        /// Confirmation replies after an opt-out, by language (off when empty).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub confirmations: Vec<ConsentConfirmation>,
    }

    // ----- sending -----

    /// A send request was accepted (answered 202): the outbound sender posts it to
    /// Meta. With an `Idempotency-Key` the id derives from the key, and the event is
    /// appended only if the message's subject is empty, so two racing requests with one
    /// key (on two instances) produce one event.
    #[event(type = "message.send_requested", v = 1, category = "send", scope = Workspace, aggregate = |s| s.id.clone())]
    pub struct MessageSendRequested {
        /// wabridge's message id.
        pub id: String,
        /// The client's `Idempotency-Key`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub idempotency_key: Option<String>,
        /// SHA-256 of the canonical request body (same key, other body → 409).
        pub request_hash: String,
        /// The sending number.
        pub phone_number_id: String,
        /// The recipient.
        pub recipient: ContactRef,
        /// `text`, `template`, `image`, ...
        pub message_type: String,
        /// A template's category as decided at request time (`marketing`, `utility`,
        /// `authentication`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub category: Option<String>,
        /// The type's object exactly as Meta expects it.
        pub body: serde_json::Value,
    }

    /// A send was refused at request time (`contact_opted_out`,
    /// `marketing_opted_out`, `outside_service_window`); nothing was posted to Meta.
    /// It is on a subject of its own (`<id>-blocked`): a blocked request does not take
    /// its message's subject, so the same idempotent request may be accepted later.
    #[event(type = "message.send_blocked", v = 1, category = "send", scope = Workspace, aggregate = |s| format!("{}-blocked", s.id))]
    pub struct MessageSendBlocked {
        /// wabridge's message id (for the record; the request got a 422).
        pub id: String,
        /// The sending number.
        pub phone_number_id: String,
        /// The recipient.
        pub recipient: ContactRef,
        /// The message type.
        pub message_type: String,
        /// The template category, when a template.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub category: Option<String>,
        /// Stable reason code.
        pub reason: String,
        /// Human detail.
        pub detail: String,
    }

    /// The sender is about to post the message to Meta (recorded before the call, so a
    /// crash between the call and its outcome is never re-posted blindly).
    #[event(type = "message.send_attempted", v = 1, category = "send", scope = Workspace, aggregate = |s| s.id.clone())]
    pub struct MessageSendAttempted {
        /// wabridge's message id.
        pub id: String,
        /// 1 for the first call.
        pub attempt: u32,
    }

    /// Meta accepted the message.
    #[event(type = "message.sent", v = 1, category = "send", scope = Workspace, aggregate = |s| s.id.clone())]
    pub struct MessageSent {
        /// wabridge's message id.
        pub id: String,
        /// The sending number.
        pub phone_number_id: String,
        /// Meta's message id.
        pub wamid: String,
        /// Which attempt.
        pub attempt: u32,
    }

    /// A call failed with a retryable answer; the sender tries again at `retry_at`.
    #[event(type = "message.send_retrying", v = 1, category = "send", scope = Workspace, aggregate = |s| s.id.clone())]
    pub struct MessageSendRetrying {
        /// wabridge's message id.
        pub id: String,
        /// The attempt that failed.
        pub attempt: u32,
        /// Stable reason (`rate_limited`, `pair_rate_limited`, `meta_unavailable`, `timeout`, ...).
        pub reason: String,
        /// Meta's error, when it gave one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub error: Option<MetaError>,
        /// When the next attempt is due.
        pub retry_at: Timestamp,
    }

    /// The send failed for good (a permanent error, no token, or retries exhausted).
    #[event(type = "message.send_failed", v = 1, category = "send", scope = Workspace, aggregate = |s| s.id.clone())]
    pub struct MessageSendFailed {
        /// wabridge's message id.
        pub id: String,
        /// The last attempt (0 when nothing was posted).
        pub attempt: u32,
        /// Stable reason (`no_token`, `invalid_recipient`, `token_invalid`, ...).
        pub reason: String,
        /// Meta's error, when it gave one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub error: Option<MetaError>,
    }

    /// An attempt was recorded but its outcome was not (the sender stopped between the
    /// call and the answer): it is not re-posted; a status webhook naming the message
    /// resolves it later.
    #[event(type = "message.send_unknown", v = 1, category = "send", scope = Workspace, aggregate = |s| s.id.clone())]
    pub struct MessageSendUnknown {
        /// wabridge's message id.
        pub id: String,
        /// The attempt without an outcome.
        pub attempt: u32,
    }

    /// A workspace's send rate limit (GCRA).
    #[event(type = "rate_limit.set", v = 1, category = "ratelimit", scope = Workspace, aggregate = |_s| "policy".to_string())]
    pub struct RateLimitSet {
        /// Sustained sends per second.
        pub requests_per_second: f64,
        /// Sends allowed at once.
        pub burst: u32,
    }

    /// Sends refused by the rate limit, counted by one instance over a short interval
    /// (appended about once a second while there are refusals, not once per refusal).
    #[event(type = "rate_limit.rejected", v = 1, category = "ratelimit", scope = Workspace, aggregate = |_s| "rejected".to_string())]
    pub struct RateLimitRejected {
        /// The minute they fell in (`2026-12-01T10:15:00Z`).
        pub minute: String,
        /// How many.
        pub count: u64,
    }

    // ----- operations -----

    /// A consumer could not process an event.
    #[event(type = "dead_letter.recorded", v = 1, category = "deadletter", scope = Global, aggregate = |s| s.id.clone())]
    pub struct DeadLetterRecorded {
        /// Id of the dead letter (`<consumer>:<stream>:<seq>`).
        pub id: String,
        /// The consumer that failed (a projection or reactor name).
        pub consumer: String,
        /// `domain` or `raw`.
        pub stream: String,
        /// Sequence of the failed event.
        pub seq: u64,
        /// Its type.
        pub event_type: String,
        /// Why it failed.
        pub reason: String,
        /// How many attempts were made.
        pub attempts: u32,
        /// For one item of a webhook body: its path in the body (`entry[0].changes[1]`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub item: Option<String>,
    }

    /// The operator asked the consumer to try again.
    #[event(type = "dead_letter.redriven", v = 1, category = "deadletter", scope = Global, aggregate = |s| s.id.clone())]
    pub struct DeadLetterRedriven {
        /// The dead letter id.
        pub id: String,
    }

    /// A redrive succeeded.
    #[event(type = "dead_letter.resolved", v = 1, category = "deadletter", scope = Global, aggregate = |s| s.id.clone())]
    pub struct DeadLetterResolved {
        /// The dead letter id.
        pub id: String,
    }

    /// The operator gave up on a dead letter (kept in the log).
    #[event(type = "dead_letter.discarded", v = 1, category = "deadletter", scope = Global, aggregate = |s| s.id.clone())]
    pub struct DeadLetterDiscarded {
        /// The dead letter id.
        pub id: String,
        /// Why.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub reason: Option<String>,
    }

    /// An operator started a rebuild of read models (`wabridge replay`, or `POST
    /// /v1/admin/projections/{name}/rebuild`), or the processing of stored webhooks
    /// again (`webhook_processor`).
    #[event(type = "projection.rebuild_requested", v = 1, category = "operations", scope = Global, aggregate = |s| s.name.clone())]
    pub struct ProjectionRebuildRequested {
        /// A read model, `all`, or `webhook_processor`.
        pub name: String,
        /// Compare (a read model) or count (the webhook processor) only.
        #[serde(default)]
        pub dry_run: bool,
        /// `webhook_processor`: the first raw position (`seq:N` or `time:T`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub from: Option<String>,
    }

    /// A processing of stored webhooks again (`webhook_processor`) ended, or a read
    /// model's rebuild failed. (A rebuild that succeeded records no end: that event
    /// would move the live state on just after the rebuild compared or swapped it,
    /// and the checksums it printed would no longer be the live ones.)
    #[event(type = "projection.rebuild_finished", v = 1, category = "operations", scope = Global, aggregate = |s| s.name.clone())]
    pub struct ProjectionRebuildFinished {
        /// As requested.
        pub name: String,
        /// As requested.
        #[serde(default)]
        pub dry_run: bool,
        /// `reprocessed` or `failed`.
        pub outcome: String,
        /// One line: the counts (as `replay` prints them), or why it failed.
        pub detail: String,
    }

    /// A request with a valid key was refused: it lacked the permission, or it named
    /// another workspace's resources (`path` then says what was tried).
    #[event(type = "access.denied", v = 1, category = "security", scope = Workspace, aggregate = |s| s.permission.clone())]
    pub struct AccessDenied {
        /// The route's method and path template.
        pub route: String,
        /// The permission that was missing (`workspace` for another workspace's resources).
        pub permission: String,
        /// The client address (see `WABRIDGE_TRUSTED_PROXIES`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub ip: Option<String>,
        /// The path requested, for a request on another workspace's resources.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub path: Option<String>,
    }

    /// Unauthenticated failures from one source in one minute, summarised so they
    /// cannot flood the log.
    #[event(type = "security.auth_failures", v = 1, category = "security", scope = Workspace, aggregate = |s| s.kind.clone())]
    pub struct AuthFailuresSummarised {
        /// The source address.
        pub source: String,
        /// `api_key` or `webhook_signature`.
        pub kind: String,
        /// The minute.
        pub minute: Timestamp,
        /// How many failures.
        pub count: u64,
    }

    /// Audit entries up to `through_seq` leave the view; the hash at the boundary
    /// keeps the chain verifiable.
    #[event(type = "audit.retention_cut", v = 1, category = "audit", scope = Workspace, aggregate = |_s| "retention".to_string())]
    pub struct AuditRetentionCut {
        /// The last audit seq removed.
        pub through_seq: u64,
        /// The hash of that entry (the next entry's `prev_hash`).
        pub boundary_hash: String,
        /// Entries older than this left the view.
        pub cutoff: Timestamp,
        /// HMAC-SHA256 over `workspace|through_seq|boundary_hash` with `AUDIT_SIGNING_KEY`, hex.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub signature: Option<String>,
    }

    /// A marker appended by `wabridge debug append-loop` (durability tests); no
    /// consumer acts on it.
    #[event(type = "debug.appended", v = 1, category = "debug", scope = Global, aggregate = |_s| "loop".to_string())]
    pub struct DebugAppended {
        /// The loop counter.
        pub i: u64,
    }

    // ----- the token vault (ciphertext only, never a token) -----

    /// A token was sealed and stored.
    #[event(type = "token.stored", v = 1, category = "token", scope = Workspace, aggregate = |s| s.phone_number_id.clone())]
    pub struct TokenStored {
        /// The number.
        pub phone_number_id: String,
        /// The sealed token.
        pub sealed: SealedToken,
        /// First 8 bytes of SHA-256 of the token, hex.
        pub fingerprint: String,
        /// Expiry, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub expires_at: Option<Timestamp>,
    }

    /// The same token sealed under a newer master key.
    #[event(type = "token.rewrapped", v = 1, category = "token", scope = Workspace, aggregate = |s| s.phone_number_id.clone())]
    pub struct TokenRewrapped {
        /// The number.
        pub phone_number_id: String,
        /// The new sealed form.
        pub sealed: SealedToken,
        /// The key version it was under before.
        pub from_key_version: String,
    }

    /// A token was revoked.
    #[event(type = "token.revoked", v = 1, category = "token", scope = Workspace, aggregate = |s| s.phone_number_id.clone())]
    pub struct TokenRevoked {
        /// The number.
        pub phone_number_id: String,
    }

    /// Meta rejected the token (OAuth error 190).
    #[event(type = "token.invalidated", v = 1, category = "token", scope = Workspace, aggregate = |s| s.phone_number_id.clone())]
    pub struct TokenInvalidated {
        /// The number.
        pub phone_number_id: String,
        /// Why (e.g. Meta's error code and message).
        pub reason: String,
    }

    // ----- onboarding (Embedded Signup) -----

    /// Embedded Signup onboarding was asked for. The signup code and the number's
    /// PIN are sealed with the token vault's master key (never in clear in the log);
    /// the code's fingerprint (first 8 bytes of its SHA-256) identifies a repeat.
    #[event(type = "onboarding.started", v = 1, category = "onboarding", scope = Workspace, aggregate = |s| s.id.clone())]
    pub struct OnboardingStarted {
        /// The onboarding id (`onb_…`).
        pub id: String,
        /// The WhatsApp Business Account the business shared.
        pub waba_id: String,
        /// The number to register and route.
        pub phone_number_id: String,
        /// The signup code, sealed.
        pub code: SealedToken,
        /// The two-step verification PIN, sealed.
        pub pin: SealedToken,
        /// First 8 bytes of SHA-256 of the code, hex.
        pub code_fingerprint: String,
    }

    /// A step began (its Graph API call is about to be made).
    #[event(type = "onboarding.step_started", v = 1, category = "onboarding", scope = Workspace, aggregate = |s| s.id.clone())]
    pub struct OnboardingStepStarted {
        /// The onboarding id.
        pub id: String,
        /// The step.
        pub step: OnboardingStep,
        /// 1 for the first try.
        pub attempt: u32,
    }

    /// A step succeeded; it never runs again.
    #[event(type = "onboarding.step_succeeded", v = 1, category = "onboarding", scope = Workspace, aggregate = |s| s.id.clone())]
    pub struct OnboardingStepSucceeded {
        /// The onboarding id.
        pub id: String,
        /// The step.
        pub step: OnboardingStep,
        /// The attempt that succeeded.
        pub attempt: u32,
        /// What it produced, when worth showing (the token's fingerprint and expiry, the
        /// display number; never a secret).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub detail: Option<String>,
    }

    /// A step failed. With `retry_at` it is tried again then; without, the failure is
    /// permanent and an `onboarding.failed` follows.
    #[event(type = "onboarding.step_failed", v = 1, category = "onboarding", scope = Workspace, aggregate = |s| s.id.clone())]
    pub struct OnboardingStepFailed {
        /// The onboarding id.
        pub id: String,
        /// The step.
        pub step: OnboardingStep,
        /// The attempt that failed.
        pub attempt: u32,
        /// Whether the failure was transient (a timeout, no connection, a 5xx): the
        /// call may or may not have reached Meta.
        pub transient: bool,
        /// What Meta (or wabridge) said.
        pub error: StepError,
        /// When the step is tried again; none when it is not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub retry_at: Option<Timestamp>,
        /// For a permanent failure, the stable reason (as in `onboarding.failed`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub reason: Option<String>,
    }

    /// Every step succeeded: the number is registered, subscribed and routed, and its
    /// token is in the vault.
    #[event(type = "onboarding.completed", v = 1, category = "onboarding", scope = Workspace, aggregate = |s| s.id.clone())]
    pub struct OnboardingCompleted {
        /// The onboarding id.
        pub id: String,
    }

    /// Onboarding stopped for good.
    #[event(type = "onboarding.failed", v = 1, category = "onboarding", scope = Workspace, aggregate = |s| s.id.clone())]
    pub struct OnboardingFailed {
        /// The onboarding id.
        pub id: String,
        /// The step it stopped at.
        pub step: OnboardingStep,
        /// Stable reason: `code_expired`, `code_used`, `code_invalid`,
        /// `app_credentials_rejected`, `registration_limit`, `wrong_pin`,
        /// `number_held_by_another_workspace`, `waba_held_by_another_workspace`,
        /// `retries_exhausted`, `meta_error`, ...
        pub reason: String,
        /// What to do about it, for a person.
        pub detail: String,
    }

    // ----- delivery to the business's apps (outbound webhooks) -----

    /// An outbound webhook endpoint was added. Its signing secret is sealed by the
    /// vault (never in the log in clear).
    #[event(type = "endpoint.created", v = 1, category = "endpoint", scope = Workspace, aggregate = |s| s.endpoint_id.clone())]
    pub struct EndpointCreated {
        /// `ep_…`.
        pub endpoint_id: String,
        /// Where deliveries are POSTed (http or https).
        pub url: String,
        /// The event types it receives; empty: every public type.
        pub types: Vec<String>,
        /// For people.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub description: Option<String>,
        /// The signing secret (`whsec_…`), sealed.
        pub secret: SealedToken,
    }

    /// An endpoint's settings changed (the whole new settings).
    #[event(type = "endpoint.updated", v = 1, category = "endpoint", scope = Workspace, aggregate = |s| s.endpoint_id.clone())]
    pub struct EndpointUpdated {
        /// The endpoint.
        pub endpoint_id: String,
        /// Its URL.
        pub url: String,
        /// Its event types (empty: every public type).
        pub types: Vec<String>,
        /// Its description.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub description: Option<String>,
        /// False pauses deliveries; true resumes them from where they stopped.
        pub enabled: bool,
    }

    /// The endpoint's signing secret was replaced; the previous one still signs
    /// (a second signature) until `previous_valid_until`.
    #[event(type = "endpoint.secret_rotated", v = 1, category = "endpoint", scope = Workspace, aggregate = |s| s.endpoint_id.clone())]
    pub struct EndpointSecretRotated {
        /// The endpoint.
        pub endpoint_id: String,
        /// The new secret, sealed.
        pub secret: SealedToken,
        /// Until when the previous secret signs too.
        pub previous_valid_until: Timestamp,
    }

    /// The endpoint's secrets were re-encrypted under the newest master key
    /// (`wabridge keys rotate`); what they are does not change.
    #[event(type = "endpoint.secret_rewrapped", v = 1, category = "endpoint", scope = Workspace, aggregate = |s| s.endpoint_id.clone())]
    pub struct EndpointSecretRewrapped {
        /// The endpoint.
        pub endpoint_id: String,
        /// The secret, sealed under the newest key.
        pub secret: SealedToken,
        /// The previous secret (during a rotation), sealed under the newest key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub previous_secret: Option<SealedToken>,
    }

    /// wabridge stopped delivering to an endpoint: it answered 410, or it failed for
    /// the whole retry period.
    #[event(type = "endpoint.disabled", v = 1, category = "endpoint", scope = Workspace, aggregate = |s| s.endpoint_id.clone())]
    pub struct EndpointDisabled {
        /// The endpoint.
        pub endpoint_id: String,
        /// `gone` (410) or `failing`.
        pub reason: String,
        /// For people.
        pub detail: String,
    }

    /// An endpoint was deleted (nothing more is delivered to it).
    #[event(type = "endpoint.deleted", v = 1, category = "endpoint", scope = Workspace, aggregate = |s| s.endpoint_id.clone())]
    pub struct EndpointDeleted {
        /// The endpoint.
        pub endpoint_id: String,
    }

    /// Every event since a time is to be delivered to the endpoint again, in order
    /// (its position moves back to just before `from_seq`).
    #[event(type = "endpoint.recovery_requested", v = 1, category = "endpoint", scope = Workspace, aggregate = |s| s.endpoint_id.clone())]
    pub struct EndpointRecoveryRequested {
        /// The endpoint.
        pub endpoint_id: String,
        /// The time asked for.
        pub since: Timestamp,
        /// The first domain-log sequence recorded at or after it.
        pub from_seq: u64,
    }

    /// One delivery is to be sent again (once, out of order).
    #[event(type = "delivery.redelivery_requested", v = 1, category = "endpoint", scope = Workspace, aggregate = |s| s.endpoint_id.clone())]
    pub struct DeliveryRedeliveryRequested {
        /// The endpoint.
        pub endpoint_id: String,
        /// The delivery.
        pub delivery_id: String,
        /// The delivered event's domain-log sequence.
        pub event_seq: u64,
    }

    /// Attempts to deliver events to an endpoint, in the order they were made (the
    /// sender records them in batches: one event per batch, not per attempt).
    #[event(type = "delivery.attempted", v = 1, category = "delivery", scope = Workspace, aggregate = |s| s.endpoint_id.clone())]
    pub struct DeliveryAttempted {
        /// The endpoint.
        pub endpoint_id: String,
        /// The attempts, oldest first.
        pub attempts: Vec<DeliveryAttempt>,
    }
}
