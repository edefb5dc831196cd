//! Route handlers, one file per area.

pub mod admin;
pub mod audit;
pub mod consent;
pub mod endpoints;
pub mod events;
pub mod keys;
pub mod media;
pub mod messages;
pub mod meta;
pub mod numbers;
pub mod onboarding;
pub mod ops;
pub mod tokens;
pub mod workspaces;
