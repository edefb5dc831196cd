//! What each onboarding step does at Meta, and how its answer is classified:
//! done, transient (tried again with backoff) or permanent (the saga stops with a
//! reason a person can act on).

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use wabridge_events::{types::StepError, Slug, Timestamp};

use crate::access::Role;
use crate::commands::{numbers, onboarding::seal_context, tokens, Caller, CommandError, Ctx};
use crate::sender::graph::{Answer, Graph};
use crate::sending::meta_errors::MetaError;
use crate::vault::{self, KeyRing};

/// What one attempt of a step came to.
#[derive(Debug)]
pub enum StepOutcome {
    /// It succeeded (with what to show for it; never a secret).
    Done(Option<String>),
    /// It may succeed if tried again.
    Transient(StepError),
    /// It never will.
    Permanent {
        /// Stable reason.
        reason: &'static str,
        /// What Meta or wabridge said.
        error: StepError,
        /// What to do about it.
        detail: String,
    },
}

/// Meta's codes that say "too many calls, slow down" (transient for every call
/// but registration, which must not be repeated).
const THROTTLED: &[i64] = &[4, 17, 32, 613, 80007, 130429];

fn step_error(status: Option<u16>, error: Option<&MetaError>, fallback: &str) -> StepError {
    StepError {
        code: error.map(|e| e.code),
        subcode: error.and_then(|e| e.subcode),
        http_status: status,
        message: error
            .and_then(|e| e.message.clone().or_else(|| e.title.clone()))
            .unwrap_or_else(|| fallback.to_string())
            .chars()
            .take(500)
            .collect(),
    }
}

fn no_answer(detail: String) -> StepOutcome {
    StepOutcome::Transient(StepError {
        code: None,
        subcode: None,
        http_status: None,
        message: detail,
    })
}

fn ours(message: impl Into<String>) -> StepError {
    StepError {
        code: None,
        subcode: None,
        http_status: None,
        message: message.into(),
    }
}

/// A refusal of a call other than the exchange and registration: 5xx and throttling
/// are transient; 190 means the token is not accepted; the rest is Meta's error.
fn classify_call(status: u16, error: Option<&MetaError>, what: &str) -> StepOutcome {
    let e = step_error(
        Some(status),
        error,
        &format!("Meta refused {what} ({status})"),
    );
    let code = error.map(|e| e.code);
    if status >= 500
        || status == 429
        || code.is_some_and(|c| THROTTLED.contains(&c) || c == 1 || c == 2)
    {
        return StepOutcome::Transient(e);
    }
    let (reason, detail) = match code {
        Some(190) => (
            "token_rejected",
            "Meta did not accept the business token; run Embedded Signup again".to_string(),
        ),
        Some(10) | Some(200) => (
            "permission_denied",
            format!("the business did not grant the app permission for {what}; run Embedded Signup again and grant it"),
        ),
        _ => ("meta_error", format!("Meta refused {what}: {}", e.message)),
    };
    StepOutcome::Permanent {
        reason,
        error: e,
        detail,
    }
}

/// Opens a secret sealed in `onboarding.started` (`what`: `code` or `pin`); a
/// permanent failure when the master keys cannot (one was removed meanwhile).
fn open_sealed(
    keys: &KeyRing,
    ws: &Slug,
    id: &str,
    what: &'static str,
    sealed: &wabridge_events::types::SealedToken,
) -> Result<SecretString, StepOutcome> {
    vault::open(keys, ws.as_str(), &seal_context(id, what), sealed).map_err(|e| {
        StepOutcome::Permanent {
            reason: if what == "pin" {
                "sealed_pin_unreadable"
            } else {
                "sealed_code_unreadable"
            },
            error: ours(e.to_string()),
            detail: format!(
                "the sealed {what} could not be opened with TOKEN_MASTER_KEYS; start onboarding again"
            ),
        }
    })
}

/// Step 1: exchange the code for a business token and store it in the vault. A
/// rejected app secret is retried with the next configured one. Once Meta gave a
/// token, storing it is retried here (the code cannot be exchanged twice).
#[allow(clippy::too_many_arguments)]
pub async fn exchange_code(
    ctx: &Ctx,
    graph: &Graph,
    keys: &KeyRing,
    app_id: &str,
    app_secrets: &[SecretString],
    ws: &Slug,
    id: &str,
    phone_number_id: &str,
    sealed_code: &wabridge_events::types::SealedToken,
) -> StepOutcome {
    let code = match open_sealed(keys, ws, id, "code", sealed_code) {
        Ok(v) => v,
        Err(o) => return o,
    };
    let mut last = None;
    for secret in app_secrets {
        match graph.exchange_code(app_id, secret, &code).await {
            Answer::Ok(body) => {
                return store_token(ctx, keys, ws, phone_number_id, &body).await;
            }
            Answer::NoAnswer { detail } => return no_answer(detail),
            Answer::Rejected { status, error } => {
                let secret_rejected = error.as_ref().is_some_and(|e| {
                    e.code == 1
                        && e.message
                            .as_deref()
                            .is_some_and(|m| m.to_ascii_lowercase().contains("client secret"))
                });
                if secret_rejected {
                    last = Some((status, error));
                    continue;
                }
                return classify_exchange(status, error.as_ref());
            }
        }
    }
    let (status, error) = last.unwrap_or((0, None));
    StepOutcome::Permanent {
        reason: "app_credentials_rejected",
        error: step_error(Some(status), error.as_ref(), "Meta rejected the app secret"),
        detail: "Meta rejected META_APP_ID / META_APP_SECRET; check them (the code is still unused: the business can retry within 30 seconds of the flow)".into(),
    }
}

fn classify_exchange(status: u16, error: Option<&MetaError>) -> StepOutcome {
    let e = step_error(
        Some(status),
        error,
        &format!("Meta refused the code exchange ({status})"),
    );
    if status >= 500 || error.is_some_and(|e| e.code == 2 || THROTTLED.contains(&e.code)) {
        return StepOutcome::Transient(e);
    }
    let message = e.message.to_ascii_lowercase();
    let (reason, detail) = match (error.and_then(|e| e.subcode), message.as_str()) {
        (Some(36007), _) => (
            "code_expired",
            "the signup code expired (it lives about 30 seconds); run Embedded Signup again",
        ),
        (Some(36009), _) => (
            "code_used",
            "the signup code was already used; run Embedded Signup again",
        ),
        (_, m) if m.contains("expired") => (
            "code_expired",
            "the signup code expired (it lives about 30 seconds); run Embedded Signup again",
        ),
        (_, m) if m.contains("been used") => (
            "code_used",
            "the signup code was already used; run Embedded Signup again",
        ),
        _ => (
            "code_invalid",
            "Meta did not accept the signup code; run Embedded Signup again",
        ),
    };
    StepOutcome::Permanent {
        reason,
        error: e,
        detail: detail.into(),
    }
}

async fn store_token(
    ctx: &Ctx,
    keys: &KeyRing,
    ws: &Slug,
    phone_number_id: &str,
    body: &serde_json::Value,
) -> StepOutcome {
    // Meta's page shows the answer as the bare token; the Graph OAuth shape is JSON.
    let token = match body {
        serde_json::Value::Object(o) => o.get("access_token").and_then(|t| t.as_str()),
        serde_json::Value::String(s) => Some(s.as_str()),
        _ => None,
    };
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return StepOutcome::Permanent {
            reason: "meta_error",
            error: ours("the code exchange answered without an access_token"),
            detail: "Meta's answer had no token; run Embedded Signup again".into(),
        };
    };
    let token = SecretString::from(token.to_string());
    let expires_at = body
        .get("expires_in")
        .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
        .filter(|s| *s > 0)
        .map(|s| Timestamp::now().plus(std::time::Duration::from_secs(s)));
    let caller = Caller::system(super::NAME);
    let mut pause = std::time::Duration::from_millis(200);
    for _ in 0..10 {
        match tokens::store_onboarded(
            ctx,
            Some(keys),
            &caller,
            ws,
            phone_number_id,
            &token,
            expires_at,
        )
        .await
        {
            Ok(()) => {
                let mut detail =
                    format!("token stored (fingerprint {})", vault::fingerprint(&token));
                if let Some(t) = expires_at {
                    detail.push_str(&format!(", expires {t}"));
                }
                return StepOutcome::Done(Some(detail));
            }
            Err(CommandError::Conflict(d)) => {
                return StepOutcome::Permanent {
                    reason: "number_held_by_another_workspace",
                    error: ours(d.clone()),
                    detail: d,
                }
            }
            Err(e @ (CommandError::Validation(_) | CommandError::NotConfigured(_))) => {
                return StepOutcome::Permanent {
                    reason: "token_not_stored",
                    error: ours(e.to_string()),
                    detail: format!("the exchanged token could not be stored: {e}"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "onboarding: storing the exchanged token failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
    StepOutcome::Permanent {
        reason: "token_not_stored",
        error: ours("the vault could not store the token"),
        detail: "the exchanged token could not be stored (the read models did not catch up); run Embedded Signup again".into(),
    }
}

/// The number's token from the vault (stored by step 1).
async fn token(
    ctx: &Ctx,
    keys: &KeyRing,
    ws: &Slug,
    phone_number_id: &str,
) -> Result<SecretString, StepOutcome> {
    match tokens::retrieve(ctx, Some(keys), ws, phone_number_id).await {
        Ok(t) => Ok(t),
        Err(e @ (CommandError::NotFound(_) | CommandError::Conflict(_))) => {
            Err(StepOutcome::Permanent {
                reason: "token_unusable",
                error: ours(e.to_string()),
                detail: format!("{e}; run Embedded Signup again"),
            })
        }
        Err(e) => Err(StepOutcome::Transient(ours(e.to_string()))),
    }
}

/// Step 2: `POST /{waba_id}/subscribed_apps` (subscribing twice is harmless).
pub async fn subscribe(
    ctx: &Ctx,
    graph: &Graph,
    keys: &KeyRing,
    ws: &Slug,
    waba_id: &str,
    phone_number_id: &str,
) -> StepOutcome {
    let token = match token(ctx, keys, ws, phone_number_id).await {
        Ok(t) => t,
        Err(o) => return o,
    };
    match graph
        .post_json(&format!("{waba_id}/subscribed_apps"), &token, &json!({}))
        .await
    {
        Answer::Ok(_) => {
            StepOutcome::Done(Some(format!("the app receives WABA {waba_id}'s webhooks")))
        }
        Answer::NoAnswer { detail } => no_answer(detail),
        Answer::Rejected { status, error } => {
            classify_call(status, error.as_ref(), "the webhook subscription")
        }
    }
}

/// Step 3: `POST /{phone_number_id}/register` with the PIN. Only a 5xx or no answer
/// is transient: every other refusal stops (Meta counts each call against 10 per
/// number per 72 hours).
#[allow(clippy::too_many_arguments)]
pub async fn register(
    ctx: &Ctx,
    graph: &Graph,
    keys: &KeyRing,
    ws: &Slug,
    id: &str,
    phone_number_id: &str,
    sealed_pin: &wabridge_events::types::SealedToken,
) -> StepOutcome {
    let pin = match open_sealed(keys, ws, id, "pin", sealed_pin) {
        Ok(v) => v,
        Err(o) => return o,
    };
    let token = match token(ctx, keys, ws, phone_number_id).await {
        Ok(t) => t,
        Err(o) => return o,
    };
    let body = json!({"messaging_product": "whatsapp", "pin": pin.expose_secret()});
    let answer = graph
        .post_json(&format!("{phone_number_id}/register"), &token, &body)
        .await;
    drop(body);
    match answer {
        Answer::Ok(_) => StepOutcome::Done(Some("registered for the Cloud API".into())),
        Answer::NoAnswer { detail } => no_answer(detail),
        Answer::Rejected { status, error } => {
            let e = step_error(
                Some(status),
                error.as_ref(),
                &format!("Meta refused the registration ({status})"),
            );
            if status >= 500 {
                return StepOutcome::Transient(e);
            }
            let (reason, detail) = match error.as_ref().map(|e| e.code) {
                Some(133016) => ("registration_limit", "Meta blocks registering this number for 72 hours after 10 attempts (133016); try again after that".to_string()),
                Some(131031) | Some(133005) => ("wrong_pin", "Meta did not accept the two-step verification PIN (or the account is locked); start onboarding again with the right PIN".to_string()),
                Some(190) => ("token_rejected", "Meta did not accept the business token; run Embedded Signup again".to_string()),
                _ => ("registration_failed", format!("Meta refused the registration: {}", e.message)),
            };
            StepOutcome::Permanent {
                reason,
                error: e,
                detail,
            }
        }
    }
}

/// Step 4: route the number to the workspace — the phone-number claim, with its 409
/// rules — under the display number Meta has for it.
pub async fn route(
    ctx: &Ctx,
    graph: &Graph,
    keys: &KeyRing,
    ws: &Slug,
    waba_id: &str,
    phone_number_id: &str,
) -> StepOutcome {
    let token = match token(ctx, keys, ws, phone_number_id).await {
        Ok(t) => t,
        Err(o) => return o,
    };
    let display = match graph
        .get_json(
            phone_number_id,
            &token,
            &[("fields", "display_phone_number,verified_name")],
        )
        .await
    {
        Answer::Ok(body) => body
            .get("display_phone_number")
            .and_then(|d| d.as_str())
            .map(str::to_owned),
        Answer::NoAnswer { detail } => return no_answer(detail),
        Answer::Rejected { status, error } => {
            return classify_call(status, error.as_ref(), "reading the number's details")
        }
    };
    let Some(display) = display.filter(|d| !d.trim().is_empty() && d.len() <= 32) else {
        return StepOutcome::Permanent {
            reason: "meta_error",
            error: ours("Meta's answer had no display_phone_number"),
            detail: "Meta did not say the number's display number; check the phone_number_id"
                .into(),
        };
    };
    // The claim a workspace key would make: a WABA of another workspace is refused.
    let caller = Caller {
        role_limit: Some(Role::Owner),
        ..Caller::system(super::NAME)
    };
    match numbers::claim(ctx, &caller, ws, phone_number_id, waba_id, &display).await {
        Ok(n) => StepOutcome::Done(Some(format!(
            "routed to the workspace as {}",
            n.display_phone_number
        ))),
        Err(CommandError::Conflict(d)) => StepOutcome::Permanent {
            reason: if d.contains("WABA") {
                "waba_held_by_another_workspace"
            } else {
                "number_held_by_another_workspace"
            },
            error: ours(d.clone()),
            detail: d,
        },
        Err(
            e @ (CommandError::Validation(_)
            | CommandError::NotFound(_)
            | CommandError::Forbidden(_)),
        ) => StepOutcome::Permanent {
            reason: "route_refused",
            error: ours(e.to_string()),
            detail: e.to_string(),
        },
        Err(e) => StepOutcome::Transient(ours(e.to_string())),
    }
}
