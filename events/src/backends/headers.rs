//! How the envelope travels as message headers (so the payload stays byte-exact).

use std::collections::BTreeMap;

use anyhow::{anyhow, Context};
use uuid::Uuid;

use crate::{Actor, Envelope, Slug, Timestamp};

/// Header names. `Nats-` is reserved by NATS, so ours start with `Wb-`.
pub const ID: &str = "Wb-Id";
/// Event type.
pub const TYPE: &str = "Wb-Type";
/// Schema version.
pub const VERSION: &str = "Wb-V";
/// Workspace slug.
pub const WORKSPACE: &str = "Wb-Workspace";
/// Occurred-at time.
pub const OCCURRED_AT: &str = "Wb-Occurred-At";
/// Recorded-at time.
pub const RECORDED_AT: &str = "Wb-Recorded-At";
/// Actor `kind:id`.
pub const ACTOR: &str = "Wb-Actor";
/// Correlation id.
pub const CORRELATION: &str = "Wb-Correlation-Id";
/// Causation id.
pub const CAUSATION: &str = "Wb-Causation-Id";
/// Source address.
pub const SOURCE_IP: &str = "Wb-Source-Ip";
/// A raw webhook's `X-Hub-Signature-256`.
pub const SIGNATURE: &str = "Wb-Signature";

/// The envelope as (name, value) pairs. Values are ASCII without control characters.
pub fn encode(env: &Envelope) -> Vec<(&'static str, String)> {
    let mut h = vec![
        (ID, env.id.to_string()),
        (TYPE, env.event_type.clone()),
        (VERSION, env.v.to_string()),
        (OCCURRED_AT, env.occurred_at.to_string()),
        (RECORDED_AT, env.recorded_at.to_string()),
        (ACTOR, sanitize(&env.actor.render())),
        (CORRELATION, env.correlation_id.to_string()),
    ];
    if let Some(ws) = &env.workspace {
        h.push((WORKSPACE, ws.to_string()));
    }
    if let Some(c) = env.causation_id {
        h.push((CAUSATION, c.to_string()));
    }
    if let Some(ip) = &env.source_ip {
        h.push((SOURCE_IP, sanitize(ip)));
    }
    if let Some(sig) = &env.signature {
        h.push((SIGNATURE, sanitize(sig)));
    }
    h
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Rebuilds the envelope from headers; unknown headers are ignored (forward compatible).
pub fn decode(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Envelope> {
    let req = |name: &str| get(name).ok_or_else(|| anyhow!("missing header {name}"));
    Ok(Envelope {
        id: Uuid::parse_str(&req(ID)?).context("Wb-Id")?,
        event_type: req(TYPE)?,
        v: req(VERSION)?.parse().context("Wb-V")?,
        workspace: get(WORKSPACE)
            .map(|s| Slug::parse(&s))
            .transpose()
            .context("Wb-Workspace")?,
        occurred_at: Timestamp::parse(&req(OCCURRED_AT)?).context("Wb-Occurred-At")?,
        recorded_at: Timestamp::parse(&req(RECORDED_AT)?).context("Wb-Recorded-At")?,
        actor: Actor::parse(&req(ACTOR)?).ok_or_else(|| anyhow!("bad Wb-Actor"))?,
        correlation_id: Uuid::parse_str(&req(CORRELATION)?).context("Wb-Correlation-Id")?,
        causation_id: get(CAUSATION)
            .map(|s| Uuid::parse_str(&s))
            .transpose()
            .context("Wb-Causation-Id")?,
        source_ip: get(SOURCE_IP),
        signature: get(SIGNATURE),
    })
}

/// Encodes the envelope headers as one JSON object (the embedded log stores this).
pub fn to_json(env: &Envelope) -> String {
    let map: BTreeMap<&str, String> = encode(env).into_iter().collect();
    serde_json::to_string(&map).expect("string map serialises")
}

/// Decodes the JSON object written by [`to_json`].
pub fn from_json(s: &str) -> anyhow::Result<Envelope> {
    let map: BTreeMap<String, String> = serde_json::from_str(s).context("envelope headers")?;
    decode(|k| map.get(k).cloned())
}
