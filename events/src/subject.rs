//! Stream and subject naming.
//!
//! Domain events go to subjects `<ns>.<workspace>.<category>.<aggregate>` in the
//! domain stream (no expiry); global events use `_` as the workspace token (not a
//! valid slug, so no clash). Raw webhooks go to `<ns>raw.meta` in their own stream,
//! which can get a shorter retention. One subject per aggregate makes optimistic
//! concurrency per aggregate possible, and lets consumers and replays filter.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// An immutable workspace slug: `[a-z0-9-]{1,40}`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Slug(#[schemars(regex(pattern = r"^[a-z0-9-]{1,40}$"))] String);

/// A string that is not a valid slug.
#[derive(Debug, thiserror::Error)]
#[error("a workspace slug is 1 to 40 characters of a-z, 0-9 and '-'")]
pub struct SlugError;

impl Slug {
    /// Validates a slug.
    pub fn parse(s: &str) -> Result<Self, SlugError> {
        let ok = !s.is_empty()
            && s.len() <= 40
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Slug(s.to_string()))
        } else {
            Err(SlugError)
        }
    }

    /// The slug as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Slug {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Slug::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// The prefix of every stream and subject, so tests (and several deployments on one
/// NATS account) can share a server. Default `wb`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace(String);

impl Default for Namespace {
    fn default() -> Self {
        Namespace("wb".into())
    }
}

impl Namespace {
    /// A namespace of lowercase letters and digits, starting with a letter.
    pub fn new(ns: &str) -> anyhow::Result<Self> {
        let ok = ns.len() <= 32
            && ns.starts_with(|c: char| c.is_ascii_lowercase())
            && ns
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        anyhow::ensure!(
            ok,
            "a namespace is up to 32 lowercase letters and digits, starting with a letter"
        );
        Ok(Namespace(ns.to_string()))
    }

    /// The namespace text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Subject of a domain event: `<ns>.<ws|_>.<category>.<aggregate>`.
    pub fn domain_subject(
        &self,
        workspace: Option<&Slug>,
        category: &str,
        aggregate: &str,
    ) -> String {
        let ws = workspace.map(Slug::as_str).unwrap_or("_");
        format!(
            "{}.{}.{}.{}",
            self.0,
            ws,
            category,
            subject_token(aggregate)
        )
    }

    /// The filter matching every domain subject of one workspace.
    pub fn workspace_filter(&self, workspace: &Slug) -> String {
        format!("{}.{}.>", self.0, workspace)
    }

    /// Subject of a raw Meta webhook.
    pub fn raw_webhook_subject(&self) -> String {
        format!("{}raw.meta", self.0)
    }

    /// The subject filter matching every subject of a stream.
    pub fn stream_filter(&self, stream: crate::StreamKind) -> String {
        match stream {
            crate::StreamKind::Domain => format!("{}.>", self.0),
            crate::StreamKind::Raw => format!("{}raw.>", self.0),
        }
    }

    /// The stream a subject belongs to, if it is one of ours.
    pub fn stream_of(&self, subject: &str) -> Option<crate::StreamKind> {
        let rest = subject.strip_prefix(self.0.as_str())?;
        if rest.starts_with("raw.") {
            Some(crate::StreamKind::Raw)
        } else if rest.starts_with('.') {
            Some(crate::StreamKind::Domain)
        } else {
            None
        }
    }

    /// The one stream all of `subjects` are in: `None` when there are none, or
    /// when they are not all in one stream of this namespace.
    pub fn stream_of_all<S: AsRef<str>>(&self, subjects: &[S]) -> Option<crate::StreamKind> {
        let first = self.stream_of(subjects.first()?.as_ref())?;
        subjects
            .iter()
            .all(|s| self.stream_of(s.as_ref()) == Some(first))
            .then_some(first)
    }

    /// The JetStream stream name for a stream kind, e.g. `WB_EVENTS`.
    pub fn stream_name(&self, stream: crate::StreamKind) -> String {
        let ns = self.0.to_ascii_uppercase();
        match stream {
            crate::StreamKind::Domain => format!("{ns}_EVENTS"),
            crate::StreamKind::Raw => format!("{ns}_RAW"),
        }
    }
}

/// Makes any id safe as one subject token: kept as is when it is made of
/// `[A-Za-z0-9_-]` (and not too long), else `h` + 32 hex digits of its SHA-256
/// (a wamid contains dots, which separate tokens).
pub fn subject_token(id: &str) -> String {
    let safe = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if safe {
        id.to_string()
    } else {
        let digest = Sha256::digest(id.as_bytes());
        format!("h{}", hex::encode(&digest[..16]))
    }
}

/// Whether `subject` matches a NATS-style filter (`*` one token, `>` the rest).
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Patterns that between them match every one of `subjects`, one per token count:
/// where the subjects of that length differ in a token, the pattern has `*`. The
/// consent settings of many workspaces (`wb.acme.consent.keywords`,
/// `wb.shop.consent.keywords`) become one pattern, `wb.*.consent.keywords`, so a
/// backend can find the last event on all of them with one look-up. A pattern may
/// match other subjects of the same shape too: it covers, it does not select.
/// In the order each length first appears; none for no subjects.
pub fn covering_patterns<S: AsRef<str>>(subjects: &[S]) -> Vec<String> {
    let mut patterns: Vec<Vec<&str>> = vec![];
    for s in subjects {
        let tokens: Vec<&str> = s.as_ref().split('.').collect();
        match patterns.iter_mut().find(|p| p.len() == tokens.len()) {
            Some(p) => {
                for (have, t) in p.iter_mut().zip(&tokens) {
                    if have != t {
                        *have = "*";
                    }
                }
            }
            None => patterns.push(tokens),
        }
    }
    patterns.into_iter().map(|p| p.join(".")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covering_patterns_match_every_subject_and_differ_only_where_they_do() {
        let subjects = [
            "wb.acme.consent.keywords",
            "wb.shop.consent.keywords",
            "wb.acme.consent.keywords",
            "wbraw.meta",
            "wb.zed.consent.keywords",
        ];
        let patterns = covering_patterns(&subjects);
        assert_eq!(patterns, ["wb.*.consent.keywords", "wbraw.meta"]);
        for s in subjects {
            assert!(patterns.iter().any(|p| subject_matches(p, s)), "{s}");
        }
        // One subject, or the same one repeated, is its own exact pattern.
        assert_eq!(
            covering_patterns(&["wb.acme.consent.keywords"; 2]),
            ["wb.acme.consent.keywords"]
        );
        // Several differing tokens each become a wildcard; the others stay.
        assert_eq!(
            covering_patterns(&["wb.a.contact.x", "wb.b.contact.y"]),
            ["wb.*.contact.*"]
        );
        assert!(covering_patterns::<&str>(&[]).is_empty());
    }

    #[test]
    fn slugs() {
        assert!(Slug::parse("acme-1").is_ok());
        for bad in ["", "Acme", "a_b", "a.b", &"a".repeat(41), "é"] {
            assert!(Slug::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subjects() {
        let ns = Namespace::default();
        let ws = Slug::parse("acme").unwrap();
        assert_eq!(ns.domain_subject(Some(&ws), "key", "k1"), "wb.acme.key.k1");
        let s = ns.domain_subject(None, "message", "wamid.ABC=");
        assert!(
            s.starts_with("wb._.message.h") && s.split('.').count() == 4,
            "{s}"
        );
        assert_eq!(
            ns.stream_of("wb.acme.key.k1"),
            Some(crate::StreamKind::Domain)
        );
        assert_eq!(ns.stream_of("wbraw.meta"), Some(crate::StreamKind::Raw));
        assert_eq!(ns.stream_of("wbx.meta"), None);
        assert!(subject_matches("wb.*.key.>", "wb.acme.key.k1"));
        assert!(!subject_matches("wb.*.key.>", "wb.acme.token.k1"));
        assert!(subject_matches("wb.acme.key.k1", "wb.acme.key.k1"));
        assert!(!subject_matches("wb.acme", "wb.acme.key"));
    }
}
