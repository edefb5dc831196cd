//! The master key ring: every known 32-byte master key with its version label.
//!
//! Keys come from the environment, either `TOKEN_MASTER_KEYS=v1:hex,v2:hex` (the last
//! entry is the current key, used for new seals) or the shorthand `TOKEN_MASTER_KEY=hex`
//! (exactly `TOKEN_MASTER_KEYS=v1:hex`). Key material is zeroized on drop and never
//! printed: `Debug` shows versions only and errors name the variable and the entry,
//! never the value.

use std::fmt;
use std::sync::Arc;

use rand::RngCore;
use secrecy::{ExposeSecret, ExposeSecretMut, SecretBox};
use zeroize::{Zeroize, Zeroizing};

/// The variable holding the whole ring (`v1:hex,v2:hex`).
const KEYS_VAR: &str = "TOKEN_MASTER_KEYS";
/// The single-key shorthand (`hex`, meaning `v1:hex`).
const KEY_VAR: &str = "TOKEN_MASTER_KEY";
/// The version the single-key shorthand gets.
const SINGLE_KEY_VERSION: &str = "v1";
/// Longest accepted version label, in characters.
const MAX_VERSION_LEN: usize = 32;
/// Length of a master key in bytes.
const KEY_LEN: usize = 32;
/// Length of a master key in hex characters.
const KEY_HEX_LEN: usize = KEY_LEN * 2;

/// One 32-byte master key with its version label (e.g. `v1`).
///
/// The key bytes are zeroized on drop and never printed: `Debug` shows only the version.
pub struct MasterKey {
    version: String,
    /// Heap-allocated so that moving a `MasterKey` (e.g. when the key list grows) never
    /// leaves an un-zeroized copy of the bytes behind; zeroized on drop.
    key: SecretBox<[u8; KEY_LEN]>,
}

impl MasterKey {
    /// The version label, e.g. `v2`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The raw key bytes, for the sealing code in this crate only.
    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        self.key.expose_secret()
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// The ring: every known master key, in order; the **last** one is current (used for
/// new seals), the others only open older sealed tokens until they are rewrapped.
///
/// Cloning is cheap and shares the keys (no extra copies of key material). `Debug`
/// prints the versions only.
#[derive(Clone)]
pub struct KeyRing {
    /// Never empty; the last key is current.
    keys: Arc<[MasterKey]>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("versions", &self.versions())
            .field("current", &self.current_version())
            .finish()
    }
}

/// Why the master key configuration was rejected.
///
/// Messages name the variable (`TOKEN_MASTER_KEYS` or `TOKEN_MASTER_KEY`), the entry
/// (1-based) and what is wrong, but never echo any part of the value.
#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    /// Both `TOKEN_MASTER_KEYS` and `TOKEN_MASTER_KEY` are set.
    #[error("both {KEYS_VAR} and {KEY_VAR} are set; set only one of them")]
    BothSet,
    /// The variable is set but empty (or only whitespace).
    #[error("{var} is set but empty")]
    Empty {
        /// The variable.
        var: &'static str,
    },
    /// One comma-separated entry is empty (e.g. a trailing comma).
    #[error("{var}: entry {entry} is empty (expected <version>:<64 hex chars>)")]
    EmptyEntry {
        /// The variable.
        var: &'static str,
        /// 1-based position of the entry.
        entry: usize,
    },
    /// An entry has no `version:` prefix.
    #[error("{var}: entry {entry} has no version (expected <version>:<64 hex chars>)")]
    MissingVersion {
        /// The variable.
        var: &'static str,
        /// 1-based position of the entry.
        entry: usize,
    },
    /// A version label is empty, longer than 32 characters, or not `[a-z0-9]+`.
    #[error("{var}: entry {entry} has an invalid version (must be 1 to 32 lowercase letters and digits)")]
    InvalidVersion {
        /// The variable.
        var: &'static str,
        /// 1-based position of the entry.
        entry: usize,
    },
    /// A key does not have exactly 64 characters.
    #[error("{}: the key{} is {len} characters long; it must be 64 hex characters (32 bytes)", .var, entry_label(.entry))]
    KeyLength {
        /// The variable.
        var: &'static str,
        /// 1-based position of the entry, when the variable holds a list.
        entry: Option<usize>,
        /// The length found, in characters.
        len: usize,
    },
    /// A key has 64 characters but not all of them are hex digits.
    #[error("{}: the key{} is not 64 hex characters (it contains a non-hex character)", .var, entry_label(.entry))]
    KeyNotHex {
        /// The variable.
        var: &'static str,
        /// 1-based position of the entry, when the variable holds a list.
        entry: Option<usize>,
    },
    /// The same version label appears twice. The label itself is not echoed: a
    /// misconfigured entry such as `<hex>:v1` would otherwise leak key material.
    #[error("{var}: duplicate version: entry {entry} repeats the version of entry {first}; each version must be unique")]
    DuplicateVersion {
        /// The variable.
        var: &'static str,
        /// 1-based position of the first occurrence.
        first: usize,
        /// 1-based position of the second occurrence.
        entry: usize,
    },
}

/// " of entry N" for list entries, nothing for the single-key variable.
fn entry_label(entry: &Option<usize>) -> String {
    match entry {
        Some(n) => format!(" of entry {n}"),
        None => String::new(),
    }
}

/// Whether a version label is acceptable: `[a-z0-9]{1,32}`. The length cap keeps a key
/// pasted into the version position (`<hex>:v1`) from being accepted as a label, which
/// would then show up in `Debug` output and sealed tokens.
fn valid_version(version: &str) -> bool {
    (1..=MAX_VERSION_LEN).contains(&version.len())
        && version
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Decodes one 64-hex-char key straight into a zeroize-on-drop heap buffer (on error the
/// partly decoded buffer is zeroized when dropped).
fn decode_key(
    var: &'static str,
    entry: Option<usize>,
    hex_key: &str,
) -> Result<SecretBox<[u8; KEY_LEN]>, KeyRingError> {
    let len = hex_key.chars().count();
    if len != KEY_HEX_LEN || hex_key.len() != KEY_HEX_LEN {
        return Err(KeyRingError::KeyLength { var, entry, len });
    }
    let mut key = SecretBox::new(Box::new([0u8; KEY_LEN]));
    // The hex error would carry the offending character: drop it, report only the kind.
    if hex::decode_to_slice(hex_key, &mut key.expose_secret_mut()[..]).is_err() {
        return Err(KeyRingError::KeyNotHex { var, entry });
    }
    Ok(key)
}

impl KeyRing {
    /// Parses `TOKEN_MASTER_KEYS`: `"v1:hex,v2:hex"`, each key 64 hex characters
    /// (32 bytes), versions unique, `[a-z0-9]+` and at most 32 characters. Whitespace around entries
    /// is ignored. The last entry is the current key.
    pub fn parse_keys(value: &str) -> Result<KeyRing, KeyRingError> {
        let var = KEYS_VAR;
        if value.trim().is_empty() {
            return Err(KeyRingError::Empty { var });
        }
        let mut keys: Vec<MasterKey> = Vec::new();
        for (i, raw) in value.split(',').enumerate() {
            let entry = i + 1;
            let raw = raw.trim();
            if raw.is_empty() {
                return Err(KeyRingError::EmptyEntry { var, entry });
            }
            let Some((version, hex_key)) = raw.split_once(':') else {
                return Err(KeyRingError::MissingVersion { var, entry });
            };
            let (version, hex_key) = (version.trim(), hex_key.trim());
            if !valid_version(version) {
                return Err(KeyRingError::InvalidVersion { var, entry });
            }
            if let Some(first) = keys.iter().position(|k| k.version == version) {
                return Err(KeyRingError::DuplicateVersion {
                    var,
                    first: first + 1,
                    entry,
                });
            }
            let key = decode_key(var, Some(entry), hex_key)?;
            keys.push(MasterKey {
                version: version.to_owned(),
                key,
            });
        }
        Ok(KeyRing { keys: keys.into() })
    }

    /// Builds the ring from the two possible variables: `TOKEN_MASTER_KEYS` (see
    /// [`KeyRing::parse_keys`]) or `TOKEN_MASTER_KEY=hex`, which means exactly
    /// `TOKEN_MASTER_KEYS=v1:hex` (errors then name `TOKEN_MASTER_KEY`).
    ///
    /// `Some` means the variable is set (even if empty, which is an error). Both set is an
    /// error; neither set is `Ok(None)` (no vault).
    pub fn from_vars(
        keys: Option<&str>,
        key: Option<&str>,
    ) -> Result<Option<KeyRing>, KeyRingError> {
        match (keys, key) {
            (Some(_), Some(_)) => Err(KeyRingError::BothSet),
            (None, None) => Ok(None),
            (Some(keys), None) => KeyRing::parse_keys(keys).map(Some),
            (None, Some(key)) => {
                let var = KEY_VAR;
                let key = key.trim();
                if key.is_empty() {
                    return Err(KeyRingError::Empty { var });
                }
                let key = decode_key(var, None, key)?;
                let keys: Arc<[MasterKey]> = vec![MasterKey {
                    version: SINGLE_KEY_VERSION.to_owned(),
                    key,
                }]
                .into();
                Ok(Some(KeyRing { keys }))
            }
        }
    }

    /// The version of the current key (the last one), used for new seals.
    pub fn current_version(&self) -> &str {
        &self.current().version
    }

    /// All versions, in ring order (the last is current).
    pub fn versions(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.version.clone()).collect()
    }

    /// The key with this version, if the ring knows it.
    pub fn get(&self, version: &str) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.version == version)
    }

    /// The current key (the last one; the ring is never empty).
    pub(crate) fn current(&self) -> &MasterKey {
        self.keys.last().expect("a key ring is never empty")
    }
}

/// A fresh random 32-byte key from the OS RNG as 64 lowercase hex characters (for
/// `wabridge keys generate`). The intermediate byte buffer is zeroized.
pub fn generate_key_hex() -> String {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    rand::rngs::OsRng.fill_bytes(&mut key[..]);
    let out = hex::encode(&key[..]);
    key.zeroize();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "f0e1d2c3b4a5968778695a4b3c2d1e0ff0e1d2c3b4a5968778695a4b3c2d1e0f";

    /// The error's message names `var` and does not contain `secret`.
    fn assert_safe(err: &KeyRingError, var: &str, secret: &str) {
        let msg = err.to_string();
        assert!(msg.contains(var), "message {msg:?} does not name {var}");
        assert!(!msg.contains(secret), "message {msg:?} echoes the value");
        let dbg = format!("{err:?}");
        assert!(!dbg.contains(secret), "debug {dbg:?} echoes the value");
    }

    #[test]
    fn parses_one_key() {
        let ring = KeyRing::parse_keys(&format!("v1:{K1}")).unwrap();
        assert_eq!(ring.versions(), vec!["v1"]);
        assert_eq!(ring.current_version(), "v1");
        assert_eq!(hex::encode(ring.get("v1").unwrap().bytes()), K1);
        assert!(ring.get("v2").is_none());
    }

    #[test]
    fn parses_two_keys_last_is_current() {
        let ring = KeyRing::parse_keys(&format!("v1:{K1}, v2:{K2}")).unwrap();
        assert_eq!(ring.versions(), vec!["v1", "v2"]);
        assert_eq!(ring.current_version(), "v2");
        assert_eq!(hex::encode(ring.get("v1").unwrap().bytes()), K1);
        assert_eq!(hex::encode(ring.get("v2").unwrap().bytes()), K2);
        assert_eq!(ring.current().version(), "v2");

        let reversed = KeyRing::parse_keys(&format!("v2:{K2},v1:{K1}")).unwrap();
        assert_eq!(reversed.current_version(), "v1");
    }

    #[test]
    fn uppercase_hex_is_accepted() {
        let ring = KeyRing::parse_keys(&format!("v1:{}", K2.to_uppercase())).unwrap();
        assert_eq!(hex::encode(ring.get("v1").unwrap().bytes()), K2);
    }

    #[test]
    fn bad_hex_is_rejected_without_echo() {
        let bad = format!("zz{}", &K1[2..]);
        let err = KeyRing::parse_keys(&format!("v1:{bad}")).unwrap_err();
        assert!(matches!(err, KeyRingError::KeyNotHex { .. }), "{err:?}");
        assert_safe(&err, "TOKEN_MASTER_KEYS", &bad);
        assert!(err.to_string().contains("64 hex"));
        assert!(!err.to_string().contains('z'));

        let err = KeyRing::from_vars(None, Some(&bad)).unwrap_err();
        assert!(matches!(err, KeyRingError::KeyNotHex { .. }), "{err:?}");
        assert_safe(&err, "TOKEN_MASTER_KEY", &bad);
        assert!(!err.to_string().contains("TOKEN_MASTER_KEYS"));
    }

    #[test]
    fn short_key_is_rejected_without_echo() {
        let short = &K1[..63];
        let err = KeyRing::parse_keys(&format!("v1:{short}")).unwrap_err();
        assert!(
            matches!(err, KeyRingError::KeyLength { len: 63, .. }),
            "{err:?}"
        );
        assert_safe(&err, "TOKEN_MASTER_KEYS", short);
        assert!(err.to_string().contains("64 hex"));

        let err = KeyRing::from_vars(None, Some(short)).unwrap_err();
        assert!(
            matches!(err, KeyRingError::KeyLength { len: 63, .. }),
            "{err:?}"
        );
        assert_safe(&err, "TOKEN_MASTER_KEY", short);
    }

    #[test]
    fn long_key_is_rejected_without_echo() {
        let long = format!("{K1}a");
        let err = KeyRing::parse_keys(&format!("v1:{K2},v2:{long}")).unwrap_err();
        assert!(
            matches!(
                err,
                KeyRingError::KeyLength {
                    len: 65,
                    entry: Some(2),
                    ..
                }
            ),
            "{err:?}"
        );
        assert_safe(&err, "TOKEN_MASTER_KEYS", &long);
        assert_safe(&err, "TOKEN_MASTER_KEYS", K2);
        assert!(err.to_string().contains("entry 2"));

        let err = KeyRing::from_vars(None, Some(&long)).unwrap_err();
        assert!(
            matches!(err, KeyRingError::KeyLength { len: 65, .. }),
            "{err:?}"
        );
        assert_safe(&err, "TOKEN_MASTER_KEY", &long);
    }

    #[test]
    fn duplicate_version_is_rejected_without_echo() {
        let err = KeyRing::parse_keys(&format!("v1:{K1},v1:{K2}")).unwrap_err();
        assert!(
            matches!(
                err,
                KeyRingError::DuplicateVersion {
                    first: 1,
                    entry: 2,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_safe(&err, "TOKEN_MASTER_KEYS", K1);
        assert_safe(&err, "TOKEN_MASTER_KEYS", K2);
        assert!(err.to_string().contains("duplicate version"), "{err}");
        // The version label is not echoed either.
        let version = "abcdef0123456789";
        let err =
            KeyRing::parse_keys(&format!("v1:{K2},{version}:{K2},{version}:{K1}")).unwrap_err();
        assert!(
            matches!(
                err,
                KeyRingError::DuplicateVersion {
                    first: 2,
                    entry: 3,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_safe(&err, "TOKEN_MASTER_KEYS", version);
    }

    #[test]
    fn empty_values_are_rejected() {
        for value in ["", "   "] {
            let err = KeyRing::parse_keys(value).unwrap_err();
            assert!(matches!(err, KeyRingError::Empty { .. }), "{err:?}");
            assert_safe(&err, "TOKEN_MASTER_KEYS", K1);
            assert!(err.to_string().contains("empty"));

            let err = KeyRing::from_vars(Some(value), None).unwrap_err();
            assert!(matches!(err, KeyRingError::Empty { .. }), "{err:?}");

            let err = KeyRing::from_vars(None, Some(value)).unwrap_err();
            assert!(
                matches!(
                    err,
                    KeyRingError::Empty {
                        var: "TOKEN_MASTER_KEY"
                    }
                ),
                "{err:?}"
            );
            assert!(err.to_string().starts_with("TOKEN_MASTER_KEY "), "{err}");
        }
        let err = KeyRing::parse_keys(&format!("v1:{K1},")).unwrap_err();
        assert!(
            matches!(err, KeyRingError::EmptyEntry { entry: 2, .. }),
            "{err:?}"
        );
        assert_safe(&err, "TOKEN_MASTER_KEYS", K1);
    }

    #[test]
    fn bad_versions_are_rejected_without_echo() {
        // Key without a version.
        let err = KeyRing::parse_keys(K1).unwrap_err();
        assert!(
            matches!(err, KeyRingError::MissingVersion { entry: 1, .. }),
            "{err:?}"
        );
        assert_safe(&err, "TOKEN_MASTER_KEYS", K1);
        // Empty, uppercase, punctuation.
        for value in [
            format!(":{K1}"),
            format!("V1:{K1}"),
            format!("v-1:{K1}"),
            format!("v 1:{K1}"),
        ] {
            let err = KeyRing::parse_keys(&value).unwrap_err();
            assert!(
                matches!(err, KeyRingError::InvalidVersion { entry: 1, .. }),
                "{value}: {err:?}"
            );
            assert_safe(&err, "TOKEN_MASTER_KEYS", K1);
        }
        // A swapped "hex:v1" entry: the key would be the version, which is too long.
        let err = KeyRing::parse_keys(&format!("{K1}:v1")).unwrap_err();
        assert!(
            matches!(err, KeyRingError::InvalidVersion { entry: 1, .. }),
            "{err:?}"
        );
        assert_safe(&err, "TOKEN_MASTER_KEYS", K1);
        assert_safe(&err, "TOKEN_MASTER_KEYS", &K1[..16]);
    }

    #[test]
    fn both_vars_set_is_an_error() {
        let keys = format!("v1:{K1}");
        let err = KeyRing::from_vars(Some(&keys), Some(K2)).unwrap_err();
        assert!(matches!(err, KeyRingError::BothSet), "{err:?}");
        assert_safe(&err, "TOKEN_MASTER_KEYS", K1);
        assert_safe(&err, "TOKEN_MASTER_KEY ", K2);
    }

    #[test]
    fn neither_var_set_is_none() {
        assert!(KeyRing::from_vars(None, None).unwrap().is_none());
    }

    #[test]
    fn single_key_var_equals_v1_entry() {
        let single = KeyRing::from_vars(None, Some(K1)).unwrap().unwrap();
        let keys = format!("v1:{K1}");
        let listed = KeyRing::from_vars(Some(&keys), None).unwrap().unwrap();
        assert_eq!(single.versions(), listed.versions());
        assert_eq!(single.versions(), vec!["v1"]);
        assert_eq!(single.current_version(), listed.current_version());
        assert_eq!(
            single.get("v1").unwrap().bytes(),
            listed.get("v1").unwrap().bytes()
        );
        assert_eq!(hex::encode(single.get("v1").unwrap().bytes()), K1);
    }

    #[test]
    fn debug_never_prints_key_material() {
        let ring = KeyRing::parse_keys(&format!("v1:{K1},v2:{K2}")).unwrap();
        let dbg = format!("{ring:?} {:#?}", ring.clone());
        assert!(dbg.contains("v1") && dbg.contains("v2"), "{dbg}");
        let key = ring.get("v2").unwrap();
        let key_dbg = format!("{key:?} {key:#?}");
        assert!(key_dbg.contains("v2"), "{key_dbg}");
        for secret in [K1, K2, &K1[..16], &K2[..16]] {
            assert!(!dbg.contains(secret), "{dbg}");
            assert!(!key_dbg.contains(secret), "{key_dbg}");
        }
        // Nor as a byte list (the default derived Debug of [u8; 32]).
        assert!(!key_dbg.contains("240, 225"), "{key_dbg}");
        assert!(!dbg.contains("240, 225"), "{dbg}");
    }

    #[test]
    fn generated_keys_parse_and_differ() {
        let a = generate_key_hex();
        let b = generate_key_hex();
        assert_eq!(a.len(), 64);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
            "{a}"
        );
        assert_ne!(a, b);
        let ring = KeyRing::from_vars(None, Some(&a)).unwrap().unwrap();
        assert_eq!(hex::encode(ring.get("v1").unwrap().bytes()), a);
    }
}
