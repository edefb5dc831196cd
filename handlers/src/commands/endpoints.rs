//! Outbound webhook endpoints: create (the signing secret is shown once), change,
//! pause, rotate the secret, delete; and redeliveries — one delivery, or every
//! event since a time.

use rand::RngCore;
use secrecy::SecretString;
use wabridge_events::{
    types::{
        DeliveryRedeliveryRequested, EndpointCreated, EndpointDeleted, EndpointRecoveryRequested,
        EndpointSecretRewrapped, EndpointSecretRotated, EndpointUpdated, EventData,
    },
    ReadFrom, Slug, StreamKind, Timestamp,
};
use wabridge_projections::views::endpoints::{self as view, Delivery, Endpoint};

use super::{Caller, CommandError, Ctx};
use crate::{
    delivery::{seal_context, sign, target},
    feed, vault,
};

/// How long a rotated-out secret still signs.
pub const PREVIOUS_SECRET_VALIDITY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Most endpoints per workspace.
pub const MAX_ENDPOINTS: usize = 100;

/// What a new endpoint is.
pub struct NewEndpoint {
    /// Where deliveries go.
    pub url: String,
    /// Event types (empty: every public type).
    pub types: Vec<String>,
    /// For people.
    pub description: Option<String>,
}

/// A change of an endpoint's settings (absent fields stay).
#[derive(Default)]
pub struct EndpointPatch {
    /// New URL.
    pub url: Option<String>,
    /// New types.
    pub types: Option<Vec<String>>,
    /// New description (`Some(None)` clears it).
    pub description: Option<Option<String>>,
    /// Pause (false) or resume (true; also re-enables an endpoint wabridge disabled).
    pub enabled: Option<bool>,
}

fn subject(ctx: &Ctx, ws: &Slug, id: &str) -> String {
    EndpointCreated::subject(ctx.log.namespace(), Some(ws), id)
}

fn check_types(types: &[String]) -> Result<(), CommandError> {
    if types.len() > feed::PUBLIC_TYPES.len() {
        return Err(CommandError::Validation(
            "types lists too many types".into(),
        ));
    }
    for t in types {
        if !feed::is_public(t) {
            return Err(CommandError::Validation(format!(
                "types: {t:?} is not an event type endpoints receive (see GET /v1/workspaces/{{ws}}/events: {})",
                feed::PUBLIC_TYPES.join(", ")
            )));
        }
    }
    Ok(())
}

fn check_description(d: &Option<String>) -> Result<(), CommandError> {
    match d {
        Some(d) if d.chars().count() > 500 || d.chars().any(|c| c.is_control()) => {
            Err(CommandError::Validation(
                "description: at most 500 characters, no control characters".into(),
            ))
        }
        _ => Ok(()),
    }
}

async fn check_url(url: &str, allow_private: bool) -> Result<(), CommandError> {
    target::check_url(url, allow_private)
        .await
        .map(|_| ())
        .map_err(|e| CommandError::Validation(e.to_string()))
}

fn keys(keys: Option<&vault::KeyRing>) -> Result<&vault::KeyRing, CommandError> {
    keys.ok_or(CommandError::NotConfigured("TOKEN_MASTER_KEYS"))
}

/// The workspace's endpoint, fresh (404 when absent or deleted).
pub async fn get(ctx: &Ctx, ws: &Slug, id: &str) -> Result<Endpoint, CommandError> {
    let seq = ctx.fresh(view::NAME, &subject(ctx, ws, id)).await?;
    match view::get(&ctx.store, ws.as_str(), id).await? {
        Some(ep) if !ep.deleted && seq > 0 => Ok(ep),
        _ => Err(CommandError::NotFound(format!("no endpoint {id}"))),
    }
}

/// The workspace's endpoints, as fresh as the log.
pub async fn list(ctx: &Ctx, ws: &Slug) -> Result<Vec<Endpoint>, CommandError> {
    ctx.fresh_as_log(&[view::NAME]).await?;
    Ok(view::list(&ctx.store, ws.as_str()).await?)
}

/// Adds an endpoint; returns it with its signing secret (shown once).
pub async fn create(
    ctx: &Ctx,
    ring: Option<&vault::KeyRing>,
    allow_private: bool,
    caller: &Caller,
    ws: &Slug,
    new: NewEndpoint,
) -> Result<(Endpoint, SecretString), CommandError> {
    check_types(&new.types)?;
    check_description(&new.description)?;
    check_url(&new.url, allow_private).await?;
    let ring = keys(ring)?;
    if list(ctx, ws).await?.len() >= MAX_ENDPOINTS {
        return Err(CommandError::Conflict(format!(
            "a workspace has at most {MAX_ENDPOINTS} endpoints"
        )));
    }
    let mut raw = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let id = format!("ep_{}", hex::encode(raw));
    let secret = sign::new_secret();
    let data = EndpointCreated {
        endpoint_id: id.clone(),
        url: new.url,
        types: new.types,
        description: new.description,
        secret: vault::seal(ring, ws.as_str(), &seal_context(&id), &secret),
    };
    let mut ev = ctx.event(Some(ws), caller, &data);
    ev.expected_last_subject_seq = Some(0);
    ctx.append_and_wait(ev, &[view::NAME, "audit"]).await?;
    Ok((get(ctx, ws, &id).await?, secret))
}

/// Changes an endpoint's settings.
pub async fn update(
    ctx: &Ctx,
    allow_private: bool,
    caller: &Caller,
    ws: &Slug,
    id: &str,
    patch: EndpointPatch,
) -> Result<Endpoint, CommandError> {
    let ep = get(ctx, ws, id).await?;
    let data = EndpointUpdated {
        endpoint_id: id.to_string(),
        url: patch.url.unwrap_or(ep.url.clone()),
        types: patch.types.unwrap_or(ep.types.clone()),
        description: patch.description.unwrap_or(ep.description.clone()),
        enabled: patch.enabled.unwrap_or(ep.enabled),
    };
    check_types(&data.types)?;
    check_description(&data.description)?;
    if data.url != ep.url {
        check_url(&data.url, allow_private).await?;
    }
    let ev = ctx.event(Some(ws), caller, &data);
    ctx.append_and_wait(ev, &[view::NAME, "audit"]).await?;
    get(ctx, ws, id).await
}

/// Replaces the signing secret; the previous one signs too for 24 hours. Returns
/// the new secret (shown once).
pub async fn rotate_secret(
    ctx: &Ctx,
    ring: Option<&vault::KeyRing>,
    caller: &Caller,
    ws: &Slug,
    id: &str,
) -> Result<SecretString, CommandError> {
    let ring = keys(ring)?;
    get(ctx, ws, id).await?;
    let secret = sign::new_secret();
    let data = EndpointSecretRotated {
        endpoint_id: id.to_string(),
        secret: vault::seal(ring, ws.as_str(), &seal_context(id), &secret),
        previous_valid_until: Timestamp::now().plus(PREVIOUS_SECRET_VALIDITY),
    };
    let ev = ctx.event(Some(ws), caller, &data);
    ctx.append_and_wait(ev, &[view::NAME, "audit"]).await?;
    Ok(secret)
}

/// Deletes an endpoint: nothing more is delivered to it.
pub async fn delete(ctx: &Ctx, caller: &Caller, ws: &Slug, id: &str) -> Result<(), CommandError> {
    get(ctx, ws, id).await?;
    let ev = ctx.event(
        Some(ws),
        caller,
        &EndpointDeleted {
            endpoint_id: id.to_string(),
        },
    );
    ctx.append_and_wait(ev, &[view::NAME, "audit"]).await?;
    Ok(())
}

/// An endpoint's deliveries, newest first.
pub async fn deliveries(
    ctx: &Ctx,
    ws: &Slug,
    id: &str,
    status: Option<&str>,
    before: Option<u64>,
    limit: i64,
) -> Result<Vec<Delivery>, CommandError> {
    if let Some(s) = status {
        if !matches!(s, "pending" | "succeeded" | "failed") {
            return Err(CommandError::Validation(
                "status must be pending, succeeded or failed".into(),
            ));
        }
    }
    get(ctx, ws, id).await?;
    let attempts =
        wabridge_events::types::DeliveryAttempted::subject(ctx.log.namespace(), Some(ws), id);
    ctx.fresh(view::NAME, &attempts).await?;
    Ok(view::deliveries(&ctx.store, ws.as_str(), id, status, before, limit).await?)
}

/// Sends one delivery again (once, out of order; the same `webhook-id`).
pub async fn redeliver(
    ctx: &Ctx,
    caller: &Caller,
    ws: &Slug,
    id: &str,
    delivery_id: &str,
) -> Result<(), CommandError> {
    get(ctx, ws, id).await?;
    let d = view::delivery(&ctx.store, ws.as_str(), delivery_id)
        .await?
        .filter(|d| d.endpoint_id == id)
        .ok_or_else(|| {
            CommandError::NotFound(format!("no delivery {delivery_id} of endpoint {id}"))
        })?;
    let ev = ctx.event(
        Some(ws),
        caller,
        &DeliveryRedeliveryRequested {
            endpoint_id: id.to_string(),
            delivery_id: d.id,
            event_seq: d.event_seq,
        },
    );
    ctx.append_and_wait(ev, &[view::NAME, "audit"]).await?;
    Ok(())
}

/// Delivers every matching event recorded since `since` again, in order. Returns
/// the first log sequence it covers.
pub async fn recover(
    ctx: &Ctx,
    caller: &Caller,
    ws: &Slug,
    id: &str,
    since: Timestamp,
) -> Result<u64, CommandError> {
    if since > Timestamp::now() {
        return Err(CommandError::Validation("since is in the future".into()));
    }
    get(ctx, ws, id).await?;
    let first = ctx
        .log
        .read(StreamKind::Domain, ReadFrom::Time(since), None, 1)
        .await?;
    let from_seq = match first.first() {
        Some(e) => e.seq,
        None => ctx.log.last_seq(StreamKind::Domain).await? + 1,
    };
    let ev = ctx.event(
        Some(ws),
        caller,
        &EndpointRecoveryRequested {
            endpoint_id: id.to_string(),
            since,
            from_seq,
        },
    );
    ctx.append_and_wait(ev, &[view::NAME, "audit"]).await?;
    Ok(from_seq)
}

/// What a key rotation did to endpoint secrets.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RewrapReport {
    /// Endpoints whose secrets were re-encrypted under the current key.
    pub rewrapped: u64,
    /// Endpoints skipped because they changed meanwhile (run again).
    pub skipped_concurrent: u64,
    /// Endpoints whose secrets could not be decrypted.
    pub failed: Vec<String>,
}

/// Re-encrypts every endpoint's signing secrets under the newest master key (part
/// of `wabridge keys rotate`, so an old key can be dropped). Each rewrap is
/// conditional on the endpoint's subject not having changed since it was read.
pub async fn rewrap_all(
    ctx: &Ctx,
    ring: Option<&vault::KeyRing>,
    caller: &Caller,
) -> Result<RewrapReport, CommandError> {
    let ring = keys(ring)?;
    ctx.fresh_as_log(&[view::NAME]).await?;
    let mut report = RewrapReport::default();
    for ep in view::not_on_version(&ctx.store, ring.current_version()).await? {
        let ws = Slug::parse(&ep.workspace).map_err(|e| CommandError::Internal(e.into()))?;
        let context = seal_context(&ep.id);
        let rewrap = |s: &wabridge_events::types::SealedToken| {
            vault::open(ring, &ep.workspace, &context, s)
                .map(|secret| vault::seal(ring, &ep.workspace, &context, &secret))
        };
        let sealed = match (
            rewrap(&ep.secret),
            ep.previous_secret.as_ref().map(rewrap).transpose(),
        ) {
            (Ok(secret), Ok(previous_secret)) => EndpointSecretRewrapped {
                endpoint_id: ep.id.clone(),
                secret,
                previous_secret,
            },
            (Err(e), _) | (_, Err(e)) => {
                report
                    .failed
                    .push(format!("{}/{}: {e}", ep.workspace, ep.id));
                continue;
            }
        };
        let subject = subject(ctx, &ws, &ep.id);
        let last = ctx.log.last_subject_seq(&subject).await?;
        let mut ev = ctx.event(Some(&ws), caller, &sealed);
        ev.expected_last_subject_seq = Some(last);
        match ctx.append_checked(ev, &[view::NAME, "audit"]).await? {
            Some(_) => report.rewrapped += 1,
            None => report.skipped_concurrent += 1,
        }
    }
    Ok(report)
}
