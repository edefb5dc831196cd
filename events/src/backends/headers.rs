//! How the envelope travels as message headers (so the payload stays byte-exact).

use std::{borrow::Cow, collections::BTreeMap};

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
pub fn decode<'a>(get: impl Fn(&str) -> Option<&'a str>) -> anyhow::Result<Envelope> {
    let req = |name: &str| get(name).ok_or_else(|| anyhow!("missing header {name}"));
    Ok(Envelope {
        id: Uuid::parse_str(req(ID)?).context("Wb-Id")?,
        event_type: req(TYPE)?.to_string(),
        v: req(VERSION)?.parse().context("Wb-V")?,
        workspace: get(WORKSPACE)
            .map(Slug::parse)
            .transpose()
            .context("Wb-Workspace")?,
        occurred_at: Timestamp::parse(req(OCCURRED_AT)?).context("Wb-Occurred-At")?,
        recorded_at: Timestamp::parse(req(RECORDED_AT)?).context("Wb-Recorded-At")?,
        actor: Actor::parse(req(ACTOR)?).ok_or_else(|| anyhow!("bad Wb-Actor"))?,
        correlation_id: Uuid::parse_str(req(CORRELATION)?).context("Wb-Correlation-Id")?,
        causation_id: get(CAUSATION)
            .map(Uuid::parse_str)
            .transpose()
            .context("Wb-Causation-Id")?,
        source_ip: get(SOURCE_IP).map(str::to_string),
        signature: get(SIGNATURE).map(str::to_string),
    })
}

/// Encodes the envelope headers as one JSON object (the embedded log stores this).
pub fn to_json(env: &Envelope) -> String {
    let map: BTreeMap<&str, String> = encode(env).into_iter().collect();
    serde_json::to_string(&map).expect("string map serialises")
}

/// Decodes the JSON object written by [`to_json`]. Its names and values are read
/// in place (borrowed from `s` unless they hold an escape), not copied into a map
/// of strings: a replay decodes a million of these.
pub fn from_json(s: &str) -> anyhow::Result<Envelope> {
    let Pairs(pairs) = serde_json::from_str(s).context("envelope headers")?;
    // A repeated name reads as a map would: the last one.
    decode(|name| {
        pairs
            .iter()
            .rev()
            .find(|(n, _)| n.0 == name)
            .map(|(_, v)| &*v.0)
    })
}

/// A header's name or value as the JSON text holds it.
#[derive(serde::Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// The headers object's (name, value) pairs, in its order; names this version
/// does not know are kept and never asked for (forward compatible).
struct Pairs<'a>(Vec<(Text<'a>, Text<'a>)>);

impl<'de> serde::Deserialize<'de> for Pairs<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Pairs<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of header names and values")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Pairs<'de>, M::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(12));
                while let Some(pair) = map.next_entry()? {
                    pairs.push(pair);
                }
                Ok(Pairs(pairs))
            }
        }
        d.deserialize_map(Visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            id: Uuid::now_v7(),
            event_type: "message.received".into(),
            v: 3,
            workspace: Some(Slug::parse("acme").unwrap()),
            occurred_at: Timestamp::parse("2026-01-02T03:04:05.000006Z").unwrap(),
            recorded_at: Timestamp::now(),
            actor: Actor::parse("meta:webhook").unwrap(),
            correlation_id: Uuid::now_v7(),
            causation_id: Some(Uuid::now_v7()),
            source_ip: Some("203.0.113.9".into()),
            signature: Some("sha256=ab12".into()),
        }
    }

    #[test]
    fn json_headers_come_back_as_written_with_escapes_and_unknown_names() {
        let env = envelope();
        let json = to_json(&env);
        assert_eq!(from_json(&json).unwrap(), env);
        // Without the optional ones.
        let bare = Envelope {
            workspace: None,
            causation_id: None,
            source_ip: None,
            signature: None,
            ..envelope()
        };
        assert_eq!(from_json(&to_json(&bare)).unwrap(), bare);
        // A value written with an escape (not borrowed), and a header this version
        // does not know, as a later one may write it.
        let escaped = json
            .replace("\"message.received\"", "\"message\\u002ereceived\"")
            .replacen('{', "{\"Wb-Later\":\"x\",", 1);
        assert_ne!(escaped, json);
        assert_eq!(from_json(&escaped).unwrap(), env);
        // A name written twice reads as the last one, as a map of the object would.
        let repeated = json.replacen('{', "{\"Wb-Type\":\"other.type\",", 1);
        assert_eq!(from_json(&repeated).unwrap(), env);
        // A required one missing.
        let missing = json.replace("\"Wb-Type\"", "\"Wb-Gone\"");
        assert!(
            format!("{:#}", from_json(&missing).unwrap_err()).contains("missing header Wb-Type")
        );
    }
}
