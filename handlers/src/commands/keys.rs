//! Creating and revoking API keys.

use secrecy::SecretString;
use wabridge_events::{
    types::{ApiKeyCreated, ApiKeyRevoked, ApiKeyUsed},
    Slug, Timestamp,
};
use wabridge_projections::views::api_keys::{self, ApiKeyRow};

use super::{Caller, CommandError, Ctx};
use crate::access::{ApiKeyText, KeyKind, Role};

/// A created key: shown once.
pub struct CreatedKey {
    /// Its id.
    pub id: String,
    /// The key text.
    pub key: SecretString,
    /// Its role (`operator` for operator keys).
    pub role: String,
}

/// The subject of a key's events.
pub fn key_subject(ctx: &Ctx, workspace: Option<&Slug>, key_id: &str) -> String {
    ctx.log.namespace().domain_subject(workspace, "key", key_id)
}

/// Creates a workspace key (`workspace` set) or an operator key (`None`, role ignored).
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
            (KeyKind::Workspace, role.as_str().to_string())
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
    let mut ev = ctx.event(workspace, caller, &data);
    ev.expected_last_subject_seq = Some(0);
    ctx.append_and_wait(ev, &["api_keys", "audit"]).await?;
    Ok(CreatedKey {
        id: key.id,
        key: key.text,
        role: role_name,
    })
}

/// Revokes a key of a workspace. The last valid owner key cannot be revoked.
pub async fn revoke(
    ctx: &Ctx,
    caller: &Caller,
    workspace: &Slug,
    key_id: &str,
) -> Result<(), CommandError> {
    let subject = key_subject(ctx, Some(workspace), key_id);
    let seq = ctx.fresh("api_keys", &subject).await?;
    let key = api_keys::get(&ctx.store, key_id).await?;
    let key = match key {
        Some(k) if k.workspace.as_deref() == Some(workspace.as_str()) => k,
        _ => {
            return Err(CommandError::NotFound(format!(
                "no key {key_id} in workspace {workspace}"
            )))
        }
    };
    if key.revoked_at.is_some() {
        return Ok(());
    }
    let now = Timestamp::now().to_string();
    if key.role == "owner"
        && is_valid(&key, &now)
        && api_keys::count_valid(&ctx.store, workspace.as_str(), "owner", &now).await? <= 1
    {
        return Err(CommandError::Conflict(
            "the last valid owner key of a workspace cannot be revoked".into(),
        ));
    }
    let mut ev = ctx.event(
        Some(workspace),
        caller,
        &ApiKeyRevoked {
            key_id: key_id.to_string(),
        },
    );
    ev.expected_last_subject_seq = Some(seq);
    ctx.append_and_wait(ev, &["api_keys", "audit"]).await?;
    Ok(())
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
    let mut ev = ctx.event(
        ws.as_ref(),
        &Caller {
            actor: wabridge_events::Actor::system("auth"),
            ip: None,
        },
        &data,
    );
    ev.msg_id = Some(format!("use:{}:{}", key.id, minute));
    ctx.log.append(ev).await?;
    Ok(())
}
