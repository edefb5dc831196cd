//! Sending messages through the WhatsApp Cloud API: the public send request and its
//! validation ([`request`]), and the classification of Meta's answers into retry or
//! give-up decisions ([`meta_errors`]).
//!
//! Both modules are pure (no I/O): the HTTP route, the outbox and the sender worker build on
//! them.

pub mod meta_errors;
pub mod request;
