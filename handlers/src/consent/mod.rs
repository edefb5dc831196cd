//! Consent: what an inbound message says about a contact's consent (the keyword
//! matcher), and the commands and reactor that turn it into opt-out state.

pub mod detect;
pub mod matcher;
