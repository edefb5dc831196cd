//! wabridge: an event-sourced service between businesses and the WhatsApp Business
//! Cloud API. This library holds the binary's parts (configuration, HTTP server,
//! workers, CLI commands) so integration tests can start the real server.

pub mod app;
pub mod cli;
pub mod config;
pub mod connections;
pub mod dev;
pub mod failures;
pub mod http;
pub mod membership;
pub mod metrics;
pub mod replay;
pub mod schemas;
pub mod security;
pub mod server;
