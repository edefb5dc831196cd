//! Access control: roles, the permission matrix and the API key format.

pub mod keys;
pub mod permissions;

pub use keys::{ApiKeyText, KeyKind, ParsedKey};
pub use permissions::{Permission, Role};
