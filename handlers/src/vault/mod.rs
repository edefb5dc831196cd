//! The token vault: Meta access tokens sealed with AES-256-GCM-SIV under a versioned
//! master key ring.
//!
//! - [`keyring`]: parsing `TOKEN_MASTER_KEYS` / `TOKEN_MASTER_KEY` into a [`KeyRing`].
//! - [`seal`](mod@seal): sealing, opening, rewrapping and fingerprinting tokens.

pub mod cache;
pub mod keyring;
pub mod seal;

pub use cache::TokenCache;
pub use keyring::{generate_key_hex, KeyRing, KeyRingError, MasterKey};
pub use seal::{fingerprint, open, rewrap, seal, SealError};
