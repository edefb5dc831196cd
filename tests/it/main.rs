//! Integration tests of wabridge: one test binary (`cargo test --test it`), one
//! module per area. `support` holds the shared harness (a private `nats-server`,
//! unique namespaces).

mod support;

mod access;
mod api_fuzz;
mod audit;
mod cli;
mod consent;
mod delivery;
mod failover;
mod faults;
mod http;
mod log_conformance;
mod onboarding;
mod ratelimit_shared;
mod realworld;
mod replay;
mod reprocess;
mod security;
mod sending;
mod soak;
mod subscription_gaps;
mod vault;
mod webhooks;
