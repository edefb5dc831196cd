//! Read models. Each projection folds events into its tables inside one transaction
//! that also advances its checkpoint, so a crash or a redelivery never applies an
//! event twice, and a rebuild from the log gives the same rows.
//!
//! Storage is sqlx's `Any` driver over SQLite (default) or PostgreSQL, with one set
//! of portable SQL (`$n` placeholders, TEXT times, BIGINT numbers).

pub mod checkpoint;
pub mod migrations;
pub mod runner;
pub mod store;
pub mod views;

pub use runner::{Progress, Projection, ProjectionRunner};
pub use store::{Backend, Store};
