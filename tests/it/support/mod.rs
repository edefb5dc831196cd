//! Shared test harness: NATS servers and unique namespaces.

#![allow(dead_code)]

pub mod app;
pub mod nats;
pub mod postgres;
pub mod receiver;

pub use nats::{NatsCluster, NatsServer};

use wabridge_events::Namespace;

/// A namespace no other test uses (`t` + 20 random hex digits), so tests can share
/// one NATS server (and one account) without seeing each other's streams.
///
/// Hex digits never spell `raw`, so no namespace handed out here can collide with
/// another's raw-stream prefix (`<ns>raw.>`).
pub fn unique_ns() -> Namespace {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    Namespace::new(&format!("t{}", &hex[..20])).expect("a valid namespace")
}
