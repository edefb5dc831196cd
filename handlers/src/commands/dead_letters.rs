//! Operator actions on dead letters. A redrive is an event; the consumer that
//! failed picks it up and tries the event again (see the redrive reactor).

use wabridge_events::types::{DeadLetterDiscarded, DeadLetterRedriven, EventData};
use wabridge_projections::views::dead_letters;

use super::{Caller, CommandError, Ctx};

async fn open_letter(ctx: &Ctx, id: &str) -> Result<dead_letters::DeadLetter, CommandError> {
    let subject = DeadLetterRedriven::subject(ctx.log.namespace(), None, id);
    ctx.fresh("dead_letters", &subject).await?;
    let dl = dead_letters::get(&ctx.store, id)
        .await?
        .ok_or_else(|| CommandError::NotFound(format!("no dead letter {id}")))?;
    if dl.status != "open" {
        return Err(CommandError::Conflict(format!(
            "dead letter {id} is {}",
            dl.status
        )));
    }
    Ok(dl)
}

/// Asks the failed consumer to process the event again.
pub async fn redrive(ctx: &Ctx, caller: &Caller, id: &str) -> Result<(), CommandError> {
    open_letter(ctx, id).await?;
    let ev = ctx.event(None, caller, &DeadLetterRedriven { id: id.to_string() });
    ctx.append_and_wait(ev, &["dead_letters", "audit"]).await?;
    Ok(())
}

/// Gives up on a dead letter (the event stays in the log).
pub async fn discard(
    ctx: &Ctx,
    caller: &Caller,
    id: &str,
    reason: Option<String>,
) -> Result<(), CommandError> {
    open_letter(ctx, id).await?;
    let ev = ctx.event(
        None,
        caller,
        &DeadLetterDiscarded {
            id: id.to_string(),
            reason,
        },
    );
    ctx.append_and_wait(ev, &["dead_letters", "audit"]).await?;
    Ok(())
}
