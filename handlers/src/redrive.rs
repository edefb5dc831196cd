//! The redrive reactor: when the operator redrives a dead letter
//! (`dead_letter.redriven`), the consumer that failed handles the event again through
//! the driver's guarded apply; success appends `dead_letter.resolved`, failure
//! records the dead letter again. A request that cannot be carried out (the failed
//! event cannot be read, the consumer is unknown) becomes a dead letter of its own,
//! so it never blocks the redrives after it.

use std::sync::Arc;

use anyhow::Context;
use sqlx::AnyConnection;
use wabridge_events::{
    types::{new_event, DeadLetterRecorded, DeadLetterResolved},
    Actor, DomainEvent, ReadFrom, StoredEvent, StreamKind,
};
use wabridge_projections::{
    driver::{is_unavailable, record_dead_letter, Driver, Follower, Reactor, Staged},
    views::dead_letters,
};

use crate::commands::Ctx;

/// The reactor's name (checkpoint key, subscription).
pub const NAME: &str = "redrive";

/// The redrive reactor.
pub struct Redrive {
    ctx: Ctx,
    driver: Driver,
    /// Every consumer a dead letter may name.
    consumers: Vec<Arc<dyn Reactor>>,
}

/// The follower of the domain stream for redrive requests; `consumers` are the
/// reactors a dead letter may name.
pub fn follower(ctx: Ctx, driver: Driver, consumers: Vec<Arc<dyn Reactor>>) -> Follower {
    Follower {
        consumer: NAME,
        stream: StreamKind::Domain,
        reactors: vec![Arc::new(Redrive {
            ctx,
            driver,
            consumers,
        })],
    }
}

#[async_trait::async_trait]
impl Reactor for Redrive {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn stage(&self, batch: &[StoredEvent]) -> anyhow::Result<Staged> {
        for event in batch {
            if event.envelope.event_type != "dead_letter.redriven" {
                continue;
            }
            if let Ok(DomainEvent::DeadLetterRedriven(r)) =
                DomainEvent::decode(&event.envelope, &event.payload)
            {
                self.redrive(event, &r.id).await?;
            }
        }
        Ok(Staged::none())
    }

    async fn record(
        &self,
        _tx: &mut AnyConnection,
        _batch: &[StoredEvent],
        _staged: Staged,
    ) -> anyhow::Result<()> {
        Ok(())
    }
}

impl Redrive {
    async fn failed_event(&self, stream: StreamKind, seq: u64) -> anyhow::Result<StoredEvent> {
        self.ctx
            .log
            .read(stream, ReadFrom::Seq(seq), None, 1)
            .await?
            .into_iter()
            .find(|e| e.seq == seq)
            .with_context(|| format!("{} event {seq} is not in the log", stream.as_str()))
    }

    async fn redrive(&self, request: &StoredEvent, id: &str) -> anyhow::Result<()> {
        self.ctx.wait("dead_letters", request.seq).await?;
        let Some(dl) = dead_letters::get(&self.ctx.store, id).await? else {
            tracing::warn!(id, "redrive of an unknown dead letter");
            return Ok(());
        };
        let target = async {
            let stream = StreamKind::parse(&dl.stream)
                .with_context(|| format!("dead letter {id} names stream {:?}", dl.stream))?;
            let event = self.failed_event(stream, dl.seq as u64).await?;
            let consumer = self
                .consumers
                .iter()
                .find(|c| c.name() == dl.consumer)
                .with_context(|| {
                    format!("dead letter {id} names unknown consumer {}", dl.consumer)
                })?;
            anyhow::Ok((event, consumer))
        }
        .await;
        let (event, consumer) = match target {
            Ok(t) => t,
            Err(e) if is_unavailable(&e) => return Err(e),
            Err(e) => {
                // This request cannot be carried out: it becomes a dead letter itself.
                return record_dead_letter(&*self.ctx.log, NAME, request, &format!("{e:#}"), 1)
                    .await;
            }
        };
        let outcome = self.driver.redrive(&**consumer, &event).await;
        let actor = Actor::system(NAME);
        let mut new = match &outcome {
            Ok(_) => new_event(
                self.ctx.log.namespace(),
                None,
                actor,
                &DeadLetterResolved { id: id.to_string() },
            ),
            Err(e) if is_unavailable(e) => return outcome.map(|_| ()),
            Err(e) => {
                let data = DeadLetterRecorded {
                    id: id.to_string(),
                    consumer: dl.consumer.clone(),
                    stream: dl.stream.clone(),
                    seq: dl.seq as u64,
                    event_type: dl.event_type.clone(),
                    reason: format!("{e:#}").chars().take(2000).collect(),
                    attempts: 1,
                    item: None,
                };
                new_event(self.ctx.log.namespace(), None, actor, &data)
            }
        };
        new.envelope = new.envelope.caused_by(&request.envelope);
        new.msg_id = Some(format!("redrive:{id}:{}", request.seq));
        self.ctx.log.append(new).await?;
        Ok(())
    }
}
