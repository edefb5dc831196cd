//! The webhook processor: a consumer of the raw stream that splits each body into
//! domain events, routed by phone number (or WABA) to the workspaces holding it.
//!
//! Processed once: every derived event has a natural key (wamid, wamid + status,
//! ...); the keys of a body are recorded with the processor's checkpoint in one
//! transaction, and each append uses the key as its dedup id, so a body stored
//! twice (a redelivery after the duplicate window) or processed twice (a crash
//! between append and commit) yields each domain event once.

use std::{collections::HashMap, sync::Arc};

use anyhow::Context;
use futures_util::future::join_all;
use sqlx::AnyConnection;
use wabridge_events::{
    types::{UnroutedItem, WebhookUnrouted},
    Actor, DomainEvent, NewEvent, Slug, StoredEvent, StreamKind,
};
use wabridge_projections::{
    driver::{record_dead_letter, record_item_dead_letter, Follower, Reactor, Staged},
    views::{
        phone_numbers,
        webhook_items::{self, item_key},
    },
};

use super::remembered::Remembered;
use super::split::{split_webhook, Route, WebhookItem};
use crate::commands::Ctx;
use crate::consent::detect::detect;

/// The processor's name (checkpoint, dead letters).
pub const NAME: &str = "webhook_processor";

/// Its subscription to the raw stream.
pub const CONSUMER: &str = "proc_webhooks";

/// The webhook processor, as a reactor on the raw stream.
pub struct Processor {
    ctx: Ctx,
    /// When true, a body that cannot be split fails the stage (a redrive must know);
    /// else it becomes a dead letter at once and its neighbours go on.
    strict: bool,
    /// Routes and consent settings from earlier chunks, while they hold.
    memory: Memory,
}

/// What the processor remembers between chunks (see [`Remembered`]).
#[derive(Default)]
struct Memory {
    /// By route, valid at the routing subject's last sequence.
    routes: Remembered<Route, Target>,
    /// By workspace, valid at the sequence covering their settings subjects.
    consents: Remembered<Slug, crate::consent::detect::Consent>,
}

impl Processor {
    /// The processor of the live follower.
    pub fn new(ctx: Ctx) -> Self {
        Processor {
            ctx,
            strict: false,
            memory: Memory::default(),
        }
    }

    /// The processor a redrive uses: an unsplittable body is an error.
    pub fn strict(ctx: Ctx) -> Self {
        Processor {
            strict: true,
            ..Processor::new(ctx)
        }
    }
}

/// The raw stream's follower: the processor alone.
pub fn follower(ctx: Ctx) -> Follower {
    Follower {
        consumer: CONSUMER,
        stream: StreamKind::Raw,
        reactors: vec![Arc::new(Processor::new(ctx))],
    }
}

#[async_trait::async_trait]
impl Reactor for Processor {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Splits, routes and appends the items of every body (appends dedup by each
    /// item's natural key, so running this again is harmless).
    async fn stage(&self, batch: &[StoredEvent]) -> anyhow::Result<Staged> {
        let outcome = process_chunk(&self.ctx, &self.memory, batch).await?;
        for (event, item, reason) in &outcome.unparsable {
            if self.strict {
                match item {
                    Some(path) => anyhow::bail!("{path}: {reason}"),
                    None => anyhow::bail!("{reason}"),
                }
            }
            match item {
                Some(path) => {
                    record_item_dead_letter(&*self.ctx.log, NAME, event, path, reason).await?
                }
                None => record_dead_letter(&*self.ctx.log, NAME, event, reason, 1).await?,
            }
        }
        Ok(Staged::new(outcome.keys))
    }

    /// Records the natural keys handled, with the checkpoint.
    async fn record(
        &self,
        tx: &mut AnyConnection,
        batch: &[StoredEvent],
        staged: Staged,
    ) -> anyhow::Result<()> {
        let keys: Vec<String> = staged.take().unwrap_or_default();
        let last = batch.last().map_or(0, |e| e.seq);
        webhook_items::record(tx, &keys, last).await
    }
}

/// What a chunk produced.
struct ChunkOutcome<'a> {
    /// Natural keys handled (appended now or before).
    keys: Vec<String>,
    /// Bodies that are not JSON (no path), and items that cannot be understood (their
    /// path), with the reason: dead letters.
    unparsable: Vec<(&'a StoredEvent, Option<String>, String)>,
}

async fn process_chunk<'a>(
    ctx: &Ctx,
    memory: &Memory,
    events: &'a [StoredEvent],
) -> anyhow::Result<ChunkOutcome<'a>> {
    // Route against every claim made up to now.
    let routing_at = ctx
        .fresh(
            "phone_numbers",
            &phone_numbers::routing_subject(ctx.log.namespace()),
        )
        .await?;
    let mut unparsable = vec![];
    // First every item's route, so that the consent settings of every workspace the
    // chunk reaches are looked up together below, not one round trip after another.
    let mut routed = vec![];
    let mut routes = memory.routes.take(routing_at);
    for raw in events {
        let split = match split_webhook(&raw.payload, raw.seq) {
            Ok(split) => split,
            Err(e) => {
                unparsable.push((raw, None, e.to_string()));
                continue;
            }
        };
        for failure in split.failures {
            unparsable.push((raw, Some(failure.path), failure.reason));
        }
        for mut item in split.items {
            let (ws, key, number) = target(ctx, &item, &mut routes).await?;
            item.event = with_number(&item.event, number);
            routed.push((raw, item, ws, key));
        }
    }
    let (consents_at, mut consents) = load_consents(
        ctx,
        &memory.consents,
        routed.iter().filter_map(|(.., ws, _)| ws.as_ref()),
    )
    .await?;
    // Each with the contacts it decides consent for (see `append_in_order`).
    let mut planned: Vec<(String, NewEvent, Vec<String>)> = vec![];
    for (raw, item, ws, key) in routed {
        for (i, (ws, new)) in uninstalled(ctx, &item).await?.into_iter().enumerate() {
            let derived_key = format!("{key}#token{i}");
            planned.push((
                derived_key.clone(),
                routed_event(ctx, raw, &new, &item, &ws, &derived_key),
                vec![],
            ));
        }
        let Some(ws) = ws else {
            let new = unrouted_event(ctx, raw, &item, &key)?;
            planned.push((key, new, vec![]));
            continue;
        };
        let (own, derived) = routed_item(ctx, raw, &item, &ws, &key, &mut consents).await?;
        planned.push((key, own, vec![]));
        planned.extend(
            derived
                .into_iter()
                .map(|(k, event, new)| (k, new, consent_contacts(&ws, &event))),
        );
    }
    let keys: Vec<&str> = planned.iter().map(|(k, ..)| k.as_str()).collect();
    let mut skip = webhook_items::processed(&ctx.store, &keys).await?;
    let mut appends = vec![];
    for (key, new, contacts) in &planned {
        // A body stored twice in one chunk yields its items once.
        if skip.insert(key.clone()) {
            appends.push((new, contacts.as_slice()));
        }
    }
    append_in_order(ctx, appends).await?;
    memory.routes.keep(routing_at, routes);
    memory.consents.keep(consents_at, consents);
    Ok(ChunkOutcome {
        keys: planned.into_iter().map(|(k, ..)| k).collect(),
        unparsable,
    })
}

/// The contacts a consent decision is about, by each id it names (within `ws`);
/// none for other events.
pub(super) fn consent_contacts(ws: &Slug, event: &DomainEvent) -> Vec<String> {
    let contact = match event {
        DomainEvent::ContactOptedOut(e) => &e.contact,
        DomainEvent::ContactOptedIn(e) => &e.contact,
        DomainEvent::ContactHelpRequested(e) => &e.contact,
        DomainEvent::ContactOptoutSuspected(e) => &e.contact,
        _ => return vec![],
    };
    [&contact.wa_id, &contact.user_id]
        .into_iter()
        .flatten()
        .map(|id| format!("{ws}/{id}"))
        .collect()
}

/// Appends a chunk's events in their order, each with the contacts it decides
/// consent for. They go out in segments: a segment's appends are issued together
/// and acknowledged together (one round trip, or group commit, for many events
/// instead of one each), and a new segment, issued once the one before is stored,
/// starts at a consent decision about a contact the segment already decides for.
///
/// An append that fails fails the chunk, which is retried (the appends deduplicated
/// by their ids); the appends issued beside it may have been stored meanwhile. A
/// later decision about the same contact must never be among those, or the retry
/// would store the earlier decision after it: a STOP then a START would end opted
/// out. (Seen: a consent test under the whole suite's load found three contacts'
/// opt-ins stored before the STOPs that came first, when the chunk went out in one
/// piece.) A contact's second decision in one chunk is rare, so most chunks are
/// still one segment.
pub(super) async fn append_in_order(
    ctx: &Ctx,
    events: Vec<(&NewEvent, &[String])>,
) -> anyhow::Result<()> {
    for segment in segments(&events) {
        let appends = segment
            .iter()
            .map(|(new, _)| ctx.log.append((*new).clone()));
        for result in join_all(appends).await {
            result.context("appending a webhook item")?;
        }
    }
    Ok(())
}

/// `events` (each with the contacts it decides for) cut into segments, in order: a
/// new segment starts at a decision about a contact the current one decides for.
fn segments<'a, T>(events: &'a [(T, &[String])]) -> Vec<&'a [(T, &'a [String])]> {
    let mut out = vec![];
    let mut start = 0;
    let mut decided: std::collections::HashSet<&str> = Default::default();
    for (i, (_, contacts)) in events.iter().enumerate() {
        if contacts.iter().any(|c| decided.contains(c.as_str())) {
            out.push(&events[start..i]);
            start = i;
            decided.clear();
        }
        decided.extend(contacts.iter().map(String::as_str));
    }
    if start < events.len() {
        out.push(&events[start..]);
    }
    out
}

/// Workspaces' consent configurations, by workspace (a chunk's, or a reprocessing's).
pub(super) type Consents = HashMap<Slug, crate::consent::detect::Consent>;

/// The consent settings of each of `workspaces`, made fresh together (see
/// [`crate::consent::fresh_for`]: one look-up of the log for all of them), read
/// from the read model where the last chunk's do not still hold; with the sequence
/// they hold at.
async fn load_consents<'w>(
    ctx: &Ctx,
    remembered: &Remembered<Slug, crate::consent::detect::Consent>,
    workspaces: impl Iterator<Item = &'w Slug>,
) -> anyhow::Result<(u64, Consents)> {
    let wanted: std::collections::BTreeSet<Slug> = workspaces.cloned().collect();
    let at = crate::consent::fresh_for(ctx, &wanted).await?;
    let mut known = remembered.take(at);
    let missing: Vec<Slug> = wanted
        .into_iter()
        .filter(|ws| !known.contains_key(ws))
        .collect();
    if !missing.is_empty() {
        let read = crate::consent::read_for(ctx, missing.into_iter()).await?;
        known.extend(read);
    }
    Ok((at, known))
}

/// What an item routed to `ws` under `key` becomes: its own event, and what it says
/// about consent (derived in the same pass: a STOP is an opt-out as soon as its
/// message is), each of those with its natural key and the event it encodes.
pub(super) async fn routed_item(
    ctx: &Ctx,
    raw: &StoredEvent,
    item: &WebhookItem,
    ws: &Slug,
    key: &str,
    consents: &mut Consents,
) -> anyhow::Result<(NewEvent, Vec<(String, DomainEvent, NewEvent)>)> {
    if !consents.contains_key(ws) {
        let c = crate::consent::current(ctx, ws).await?;
        consents.insert(ws.clone(), c);
    }
    let own = routed_event(ctx, raw, &item.event, item, ws, key);
    let derived = detect(&consents[ws], &item.event)
        .into_iter()
        .enumerate()
        .map(|(i, event)| {
            let derived_key = format!("{key}#consent{i}");
            let new = routed_event(ctx, raw, &event, item, ws, &derived_key);
            (derived_key, event, new)
        })
        .collect();
    Ok((own, derived))
}

/// Whether an item is an account update saying the business removed the app.
pub(super) fn is_uninstall(event: &DomainEvent) -> bool {
    matches!(event, DomainEvent::AccountUpdated(a)
        if a.event.as_deref() == Some("PARTNER_APP_UNINSTALLED"))
}

/// `PARTNER_APP_UNINSTALLED`: the business took the app's access to its WABA away,
/// so every valid token of the WABA's numbers — held ones, and those of onboarding
/// sagas that have not routed their number yet — is marked invalid.
async fn uninstalled(ctx: &Ctx, item: &WebhookItem) -> anyhow::Result<Vec<(Slug, DomainEvent)>> {
    let DomainEvent::AccountUpdated(a) = &item.event else {
        return Ok(vec![]);
    };
    if !is_uninstall(&item.event) {
        return Ok(vec![]);
    }
    let waba = &a.source.waba_id;
    let mut targets: Vec<(String, String)> = phone_numbers::numbers_of_waba(&ctx.store, waba)
        .await?
        .into_iter()
        .map(|n| (n.workspace, n.phone_number_id))
        .collect();
    for saga in wabridge_projections::views::onboarding::of_waba(&ctx.store, waba).await? {
        targets.push((saga.workspace, saga.phone_number_id));
    }
    targets.sort();
    targets.dedup();
    let mut out = vec![];
    for (ws, number) in targets {
        let valid = wabridge_projections::views::tokens::get(&ctx.store, &ws, &number)
            .await?
            .is_some_and(|t| t.status == "valid");
        if !valid {
            continue;
        }
        out.push((
            Slug::parse(&ws)?,
            DomainEvent::TokenInvalidated(wabridge_events::types::TokenInvalidated {
                phone_number_id: number,
                reason: format!(
                    "PARTNER_APP_UNINSTALLED: the business removed the app's access to WABA {waba}"
                ),
            }),
        ));
    }
    Ok(out)
}

/// Where a route leads: the workspace (none: unrouted) and, for a display number,
/// the number it turned out to be.
type Target = Option<(String, Option<String>)>;

/// The workspace an item goes to (`None` = unrouted), with its natural key; an item
/// routed by display number learns its number id.
pub(super) async fn target(
    ctx: &Ctx,
    item: &WebhookItem,
    routes: &mut HashMap<Route, Target>,
) -> anyhow::Result<(Option<Slug>, String, Option<String>)> {
    if !routes.contains_key(&item.route) {
        let found = match &item.route {
            Route::PhoneNumber(id) => phone_numbers::get(&ctx.store, id)
                .await?
                .map(|p| (p.workspace, None)),
            Route::DisplayNumber { waba_id, digits } => {
                phone_numbers::by_display(&ctx.store, waba_id, digits)
                    .await?
                    .map(|p| (p.workspace, Some(p.phone_number_id)))
            }
            Route::Waba(id) => phone_numbers::owner_of_waba(&ctx.store, id)
                .await?
                .map(|ws| (ws, None)),
        };
        routes.insert(item.route.clone(), found);
    }
    Ok(match &routes[&item.route] {
        None => (None, item_key(None, &item.dedup_key), None),
        Some((ws, number)) => (
            Some(Slug::parse(ws)?),
            item_key(Some(ws), &item.dedup_key),
            number.clone(),
        ),
    })
}

/// An item routed by display number names the number it reached.
pub(super) fn with_number(event: &DomainEvent, number: Option<String>) -> DomainEvent {
    match (event, number) {
        (DomainEvent::NumberUpdated(n), Some(id)) => {
            let mut n = n.clone();
            n.source.phone_number_id = Some(id);
            DomainEvent::NumberUpdated(n)
        }
        (other, _) => other.clone(),
    }
}

fn actor() -> Actor {
    Actor::system(NAME)
}

/// The domain event of an item (or of what it says about consent), caused by its
/// raw webhook, keyed by its natural key.
fn routed_event(
    ctx: &Ctx,
    raw: &StoredEvent,
    event: &DomainEvent,
    item: &WebhookItem,
    ws: &Slug,
    key: &str,
) -> NewEvent {
    let mut new = event.to_new_event(ctx.log.namespace(), Some(ws.clone()), actor());
    new.envelope = new
        .envelope
        .caused_by(&raw.envelope)
        .occurred(item.occurred_at);
    new.msg_id = Some(key.to_string());
    new
}

fn unrouted_event(
    ctx: &Ctx,
    raw: &StoredEvent,
    item: &WebhookItem,
    key: &str,
) -> anyhow::Result<NewEvent> {
    let (ty, v, data) = (
        item.event.event_type(),
        item.event.version(),
        item.event.data_json(),
    );
    // The operator assigns waiting items by number (or by WABA, for items that name
    // none, or only a display number nobody holds).
    let (phone_number_id, waba_id) = match &item.route {
        Route::PhoneNumber(id) => (id.clone(), source_waba(&data)),
        Route::DisplayNumber { waba_id, .. } | Route::Waba(waba_id) => {
            (String::new(), waba_id.clone())
        }
    };
    let unrouted = WebhookUnrouted {
        phone_number_id: if phone_number_id.is_empty() {
            waba_id.clone()
        } else {
            phone_number_id
        },
        waba_id,
        item: UnroutedItem {
            event_type: ty.to_string(),
            v,
            data,
            occurred_at: item.occurred_at,
        },
        dedup_key: item.dedup_key.clone(),
    };
    let mut new = wabridge_events::types::new_event(ctx.log.namespace(), None, actor(), &unrouted);
    new.envelope = new
        .envelope
        .caused_by(&raw.envelope)
        .occurred(item.occurred_at);
    new.msg_id = Some(key.to_string());
    Ok(new)
}

fn source_waba(data: &serde_json::Value) -> String {
    data.pointer("/source/waba_id")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::segments;

    #[test]
    fn a_contacts_second_decision_starts_a_segment() {
        let (a, b) = (vec!["ws/a".to_string()], vec!["ws/b".to_string()]);
        let none: Vec<String> = vec![];
        // message, STOP from a, message, START from a, STOP from b, START from b.
        let events = [
            (0, none.as_slice()),
            (1, a.as_slice()),
            (2, none.as_slice()),
            (3, a.as_slice()),
            (4, b.as_slice()),
            (5, b.as_slice()),
        ];
        let cut: Vec<Vec<i32>> = segments(&events)
            .iter()
            .map(|s| s.iter().map(|(n, _)| *n).collect())
            .collect();
        assert_eq!(cut, [vec![0, 1, 2], vec![3, 4], vec![5]]);
        // Decisions about different contacts, and other events, stay together.
        let one = [(0, a.as_slice()), (1, b.as_slice()), (2, none.as_slice())];
        assert_eq!(segments(&one).len(), 1);
        assert!(segments::<i32>(&[]).is_empty());
    }
}
