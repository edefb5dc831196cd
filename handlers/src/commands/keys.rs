//! Creating and revoking API keys.
//!
//! Every key event of a workspace (and every operator key event) is on one subject,
//! so each decision is made against the keys as they stand and appended with an
//! optimistic-concurrency check: two racing revocations of a workspace's last two
//! owner keys cannot both succeed.

use secrecy::SecretString;
use wabridge_events::{
    types::{ApiKeyCreated, ApiKeyRevoked, ApiKeyUsed, EventData},
    Slug, Timestamp,
};
use wabridge_projections::views::api_keys::{self, ApiKeyRow};

use super::{Caller, CommandError, Ctx};
use crate::access::{ApiKeyText, KeyKind, Role};

/// How often a decision is retried when the keys changed concurrently.
const OCC_ATTEMPTS: usize = 8;

/// A created key: shown once.
pub struct CreatedKey {
    /// Its id.
    pub id: String,
    /// The key text.
    pub key: SecretString,
    /// Its role (`operator` for operator keys).
    pub role: String,
}

/// The subject of a workspace's key events (`None`: the operator keys).
pub fn keys_subject(ctx: &Ctx, workspace: Option<&Slug>) -> String {
    ApiKeyCreated::subject(ctx.log.namespace(), workspace, "all")
}

/// Appends a key event if the workspace's keys are still at `seq` (the state the
/// decision was made on); false when they changed meanwhile (decide again).
async fn append_keys_event<T: EventData>(
    ctx: &Ctx,
    caller: &Caller,
    workspace: Option<&Slug>,
    data: &T,
    seq: u64,
) -> Result<bool, CommandError> {
    let mut ev = ctx.event(workspace, caller, data);
    ev.expected_last_subject_seq = Some(seq);
    Ok(ctx
        .append_checked(ev, &["api_keys", "audit"])
        .await?
        .is_some())
}

fn concurrent() -> CommandError {
    CommandError::Conflict("the workspace's keys changed concurrently; retry".into())
}

/// Creates a workspace key (`workspace` set) or an operator key (`None`, role
/// ignored). A caller may only create keys of its own role or below.
pub async fn create(
    ctx: &Ctx,
    caller: &Caller,
    workspace: Option<&Slug>,
    name: &str,
    role: Option<Role>,
    expires_at: Option<Timestamp>,
) -> Result<CreatedKey, CommandError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(CommandError::Validation(
            "name must be 1 to 200 characters".into(),
        ));
    }
    if let Some(exp) = expires_at {
        if exp <= Timestamp::now() {
            return Err(CommandError::Validation(
                "expires_at must be in the future".into(),
            ));
        }
    }
    let (kind, role_name) = match workspace {
        Some(ws) => {
            super::workspaces::require(ctx, ws).await?;
            let role = role.ok_or_else(|| CommandError::Validation("role is required".into()))?;
            caller.check_role(role, "create")?;
            (KeyKind::Workspace, role.as_str().to_string())
        }
        None if caller.role_limit.is_some() => {
            return Err(CommandError::Forbidden(
                "only operators create operator keys".into(),
            ))
        }
        None => (KeyKind::Operator, "operator".to_string()),
    };
    let key = ApiKeyText::generate(kind);
    let data = ApiKeyCreated {
        key_id: key.id.clone(),
        workspace: workspace.cloned(),
        name: name.to_string(),
        role: role_name.clone(),
        secret_hash: key.hash(),
        expires_at,
    };
    let subject = keys_subject(ctx, workspace);
    for _ in 0..OCC_ATTEMPTS {
        let seq = ctx.fresh("api_keys", &subject).await?;
        if append_keys_event(ctx, caller, workspace, &data, seq).await? {
            return Ok(CreatedKey {
                id: key.id,
                key: key.text,
                role: role_name,
            });
        }
    }
    Err(concurrent())
}

/// Revokes a key of a workspace (`workspace` set) or an operator key (`None`). A
/// caller may only revoke keys of its own role or below; the last valid owner key of
/// a workspace cannot be revoked. Revoking a revoked key is a no-op.
pub async fn revoke(
    ctx: &Ctx,
    caller: &Caller,
    workspace: Option<&Slug>,
    key_id: &str,
) -> Result<(), CommandError> {
    let subject = keys_subject(ctx, workspace);
    for _ in 0..OCC_ATTEMPTS {
        let seq = ctx.fresh("api_keys", &subject).await?;
        let key = match api_keys::get(&ctx.store, key_id).await? {
            Some(k) if k.workspace.as_deref() == workspace.map(Slug::as_str) => k,
            _ => {
                return Err(CommandError::NotFound(match workspace {
                    Some(ws) => format!("no key {key_id} in workspace {ws}"),
                    None => format!("no operator key {key_id}"),
                }))
            }
        };
        if key.revoked_at.is_some() {
            return Ok(());
        }
        if let Some(role) = Role::parse(&key.role) {
            caller.check_role(role, "revoke")?;
        }
        let now = Timestamp::now().to_string();
        if let Some(ws) = workspace {
            if key.role == "owner"
                && is_valid(&key, &now)
                && api_keys::count_valid(&ctx.store, ws.as_str(), "owner", &now).await? <= 1
            {
                return Err(CommandError::Conflict(
                    "the last valid owner key of a workspace cannot be revoked".into(),
                ));
            }
        }
        let data = ApiKeyRevoked {
            key_id: key_id.to_string(),
        };
        if append_keys_event(ctx, caller, workspace, &data, seq).await? {
            return Ok(());
        }
    }
    Err(concurrent())
}

/// Revokes any key by id, whatever its workspace (operators, and the host's
/// `wabridge keys revoke --id`).
pub async fn revoke_any(ctx: &Ctx, caller: &Caller, key_id: &str) -> Result<(), CommandError> {
    let head = ctx
        .log
        .last_seq(wabridge_events::StreamKind::Domain)
        .await?;
    ctx.wait("api_keys", head).await?;
    let key = api_keys::get(&ctx.store, key_id)
        .await?
        .ok_or_else(|| CommandError::NotFound(format!("no key {key_id}")))?;
    let ws = key
        .workspace
        .as_deref()
        .map(Slug::parse)
        .transpose()
        .map_err(|e| CommandError::Internal(e.into()))?;
    revoke(ctx, caller, ws.as_ref(), key_id).await
}

/// Whether a key row is neither revoked nor expired at `now`.
pub fn is_valid(key: &ApiKeyRow, now: &str) -> bool {
    key.revoked_at.is_none() && key.expires_at.as_deref().is_none_or(|e| e > now)
}

/// Records a use of a key for `last_used_at` (the caller limits this to once a
/// minute per key). Not audited.
pub async fn record_use(ctx: &Ctx, key: &ApiKeyRow, minute: Timestamp) -> Result<(), CommandError> {
    let ws = key
        .workspace
        .as_deref()
        .map(Slug::parse)
        .transpose()
        .map_err(|e| CommandError::Internal(e.into()))?;
    let data = ApiKeyUsed {
        key_id: key.id.clone(),
        minute,
    };
    let mut ev = ctx.event(ws.as_ref(), &Caller::system("auth"), &data);
    ev.msg_id = Some(format!("use:{}:{}", key.id, minute));
    ctx.log.append(ev).await?;
    Ok(())
}
