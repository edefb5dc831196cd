//! Sealing and opening Meta access tokens with AES-256-GCM-SIV.
//!
//! A sealed token is bound to its workspace, phone number id and key version through the
//! associated data `wabridge-token|v1|<workspace>|<phone_number_id>|<key_version>`, so a
//! sealed form copied to another number (or relabelled with another key version) does
//! not open. Plaintext never appears in errors, `Debug` output or logs, and every buffer
//! that held it is zeroized.

use aes_gcm_siv::aead::AeadInPlace;
use aes_gcm_siv::{Aes256GcmSiv, Key, KeyInit, Nonce};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use wabridge_events::types::SealedToken;
use zeroize::Zeroizing;

use super::keyring::{KeyRing, MasterKey};

/// Nonce length of AES-GCM-SIV, in bytes.
const NONCE_LEN: usize = 12;
/// Authentication tag length, in bytes (appended to the ciphertext).
const TAG_LEN: usize = 16;
/// How many bytes of SHA-256 make up a fingerprint.
const FINGERPRINT_LEN: usize = 8;

/// Why a sealed token could not be opened. Never carries plaintext.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The sealed token names a key version the ring does not have (e.g. it was removed
    /// before the token was rewrapped).
    #[error("unknown master key version {0}")]
    UnknownKeyVersion(String),
    /// Authentication failed: wrong key, tampered nonce/ciphertext/version, or the token
    /// was sealed for another workspace or phone number.
    #[error("the token could not be decrypted (wrong key, tampered, or bound to another number)")]
    Decrypt,
    /// The nonce or ciphertext is not valid hex of a plausible length, or the
    /// authenticated plaintext is not UTF-8.
    #[error("malformed sealed token")]
    Malformed,
}

/// The associated data binding a sealed token to its context.
fn associated_data(workspace: &str, phone_number_id: &str, key_version: &str) -> String {
    format!("wabridge-token|v1|{workspace}|{phone_number_id}|{key_version}")
}

/// The cipher for one master key.
fn cipher(key: &MasterKey) -> Aes256GcmSiv {
    Aes256GcmSiv::new(Key::<Aes256GcmSiv>::from_slice(key.bytes()))
}

/// Encrypts a token under the ring's current key, with a random 12-byte nonce and the
/// associated data `wabridge-token|v1|<workspace>|<phone_number_id>|<key_version>`.
///
/// # Panics
///
/// Only if the token is longer than AES-GCM-SIV's 64 GiB plaintext limit.
pub fn seal(
    ring: &KeyRing,
    workspace: &str,
    phone_number_id: &str,
    token: &SecretString,
) -> SealedToken {
    let key = ring.current();
    let aad = associated_data(workspace, phone_number_id, key.version());

    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);

    let plaintext = token.expose_secret().as_bytes();
    // Room for the tag up front, so the buffer never reallocates (which would leave a
    // copy of the plaintext behind); zeroized on drop in case encryption fails.
    let mut buffer = Zeroizing::new(Vec::with_capacity(plaintext.len() + TAG_LEN));
    buffer.extend_from_slice(plaintext);
    cipher(key)
        .encrypt_in_place(Nonce::from_slice(&nonce), aad.as_bytes(), &mut *buffer)
        .expect("AES-GCM-SIV only rejects plaintexts over 64 GiB");

    SealedToken {
        key_version: key.version().to_owned(),
        nonce: hex::encode(nonce),
        ciphertext: hex::encode(&*buffer),
    }
}

/// Decrypts a sealed token and returns it in a [`SecretString`]; the intermediate buffer
/// is zeroized. Fails with [`SealError::UnknownKeyVersion`] when the ring lacks the key,
/// [`SealError::Decrypt`] when authentication fails (wrong key, tampering, other
/// workspace or phone number), [`SealError::Malformed`] on bad hex.
pub fn open(
    ring: &KeyRing,
    workspace: &str,
    phone_number_id: &str,
    sealed: &SealedToken,
) -> Result<SecretString, SealError> {
    let key = ring
        .get(&sealed.key_version)
        .ok_or_else(|| SealError::UnknownKeyVersion(sealed.key_version.clone()))?;

    let mut nonce = [0u8; NONCE_LEN];
    hex::decode_to_slice(&sealed.nonce, &mut nonce).map_err(|_| SealError::Malformed)?;
    let mut buffer =
        Zeroizing::new(hex::decode(&sealed.ciphertext).map_err(|_| SealError::Malformed)?);
    if buffer.len() < TAG_LEN {
        return Err(SealError::Malformed);
    }

    let aad = associated_data(workspace, phone_number_id, &sealed.key_version);
    cipher(key)
        .decrypt_in_place(Nonce::from_slice(&nonce), aad.as_bytes(), &mut *buffer)
        .map_err(|_| SealError::Decrypt)?;

    let text = std::str::from_utf8(&buffer).map_err(|_| SealError::Malformed)?;
    // `SecretString::from(String)` would shrink the allocation (a realloc that can leave
    // an un-zeroized copy behind); build a box of the exact size instead.
    Ok(SecretString::from(Box::<str>::from(text)))
}

/// Re-encrypts a sealed token under the ring's current key (for key rotation), keeping
/// its binding to the workspace and phone number. Returns `None` when it is already
/// under the current key. The sealed form is always authenticated first, so a damaged
/// or misbound token is reported even when it is already current.
pub fn rewrap(
    ring: &KeyRing,
    workspace: &str,
    phone_number_id: &str,
    sealed: &SealedToken,
) -> Result<Option<SealedToken>, SealError> {
    let token = open(ring, workspace, phone_number_id, sealed)?;
    if sealed.key_version == ring.current_version() {
        return Ok(None);
    }
    Ok(Some(seal(ring, workspace, phone_number_id, &token)))
}

/// The token's fingerprint: the first 8 bytes of its SHA-256, as 16 lowercase hex
/// characters. It depends on the token only, so it is stable across key rotation.
pub fn fingerprint(token: &SecretString) -> String {
    let digest = Sha256::digest(token.expose_secret().as_bytes());
    hex::encode(&digest[..FINGERPRINT_LEN])
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "f0e1d2c3b4a5968778695a4b3c2d1e0ff0e1d2c3b4a5968778695a4b3c2d1e0f";
    const TOKEN: &str = "EAAGm0PX4ZCpsBAtestTokenZDZD";
    const WS: &str = "acme";
    const PHONE: &str = "106540352242922";

    fn make_ring(spec: &str) -> KeyRing {
        KeyRing::parse_keys(&spec.replace("K1", K1).replace("K2", K2)).unwrap()
    }

    fn token() -> SecretString {
        SecretString::from(TOKEN)
    }

    #[test]
    fn round_trip() {
        let ring = make_ring("v1:K1");
        let sealed = seal(&ring, WS, PHONE, &token());
        assert_eq!(sealed.key_version, "v1");
        assert_eq!(sealed.nonce.len(), 2 * NONCE_LEN);
        assert!(hex::decode(&sealed.nonce).is_ok());
        assert_eq!(sealed.ciphertext.len(), 2 * (TOKEN.len() + TAG_LEN));
        assert!(!sealed.ciphertext.contains(&hex::encode(TOKEN)));
        let opened = open(&ring, WS, PHONE, &sealed).unwrap();
        assert_eq!(opened.expose_secret(), TOKEN);
    }

    #[test]
    fn round_trip_empty_and_unicode_tokens() {
        let ring = make_ring("v1:K1");
        for t in ["", "tøkén-✓"] {
            let sealed = seal(&ring, WS, PHONE, &SecretString::from(t));
            assert_eq!(open(&ring, WS, PHONE, &sealed).unwrap().expose_secret(), t);
        }
    }

    #[test]
    fn seals_under_the_current_key() {
        let ring = make_ring("v1:K1,v2:K2");
        let sealed = seal(&ring, WS, PHONE, &token());
        assert_eq!(sealed.key_version, "v2");
        // Only v2 opens it.
        let v1_only = make_ring("v1:K1");
        assert!(
            matches!(open(&v1_only, WS, PHONE, &sealed), Err(SealError::UnknownKeyVersion(v)) if v == "v2")
        );
        let v2_only = make_ring("v2:K2");
        assert_eq!(
            open(&v2_only, WS, PHONE, &sealed).unwrap().expose_secret(),
            TOKEN
        );
    }

    #[test]
    fn two_seals_differ() {
        let ring = make_ring("v1:K1");
        let a = seal(&ring, WS, PHONE, &token());
        let b = seal(&ring, WS, PHONE, &token());
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_ne!(a, b);
        assert_eq!(open(&ring, WS, PHONE, &a).unwrap().expose_secret(), TOKEN);
        assert_eq!(open(&ring, WS, PHONE, &b).unwrap().expose_secret(), TOKEN);
    }

    #[test]
    fn other_workspace_or_phone_fails() {
        let ring = make_ring("v1:K1");
        let sealed = seal(&ring, WS, PHONE, &token());
        assert!(matches!(
            open(&ring, "other", PHONE, &sealed),
            Err(SealError::Decrypt)
        ));
        assert!(matches!(
            open(&ring, WS, "106540352242923", &sealed),
            Err(SealError::Decrypt)
        ));
        assert!(matches!(
            open(&ring, PHONE, WS, &sealed),
            Err(SealError::Decrypt)
        ));
        assert!(open(&ring, WS, PHONE, &sealed).is_ok());
    }

    #[test]
    fn tampered_ciphertext_fails() {
        let ring = make_ring("v1:K1");
        let sealed = seal(&ring, WS, PHONE, &token());
        let mut bytes = hex::decode(&sealed.ciphertext).unwrap();
        for i in [0, bytes.len() / 2, bytes.len() - 1] {
            bytes[i] ^= 0x01;
            let tampered = SealedToken {
                ciphertext: hex::encode(&bytes),
                ..sealed.clone()
            };
            assert!(
                matches!(open(&ring, WS, PHONE, &tampered), Err(SealError::Decrypt)),
                "byte {i}"
            );
            bytes[i] ^= 0x01;
        }
        // Truncated (tag cut short) and extended.
        let truncated = SealedToken {
            ciphertext: sealed.ciphertext[..sealed.ciphertext.len() - 2].to_owned(),
            ..sealed.clone()
        };
        assert!(matches!(
            open(&ring, WS, PHONE, &truncated),
            Err(SealError::Decrypt)
        ));
        let extended = SealedToken {
            ciphertext: format!("{}00", sealed.ciphertext),
            ..sealed.clone()
        };
        assert!(matches!(
            open(&ring, WS, PHONE, &extended),
            Err(SealError::Decrypt)
        ));
    }

    #[test]
    fn tampered_nonce_fails() {
        let ring = make_ring("v1:K1");
        let sealed = seal(&ring, WS, PHONE, &token());
        let mut nonce = hex::decode(&sealed.nonce).unwrap();
        nonce[0] ^= 0x80;
        let tampered = SealedToken {
            nonce: hex::encode(&nonce),
            ..sealed.clone()
        };
        assert!(matches!(
            open(&ring, WS, PHONE, &tampered),
            Err(SealError::Decrypt)
        ));
    }

    #[test]
    fn tampered_version_fails() {
        // v2 holds the same key bytes as v1: only the associated data can tell them apart.
        let ring = make_ring("v1:K1,v2:K1,v3:K2");
        let sealed = {
            let v1 = KeyRing::parse_keys(&format!("v1:{K1}")).unwrap();
            seal(&v1, WS, PHONE, &token())
        };
        assert_eq!(
            open(&ring, WS, PHONE, &sealed).unwrap().expose_secret(),
            TOKEN
        );
        for version in ["v2", "v3"] {
            let relabelled = SealedToken {
                key_version: version.to_owned(),
                ..sealed.clone()
            };
            assert!(
                matches!(open(&ring, WS, PHONE, &relabelled), Err(SealError::Decrypt)),
                "{version}"
            );
        }
        let unknown = SealedToken {
            key_version: "v9".to_owned(),
            ..sealed.clone()
        };
        match open(&ring, WS, PHONE, &unknown) {
            Err(SealError::UnknownKeyVersion(v)) => assert_eq!(v, "v9"),
            other => panic!(
                "expected UnknownKeyVersion, got {:?}",
                other.map(|_| "<token>")
            ),
        }
    }

    #[test]
    fn malformed_sealed_forms_are_errors() {
        let ring = make_ring("v1:K1");
        let sealed = seal(&ring, WS, PHONE, &token());
        let cases = [
            SealedToken {
                nonce: "zz".repeat(NONCE_LEN),
                ..sealed.clone()
            },
            SealedToken {
                nonce: sealed.nonce[..22].to_owned(),
                ..sealed.clone()
            },
            SealedToken {
                nonce: format!("{}00", sealed.nonce),
                ..sealed.clone()
            },
            SealedToken {
                ciphertext: "xyz".to_owned(),
                ..sealed.clone()
            },
            SealedToken {
                ciphertext: String::new(),
                ..sealed.clone()
            },
            SealedToken {
                ciphertext: "00".repeat(TAG_LEN - 1),
                ..sealed.clone()
            },
        ];
        for case in cases {
            assert!(
                matches!(open(&ring, WS, PHONE, &case), Err(SealError::Malformed)),
                "{case:?}"
            );
        }
    }

    #[test]
    fn rotation_rewrap_and_removal() {
        let old_ring = make_ring("v1:K1");
        let sealed_v1 = seal(&old_ring, WS, PHONE, &token());
        let fp = fingerprint(&token());

        // v2 added: the v1 token still opens, and rewrap moves it to v2.
        let rotated = make_ring("v1:K1,v2:K2");
        assert_eq!(
            open(&rotated, WS, PHONE, &sealed_v1)
                .unwrap()
                .expose_secret(),
            TOKEN
        );
        let sealed_v2 = rewrap(&rotated, WS, PHONE, &sealed_v1)
            .unwrap()
            .expect("moved to v2");
        assert_eq!(sealed_v2.key_version, "v2");
        assert_ne!(sealed_v2.ciphertext, sealed_v1.ciphertext);
        let reopened = open(&rotated, WS, PHONE, &sealed_v2).unwrap();
        assert_eq!(reopened.expose_secret(), TOKEN);
        assert_eq!(fingerprint(&reopened), fp);

        // A second rewrap has nothing to do.
        assert!(rewrap(&rotated, WS, PHONE, &sealed_v2).unwrap().is_none());

        // The rewrapped form stays bound to its number.
        assert!(matches!(
            open(&rotated, WS, "other", &sealed_v2),
            Err(SealError::Decrypt)
        ));
        assert!(matches!(
            rewrap(&rotated, WS, "other", &sealed_v1),
            Err(SealError::Decrypt)
        ));

        // v1 removed: the old form is now unknown, the new one still opens.
        let v2_only = make_ring("v2:K2");
        match open(&v2_only, WS, PHONE, &sealed_v1) {
            Err(SealError::UnknownKeyVersion(v)) => assert_eq!(v, "v1"),
            other => panic!(
                "expected UnknownKeyVersion, got {:?}",
                other.map(|_| "<token>")
            ),
        }
        assert!(matches!(
            rewrap(&v2_only, WS, PHONE, &sealed_v1),
            Err(SealError::UnknownKeyVersion(_))
        ));
        assert_eq!(
            open(&v2_only, WS, PHONE, &sealed_v2)
                .unwrap()
                .expose_secret(),
            TOKEN
        );
    }

    #[test]
    fn rewrap_of_a_damaged_current_token_is_an_error() {
        let ring = make_ring("v1:K1");
        let sealed = seal(&ring, WS, PHONE, &token());
        let mut bytes = hex::decode(&sealed.ciphertext).unwrap();
        bytes[0] ^= 0x01;
        let tampered = SealedToken {
            ciphertext: hex::encode(&bytes),
            ..sealed
        };
        assert!(matches!(
            rewrap(&ring, WS, PHONE, &tampered),
            Err(SealError::Decrypt)
        ));
    }

    #[test]
    fn fingerprint_is_first_8_bytes_of_sha256() {
        // SHA-256("abc") = ba7816bf8f01cfea 414140de5dae2223 ...
        assert_eq!(fingerprint(&SecretString::from("abc")), "ba7816bf8f01cfea");
        let fp = fingerprint(&token());
        assert_eq!(fp.len(), 16);
        assert_eq!(fp, fingerprint(&token()));
        assert_ne!(fp, fingerprint(&SecretString::from("another token")));
    }

    #[test]
    fn errors_and_debug_never_show_plaintext() {
        let ring = make_ring("v1:K1");
        let sealed = seal(&ring, WS, PHONE, &token());
        let opened = open(&ring, WS, PHONE, &sealed).unwrap();
        let mut texts = vec![
            format!("{sealed:?}"),
            format!("{opened:?}"),
            format!("{ring:?}"),
        ];
        for err in [
            SealError::Decrypt,
            SealError::Malformed,
            SealError::UnknownKeyVersion("v9".into()),
        ] {
            texts.push(err.to_string());
            texts.push(format!("{err:?}"));
        }
        texts.push(
            open(&ring, "other", PHONE, &sealed)
                .unwrap_err()
                .to_string(),
        );
        for text in texts {
            assert!(!text.contains(TOKEN), "{text}");
            assert!(!text.contains(K1), "{text}");
        }
    }
}
