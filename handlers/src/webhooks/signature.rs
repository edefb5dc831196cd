//! Verification of Meta's `X-Hub-Signature-256` header: `sha256=<hex>` where `<hex>` is
//! HMAC-SHA256 over the raw body bytes, keyed with the app secret.
//!
//! Verification runs over the bytes exactly as received (never a re-serialisation) and
//! accepts any one of several secrets, so an app secret can be rotated without downtime.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The only accepted scheme prefix of the header value.
const PREFIX: &[u8] = b"sha256=";

/// Number of hex digits in a SHA-256 digest.
const HEX_LEN: usize = 64;

/// Why a signature was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The request carries no `X-Hub-Signature-256` header.
    #[error("the X-Hub-Signature-256 header is missing")]
    Missing,
    /// The header is not `sha256=` followed by exactly 64 lowercase hex digits.
    #[error("the X-Hub-Signature-256 header is not `sha256=` followed by 64 lowercase hex digits")]
    Malformed,
    /// The header is well formed but matches none of the app secrets.
    #[error("the X-Hub-Signature-256 signature matches none of the app secrets")]
    Mismatch,
}

/// Checks the `X-Hub-Signature-256` header value against the raw body, accepting it if any
/// one of `secrets` produced it. The comparison is constant-time.
pub fn verify_signature(
    secrets: &[SecretString],
    header: Option<&[u8]>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let expected = parse_header(header.ok_or(SignatureError::Missing)?)?;
    // Every secret is tried (no early exit), so timing does not reveal which one matched.
    let matched = secrets.iter().fold(false, |matched, secret| {
        signed_with(secret.expose_secret(), body, &expected) | matched
    });
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// The full header value (`sha256=<64 lowercase hex>`) Meta would send for `body`
/// signed with `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let digest = mac(secret, body).finalize().into_bytes();
    format!("sha256={}", hex::encode(digest))
}

/// The digest carried by a well-formed header value.
fn parse_header(header: &[u8]) -> Result<[u8; 32], SignatureError> {
    let hex_part = header
        .strip_prefix(PREFIX)
        .ok_or(SignatureError::Malformed)?;
    let lowercase_hex = |b: &u8| matches!(b, b'0'..=b'9' | b'a'..=b'f');
    if hex_part.len() != HEX_LEN || !hex_part.iter().all(lowercase_hex) {
        return Err(SignatureError::Malformed);
    }
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut digest).map_err(|_| SignatureError::Malformed)?;
    Ok(digest)
}

/// Whether `expected` is the HMAC of `body` under `secret` (constant-time comparison).
fn signed_with(secret: &str, body: &[u8], expected: &[u8]) -> bool {
    mac(secret, body).verify_slice(expected).is_ok()
}

/// An HMAC-SHA256 keyed with `secret`, fed with `body`.
fn mac(secret: &str, body: &[u8]) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::fixtures;

    const SECRET: &str = "test_app_secret";

    fn secrets(list: &[&str]) -> Vec<SecretString> {
        list.iter().map(|s| SecretString::from(*s)).collect()
    }

    fn verify(list: &[&str], header: &str, body: &[u8]) -> Result<(), SignatureError> {
        verify_signature(&secrets(list), Some(header.as_bytes()), body)
    }

    /// `(file name, header value)` pairs from `SIGNATURES.tsv`.
    fn signature_table() -> Vec<(&'static str, &'static str)> {
        fixtures::SIGNATURES_TSV
            .lines()
            .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
            .map(|line| line.split_once('\t').expect("tab-separated line"))
            .collect()
    }

    #[test]
    fn every_fixture_verifies_with_its_listed_signature() {
        let table = signature_table();
        assert_eq!(
            table.len(),
            fixtures::ALL.len(),
            "SIGNATURES.tsv vs fixture list"
        );
        for (name, header) in table {
            let body = fixtures::get(name);
            assert_eq!(verify(&[SECRET], header, body), Ok(()), "{name}");
            assert_eq!(sign(SECRET, body), header, "{name}");
        }
    }

    #[test]
    fn any_secret_of_a_rotation_list_may_match() {
        let body = fixtures::get("inbound_text.json");
        let header = sign(SECRET, body);
        assert_eq!(verify(&["old", SECRET], &header, body), Ok(()));
        assert_eq!(verify(&[SECRET, "new"], &header, body), Ok(()));
        assert_eq!(verify(&[], &header, body), Err(SignatureError::Mismatch));
    }

    #[test]
    fn wrong_secret_or_altered_body_is_a_mismatch() {
        let body = fixtures::get("statuses_delivered_and_failed.json");
        let header = sign(SECRET, body);
        assert_eq!(
            verify(&["wrong"], &header, body),
            Err(SignatureError::Mismatch)
        );
        for i in [0, body.len() / 2, body.len() - 1] {
            let mut flipped = body.to_vec();
            flipped[i] ^= 0x01;
            assert_eq!(
                verify(&[SECRET], &header, &flipped),
                Err(SignatureError::Mismatch)
            );
        }
    }

    #[test]
    fn absent_header_is_missing() {
        let body = fixtures::get("inbound_text.json");
        let result = verify_signature(&secrets(&[SECRET]), None, body);
        assert_eq!(result, Err(SignatureError::Missing));
    }

    #[test]
    fn malformed_headers_are_refused_before_any_hmac() {
        let body = fixtures::get("inbound_text.json");
        let good = sign(SECRET, body);
        let hex_part = &good["sha256=".len()..];
        let bad = [
            good.to_uppercase(),
            format!("sha256={}", hex_part.to_uppercase()),
            good[..good.len() - 1].to_string(),
            format!("{good}0"),
            hex_part.to_string(),
            format!("sha1={hex_part}"),
            format!("SHA256={hex_part}"),
            format!("sha256= {hex_part}"),
            format!("sha256={hex_part} "),
            format!(" {good}"),
            format!("sha256={}g", &hex_part[..63]),
            "sha256=".to_string(),
            String::new(),
        ];
        for header in bad {
            assert_eq!(
                verify(&[SECRET], &header, body),
                Err(SignatureError::Malformed),
                "{header:?}"
            );
        }
        let not_utf8 = verify_signature(&secrets(&[SECRET]), Some(b"sha256=\xff"), body);
        assert_eq!(not_utf8, Err(SignatureError::Malformed));
    }
}
