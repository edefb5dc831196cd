//! The public send request (`POST /v1/workspaces/{ws}/messages`), its validation and the body
//! wabridge sends to Meta's `POST /{phone_number_id}/messages`.
//!
//! Everything here is pure: [`validate`] turns a deserialised [`SendRequest`] into a
//! [`ValidSend`] (or a one-line message naming the offending field, which the route answers as
//! `400 validation_failed`), [`meta_body`] renders the JSON Meta expects, and [`request_hash`]
//! fingerprints a request body so an idempotent retry can be compared with the first attempt.
//!
//! # Sources of the limits
//!
//! `REF` is `shared/reference/whatsapp-cloud-api.md`, `R2` is `shared/reference/round2-facts.md`.
//! Where neither file gives a number, the limit comes from Meta's own page (read from a mirror of
//! developers.facebook.com fetched 2026-09-11) and is named `[M] <page>`; `[S]` marks a
//! secondary source and "ours" a choice of wabridge.
//!
//! | what | limit | source |
//! |---|---|---|
//! | `to` | 6–15 digits after an optional `+`, no leading 0 | E.164 (max 15 digits); 6 and the leading-0 rule are ours |
//! | `recipient` | `CC.` + optional `ENT.` + 1–128 alphanumerics | R2 §1.1 |
//! | `phone_number_id` | 1–32 digits | ours |
//! | `text.body` | 1–4,096 characters | REF §2.1 |
//! | `template.name` | 1–512 characters of `a-z`, `0-9`, `_` | REF §2.4 (Templates) |
//! | `template.language` | `ll`, `lll`, `ll_CC`, `ll_Ssss`, `ll_NNN` (e.g. `en`, `en_US`, `zh_Hant`) | ours, after REF §1.10 (`en_US`) |
//! | authentication template to a `recipient` | refused | R2 §1.4 (Meta answers 131062) |
//! | media `caption` | ≤ 1,024 characters; image, video and document only | [M] messages/image-messages, video-messages, document-messages |
//! | media `filename` | document only | [M] messages/document-messages |
//! | interactive `button`: buttons | 1–3, `type: "reply"`, id ≤ 256, title ≤ 20, ids and titles unique | REF §1.7 (3); [M] messages/interactive-reply-buttons-messages |
//! | interactive `button`: `body.text` | ≤ 1,024 | [M] messages/interactive-reply-buttons-messages |
//! | interactive `list`: `body.text` | ≤ 4,096 | [M] messages/interactive-list-messages |
//! | interactive `list`: `action.button` | ≤ 20 | same page |
//! | interactive `list`: sections / rows | 1–10 sections, 1–10 rows in all | same page |
//! | interactive `list`: section title | ≤ 24 (required with more than one section) | same page; "required with more than one" [S] whatsapp-api-js |
//! | interactive `list`: row id / title / description | ≤ 200 / ≤ 24 / ≤ 72; row ids unique | same page; uniqueness ours |
//! | interactive, other types: `body.text` | ≤ 1,024 | [M] messages/interactive-reply-buttons-messages (applied to the others, ours) |
//! | interactive header text / footer text | ≤ 60 / ≤ 60 | [M] messages/interactive-list-messages |
//! | `reaction.message_id` | a `wamid.` id | REF §1.5 ("The message `id` starts with `wamid.`") |
//! | `reaction.emoji` | `""` (remove) or one emoji | [M] messages/reaction-messages; the single-emoji check is ours |
//! | `biz_opaque_callback_data` | ≤ 512 bytes | [S] whatsapp-api-js, quoting Meta ("An arbitrary 512B string"); REF §1.8 only says it is echoed |
//!
//! Lengths are counted in Unicode scalar values (`char`s), not bytes.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use wabridge_events::types::ContactRef;

/// Fewest digits accepted in `to` (ours: shorter numbers are not reachable on WhatsApp).
pub const PHONE_MIN_DIGITS: usize = 6;
/// Most digits accepted in `to` (E.164 allows at most 15).
pub const PHONE_MAX_DIGITS: usize = 15;
/// Most alphanumerics after the `CC.` (and optional `ENT.`) prefix of a business-scoped user
/// id (round2-facts §1.1: "up to 128", since the 6 Feb 2026 change).
pub const USER_ID_MAX_CHARS: usize = 128;
/// Most digits in a `phone_number_id` (ours; Meta's ids are 15–17 digits today).
pub const PHONE_NUMBER_ID_MAX_DIGITS: usize = 32;
/// Most characters in `text.body` (whatsapp-cloud-api.md §2.1).
pub const TEXT_BODY_MAX_CHARS: usize = 4096;
/// Most characters in a template name (whatsapp-cloud-api.md §2.4, Templates).
pub const TEMPLATE_NAME_MAX_CHARS: usize = 512;
/// Most characters in a media caption (Meta's image, video and document message pages).
pub const CAPTION_MAX_CHARS: usize = 1024;
/// Most reply buttons in an interactive `button` message (whatsapp-cloud-api.md §1.7).
pub const REPLY_BUTTONS_MAX: usize = 3;
/// Most characters in a reply button id (Meta's interactive reply buttons page).
pub const REPLY_BUTTON_ID_MAX_CHARS: usize = 256;
/// Most characters in a reply button title (Meta's interactive reply buttons page).
pub const REPLY_BUTTON_TITLE_MAX_CHARS: usize = 20;
/// Most characters in `interactive.body.text` of a `button` message, and (our choice) of
/// every interactive type other than `list` (Meta's interactive reply buttons page).
pub const INTERACTIVE_BODY_MAX_CHARS: usize = 1024;
/// Most characters in `interactive.body.text` of a `list` message (Meta's interactive list
/// messages page: "Maximum 4096 characters").
pub const LIST_BODY_MAX_CHARS: usize = 4096;
/// Most characters in an interactive text header (Meta's interactive list messages page).
pub const HEADER_TEXT_MAX_CHARS: usize = 60;
/// Most characters in an interactive footer (Meta's interactive list and reply buttons pages).
pub const FOOTER_TEXT_MAX_CHARS: usize = 60;
/// Most characters in a list message's `action.button` (Meta's interactive list page).
pub const LIST_BUTTON_MAX_CHARS: usize = 20;
/// Most sections in a list message (Meta's interactive list page).
pub const LIST_SECTIONS_MAX: usize = 10;
/// Most rows in a list message, all sections together (Meta's interactive list page).
pub const LIST_ROWS_MAX: usize = 10;
/// Most characters in a list section title (Meta's interactive list page).
pub const LIST_SECTION_TITLE_MAX_CHARS: usize = 24;
/// Most characters in a list row id (Meta's interactive list page).
pub const LIST_ROW_ID_MAX_CHARS: usize = 200;
/// Most characters in a list row title (Meta's interactive list page).
pub const LIST_ROW_TITLE_MAX_CHARS: usize = 24;
/// Most characters in a list row description (Meta's interactive list page).
pub const LIST_ROW_DESCRIPTION_MAX_CHARS: usize = 72;
/// Most bytes of `biz_opaque_callback_data` ("An arbitrary 512B string", Meta's Messages API
/// reference as quoted by whatsapp-api-js; whatsapp-cloud-api.md §1.8 only says Meta echoes it
/// in status webhooks).
pub const CALLBACK_DATA_MAX_BYTES: usize = 512;
/// Most bytes in a reaction emoji (ours: the longest emoji ZWJ sequences are about 35 bytes).
pub const EMOJI_MAX_BYTES: usize = 64;

/// The `interactive.type` values Meta documents for `POST /{phone_number_id}/messages`.
///
/// `button` and `list`: whatsapp-cloud-api.md §1.7 and Meta's interactive pages;
/// `request_contact_info`: round2-facts §1.4; the others are Meta's interactive message types
/// as listed by SDKs and vendors (cta_url, flow, product, product_list, catalog_message,
/// location_request_message, address_message, call_permission_request, carousel).
pub const INTERACTIVE_TYPES: &[&str] = &[
    "button",
    "list",
    "cta_url",
    "flow",
    "product",
    "product_list",
    "catalog_message",
    "location_request_message",
    "address_message",
    "call_permission_request",
    "carousel",
    "request_contact_info",
];

/// A request to send one WhatsApp message (`POST /v1/workspaces/{ws}/messages`).
///
/// Name the recipient with exactly one of `to` (a phone number) and `recipient` (a
/// business-scoped user id). `type` says which kind of message this is, and the object of the
/// same name carries its content; the objects of the other kinds must be absent.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// The recipient's phone number in E.164 form, country code first; the leading `+` is
    /// optional (`+447700900123` or `447700900123`). Exactly one of `to` and `recipient`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The recipient's business-scoped user id, for users Meta identifies without a phone
    /// number: a country code, a dot, optionally `ENT.`, then up to 128 letters and digits
    /// (`US.13491208655302741918`, `US.ENT.11815799212886844830`). Exactly one of `to` and
    /// `recipient`. Authentication templates cannot be sent to a user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// Which of the workspace's phone numbers sends the message (Meta's phone number id,
    /// digits). Optional when the workspace holds a single number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number_id: Option<String>,
    /// The kind of message; the object of the same name must be present.
    #[serde(rename = "type")]
    pub kind: MessageKind,
    /// The content of a `text` message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextBody>,
    /// The content of a `template` message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateBody>,
    /// The content of an `image` message (JPEG or PNG).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<MediaBody>,
    /// The content of a `document` message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<MediaBody>,
    /// The content of an `audio` message (no caption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<MediaBody>,
    /// The content of a `video` message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<MediaBody>,
    /// The content of a `sticker` message (WebP, no caption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticker: Option<MediaBody>,
    /// The content of an `interactive` message, in Meta's own shape (the `interactive` object
    /// of the Cloud API, e.g. `{"type": "button", "body": {"text": …}, "action": {…}}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interactive: Option<Value>,
    /// The content of a `reaction` message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reaction: Option<ReactionBody>,
}

/// The kind of a message (the request's `type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// Plain text, optionally with a link preview.
    Text,
    /// An approved message template; the only kind allowed outside the 24-hour service window.
    Template,
    /// An image with an optional caption.
    Image,
    /// A document with an optional caption and filename.
    Document,
    /// An audio file.
    Audio,
    /// A video with an optional caption.
    Video,
    /// A sticker.
    Sticker,
    /// An interactive message (reply buttons, list, call-to-action URL, flow, …).
    Interactive,
    /// An emoji reaction to a message the contact sent.
    Reaction,
}

impl MessageKind {
    /// Every kind, in the contract's order.
    pub const ALL: [MessageKind; 9] = [
        MessageKind::Text,
        MessageKind::Template,
        MessageKind::Image,
        MessageKind::Document,
        MessageKind::Audio,
        MessageKind::Video,
        MessageKind::Sticker,
        MessageKind::Interactive,
        MessageKind::Reaction,
    ];

    /// The wire name (`"text"`, `"template"`, …), which is also Meta's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Text => "text",
            MessageKind::Template => "template",
            MessageKind::Image => "image",
            MessageKind::Document => "document",
            MessageKind::Audio => "audio",
            MessageKind::Video => "video",
            MessageKind::Sticker => "sticker",
            MessageKind::Interactive => "interactive",
            MessageKind::Reaction => "reaction",
        }
    }

    /// Whether this kind carries a media object (`link` or `id`).
    pub fn is_media(self) -> bool {
        matches!(
            self,
            MessageKind::Image
                | MessageKind::Document
                | MessageKind::Audio
                | MessageKind::Video
                | MessageKind::Sticker
        )
    }
}

/// The content of a `text` message.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TextBody {
    /// The text, 1 to 4,096 characters.
    pub body: String,
    /// Whether WhatsApp shows a preview of the first URL in `body`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_url: Option<bool>,
}

/// The content of a `template` message.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateBody {
    /// The template's name: lower-case letters, digits and `_`, at most 512 characters.
    pub name: String,
    /// The template's language code, such as `en`, `en_US`, `pt_BR` or `zh_Hant`; wabridge
    /// sends it to Meta as `{"code": …}`.
    pub language: String,
    /// The template's category. It decides consent handling (`marketing` is blocked for
    /// contacts who opted out of marketing) and is not sent to Meta. When absent, wabridge uses
    /// the category from Meta's template webhooks, else treats the template as marketing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<TemplateCategory>,
    /// The parameter values, in Meta's shape: an array of component objects, each with a
    /// `type` (`header`, `body`, `button`, …) and its `parameters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<Value>,
}

/// A template's category, as Meta classifies templates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TemplateCategory {
    /// Promotional content; blocked for contacts who opted out of marketing.
    Marketing,
    /// Updates about something the contact asked for (orders, appointments, …).
    Utility,
    /// One-time passcodes; needs a phone number (`to`), never a user id.
    Authentication,
}

impl TemplateCategory {
    /// The wire name (`"marketing"`, `"utility"`, `"authentication"`).
    pub fn as_str(self) -> &'static str {
        match self {
            TemplateCategory::Marketing => "marketing",
            TemplateCategory::Utility => "utility",
            TemplateCategory::Authentication => "authentication",
        }
    }
}

/// The content of an `image`, `document`, `audio`, `video` or `sticker` message: exactly one
/// of `link` and `id`.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MediaBody {
    /// An absolute `http` or `https` URL Meta fetches the media from. Exactly one of `link`
    /// and `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// The id of media uploaded to Meta. Exactly one of `link` and `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// A caption of at most 1,024 characters; image, video and document only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    /// The file name shown to the contact, with its extension; document only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

/// The content of a `reaction` message.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReactionBody {
    /// The WhatsApp message id (`wamid.…`) of the contact's message to react to.
    pub message_id: String,
    /// One emoji, or `""` to remove an earlier reaction.
    pub emoji: String,
}

/// Whom a message goes to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Recipient {
    /// A phone number, digits only (country code first, no `+`).
    Phone(String),
    /// A business-scoped user id (`US.1349…` or a parent id `US.ENT.1181…`), verbatim.
    UserId(String),
}

impl Recipient {
    /// The digits of the phone number, or the user id.
    pub fn as_str(&self) -> &str {
        match self {
            Recipient::Phone(digits) => digits,
            Recipient::UserId(id) => id,
        }
    }

    /// A contact named by either form in one string (a path's `{wa_id}`): a user id
    /// when it looks like one, else an E.164 number.
    pub fn parse(id: &str) -> Result<Recipient, String> {
        if is_user_id(id) {
            Ok(Recipient::UserId(id.to_owned()))
        } else {
            parse_phone(id).map(Recipient::Phone)
        }
    }

    /// The contact reference events carry.
    pub fn contact(&self) -> ContactRef {
        match self {
            Recipient::Phone(d) => ContactRef {
                wa_id: Some(d.clone()),
                ..ContactRef::default()
            },
            Recipient::UserId(u) => ContactRef {
                user_id: Some(u.clone()),
                ..ContactRef::default()
            },
        }
    }

    /// The recipient of a contact reference (its wa_id when known).
    pub fn of_contact(c: &ContactRef) -> Option<Recipient> {
        match (&c.wa_id, &c.user_id) {
            (Some(d), _) => Some(Recipient::Phone(d.clone())),
            (None, Some(u)) => Some(Recipient::UserId(u.clone())),
            (None, None) => None,
        }
    }
}

/// A send request that passed [`validate`].
#[derive(Clone, Debug, PartialEq)]
pub struct ValidSend {
    /// Whom the message goes to.
    pub recipient: Recipient,
    /// The kind of message.
    pub kind: MessageKind,
    /// The template's category as the request gave it (templates only; not sent to Meta).
    pub category: Option<TemplateCategory>,
    /// Which of the workspace's numbers sends, when the request named one.
    pub phone_number_id: Option<String>,
    /// Whether this is a template (the only kind allowed outside the service window).
    pub is_template: bool,
    /// The kind's object exactly as Meta expects it (e.g. a template's
    /// `{"name", "language": {"code"}, "components"?}`).
    pub body: Value,
}

/// Checks a send request and returns what to send, or a one-line message naming the field at
/// fault (the `detail` of a `400 validation_failed`).
pub fn validate(req: &SendRequest) -> Result<ValidSend, String> {
    let recipient = validate_recipient(req)?;
    let phone_number_id = match &req.phone_number_id {
        None => None,
        Some(id) => {
            if id.is_empty()
                || id.len() > PHONE_NUMBER_ID_MAX_DIGITS
                || !id.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(format!(
                    "phone_number_id: must be 1 to {PHONE_NUMBER_ID_MAX_DIGITS} digits"
                ));
            }
            Some(id.clone())
        }
    };
    check_bodies_present(req)?;

    let mut category = None;
    let body = match req.kind {
        MessageKind::Text => text_body(req.text.as_ref().expect("checked present"))?,
        MessageKind::Template => {
            let t = req.template.as_ref().expect("checked present");
            category = t.category;
            template_body(t, &recipient)?
        }
        MessageKind::Interactive => {
            let i = req.interactive.as_ref().expect("checked present");
            validate_interactive(i)?;
            i.clone()
        }
        MessageKind::Reaction => reaction_body(req.reaction.as_ref().expect("checked present"))?,
        kind => media_body(kind, media_of(req, kind).expect("checked present"))?,
    };

    Ok(ValidSend {
        recipient,
        kind: req.kind,
        category,
        phone_number_id,
        is_template: req.kind == MessageKind::Template,
        body,
    })
}

/// The complete JSON body of Meta's `POST /{phone_number_id}/messages` for a validated send
/// (whatsapp-cloud-api.md §2.1): `messaging_product`, `recipient_type: "individual"`, the
/// recipient, `type` and the kind's object.
///
/// A phone recipient is sent as `to` with a leading `+`: without it Meta prepends the business
/// number's country code (whatsapp-cloud-api.md §2.1), and Meta's examples always carry it. A
/// user id is sent in the `recipient` field, and `to` is left out (round2-facts §1.4).
///
/// `callback` becomes `biz_opaque_callback_data`, which Meta echoes in the status webhooks of
/// this message (whatsapp-cloud-api.md §1.8). It must be at most [`CALLBACK_DATA_MAX_BYTES`]
/// (512) bytes; wabridge passes its own message id.
pub fn meta_body(v: &ValidSend, callback: Option<&str>) -> Value {
    debug_assert!(
        callback.is_none_or(|c| c.len() <= CALLBACK_DATA_MAX_BYTES),
        "biz_opaque_callback_data is limited to {CALLBACK_DATA_MAX_BYTES} bytes"
    );
    let mut out = Map::new();
    out.insert("messaging_product".into(), json!("whatsapp"));
    out.insert("recipient_type".into(), json!("individual"));
    match &v.recipient {
        Recipient::Phone(digits) => {
            out.insert("to".into(), Value::String(format!("+{digits}")));
        }
        Recipient::UserId(id) => {
            out.insert("recipient".into(), Value::String(id.clone()));
        }
    }
    out.insert("type".into(), json!(v.kind.as_str()));
    out.insert(v.kind.as_str().into(), v.body.clone());
    if let Some(callback) = callback {
        out.insert(
            "biz_opaque_callback_data".into(),
            Value::String(callback.to_owned()),
        );
    }
    Value::Object(out)
}

/// Lower-case hex SHA-256 of the canonical JSON form of a request body: object keys sorted
/// (by their UTF-8 bytes) at every depth, no whitespace, strings and numbers as `serde_json`
/// writes them. The same body with its keys in another order, or with other whitespace,
/// hashes the same; used to tell an idempotent retry from another body under the same key.
pub fn request_hash(raw: &Value) -> String {
    let mut canonical = String::new();
    write_canonical(raw, &mut canonical);
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// Recipient

fn validate_recipient(req: &SendRequest) -> Result<Recipient, String> {
    match (&req.to, &req.recipient) {
        (Some(_), Some(_)) => Err(
            "to, recipient: give exactly one of `to` (a phone number) and `recipient` (a user id), not both"
                .into(),
        ),
        (None, None) => Err(
            "to: missing; give `to` (a phone number) or `recipient` (a business-scoped user id)"
                .into(),
        ),
        (Some(to), None) => parse_phone(to).map(Recipient::Phone),
        (None, Some(id)) => {
            if is_user_id(id) {
                Ok(Recipient::UserId(id.clone()))
            } else {
                Err(format!(
                    "recipient: must be a business-scoped user id: two upper-case letters, '.', optionally 'ENT.', then 1 to {USER_ID_MAX_CHARS} letters or digits (e.g. US.13491208655302741918)"
                ))
            }
        }
    }
}

/// The digits of an E.164 number (`+` optional), or the reason it is not one.
fn parse_phone(to: &str) -> Result<String, String> {
    let digits = to.strip_prefix('+').unwrap_or(to);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "to: must be an E.164 phone number: {PHONE_MIN_DIGITS} to {PHONE_MAX_DIGITS} digits, optionally after a leading '+', with no spaces or punctuation"
        ));
    }
    if !(PHONE_MIN_DIGITS..=PHONE_MAX_DIGITS).contains(&digits.len()) {
        return Err(format!(
            "to: must have {PHONE_MIN_DIGITS} to {PHONE_MAX_DIGITS} digits (got {})",
            digits.len()
        ));
    }
    if digits.starts_with('0') {
        return Err(
            "to: must start with the country code (E.164 numbers never start with 0)".into(),
        );
    }
    Ok(digits.to_owned())
}

/// `CC.` + optional `ENT.` + 1..=128 ASCII alphanumerics (round2-facts §1.1).
pub fn is_user_id(id: &str) -> bool {
    let b = id.as_bytes();
    if b.len() < 4 || !b[0].is_ascii_uppercase() || !b[1].is_ascii_uppercase() || b[2] != b'.' {
        return false;
    }
    let rest = &id[3..];
    let local = match rest.strip_prefix("ENT.") {
        Some(local) if !local.is_empty() => local,
        _ => rest,
    };
    !local.is_empty()
        && local.len() <= USER_ID_MAX_CHARS
        && local.bytes().all(|c| c.is_ascii_alphanumeric())
}

// ---------------------------------------------------------------------------------------------
// Which body is present

fn media_of(req: &SendRequest, kind: MessageKind) -> Option<&MediaBody> {
    match kind {
        MessageKind::Image => req.image.as_ref(),
        MessageKind::Document => req.document.as_ref(),
        MessageKind::Audio => req.audio.as_ref(),
        MessageKind::Video => req.video.as_ref(),
        MessageKind::Sticker => req.sticker.as_ref(),
        _ => None,
    }
}

fn has_body(req: &SendRequest, kind: MessageKind) -> bool {
    match kind {
        MessageKind::Text => req.text.is_some(),
        MessageKind::Template => req.template.is_some(),
        MessageKind::Interactive => req.interactive.is_some(),
        MessageKind::Reaction => req.reaction.is_some(),
        media => media_of(req, media).is_some(),
    }
}

fn check_bodies_present(req: &SendRequest) -> Result<(), String> {
    let kind = req.kind.as_str();
    if !has_body(req, req.kind) {
        return Err(format!(
            "{kind}: missing; a message of type \"{kind}\" needs a `{kind}` object"
        ));
    }
    if let Some(other) = MessageKind::ALL
        .into_iter()
        .find(|k| *k != req.kind && has_body(req, *k))
    {
        let other = other.as_str();
        return Err(format!(
            "{other}: not allowed in a message of type \"{kind}\"; send only the `{kind}` object"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Text, template, media, reaction

fn text_body(t: &TextBody) -> Result<Value, String> {
    if t.body.trim().is_empty() {
        return Err("text.body: must not be empty".into());
    }
    check_max_chars("text.body", &t.body, TEXT_BODY_MAX_CHARS)?;
    let mut out = Map::new();
    out.insert("body".into(), Value::String(t.body.clone()));
    if let Some(preview) = t.preview_url {
        out.insert("preview_url".into(), Value::Bool(preview));
    }
    Ok(Value::Object(out))
}

fn template_body(t: &TemplateBody, recipient: &Recipient) -> Result<Value, String> {
    if t.name.is_empty() {
        return Err("template.name: must not be empty".into());
    }
    check_max_chars("template.name", &t.name, TEMPLATE_NAME_MAX_CHARS)?;
    if !t
        .name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(
            "template.name: may contain only lower-case letters a-z, digits and '_' (Meta's template name format)"
                .into(),
        );
    }
    check_language(&t.language)?;
    if let Some(components) = &t.components {
        let items = components
            .as_array()
            .ok_or("template.components: must be an array of component objects")?;
        for (i, c) in items.iter().enumerate() {
            let obj = c
                .as_object()
                .ok_or_else(|| format!("template.components[{i}]: must be an object"))?;
            match obj.get("type") {
                Some(Value::String(s)) if !s.is_empty() => {}
                _ => {
                    return Err(format!(
                        "template.components[{i}].type: must be a non-empty string (header, body, button, …)"
                    ))
                }
            }
        }
    }
    if t.category == Some(TemplateCategory::Authentication)
        && matches!(recipient, Recipient::UserId(_))
    {
        return Err(
            "template.category: authentication templates cannot be sent to a business-scoped user id; send them with `to` and a phone number"
                .into(),
        );
    }
    let mut out = Map::new();
    out.insert("name".into(), Value::String(t.name.clone()));
    out.insert("language".into(), json!({ "code": t.language }));
    if let Some(components) = &t.components {
        out.insert("components".into(), components.clone());
    }
    Ok(Value::Object(out))
}

/// `ll` or `lll`, optionally `_` and a region (`US`), a script (`Hant`) or a UN M.49 area
/// (`419`).
fn check_language(code: &str) -> Result<(), String> {
    let (lang, sub) = match code.split_once('_') {
        Some((lang, sub)) => (lang, Some(sub)),
        None => (code, None),
    };
    let lang_ok = (2..=3).contains(&lang.len()) && lang.bytes().all(|b| b.is_ascii_lowercase());
    let sub_ok = match sub {
        None => true,
        Some(s) => {
            let b = s.as_bytes();
            (b.len() == 2 && b.iter().all(u8::is_ascii_uppercase))
                || (b.len() == 3 && b.iter().all(u8::is_ascii_digit))
                || (b.len() == 4
                    && b[0].is_ascii_uppercase()
                    && b[1..].iter().all(u8::is_ascii_lowercase))
        }
    };
    if lang_ok && sub_ok {
        return Ok(());
    }
    if code.contains('-') {
        return Err(format!(
            "template.language: write the locale with '_' as Meta's templates do (e.g. {}), not '-'",
            code.replace('-', "_")
        ));
    }
    Err("template.language: must be a language code such as en, en_US, pt_BR or zh_Hant".into())
}

fn media_body(kind: MessageKind, m: &MediaBody) -> Result<Value, String> {
    let k = kind.as_str();
    let mut out = Map::new();
    match (&m.link, &m.id) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "{k}: give exactly one of `link` and `id`, not both"
            ))
        }
        (None, None) => {
            return Err(format!(
                "{k}.link: missing; give `link` (a URL) or `id` (an uploaded media id)"
            ))
        }
        (Some(link), None) => {
            if !is_http_url(link) {
                return Err(format!(
                    "{k}.link: must be an absolute http:// or https:// URL"
                ));
            }
            out.insert("link".into(), Value::String(link.clone()));
        }
        (None, Some(id)) => {
            if id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "{k}.id: must be a media id without spaces (the id Meta returned for an upload)"
                ));
            }
            out.insert("id".into(), Value::String(id.clone()));
        }
    }
    if let Some(caption) = &m.caption {
        if !matches!(
            kind,
            MessageKind::Image | MessageKind::Video | MessageKind::Document
        ) {
            return Err(format!(
                "{k}.caption: not allowed; only image, video and document messages have a caption"
            ));
        }
        check_max_chars(&format!("{k}.caption"), caption, CAPTION_MAX_CHARS)?;
        out.insert("caption".into(), Value::String(caption.clone()));
    }
    if let Some(filename) = &m.filename {
        if kind != MessageKind::Document {
            return Err(format!(
                "{k}.filename: not allowed; only document messages have a filename"
            ));
        }
        if filename.trim().is_empty() || filename.chars().any(char::is_control) {
            return Err("document.filename: must be a non-empty file name".into());
        }
        out.insert("filename".into(), Value::String(filename.clone()));
    }
    Ok(Value::Object(out))
}

/// An absolute `http://` or `https://` URL with a host and no whitespace.
fn is_http_url(s: &str) -> bool {
    let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &s[8..]
    } else if lower.starts_with("http://") {
        &s[7..]
    } else {
        return false;
    };
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    let host = host.split(':').next().unwrap_or("");
    !host.is_empty() && !host.starts_with('.')
}

fn reaction_body(r: &ReactionBody) -> Result<Value, String> {
    if r.message_id.trim().is_empty() {
        return Err("reaction.message_id: must not be empty".into());
    }
    if !r.message_id.starts_with("wamid.") || r.message_id.chars().any(char::is_whitespace) {
        return Err(
            "reaction.message_id: must be a WhatsApp message id (wamid.…) of a message the contact sent"
                .into(),
        );
    }
    if !r.emoji.is_empty() && !is_single_emoji(&r.emoji) {
        return Err(
            "reaction.emoji: must be a single emoji, or \"\" to remove the reaction".into(),
        );
    }
    Ok(json!({ "message_id": r.message_id, "emoji": r.emoji }))
}

/// A pragmatic single-emoji check without Unicode tables: exactly one cluster whose base is in
/// an emoji block, where variation selectors, skin-tone modifiers, tags, the keycap mark and
/// ZWJ-joined characters continue the cluster and regional indicators pair into one flag.
/// ASCII is allowed only as a keycap base (`1️⃣`, `#️⃣`, `*️⃣`).
fn is_single_emoji(s: &str) -> bool {
    if s.is_empty() || s.len() > EMOJI_MAX_BYTES {
        return false;
    }
    let keycap = s.contains('\u{20E3}');
    let mut clusters = 0usize;
    let mut after_zwj = false;
    let mut open_flag = false;
    for c in s.chars() {
        let cp = c as u32;
        if c.is_whitespace() || c.is_control() {
            return false;
        }
        let extends = matches!(
            cp,
            0x200D | 0xFE0E | 0xFE0F | 0x20E3 | 0x1F3FB..=0x1F3FF | 0xE0020..=0xE007F
        );
        if extends {
            if clusters == 0 {
                return false;
            }
            after_zwj = cp == 0x200D;
            continue;
        }
        let regional = (0x1F1E6..=0x1F1FF).contains(&cp);
        if regional && open_flag {
            open_flag = false;
            after_zwj = false;
            continue;
        }
        let base_ok = if c.is_ascii() {
            keycap && (c.is_ascii_digit() || c == '#' || c == '*')
        } else {
            is_emoji_base(cp)
        };
        if !base_ok {
            return false;
        }
        if !after_zwj {
            clusters += 1;
        }
        after_zwj = false;
        open_flag = regional;
    }
    clusters == 1 && !after_zwj
}

fn is_emoji_base(cp: u32) -> bool {
    matches!(
        cp,
        0x00A9
            | 0x00AE
            | 0x203C
            | 0x2049
            | 0x2122
            | 0x2139
            | 0x2194..=0x21AA
            | 0x231A..=0x23FF
            | 0x24C2
            | 0x25AA..=0x27BF
            | 0x2934..=0x2935
            | 0x2B05..=0x2B55
            | 0x3030
            | 0x303D
            | 0x3297
            | 0x3299
            | 0x1F000..=0x1FAFF
    )
}

fn check_max_chars(field: &str, s: &str, max: usize) -> Result<(), String> {
    let n = s.chars().count();
    if n > max {
        return Err(format!(
            "{field}: must be at most {max} characters (got {n})"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Interactive

fn validate_interactive(i: &Value) -> Result<(), String> {
    let obj = i
        .as_object()
        .ok_or("interactive: must be an object in Meta's interactive shape")?;
    let kind = match obj.get("type") {
        Some(Value::String(s)) => s.as_str(),
        _ => {
            return Err(format!(
                "interactive.type: must be one of {}",
                INTERACTIVE_TYPES.join(", ")
            ))
        }
    };
    if !INTERACTIVE_TYPES.contains(&kind) {
        return Err(format!(
            "interactive.type: \"{kind}\" is not an interactive type Meta documents; use one of {}",
            INTERACTIVE_TYPES.join(", ")
        ));
    }

    // Header: only a text header has a length limit here.
    if let Some(header) = obj.get("header") {
        let h = header
            .as_object()
            .ok_or("interactive.header: must be an object")?;
        let htype =
            match h.get("type") {
                Some(Value::String(s)) => s.as_str(),
                _ => return Err(
                    "interactive.header.type: must be a string (text, image, video or document)"
                        .into(),
                ),
            };
        if kind == "list" && htype != "text" {
            return Err(
                "interactive.header.type: a list message supports only a text header".into(),
            );
        }
        if htype == "text" {
            required_text(
                h.get("text"),
                "interactive.header.text",
                HEADER_TEXT_MAX_CHARS,
            )?;
        }
    }

    // Body: required for reply buttons and lists; limited wherever present.
    let body_max = if kind == "list" {
        LIST_BODY_MAX_CHARS
    } else {
        INTERACTIVE_BODY_MAX_CHARS
    };
    match obj.get("body") {
        Some(body) => {
            let b = body
                .as_object()
                .ok_or("interactive.body: must be an object with `text`")?;
            required_text(b.get("text"), "interactive.body.text", body_max)?;
        }
        None if kind == "button" || kind == "list" => {
            return Err(format!(
                "interactive.body: missing; a {kind} message needs `body.text`"
            ))
        }
        None => {}
    }

    if let Some(footer) = obj.get("footer") {
        let f = footer
            .as_object()
            .ok_or("interactive.footer: must be an object with `text`")?;
        required_text(
            f.get("text"),
            "interactive.footer.text",
            FOOTER_TEXT_MAX_CHARS,
        )?;
    }

    match kind {
        "button" => validate_reply_buttons(obj),
        "list" => validate_list(obj),
        _ => Ok(()),
    }
}

/// A present, non-empty string of at most `max` characters.
fn required_text<'a>(v: Option<&'a Value>, field: &str, max: usize) -> Result<&'a str, String> {
    match v {
        Some(Value::String(s)) if !s.trim().is_empty() => {
            check_max_chars(field, s, max)?;
            Ok(s)
        }
        Some(Value::String(_)) => Err(format!("{field}: must not be empty")),
        Some(_) => Err(format!("{field}: must be a string")),
        None => Err(format!("{field}: missing")),
    }
}

fn action_of(obj: &Map<String, Value>) -> Result<&Map<String, Value>, String> {
    obj.get("action")
        .ok_or_else(|| "interactive.action: missing".to_string())?
        .as_object()
        .ok_or_else(|| "interactive.action: must be an object".to_string())
}

fn validate_reply_buttons(obj: &Map<String, Value>) -> Result<(), String> {
    let action = action_of(obj)?;
    let buttons = action
        .get("buttons")
        .and_then(Value::as_array)
        .ok_or("interactive.action.buttons: must be an array of 1 to 3 reply buttons")?;
    if buttons.is_empty() || buttons.len() > REPLY_BUTTONS_MAX {
        return Err(format!(
            "interactive.action.buttons: must hold 1 to {REPLY_BUTTONS_MAX} buttons (got {})",
            buttons.len()
        ));
    }
    let mut ids = HashSet::new();
    let mut titles = HashSet::new();
    for (i, button) in buttons.iter().enumerate() {
        let path = format!("interactive.action.buttons[{i}]");
        let b = button
            .as_object()
            .ok_or_else(|| format!("{path}: must be an object"))?;
        if b.get("type").and_then(Value::as_str) != Some("reply") {
            return Err(format!("{path}.type: must be \"reply\""));
        }
        let reply = b
            .get("reply")
            .and_then(Value::as_object)
            .ok_or_else(|| format!("{path}.reply: must be an object with `id` and `title`"))?;
        let id = required_text(
            reply.get("id"),
            &format!("{path}.reply.id"),
            REPLY_BUTTON_ID_MAX_CHARS,
        )?;
        let title = required_text(
            reply.get("title"),
            &format!("{path}.reply.title"),
            REPLY_BUTTON_TITLE_MAX_CHARS,
        )?;
        if !ids.insert(id) {
            return Err(format!(
                "{path}.reply.id: must be unique within the message"
            ));
        }
        if !titles.insert(title) {
            return Err(format!(
                "{path}.reply.title: must be unique within the message"
            ));
        }
    }
    Ok(())
}

fn validate_list(obj: &Map<String, Value>) -> Result<(), String> {
    let action = action_of(obj)?;
    required_text(
        action.get("button"),
        "interactive.action.button",
        LIST_BUTTON_MAX_CHARS,
    )?;
    let sections = action
        .get("sections")
        .and_then(Value::as_array)
        .ok_or("interactive.action.sections: must be an array of 1 to 10 sections")?;
    if sections.is_empty() || sections.len() > LIST_SECTIONS_MAX {
        return Err(format!(
            "interactive.action.sections: must hold 1 to {LIST_SECTIONS_MAX} sections (got {})",
            sections.len()
        ));
    }
    let mut total_rows = 0usize;
    let mut row_ids = HashSet::new();
    for (s, section) in sections.iter().enumerate() {
        let path = format!("interactive.action.sections[{s}]");
        let sec = section
            .as_object()
            .ok_or_else(|| format!("{path}: must be an object"))?;
        match sec.get("title") {
            Some(title) => {
                required_text(
                    Some(title),
                    &format!("{path}.title"),
                    LIST_SECTION_TITLE_MAX_CHARS,
                )?;
            }
            None if sections.len() > 1 => {
                return Err(format!(
                    "{path}.title: missing; every section needs a title when there is more than one"
                ))
            }
            None => {}
        }
        let rows = sec
            .get("rows")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("{path}.rows: must be an array of rows"))?;
        if rows.is_empty() {
            return Err(format!("{path}.rows: must hold at least one row"));
        }
        total_rows += rows.len();
        if total_rows > LIST_ROWS_MAX {
            return Err(format!(
                "interactive.action.sections: at most {LIST_ROWS_MAX} rows in all sections together"
            ));
        }
        for (r, row) in rows.iter().enumerate() {
            let rpath = format!("{path}.rows[{r}]");
            let row = row
                .as_object()
                .ok_or_else(|| format!("{rpath}: must be an object"))?;
            let id = required_text(row.get("id"), &format!("{rpath}.id"), LIST_ROW_ID_MAX_CHARS)?;
            required_text(
                row.get("title"),
                &format!("{rpath}.title"),
                LIST_ROW_TITLE_MAX_CHARS,
            )?;
            match row.get("description") {
                None => {}
                Some(Value::String(d)) => check_max_chars(
                    &format!("{rpath}.description"),
                    d,
                    LIST_ROW_DESCRIPTION_MAX_CHARS,
                )?,
                Some(_) => return Err(format!("{rpath}.description: must be a string")),
            }
            if !row_ids.insert(id) {
                return Err(format!("{rpath}.id: must be unique within the message"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> SendRequest {
        serde_json::from_value(v).expect("deserialises")
    }

    fn ok(v: Value) -> ValidSend {
        validate(&req(v)).expect("valid")
    }

    /// The validation error; asserts it names `field`.
    fn err(v: Value, field: &str) -> String {
        let e = validate(&req(v)).expect_err("invalid");
        assert!(e.contains(field), "error {e:?} should name {field:?}");
        assert!(!e.contains('\n'), "one line: {e:?}");
        e
    }

    // --- One valid example per type; the expected bodies are the documented ones. ---

    #[test]
    fn text_matches_reference_body() {
        // whatsapp-cloud-api.md §2.1, text example.
        let v = ok(json!({"to": "+447700900123", "type": "text",
            "text": {"body": "Your order #A-1009 has shipped.", "preview_url": false}}));
        assert_eq!(v.recipient, Recipient::Phone("447700900123".into()));
        assert!(!v.is_template);
        assert_eq!(
            meta_body(&v, None),
            json!({ "messaging_product": "whatsapp", "recipient_type": "individual", "to": "+447700900123",
              "type": "text", "text": { "preview_url": false, "body": "Your order #A-1009 has shipped." } })
        );
    }

    #[test]
    fn template_matches_reference_body_and_language_becomes_code() {
        // whatsapp-cloud-api.md §2.1, template example.
        let v = ok(
            json!({"to": "447700900123", "type": "template", "template": {
            "name": "order_shipped", "language": "en_GB", "category": "utility",
            "components": [{ "type": "body", "parameters": [
                { "type": "text", "text": "Ana" }, { "type": "text", "text": "A-1009" } ] }]}}),
        );
        assert!(v.is_template);
        assert_eq!(v.category, Some(TemplateCategory::Utility));
        assert_eq!(
            meta_body(&v, None),
            json!({ "messaging_product": "whatsapp", "recipient_type": "individual", "to": "+447700900123",
              "type": "template",
              "template": { "name": "order_shipped", "language": { "code": "en_GB" },
                "components": [{ "type": "body", "parameters": [
                  { "type": "text", "text": "Ana" }, { "type": "text", "text": "A-1009" } ] }] } })
        );
    }

    #[test]
    fn template_without_components_or_category() {
        let v = ok(json!({"to": "15551234567", "type": "template",
            "template": {"name": "hello_world", "language": "en_US"}}));
        assert_eq!(v.category, None);
        assert_eq!(
            v.body,
            json!({"name": "hello_world", "language": {"code": "en_US"}})
        );
        for code in ["en", "pt_BR", "zh_Hant", "fil", "es_419"] {
            ok(json!({"to": "15551234567", "type": "template",
                "template": {"name": "hello_world", "language": code}}));
        }
    }

    #[test]
    fn image_matches_meta_body() {
        // Meta's image messages page, example request.
        let v = ok(json!({"to": "+16505551234", "type": "image",
            "image": {"id": "1479537139650973", "caption": "The best succulent ever?"}}));
        assert_eq!(
            meta_body(&v, None),
            json!({ "messaging_product": "whatsapp", "recipient_type": "individual", "to": "+16505551234",
              "type": "image", "image": { "id": "1479537139650973", "caption": "The best succulent ever?" } })
        );
    }

    #[test]
    fn document_matches_meta_body() {
        // Meta's document messages page (link, caption, filename).
        let v = ok(
            json!({"to": "+16505551234", "type": "document", "document": {
            "link": "https://www.luckyshrub.com/invoices/FmOzfD9cKf/lucky-shrub-invoice.pdf",
            "caption": "Lucky Shrub Invoice", "filename": "lucky-shrub-invoice.pdf"}}),
        );
        assert_eq!(
            meta_body(&v, None),
            json!({ "messaging_product": "whatsapp", "recipient_type": "individual", "to": "+16505551234",
              "type": "document", "document": {
                "link": "https://www.luckyshrub.com/invoices/FmOzfD9cKf/lucky-shrub-invoice.pdf",
                "caption": "Lucky Shrub Invoice", "filename": "lucky-shrub-invoice.pdf" } })
        );
    }

    #[test]
    fn audio_matches_meta_body() {
        let v =
            ok(json!({"to": "+16505551234", "type": "audio", "audio": {"id": "1013859600285441"}}));
        assert_eq!(
            meta_body(&v, None),
            json!({ "messaging_product": "whatsapp", "recipient_type": "individual", "to": "+16505551234",
              "type": "audio", "audio": { "id": "1013859600285441" } })
        );
    }

    #[test]
    fn video_matches_meta_body() {
        // Meta's video messages page, example request.
        let v = ok(json!({"to": "+16505551234", "type": "video",
            "video": {"id": "1166846181421424", "caption": "A succulent eclipse!"}}));
        assert_eq!(
            meta_body(&v, None),
            json!({ "messaging_product": "whatsapp", "recipient_type": "individual", "to": "+16505551234",
              "type": "video", "video": { "id": "1166846181421424", "caption": "A succulent eclipse!" } })
        );
    }

    #[test]
    fn sticker_matches_meta_body() {
        // Meta's sticker messages page, example request.
        let v = ok(
            json!({"to": "+16505551234", "type": "sticker", "sticker": {"id": "798882015472548"}}),
        );
        assert_eq!(
            meta_body(&v, None),
            json!({ "messaging_product": "whatsapp", "recipient_type": "individual", "to": "+16505551234",
              "type": "sticker", "sticker": { "id": "798882015472548" } })
        );
    }

    fn buttons_interactive() -> Value {
        // Meta's interactive reply buttons page, example request.
        json!({ "type": "button",
            "header": { "type": "image", "image": { "id": "2762702990552401" } },
            "body": { "text": "Hi Pablo! Your gardening workshop is scheduled for 9am tomorrow. Use the buttons if you need to reschedule. Thank you!" },
            "footer": { "text": "Lucky Shrub: Your gateway to succulents!™" },
            "action": { "buttons": [
                { "type": "reply", "reply": { "id": "change-button", "title": "Change" } },
                { "type": "reply", "reply": { "id": "cancel-button", "title": "Cancel" } } ] } })
    }

    fn list_interactive() -> Value {
        // Meta's interactive list messages page, example request.
        json!({ "type": "list",
            "header": { "type": "text", "text": "Choose Shipping Option" },
            "body": { "text": "Which shipping option do you prefer?" },
            "footer": { "text": "Lucky Shrub: Your gateway to succulents™" },
            "action": { "button": "Shipping Options", "sections": [
                { "title": "I want it ASAP!", "rows": [
                    { "id": "priority_express", "title": "Priority Mail Express", "description": "Next Day to 2 Days" },
                    { "id": "priority_mail", "title": "Priority Mail", "description": "1–3 Days" } ] },
                { "title": "I can wait a bit", "rows": [
                    { "id": "usps_ground_advantage", "title": "USPS Ground Advantage", "description": "2–5 Days" },
                    { "id": "media_mail", "title": "Media Mail", "description": "2–8 Days" } ] } ] } })
    }

    fn interactive_req(i: Value) -> Value {
        json!({"to": "+16505551234", "type": "interactive", "interactive": i})
    }

    #[test]
    fn interactive_buttons_match_meta_body() {
        let v = ok(interactive_req(buttons_interactive()));
        assert_eq!(
            meta_body(&v, None),
            json!({ "messaging_product": "whatsapp", "recipient_type": "individual", "to": "+16505551234",
              "type": "interactive", "interactive": buttons_interactive() })
        );
    }

    #[test]
    fn interactive_list_matches_meta_body() {
        let v = ok(interactive_req(list_interactive()));
        assert_eq!(
            meta_body(&v, None),
            json!({ "messaging_product": "whatsapp", "recipient_type": "individual", "to": "+16505551234",
              "type": "interactive", "interactive": list_interactive() })
        );
    }

    #[test]
    fn interactive_other_types_pass_through() {
        ok(interactive_req(
            json!({"type": "cta_url", "body": {"text": "See the dates"},
            "action": {"name": "cta_url", "parameters": {"display_text": "See dates", "url": "https://example.com"}}}),
        ));
        ok(interactive_req(
            json!({"type": "location_request_message", "body": {"text": "Where are you?"},
            "action": {"name": "send_location"}}),
        ));
    }

    #[test]
    fn reaction_matches_meta_body() {
        // Meta's reaction messages page, example request (the emoji written as itself).
        let v = ok(
            json!({"to": "+16505551234", "type": "reaction", "reaction": {
            "message_id": "wamid.HBgLMTY0NjcwNDM1OTUVAgASGBQzQUZCMTY0MDc2MUYwNzBDNTY5MAA=", "emoji": "😀"}}),
        );
        assert_eq!(
            meta_body(&v, None),
            json!({ "messaging_product": "whatsapp", "recipient_type": "individual", "to": "+16505551234",
              "type": "reaction", "reaction": {
                "message_id": "wamid.HBgLMTY0NjcwNDM1OTUVAgASGBQzQUZCMTY0MDc2MUYwNzBDNTY5MAA=", "emoji": "\u{1F600}" } })
        );
        // "" removes a reaction.
        ok(json!({"to": "+16505551234", "type": "reaction",
            "reaction": {"message_id": "wamid.X", "emoji": ""}}));
    }

    #[test]
    fn emoji_variants_accepted() {
        for e in ["👍", "👍🏽", "❤️", "🇧🇷", "👨‍👩‍👧‍👦", "1️⃣", "🏴󠁧󠁢󠁥󠁮󠁧󠁿", "🙋‍♀️", "©️"]
        {
            assert!(is_single_emoji(e), "{e} should be one emoji");
        }
        for e in [
            "a",
            "1",
            "ok",
            "😀😀",
            "é",
            "中",
            " 😀",
            "👍 ",
            "\u{200D}",
            "🇧🇷🇧",
            "😀\u{200D}",
        ] {
            assert!(!is_single_emoji(e), "{e:?} should not be one emoji");
        }
    }

    #[test]
    fn user_id_recipient_goes_in_recipient_field() {
        // round2-facts §1.4: `recipient` holds the BSUID; `to` is omitted.
        let v = ok(
            json!({"recipient": "US.13491208655302741918", "type": "text",
            "text": {"body": "hi"}}),
        );
        assert_eq!(
            v.recipient,
            Recipient::UserId("US.13491208655302741918".into())
        );
        assert_eq!(v.recipient.as_str(), "US.13491208655302741918");
        assert_eq!(
            meta_body(&v, Some("msg-1")),
            json!({ "messaging_product": "whatsapp", "recipient_type": "individual",
              "recipient": "US.13491208655302741918", "type": "text", "text": {"body": "hi"},
              "biz_opaque_callback_data": "msg-1" })
        );
        ok(
            json!({"recipient": "US.ENT.11815799212886844830", "type": "text", "text": {"body": "hi"}}),
        );
    }

    #[test]
    fn callback_and_phone_number_id() {
        let v = ok(
            json!({"to": "447700900123", "phone_number_id": "700800900100200",
            "type": "text", "text": {"body": "hi"}}),
        );
        assert_eq!(v.phone_number_id.as_deref(), Some("700800900100200"));
        assert_eq!(v.recipient.as_str(), "447700900123");
        let body = meta_body(&v, Some("evt-7f3a"));
        assert_eq!(body["biz_opaque_callback_data"], "evt-7f3a");
        assert!(meta_body(&v, None)
            .get("biz_opaque_callback_data")
            .is_none());
    }

    // --- One failing case per rule. ---

    #[test]
    fn recipient_rules() {
        err(json!({"type": "text", "text": {"body": "hi"}}), "to");
        err(
            json!({"to": "+447700900123", "recipient": "US.1", "type": "text", "text": {"body": "hi"}}),
            "recipient",
        );
        err(
            json!({"to": "+4477", "type": "text", "text": {"body": "hi"}}),
            "to",
        );
        err(
            json!({"to": "+1234567890123456", "type": "text", "text": {"body": "hi"}}),
            "to",
        );
        err(
            json!({"to": "+44 7700 900123", "type": "text", "text": {"body": "hi"}}),
            "to",
        );
        err(
            json!({"to": "07700900123", "type": "text", "text": {"body": "hi"}}),
            "to",
        );
        err(
            json!({"to": "++447700900123", "type": "text", "text": {"body": "hi"}}),
            "to",
        );
        err(
            json!({"recipient": "us.123", "type": "text", "text": {"body": "hi"}}),
            "recipient",
        );
        err(
            json!({"recipient": "US123", "type": "text", "text": {"body": "hi"}}),
            "recipient",
        );
        err(
            json!({"recipient": "US.12-3", "type": "text", "text": {"body": "hi"}}),
            "recipient",
        );
        err(
            json!({"recipient": "US.", "type": "text", "text": {"body": "hi"}}),
            "recipient",
        );
        let long = format!("US.{}", "1".repeat(129));
        err(
            json!({"recipient": long, "type": "text", "text": {"body": "hi"}}),
            "recipient",
        );
        ok(
            json!({"recipient": format!("US.{}", "1".repeat(128)), "type": "text", "text": {"body": "hi"}}),
        );
    }

    #[test]
    fn phone_number_id_rule() {
        err(
            json!({"to": "447700900123", "phone_number_id": "12a", "type": "text", "text": {"body": "hi"}}),
            "phone_number_id",
        );
        err(
            json!({"to": "447700900123", "phone_number_id": "", "type": "text", "text": {"body": "hi"}}),
            "phone_number_id",
        );
        err(
            json!({"to": "447700900123", "phone_number_id": "1".repeat(33), "type": "text", "text": {"body": "hi"}}),
            "phone_number_id",
        );
    }

    #[test]
    fn body_presence_rules() {
        err(json!({"to": "447700900123", "type": "text"}), "text");
        err(
            json!({"to": "447700900123", "type": "image", "text": {"body": "hi"}}),
            "image",
        );
        err(
            json!({"to": "447700900123", "type": "text", "text": {"body": "hi"},
            "image": {"link": "https://example.com/a.png"}}),
            "image",
        );
        err(
            json!({"to": "447700900123", "type": "text", "text": {"body": "hi"},
            "interactive": {"type": "button"}}),
            "interactive",
        );
    }

    #[test]
    fn text_rules() {
        err(
            json!({"to": "447700900123", "type": "text", "text": {"body": ""}}),
            "text.body",
        );
        let long = "é".repeat(4097);
        err(
            json!({"to": "447700900123", "type": "text", "text": {"body": long}}),
            "text.body",
        );
        // 4,096 characters of a 2-byte letter is fine: characters, not bytes, count.
        ok(json!({"to": "447700900123", "type": "text", "text": {"body": "é".repeat(4096)}}));
    }

    fn template(t: Value) -> Value {
        json!({"to": "447700900123", "type": "template", "template": t})
    }

    #[test]
    fn template_rules() {
        err(
            template(json!({"name": "", "language": "en"})),
            "template.name",
        );
        err(
            template(json!({"name": "Order_Shipped", "language": "en"})),
            "template.name",
        );
        err(
            template(json!({"name": "order-shipped", "language": "en"})),
            "template.name",
        );
        err(
            template(json!({"name": "a".repeat(513), "language": "en"})),
            "template.name",
        );
        err(
            template(json!({"name": "x", "language": ""})),
            "template.language",
        );
        err(
            template(json!({"name": "x", "language": "english"})),
            "template.language",
        );
        err(
            template(json!({"name": "x", "language": "en_us"})),
            "template.language",
        );
        let e = err(
            template(json!({"name": "x", "language": "en-US"})),
            "template.language",
        );
        assert!(e.contains("en_US"), "{e}");
        err(
            template(json!({"name": "x", "language": "en", "components": {"type": "body"}})),
            "template.components",
        );
        err(
            template(json!({"name": "x", "language": "en", "components": ["body"]})),
            "template.components[0]",
        );
        err(
            template(json!({"name": "x", "language": "en", "components": [{"parameters": []}]})),
            "template.components[0].type",
        );
    }

    #[test]
    fn authentication_template_to_user_id_refused() {
        let e = err(
            json!({"recipient": "US.13491208655302741918", "type": "template", "template": {
                "name": "otp_code", "language": "en_US", "category": "authentication"}}),
            "template.category",
        );
        assert!(e.contains("authentication"), "{e}");
        // The same template to a phone number is fine, and so is a utility one to a user id.
        ok(
            json!({"to": "447700900123", "type": "template", "template": {
            "name": "otp_code", "language": "en_US", "category": "authentication"}}),
        );
        ok(
            json!({"recipient": "US.13491208655302741918", "type": "template", "template": {
            "name": "order_update", "language": "en_US", "category": "utility"}}),
        );
    }

    fn media(kind: &str, m: Value) -> Value {
        json!({"to": "447700900123", "type": kind, kind: m})
    }

    #[test]
    fn media_rules() {
        err(media("image", json!({})), "image.link");
        err(
            media(
                "image",
                json!({"link": "https://example.com/a.png", "id": "1"}),
            ),
            "image",
        );
        err(
            media("image", json!({"link": "ftp://example.com/a.png"})),
            "image.link",
        );
        err(media("image", json!({"link": "/a.png"})), "image.link");
        err(media("image", json!({"link": "https://"})), "image.link");
        err(
            media("image", json!({"link": "https://exa mple.com/a.png"})),
            "image.link",
        );
        err(media("image", json!({"id": "12 3"})), "image.id");
        err(
            media("image", json!({"id": "1", "caption": "c".repeat(1025)})),
            "image.caption",
        );
        ok(media(
            "image",
            json!({"link": "HTTP://example.com:8080/a.png?x=1", "caption": "c".repeat(1024)}),
        ));
        err(
            media("audio", json!({"id": "1", "caption": "c"})),
            "audio.caption",
        );
        err(
            media("sticker", json!({"id": "1", "caption": "c"})),
            "sticker.caption",
        );
        err(
            media("image", json!({"id": "1", "filename": "a.png"})),
            "image.filename",
        );
        err(
            media("video", json!({"id": "1", "filename": "a.mp4"})),
            "video.filename",
        );
        err(
            media("document", json!({"id": "1", "filename": " "})),
            "document.filename",
        );
        ok(media(
            "document",
            json!({"id": "1", "filename": "a.pdf", "caption": "c"}),
        ));
    }

    #[test]
    fn interactive_generic_rules() {
        err(interactive_req(json!("button")), "interactive");
        err(
            interactive_req(json!({"body": {"text": "x"}})),
            "interactive.type",
        );
        err(
            interactive_req(json!({"type": "buttons", "body": {"text": "x"}})),
            "interactive.type",
        );
        let mut b = buttons_interactive();
        b.as_object_mut().unwrap().remove("body");
        err(interactive_req(b), "interactive.body");
        let mut b = buttons_interactive();
        b["body"]["text"] = json!("x".repeat(1025));
        err(interactive_req(b), "interactive.body.text");
        let mut b = buttons_interactive();
        b["footer"]["text"] = json!("x".repeat(61));
        err(interactive_req(b), "interactive.footer.text");
        let mut b = buttons_interactive();
        b["header"] = json!({"type": "text", "text": "x".repeat(61)});
        err(interactive_req(b), "interactive.header.text");
        let mut l = list_interactive();
        l["header"] = json!({"type": "image", "image": {"id": "1"}});
        err(interactive_req(l), "interactive.header.type");
        // A list body may be up to 4,096 characters.
        let mut l = list_interactive();
        l["body"]["text"] = json!("x".repeat(4096));
        ok(interactive_req(l.clone()));
        l["body"]["text"] = json!("x".repeat(4097));
        err(interactive_req(l), "interactive.body.text");
    }

    #[test]
    fn interactive_button_rules() {
        let reply =
            |id: &str, title: &str| json!({"type": "reply", "reply": {"id": id, "title": title}});
        let with = |buttons: Value| {
            let mut b = buttons_interactive();
            b["action"]["buttons"] = buttons;
            interactive_req(b)
        };
        err(with(json!([])), "interactive.action.buttons");
        err(
            with(json!([
                reply("a", "A"),
                reply("b", "B"),
                reply("c", "C"),
                reply("d", "D")
            ])),
            "interactive.action.buttons",
        );
        err(
            with(json!([{"type": "url", "reply": {"id": "a", "title": "A"}}])),
            "interactive.action.buttons[0].type",
        );
        err(
            with(json!([{"type": "reply"}])),
            "interactive.action.buttons[0].reply",
        );
        err(
            with(json!([reply("", "A")])),
            "interactive.action.buttons[0].reply.id",
        );
        err(
            with(json!([reply(&"i".repeat(257), "A")])),
            "interactive.action.buttons[0].reply.id",
        );
        err(
            with(json!([reply("a", &"t".repeat(21))])),
            "interactive.action.buttons[0].reply.title",
        );
        err(
            with(json!([reply("a", "A"), reply("a", "B")])),
            "interactive.action.buttons[1].reply.id",
        );
        err(
            with(json!([reply("a", "A"), reply("b", "A")])),
            "interactive.action.buttons[1].reply.title",
        );
        ok(with(json!([reply(&"i".repeat(256), &"t".repeat(20))])));
        let mut b = buttons_interactive();
        b.as_object_mut().unwrap().remove("action");
        err(interactive_req(b), "interactive.action");
    }

    #[test]
    fn interactive_list_rules() {
        let row = |id: &str| json!({"id": id, "title": "Row"});
        let with_sections = |sections: Value| {
            let mut l = list_interactive();
            l["action"]["sections"] = sections;
            interactive_req(l)
        };
        let mut l = list_interactive();
        l["action"]["button"] = json!("b".repeat(21));
        err(interactive_req(l), "interactive.action.button");
        err(with_sections(json!([])), "interactive.action.sections");
        let eleven: Vec<Value> = (0..11)
            .map(|i| json!({"title": "S", "rows": [row(&format!("r{i}"))]}))
            .collect();
        err(with_sections(json!(eleven)), "interactive.action.sections");
        let rows: Vec<Value> = (0..11).map(|i| row(&format!("r{i}"))).collect();
        err(
            with_sections(json!([{"title": "S", "rows": rows}])),
            "interactive.action.sections",
        );
        let rows: Vec<Value> = (0..10).map(|i| row(&format!("r{i}"))).collect();
        ok(with_sections(json!([{"title": "S", "rows": rows}])));
        err(
            with_sections(json!([{"title": "S", "rows": []}])),
            "interactive.action.sections[0].rows",
        );
        err(
            with_sections(json!([{"title": "S", "rows": [row("a")]}, {"rows": [row("b")]}])),
            "interactive.action.sections[1].title",
        );
        ok(with_sections(json!([{"rows": [row("a")]}])));
        err(
            with_sections(json!([{"title": "t".repeat(25), "rows": [row("a")]}])),
            "interactive.action.sections[0].title",
        );
        err(
            with_sections(json!([{"title": "S", "rows": [{"id": "i".repeat(201), "title": "T"}]}])),
            "interactive.action.sections[0].rows[0].id",
        );
        err(
            with_sections(json!([{"title": "S", "rows": [{"id": "a", "title": "t".repeat(25)}]}])),
            "interactive.action.sections[0].rows[0].title",
        );
        err(
            with_sections(
                json!([{"title": "S", "rows": [{"id": "a", "title": "T", "description": "d".repeat(73)}]}]),
            ),
            "interactive.action.sections[0].rows[0].description",
        );
        err(
            with_sections(
                json!([{"title": "S", "rows": [row("a")]}, {"title": "U", "rows": [row("a")]}]),
            ),
            "interactive.action.sections[1].rows[0].id",
        );
    }

    #[test]
    fn reaction_rules() {
        let r = |m: &str, e: &str| json!({"to": "447700900123", "type": "reaction", "reaction": {"message_id": m, "emoji": e}});
        err(r("", "👍"), "reaction.message_id");
        err(r("ABC123", "👍"), "reaction.message_id");
        err(r("wamid.X", "ok"), "reaction.emoji");
        err(r("wamid.X", "👍👍"), "reaction.emoji");
    }

    // --- Deserialisation and hashing. ---

    #[test]
    fn unknown_fields_are_refused() {
        let top =
            serde_json::from_value::<SendRequest>(json!({"to": "447700900123", "type": "text",
            "text": {"body": "hi"}, "priority": "high"}));
        assert!(top.unwrap_err().to_string().contains("priority"));
        let nested =
            serde_json::from_value::<SendRequest>(json!({"to": "447700900123", "type": "text",
            "text": {"body": "hi", "bold": true}}));
        assert!(nested.unwrap_err().to_string().contains("bold"));
        let kind = serde_json::from_value::<SendRequest>(
            json!({"to": "447700900123", "type": "location"}),
        );
        assert!(kind.is_err());
    }

    #[test]
    fn request_hash_ignores_key_order_and_whitespace() {
        let a: Value = serde_json::from_str(
            r#"{"to":"447700900123","type":"template","template":{"name":"x","language":"en","components":[{"type":"body","parameters":[{"type":"text","text":"Ana"}]}]}}"#,
        )
        .unwrap();
        let b: Value = serde_json::from_str(
            r#"{ "template": { "components": [ { "parameters": [ { "text": "Ana", "type": "text" } ], "type": "body" } ],
                 "language": "en", "name": "x" }, "type": "template", "to": "447700900123" }"#,
        )
        .unwrap();
        assert_eq!(request_hash(&a), request_hash(&b));
        assert_eq!(request_hash(&a).len(), 64);
        assert!(request_hash(&a)
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        // Another body, or the same items in another array order, hashes differently.
        let mut c = a.clone();
        c["to"] = json!("447700900124");
        assert_ne!(request_hash(&a), request_hash(&c));
        assert_ne!(request_hash(&json!([1, 2])), request_hash(&json!([2, 1])));
    }

    #[test]
    fn canonical_form_is_sorted_and_compact() {
        let mut s = String::new();
        write_canonical(
            &json!({"b": [1, {"d": "é\"", "c": null}], "a": true}),
            &mut s,
        );
        assert_eq!(s, r#"{"a":true,"b":[1,{"c":null,"d":"é\""}]}"#);
    }

    #[test]
    fn schema_documents_the_wire_names() {
        let schema = serde_json::to_value(schemars::schema_for!(SendRequest)).unwrap();
        let props = &schema["properties"];
        for field in [
            "to",
            "recipient",
            "phone_number_id",
            "type",
            "text",
            "template",
            "image",
            "document",
            "audio",
            "video",
            "sticker",
            "interactive",
            "reaction",
        ] {
            assert!(props.get(field).is_some(), "schema lacks {field}: {schema}");
        }
        assert!(props.get("kind").is_none());
        assert_eq!(schema["required"], json!(["type"]));
        assert!(props["to"]["description"]
            .as_str()
            .unwrap()
            .contains("E.164"));
    }

    #[test]
    fn kind_and_category_names() {
        for k in MessageKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), json!(k.as_str()));
        }
        for c in [
            TemplateCategory::Marketing,
            TemplateCategory::Utility,
            TemplateCategory::Authentication,
        ] {
            assert_eq!(serde_json::to_value(c).unwrap(), json!(c.as_str()));
        }
        assert!(MessageKind::Sticker.is_media() && !MessageKind::Reaction.is_media());
    }
}
