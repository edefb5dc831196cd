//! Audit retention: entries older than the retention leave the view through a
//! logged `audit.retention_cut` carrying the hash at the boundary, signed with
//! `AUDIT_SIGNING_KEY` when set, so the chain stays verifiable across the cut.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use wabridge_events::{types::AuditRetentionCut, Actor, Slug, Timestamp};
use wabridge_projections::views::audit;

use super::{Caller, CommandError, Ctx};

/// HMAC-SHA256 over `workspace|through_seq|boundary_hash`, hex.
pub fn sign_cut(
    key: &SecretString,
    workspace: &str,
    through_seq: u64,
    boundary_hash: &str,
) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.expose_secret().as_bytes()).expect("any key length");
    mac.update(format!("{workspace}|{through_seq}|{boundary_hash}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Verifies a chain, including the signature of its retention cut when a key is set.
pub async fn verify(
    ctx: &Ctx,
    key: Option<&SecretString>,
    workspace: &str,
) -> Result<audit::Verification, CommandError> {
    let head = ctx
        .log
        .last_seq(wabridge_events::StreamKind::Domain)
        .await?;
    ctx.wait("audit", head).await?;
    let mut v = audit::verify(&ctx.store, workspace).await?;
    if let (Some(key), Some(h)) = (key, audit::get_head(&ctx.store, workspace).await?) {
        if h.cut_through > 0 {
            let expected = sign_cut(key, workspace, h.cut_through as u64, &h.cut_hash);
            if h.cut_signature.as_deref() != Some(expected.as_str()) {
                v.ok = false;
                v.first_bad_seq = Some(h.cut_through);
            }
        }
    }
    Ok(v)
}

/// Cuts every chain's entries older than `cutoff`; returns how many chains were cut.
pub async fn retention_pass(
    ctx: &Ctx,
    key: Option<&SecretString>,
    cutoff: Timestamp,
) -> Result<u64, CommandError> {
    let mut cut = 0;
    for ws in audit::chains(&ctx.store).await? {
        let Some(last) = audit::last_before(&ctx.store, &ws, &cutoff.to_string()).await? else {
            continue;
        };
        let head = audit::get_head(&ctx.store, &ws).await?;
        if head.is_some_and(|h| h.cut_through >= last.seq) {
            continue;
        }
        let through = last.seq as u64;
        let data = AuditRetentionCut {
            through_seq: through,
            boundary_hash: last.hash.clone(),
            cutoff,
            signature: key.map(|k| sign_cut(k, &ws, through, &last.hash)),
        };
        let slug = if ws.is_empty() {
            None
        } else {
            Some(Slug::parse(&ws).map_err(|e| CommandError::Internal(e.into()))?)
        };
        let mut ev = ctx.event(
            slug.as_ref(),
            &Caller {
                actor: Actor::system("audit-retention"),
                ip: None,
            },
            &data,
        );
        ev.msg_id = Some(format!("cut:{ws}:{through}"));
        ctx.append_and_wait(ev, &["audit"]).await?;
        cut += 1;
    }
    Ok(cut)
}
