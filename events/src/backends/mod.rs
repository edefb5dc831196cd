//! The two [`crate::EventLog`] backends and their shared header encoding.

pub mod embedded;
pub mod headers;
pub mod jetstream;
