//! The send command: validate, answer a repeated `Idempotency-Key` with the first
//! answer, admit under the workspace's rate limit, check consent and the 24-hour
//! window as of the log's head, then append `message.send_requested` (202). The
//! outbound sender (see `crate::sender`) posts it to Meta.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use sha2::{Digest, Sha256};
use wabridge_events::{
    types::{EventData, MessageSendBlocked, MessageSendRequested, RateLimitRejected, RateLimitSet},
    DomainEvent, ReadFrom, Slug, StreamKind, Timestamp,
};
use wabridge_projections::views::{phone_numbers, rate_limits, send_context};

use super::{Caller, CommandError, Ctx};
use crate::ratelimit::{self, Decision, Policy, SharedLimiter};
use crate::sending::request::{self, SendRequest, TemplateCategory, ValidSend};

/// Meta's customer service window: free-form messages only within 24 h of the
/// contact's last message.
pub const SERVICE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The answer to an accepted send.
#[derive(Clone, Debug)]
pub struct Accepted {
    /// wabridge's message id.
    pub id: String,
    /// The `RateLimit` and `RateLimit-Policy` headers of the admission (none for a
    /// repeated request answered from the log).
    pub headers: Vec<(&'static str, String)>,
}

/// Refusals counted per workspace and minute until the next flush appends them as
/// `rate_limit.rejected` (one event a second at most, not one per refusal).
#[derive(Default)]
pub struct Rejections(Mutex<HashMap<(Slug, String), u64>>);

impl Rejections {
    /// Counts one refusal now.
    pub fn count(&self, ws: &Slug) {
        let minute = rate_limits::minute_of(&Timestamp::now().to_string());
        *self
            .0
            .lock()
            .expect("rejections lock")
            .entry((ws.clone(), minute))
            .or_default() += 1;
    }

    /// Appends what was counted since the last flush; what could not be appended is
    /// counted again for the next flush.
    pub async fn flush(&self, ctx: &Ctx) -> anyhow::Result<()> {
        let taken: Vec<((Slug, String), u64)> =
            std::mem::take(&mut *self.0.lock().expect("rejections lock"))
                .into_iter()
                .collect();
        let mut failed = None;
        for ((ws, minute), count) in taken {
            if failed.is_none() {
                let data = RateLimitRejected {
                    minute: minute.clone(),
                    count,
                };
                let ev = ctx.event(Some(&ws), &Caller::system("rate_limiter"), &data);
                match ctx.log.append(ev).await {
                    Ok(_) => continue,
                    Err(e) => failed = Some(e),
                }
            }
            *self
                .0
                .lock()
                .expect("rejections lock")
                .entry((ws, minute))
                .or_default() += count;
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

/// The message id of a request: derived from the workspace and the key when there is
/// one (so two instances racing on one key address one subject), else fresh.
pub fn message_id(ws: &Slug, idempotency_key: Option<&str>) -> String {
    match idempotency_key {
        Some(k) => {
            let mut h = Sha256::new();
            h.update(ws.as_str().as_bytes());
            h.update([0]);
            h.update(k.as_bytes());
            format!("msg_{}", &hex::encode(h.finalize())[..26])
        }
        None => format!("msg_{}", uuid::Uuid::now_v7().simple()),
    }
}

fn subject(ctx: &Ctx, ws: &Slug, id: &str) -> String {
    MessageSendRequested::subject(ctx.log.namespace(), Some(ws), id)
}

/// The earlier request with this message id, if any: same body → the same answer;
/// another body → 409.
async fn earlier(
    ctx: &Ctx,
    ws: &Slug,
    id: &str,
    hash: &str,
) -> Result<Option<Accepted>, CommandError> {
    let subject = subject(ctx, ws, id);
    let seq = ctx.log.last_subject_seq(&subject).await?;
    if seq == 0 {
        return Ok(None);
    }
    // The request is the first event on the message's subject.
    let events = ctx
        .log
        .read(StreamKind::Domain, ReadFrom::Seq(1), Some(&subject), 1)
        .await?;
    let Some(first) = events.first() else {
        return Ok(None);
    };
    match DomainEvent::decode(&first.envelope, &first.payload)
        .map_err(|e| CommandError::Internal(e.into()))?
    {
        DomainEvent::MessageSendRequested(r) if r.request_hash == hash => Ok(Some(Accepted {
            id: r.id,
            headers: vec![],
        })),
        DomainEvent::MessageSendRequested(_) => Err(CommandError::IdempotencyConflict(
            "this Idempotency-Key was used with another request body".into(),
        )),
        _ => Ok(None),
    }
}

/// The number that sends: the one named, which the workspace must hold, or the
/// workspace's only number.
async fn sending_number(ctx: &Ctx, ws: &Slug, named: Option<&str>) -> Result<String, CommandError> {
    if let Some(n) = named {
        super::numbers::require_held(ctx, ws, n).await?;
        return Ok(n.to_owned());
    }
    ctx.fresh("phone_numbers", &super::numbers::routing_subject(ctx))
        .await?;
    let held = phone_numbers::list(&ctx.store, ws.as_str(), None, 2).await?;
    match held.as_slice() {
        [one] => Ok(one.phone_number_id.clone()),
        [] => Err(CommandError::Unprocessable {
            code: "no_phone_number",
            detail: format!("workspace {ws} holds no phone number to send from; claim one"),
        }),
        _ => Err(CommandError::Validation(
            "phone_number_id is required: the workspace holds several numbers".into(),
        )),
    }
}

/// The workspace's rate-limit policy (the default until one is set), fresh.
pub async fn policy(ctx: &Ctx, ws: &Slug) -> Result<Policy, CommandError> {
    ctx.fresh(
        "rate_limits",
        &RateLimitSet::subject(ctx.log.namespace(), Some(ws), "policy"),
    )
    .await?;
    Ok(match rate_limits::policy(&ctx.store, ws.as_str()).await? {
        Some(p) => Policy {
            requests_per_second: p.requests_per_second,
            burst: p.burst as u32,
        },
        None => ratelimit::DEFAULT,
    })
}

/// Sets the workspace's policy (audited).
pub async fn set_policy(
    ctx: &Ctx,
    caller: &Caller,
    ws: &Slug,
    policy: Policy,
) -> Result<Policy, CommandError> {
    policy.validate().map_err(CommandError::Validation)?;
    super::workspaces::require(ctx, ws).await?;
    let data = RateLimitSet {
        requests_per_second: policy.requests_per_second,
        burst: policy.burst,
    };
    ctx.append_and_wait(
        ctx.event(Some(ws), caller, &data),
        &["rate_limits", "audit"],
    )
    .await?;
    Ok(policy)
}

fn now_nanos() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or_default()
}

/// A template's category: the request's, else Meta's template webhooks', else
/// marketing (the strictest).
async fn category(ctx: &Ctx, ws: &Slug, v: &ValidSend) -> Result<Option<String>, CommandError> {
    if !v.is_template {
        return Ok(None);
    }
    if let Some(c) = v.category {
        return Ok(Some(c.as_str().to_owned()));
    }
    let name = v
        .body
        .get("name")
        .and_then(|n| n.as_str())
        .unwrap_or_default();
    let language = v
        .body
        .pointer("/language/code")
        .and_then(|n| n.as_str())
        .unwrap_or_default();
    Ok(Some(
        send_context::template_category(&ctx.store, ws.as_str(), name, language)
            .await?
            .unwrap_or_else(|| TemplateCategory::Marketing.as_str().to_owned()),
    ))
}

/// What refuses a send, if anything: an opt-out, or a free-form message outside the
/// 24-hour window (the read models must be fresh: see `consent::fresh_consent`).
async fn refusal(
    ctx: &Ctx,
    ws: &Slug,
    v: &ValidSend,
    category: Option<&str>,
) -> Result<Option<(&'static str, String)>, CommandError> {
    let who = v.recipient.as_str();
    let state =
        wabridge_projections::views::consent::state(&ctx.store, ws.as_str(), &[who]).await?;
    if state.opted_out {
        return Ok(Some((
            "contact_opted_out",
            format!("{who} has opted out of messages from this workspace"),
        )));
    }
    if state.marketing_opted_out && category == Some("marketing") {
        return Ok(Some((
            "contact_opted_out",
            format!("{who} has opted out of marketing messages; this template is marketing"),
        )));
    }
    if !v.is_template {
        let last = send_context::last_inbound(&ctx.store, ws.as_str(), &[who]).await?;
        let open = last.is_some_and(|at| at.plus(SERVICE_WINDOW) > Timestamp::now());
        if !open {
            let detail = match last {
                Some(at) => format!(
                    "{who} last wrote at {at}, more than 24 hours ago: only templates may be sent outside the customer service window"
                ),
                None => format!(
                    "{who} has never written to this workspace: only templates may be sent outside the customer service window"
                ),
            };
            return Ok(Some(("outside_service_window", detail)));
        }
    }
    Ok(None)
}

/// Accepts a send request (the raw JSON body, so the idempotency hash covers exactly
/// what the client sent).
pub async fn send(
    ctx: &Ctx,
    limiter: &SharedLimiter,
    rejections: &Rejections,
    caller: &Caller,
    ws: &Slug,
    idempotency_key: Option<&str>,
    raw: serde_json::Value,
) -> Result<Accepted, CommandError> {
    if let Some(k) = idempotency_key {
        if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY || k.chars().any(|c| c.is_control()) {
            return Err(CommandError::Validation(format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters"
            )));
        }
    }
    let req: SendRequest = serde_json::from_value(raw.clone())
        .map_err(|e| CommandError::Validation(format!("invalid request body: {e}")))?;
    let valid = request::validate(&req).map_err(CommandError::Validation)?;
    let hash = request::request_hash(&raw);
    if caller.role_limit.is_none() {
        // A workspace key proves its workspace exists (they are never deleted).
        super::workspaces::require(ctx, ws).await?;
    }
    let id = message_id(ws, idempotency_key);
    if idempotency_key.is_some() {
        if let Some(answer) = earlier(ctx, ws, &id, &hash).await? {
            return Ok(answer);
        }
    }
    let number = sending_number(ctx, ws, valid.phone_number_id.as_deref()).await?;

    // The rate limit first: a flood is refused before it costs a consent check.
    let policy = policy(ctx, ws).await?;
    let decision = limiter
        .admit(ws.as_str(), &policy, now_nanos())
        .await
        .map_err(|e| {
            CommandError::unavailable(
                "rate_limit_unavailable",
                format!("the rate limiter's shared state could not be confirmed: {e}"),
            )
        })?;
    let headers = ratelimit::headers(&policy, &decision);
    if let Decision::Deny { retry_after, .. } = &decision {
        rejections.count(ws);
        return Err(CommandError::RateLimited {
            detail: format!(
                "workspace {ws} is over its limit of {} messages/s (burst {}); retry in {:.1}s",
                policy.requests_per_second,
                policy.burst,
                retry_after.as_secs_f64()
            ),
            headers,
        });
    }

    // Consent, the window and template categories as of the log's head.
    super::consent::fresh_consent(ctx, ws).await?;
    if valid.is_template && valid.category.is_none() {
        // The category comes from Meta's template webhooks: as fresh as the head.
        ctx.fresh_as_log(&["send_context"]).await?;
    }
    let category = category(ctx, ws, &valid).await?;
    if let Some((code, detail)) = refusal(ctx, ws, &valid, category.as_deref()).await? {
        let data = MessageSendBlocked {
            id: id.clone(),
            phone_number_id: number.clone(),
            recipient: valid.recipient.contact(),
            message_type: valid.kind.as_str().to_owned(),
            category: category.clone(),
            reason: code.into(),
            detail: detail.clone(),
        };
        // On its own subject (see the catalog): a blocked request does not take the
        // key, so the same request may be sent once the contact opts back in.
        ctx.log.append(ctx.event(Some(ws), caller, &data)).await?;
        return Err(CommandError::Unprocessable { code, detail });
    }

    let data = MessageSendRequested {
        id: id.clone(),
        idempotency_key: idempotency_key.map(str::to_owned),
        request_hash: hash.clone(),
        phone_number_id: number,
        recipient: valid.recipient.contact(),
        message_type: valid.kind.as_str().to_owned(),
        category,
        body: valid.body.clone(),
    };
    let mut ev = ctx.event(Some(ws), caller, &data);
    if idempotency_key.is_some() {
        // Only the first request of a key is appended (on any instance).
        ev.expected_last_subject_seq = Some(0);
    }
    match ctx.log.append(ev).await {
        Ok(_) => Ok(Accepted { id, headers }),
        Err(wabridge_events::AppendError::WrongLastSequence { .. }) => {
            match earlier(ctx, ws, &id, &hash).await? {
                Some(answer) => Ok(answer),
                None => Err(CommandError::Conflict(
                    "the message changed concurrently; retry".into(),
                )),
            }
        }
        Err(e) => Err(e.into()),
    }
}
