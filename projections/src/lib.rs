//! Read models. Each projection folds events into its tables inside one transaction
//! that also advances its checkpoint, so a crash or a redelivery never applies an
//! event twice, and a rebuild from the log gives the same rows.
//!
//! Storage is sqlx's `Any` driver over SQLite (default) or PostgreSQL, with one set
//! of portable SQL (`$n` placeholders, TEXT times, BIGINT numbers).

pub mod batch;
pub mod checkpoint;
pub mod driver;
pub mod migrations;
pub mod progress;
pub mod projection;
pub mod rebuild;
pub mod shadow_claim;
pub mod store;
pub mod views;

pub use driver::{Driver, Follower, Reactor, Staged};
pub use progress::Progress;
pub use projection::Projection;
pub use store::{Backend, Store};
