//! Starting Embedded Signup onboarding: checks, then `onboarding.started` with the
//! code and the PIN sealed. The runner (`crate::onboarding`) follows the log and
//! starts the code exchange within milliseconds (the code lives about 30 seconds).

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use wabridge_events::{
    types::{EventData, OnboardingStarted},
    Slug,
};
use wabridge_projections::views::onboarding;

use super::{numbers::validate_id, Caller, CommandError, Ctx};
use crate::vault::{self, KeyRing};

/// What Meta's app is, for the code exchange.
#[derive(Clone, Default)]
pub struct MetaApp {
    /// `META_APP_ID`.
    pub id: Option<String>,
    /// `META_APP_SECRET` (the exchange tries each in order when Meta rejects one).
    pub secrets: Vec<SecretString>,
}

impl MetaApp {
    /// Fails with `NotConfigured` naming the first missing variable.
    pub fn require(&self) -> Result<(&str, &[SecretString]), CommandError> {
        let id = self
            .id
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or(CommandError::NotConfigured("META_APP_ID"))?;
        if self.secrets.is_empty() {
            return Err(CommandError::NotConfigured("META_APP_SECRET"));
        }
        Ok((id, &self.secrets))
    }
}

/// What the front end sends once the business finished Embedded Signup.
pub struct StartRequest {
    /// The exchangeable code from `FB.login` (`authResponse.code`).
    pub code: SecretString,
    /// `waba_id` from the `WA_EMBEDDED_SIGNUP` message.
    pub waba_id: String,
    /// `phone_number_id` from the same message.
    pub phone_number_id: String,
    /// The number's two-step verification PIN (6 digits).
    pub pin: SecretString,
}

/// A started (or already started) onboarding.
pub struct Started {
    /// Its id.
    pub id: String,
    /// Whether this request started it (false: the same code started it before).
    pub created: bool,
}

/// The sealing context of a saga's secrets (the associated data names the saga, so
/// a sealed value cannot be moved to another).
pub fn seal_context(id: &str, what: &str) -> String {
    format!("onboarding:{id}:{what}")
}

/// The id of the onboarding a code starts in a workspace: the same code always names
/// the same saga (a front end's retry starts nothing new).
pub fn id_for(ws: &Slug, code: &SecretString) -> String {
    let mut h = Sha256::new();
    h.update(ws.as_str().as_bytes());
    h.update([0]);
    h.update(code.expose_secret().as_bytes());
    format!("onb_{}", &hex::encode(h.finalize())[..26])
}

/// The subject of a saga's events.
pub fn subject(ctx: &Ctx, ws: &Slug, id: &str) -> String {
    OnboardingStarted::subject(ctx.log.namespace(), Some(ws), id)
}

fn validate(req: &StartRequest) -> Result<(), CommandError> {
    let code = req.code.expose_secret();
    if code.is_empty()
        || code.len() > 4096
        || code.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(CommandError::Validation(
            "code must be 1 to 4096 characters without whitespace".into(),
        ));
    }
    validate_id("waba_id", &req.waba_id)?;
    validate_id("phone_number_id", &req.phone_number_id)?;
    let pin = req.pin.expose_secret();
    if pin.len() != 6 || !pin.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CommandError::Validation("pin must be 6 digits".into()));
    }
    Ok(())
}

/// Fails with `Conflict` when another workspace holds the number or owns the WABA
/// (routing as fresh as the log).
pub async fn check_routing(
    ctx: &Ctx,
    ws: &Slug,
    waba_id: &str,
    phone_number_id: &str,
) -> Result<(), CommandError> {
    ctx.fresh("phone_numbers", &super::numbers::routing_subject(ctx))
        .await?;
    super::numbers::claimable(ctx, ws, phone_number_id, Some(waba_id)).await
}

/// Starts onboarding (or finds the one the same code started). Refuses before
/// anything happens when `META_APP_ID`, `META_APP_SECRET` or `TOKEN_MASTER_KEYS` is
/// missing, on bad input, and when another workspace holds the number or its WABA.
pub async fn start(
    ctx: &Ctx,
    keys: Option<&KeyRing>,
    app: &MetaApp,
    caller: &Caller,
    ws: &Slug,
    req: StartRequest,
) -> Result<Started, CommandError> {
    app.require()?;
    let keys = keys.ok_or(CommandError::NotConfigured("TOKEN_MASTER_KEYS"))?;
    validate(&req)?;
    super::workspaces::require(ctx, ws).await?;
    let id = id_for(ws, &req.code);
    let subject = subject(ctx, ws, &id);
    if let Some(found) = existing(ctx, ws, &id, &subject, &req).await? {
        return Ok(found);
    }
    check_routing(ctx, ws, &req.waba_id, &req.phone_number_id).await?;
    let data = OnboardingStarted {
        id: id.clone(),
        waba_id: req.waba_id.clone(),
        phone_number_id: req.phone_number_id.clone(),
        code: vault::seal(keys, ws.as_str(), &seal_context(&id, "code"), &req.code),
        pin: vault::seal(keys, ws.as_str(), &seal_context(&id, "pin"), &req.pin),
        code_fingerprint: vault::fingerprint(&req.code),
    };
    let mut ev = ctx.event(Some(ws), caller, &data);
    ev.expected_last_subject_seq = Some(0);
    match ctx.append_checked(ev, &["onboarding", "audit"]).await? {
        Some(_) => Ok(Started { id, created: true }),
        // The same code, at the same moment: the other request started it.
        None => existing(ctx, ws, &id, &subject, &req)
            .await?
            .ok_or_else(|| CommandError::Conflict("onboarding changed concurrently; retry".into())),
    }
}

/// The saga this code already started, when it did; `Conflict` when it was for
/// another WABA or number.
async fn existing(
    ctx: &Ctx,
    ws: &Slug,
    id: &str,
    subject: &str,
    req: &StartRequest,
) -> Result<Option<Started>, CommandError> {
    if ctx.fresh("onboarding", subject).await? == 0 {
        return Ok(None);
    }
    let saga = onboarding::get(&ctx.store, ws.as_str(), id)
        .await?
        .ok_or_else(|| CommandError::Internal(anyhow::anyhow!("onboarding {id} not visible")))?;
    if saga.waba_id != req.waba_id || saga.phone_number_id != req.phone_number_id {
        return Err(CommandError::Conflict(format!(
            "this code already started onboarding {id} for WABA {} and number {}",
            saga.waba_id, saga.phone_number_id
        )));
    }
    Ok(Some(Started {
        id: id.to_string(),
        created: false,
    }))
}

/// A workspace's saga, as fresh as its last event.
pub async fn get(ctx: &Ctx, ws: &Slug, id: &str) -> Result<onboarding::Saga, CommandError> {
    ctx.fresh("onboarding", &subject(ctx, ws, id)).await?;
    onboarding::get(&ctx.store, ws.as_str(), id)
        .await?
        .ok_or_else(|| CommandError::NotFound(format!("no onboarding {id}")))
}
