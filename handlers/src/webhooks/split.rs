//! Splitting one Meta webhook body into domain items: one per message, status,
//! preference, user-id change, template change, and one per change of every other
//! field (kept whole).
//!
//! Routing follows what the value names: a change whose value names a phone number
//! (`metadata.phone_number_id`, `entity_id` of a phone-number alert) goes to the
//! workspace holding that number and nowhere else; one that names only a display
//! number (quality, name, security, username updates) goes to the number with that
//! display number within the WABA; only a change that names no number goes to the
//! WABA's owner.
//!
//! One odd item never sinks its neighbours: an item that cannot be understood is a
//! [`ItemFailure`] with its path in the body, and the body's other items go on. Only a
//! body that is not JSON at all fails as a whole ([`SplitError`]). Unknown fields and
//! unknown message types are kept, never fatal.
//!
//! Natural keys include the phone number id (a wamid is unique per business number
//! only) and are stable across Meta's redeliveries, so a body stored twice yields each
//! domain event once.

use serde_json::Value;
use sha2::{Digest, Sha256};
use wabridge_events::types::{
    AccountUpdated, ButtonReply, ContactMarketingPreference, ContactRef, ContactUserIdChanged,
    InteractiveReply, Media, MessageReceived, MessageStatusUpdated, MetaError, MetaSource,
    NumberUpdated, Reaction, SystemChange, TemplateQualityUpdated, TemplateStatusUpdated,
};
use wabridge_events::{DomainEvent, Timestamp};

use super::node::{non_empty_array, text, Node, Problem};

/// The only `object` a WhatsApp Business Account webhook carries.
const WABA_OBJECT: &str = "whatsapp_business_account";

/// Where an item must be routed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// To the workspace holding this phone number id.
    PhoneNumber(String),
    /// To the workspace holding the number of this WABA whose display number has
    /// these digits (fields that carry only `display_phone_number`).
    DisplayNumber {
        /// The WABA (`entry[].id`).
        waba_id: String,
        /// The display number, digits only.
        digits: String,
    },
    /// To the WABA's owner (fields that name no number).
    Waba(String),
}

/// One item of a webhook body, ready to become a domain event.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookItem {
    /// Where the item must be routed.
    pub route: Route,
    /// The natural key: a redelivered body yields the same keys, so it is processed once.
    pub dedup_key: String,
    /// Meta's time for the item (`entry[].time` for WABA-level items).
    pub occurred_at: Timestamp,
    /// The domain event the item becomes.
    pub event: DomainEvent,
    /// Its path in the body (`entry[0].changes[0].value.messages[1]`).
    pub path: String,
}

/// An item that could not be understood: its path and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemFailure {
    /// Its path in the body.
    pub path: String,
    /// What is wrong (names the offending member).
    pub reason: String,
}

/// What a body split into.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Split {
    /// The items, in body order.
    pub items: Vec<WebhookItem>,
    /// The items that could not be understood.
    pub failures: Vec<ItemFailure>,
}

impl Split {
    fn fail(&mut self, path: &str, problem: Problem) {
        self.failures.push(ItemFailure {
            path: if path.is_empty() {
                "$".into()
            } else {
                path.to_owned()
            },
            reason: problem.0,
        });
    }

    fn push(&mut self, path: &str, item: Result<WebhookItem, Problem>) {
        match item {
            Ok(item) => self.items.push(item),
            Err(p) => self.fail(path, p),
        }
    }
}

/// Why a webhook body could not be split at all.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// The body does not parse as JSON.
    #[error("body is not JSON: {0}")]
    NotJson(serde_json::Error),
}

/// Splits one webhook body, in body order. `raw_seq` is the sequence of the
/// `webhook.received` event holding the body; it is copied into every item's source.
pub fn split_webhook(body: &[u8], raw_seq: u64) -> Result<Split, SplitError> {
    let root: Value = serde_json::from_slice(body).map_err(SplitError::NotJson)?;
    let mut out = Split::default();
    let root = match Node::new(&root, String::new()) {
        Ok(root) => root,
        Err(p) => {
            out.fail("", p);
            return Ok(out);
        }
    };
    match root.get("object").and_then(Value::as_str) {
        Some(WABA_OBJECT) => {}
        Some(other) => {
            out.fail(
                "object",
                Problem(format!("`object` is {other:?}, not {WABA_OBJECT:?}")),
            );
            return Ok(out);
        }
        None => {
            out.fail("object", root.missing("object", "a string"));
            return Ok(out);
        }
    }
    if root.get("entry").is_none() {
        out.fail("entry", root.missing("entry", "an array"));
        return Ok(out);
    }
    match root.list("entry") {
        Err(p) => out.fail("entry", p),
        Ok(entries) => {
            for (i, entry) in entries.into_iter().enumerate() {
                match entry {
                    Ok(entry) => split_entry(&entry, raw_seq, &mut out),
                    Err(p) => out.fail(&format!("entry[{i}]"), p),
                }
            }
        }
    }
    Ok(out)
}

/// What every item of one `entry[]` shares.
struct EntryCtx {
    /// `entry[].id` (the WABA; the portfolio for `partner_solutions`).
    waba_id: String,
    /// `entry[].time`, when present.
    time: Option<Timestamp>,
    /// The raw stream sequence of the body.
    raw_seq: u64,
}

impl EntryCtx {
    /// A source for a change of this entry.
    fn source(&self, field: &str, metadata: Option<&Node>) -> MetaSource {
        MetaSource {
            waba_id: self.waba_id.clone(),
            phone_number_id: metadata.and_then(|m| m.opt_text("phone_number_id")),
            display_phone_number: metadata.and_then(|m| m.opt_text("display_phone_number")),
            field: field.to_owned(),
            raw_seq: self.raw_seq,
        }
    }

    /// `entry[].time` as it appears in dedup keys (`-` when Meta sent none).
    fn time_key(&self) -> String {
        self.time
            .map_or_else(|| "-".to_owned(), |t| unix_seconds(&t).to_string())
    }

    /// When a change happened: `entry[].time`, or now as a last resort.
    fn occurred_at(&self) -> Timestamp {
        self.time.unwrap_or_else(Timestamp::now)
    }
}

/// Splits every change of one `entry[]`.
fn split_entry(entry: &Node, raw_seq: u64, out: &mut Split) {
    let ctx = match (entry.req_text("id"), entry.opt_time("time")) {
        (Ok(waba_id), Ok(time)) => EntryCtx {
            waba_id,
            time,
            raw_seq,
        },
        (Err(p), _) | (_, Err(p)) => return out.fail(&entry.path, p),
    };
    let changes = match entry.list("changes") {
        Ok(c) if entry.get("changes").is_some() => c,
        Ok(_) => return out.fail(&entry.path, entry.missing("changes", "an array")),
        Err(p) => return out.fail(&entry.path, p),
    };
    for (i, change) in changes.into_iter().enumerate() {
        let path = format!("{}.changes[{i}]", entry.path);
        match change {
            Ok(change) => split_change(&ctx, &change, out),
            Err(p) => out.fail(&path, p),
        }
    }
}

/// Splits one `changes[]` element according to its `field`.
fn split_change(ctx: &EntryCtx, change: &Node, out: &mut Split) {
    let field = match change.req_text("field") {
        Ok(f) => f,
        Err(p) => return out.fail(&change.path, p),
    };
    let Some(raw) = change.get("value") else {
        return out.fail(&change.path, change.missing("value", "present"));
    };
    let value = match Node::new(raw, change.path_of("value")) {
        Ok(v) => v,
        // A value that is not an object: kept whole at the WABA.
        Err(_) => {
            return out.push(
                &change.path,
                Ok(account_item(ctx, &field, raw, &change.path)),
            )
        }
    };
    match field.as_str() {
        "messages" => split_messaging(ctx, &field, &value, out),
        "user_preferences" => split_preferences(ctx, &field, &value, out),
        "user_id_update" => split_user_id_updates(ctx, &field, &value, out),
        "message_template_status_update" | "message_template_quality_update" => {
            out.push(&value.path, Ok(template_item(ctx, &field, &value)))
        }
        _ => out.push(&value.path, Ok(other_item(ctx, &field, &value))),
    }
}

// ----- number-level: messages, statuses, preferences, user-id changes -----

/// `value.metadata` and the route of a number-level value: by its phone number id,
/// or by the WABA when it names none.
fn number_of<'a>(ctx: &EntryCtx, value: &Node<'a>) -> (Option<Node<'a>>, Route) {
    let metadata = value.sub("metadata");
    let route = match metadata
        .as_ref()
        .and_then(|m| m.opt_text("phone_number_id"))
    {
        Some(id) => Route::PhoneNumber(id),
        None => Route::Waba(ctx.waba_id.clone()),
    };
    (metadata, route)
}

/// The number part of natural keys (`-` when the value names no number).
fn number_key(source: &MetaSource) -> &str {
    source.phone_number_id.as_deref().unwrap_or("-")
}

/// Every message and status of a `messages` value; value-level errors, or a value
/// holding none of them, are kept whole as a [`NumberUpdated`].
fn split_messaging(ctx: &EntryCtx, field: &str, value: &Node, out: &mut Split) {
    let (metadata, route) = number_of(ctx, value);
    let source = ctx.source(field, metadata.as_ref());
    let mut any = false;
    for key in ["messages", "statuses"] {
        let elements = match value.list(key) {
            Ok(e) => e,
            Err(p) => {
                out.fail(&value.path_of(key), p);
                continue;
            }
        };
        for (i, element) in elements.into_iter().enumerate() {
            any = true;
            let path = format!("{}[{i}]", value.path_of(key));
            let element = match element {
                Ok(e) => e,
                Err(p) => {
                    out.fail(&path, p);
                    continue;
                }
            };
            let made = if key == "messages" {
                message_items(&source, &route, value, &element)
            } else {
                status_item(&source, &route, value, &element).map(|i| vec![i])
            };
            match made {
                Ok(items) => out.items.extend(items),
                Err(p) => out.fail(&path, p),
            }
        }
    }
    if !any || non_empty_array(value.get("errors")) {
        out.push(&value.path, Ok(number_item(ctx, source, route, value)));
    }
}

/// The sender of a message: its own fields, completed from the `contacts[]` element
/// that names the same person (or the only one).
fn sender(value: &Node, message: &Node) -> ContactRef {
    let from = message.opt_text("from");
    let from_user = message.opt_text("from_user_id");
    let contacts: Vec<&Value> = value
        .get("contacts")
        .and_then(Value::as_array)
        .map(|c| c.iter().collect())
        .unwrap_or_default();
    let same = |c: &&&Value| {
        let wa = c.get("wa_id").and_then(text);
        let user = c.get("user_id").and_then(text);
        (from.is_some() && wa == from) || (from_user.is_some() && user == from_user)
    };
    // The only contact stands for the sender unless both name a phone and the phones
    // differ (a business-scoped id is never attached to another person's number).
    let lone = (contacts.len() == 1)
        .then(|| contacts[0])
        .filter(|c| from.is_none() || c.get("wa_id").and_then(text).is_none());
    let contact = contacts.iter().find(same).copied().or(lone);
    contact_ref(
        contact,
        from,
        from_user,
        message.opt_text("from_parent_user_id"),
    )
}

/// A [`ContactRef`] from explicit ids and a `contacts[]`-style element.
fn contact_ref(
    contact: Option<&Value>,
    wa_id: Option<String>,
    user_id: Option<String>,
    parent_user_id: Option<String>,
) -> ContactRef {
    let field = |key: &str| contact.and_then(|c| c.get(key)).and_then(text);
    let profile = |key: &str| {
        contact
            .and_then(|c| c.get("profile"))
            .and_then(|p| p.get(key))
            .and_then(text)
    };
    ContactRef {
        wa_id: wa_id.or_else(|| field("wa_id")),
        user_id: user_id.or_else(|| field("user_id")),
        parent_user_id: parent_user_id.or_else(|| field("parent_user_id")),
        username: profile("username"),
        profile_name: profile("name"),
    }
    .non_empty()
}

trait NonEmpty {
    fn non_empty(self) -> Self;
}

impl NonEmpty for ContactRef {
    /// Empty strings are absent (Meta omits fields since 2026, older bodies sent "").
    fn non_empty(self) -> Self {
        let keep = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
        ContactRef {
            wa_id: keep(self.wa_id),
            user_id: keep(self.user_id),
            parent_user_id: keep(self.parent_user_id),
            username: keep(self.username),
            profile_name: keep(self.profile_name),
        }
    }
}

/// One `messages[]` element → [`MessageReceived`] (and, for a user-id change
/// system message, a [`ContactUserIdChanged`] too).
fn message_items(
    source: &MetaSource,
    route: &Route,
    value: &Node,
    message: &Node,
) -> Result<Vec<WebhookItem>, Problem> {
    let wamid = message.req_text("id")?;
    let timestamp = message.req_time("timestamp")?;
    let message_type = message.opt_text("type").unwrap_or_else(|| "unknown".into());
    let contact = sender(value, message);
    if contact.wa_id.is_none() && contact.user_id.is_none() {
        return Err(Problem(format!(
            "`{}` names no sender (no `from`, `from_user_id` or contact)",
            message.path
        )));
    }
    let system = system_change(message);
    let event = MessageReceived {
        source: source.clone(),
        text: message_text(message, &message_type),
        button: button_reply(message),
        interactive: interactive_reply(message),
        reaction: reaction(message),
        media: media(message, &message_type),
        referral: message.get("referral").cloned(),
        context_wamid: message.sub("context").and_then(|c| c.opt_text("id")),
        errors: meta_errors(message)?,
        raw: message.to_raw(),
        system: system.clone(),
        contact: contact.clone(),
        wamid,
        message_type,
        timestamp,
    };
    // With its time: two items with one wamid in one body are both kept (some
    // documentation bodies reuse placeholder ids), and a redelivery has the same time.
    let key = format!(
        "msg:{}:{}:{}",
        number_key(source),
        event.wamid,
        unix_seconds(&timestamp)
    );
    let mut items = vec![WebhookItem {
        route: route.clone(),
        dedup_key: key.clone(),
        occurred_at: timestamp,
        path: message.path.clone(),
        event: DomainEvent::MessageReceived(event),
    }];
    if let Some(change) = system.filter(|s| s.kind == "user_changed_user_id") {
        if let Some(current) = change.user_id.clone() {
            items.push(WebhookItem {
                route: route.clone(),
                dedup_key: format!("{key}:user_id"),
                occurred_at: timestamp,
                path: message.path.clone(),
                event: DomainEvent::ContactUserIdChanged(ContactUserIdChanged {
                    source: source.clone(),
                    previous_user_id: contact.user_id.clone(),
                    current_user_id: current,
                    previous_parent_user_id: contact.parent_user_id.clone(),
                    current_parent_user_id: None,
                    wa_id: contact.wa_id.clone().or(change.wa_id.clone()),
                    detail: change.body.clone(),
                    timestamp,
                }),
            });
        }
    }
    Ok(items)
}

/// `text.body` for text messages, the caption of a media message.
fn message_text(message: &Node, message_type: &str) -> Option<String> {
    match message_type {
        "text" => message.sub("text")?.opt_text("body"),
        _ => message.sub(message_type)?.opt_text("caption"),
    }
}

/// `button.{payload,text}`, for template quick-reply taps.
fn button_reply(message: &Node) -> Option<ButtonReply> {
    let button = message.sub("button")?;
    Some(ButtonReply {
        payload: button.opt_text("payload"),
        text: button.opt_text("text"),
    })
}

/// `interactive.type` with the reply object's id and title, and a Flow's
/// `response_json` parsed.
fn interactive_reply(message: &Node) -> Option<InteractiveReply> {
    let interactive = message.sub("interactive")?;
    let kind = interactive.opt_text("type")?;
    let reply = interactive.sub(&kind);
    let response = reply
        .as_ref()
        .and_then(|r| r.get("response_json"))
        .map(|v| match v {
            Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| v.clone()),
            other => other.clone(),
        })
        .or_else(|| {
            // A call-permission reply: keep its fields.
            (kind == "call_permission_reply")
                .then(|| reply.as_ref().map(Node::to_value))
                .flatten()
        });
    Some(InteractiveReply {
        id: reply.as_ref().and_then(|r| r.opt_text("id")),
        title: reply
            .as_ref()
            .and_then(|r| r.opt_text("title").or_else(|| r.opt_text("name"))),
        response,
        kind,
    })
}

/// A reaction: the message reacted to and the emoji (absent or empty: removed).
fn reaction(message: &Node) -> Option<Reaction> {
    let r = message.sub("reaction")?;
    Some(Reaction {
        message_id: r.opt_text("message_id"),
        emoji: r.opt_text("emoji"),
    })
}

/// The media object of an image, document, audio, video or sticker message.
fn media(message: &Node, message_type: &str) -> Option<Media> {
    if !matches!(
        message_type,
        "image" | "document" | "audio" | "video" | "sticker"
    ) {
        return None;
    }
    let m = message.sub(message_type)?;
    Some(Media {
        kind: message_type.to_owned(),
        id: m.opt_text("id"),
        mime_type: m.opt_text("mime_type"),
        sha256: m.opt_text("sha256"),
        filename: m.opt_text("filename"),
        voice: m.get("voice").and_then(Value::as_bool),
    })
}

/// What a `system` message says changed.
fn system_change(message: &Node) -> Option<SystemChange> {
    let s = message.sub("system")?;
    Some(SystemChange {
        kind: s.opt_text("type").unwrap_or_else(|| "unknown".into()),
        body: s.opt_text("body"),
        wa_id: s.opt_text("wa_id").or_else(|| s.opt_text("new_wa_id")),
        user_id: s.opt_text("user_id"),
    })
}

/// The `errors[]` of a message or status (an error without a code is kept with 0).
fn meta_errors(node: &Node) -> Result<Vec<MetaError>, Problem> {
    let mut errors = vec![];
    for error in node.list("errors")? {
        let error = error?;
        errors.push(MetaError {
            code: error.req_int("code").unwrap_or(0),
            title: error.opt_text("title"),
            message: error.opt_text("message"),
            details: error.sub("error_data").and_then(|d| d.opt_text("details")),
        });
    }
    Ok(errors)
}

/// One `statuses[]` element → [`MessageStatusUpdated`].
fn status_item(
    source: &MetaSource,
    route: &Route,
    _value: &Node,
    status: &Node,
) -> Result<WebhookItem, Problem> {
    let timestamp = status.req_time("timestamp")?;
    let pricing = status.get("pricing").cloned();
    let event = MessageStatusUpdated {
        source: source.clone(),
        wamid: status.req_text("id")?,
        status: status.req_text("status")?,
        recipient_id: status.opt_text("recipient_id"),
        recipient_user_id: status.opt_text("recipient_user_id"),
        recipient_parent_user_id: status
            .opt_text("recipient_parent_user_id")
            .or_else(|| status.opt_text("parent_recipient_user_id")),
        timestamp,
        biz_opaque_callback_data: status.opt_text("biz_opaque_callback_data"),
        pricing_category: status.sub("pricing").and_then(|p| p.opt_text("category")),
        pricing,
        conversation: status.get("conversation").cloned(),
        errors: meta_errors(status)?,
    };
    Ok(WebhookItem {
        route: route.clone(),
        dedup_key: format!(
            "status:{}:{}:{}",
            number_key(source),
            event.wamid,
            event.status
        ),
        occurred_at: timestamp,
        path: status.path.clone(),
        event: DomainEvent::MessageStatusUpdated(event),
    })
}

/// Every `user_preferences[]` element → [`ContactMarketingPreference`].
fn split_preferences(ctx: &EntryCtx, field: &str, value: &Node, out: &mut Split) {
    let (metadata, route) = number_of(ctx, value);
    let source = ctx.source(field, metadata.as_ref());
    let elements = match value.list("user_preferences") {
        Ok(e) if !e.is_empty() => e,
        Ok(_) => return out.push(&value.path, Ok(number_item(ctx, source, route, value))),
        Err(p) => return out.fail(&value.path, p),
    };
    for (i, element) in elements.into_iter().enumerate() {
        let path = format!("{}[{i}]", value.path_of("user_preferences"));
        let item = element.and_then(|p| preference_item(&source, &route, value, &p));
        out.push(&path, item);
    }
}

fn preference_item(
    source: &MetaSource,
    route: &Route,
    value: &Node,
    preference: &Node,
) -> Result<WebhookItem, Problem> {
    let timestamp = preference.req_time("timestamp")?;
    let wa_id = preference.opt_text("wa_id");
    let user_id = preference.opt_text("user_id");
    let contacts = value.get("contacts").and_then(Value::as_array);
    let contact = contacts.and_then(|cs| {
        cs.iter().find(|c| {
            (wa_id.is_some() && c.get("wa_id").and_then(text) == wa_id)
                || (user_id.is_some() && c.get("user_id").and_then(text) == user_id)
        })
    });
    let contact = contact_ref(
        contact,
        wa_id,
        user_id,
        preference.opt_text("parent_user_id"),
    );
    if contact.wa_id.is_none() && contact.user_id.is_none() {
        return Err(preference.missing("wa_id", "a string (nor is `user_id`)"));
    }
    let event = ContactMarketingPreference {
        source: source.clone(),
        category: preference.req_text("category")?,
        value: preference.req_text("value")?,
        detail: preference.opt_text("detail"),
        contact,
        timestamp,
    };
    let dedup_key = format!(
        "pref:{}:{}:{}:{}:{}",
        number_key(source),
        event.contact.key(),
        event.category,
        event.value,
        unix_seconds(&timestamp)
    );
    Ok(WebhookItem {
        route: route.clone(),
        dedup_key,
        occurred_at: timestamp,
        path: preference.path.clone(),
        event: DomainEvent::ContactMarketingPreference(event),
    })
}

/// Every element of a `user_id_update` value → [`ContactUserIdChanged`].
fn split_user_id_updates(ctx: &EntryCtx, field: &str, value: &Node, out: &mut Split) {
    let (metadata, route) = number_of(ctx, value);
    let source = ctx.source(field, metadata.as_ref());
    let key = ["user_id_update", "user_id_updates"]
        .into_iter()
        .find(|k| value.get(k).is_some());
    let elements = match key.map(|k| (k, value.list(k))) {
        Some((_, Ok(e))) if !e.is_empty() => e,
        Some((k, Err(p))) => return out.fail(&value.path_of(k), p),
        _ => return out.push(&value.path, Ok(number_item(ctx, source, route, value))),
    };
    for element in elements {
        let item = element.and_then(|u| {
            let ids = |key: &str| u.sub(key);
            let user = ids("user_id").ok_or_else(|| u.missing("user_id", "an object"))?;
            let parent = ids("parent_user_id");
            let timestamp = u
                .opt_time("timestamp")?
                .unwrap_or_else(|| ctx.occurred_at());
            let event = ContactUserIdChanged {
                source: source.clone(),
                previous_user_id: user.opt_text("previous"),
                current_user_id: user.req_text("current")?,
                previous_parent_user_id: parent.as_ref().and_then(|p| p.opt_text("previous")),
                current_parent_user_id: parent.as_ref().and_then(|p| p.opt_text("current")),
                wa_id: u.opt_text("wa_id"),
                detail: u.opt_text("detail"),
                timestamp,
            };
            Ok(WebhookItem {
                route: route.clone(),
                dedup_key: format!(
                    "uid:{}:{}:{}:{}",
                    number_key(&source),
                    event.previous_user_id.as_deref().unwrap_or("-"),
                    event.current_user_id,
                    unix_seconds(&timestamp)
                ),
                occurred_at: timestamp,
                path: u.path.clone(),
                event: DomainEvent::ContactUserIdChanged(event),
            })
        });
        let path = value.path.clone();
        out.push(&path, item);
    }
}

// ----- the other fields -----

/// The route of a change that is not about messages: the number its value names,
/// else the WABA.
fn route_of(ctx: &EntryCtx, value: &Node) -> Route {
    if let Some(id) = value
        .sub("metadata")
        .and_then(|m| m.opt_text("phone_number_id"))
    {
        return Route::PhoneNumber(id);
    }
    if value.opt_text("entity_type").as_deref() == Some("PHONE_NUMBER") {
        if let Some(id) = value.opt_text("entity_id") {
            return Route::PhoneNumber(id);
        }
    }
    if let Some(display) = value.opt_text("display_phone_number") {
        let digits: String = display.chars().filter(char::is_ascii_digit).collect();
        if !digits.is_empty() {
            return Route::DisplayNumber {
                waba_id: ctx.waba_id.clone(),
                digits,
            };
        }
    }
    Route::Waba(ctx.waba_id.clone())
}

/// Any other change: a [`NumberUpdated`] when its value names a number, else an
/// [`AccountUpdated`]; kept whole either way.
fn other_item(ctx: &EntryCtx, field: &str, value: &Node) -> WebhookItem {
    match route_of(ctx, value) {
        Route::Waba(_) => account_item(ctx, field, &value.to_value(), &value.path),
        route => {
            let metadata = value.sub("metadata");
            let mut source = ctx.source(field, metadata.as_ref());
            match &route {
                Route::PhoneNumber(id) => source.phone_number_id = Some(id.clone()),
                Route::DisplayNumber { .. } => {
                    source.display_phone_number = value.opt_text("display_phone_number")
                }
                Route::Waba(_) => {}
            }
            number_item(ctx, source, route, value)
        }
    }
}

/// A number-level change kept whole.
fn number_item(ctx: &EntryCtx, source: MetaSource, route: Route, value: &Node) -> WebhookItem {
    let raw = value.to_value();
    let number = match &route {
        Route::PhoneNumber(id) => id.clone(),
        Route::DisplayNumber { digits, .. } => format!("display:{digits}"),
        Route::Waba(id) => format!("waba:{id}"),
    };
    let dedup_key = format!(
        "number:{number}:{}:{}:{}",
        source.field,
        ctx.time_key(),
        value_hash(&raw)
    );
    let timestamp = value
        .opt_time("timestamp")
        .ok()
        .flatten()
        .unwrap_or_else(|| ctx.occurred_at());
    WebhookItem {
        route,
        dedup_key,
        occurred_at: timestamp,
        path: value.path.clone(),
        event: DomainEvent::NumberUpdated(NumberUpdated {
            event: value.opt_text("event"),
            source,
            timestamp,
            raw,
        }),
    }
}

/// A template field: a status change, a quality change (also when Meta sends it
/// under `message_template_status_update` without an `event`), else kept whole.
fn template_item(ctx: &EntryCtx, field: &str, value: &Node) -> WebhookItem {
    let raw = value.to_value();
    let template_id = value.opt_text("message_template_id");
    let time_key = match ctx.time {
        Some(_) => ctx.time_key(),
        None => format!("-:{}", value_hash(&raw)),
    };
    let source = ctx.source(field, None);
    let name = value.opt_text("message_template_name");
    let language = value.opt_text("message_template_language");
    match (
        template_id,
        value.opt_text("event"),
        value.opt_text("new_quality_score"),
    ) {
        (Some(id), Some(event), _) => WebhookItem {
            route: Route::Waba(ctx.waba_id.clone()),
            dedup_key: format!("template:{id}:{event}:{time_key}"),
            occurred_at: ctx.occurred_at(),
            path: value.path.clone(),
            event: DomainEvent::TemplateStatusUpdated(TemplateStatusUpdated {
                source,
                template_id: id,
                template_name: name,
                language,
                event,
                reason: value.opt_text("reason"),
                timestamp: ctx.occurred_at(),
                raw,
            }),
        },
        (Some(id), None, Some(score)) => WebhookItem {
            route: Route::Waba(ctx.waba_id.clone()),
            dedup_key: format!("tquality:{id}:{score}:{time_key}"),
            occurred_at: ctx.occurred_at(),
            path: value.path.clone(),
            event: DomainEvent::TemplateQualityUpdated(TemplateQualityUpdated {
                source,
                template_id: id,
                template_name: name,
                language,
                previous_quality_score: value.opt_text("previous_quality_score"),
                new_quality_score: score,
                timestamp: ctx.occurred_at(),
                raw,
            }),
        },
        _ => account_item(ctx, field, &raw, &value.path),
    }
}

/// A change that names no number → [`AccountUpdated`] at the WABA, kept whole. A
/// partner event (`PARTNER_APP_INSTALLED`, ...) is sent under the partner's business
/// id: its WABA is `waba_info.waba_id`.
fn account_item(ctx: &EntryCtx, field: &str, value: &Value, path: &str) -> WebhookItem {
    let waba_id = value
        .pointer("/waba_info/waba_id")
        .and_then(text)
        .unwrap_or_else(|| ctx.waba_id.clone());
    let dedup_key = format!(
        "account:{waba_id}:{field}:{}:{}",
        ctx.time_key(),
        value_hash(value)
    );
    let mut source = ctx.source(field, None);
    source.waba_id = waba_id.clone();
    let event = AccountUpdated {
        source,
        event: value
            .get("event")
            .and_then(Value::as_str)
            .map(str::to_owned),
        timestamp: ctx.occurred_at(),
        raw: value.clone(),
    };
    WebhookItem {
        route: Route::Waba(waba_id),
        dedup_key,
        occurred_at: event.timestamp,
        path: path.to_owned(),
        event: DomainEvent::AccountUpdated(event),
    }
}

/// The first 16 hex digits of the SHA-256 of the value's JSON text (serde_json writes
/// object keys in sorted order, so equal values give equal text).
fn value_hash(value: &Value) -> String {
    let digest = Sha256::digest(value.to_string().as_bytes());
    hex::encode(&digest[..8])
}

/// Unix seconds of a timestamp (for dedup keys).
fn unix_seconds(t: &Timestamp) -> i64 {
    t.as_datetime().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::webhooks::fixtures;

    const RAW_SEQ: u64 = 42;
    const WABA: &str = "300100200300400";
    const NUMBER: &str = "700800900100200";

    fn split(name: &str) -> Split {
        let s =
            split_webhook(fixtures::get(name), RAW_SEQ).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(s.failures.is_empty(), "{name}: {:?}", s.failures);
        s
    }

    fn split_json(body: Value) -> Split {
        split_webhook(body.to_string().as_bytes(), RAW_SEQ).expect("JSON")
    }

    fn number(id: &str) -> Route {
        Route::PhoneNumber(id.to_owned())
    }

    fn message(item: &WebhookItem) -> &MessageReceived {
        match &item.event {
            DomainEvent::MessageReceived(m) => m,
            other => panic!("not a message: {other:?}"),
        }
    }

    fn messages_body(value: Value) -> Value {
        json!({"object": "whatsapp_business_account", "entry": [
            {"id": WABA, "changes": [{"field": "messages", "value": value}]}]})
    }

    fn change(field: &str, value: Value) -> Value {
        json!({"object": "whatsapp_business_account", "entry": [
            {"id": WABA, "time": 1767226600, "changes": [{"field": field, "value": value}]}]})
    }

    fn metadata() -> Value {
        json!({"display_phone_number": "15551230000", "phone_number_id": NUMBER})
    }

    fn text_message(id: &str, from: Value) -> Value {
        let mut m =
            json!({"id": id, "timestamp": "1767225600", "type": "text", "text": {"body": "hi"}});
        if let Value::Object(extra) = from {
            m.as_object_mut().unwrap().extend(extra);
        }
        m
    }

    #[test]
    fn every_fixture_splits_into_its_items_with_keys_that_name_the_number() {
        let expected = [
            ("account_update_app_installed.json", 1),
            ("batch_two_numbers.json", 3),
            ("escaped_unicode.json", 1),
            ("inbound_button_stop_promotions.json", 1),
            ("inbound_interactive_reply.json", 1),
            ("inbound_start.json", 1),
            ("inbound_stop.json", 1),
            ("inbound_stop_sentence.json", 1),
            ("inbound_text.json", 1),
            ("statuses_delivered_and_failed.json", 2),
            ("template_status_paused.json", 1),
            ("user_preferences_stop.json", 1),
        ];
        assert_eq!(expected.len(), fixtures::ALL.len());
        for (name, n) in expected {
            let s = split(name);
            assert_eq!(s.items.len(), n, "{name}");
            let keys: std::collections::HashSet<_> = s.items.iter().map(|i| &i.dedup_key).collect();
            assert_eq!(keys.len(), n, "{name}: keys are unique");
            for item in &s.items {
                if let Route::PhoneNumber(id) = &item.route {
                    assert!(
                        item.dedup_key.contains(id.as_str()),
                        "{name}: {}",
                        item.dedup_key
                    );
                }
            }
            // Splitting again gives the same keys (a redelivery is processed once).
            let again: Vec<_> = split(name).items.into_iter().map(|i| i.dedup_key).collect();
            assert_eq!(
                again,
                s.items
                    .iter()
                    .map(|i| i.dedup_key.clone())
                    .collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn a_text_message_names_its_sender_as_a_contact() {
        let s = split("inbound_text.json");
        let m = message(&s.items[0]);
        assert_eq!(s.items[0].route, number(NUMBER));
        assert_eq!(m.text.as_deref(), Some("Is my order shipped?"));
        assert_eq!(m.contact.wa_id.as_deref(), Some("5511988887777"));
        assert!(m.contact.profile_name.is_some());
        assert_eq!(m.source.raw_seq, RAW_SEQ);
        assert_eq!(
            s.items[0].dedup_key,
            format!("msg:{NUMBER}:{}:1767225600", m.wamid)
        );
        // The message object kept whole, as Meta sent it.
        let body: Value =
            serde_json::from_slice(fixtures::get("inbound_text.json")).expect("fixture");
        assert_eq!(
            m.raw,
            body["entry"][0]["changes"][0]["value"]["messages"][0]
        );
    }

    #[test]
    fn a_user_known_only_by_a_business_scoped_id_is_a_sender() {
        let value = json!({"metadata": metadata(),
            "contacts": [{"profile": {"name": "Kim", "username": "@kim"}, "user_id": "US.13491208655302741918"}],
            "messages": [text_message("wamid.U", json!({"from_user_id": "US.13491208655302741918"}))]});
        let s = split_json(messages_body(value));
        assert!(s.failures.is_empty(), "{:?}", s.failures);
        let m = message(&s.items[0]);
        assert_eq!(m.contact.wa_id, None);
        assert_eq!(
            m.contact.user_id.as_deref(),
            Some("US.13491208655302741918")
        );
        assert_eq!(m.contact.username.as_deref(), Some("@kim"));
        assert_eq!(m.contact.profile_name.as_deref(), Some("Kim"));
        // No `from_user_id` either: the only contact of the value is the sender.
        let value = json!({"metadata": metadata(), "contacts": [{"user_id": "BSUID_123"}],
            "messages": [text_message("wamid.V", json!({}))]});
        let s = split_json(messages_body(value));
        assert_eq!(
            message(&s.items[0]).contact.user_id.as_deref(),
            Some("BSUID_123")
        );
    }

    #[test]
    fn one_odd_item_never_sinks_its_neighbours() {
        let value = json!({"metadata": metadata(),
            "contacts": [{"wa_id": "1", "profile": {"name": "A"}}, {"user_id": "US.2"}],
            "messages": [
                text_message("wamid.OK1", json!({"from": "1"})),
                {"from": "1", "timestamp": "1767225600", "type": "text"},
                text_message("wamid.OK2", json!({"from_user_id": "US.2"})),
                {"id": "wamid.T", "from": "1", "timestamp": "<TIMESTAMP>", "type": "text"}
            ],
            "statuses": [{"id": "wamid.S", "status": "sent", "timestamp": "1767225601", "recipient_id": "1"}, 7]});
        let s = split_json(messages_body(value));
        let wamids: Vec<_> = s
            .items
            .iter()
            .map(|i| match &i.event {
                DomainEvent::MessageReceived(m) => m.wamid.clone(),
                DomainEvent::MessageStatusUpdated(st) => st.wamid.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(wamids, ["wamid.OK1", "wamid.OK2", "wamid.S"]);
        let paths: Vec<_> = s.failures.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "entry[0].changes[0].value.messages[1]",
                "entry[0].changes[0].value.messages[3]",
                "entry[0].changes[0].value.statuses[1]"
            ]
        );
        assert!(
            s.failures[0].reason.contains("messages[1].id"),
            "{:?}",
            s.failures[0]
        );
        assert!(
            s.failures[1].reason.contains("timestamp"),
            "{:?}",
            s.failures[1]
        );
    }

    #[test]
    fn the_same_wamid_on_two_numbers_gives_two_keys() {
        let body = |number: &str| {
            messages_body(json!({"metadata": {"phone_number_id": number},
                "messages": [text_message("wamid.SAME", json!({"from": "1"}))]}))
        };
        let a = split_json(body("111")).items.remove(0);
        let b = split_json(body("222")).items.remove(0);
        assert_ne!(a.dedup_key, b.dedup_key);
        assert_eq!((a.route, b.route), (number("111"), number("222")));
    }

    #[test]
    fn routing_follows_what_the_value_names() {
        let cases = [
            // Number-level fields with a phone number id: by that number.
            (
                "history",
                json!({"messaging_product": "whatsapp", "metadata": metadata(), "history": []}),
                number(NUMBER),
            ),
            (
                "smb_message_echoes",
                json!({"metadata": metadata(), "message_echoes": []}),
                number(NUMBER),
            ),
            (
                "calls",
                json!({"metadata": metadata(), "calls": [{"id": "c"}]}),
                number(NUMBER),
            ),
            (
                "automatic_events",
                json!({"metadata": metadata(), "automatic_events": []}),
                number(NUMBER),
            ),
            (
                "some_future_number_field",
                json!({"metadata": metadata()}),
                number(NUMBER),
            ),
            // Only a display number: that number within the WABA.
            (
                "phone_number_quality_update",
                json!({"display_phone_number": "+1 555 123-0000", "event": "UPGRADE"}),
                Route::DisplayNumber {
                    waba_id: WABA.into(),
                    digits: "15551230000".into(),
                },
            ),
            (
                "security",
                json!({"display_phone_number": "15551230000", "event": "PIN_CHANGED"}),
                Route::DisplayNumber {
                    waba_id: WABA.into(),
                    digits: "15551230000".into(),
                },
            ),
            // An alert about a number names it by id.
            (
                "account_alerts",
                json!({"entity_type": "PHONE_NUMBER", "entity_id": "42", "alert_info": {}}),
                number("42"),
            ),
            // Nothing names a number: the WABA.
            (
                "account_alerts",
                json!({"entity_type": "BUSINESS", "entity_id": "9"}),
                Route::Waba(WABA.into()),
            ),
            (
                "account_update",
                json!({"event": "VERIFIED_ACCOUNT"}),
                Route::Waba(WABA.into()),
            ),
            (
                "template_category_update",
                json!({"message_template_id": 1, "new_category": "MARKETING"}),
                Route::Waba(WABA.into()),
            ),
        ];
        for (field, value, route) in cases {
            let s = split_json(change(field, value.clone()));
            assert!(s.failures.is_empty(), "{field}: {:?}", s.failures);
            assert_eq!(s.items.len(), 1, "{field}");
            assert_eq!(s.items[0].route, route, "{field}");
            match &s.items[0].event {
                DomainEvent::NumberUpdated(n) => {
                    assert_ne!(route, Route::Waba(WABA.into()), "{field}");
                    assert_eq!(n.raw, value, "{field}: kept whole");
                    assert_eq!(n.source.field, field);
                }
                DomainEvent::AccountUpdated(a) => {
                    assert_eq!(route, Route::Waba(WABA.into()), "{field}");
                    assert_eq!(a.raw, value, "{field}: kept whole");
                }
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn template_quality_under_the_status_field_is_understood() {
        let value = json!({"previous_quality_score": "GREEN", "new_quality_score": "YELLOW",
            "message_template_id": 806312974732579u64, "message_template_name": "welcome_template"});
        let s = split_json(change("message_template_status_update", value));
        let DomainEvent::TemplateQualityUpdated(q) = &s.items[0].event else {
            panic!("{:?}", s.items[0].event)
        };
        assert_eq!(
            (q.template_id.as_str(), q.new_quality_score.as_str()),
            ("806312974732579", "YELLOW")
        );
        assert_eq!(q.previous_quality_score.as_deref(), Some("GREEN"));
        let s = split("template_status_paused.json");
        assert!(matches!(
            s.items[0].event,
            DomainEvent::TemplateStatusUpdated(_)
        ));
        assert_eq!(s.items[0].route, Route::Waba(WABA.into()));
    }

    #[test]
    fn replies_reactions_media_referrals_and_system_changes_keep_their_fields() {
        let value = json!({"metadata": metadata(), "messages": [
            {"from": "1", "id": "wamid.F", "timestamp": "1", "type": "interactive",
             "interactive": {"type": "nfm_reply", "nfm_reply": {"name": "flow", "body": "Sent",
               "response_json": "{\"flow_token\": \"t\", \"rating\": 5}"}}},
            {"from": "1", "id": "wamid.R", "timestamp": "1", "type": "reaction",
             "reaction": {"message_id": "wamid.X", "emoji": "👍"}},
            {"from": "1", "id": "wamid.R0", "timestamp": "1", "type": "reaction",
             "reaction": {"message_id": "wamid.X"}},
            {"from": "1", "id": "wamid.I", "timestamp": "1", "type": "image",
             "image": {"id": "media-1", "mime_type": "image/jpeg", "sha256": "abc=", "caption": "look"},
             "referral": {"source_type": "ad", "ctwa_clid": "clid-1"}},
            {"from": "1", "from_user_id": "US.OLD", "id": "wamid.S", "timestamp": "1", "type": "system",
             "system": {"type": "user_changed_user_id", "user_id": "US.NEW", "body": "changed"}}
        ]});
        let s = split_json(messages_body(value));
        assert!(s.failures.is_empty(), "{:?}", s.failures);
        let flow = message(&s.items[0]).interactive.clone().unwrap();
        assert_eq!(flow.kind, "nfm_reply");
        assert_eq!(flow.response, Some(json!({"flow_token": "t", "rating": 5})));
        let r = message(&s.items[1]).reaction.clone().unwrap();
        assert_eq!(
            (r.message_id.as_deref(), r.emoji.as_deref()),
            (Some("wamid.X"), Some("👍"))
        );
        assert_eq!(message(&s.items[2]).reaction.clone().unwrap().emoji, None);
        let image = message(&s.items[3]);
        let media = image.media.clone().unwrap();
        assert_eq!(
            (media.kind.as_str(), media.id.as_deref()),
            ("image", Some("media-1"))
        );
        assert_eq!(image.text.as_deref(), Some("look"));
        assert_eq!(image.referral.as_ref().unwrap()["ctwa_clid"], "clid-1");
        assert_eq!(
            message(&s.items[4]).system.clone().unwrap().kind,
            "user_changed_user_id"
        );
        let DomainEvent::ContactUserIdChanged(c) = &s.items[5].event else {
            panic!("{:?}", s.items[5].event)
        };
        assert_eq!(
            (c.previous_user_id.as_deref(), c.current_user_id.as_str()),
            (Some("US.OLD"), "US.NEW")
        );
    }

    #[test]
    fn user_id_updates_and_preferences_by_user_id() {
        let value = json!({"metadata": metadata(), "user_id_update": [{
            "user_id": {"previous": "US.1", "current": "US.2"}, "wa_id": "447700900123",
            "detail": "changed", "timestamp": "1767226600"}]});
        let s = split_json(change("user_id_update", value));
        let DomainEvent::ContactUserIdChanged(c) = &s.items[0].event else {
            panic!("{:?}", s)
        };
        assert_eq!(c.current_user_id, "US.2");
        assert_eq!(s.items[0].route, number(NUMBER));
        let value = json!({"metadata": metadata(), "contacts": [{"user_id": "US.9"}],
            "user_preferences": [{"user_id": "US.9", "category": "marketing_messages", "value": "stop",
              "timestamp": 1767226100}]});
        let s = split_json(change("user_preferences", value));
        let DomainEvent::ContactMarketingPreference(p) = &s.items[0].event else {
            panic!("{:?}", s)
        };
        assert_eq!(p.contact.user_id.as_deref(), Some("US.9"));
        assert_eq!(p.contact.wa_id, None);
    }

    #[test]
    fn statuses_keep_pricing_conversation_and_user_ids() {
        let value = json!({"metadata": metadata(), "statuses": [{"id": "wamid.O", "status": "delivered",
            "timestamp": "1767226000", "recipient_user_id": "US.5", "parent_recipient_user_id": "US.ENT.5",
            "biz_opaque_callback_data": "x", "conversation": {"id": "c1"},
            "pricing": {"billable": true, "pricing_model": "PMP", "category": "utility"}}]});
        let s = split_json(messages_body(value));
        let DomainEvent::MessageStatusUpdated(st) = &s.items[0].event else {
            panic!()
        };
        assert_eq!(st.recipient_id, None);
        assert_eq!(st.recipient_user_id.as_deref(), Some("US.5"));
        assert_eq!(st.recipient_parent_user_id.as_deref(), Some("US.ENT.5"));
        assert_eq!(st.pricing_category.as_deref(), Some("utility"));
        assert_eq!(st.pricing.as_ref().unwrap()["pricing_model"], "PMP");
        assert_eq!(st.conversation, Some(json!({"id": "c1"})));
    }

    #[test]
    fn bodies_that_are_not_webhooks_fail_as_one_item_and_not_json_fails_whole() {
        assert!(matches!(
            split_webhook(b"{\"object\": ", RAW_SEQ),
            Err(SplitError::NotJson(_))
        ));
        let page = split_json(json!({"object": "page", "entry": []}));
        assert!(page.items.is_empty());
        assert_eq!(page.failures.len(), 1);
        assert!(page.failures[0].reason.contains("page"));
        assert_eq!(split_json(json!([])).failures.len(), 1);
        let empty = split_json(json!({"object": "whatsapp_business_account", "entry": []}));
        assert_eq!(empty, Split::default());
        // A value with nothing recognisable is kept, not dropped.
        let s = split_json(messages_body(
            json!({"metadata": metadata(), "errors": [{"code": 131000}]}),
        ));
        assert!(matches!(s.items[0].event, DomainEvent::NumberUpdated(_)));
        assert_eq!(s.items[0].route, number(NUMBER));
    }
}
