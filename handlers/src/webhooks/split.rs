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
    let contact = contacts
        .iter()
        .find(same)
        .or_else(|| (contacts.len() == 1).then(|| &contacts[0]))
        .copied();
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
        raw: message.to_value(),
        system: system.clone(),
        contact: contact.clone(),
        wamid,
        message_type,
        timestamp,
    };
    let key = format!("msg:{}:{}", number_key(source), event.wamid);
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

/// A change that names no number → [`AccountUpdated`] at the WABA, kept whole.
fn account_item(ctx: &EntryCtx, field: &str, value: &Value, path: &str) -> WebhookItem {
    let dedup_key = format!(
        "account:{}:{field}:{}:{}",
        ctx.waba_id,
        ctx.time_key(),
        value_hash(value)
    );
    let event = AccountUpdated {
        source: ctx.source(field, None),
        event: value
            .get("event")
            .and_then(Value::as_str)
            .map(str::to_owned),
        timestamp: ctx.occurred_at(),
        raw: value.clone(),
    };
    WebhookItem {
        route: Route::Waba(ctx.waba_id.clone()),
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
