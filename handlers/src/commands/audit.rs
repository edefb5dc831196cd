//! Audit retention: entries older than the retention leave the view through a
//! logged `audit.retention_cut` carrying the hash at the boundary, signed with
//! `AUDIT_SIGNING_KEY` when set, so the chain stays verifiable across the cut.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use wabridge_events::{types::AuditRetentionCut, Slug, Timestamp};
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

/// Verifies a chain: the stored entries against their keyed hashes and links, the
/// retention cut's signature when a key is set, then the whole chain against the
/// log (the source of truth).
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
    let mut found = vec![audit::verify(&ctx.store, key, workspace).await?];
    if let (Some(key), Some(h)) = (key, audit::get_head(&ctx.store, workspace).await?) {
        if h.cut_through > 0 {
            let expected = sign_cut(key, workspace, h.cut_through as u64, &h.cut_hash);
            if h.cut_signature.as_deref() != Some(expected.as_str()) {
                found.push(audit::Verification {
                    ok: false,
                    entries_checked: found[0].entries_checked,
                    first_bad_seq: Some(h.cut_through),
                    reason: Some("the retention cut's signature does not match".into()),
                });
            }
        }
    }
    let through = ctx.store.checkpoint("audit").await?;
    found.push(audit::verify_with_log(&ctx.store, &*ctx.log, key, workspace, through).await?);
    // The earliest problem found by any check is the answer.
    let first_bad = found
        .iter()
        .filter(|v| !v.ok)
        .min_by_key(|v| v.first_bad_seq.unwrap_or(i64::MAX))
        .cloned();
    Ok(first_bad.unwrap_or_else(|| found.pop().expect("the log check ran")))
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
        let mut ev = ctx.event(slug.as_ref(), &Caller::system("audit-retention"), &data);
        ev.msg_id = Some(format!("cut:{ws}:{through}"));
        ctx.append_and_wait(ev, &["audit"]).await?;
        cut += 1;
    }
    Ok(cut)
}
