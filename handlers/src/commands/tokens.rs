//! The token vault's commands: store, revoke, invalidate, rotate, and retrieval.
//! Plaintext exists only in memory, in `SecretString`s.

use secrecy::SecretString;
use wabridge_events::{
    types::{EventData, TokenInvalidated, TokenRevoked, TokenRewrapped, TokenStored},
    Slug, Timestamp,
};
use wabridge_projections::views::tokens::{self, TokenRow};

use super::{numbers::validate_id, Caller, CommandError, Ctx};
use crate::vault::{self, KeyRing};

fn token_subject(ctx: &Ctx, ws: &Slug, phone_number_id: &str) -> String {
    TokenStored::subject(ctx.log.namespace(), Some(ws), phone_number_id)
}

/// Appends a token event, waits for the read models, and folds it into this
/// process's cache at once (other instances see it through the log within ms).
async fn append_token_event(
    ctx: &Ctx,
    event: wabridge_events::NewEvent,
    projections: &[&str],
) -> Result<(), CommandError> {
    let stored = wabridge_events::StoredEvent {
        stream: wabridge_events::StreamKind::Domain,
        seq: 0,
        subject: event.subject.clone(),
        envelope: event.envelope.clone(),
        payload: event.payload.clone(),
        decoded: Default::default(),
    };
    let appended = ctx.append_and_wait(event, projections).await?;
    if !appended.duplicate {
        ctx.tokens.apply(&wabridge_events::StoredEvent {
            seq: appended.seq,
            ..stored
        });
    }
    Ok(())
}

fn ring(ring: Option<&KeyRing>) -> Result<&KeyRing, CommandError> {
    ring.ok_or(CommandError::NotConfigured("TOKEN_MASTER_KEYS"))
}

/// A number id, and a token of 1 to 4096 characters without whitespace.
fn validate(phone_number_id: &str, token: &SecretString, what: &str) -> Result<(), CommandError> {
    use secrecy::ExposeSecret;
    validate_id("phone_number_id", phone_number_id)?;
    let t = token.expose_secret();
    if t.is_empty() || t.len() > 4096 || t.chars().any(char::is_whitespace) {
        return Err(CommandError::Validation(format!(
            "{what} must be 1 to 4096 characters without whitespace"
        )));
    }
    Ok(())
}

/// Seals and stores a number's token (replacing any previous one).
pub async fn store(
    ctx: &Ctx,
    keys: Option<&KeyRing>,
    caller: &Caller,
    ws: &Slug,
    phone_number_id: &str,
    token: &SecretString,
    expires_at: Option<Timestamp>,
) -> Result<(), CommandError> {
    let keys = ring(keys)?;
    validate(phone_number_id, token, "access_token")?;
    super::workspaces::require(ctx, ws).await?;
    super::numbers::require_held(ctx, ws, phone_number_id).await?;
    append_stored(ctx, keys, caller, ws, phone_number_id, token, expires_at).await
}

/// Stores the token Embedded Signup's code exchange gave for a number being
/// onboarded: the workspace need not hold the number yet (routing it is the saga's
/// last step), but no other workspace may.
pub async fn store_onboarded(
    ctx: &Ctx,
    keys: Option<&KeyRing>,
    caller: &Caller,
    ws: &Slug,
    phone_number_id: &str,
    token: &SecretString,
    expires_at: Option<Timestamp>,
) -> Result<(), CommandError> {
    let keys = ring(keys)?;
    validate(phone_number_id, token, "the exchanged token")?;
    ctx.fresh("phone_numbers", &super::numbers::routing_subject(ctx))
        .await?;
    super::numbers::claimable(ctx, ws, phone_number_id, None).await?;
    append_stored(ctx, keys, caller, ws, phone_number_id, token, expires_at).await
}

async fn append_stored(
    ctx: &Ctx,
    keys: &KeyRing,
    caller: &Caller,
    ws: &Slug,
    phone_number_id: &str,
    token: &SecretString,
    expires_at: Option<Timestamp>,
) -> Result<(), CommandError> {
    let data = TokenStored {
        phone_number_id: phone_number_id.to_string(),
        sealed: vault::seal(keys, ws.as_str(), phone_number_id, token),
        fingerprint: vault::fingerprint(token),
        expires_at,
    };
    append_token_event(
        ctx,
        ctx.event(Some(ws), caller, &data),
        &["tokens", "audit"],
    )
    .await?;
    Ok(())
}

/// The token's metadata; `NotFound` when none was stored.
pub async fn metadata(
    ctx: &Ctx,
    ws: &Slug,
    phone_number_id: &str,
) -> Result<TokenRow, CommandError> {
    ctx.fresh("tokens", &token_subject(ctx, ws, phone_number_id))
        .await?;
    tokens::get(&ctx.store, ws.as_str(), phone_number_id)
        .await?
        .ok_or_else(|| {
            CommandError::NotFound(format!(
                "no token stored for phone number {phone_number_id}"
            ))
        })
}

/// Revokes a number's token.
pub async fn revoke(
    ctx: &Ctx,
    caller: &Caller,
    ws: &Slug,
    phone_number_id: &str,
) -> Result<(), CommandError> {
    let row = metadata(ctx, ws, phone_number_id).await?;
    if row.status == "revoked" {
        return Ok(());
    }
    let mut ev = ctx.event(
        Some(ws),
        caller,
        &TokenRevoked {
            phone_number_id: phone_number_id.to_string(),
        },
    );
    ev.expected_last_subject_seq = Some(row.log_seq);
    append_token_event(ctx, ev, &["tokens", "audit"]).await?;
    Ok(())
}

/// Marks a token invalid (Meta answered OAuth error 190). Internal: the sender calls it.
pub async fn invalidate(
    ctx: &Ctx,
    caller: &Caller,
    ws: &Slug,
    phone_number_id: &str,
    reason: &str,
) -> Result<(), CommandError> {
    let row = metadata(ctx, ws, phone_number_id).await?;
    if row.status != "valid" {
        return Ok(());
    }
    let data = TokenInvalidated {
        phone_number_id: phone_number_id.to_string(),
        reason: reason.chars().take(500).collect(),
    };
    let mut ev = ctx.event(Some(ws), caller, &data);
    ev.expected_last_subject_seq = Some(row.log_seq);
    append_token_event(ctx, ev, &["tokens", "audit"]).await?;
    Ok(())
}

/// Decrypts a number's token for use (the sender): a look-up in the in-memory
/// ciphertext cache (the read model when the cache has not seen it yet), then one
/// decryption. Plaintext is never cached.
pub async fn retrieve(
    ctx: &Ctx,
    keys: Option<&KeyRing>,
    ws: &Slug,
    phone_number_id: &str,
) -> Result<SecretString, CommandError> {
    let keys = ring(keys)?;
    let (sealed, status) = match ctx.tokens.get(ws.as_str(), phone_number_id) {
        Some(c) => (c.sealed, c.status),
        None => {
            let row = tokens::get(&ctx.store, ws.as_str(), phone_number_id)
                .await?
                .ok_or_else(|| {
                    CommandError::NotFound(format!(
                        "no token stored for phone number {phone_number_id}"
                    ))
                })?;
            (row.sealed, row.status)
        }
    };
    if status != "valid" {
        return Err(CommandError::Conflict(format!(
            "the token of phone number {phone_number_id} is {status}"
        )));
    }
    vault::open(keys, ws.as_str(), phone_number_id, &sealed)
        .map_err(|e| CommandError::Internal(e.into()))
}

/// The outcome of a rotation.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RotationReport {
    /// Tokens rewrapped under the current key.
    pub rewrapped: u64,
    /// Tokens skipped because they changed meanwhile (a newer store or revoke won).
    pub skipped_concurrent: u64,
    /// Tokens that could not be decrypted (listed by the caller).
    pub failed: Vec<String>,
    /// Tokens still not on the current key after the run.
    pub remaining: u64,
}

/// Re-encrypts every stored token under the newest master key. Resumable: it only
/// touches tokens not yet on the current key. Each rewrap is conditional on the
/// token's subject not having changed since it was read, so a token stored
/// meanwhile is never overwritten by a rewrapped older one.
pub async fn rotate(
    ctx: &Ctx,
    keys: Option<&KeyRing>,
    caller: &Caller,
    mut progress: impl FnMut(u64, u64),
) -> Result<RotationReport, CommandError> {
    let keys = ring(keys)?;
    let head = ctx
        .log
        .last_seq(wabridge_events::StreamKind::Domain)
        .await?;
    ctx.wait("tokens", head).await?;
    let todo = tokens::not_on_version(&ctx.store, keys.current_version()).await?;
    let total = todo.len() as u64;
    let mut report = RotationReport::default();
    for (i, row) in todo.iter().enumerate() {
        let ws = Slug::parse(&row.workspace).map_err(|e| CommandError::Internal(e.into()))?;
        match vault::rewrap(keys, ws.as_str(), &row.phone_number_id, &row.sealed) {
            Ok(Some(sealed)) => {
                let data = TokenRewrapped {
                    phone_number_id: row.phone_number_id.clone(),
                    sealed,
                    from_key_version: row.key_version.clone(),
                };
                let mut ev = ctx.event(Some(&ws), caller, &data);
                ev.expected_last_subject_seq = Some(row.log_seq);
                match append_token_event(ctx, ev, &["tokens"]).await {
                    Ok(_) => report.rewrapped += 1,
                    Err(CommandError::Conflict(_)) => report.skipped_concurrent += 1,
                    Err(e) => return Err(e),
                }
            }
            Ok(None) => {}
            Err(e) => report
                .failed
                .push(format!("{}/{}: {e}", row.workspace, row.phone_number_id)),
        }
        progress(i as u64 + 1, total);
    }
    let head = ctx
        .log
        .last_seq(wabridge_events::StreamKind::Domain)
        .await?;
    ctx.wait("tokens", head).await?;
    report.remaining = tokens::not_on_version(&ctx.store, keys.current_version())
        .await?
        .len() as u64;
    Ok(report)
}
