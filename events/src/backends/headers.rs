//! How the envelope travels as message headers (so the payload stays byte-exact).

use std::{borrow::Cow, collections::BTreeMap, fmt::Write as _};

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

/// The whole envelope in one header: what the JetStream backend writes (see
/// [`encode_compact`]). Events written before it carry the separate headers above,
/// which are still read.
pub const ENVELOPE: &str = "Wb-Envelope";

/// The envelope as (name, value) pairs, one header per field: the form written
/// before [`ENVELOPE`] (still read by [`decode`]). Values are ASCII without control
/// characters.
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

/// Rebuilds the envelope from the separate headers of [`encode`]; unknown headers are
/// ignored (forward compatible).
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

/// The version of the one-header form; a reader refuses any other.
const COMPACT_V1: &str = "1";

/// The envelope as one header value: `1;id;type;v;occurred_at;recorded_at;
/// correlation_id;actor;workspace;causation_id;source_ip;signature`, each optional
/// field empty when absent and `=`-prefixed when present (so an empty value stays
/// one). Text is percent-encoded where it is not printable ASCII, and for `%`, `;`
/// and space, so the value is lossless (the separate headers replaced anything else
/// with `?`) and never starts or ends with a space a header parser could trim.
///
/// Why one header: the NATS client parses every header of every delivered message
/// into its map, and builds and copies the map for every publish; with about ten
/// per event that was a tenth of the server's work under load.
pub fn encode_compact(env: &Envelope) -> String {
    Compact(env).to_string()
}

/// An envelope rendered as [`encode_compact`] writes it.
struct Compact<'a>(&'a Envelope);

impl std::fmt::Display for Compact<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = self.0;
        // The actor as `kind:id` (its rendered form), written without building it.
        write!(
            f,
            "{COMPACT_V1};{};{};{};{};{};{};{}:{}",
            e.id,
            Escaped(&e.event_type),
            e.v,
            e.occurred_at,
            e.recorded_at,
            e.correlation_id,
            Escaped(e.actor.kind.as_str()),
            Escaped(&e.actor.id),
        )?;
        optional(f, e.workspace.as_ref())?;
        optional(f, e.causation_id.as_ref())?;
        optional(f, e.source_ip.as_deref().map(Escaped).as_ref())?;
        optional(f, e.signature.as_deref().map(Escaped).as_ref())
    }
}

/// An optional field of [`Compact`]: `;` then nothing when absent, `=value` when
/// present.
fn optional(
    f: &mut std::fmt::Formatter<'_>,
    v: Option<&impl std::fmt::Display>,
) -> std::fmt::Result {
    f.write_str(";")?;
    match v {
        Some(v) => write!(f, "={v}"),
        None => Ok(()),
    }
}

/// Text percent-encoded for [`encode_compact`].
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0;
        let plain = |b: u8| b.is_ascii_graphic() && b != b'%' && b != b';';
        if s.bytes().all(plain) {
            return f.write_str(s);
        }
        for b in s.bytes() {
            if plain(b) {
                f.write_char(b as char)?;
            } else {
                write!(f, "%{b:02X}")?;
            }
        }
        Ok(())
    }
}

/// Undoes [`Escaped`]: borrowed when nothing was encoded.
fn unescape(s: &str) -> anyhow::Result<Cow<'_, str>> {
    if !s.contains('%') {
        return Ok(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| anyhow!("a bad %-escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(Cow::Owned(
        String::from_utf8(out).context("an escape that is not UTF-8")?,
    ))
}

/// Reads a value written by [`encode_compact`]. Fields after the last one this
/// version knows are ignored (a later version may append some).
pub fn decode_compact(s: &str) -> anyhow::Result<Envelope> {
    let mut f = s.split(';');
    let mut next = |name: &str| f.next().ok_or_else(|| anyhow!("{ENVELOPE}: no {name}"));
    let version = next("version")?;
    if version != COMPACT_V1 {
        anyhow::bail!("{ENVELOPE}: format {version:?} is not one this version reads");
    }
    let id = Uuid::parse_str(next("id")?).context("envelope id")?;
    let event_type = unescape(next("type")?)?.into_owned();
    let v = next("v")?.parse().context("envelope v")?;
    let occurred_at = Timestamp::parse(next("occurred_at")?).context("envelope occurred_at")?;
    let recorded_at = Timestamp::parse(next("recorded_at")?).context("envelope recorded_at")?;
    let correlation_id =
        Uuid::parse_str(next("correlation_id")?).context("envelope correlation_id")?;
    let actor =
        Actor::parse(&unescape(next("actor")?)?).ok_or_else(|| anyhow!("bad envelope actor"))?;
    let mut optional = |name: &str| -> anyhow::Result<Option<&str>> {
        let v = next(name)?;
        match v.strip_prefix('=') {
            Some(v) => Ok(Some(v)),
            None if v.is_empty() => Ok(None),
            None => anyhow::bail!("{ENVELOPE}: {name} {v:?} is neither empty nor `=`-prefixed"),
        }
    };
    let workspace = optional("workspace")?
        .map(Slug::parse)
        .transpose()
        .context("envelope workspace")?;
    let causation_id = optional("causation_id")?
        .map(Uuid::parse_str)
        .transpose()
        .context("envelope causation_id")?;
    let source_ip = optional("source_ip")?
        .map(unescape)
        .transpose()?
        .map(Cow::into_owned);
    let signature = optional("signature")?
        .map(unescape)
        .transpose()?
        .map(Cow::into_owned);
    Ok(Envelope {
        id,
        event_type,
        v,
        workspace,
        occurred_at,
        recorded_at,
        actor,
        correlation_id,
        causation_id,
        source_ip,
        signature,
    })
}

/// Reads an envelope as the embedded log stores it: the one-header form
/// ([`encode_compact`], what it writes), or a JSON object of the separate headers
/// ([`to_json`], what it wrote before).
pub fn from_stored(s: &str) -> anyhow::Result<Envelope> {
    if s.starts_with('{') {
        from_json(s)
    } else {
        decode_compact(s)
    }
}

/// Encodes the envelope headers as one JSON object (what the embedded log stored
/// before the one-header form; still read, see [`from_stored`]).
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

    /// The envelope without its optional fields.
    fn bare() -> Envelope {
        Envelope {
            workspace: None,
            causation_id: None,
            source_ip: None,
            signature: None,
            ..envelope()
        }
    }

    #[test]
    fn the_one_header_form_comes_back_as_written_losslessly() {
        let env = envelope();
        let one = encode_compact(&env);
        assert!(one.starts_with("1;"), "{one}");
        assert_eq!(decode_compact(&one).unwrap(), env);
        // Without the optional ones, and with empty ones (which are not absent).
        let bare = bare();
        assert_eq!(decode_compact(&encode_compact(&bare)).unwrap(), bare);
        let empty = Envelope {
            source_ip: Some(String::new()),
            signature: Some(String::new()),
            ..bare.clone()
        };
        assert_eq!(decode_compact(&encode_compact(&empty)).unwrap(), empty);
        // Text that is not plain printable ASCII, or holds the format's own
        // characters, comes back exactly (the separate headers made it `?`).
        let odd = Envelope {
            event_type: "odd;type%".into(),
            actor: Actor::system(" Zoë; 100% "),
            source_ip: Some(" 2001:db8::1;x ".into()),
            signature: Some("sha256=ab;%\u{0}\n".into()),
            ..envelope()
        };
        let written = encode_compact(&odd);
        assert!(written.bytes().all(|b| b.is_ascii_graphic()), "{written}");
        assert_eq!(written.matches(';').count(), 11, "{written}");
        assert_eq!(decode_compact(&written).unwrap(), odd);
        // A later version's extra fields are ignored; another format is refused.
        assert_eq!(decode_compact(&format!("{one};later;fields")).unwrap(), env);
        let other = one.replacen("1;", "2;", 1);
        assert!(format!("{:#}", decode_compact(&other).unwrap_err()).contains("format \"2\""));
        // Short, or an optional field without its `=`, or a broken escape.
        let short: Vec<&str> = one.split(';').take(8).collect();
        assert!(
            format!("{:#}", decode_compact(&short.join(";")).unwrap_err()).contains("no workspace")
        );
        let unprefixed = encode_compact(&bare).replacen(";;", ";acme;", 1);
        assert!(decode_compact(&unprefixed).is_err(), "{unprefixed}");
        assert!(decode_compact(&written.replacen("%3B", "%3", 1)).is_err());
        assert!(decode_compact(&written.replacen("%3B", "%FF", 1)).is_err());
    }

    #[test]
    fn json_headers_come_back_as_written_with_escapes_and_unknown_names() {
        let env = envelope();
        let json = to_json(&env);
        assert_eq!(from_json(&json).unwrap(), env);
        // Without the optional ones.
        let bare = bare();
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
