//! Command handlers (decide, then append) and reactors (consumers that turn events
//! into further events): webhook verification and splitting, the token vault.

pub mod access;
pub mod commands;
pub mod consent;
pub mod delivery;
pub mod feed;
pub mod media;
pub mod onboarding;
pub mod ratelimit;
pub mod redrive;
pub mod sender;
pub mod sending;
pub mod vault;
pub mod webhooks;

#[cfg(test)]
mod fuzz;
