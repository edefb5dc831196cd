//! Splitting one Meta webhook body into domain items, one per message, status,
//! preference, template or account change.
//!
//! Nothing is dropped silently: a change with an unknown `field`, or a value carrying
//! nothing recognisable, becomes an [`AccountUpdated`] routed by WABA with the raw value
//! kept. A malformed item fails the whole split (the caller dead-letters the body).
//!
//! Meta's type quirks are absorbed here: message and status timestamps are strings of
//! Unix seconds, while `user_preferences[].timestamp`, `entry[].time` and
//! `message_template_id` are integers. Both spellings are accepted everywhere.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use wabridge_events::types::{
    AccountUpdated, ButtonReply, ContactMarketingPreference, InteractiveReply, MessageReceived,
    MessageStatusUpdated, MetaError, MetaSource, TemplateStatusUpdated,
};
use wabridge_events::{DomainEvent, Timestamp};

/// The only `object` a WhatsApp Business Account webhook carries.
const WABA_OBJECT: &str = "whatsapp_business_account";

/// Where an item must be routed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// To the workspace holding this phone number id (`value.metadata.phone_number_id`).
    PhoneNumber(String),
    /// To the workspace holding this WABA id (`entry[].id`).
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
}

/// Why a webhook body could not be split.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// The body does not parse as JSON.
    #[error("body is not JSON: {0}")]
    NotJson(serde_json::Error),
    /// The body is JSON but not a well-formed WhatsApp Business Account webhook; the text
    /// names the offending path (e.g. `entry[0].changes[0].value.messages[1].id`).
    #[error("not a WhatsApp Business Account webhook: {0}")]
    Unexpected(String),
}

/// Splits one webhook body into items, in body order. `raw_seq` is the sequence of the
/// `webhook.received` event holding the body; it is copied into every item's source.
pub fn split_webhook(body: &[u8], raw_seq: u64) -> Result<Vec<WebhookItem>, SplitError> {
    let root: Value = serde_json::from_slice(body).map_err(SplitError::NotJson)?;
    let root = Node::root(&root)?;
    check_object(&root)?;
    let mut items = Vec::new();
    for entry in root.req_list("entry")? {
        split_entry(&entry, raw_seq, &mut items)?;
    }
    Ok(items)
}

/// Refuses bodies whose `object` is not `whatsapp_business_account`.
fn check_object(root: &Node) -> Result<(), SplitError> {
    match root.get("object").and_then(Value::as_str) {
        Some(WABA_OBJECT) => Ok(()),
        Some(other) => Err(unexpected(format!(
            "`object` is {other:?}, not {WABA_OBJECT:?}"
        ))),
        None => Err(root.missing("object", "a string")),
    }
}

/// What every item of one `entry[]` shares.
struct EntryCtx {
    /// `entry[].id`.
    waba_id: String,
    /// `entry[].time`, when present.
    time: Option<Timestamp>,
    /// The raw stream sequence of the body.
    raw_seq: u64,
}

impl EntryCtx {
    /// A source for a change of this entry, without number metadata.
    fn source(&self, field: &str) -> MetaSource {
        MetaSource {
            waba_id: self.waba_id.clone(),
            phone_number_id: None,
            display_phone_number: None,
            field: field.to_owned(),
            raw_seq: self.raw_seq,
        }
    }

    /// `entry[].time` as it appears in dedup keys (`-` when Meta sent none).
    fn time_key(&self) -> String {
        self.time
            .map_or_else(|| "-".to_owned(), |t| unix_seconds(&t).to_string())
    }

    /// When a WABA-level item happened: `entry[].time`, or now as a last resort.
    fn occurred_at(&self) -> Timestamp {
        self.time.unwrap_or_else(Timestamp::now)
    }
}

/// Splits every change of one `entry[]`.
fn split_entry(entry: &Node, raw_seq: u64, out: &mut Vec<WebhookItem>) -> Result<(), SplitError> {
    let ctx = EntryCtx {
        waba_id: entry.req_text("id")?,
        time: entry.opt_time("time")?,
        raw_seq,
    };
    for change in entry.req_list("changes")? {
        split_change(&ctx, &change, out)?;
    }
    Ok(())
}

/// Splits one `changes[]` element according to its `field`.
fn split_change(
    ctx: &EntryCtx,
    change: &Node,
    out: &mut Vec<WebhookItem>,
) -> Result<(), SplitError> {
    let field = change.req_text("field")?;
    let value = change
        .map
        .get("value")
        .ok_or_else(|| unexpected(format!("`{}` is missing", join(&change.path, "value"))))?;
    let path = join(&change.path, "value");
    match field.as_str() {
        "messages" | "user_preferences" => split_messaging(ctx, &field, value, path, out)?,
        f if is_template_status(f, value) => {
            out.push(template_item(ctx, &field, &Node::new(value, path)?)?)
        }
        _ => out.push(account_item(ctx.source(&field), ctx, value)),
    }
    Ok(())
}

/// Whether a change becomes a [`TemplateStatusUpdated`]: always for
/// `message_template_status_update` (which must then be well formed), and for other
/// template fields when the value fits (an `event` and a template id).
fn is_template_status(field: &str, value: &Value) -> bool {
    let template_field = field.starts_with("message_template_") || field.starts_with("template_");
    field == "message_template_status_update" || (template_field && fits_template(value))
}

/// Whether a template-field value reads as a status change (an `event` and a template id).
fn fits_template(value: &Value) -> bool {
    let has = |key| value.get(key).and_then(text).is_some();
    has("event") && has("message_template_id")
}

// ----- number-level items (`messages`, `user_preferences`) -----

/// The array keys of a number-level value that hold items.
const ITEM_ARRAYS: [&str; 3] = ["messages", "statuses", "user_preferences"];

/// Splits a number-level value: every message, status and preference. A value with none
/// of them, or with value-level `errors`, also yields an [`AccountUpdated`] so that
/// nothing is lost.
fn split_messaging(
    ctx: &EntryCtx,
    field: &str,
    value: &Value,
    path: String,
    out: &mut Vec<WebhookItem>,
) -> Result<(), SplitError> {
    let Some(map) = value.as_object() else {
        out.push(account_item(ctx.source(field), ctx, value));
        return Ok(());
    };
    let node = Node { path, map };
    let has_items = ITEM_ARRAYS.iter().any(|key| non_empty_array(node.get(key)));
    if has_items {
        split_number_items(ctx, field, &node, out)?;
    }
    if !has_items || non_empty_array(node.get("errors")) {
        let source = number_source(ctx, field, &node, false)?;
        out.push(account_item(source, ctx, value));
    }
    Ok(())
}

/// Pushes one item per `messages[]`, `statuses[]` and `user_preferences[]` element.
fn split_number_items(
    ctx: &EntryCtx,
    field: &str,
    value: &Node,
    out: &mut Vec<WebhookItem>,
) -> Result<(), SplitError> {
    let source = number_source(ctx, field, value, true)?;
    for message in value.list("messages")? {
        out.push(message_item(&source, value, &message)?);
    }
    for status in value.list("statuses")? {
        out.push(status_item(&source, &status)?);
    }
    for preference in value.list("user_preferences")? {
        out.push(preference_item(&source, &preference)?);
    }
    Ok(())
}

/// The source of a number-level value; `value.metadata.phone_number_id` is required
/// when `routed` (items are routed by it).
fn number_source(
    ctx: &EntryCtx,
    field: &str,
    value: &Node,
    routed: bool,
) -> Result<MetaSource, SplitError> {
    let mut source = ctx.source(field);
    let metadata = match value.sub("metadata") {
        Some(metadata) => metadata,
        None if routed => return Err(value.missing("metadata", "an object")),
        None => return Ok(source),
    };
    source.phone_number_id = match metadata.opt_text("phone_number_id") {
        Some(id) => Some(id),
        None if routed => return Err(metadata.missing("phone_number_id", "a string")),
        None => None,
    };
    source.display_phone_number = metadata.opt_text("display_phone_number");
    Ok(source)
}

/// The route of a number-level item.
fn number_route(source: &MetaSource) -> Route {
    Route::PhoneNumber(source.phone_number_id.clone().unwrap_or_default())
}

/// One `messages[]` element → [`MessageReceived`].
fn message_item(
    source: &MetaSource,
    value: &Node,
    message: &Node,
) -> Result<WebhookItem, SplitError> {
    let wamid = message.req_text("id")?;
    let from = message.req_text("from")?;
    let timestamp = message.req_time("timestamp")?;
    let message_type = message.req_text("type")?;
    let event = MessageReceived {
        source: source.clone(),
        profile_name: profile_name(value, &from),
        text: message_text(message, &message_type),
        button: button_reply(message, &message_type),
        interactive: interactive_reply(message, &message_type),
        context_wamid: message.sub("context").and_then(|c| c.opt_text("id")),
        errors: meta_errors(message)?,
        raw: message.to_value(),
        wamid,
        from,
        message_type,
        timestamp,
    };
    Ok(WebhookItem {
        route: number_route(source),
        dedup_key: format!("msg:{}", event.wamid),
        occurred_at: timestamp,
        event: DomainEvent::MessageReceived(event),
    })
}

/// The sender's profile name, from the `value.contacts[]` element whose `wa_id` is `from`.
fn profile_name(value: &Node, from: &str) -> Option<String> {
    let contacts = value.get("contacts")?.as_array()?;
    let contact = contacts
        .iter()
        .find(|c| c.get("wa_id").and_then(text).as_deref() == Some(from))?;
    contact
        .get("profile")?
        .get("name")?
        .as_str()
        .map(str::to_owned)
}

/// `text.body`, for `text` messages.
fn message_text(message: &Node, message_type: &str) -> Option<String> {
    (message_type == "text")
        .then(|| message.sub("text")?.opt_text("body"))
        .flatten()
}

/// `button.{payload,text}`, for template quick-reply taps (`button` messages).
fn button_reply(message: &Node, message_type: &str) -> Option<ButtonReply> {
    if message_type != "button" {
        return None;
    }
    let button = message.sub("button")?;
    Some(ButtonReply {
        payload: button.opt_text("payload"),
        text: button.opt_text("text"),
    })
}

/// `interactive.type` with the `id` and `title` of the reply object of that kind.
fn interactive_reply(message: &Node, message_type: &str) -> Option<InteractiveReply> {
    if message_type != "interactive" {
        return None;
    }
    let interactive = message.sub("interactive")?;
    let kind = interactive.opt_text("type")?;
    let reply = interactive.sub(&kind);
    Some(InteractiveReply {
        id: reply.as_ref().and_then(|r| r.opt_text("id")),
        title: reply.as_ref().and_then(|r| r.opt_text("title")),
        kind,
    })
}

/// The `errors[]` of a message or status.
fn meta_errors(node: &Node) -> Result<Vec<MetaError>, SplitError> {
    node.list("errors")?.iter().map(meta_error).collect()
}

/// One Meta error object.
fn meta_error(error: &Node) -> Result<MetaError, SplitError> {
    Ok(MetaError {
        code: error.req_int("code")?,
        title: error.opt_text("title"),
        message: error.opt_text("message"),
        details: error.sub("error_data").and_then(|d| d.opt_text("details")),
    })
}

/// One `statuses[]` element → [`MessageStatusUpdated`].
fn status_item(source: &MetaSource, status: &Node) -> Result<WebhookItem, SplitError> {
    let timestamp = status.req_time("timestamp")?;
    let event = MessageStatusUpdated {
        source: source.clone(),
        wamid: status.req_text("id")?,
        status: status.req_text("status")?,
        recipient_id: status.opt_text("recipient_id"),
        timestamp,
        biz_opaque_callback_data: status.opt_text("biz_opaque_callback_data"),
        pricing_category: status.sub("pricing").and_then(|p| p.opt_text("category")),
        errors: meta_errors(status)?,
    };
    Ok(WebhookItem {
        route: number_route(source),
        dedup_key: format!("status:{}:{}", event.wamid, event.status),
        occurred_at: timestamp,
        event: DomainEvent::MessageStatusUpdated(event),
    })
}

/// One `user_preferences[]` element → [`ContactMarketingPreference`].
fn preference_item(source: &MetaSource, preference: &Node) -> Result<WebhookItem, SplitError> {
    let timestamp = preference.req_time("timestamp")?;
    let event = ContactMarketingPreference {
        source: source.clone(),
        wa_id: preference.req_text("wa_id")?,
        category: preference.req_text("category")?,
        value: preference.req_text("value")?,
        detail: preference.opt_text("detail"),
        timestamp,
    };
    let dedup_key = format!(
        "pref:{}:{}:{}:{}",
        event.wa_id,
        event.category,
        event.value,
        unix_seconds(&timestamp)
    );
    Ok(WebhookItem {
        route: number_route(source),
        dedup_key,
        occurred_at: timestamp,
        event: DomainEvent::ContactMarketingPreference(event),
    })
}

// ----- WABA-level items -----

/// A template status change → [`TemplateStatusUpdated`]. Without `entry[].time` the key
/// ends in `-:<value hash>` so that distinct changes are not merged.
fn template_item(ctx: &EntryCtx, field: &str, value: &Node) -> Result<WebhookItem, SplitError> {
    let raw = value.to_value();
    let event = TemplateStatusUpdated {
        source: ctx.source(field),
        template_id: value.req_text("message_template_id")?,
        template_name: value.opt_text("message_template_name"),
        language: value.opt_text("message_template_language"),
        event: value.req_text("event")?,
        reason: value.opt_text("reason"),
        timestamp: ctx.occurred_at(),
        raw,
    };
    let time_key = match ctx.time {
        Some(_) => ctx.time_key(),
        None => format!("-:{}", value_hash(&event.raw)),
    };
    Ok(WebhookItem {
        route: Route::Waba(ctx.waba_id.clone()),
        dedup_key: format!(
            "template:{}:{}:{}",
            event.template_id, event.event, time_key
        ),
        occurred_at: event.timestamp,
        event: DomainEvent::TemplateStatusUpdated(event),
    })
}

/// Any other change (account-level, unknown, or unrecognisable) → [`AccountUpdated`],
/// routed by WABA, keeping the whole value.
fn account_item(source: MetaSource, ctx: &EntryCtx, value: &Value) -> WebhookItem {
    let dedup_key = format!(
        "account:{}:{}:{}:{}",
        ctx.waba_id,
        source.field,
        ctx.time_key(),
        value_hash(value)
    );
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
        route: Route::Waba(ctx.waba_id.clone()),
        dedup_key,
        occurred_at: event.timestamp,
        event: DomainEvent::AccountUpdated(event),
    }
}

/// The first 16 hex digits of the SHA-256 of the value's JSON text (serde_json writes
/// object keys in sorted order, so equal values give equal text).
fn value_hash(value: &Value) -> String {
    let digest = Sha256::digest(value.to_string().as_bytes());
    hex::encode(&digest[..8])
}

// ----- JSON helpers -----

/// A JSON object with its path in the body, so that errors name what is wrong.
struct Node<'a> {
    /// Path from the body root, e.g. `entry[0].changes[1].value`.
    path: String,
    /// The object.
    map: &'a Map<String, Value>,
}

impl<'a> Node<'a> {
    /// The body root, which must be an object.
    fn root(value: &'a Value) -> Result<Self, SplitError> {
        value
            .as_object()
            .map(|map| Node {
                path: String::new(),
                map,
            })
            .ok_or_else(|| unexpected("the body is not a JSON object".to_owned()))
    }

    /// The object at `path`; anything else is an error naming the path.
    fn new(value: &'a Value, path: String) -> Result<Self, SplitError> {
        match value.as_object() {
            Some(map) => Ok(Node { path, map }),
            None => Err(unexpected(format!("`{path}` is not an object"))),
        }
    }

    /// The member `key`, treating `null` as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// The error for a required member that is absent or of the wrong type.
    fn missing(&self, key: &str, what: &str) -> SplitError {
        unexpected(format!(
            "`{}` is missing or not {what}",
            join(&self.path, key)
        ))
    }

    /// A required string (integers are accepted and rendered as text).
    fn req_text(&self, key: &str) -> Result<String, SplitError> {
        self.opt_text(key)
            .ok_or_else(|| self.missing(key, "a string"))
    }

    /// An optional string (integers are accepted and rendered as text).
    fn opt_text(&self, key: &str) -> Option<String> {
        self.get(key).and_then(text)
    }

    /// A required integer (a string of digits is accepted).
    fn req_int(&self, key: &str) -> Result<i64, SplitError> {
        self.get(key)
            .and_then(integer)
            .ok_or_else(|| self.missing(key, "an integer"))
    }

    /// A required Unix-seconds time (string or integer).
    fn req_time(&self, key: &str) -> Result<Timestamp, SplitError> {
        self.opt_time(key)?
            .ok_or_else(|| self.missing(key, "Unix seconds"))
    }

    /// An optional Unix-seconds time (string or integer); present but invalid is an error.
    fn opt_time(&self, key: &str) -> Result<Option<Timestamp>, SplitError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => integer(v)
                .and_then(Timestamp::from_unix_seconds)
                .map(Some)
                .ok_or_else(|| self.missing(key, "Unix seconds")),
        }
    }

    /// An optional sub-object; absent or not an object gives `None`.
    fn sub(&self, key: &str) -> Option<Node<'a>> {
        let map = self.get(key)?.as_object()?;
        Some(Node {
            path: join(&self.path, key),
            map,
        })
    }

    /// A required array of objects.
    fn req_list(&self, key: &str) -> Result<Vec<Node<'a>>, SplitError> {
        match self.get(key) {
            Some(Value::Array(_)) => self.list(key),
            _ => Err(self.missing(key, "an array")),
        }
    }

    /// An optional array of objects (absent is empty); each element must be an object.
    fn list(&self, key: &str) -> Result<Vec<Node<'a>>, SplitError> {
        let elements = match self.get(key) {
            None => return Ok(Vec::new()),
            Some(Value::Array(elements)) => elements,
            Some(_) => return Err(self.missing(key, "an array")),
        };
        let path = join(&self.path, key);
        elements
            .iter()
            .enumerate()
            .map(|(i, element)| Node::new(element, format!("{path}[{i}]")))
            .collect()
    }

    /// The object as an owned JSON value.
    fn to_value(&self) -> Value {
        Value::Object(self.map.clone())
    }
}

/// `path.key`, or `key` at the root.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A string, or an integer rendered as text.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// An integer, or a string holding one.
fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Whether `value` is an array with at least one element.
fn non_empty_array(value: Option<&Value>) -> bool {
    value
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

/// Unix seconds of a timestamp (for dedup keys).
fn unix_seconds(t: &Timestamp) -> i64 {
    t.as_datetime().unix_timestamp()
}

/// A [`SplitError::Unexpected`].
fn unexpected(what: String) -> SplitError {
    SplitError::Unexpected(what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::fixtures;
    use serde_json::json;

    const RAW_SEQ: u64 = 42;
    const WABA: &str = "300100200300400";
    const NUMBER: &str = "700800900100200";

    fn split(name: &str) -> Vec<WebhookItem> {
        split_webhook(fixtures::get(name), RAW_SEQ).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn split_json(body: Value) -> Result<Vec<WebhookItem>, SplitError> {
        split_webhook(body.to_string().as_bytes(), RAW_SEQ)
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_unix_seconds(secs).unwrap()
    }

    fn number(id: &str) -> Route {
        Route::PhoneNumber(id.to_owned())
    }

    fn waba(id: &str) -> Route {
        Route::Waba(id.to_owned())
    }

    fn message(item: &WebhookItem) -> &MessageReceived {
        match &item.event {
            DomainEvent::MessageReceived(m) => m,
            other => panic!("not a message: {other:?}"),
        }
    }

    fn status(item: &WebhookItem) -> &MessageStatusUpdated {
        match &item.event {
            DomainEvent::MessageStatusUpdated(s) => s,
            other => panic!("not a status: {other:?}"),
        }
    }

    fn account(item: &WebhookItem) -> &AccountUpdated {
        match &item.event {
            DomainEvent::AccountUpdated(a) => a,
            other => panic!("not an account update: {other:?}"),
        }
    }

    fn unexpected_text(result: Result<Vec<WebhookItem>, SplitError>) -> String {
        match result {
            Err(SplitError::Unexpected(what)) => what,
            other => panic!("expected Unexpected, got {other:?}"),
        }
    }

    /// The only item of a single-message fixture.
    fn only_message(name: &str) -> (WebhookItem, MessageReceived) {
        let items = split(name);
        assert_eq!(items.len(), 1, "{name}");
        let m = message(&items[0]).clone();
        assert_eq!(items[0].route, number(NUMBER), "{name}");
        assert_eq!(items[0].dedup_key, format!("msg:{}", m.wamid), "{name}");
        assert_eq!(items[0].occurred_at, m.timestamp, "{name}");
        (items[0].clone(), m)
    }

    /// A body with one `messages`-field change holding `value`.
    fn messages_body(value: Value) -> Value {
        json!({"object": "whatsapp_business_account", "entry": [
            {"id": WABA, "changes": [{"field": "messages", "value": value}]}]})
    }

    fn metadata() -> Value {
        json!({"display_phone_number": "15551230000", "phone_number_id": NUMBER})
    }

    #[test]
    fn every_fixture_splits_into_the_expected_number_of_unique_items() {
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
        for (name, count) in expected {
            let items = split(name);
            assert_eq!(items.len(), count, "{name}");
            let mut keys: Vec<_> = items.iter().map(|i| i.dedup_key.as_str()).collect();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), count, "{name}: duplicate dedup keys");
        }
    }

    #[test]
    fn redelivery_gives_the_same_items() {
        for (name, body) in fixtures::ALL {
            let first = split_webhook(body, 1).unwrap();
            let again = split_webhook(body, 2).unwrap();
            let keys = |items: &[WebhookItem]| -> Vec<String> {
                items.iter().map(|i| i.dedup_key.clone()).collect()
            };
            assert_eq!(keys(&first), keys(&again), "{name}");
        }
    }

    #[test]
    fn inbound_text() {
        let (item, m) = only_message("inbound_text.json");
        assert_eq!(
            m.wamid,
            "wamid.HBgNNTUxMTk4ODg4Nzc3NxUCABIYFjNFQjBDMDAwMDAwMDAwMDAwMDAxAA=="
        );
        assert_eq!(
            item.dedup_key,
            "msg:wamid.HBgNNTUxMTk4ODg4Nzc3NxUCABIYFjNFQjBDMDAwMDAwMDAwMDAwMDAxAA=="
        );
        assert_eq!(m.text.as_deref(), Some("Is my order shipped?"));
        assert_eq!(m.from, "5511988887777");
        assert_eq!(m.profile_name.as_deref(), Some("Ana Souza"));
        assert_eq!(m.message_type, "text");
        assert_eq!(m.timestamp, at(1767225600));
        assert_eq!(
            (
                m.button.clone(),
                m.interactive.clone(),
                m.context_wamid.clone()
            ),
            (None, None, None)
        );
        assert!(m.errors.is_empty());
        assert_eq!(m.raw["text"]["body"], "Is my order shipped?");
        let expected_source = MetaSource {
            waba_id: WABA.into(),
            phone_number_id: Some(NUMBER.into()),
            display_phone_number: Some("15551230000".into()),
            field: "messages".into(),
            raw_seq: RAW_SEQ,
        };
        assert_eq!(m.source, expected_source);
    }

    #[test]
    fn stop_and_start_texts_are_kept_verbatim() {
        let (_, stop) = only_message("inbound_stop.json");
        assert_eq!(stop.text.as_deref(), Some("  Stop "));
        assert_eq!(stop.profile_name.as_deref(), Some("Tom Reed"));
        let (_, start) = only_message("inbound_start.json");
        assert_eq!(start.text.as_deref(), Some("START"));
        assert_eq!(start.timestamp, at(1767229250));
        let (_, sentence) = only_message("inbound_stop_sentence.json");
        assert_eq!(
            sentence.text.as_deref(),
            Some("please stop sending me these")
        );
        assert_eq!(sentence.from, "447700900125");
        assert_eq!(sentence.profile_name.as_deref(), Some("Lee Park"));
    }

    #[test]
    fn template_button_tap() {
        let (_, m) = only_message("inbound_button_stop_promotions.json");
        assert_eq!(m.message_type, "button");
        let button = m.button.expect("button");
        assert_eq!(button.payload.as_deref(), Some("Parar promoções"));
        assert_eq!(button.text.as_deref(), Some("Parar promoções"));
        assert_eq!(
            m.context_wamid.as_deref(),
            Some("wamid.HBgNNTUyMTk3Nzc3NjY2NhUCABEYEjAwMDAwMDAwMDAwMDAwMDAwMQA=")
        );
        assert_eq!(m.text, None);
        assert_eq!(m.profile_name.as_deref(), Some("Joao Lima"));
    }

    #[test]
    fn interactive_button_reply() {
        let (_, m) = only_message("inbound_interactive_reply.json");
        assert_eq!(m.message_type, "interactive");
        let expected = InteractiveReply {
            kind: "button_reply".into(),
            id: Some("order-status".into()),
            title: Some("Track order".into()),
        };
        assert_eq!(m.interactive, Some(expected));
        assert_eq!(
            m.context_wamid.as_deref(),
            Some("wamid.HBgMNDQ3NzAwOTAwMTIzFQIAERgSMDAwMDAwMDAwMDAwMDAwMDAyAA==")
        );
    }

    #[test]
    fn interactive_list_reply() {
        let body = messages_body(json!({"metadata": metadata(), "messages": [{
            "from": "447700900123", "id": "wamid.L", "timestamp": "1767225800", "type": "interactive",
            "interactive": {"type": "list_reply",
                "list_reply": {"id": "row-2", "title": "Returns", "description": "d"}}}]}));
        let items = split_json(body).unwrap();
        let reply = message(&items[0]).interactive.clone().unwrap();
        assert_eq!(reply.kind, "list_reply");
        assert_eq!(reply.id.as_deref(), Some("row-2"));
        assert_eq!(reply.title.as_deref(), Some("Returns"));
    }

    #[test]
    fn escaped_unicode_is_decoded() {
        let (_, m) = only_message("escaped_unicode.json");
        assert_eq!(m.text.as_deref(), Some("Hej \u{1F44B} / tack"));
        assert!(m.text.as_deref().unwrap().contains('👋'));
        assert_eq!(m.profile_name.as_deref(), Some("Zoë Åström"));
    }

    #[test]
    fn statuses_delivered_and_failed() {
        let items = split("statuses_delivered_and_failed.json");
        assert_eq!(items.len(), 2);
        assert!(items.iter().all(|i| i.route == number(NUMBER)));

        let delivered = status(&items[0]);
        assert_eq!(delivered.status, "delivered");
        assert_eq!(delivered.recipient_id.as_deref(), Some("447700900123"));
        assert_eq!(
            delivered.biz_opaque_callback_data.as_deref(),
            Some("evt-7f3a")
        );
        assert_eq!(delivered.pricing_category.as_deref(), Some("marketing"));
        assert_eq!(delivered.timestamp, at(1767226000));
        assert!(delivered.errors.is_empty());
        assert_eq!(
            items[0].dedup_key,
            "status:wamid.HBgMNDQ3NzAwOTAwMTIzFQIAERgSMDAwMDAwMDAwMDAwMDAwMDEwAA==:delivered"
        );

        let failed = status(&items[1]);
        assert_eq!(failed.status, "failed");
        assert_eq!(failed.errors.len(), 1);
        assert_eq!(failed.errors[0].code, 131050);
        assert!(failed.errors[0]
            .title
            .as_deref()
            .unwrap()
            .starts_with("Unable to deliver"));
        assert_eq!(
            failed.errors[0].details.as_deref(),
            Some("Recipient stopped marketing messages")
        );
        assert_eq!(failed.pricing_category, None);
        assert_eq!(items[1].occurred_at, at(1767226005));
        assert_eq!(
            items[1].dedup_key,
            "status:wamid.HBgMNDQ3NzAwOTAwMTI0FQIAERgSMDAwMDAwMDAwMDAwMDAwMDExAA==:failed"
        );
    }

    #[test]
    fn user_preferences_stop() {
        let items = split("user_preferences_stop.json");
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].route, number(NUMBER));
        assert_eq!(
            items[0].dedup_key,
            "pref:447700900126:marketing_messages:stop:1767226100"
        );
        assert_eq!(items[0].occurred_at, at(1767226100));
        let DomainEvent::ContactMarketingPreference(p) = &items[0].event else {
            panic!("not a preference: {:?}", items[0].event);
        };
        assert_eq!(p.wa_id, "447700900126");
        assert_eq!(p.category, "marketing_messages");
        assert_eq!(p.value, "stop");
        assert_eq!(
            p.detail.as_deref(),
            Some("User requested to stop marketing messages")
        );
        assert_eq!(p.source.field, "user_preferences");
        assert_eq!(p.source.phone_number_id.as_deref(), Some(NUMBER));
    }

    #[test]
    fn template_status_paused() {
        let items = split("template_status_paused.json");
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].route, waba(WABA));
        assert_eq!(
            items[0].dedup_key,
            "template:9988776655443322:PAUSED:1767226200"
        );
        assert_eq!(items[0].occurred_at, at(1767226200));
        let DomainEvent::TemplateStatusUpdated(t) = &items[0].event else {
            panic!("not a template update: {:?}", items[0].event);
        };
        assert_eq!(t.template_id, "9988776655443322");
        assert_eq!(t.event, "PAUSED");
        assert_eq!(t.template_name.as_deref(), Some("spring_sale_v2"));
        assert_eq!(t.language.as_deref(), Some("en_US"));
        assert_eq!(t.reason.as_deref(), Some("NONE"));
        assert_eq!(t.raw["other_info"]["title"], "FIRST_PAUSE");
        assert_eq!(t.source.field, "message_template_status_update");
        assert_eq!(t.source.phone_number_id, None);
        assert_eq!(t.source.raw_seq, RAW_SEQ);
    }

    #[test]
    fn account_update_app_installed() {
        let items = split("account_update_app_installed.json");
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].route, waba(WABA));
        assert_eq!(items[0].occurred_at, at(1767226300));
        let a = account(&items[0]);
        assert_eq!(a.event.as_deref(), Some("PARTNER_APP_INSTALLED"));
        assert_eq!(a.raw["waba_info"]["partner_app_id"], "123123123123123");
        assert_eq!(a.source.field, "account_update");
        let prefix = "account:300100200300400:account_update:1767226300:";
        let hash = items[0]
            .dedup_key
            .strip_prefix(prefix)
            .expect(&items[0].dedup_key);
        assert_eq!(hash.len(), 16);
        assert!(hash
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(hash, &hex::encode(Sha256::digest(a.raw.to_string()))[..16]);
    }

    #[test]
    fn batch_routes_each_item_to_its_own_number() {
        let items = split("batch_two_numbers.json");
        let routes: Vec<_> = items.iter().map(|i| i.route.clone()).collect();
        assert_eq!(
            routes,
            [
                number(NUMBER),
                number("700800900100299"),
                number("700800900100299")
            ]
        );
        let (first, second, third) = (message(&items[0]), message(&items[1]), message(&items[2]));
        assert_eq!(first.source.waba_id, WABA);
        assert_eq!(second.source.waba_id, "300100200300401");
        assert_eq!(first.text.as_deref(), Some("obrigado!"));
        assert_eq!(first.profile_name.as_deref(), Some("Ana Souza"));
        assert_eq!(second.text.as_deref(), Some("UNSUBSCRIBE"));
        assert_eq!(second.profile_name.as_deref(), Some("Mia Chen"));
        assert_eq!(
            second.source.display_phone_number.as_deref(),
            Some("15551239999")
        );
        assert_eq!(third.message_type, "unsupported");
        assert_eq!(third.text, None);
        assert_eq!(third.errors[0].code, 131051);
        assert_eq!(
            third.errors[0].details.as_deref(),
            Some("Message type is currently not supported.")
        );
        assert_eq!(third.raw["errors"][0]["code"], 131051);
        assert_eq!(items[2].occurred_at, at(1767226402));
    }

    #[test]
    fn media_message_keeps_the_whole_object() {
        let image = json!({"from": "447700900123", "id": "wamid.IMG", "timestamp": 1767225900,
            "type": "image", "image": {"id": "media-1", "mime_type": "image/jpeg"}, "extra": [1]});
        let items = split_json(messages_body(
            json!({"metadata": metadata(), "messages": [image]}),
        ))
        .unwrap();
        let m = message(&items[0]);
        assert_eq!(m.message_type, "image");
        assert_eq!(m.raw, image);
        assert_eq!(m.timestamp, at(1767225900));
        assert_eq!(m.profile_name, None);
    }

    #[test]
    fn not_json_is_refused() {
        let result = split_webhook(b"{\"object\": ", RAW_SEQ);
        assert!(matches!(result, Err(SplitError::NotJson(_))), "{result:?}");
    }

    #[test]
    fn other_objects_and_shapes_are_unexpected() {
        let page = unexpected_text(split_json(json!({"object": "page", "entry": []})));
        assert!(page.contains("page"), "{page}");
        unexpected_text(split_json(json!([])));
        unexpected_text(split_json(json!({"entry": []})));
        let entry = unexpected_text(split_json(json!({"object": "whatsapp_business_account"})));
        assert!(entry.contains("entry"), "{entry}");
        let empty = split_json(json!({"object": "whatsapp_business_account", "entry": []}));
        assert!(empty.unwrap().is_empty());
    }

    #[test]
    fn a_message_without_id_fails_the_whole_body() {
        let body = messages_body(json!({"metadata": metadata(), "messages": [
            {"from": "1", "id": "wamid.OK", "timestamp": "1767225600", "type": "text", "text": {"body": "a"}},
            {"from": "1", "timestamp": "1767225600", "type": "text", "text": {"body": "b"}}]}));
        let what = unexpected_text(split_json(body));
        assert!(
            what.contains("entry[0].changes[0].value.messages[1].id"),
            "{what}"
        );
    }

    #[test]
    fn malformed_items_name_what_is_wrong() {
        let bad_time = messages_body(json!({"metadata": metadata(), "statuses": [
            {"id": "wamid.S", "status": "sent", "timestamp": "soon"}]}));
        assert!(unexpected_text(split_json(bad_time)).contains("statuses[0].timestamp"));
        let no_number = messages_body(json!({"metadata": {}, "statuses": [
            {"id": "wamid.S", "status": "sent", "timestamp": "1"}]}));
        assert!(unexpected_text(split_json(no_number)).contains("metadata.phone_number_id"));
        let bad_error = messages_body(json!({"metadata": metadata(), "statuses": [
            {"id": "wamid.S", "status": "failed", "timestamp": "1", "errors": [{"title": "x"}]}]}));
        assert!(unexpected_text(split_json(bad_error)).contains("errors[0].code"));
        let no_template_id = json!({"object": "whatsapp_business_account", "entry": [{"id": WABA,
            "time": 1, "changes": [{"field": "message_template_status_update",
            "value": {"event": "APPROVED"}}]}]});
        assert!(unexpected_text(split_json(no_template_id)).contains("message_template_id"));
    }

    #[test]
    fn unknown_fields_become_account_updates_with_the_raw_value() {
        let value = json!({"display_phone_number": "15551230000", "current_limit": "TIER_10K",
            "event": "UPGRADE"});
        let body = json!({"object": "whatsapp_business_account", "entry": [{"id": WABA,
            "time": 1767226600, "changes": [
                {"field": "phone_number_quality_update", "value": value},
                {"field": "some_future_field", "value": [1, 2]}]}]});
        let items = split_json(body).unwrap();
        assert_eq!(items.len(), 2);
        assert!(items.iter().all(|i| i.route == waba(WABA)));
        let quality = account(&items[0]);
        assert_eq!(quality.event.as_deref(), Some("UPGRADE"));
        assert_eq!(quality.raw, value);
        assert!(items[0]
            .dedup_key
            .starts_with("account:300100200300400:phone_number_quality_update:1767226600:"));
        let future = account(&items[1]);
        assert_eq!(
            (future.event.clone(), future.raw.clone()),
            (None, json!([1, 2]))
        );
        assert_eq!(future.source.field, "some_future_field");
    }

    #[test]
    fn template_fields_without_a_status_become_account_updates() {
        let value = json!({"message_template_id": 12345, "message_template_name": "t",
            "previous_category": "UTILITY", "new_category": "MARKETING"});
        let body = json!({"object": "whatsapp_business_account", "entry": [{"id": WABA,
            "changes": [{"field": "template_category_update", "value": value}]}]});
        let items = split_json(body).unwrap();
        let a = account(&items[0]);
        assert_eq!(a.raw, value);
        assert!(items[0]
            .dedup_key
            .starts_with("account:300100200300400:template_category_update:-:"));
    }

    #[test]
    fn template_id_as_text_and_missing_time_are_tolerated() {
        let body = json!({"object": "whatsapp_business_account", "entry": [{"id": WABA,
            "changes": [{"field": "message_template_status_update",
            "value": {"event": "APPROVED", "message_template_id": "77", "reason": null}}]}]});
        let items = split_json(body).unwrap();
        let DomainEvent::TemplateStatusUpdated(t) = &items[0].event else {
            panic!()
        };
        assert_eq!((t.template_id.as_str(), t.reason.clone()), ("77", None));
        assert!(items[0].dedup_key.starts_with("template:77:APPROVED:-:"));
    }

    #[test]
    fn a_messaging_value_with_nothing_recognisable_is_kept() {
        let errors = json!([{"code": 131000, "title": "Something went wrong"}]);
        let only_errors = messages_body(json!({"metadata": metadata(), "errors": errors}));
        let items = split_json(only_errors).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].route, waba(WABA));
        let a = account(&items[0]);
        assert_eq!(a.raw["errors"], errors);
        assert_eq!(a.source.phone_number_id.as_deref(), Some(NUMBER));

        let with_message = messages_body(json!({"metadata": metadata(), "errors": errors,
            "messages": [{"from": "1", "id": "wamid.M", "timestamp": "1", "type": "text"}]}));
        let items = split_json(with_message).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].route, number(NUMBER));
        assert_eq!(items[1].route, waba(WABA));

        let empty = split_json(messages_body(
            json!({"metadata": metadata(), "messages": []}),
        ));
        assert_eq!(empty.unwrap().len(), 1);
    }
}
