//! Token vault events. They carry ciphertext only, never a token.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// The sealed form of a token (AES-256-GCM-SIV).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SealedToken {
    /// Master key version, e.g. `v2`.
    pub key_version: String,
    /// 12-byte nonce, hex.
    pub nonce: String,
    /// Ciphertext with tag, hex.
    pub ciphertext: String,
}

impl std::fmt::Debug for SealedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedToken")
            .field("key_version", &self.key_version)
            .finish_non_exhaustive()
    }
}

/// `token.stored` v1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TokenStored {
    /// The number.
    pub phone_number_id: String,
    /// The sealed token.
    pub sealed: SealedToken,
    /// First 8 bytes of SHA-256 of the token, hex.
    pub fingerprint: String,
    /// Expiry, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

/// `token.rewrapped` v1: the same token sealed under a newer master key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TokenRewrapped {
    /// The number.
    pub phone_number_id: String,
    /// The new sealed form.
    pub sealed: SealedToken,
    /// The key version it was under before.
    pub from_key_version: String,
}

/// `token.revoked` v1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TokenRevoked {
    /// The number.
    pub phone_number_id: String,
}

/// `token.invalidated` v1: Meta rejected the token (OAuth error 190).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TokenInvalidated {
    /// The number.
    pub phone_number_id: String,
    /// Why (e.g. Meta's error code and message).
    pub reason: String,
}
