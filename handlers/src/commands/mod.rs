//! Command handlers: each one decides against the read models (made fresh first
//! where the decision needs it), then appends, then waits until the projections it
//! affects have applied the event, so the caller's next request sees its effect.

pub mod audit;
pub mod consent;
pub mod dead_letters;
pub mod endpoints;
pub mod keys;
pub mod numbers;
pub mod onboarding;
pub mod rebuilds;
pub mod send;
pub mod tokens;
pub mod workspaces;

use std::{sync::Arc, time::Duration};

use wabridge_events::{types::EventData, Actor, AppendError, Appended, EventLog, NewEvent, Slug};
use wabridge_projections::{Progress, Store};

use crate::access::Role;

/// The units of work of a deployment's workers, each run by exactly one instance at
/// a time under a lease of its own: the projection group, the webhook processor, the
/// redrive reactor, the sender, the onboarding runner, the audit retention job and
/// the outbound webhook deliveries.
pub const WORKER_UNITS: &[&str] = &[
    "projections",
    "webhook_processor",
    "redrive",
    "sender",
    "onboarding",
    "audit_retention",
    "delivery",
];

/// Partitions of each unit. One today: a unit's lease, consumer and checkpoint are
/// per (unit, partition), so splitting the work by a hash of the workspace later
/// changes this number, not the design.
pub const PARTITIONS: u32 = 1;

/// The lease of a unit's partition: `unit.<worker>.<partition>`.
pub fn unit_lease(worker: &str, partition: u32) -> String {
    format!("unit.{worker}.{partition}")
}

/// The lease of the unit that applies a projection (or runs the webhook processor).
pub fn lease_for(projection: &str) -> String {
    if projection == crate::webhooks::processor::NAME {
        unit_lease("webhook_processor", 0)
    } else {
        unit_lease("projections", 0)
    }
}

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
    /// Whether this process applies the projections itself (a workers instance, or a
    /// host command keeping them fresh): then there is no need to ask whether some
    /// instance runs the workers before waiting for them.
    pub projections_local: bool,
}

/// Who runs a command, from where.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The actor recorded on the events.
    pub actor: Actor,
    /// The client address, for the audit log.
    pub ip: Option<String>,
    /// The highest role this caller may grant or act on (a workspace key's own
    /// role); `None` for operators, host commands and wabridge itself.
    pub role_limit: Option<Role>,
}

impl Caller {
    /// A host command (no address, no role limit).
    pub fn cli(command: &str) -> Self {
        Caller {
            actor: Actor::cli(command),
            ip: None,
            role_limit: None,
        }
    }

    /// wabridge itself, as the named component.
    pub fn system(name: &str) -> Self {
        Caller {
            actor: Actor::system(name),
            ip: None,
            role_limit: None,
        }
    }

    /// Refuses acting on (creating, revoking) a key of `role` above the caller's own.
    pub fn check_role(&self, role: Role, action: &str) -> Result<(), CommandError> {
        match self.role_limit {
            Some(limit) if role > limit => Err(CommandError::Forbidden(format!(
                "a {} key cannot {action} {} keys",
                limit.as_str(),
                role.as_str()
            ))),
            _ => Ok(()),
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
    /// The state the decision needs cannot be confirmed fresh (the read models lag,
    /// or no instance runs the workers): refused rather than guessed (503). Made with
    /// [`CommandError::unavailable`].
    #[error("{detail}")]
    Unavailable {
        /// Stable code: `workers_unavailable`, `stale_read_model` or
        /// `log_unavailable`.
        code: &'static str,
        /// What is missing.
        detail: String,
        /// The same refusal as the consumer driver knows it
        /// ([`NotReady`](wabridge_projections::driver::NotReady)), as this error's
        /// source: in a reactor (the webhook processor, the redrive reactor) a bare
        /// `?` then delays the batch for as long as it lasts. Without it the driver
        /// counted the refusal as the event failing, and after five quick retries a
        /// webhook became a dead letter (seen: a cluster's stream leader killed
        /// under load).
        #[source]
        not_ready: wabridge_projections::driver::NotReady,
    },
    /// A rule refuses it (422): `contact_opted_out`, `outside_service_window`, ...
    #[error("{detail}")]
    Unprocessable {
        /// Stable code.
        code: &'static str,
        /// What the rule says, for this request.
        detail: String,
    },
    /// The same `Idempotency-Key` came with another body (409 `idempotency_conflict`).
    #[error("{0}")]
    IdempotencyConflict(String),
    /// Over the workspace's rate limit (429), with the headers to answer with.
    #[error("{detail}")]
    RateLimited {
        /// What to tell the client.
        detail: String,
        /// `Retry-After`, `RateLimit`, `RateLimit-Policy`.
        headers: Vec<(&'static str, String)>,
    },
    /// Anything else (log or database failure). Not transparent: its source is the
    /// error itself, so the consumer driver, walking the chain, still sees a database
    /// that went away inside it (a transparent variant would skip to the inner
    /// error's own source).
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl CommandError {
    /// A refusal for now (503): `code` is stable, `detail` says what is missing.
    pub fn unavailable(code: &'static str, detail: impl Into<String>) -> Self {
        CommandError::Unavailable {
            code,
            detail: detail.into(),
            not_ready: wabridge_projections::driver::NotReady(code.to_string()),
        }
    }
}

impl From<AppendError> for CommandError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::WrongLastSequence { .. } => {
                CommandError::Conflict("the resource changed concurrently; retry".into())
            }
            AppendError::Log(e) => e.into(),
            other => CommandError::Internal(other.into()),
        }
    }
}

/// The log unreachable or failing: the command is refused and may be retried (503
/// `log_unavailable`, as a webhook gets). (An append whose acknowledgement was lost
/// may still have been stored.) The cause goes to the server's log, not to the
/// caller.
impl From<wabridge_events::LogError> for CommandError {
    fn from(e: wabridge_events::LogError) -> Self {
        tracing::warn!(error = %format!("{:#}", e.0), "the event log failed a command");
        CommandError::unavailable("log_unavailable", "the event log is unavailable; retry")
    }
}

/// How long a command waits for its projections before answering 503 (the event is
/// durable either way).
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

    /// As [`Ctx::append_and_wait`] for an append with an optimistic-concurrency check:
    /// `None` when the subject changed since the decision (decide again).
    pub async fn append_checked(
        &self,
        event: NewEvent,
        projections: &[&str],
    ) -> Result<Option<Appended>, CommandError> {
        match self.log.append(event).await {
            Ok(appended) => {
                for name in projections {
                    self.wait(name, appended.seq).await?;
                }
                Ok(Some(appended))
            }
            Err(AppendError::WrongLastSequence { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until a projection has applied `seq`. Fails closed: when no instance
    /// runs the workers, or the projection does not get there within
    /// [`READ_YOUR_WRITES_TIMEOUT`], the answer is [`CommandError::Unavailable`].
    pub async fn wait(&self, projection: &str, seq: u64) -> Result<(), CommandError> {
        if self.progress.get(projection) >= seq || self.store.checkpoint(projection).await? >= seq {
            return Ok(());
        }
        if !self.projections_local && self.log.lease(&lease_for(projection)).await?.is_none() {
            return Err(CommandError::unavailable(
                "workers_unavailable",
                format!(
                    "no instance runs the workers (WABRIDGE_ROLES=workers; lease {} is free), so the {projection} read model cannot catch up with the log; start one",
                    lease_for(projection)
                ),
            ));
        }
        if !self
            .store
            .wait_for(&self.progress, projection, seq, READ_YOUR_WRITES_TIMEOUT)
            .await?
        {
            tracing::warn!(projection, seq, "projection did not catch up in time");
            return Err(CommandError::unavailable(
                "stale_read_model",
                format!(
                    "the {projection} read model did not catch up with the log within {}s; retry",
                    READ_YOUR_WRITES_TIMEOUT.as_secs()
                ),
            ));
        }
        Ok(())
    }

    /// Waits until the webhook processor has handled every raw webhook received so far
    /// (so what they say is in the domain stream). Fails closed (503).
    pub async fn wait_webhooks(&self) -> Result<(), CommandError> {
        let raw_head = self.log.last_seq(wabridge_events::StreamKind::Raw).await?;
        if raw_head > 0 {
            self.wait(crate::webhooks::processor::NAME, raw_head)
                .await?;
        }
        Ok(())
    }

    /// Makes projections as fresh as the log's head: every raw webhook processed, then
    /// every domain event up to the head applied by each. Fails closed (503).
    pub async fn fresh_as_log(&self, projections: &[&str]) -> Result<(), CommandError> {
        self.wait_webhooks().await?;
        let head = self
            .log
            .last_seq(wabridge_events::StreamKind::Domain)
            .await?;
        if head > 0 {
            for p in projections {
                self.wait(p, head).await?;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use wabridge_projections::driver::is_unavailable;

    /// What a reactor's bare `?` makes of each refusal, as the consumer driver sees
    /// it: a refusal for now delays the batch, anything else is the event failing.
    #[test]
    fn a_refusal_for_now_only_delays_a_reactor() {
        // A reactor's stage returns `anyhow::Result`: this is what `?` does.
        let in_reactor = |e: CommandError| -> anyhow::Error { e.into() };
        let log_down = CommandError::from(wabridge_events::LogError::new(anyhow::anyhow!(
            "no responders"
        )));
        assert!(is_unavailable(&in_reactor(log_down)));
        let stale = CommandError::unavailable(
            "stale_read_model",
            "the phone_numbers read model did not catch up",
        );
        let e = in_reactor(stale);
        assert!(is_unavailable(&e));
        assert_eq!(
            format!("{e:#}"),
            "the phone_numbers read model did not catch up: not ready: stale_read_model"
        );
        // An internal error keeps its chain: a database that went away is still one,
        // however deep the context around it.
        let db = CommandError::Internal(anyhow::Error::new(sqlx::Error::PoolTimedOut));
        assert!(is_unavailable(&in_reactor(db)));
        let db = CommandError::Internal(
            anyhow::Error::new(sqlx::Error::PoolTimedOut).context("reading the routes"),
        );
        let e = in_reactor(db);
        assert!(is_unavailable(&e));
        assert!(
            format!("{e:#}").starts_with("internal error: reading the routes: "),
            "{e:#}"
        );
        // Anything else is the event failing.
        for other in [
            CommandError::Validation("bad".into()),
            CommandError::NotFound("gone".into()),
            CommandError::Internal(anyhow::anyhow!("no such column")),
            CommandError::Unprocessable {
                code: "contact_opted_out",
                detail: "opted out".into(),
            },
        ] {
            assert!(!is_unavailable(&in_reactor(other)));
        }
    }
}
