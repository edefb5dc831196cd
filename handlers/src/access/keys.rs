//! The API key format: `wbk_<id>_<secret><check>` for workspace keys and
//! `wbo_<id>_<secret><check>` for operator keys, where `id` is 16 hex digits,
//! `secret` 40 hex digits (160 random bits) and `check` 8 hex digits of SHA-256 over
//! the rest — so a leaked key can be recognised (by prefix and checksum) without a
//! database look-up. Only the SHA-256 of the whole text is stored.

use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// Workspace or operator key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// A key of one workspace.
    Workspace,
    /// An operator key (every workspace and the global operations).
    Operator,
}

impl KeyKind {
    fn prefix(&self) -> &'static str {
        match self {
            KeyKind::Workspace => "wbk_",
            KeyKind::Operator => "wbo_",
        }
    }
}

/// A freshly generated key: its id and the full text (shown once).
pub struct ApiKeyText {
    /// Public id.
    pub id: String,
    /// The whole key text.
    pub text: SecretString,
}

impl ApiKeyText {
    /// Generates a new random key.
    pub fn generate(kind: KeyKind) -> Self {
        let mut rng = rand::thread_rng();
        let mut id = [0u8; 8];
        let mut secret = [0u8; 20];
        rng.fill_bytes(&mut id);
        rng.fill_bytes(&mut secret);
        let id = hex::encode(id);
        let body = format!("{}{}_{}", kind.prefix(), id, hex::encode(secret));
        let check = checksum(&body);
        ApiKeyText {
            id,
            text: SecretString::from(format!("{body}{check}")),
        }
    }

    /// Hex SHA-256 of the key text (what is stored).
    pub fn hash(&self) -> String {
        hash_key(self.text.expose_secret())
    }
}

fn checksum(body: &str) -> String {
    hex::encode(&Sha256::digest(body.as_bytes())[..4])
}

/// Hex SHA-256 of a key text.
pub fn hash_key(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// A key text that is well formed (prefix, lengths, checksum).
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedKey {
    /// Workspace or operator.
    pub kind: KeyKind,
    /// Public id.
    pub id: String,
    /// Hex SHA-256 of the whole text.
    pub hash: String,
}

/// Parses a key text; `None` when malformed (wrong prefix, length, characters or checksum).
pub fn parse(text: &str) -> Option<ParsedKey> {
    let kind = if text.starts_with("wbk_") {
        KeyKind::Workspace
    } else if text.starts_with("wbo_") {
        KeyKind::Operator
    } else {
        return None;
    };
    let rest = &text[4..];
    if rest.len() != 16 + 1 + 40 + 8 || rest.as_bytes()[16] != b'_' {
        return None;
    }
    let (id, tail) = (&rest[..16], &rest[17..]);
    let hexish = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hexish(id) || !hexish(tail) {
        return None;
    }
    let body = &text[..text.len() - 8];
    if checksum(body) != text[text.len() - 8..] {
        return None;
    }
    Some(ParsedKey {
        kind,
        id: id.to_string(),
        hash: hash_key(text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_tampering_fails() {
        let k = ApiKeyText::generate(KeyKind::Workspace);
        let text = k.text.expose_secret().to_string();
        let p = parse(&text).expect("parses");
        assert_eq!(p.kind, KeyKind::Workspace);
        assert_eq!(p.id, k.id);
        assert_eq!(p.hash, k.hash());
        let mut bad = text.clone().into_bytes();
        let i = 30;
        bad[i] = if bad[i] == b'a' { b'b' } else { b'a' };
        assert!(parse(std::str::from_utf8(&bad).unwrap()).is_none());
        assert!(parse(&text[..text.len() - 1]).is_none());
        assert!(parse(&text.replace("wbk_", "wbx_")).is_none());
        let o = ApiKeyText::generate(KeyKind::Operator);
        assert_eq!(
            parse(o.text.expose_secret()).unwrap().kind,
            KeyKind::Operator
        );
    }
}
