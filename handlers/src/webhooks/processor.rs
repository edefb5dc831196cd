//! The webhook processor: a consumer of the raw stream that splits each body into
//! domain events, routed by phone number (or WABA) to the workspaces holding it.
//!
//! Processed once: every derived event has a natural key (wamid, wamid + status,
//! ...); the keys of a body are recorded with the processor's checkpoint in one
//! transaction, and each append uses the key as its dedup id, so a body stored
//! twice (a redelivery after the duplicate window) or processed twice (a crash
//! between append and commit) yields each domain event once.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use anyhow::Context;
use futures_util::{future::join_all, StreamExt};
use wabridge_events::{
    types::{EventData, UnroutedItem, WebhookUnrouted},
    Actor, DomainEvent, Envelope, NewEvent, ReadFrom, Slug, StoredEvent, StreamKind,
};
use wabridge_projections::{
    checkpoint,
    runner::{record_dead_letter, split_ready, MAX_ATTEMPTS},
    views::phone_numbers,
};

use super::split::{split_webhook, Route, WebhookItem};
use crate::commands::Ctx;

/// The processor's name (checkpoint, consumer, dead letters).
pub const NAME: &str = "webhook_processor";

/// The most raw events handled together (one routing refresh, one key look-up,
/// pipelined appends, one commit).
pub const CHUNK: usize = 256;

/// Follows the raw stream for ever.
pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    loop {
        let mut done = ctx.store.checkpoint(NAME).await?;
        let mut events = ctx
            .log
            .follow(StreamKind::Raw, "proc_webhooks", done + 1)
            .await?
            .ready_chunks(CHUNK);
        while let Some(items) = events.next().await {
            let (chunk, failed) = split_ready(items);
            handle_chunk(&ctx, chunk, &mut done).await?;
            if let Some(e) = failed {
                tracing::warn!(error = %e, "raw stream read failed; resubscribing");
                tokio::time::sleep(Duration::from_millis(500)).await;
                break;
            }
        }
    }
}

/// Processes raw events until the processor has caught up with the log's head.
pub async fn catch_up(ctx: &Ctx) -> anyhow::Result<()> {
    let head = ctx.log.last_seq(StreamKind::Raw).await?;
    let mut done = ctx.store.checkpoint(NAME).await?;
    while done < head {
        let chunk = ctx
            .log
            .read(StreamKind::Raw, ReadFrom::Seq(done + 1), None, CHUNK)
            .await?;
        if chunk.is_empty() {
            break;
        }
        handle_chunk(ctx, chunk, &mut done).await?;
    }
    Ok(())
}

/// Processes a chunk of raw events after `done` (the checkpoint, kept in memory by
/// the caller: this processor is its only writer) and moves `done` forward.
async fn handle_chunk(ctx: &Ctx, events: Vec<StoredEvent>, done: &mut u64) -> anyhow::Result<()> {
    let events: Vec<StoredEvent> = events.into_iter().filter(|e| e.seq > *done).collect();
    let Some(last) = events.last().map(|e| e.seq) else {
        return Ok(());
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        match process_chunk(ctx, &events).await {
            Ok(outcome) => {
                for (event, reason) in &outcome.unparsable {
                    record_dead_letter(&*ctx.log, NAME, event, reason, 1).await?;
                }
                commit(ctx, last, &outcome.keys).await?;
                *done = last;
                return Ok(());
            }
            Err(e) if attempt < MAX_ATTEMPTS => {
                tracing::warn!(first = events[0].seq, last, attempt, error = %format!("{e:#}"), "webhook processing failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            Err(e) if events.len() == 1 => {
                record_dead_letter(&*ctx.log, NAME, &events[0], &format!("{e:#}"), attempt).await?;
                commit(ctx, last, &[]).await?;
                *done = last;
                return Ok(());
            }
            Err(_) => {
                // Isolate the failing body: one event at a time.
                for event in events {
                    Box::pin(handle_chunk(ctx, vec![event], done)).await?;
                }
                return Ok(());
            }
        }
    }
}

/// The natural key of an item in a workspace (`None`: unrouted). The processor, the
/// operator's assignment and a redrive all record and dedup items by this key.
pub fn item_key(workspace: Option<&str>, dedup_key: &str) -> String {
    format!("{}|{dedup_key}", workspace.unwrap_or("unrouted"))
}

/// Records items as processed (`raw_seq`: the raw event they came from, 0 when
/// attached by the operator).
pub async fn record_processed(
    conn: &mut sqlx::AnyConnection,
    keys: &[String],
    raw_seq: u64,
) -> anyhow::Result<()> {
    for key in keys {
        sqlx::query("INSERT INTO webhook_items (dedup_key, raw_seq) VALUES ($1, $2) ON CONFLICT (dedup_key) DO NOTHING")
            .bind(key)
            .bind(raw_seq as i64)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn commit(ctx: &Ctx, seq: u64, keys: &[String]) -> anyhow::Result<()> {
    let mut tx = ctx.store.pool.begin().await?;
    record_processed(&mut tx, keys, seq).await?;
    if checkpoint::advance(&mut tx, NAME, seq).await? {
        tx.commit().await?;
    }
    ctx.progress.set(NAME, seq);
    Ok(())
}

/// Which of `keys` were processed before (one query per 500 keys).
async fn processed_keys(ctx: &Ctx, keys: &[&str]) -> anyhow::Result<HashSet<String>> {
    let mut found = HashSet::new();
    for chunk in keys.chunks(500) {
        let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT dedup_key FROM webhook_items WHERE dedup_key IN ({})",
            placeholders.join(", ")
        );
        let mut q = sqlx::query_scalar::<_, String>(&sql);
        for k in chunk {
            q = q.bind(*k);
        }
        found.extend(q.fetch_all(&ctx.store.reads).await?);
    }
    Ok(found)
}

/// What a chunk produced.
struct ChunkOutcome<'a> {
    /// Natural keys handled (appended now or before).
    keys: Vec<String>,
    /// Bodies that do not parse, with the reason: dead letters.
    unparsable: Vec<(&'a StoredEvent, String)>,
}

async fn process_chunk<'a>(
    ctx: &Ctx,
    events: &'a [StoredEvent],
) -> anyhow::Result<ChunkOutcome<'a>> {
    // Route against every claim made up to now.
    ctx.fresh(
        "phone_numbers",
        &crate::commands::numbers::routing_subject(ctx),
    )
    .await?;
    let mut unparsable = vec![];
    let mut planned: Vec<(String, NewEvent)> = vec![];
    let mut routes = HashMap::new();
    for raw in events {
        let items = match split_webhook(&raw.payload, raw.seq) {
            Ok(items) => items,
            Err(e) => {
                unparsable.push((raw, e.to_string()));
                continue;
            }
        };
        for item in items {
            for (ws, key) in targets(ctx, &item, &mut routes).await? {
                let new = match &ws {
                    Some(ws) => routed_event(ctx, raw, &item, ws, &key)?,
                    None => unrouted_event(ctx, raw, &item, &key)?,
                };
                planned.push((key, new));
            }
        }
    }
    let keys: Vec<&str> = planned.iter().map(|(k, _)| k.as_str()).collect();
    let mut skip = processed_keys(ctx, &keys).await?;
    let mut appends = vec![];
    for (key, new) in &planned {
        // A body stored twice in one chunk yields its items once.
        if skip.insert(key.clone()) {
            appends.push(ctx.log.append(new.clone()));
        }
    }
    // Issued in order, acknowledged together: one round trip (or group commit)
    // for the chunk instead of one per item.
    for result in join_all(appends).await {
        result.context("appending a webhook item")?;
    }
    Ok(ChunkOutcome {
        keys: planned.into_iter().map(|(k, _)| k).collect(),
        unparsable,
    })
}

/// Splits and appends one raw webhook's items; returns the natural keys handled.
/// Safe to run again for the same event (redrive).
pub async fn process(ctx: &Ctx, raw: &StoredEvent) -> anyhow::Result<Vec<String>> {
    let outcome = process_chunk(ctx, std::slice::from_ref(raw)).await?;
    if let Some((_, reason)) = outcome.unparsable.first() {
        anyhow::bail!("{reason}");
    }
    Ok(outcome.keys)
}

/// The workspaces an item goes to (`None` = unrouted), each with its natural key.
async fn targets(
    ctx: &Ctx,
    item: &WebhookItem,
    routes: &mut HashMap<Route, Vec<String>>,
) -> anyhow::Result<Vec<(Option<Slug>, String)>> {
    if !routes.contains_key(&item.route) {
        let wss = match &item.route {
            Route::PhoneNumber(id) => phone_numbers::get(&ctx.store, id)
                .await?
                .map(|p| p.workspace)
                .into_iter()
                .collect(),
            Route::Waba(id) => phone_numbers::workspaces_of_waba(&ctx.store, id).await?,
        };
        routes.insert(item.route.clone(), wss);
    }
    let wss = &routes[&item.route];
    if wss.is_empty() {
        return Ok(vec![(None, item_key(None, &item.dedup_key))]);
    }
    wss.iter()
        .map(|ws| Ok((Some(Slug::parse(ws)?), item_key(Some(ws), &item.dedup_key))))
        .collect()
}

fn parts<T: EventData>(
    data: &T,
) -> anyhow::Result<(&'static str, u16, &'static str, String, serde_json::Value)> {
    Ok((
        T::TYPE,
        T::VERSION,
        T::CATEGORY,
        data.aggregate(),
        serde_json::to_value(data)?,
    ))
}

/// Type, version, category, aggregate and JSON data of a webhook-derived event.
fn event_parts(
    event: &DomainEvent,
) -> anyhow::Result<(&'static str, u16, &'static str, String, serde_json::Value)> {
    match event {
        DomainEvent::MessageReceived(d) => parts(d),
        DomainEvent::MessageStatusUpdated(d) => parts(d),
        DomainEvent::ContactMarketingPreference(d) => parts(d),
        DomainEvent::TemplateStatusUpdated(d) => parts(d),
        DomainEvent::AccountUpdated(d) => parts(d),
        other => anyhow::bail!("not a webhook item: {other:?}"),
    }
}

fn actor() -> Actor {
    Actor::system(NAME)
}

fn routed_event(
    ctx: &Ctx,
    raw: &StoredEvent,
    item: &WebhookItem,
    ws: &Slug,
    key: &str,
) -> anyhow::Result<NewEvent> {
    let (ty, v, category, aggregate, data) = event_parts(&item.event)?;
    let envelope = Envelope::new(ty, v, Some(ws.clone()), actor())
        .caused_by(&raw.envelope)
        .occurred(item.occurred_at);
    Ok(NewEvent {
        subject: ctx
            .log
            .namespace()
            .domain_subject(Some(ws), category, &aggregate),
        envelope,
        payload: serde_json::to_vec(&data)?.into(),
        msg_id: Some(key.to_string()),
        expected_last_subject_seq: None,
    })
}

fn unrouted_event(
    ctx: &Ctx,
    raw: &StoredEvent,
    item: &WebhookItem,
    key: &str,
) -> anyhow::Result<NewEvent> {
    let (ty, v, _, _, data) = event_parts(&item.event)?;
    let (phone_number_id, waba_id) = match &item.route {
        Route::PhoneNumber(id) => (id.clone(), source_waba(&data)),
        Route::Waba(id) => (String::new(), id.clone()),
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
