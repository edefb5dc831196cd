//! The redrive reactor: when the operator redrives a dead letter
//! (`dead_letter.redriven`), the consumer that failed processes the event again;
//! success appends `dead_letter.resolved`, failure records the dead letter again.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use futures_util::StreamExt;
use wabridge_events::{
    types::{new_event, DeadLetterRecorded, DeadLetterResolved},
    Actor, DomainEvent, ReadFrom, StoredEvent, StreamKind,
};
use wabridge_projections::{checkpoint, views::dead_letters, Projection};

use crate::{commands::Ctx, webhooks::processor};

/// The reactor's name (checkpoint key).
pub const NAME: &str = "redrive";

/// Follows the domain stream for redrive requests, for ever.
pub async fn run(ctx: Ctx, projections: Vec<Arc<dyn Projection>>) -> anyhow::Result<()> {
    loop {
        let from = ctx.store.checkpoint(NAME).await? + 1;
        let mut events = ctx.log.follow(StreamKind::Domain, "redrive", from).await?;
        while let Some(item) = events.next().await {
            let Ok(event) = item else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                break;
            };
            if event.envelope.event_type == "dead_letter.redriven" {
                if let Ok(DomainEvent::DeadLetterRedriven(r)) =
                    DomainEvent::decode(&event.envelope, &event.payload)
                {
                    redrive(&ctx, &projections, &event, &r.id).await?;
                }
            }
            let mut tx = ctx.store.pool.begin().await?;
            if checkpoint::advance(&mut tx, NAME, event.seq).await? {
                tx.commit().await?;
            }
            ctx.progress.set(NAME, event.seq);
        }
    }
}

async fn failed_event(ctx: &Ctx, stream: StreamKind, seq: u64) -> anyhow::Result<StoredEvent> {
    ctx.log
        .read(stream, ReadFrom::Seq(seq), None, 1)
        .await?
        .into_iter()
        .find(|e| e.seq == seq)
        .with_context(|| format!("{} event {seq} not found", stream.as_str()))
}

async fn retry(
    ctx: &Ctx,
    projections: &[Arc<dyn Projection>],
    consumer: &str,
    event: &StoredEvent,
) -> anyhow::Result<()> {
    if consumer == processor::NAME {
        let keys = processor::process(ctx, event).await?;
        let mut conn = ctx.store.pool.acquire().await?;
        return processor::record_processed(&mut conn, &keys, event.seq).await;
    }
    let projection = projections
        .iter()
        .find(|p| p.name() == consumer)
        .with_context(|| format!("unknown consumer {consumer}"))?;
    let mut tx = ctx.store.pool.begin().await?;
    projection.apply(&mut tx, event).await?;
    tx.commit().await?;
    Ok(())
}

async fn redrive(
    ctx: &Ctx,
    projections: &[Arc<dyn Projection>],
    request: &StoredEvent,
    id: &str,
) -> anyhow::Result<()> {
    ctx.wait("dead_letters", request.seq).await?;
    let Some(dl) = dead_letters::get(&ctx.store, id).await? else {
        tracing::warn!(id, "redrive of an unknown dead letter");
        return Ok(());
    };
    let stream = StreamKind::parse(&dl.stream).context("dead letter stream")?;
    let event = failed_event(ctx, stream, dl.seq as u64).await?;
    let actor = Actor::system(NAME);
    let outcome = retry(ctx, projections, &dl.consumer, &event).await;
    let mut new = match &outcome {
        Ok(()) => new_event(
            ctx.log.namespace(),
            None,
            actor,
            &DeadLetterResolved { id: id.to_string() },
        ),
        Err(e) => {
            let data = DeadLetterRecorded {
                id: id.to_string(),
                consumer: dl.consumer.clone(),
                stream: dl.stream.clone(),
                seq: dl.seq as u64,
                event_type: dl.event_type.clone(),
                reason: format!("{e:#}").chars().take(2000).collect(),
                attempts: 1,
            };
            new_event(ctx.log.namespace(), None, actor, &data)
        }
    };
    new.envelope = new.envelope.caused_by(&request.envelope);
    new.msg_id = Some(format!("redrive:{id}:{}", request.seq));
    ctx.log.append(new).await?;
    Ok(())
}
