//! Consent commands: reading a contact's consent as of the log's head, manual
//! opt-out and opt-in, the workspace's keywords and settings, and resolving
//! suspected opt-outs. Every change is a domain event (audited).

use wabridge_events::{
    types::{
        ConsentConfirmation, ConsentKeyword, ConsentKeywordsSet, ConsentScope, ConsentSettingsSet,
        ConsentSource, ConsentSourceKind, ContactMarketingPreference, ContactOptedIn,
        ContactOptedOut, ContactRef, EventData, MessageReceived, OptoutSuspicionResolved,
    },
    ActorKind, Slug, Timestamp,
};
use wabridge_projections::views::consent::{self, ConsentConfig, ContactConsent, Suspicion};

use super::{Caller, CommandError, Ctx};
use crate::consent::{contact_ref, detect};

/// The projections a consent change must reach before its command answers.
const AFFECTS: &[&str] = &["consent", "audit"];

/// The longest reason kept with a manual change.
pub const MAX_REASON_CHARS: usize = 500;

/// The most keywords a workspace may add.
pub const MAX_KEYWORDS: usize = 500;

/// The subjects whose events the consent state of a workspace's contacts depends on:
/// consent changes, contact events (preferences, user-id changes) and inbound
/// messages (they link a wa_id to a user id, and open the 24-hour window). Each is a
/// single subject per workspace, so its last sequence is one exact look-up.
pub fn gate_subjects(ctx: &Ctx, ws: &Slug) -> [String; 3] {
    let ns = ctx.log.namespace();
    [
        ContactOptedOut::subject(ns, Some(ws), "all"),
        ContactMarketingPreference::subject(ns, Some(ws), "all"),
        MessageReceived::subject(ns, Some(ws), "inbound"),
    ]
}

/// Makes a workspace's consent (and its contacts' last inbound times) as fresh as
/// the log, for every consent read and the send gate: the webhook processor has
/// handled every raw webhook received so far (a STOP whose webhook got its 200 a
/// moment ago is among them), then the consent projection has applied the last event
/// on each of the workspace's [`gate_subjects`], and `send_context` the last inbound
/// message. This checks the workspace's own subjects rather than waiting for the
/// whole domain head (which moves with every send of every workspace), so it costs
/// four look-ups and rarely a wait. Fails closed (503).
pub async fn fresh_consent(ctx: &Ctx, ws: &Slug) -> Result<(), CommandError> {
    ctx.wait_webhooks().await?;
    let [a, b, c] = gate_subjects(ctx, ws);
    let (a, b, c) = tokio::try_join!(
        ctx.log.last_subject_seq(&a),
        ctx.log.last_subject_seq(&b),
        ctx.log.last_subject_seq(&c)
    )?;
    let consent_at = a.max(b).max(c);
    if consent_at > 0 {
        ctx.wait("consent", consent_at).await?;
    }
    if c > 0 {
        ctx.wait("send_context", c).await?;
    }
    Ok(())
}

/// A contact's consent and history as of the log's head (an unknown contact is not
/// opted out and has an empty history).
pub async fn get(ctx: &Ctx, ws: &Slug, contact: &str) -> Result<ContactConsent, CommandError> {
    let contact = contact_ref(contact)?;
    super::workspaces::require(ctx, ws).await?;
    fresh_consent(ctx, ws).await?;
    Ok(consent::get(&ctx.store, ws.as_str(), &contact.key()).await?)
}

fn source_of(caller: &Caller) -> ConsentSource {
    let kind = match caller.actor.kind {
        ActorKind::ApiKey => ConsentSourceKind::Api,
        _ => ConsentSourceKind::Admin,
    };
    ConsentSource {
        kind,
        keyword: None,
        language: None,
        message_id: None,
        webhook_seq: None,
    }
}

fn reason(reason: Option<&str>) -> Result<Option<String>, CommandError> {
    match reason.map(str::trim) {
        None | Some("") => Ok(None),
        Some(r) if r.chars().count() > MAX_REASON_CHARS => Err(CommandError::Validation(format!(
            "reason must be at most {MAX_REASON_CHARS} characters"
        ))),
        Some(r) => Ok(Some(r.to_owned())),
    }
}

/// A manual consent change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Manual {
    /// Opt out (`all` or `marketing`).
    OptOut,
    /// Opt back in (`all` lifts every opt-out; `marketing` the marketing one).
    OptIn,
}

/// Opts a contact out or back in on a person's word (audited, with the reason).
pub async fn change(
    ctx: &Ctx,
    caller: &Caller,
    ws: &Slug,
    contact: &str,
    manual: Manual,
    scope: ConsentScope,
    why: Option<&str>,
) -> Result<ContactConsent, CommandError> {
    let contact = contact_ref(contact)?;
    let reason = reason(why)?;
    super::workspaces::require(ctx, ws).await?;
    let (source, at) = (source_of(caller), Timestamp::now());
    let event = match manual {
        Manual::OptOut => ctx.event(
            Some(ws),
            caller,
            &ContactOptedOut {
                contact: contact.clone(),
                scope,
                source,
                reason,
                at,
            },
        ),
        Manual::OptIn => ctx.event(
            Some(ws),
            caller,
            &ContactOptedIn {
                contact: contact.clone(),
                scope,
                source,
                reason,
                at,
            },
        ),
    };
    ctx.append_and_wait(event, AFFECTS).await?;
    Ok(consent::get(&ctx.store, ws.as_str(), &contact.key()).await?)
}

/// The workspace's consent configuration, fresh.
pub async fn config(ctx: &Ctx, ws: &Slug) -> Result<ConsentConfig, CommandError> {
    super::workspaces::require(ctx, ws).await?;
    ctx.fresh("consent", &crate::consent::config_subject(ctx, ws))
        .await?;
    Ok(consent::config(&ctx.store, ws.as_str()).await?)
}

/// Replaces the workspace's own keywords (validated: none empty, none colliding with
/// an opt-in word, ...).
pub async fn set_keywords(
    ctx: &Ctx,
    caller: &Caller,
    ws: &Slug,
    keywords: Vec<ConsentKeyword>,
) -> Result<ConsentConfig, CommandError> {
    if keywords.len() > MAX_KEYWORDS {
        return Err(CommandError::Validation(format!(
            "at most {MAX_KEYWORDS} keywords"
        )));
    }
    let keywords: Vec<ConsentKeyword> = keywords
        .into_iter()
        .map(|k| ConsentKeyword {
            keyword: k.keyword.trim().to_owned(),
            language: k.language.trim().to_owned(),
            ..k
        })
        .collect();
    for k in &keywords {
        validate_language(&k.language)?;
    }
    detect::validate(&keywords).map_err(CommandError::Validation)?;
    super::workspaces::require(ctx, ws).await?;
    ctx.append_and_wait(
        ctx.event(Some(ws), caller, &ConsentKeywordsSet { keywords }),
        AFFECTS,
    )
    .await?;
    Ok(consent::config(&ctx.store, ws.as_str()).await?)
}

/// Sets the workspace's consent settings.
pub async fn set_settings(
    ctx: &Ctx,
    caller: &Caller,
    ws: &Slug,
    suspected_automatic: bool,
    confirmations: Vec<ConsentConfirmation>,
) -> Result<ConsentConfig, CommandError> {
    for c in &confirmations {
        validate_language(&c.language)?;
        let n = c.text.trim().chars().count();
        if n == 0 || n > 1024 {
            return Err(CommandError::Validation(
                "a confirmation text must be 1 to 1024 characters".into(),
            ));
        }
    }
    let mut langs: Vec<&str> = confirmations.iter().map(|c| c.language.as_str()).collect();
    langs.sort_unstable();
    if langs.windows(2).any(|w| w[0] == w[1]) {
        return Err(CommandError::Validation(
            "one confirmation per language".into(),
        ));
    }
    super::workspaces::require(ctx, ws).await?;
    let data = ConsentSettingsSet {
        suspected_automatic,
        confirmations,
    };
    ctx.append_and_wait(ctx.event(Some(ws), caller, &data), AFFECTS)
        .await?;
    Ok(consent::config(&ctx.store, ws.as_str()).await?)
}

/// A language code: `en`, `pt-BR`, `pt_BR`, `zh-Hant` (2 to 3 letters, then optional
/// subtags of 2 to 8 letters or digits).
pub fn validate_language(code: &str) -> Result<(), CommandError> {
    let mut parts = code.split(['-', '_']);
    let first = parts.next().unwrap_or_default();
    let ok = (2..=3).contains(&first.len())
        && first.bytes().all(|b| b.is_ascii_alphabetic())
        && parts
            .all(|p| (2..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()));
    if !ok {
        return Err(CommandError::Validation(format!(
            "language {code:?} is not a language code such as en or pt-BR"
        )));
    }
    Ok(())
}

/// What a person decided about a suspected opt-out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// It was an opt-out: the contact is opted out of everything.
    Confirm,
    /// It was not.
    Dismiss,
}

/// Confirms or dismisses an open suspected opt-out; `Conflict` once resolved.
pub async fn resolve(
    ctx: &Ctx,
    caller: &Caller,
    ws: &Slug,
    id: &str,
    resolution: Resolution,
    why: Option<&str>,
) -> Result<Suspicion, CommandError> {
    let why = reason(why)?;
    super::workspaces::require(ctx, ws).await?;
    let subject = OptoutSuspicionResolved::subject(ctx.log.namespace(), Some(ws), id);
    // The suspicion may come from a webhook that got its 200 a moment ago.
    fresh_consent(ctx, ws).await?;
    loop {
        let seq = ctx.fresh("consent", &subject).await?;
        let found = consent::suspicion(&ctx.store, ws.as_str(), id)
            .await?
            .ok_or_else(|| CommandError::NotFound(format!("no suspected opt-out {id}")))?;
        if found.status != "open" {
            return Err(CommandError::Conflict(format!(
                "suspected opt-out {id} is already {}",
                found.status
            )));
        }
        let outcome = match resolution {
            Resolution::Confirm => "confirmed",
            Resolution::Dismiss => "dismissed",
        };
        // The opt-out first: should the resolution then fail, the contact is still
        // opted out (the safe side), and the suspicion stays open to resolve again.
        if resolution == Resolution::Confirm {
            let mut source = source_of(caller);
            source.keyword = Some(found.matched.clone());
            source.message_id = Some(found.message_id.clone());
            let data = ContactOptedOut {
                contact: ContactRef::from_key(&found.contact_id),
                scope: ConsentScope::All,
                source,
                reason: Some(
                    why.clone()
                        .unwrap_or_else(|| "a suspected opt-out, confirmed by a person".into()),
                ),
                at: Timestamp::now(),
            };
            ctx.append_and_wait(ctx.event(Some(ws), caller, &data), AFFECTS)
                .await?;
        }
        let mut ev = ctx.event(
            Some(ws),
            caller,
            &OptoutSuspicionResolved {
                id: id.to_owned(),
                outcome: outcome.into(),
                reason: why.clone(),
            },
        );
        ev.expected_last_subject_seq = Some(seq);
        if ctx.append_checked(ev, AFFECTS).await?.is_none() {
            continue;
        }
        return consent::suspicion(&ctx.store, ws.as_str(), id)
            .await?
            .ok_or_else(|| CommandError::Internal(anyhow::anyhow!("suspicion {id} vanished")));
    }
}
