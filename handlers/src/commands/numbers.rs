//! Claiming and releasing phone numbers, and attaching unrouted webhook items.
//!
//! Every claim and release lives on one global subject, the routing table
//! (`<ns>._.routing.numbers`), whatever the workspace: the optimistic-concurrency
//! check serialises competing claims (they are rare admin actions), and the webhook
//! processor learns with one look-up whether routing changed since its read model.

use wabridge_events::{
    types::{EventData, PhoneNumberClaimed, PhoneNumberReleased, UnroutedAssigned},
    DomainEvent, Envelope, NewEvent, Slug, Timestamp,
};
use wabridge_projections::views::{phone_numbers, unrouted};

use super::{Caller, CommandError, Ctx};
use wabridge_projections::views::webhook_items::{self, item_key};

/// Meta ids are digits; keep them to a sane length.
pub fn validate_id(what: &str, id: &str) -> Result<(), CommandError> {
    if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CommandError::Validation(format!(
            "{what} must be 1 to 32 digits"
        )));
    }
    Ok(())
}

/// The subject of the routing table (every claim and release).
pub fn routing_subject(ctx: &Ctx) -> String {
    phone_numbers::routing_subject(ctx.log.namespace())
}

fn event_for<T: EventData>(
    ctx: &Ctx,
    ws: &Slug,
    caller: &Caller,
    data: &T,
    expected: u64,
) -> NewEvent {
    let mut ev = ctx.event(Some(ws), caller, data);
    ev.expected_last_subject_seq = Some(expected);
    ev
}

/// Fails with `NotFound` unless the workspace holds the number (routing as of now).
pub async fn require_held(
    ctx: &Ctx,
    ws: &Slug,
    phone_number_id: &str,
) -> Result<phone_numbers::PhoneNumber, CommandError> {
    ctx.fresh("phone_numbers", &routing_subject(ctx)).await?;
    match phone_numbers::get(&ctx.store, phone_number_id).await? {
        Some(h) if h.workspace == ws.as_str() => Ok(h),
        _ => Err(CommandError::NotFound(format!(
            "workspace {ws} does not hold phone number {phone_number_id}"
        ))),
    }
}

/// `Conflict` unless the workspace may claim the number (routing as read): another
/// workspace holds it, or (when `waba_id` is given) another owns its WABA.
pub async fn claimable(
    ctx: &Ctx,
    ws: &Slug,
    phone_number_id: &str,
    waba_id: Option<&str>,
) -> Result<(), CommandError> {
    if let Some(holder) = phone_numbers::get(&ctx.store, phone_number_id).await? {
        if holder.workspace != ws.as_str() {
            return Err(CommandError::Conflict(format!(
                "phone number {phone_number_id} is held by another workspace"
            )));
        }
    }
    if let Some(waba_id) = waba_id {
        if let Some(owner) = phone_numbers::owner_of_waba(&ctx.store, waba_id).await? {
            if owner != ws.as_str() {
                return Err(CommandError::Conflict(format!(
                    "WABA {waba_id} belongs to another workspace; an operator can place numbers of it"
                )));
            }
        }
    }
    Ok(())
}

/// Routes a number's webhooks to the workspace; `Conflict` when another holds it, or
/// holds its WABA (a WABA belongs to the first workspace that claims one of its
/// numbers; an operator or a host command may place a number anywhere). Claiming a
/// number one already holds updates its details.
pub async fn claim(
    ctx: &Ctx,
    caller: &Caller,
    ws: &Slug,
    phone_number_id: &str,
    waba_id: &str,
    display_phone_number: &str,
) -> Result<phone_numbers::PhoneNumber, CommandError> {
    validate_id("phone_number_id", phone_number_id)?;
    validate_id("waba_id", waba_id)?;
    if display_phone_number.trim().is_empty() || display_phone_number.len() > 32 {
        return Err(CommandError::Validation(
            "display_phone_number must be 1 to 32 characters".into(),
        ));
    }
    super::workspaces::require(ctx, ws).await?;
    let seq = ctx.fresh("phone_numbers", &routing_subject(ctx)).await?;
    // Anyone can read a WABA id off a webhook or Meta's tools: a workspace key may not
    // claim into another tenant's WABA (and receive its account-level events).
    let waba = caller.role_limit.is_some().then_some(waba_id);
    claimable(ctx, ws, phone_number_id, waba).await?;
    let data = PhoneNumberClaimed {
        phone_number_id: phone_number_id.to_string(),
        waba_id: waba_id.to_string(),
        display_phone_number: display_phone_number.trim().to_string(),
    };
    ctx.append_and_wait(
        event_for(ctx, ws, caller, &data, seq),
        &["phone_numbers", "audit"],
    )
    .await?;
    phone_numbers::get(&ctx.store, phone_number_id)
        .await?
        .ok_or_else(|| CommandError::Internal(anyhow::anyhow!("claim not visible")))
}

/// Releases a number the workspace holds.
pub async fn release(
    ctx: &Ctx,
    caller: &Caller,
    ws: &Slug,
    phone_number_id: &str,
) -> Result<(), CommandError> {
    let seq = ctx.fresh("phone_numbers", &routing_subject(ctx)).await?;
    require_held(ctx, ws, phone_number_id).await?;
    let data = PhoneNumberReleased {
        phone_number_id: phone_number_id.to_string(),
    };
    ctx.append_and_wait(
        event_for(ctx, ws, caller, &data, seq),
        &["phone_numbers", "audit"],
    )
    .await?;
    Ok(())
}

/// Operator action (or Embedded Signup's proof of ownership): places a WABA in a
/// workspace, which from then on receives its account-level webhooks and may claim
/// its numbers.
pub async fn assign_waba(
    ctx: &Ctx,
    caller: &Caller,
    waba_id: &str,
    ws: &Slug,
) -> Result<(), CommandError> {
    validate_id("waba_id", waba_id)?;
    if caller.role_limit.is_some() {
        return Err(CommandError::Forbidden(
            "only operators assign WABAs".into(),
        ));
    }
    super::workspaces::require(ctx, ws).await?;
    let seq = ctx.fresh("phone_numbers", &routing_subject(ctx)).await?;
    let data = wabridge_events::types::WabaAssigned {
        waba_id: waba_id.to_string(),
        workspace: ws.clone(),
    };
    ctx.append_and_wait(
        event_for(ctx, ws, caller, &data, seq),
        &["phone_numbers", "audit"],
    )
    .await?;
    Ok(())
}

/// Operator action: attaches every waiting unrouted item of a number to a workspace
/// (each becomes the domain event it would have been). Idempotent per item.
pub async fn assign_unrouted(
    ctx: &Ctx,
    caller: &Caller,
    phone_number_id: &str,
    ws: &Slug,
) -> Result<u64, CommandError> {
    super::workspaces::require(ctx, ws).await?;
    let head = ctx
        .log
        .last_seq(wabridge_events::StreamKind::Domain)
        .await?;
    ctx.wait("unrouted", head).await?;
    let (items, through_seq) = unrouted::pending_through(&ctx.store, phone_number_id).await?;
    if items.is_empty() {
        return Err(CommandError::NotFound(format!(
            "no unrouted items for phone number {phone_number_id}"
        )));
    }
    let consent = crate::consent::current(ctx, ws).await?;
    let mut count = 0;
    for item in &items {
        let key = item_key(Some(ws.as_str()), &item.dedup_key);
        let data: serde_json::Value =
            serde_json::from_str(&item.data).map_err(|e| CommandError::Internal(e.into()))?;
        // The subject comes from the event's own type, as for a routed item.
        let event = DomainEvent::from_parts(&item.event_type, item.v as u16, data)
            .map_err(|e| CommandError::Internal(e.into()))?;
        let occurred =
            Timestamp::parse(&item.occurred_at).map_err(|e| CommandError::Internal(e.into()))?;
        let envelope = Envelope::new(
            &item.event_type,
            item.v as u16,
            Some(ws.clone()),
            caller.actor.clone(),
        )
        .occurred(occurred);
        ctx.log
            .append(NewEvent {
                subject: event.subject(ctx.log.namespace(), Some(ws)),
                envelope,
                payload: bytes::Bytes::from(item.data.clone().into_bytes()),
                // The key the webhook processor would use, so a later redelivery is not processed again.
                msg_id: Some(key.clone()),
                expected_last_subject_seq: None,
            })
            .await?;
        // What it says about consent, as the processor would have derived it: a
        // STOP that waited for its number to be claimed still opts the contact out.
        let mut keys = vec![key.clone()];
        for (i, derived) in crate::consent::detect::detect(&consent, &event)
            .into_iter()
            .enumerate()
        {
            let derived_key = format!("{key}#consent{i}");
            let mut ev =
                derived.to_new_event(ctx.log.namespace(), Some(ws.clone()), caller.actor.clone());
            ev.envelope = ev.envelope.occurred(occurred);
            ev.msg_id = Some(derived_key.clone());
            ctx.log.append(ev).await?;
            keys.push(derived_key);
        }
        let mut conn = ctx
            .store
            .pool
            .acquire()
            .await
            .map_err(|e| CommandError::Internal(e.into()))?;
        webhook_items::record(&mut conn, &keys, 0).await?;
        count += 1;
    }
    let data = UnroutedAssigned {
        phone_number_id: phone_number_id.to_string(),
        workspace: ws.clone(),
        items: count,
        through_seq,
    };
    let ev = ctx.event(Some(ws), caller, &data);
    ctx.append_and_wait(ev, &["unrouted", "audit"]).await?;
    Ok(count)
}
