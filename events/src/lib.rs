//! Events for wabridge: the envelope, the typed event data with schema versions,
//! subject naming, and the [`EventLog`] trait with its two backends
//! (JetStream in production, an embedded SQLite log on one machine).

pub mod backends;
pub mod envelope;
pub mod log;
pub mod subject;
pub mod tail;
pub mod timestamp;
pub mod types;
pub mod wrapped;

pub use envelope::{Actor, ActorKind, Envelope};
pub use log::{
    AppendError, Appended, EventLog, EventStream, Lease, LogError, NewEvent, ReadFrom, StoredEvent,
    StreamKind,
};
pub use subject::{Namespace, Slug, SlugError};
pub use timestamp::Timestamp;
pub use types::{DecodeError, DomainEvent};
pub use wrapped::WrappedLog;
