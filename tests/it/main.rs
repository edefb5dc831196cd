//! Integration tests of wabridge: one test binary (`cargo test --test it`), one
//! module per area. `support` holds the shared harness (a private `nats-server`,
//! unique namespaces).

mod support;

mod log_conformance;
