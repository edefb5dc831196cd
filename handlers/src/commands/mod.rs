//! Command handlers: each one decides against the read models (made fresh first
//! where the decision needs it), then appends, then waits until the projections it
//! affects have applied the event, so the caller's next request sees its effect.

pub mod audit;
pub mod dead_letters;
pub mod keys;
pub mod numbers;
pub mod tokens;
pub mod workspaces;

use std::{sync::Arc, time::Duration};

use wabridge_events::{types::EventData, Actor, AppendError, Appended, EventLog, NewEvent, Slug};
use wabridge_projections::{Progress, Store};

/// What every command needs.
#[derive(Clone)]
pub struct Ctx {
    /// The event log.
    pub log: Arc<dyn EventLog>,
    /// The read models.
    pub store: Store,
    /// This process's projection progress.
    pub progress: Progress,
    /// Sealed tokens in memory, kept fresh from the log (see `server::run`).
    pub tokens: Arc<crate::vault::TokenCache>,
}

/// Who runs a command, from where.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The actor recorded on the events.
    pub actor: Actor,
    /// The client address, for the audit log.
    pub ip: Option<String>,
}

impl Caller {
    /// A host command (no address).
    pub fn cli(command: &str) -> Self {
        Caller {
            actor: Actor::cli(command),
            ip: None,
        }
    }
}

/// Why a command was refused.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The thing does not exist (or is not visible to the caller).
    #[error("{0}")]
    NotFound(String),
    /// The state does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// The input is invalid.
    #[error("{0}")]
    Validation(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// A needed secret is not configured (names the variable).
    #[error("{0} is not set")]
    NotConfigured(&'static str),
    /// Anything else (log or database failure).
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<AppendError> for CommandError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::WrongLastSequence { .. } => {
                CommandError::Conflict("the resource changed concurrently; retry".into())
            }
            other => CommandError::Internal(other.into()),
        }
    }
}

impl From<wabridge_events::LogError> for CommandError {
    fn from(e: wabridge_events::LogError) -> Self {
        CommandError::Internal(e.into())
    }
}

/// How long a command waits for its projections before answering anyway (the event
/// is durable either way).
pub const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(5);

impl Ctx {
    /// Builds the event for typed data on behalf of a caller.
    pub fn event<T: EventData>(
        &self,
        workspace: Option<&Slug>,
        caller: &Caller,
        data: &T,
    ) -> NewEvent {
        let mut ev = wabridge_events::types::new_event(
            self.log.namespace(),
            workspace.cloned(),
            caller.actor.clone(),
            data,
        );
        ev.envelope.source_ip = caller.ip.clone();
        ev
    }

    /// Appends, then waits until each named projection has applied the event.
    pub async fn append_and_wait(
        &self,
        event: NewEvent,
        projections: &[&str],
    ) -> Result<Appended, CommandError> {
        let appended = self.log.append(event).await?;
        for name in projections {
            self.wait(name, appended.seq).await?;
        }
        Ok(appended)
    }

    /// Waits until a projection has applied `seq` (logs a warning on timeout).
    pub async fn wait(&self, projection: &str, seq: u64) -> Result<(), CommandError> {
        if !self
            .store
            .wait_for(&self.progress, projection, seq, READ_YOUR_WRITES_TIMEOUT)
            .await?
        {
            tracing::warn!(
                projection,
                seq,
                "projection did not catch up in time (are workers running?)"
            );
        }
        Ok(())
    }

    /// Makes a projection at least as fresh as the last event on `subject`, for a
    /// decision about that aggregate; returns that sequence (for an optimistic
    /// concurrency check on the append).
    pub async fn fresh(&self, projection: &str, subject: &str) -> Result<u64, CommandError> {
        let seq = self.log.last_subject_seq(subject).await?;
        if seq > 0 {
            self.wait(projection, seq).await?;
        }
        Ok(seq)
    }
}
