//! The webhook processor: a consumer of the raw stream that splits each body into
//! domain events, routed by phone number (or WABA) to the workspaces holding it.
//!
//! Processed once: every derived event has a natural key (wamid, wamid + status,
//! ...); the keys of a body are recorded with the processor's checkpoint in one
//! transaction, and each append uses the key as its dedup id, so a body stored
//! twice (a redelivery after the duplicate window) or processed twice (a crash
//! between append and commit) yields each domain event once.

use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use wabridge_events::{
    types::{EventData, UnroutedItem, WebhookUnrouted},
    Actor, DomainEvent, Envelope, NewEvent, ReadFrom, Slug, StoredEvent, StreamKind,
};
use wabridge_projections::{
    checkpoint,
    runner::{record_dead_letter, MAX_ATTEMPTS},
    views::phone_numbers,
};

use super::split::{split_webhook, Route, WebhookItem};
use crate::commands::Ctx;

/// The processor's name (checkpoint, consumer, dead letters).
pub const NAME: &str = "webhook_processor";

/// Follows the raw stream for ever.
pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    loop {
        let from = ctx.store.checkpoint(NAME).await? + 1;
        let mut events = ctx
            .log
            .follow(StreamKind::Raw, "proc_webhooks", from)
            .await?;
        while let Some(item) = events.next().await {
            match item {
                Ok(event) => handle(&ctx, &event).await?,
                Err(e) => {
                    tracing::warn!(error = %e, "raw stream read failed; resubscribing");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            }
        }
    }
}

/// Processes raw events until the processor has caught up with the log's head.
pub async fn catch_up(ctx: &Ctx) -> anyhow::Result<()> {
    let head = ctx.log.last_seq(StreamKind::Raw).await?;
    loop {
        let from = ctx.store.checkpoint(NAME).await? + 1;
        if from > head {
            return Ok(());
        }
        for event in ctx
            .log
            .read(StreamKind::Raw, ReadFrom::Seq(from), None, 200)
            .await?
        {
            handle(ctx, &event).await?;
        }
    }
}

async fn handle(ctx: &Ctx, event: &StoredEvent) -> anyhow::Result<()> {
    if ctx.store.checkpoint(NAME).await? >= event.seq {
        return Ok(());
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        match process(ctx, event).await {
            Ok(keys) => return commit(ctx, event.seq, &keys).await,
            Err(e) if attempt < MAX_ATTEMPTS && !is_permanent(&e) => {
                tracing::warn!(seq = event.seq, attempt, error = %format!("{e:#}"), "webhook processing failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            Err(e) => {
                record_dead_letter(&*ctx.log, NAME, event, &format!("{e:#}"), attempt).await?;
                return commit(ctx, event.seq, &[]).await;
            }
        }
    }
}

/// A body that does not parse will not parse next time either.
fn is_permanent(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<super::split::SplitError>().is_some())
}

async fn commit(ctx: &Ctx, seq: u64, keys: &[String]) -> anyhow::Result<()> {
    let mut tx = ctx.store.pool.begin().await?;
    for key in keys {
        sqlx::query("INSERT INTO webhook_items (dedup_key, raw_seq) VALUES ($1, $2) ON CONFLICT (dedup_key) DO NOTHING")
            .bind(key)
            .bind(seq as i64)
            .execute(&mut *tx)
            .await?;
    }
    if checkpoint::advance(&mut tx, NAME, seq).await? {
        tx.commit().await?;
    }
    ctx.progress.set(NAME, seq);
    Ok(())
}

async fn already_processed(ctx: &Ctx, key: &str) -> anyhow::Result<bool> {
    let found: Option<i64> =
        sqlx::query_scalar("SELECT raw_seq FROM webhook_items WHERE dedup_key = $1")
            .bind(key)
            .fetch_optional(&ctx.store.pool)
            .await?;
    Ok(found.is_some())
}

/// Splits and appends one raw webhook's items; returns the natural keys handled.
/// Safe to run again for the same event (redrive).
pub async fn process(ctx: &Ctx, raw: &StoredEvent) -> anyhow::Result<Vec<String>> {
    let items = split_webhook(&raw.payload, raw.seq)?;
    // Route against claims made up to now.
    let head = ctx.log.last_seq(StreamKind::Domain).await?;
    ctx.wait("phone_numbers", head).await?;
    let mut keys = Vec::with_capacity(items.len());
    for item in items {
        for (ws, key) in targets(ctx, &item).await? {
            if !already_processed(ctx, &key).await? {
                let new = match &ws {
                    Some(ws) => routed_event(ctx, raw, &item, ws, &key)?,
                    None => unrouted_event(ctx, raw, &item, &key)?,
                };
                ctx.log
                    .append(new)
                    .await
                    .context("appending a webhook item")?;
            }
            keys.push(key);
        }
    }
    Ok(keys)
}

/// The workspaces an item goes to (`None` = unrouted), each with its natural key.
async fn targets(ctx: &Ctx, item: &WebhookItem) -> anyhow::Result<Vec<(Option<Slug>, String)>> {
    let wss = match &item.route {
        Route::PhoneNumber(id) => phone_numbers::get(&ctx.store, id)
            .await?
            .map(|p| p.workspace)
            .into_iter()
            .collect(),
        Route::Waba(id) => phone_numbers::workspaces_of_waba(&ctx.store, id).await?,
    };
    if wss.is_empty() {
        return Ok(vec![(None, format!("unrouted|{}", item.dedup_key))]);
    }
    wss.into_iter()
        .map(|ws| Ok((Some(Slug::parse(&ws)?), format!("{ws}|{}", item.dedup_key))))
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
