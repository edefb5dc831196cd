//! Replays for operators: which read models a name means, the projections' status
//! (checkpoint, lag, lease holder, a rebuild's progress), and rebuilds run in the
//! background for `POST /v1/admin/projections/{name}/rebuild`.

use std::{collections::BTreeMap, sync::Arc};

use serde::Serialize;
use wabridge_events::{ReadFrom, StreamKind, Timestamp};
use wabridge_handlers::{
    commands::{lease_for, rebuilds, unit_lease, Caller, CommandError, WORKER_UNITS},
    webhooks::reprocess::{self, Reprocessed},
};
use wabridge_projections::{
    rebuild::{self, RebuildProgress, RebuildReport},
    views, Projection,
};

use crate::app::App;

/// The projections a name means: one by its name, or `all`; `None` for an unknown
/// name.
pub fn select(app: &App, name: &str) -> Option<Vec<Arc<dyn Projection>>> {
    let all = views::all(&app.projection_keys());
    if name == "all" {
        return Some(all);
    }
    let one: Vec<_> = all.into_iter().filter(|p| p.name() == name).collect();
    (!one.is_empty()).then_some(one)
}

/// A rebuild (or a reprocessing of stored webhooks) started from the API, as it goes.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct RebuildStatus {
    /// `running`, `done` or `failed`.
    pub state: &'static str,
    /// Whether it only compares (a read model) or appends nothing (the webhook
    /// processor).
    pub dry_run: bool,
    /// When it started.
    pub started_at: String,
    /// When it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Its progress (for the webhook processor: raw-stream positions, up to where
    /// the live processor stood when it began).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<RebuildProgress>,
    /// A read model's rebuild, once done: checksums per projection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<RebuildReport>,
    /// The webhook processor's, once done: what was appended and what left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reprocessed: Option<Reprocessed>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Rebuilds run by this process, by the name they were asked for.
pub type Rebuilds = std::sync::Mutex<BTreeMap<String, RebuildStatus>>;

/// The rebuilds' map, taken as it is if a holder panicked (each change to it is
/// one insert or one field: never half made), so a status request cannot panic.
fn rebuilds_of(app: &App) -> std::sync::MutexGuard<'_, BTreeMap<String, RebuildStatus>> {
    app.rebuilds
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How a front end spells a replay's two starting points: `--since` and
/// `--from-seq` on the command line, `since` and `from_seq` in the API.
pub struct Spelling {
    /// The time's name.
    pub since: &'static str,
    /// The raw-stream sequence's name.
    pub from_seq: &'static str,
}

/// Why a replay request names nothing to run.
#[derive(Debug)]
pub enum BadRequest {
    /// No projection of that name.
    Unknown,
    /// The request is not valid: why, in the front end's words.
    Invalid(String),
}

/// What a replay request means — `name` (a read model, `all`, or the webhook
/// processor) with an optional starting point — checked alike for the command line
/// and the API: the webhook processor needs a starting point (a time or a raw-stream
/// sequence, not both), a read model takes none (it is a fold of the whole domain
/// stream).
pub fn job(
    app: &App,
    name: &str,
    since: Option<&str>,
    from_seq: Option<u64>,
    dry_run: bool,
    spelling: &Spelling,
) -> Result<Job, BadRequest> {
    let Spelling {
        since: s,
        from_seq: f,
    } = spelling;
    if name == wabridge_handlers::webhooks::processor::NAME {
        let from = match (since, from_seq) {
            (Some(_), Some(_)) => {
                return Err(BadRequest::Invalid(format!("give {s} or {f}, not both")))
            }
            (Some(t), None) => ReadFrom::Time(Timestamp::parse(t).map_err(|_| {
                BadRequest::Invalid(format!("{s} must be an RFC 3339 time"))
            })?),
            (None, Some(seq)) => ReadFrom::Seq(seq),
            (None, None) => return Err(BadRequest::Invalid(format!(
                "webhook_processor processes stored webhooks again from a position: give {s} (an RFC 3339 time) or {f} (a raw-stream sequence)"
            ))),
        };
        return Ok(Job::Reprocess { from, dry_run });
    }
    let projections = select(app, name).ok_or(BadRequest::Unknown)?;
    if since.is_some() || from_seq.is_some() {
        return Err(BadRequest::Invalid(format!(
            "{s} and {f} go with webhook_processor (processing stored webhooks again); a read model is a fold of the whole domain stream, so it is rebuilt from the log's first event"
        )));
    }
    Ok(Job::Rebuild {
        projections,
        dry_run,
    })
}

/// What a replay does (see [`job`]).
pub enum Job {
    /// Rebuild read models beside the live ones; swap them in unless `dry_run`.
    Rebuild {
        /// The read models.
        projections: Vec<Arc<dyn Projection>>,
        /// Compare only.
        dry_run: bool,
    },
    /// Process the raw webhooks stored from `from` again (see
    /// [`wabridge_handlers::webhooks::reprocess`]).
    Reprocess {
        /// The first raw position.
        from: ReadFrom,
        /// Append nothing.
        dry_run: bool,
    },
}

impl Job {
    fn dry_run(&self) -> bool {
        match self {
            Job::Rebuild { dry_run, .. } | Job::Reprocess { dry_run, .. } => *dry_run,
        }
    }
}

/// The outcome of a job.
enum Outcome {
    Rebuilt(RebuildReport),
    Reprocessed(Reprocessed),
}

/// Why a job did not start.
#[derive(Debug)]
pub enum NotStarted {
    /// One of that name is running.
    Running,
    /// Its start could not be recorded in the log.
    Unrecorded(CommandError),
}

/// Starts a job in the background under `name`, once its start is recorded in the
/// log (and so in the audit chain); a reprocessing's end is recorded too.
pub async fn start(app: &App, caller: &Caller, name: &str, job: Job) -> Result<(), NotStarted> {
    let previous = {
        let mut running = rebuilds_of(app);
        if running.get(name).is_some_and(|r| r.state == "running") {
            return Err(NotStarted::Running);
        }
        running.insert(
            name.to_string(),
            RebuildStatus {
                state: "running",
                dry_run: job.dry_run(),
                started_at: Timestamp::now().to_string(),
                finished_at: None,
                progress: None,
                report: None,
                reprocessed: None,
                error: None,
            },
        )
    };
    let from = match &job {
        Job::Reprocess { from, .. } => Some(*from),
        Job::Rebuild { .. } => None,
    };
    let dry_run = job.dry_run();
    if let Err(e) = rebuilds::requested(&app.ctx, caller, name, dry_run, from.as_ref()).await {
        // Nothing ran: the previous job of that name shows again.
        let mut running = rebuilds_of(app);
        match previous {
            Some(p) => running.insert(name.to_string(), p),
            None => running.remove(name),
        };
        return Err(NotStarted::Unrecorded(e));
    }
    let (app, name, caller) = (app.clone(), name.to_string(), caller.clone());
    tokio::spawn(async move {
        let set_progress = {
            let (app, name) = (app.clone(), name.clone());
            move |p: RebuildProgress| {
                if let Some(s) = rebuilds_of(&app).get_mut(&name) {
                    s.progress = Some(p);
                }
            }
        };
        let result = match job {
            Job::Rebuild {
                projections,
                dry_run,
            } => rebuild::rebuild(
                app.ctx.log.clone(),
                &app.ctx.store,
                projections,
                dry_run,
                |p| set_progress(p.clone()),
            )
            .await
            .map(Outcome::Rebuilt),
            Job::Reprocess { from, dry_run } => {
                let started = std::time::Instant::now();
                let mut first = None;
                reprocess::reprocess(&app.ctx, from, dry_run, |at, through| {
                    let first = *first.get_or_insert(at);
                    set_progress(raw_progress(first, at, through, started))
                })
                .await
                .map(Outcome::Reprocessed)
            }
        };
        // A reprocessing's end is recorded with its counts, a failure with its
        // reason; a read model's rebuild that succeeded records only its start (see
        // `ProjectionRebuildFinished`).
        let outcome = match &result {
            Ok(Outcome::Rebuilt(_)) => None,
            Ok(Outcome::Reprocessed(r)) => Some(rebuilds::Outcome::reprocessed(r)),
            Err(e) => Some(rebuilds::Outcome::failed(e)),
        };
        if let Some(outcome) = outcome {
            if let Err(e) = rebuilds::finished(&app.ctx, &caller, &name, dry_run, outcome).await {
                tracing::warn!(projection = %name, error = %e, "recording the end of a replay failed");
            }
        }
        let mut all = rebuilds_of(&app);
        if let Some(s) = all.get_mut(&name) {
            s.finished_at = Some(Timestamp::now().to_string());
            match result {
                Ok(Outcome::Rebuilt(report)) => {
                    tracing::info!(projection = %name, events = report.events, swapped = report.swapped, "rebuild done");
                    s.state = "done";
                    s.report = Some(report);
                }
                Ok(Outcome::Reprocessed(r)) => {
                    tracing::info!(projection = %name, bodies = r.bodies, appended = r.appended_total(), dry_run = r.dry_run, "reprocessing done");
                    s.state = "done";
                    s.reprocessed = Some(r);
                }
                Err(e) => {
                    tracing::error!(projection = %name, error = %format!("{e:#}"), "rebuild failed");
                    s.state = "failed";
                    s.error = Some(format!("{e:#}"));
                }
            }
        }
    });
    Ok(())
}

/// A reprocessing's progress over raw positions: `at` of `through`, having begun
/// at `first` (the first page ends at `at`, so at least one page is counted).
fn raw_progress(first: u64, at: u64, through: u64, started: std::time::Instant) -> RebuildProgress {
    RebuildProgress::at(at, through, at.saturating_sub(first) + 1, started)
}

/// One read model (or the webhook processor) and how far behind the log it is.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ProjectionStatus {
    /// Its name (its checkpoint).
    pub name: String,
    /// `domain` or `raw`.
    pub stream: &'static str,
    /// The last log sequence it applied.
    pub checkpoint: u64,
    /// The stream's last sequence.
    pub head: u64,
    /// Events it has not applied.
    pub lag_events: u64,
    /// How long the oldest event it has not applied has waited (0 when caught up).
    pub lag_seconds: f64,
    /// The instance holding the lease of the unit that applies it (`host/pid/nonce`);
    /// none when no instance runs it.
    pub lease_holder: Option<String>,
    /// The rebuild of it started from this instance, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<RebuildStatus>,
}

/// A unit of work and who runs it.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct UnitStatus {
    /// Its lease (`unit.<worker>.<partition>`).
    pub unit: String,
    /// The instance holding it; none when no instance runs it.
    pub holder: Option<String>,
}

/// Who runs each unit of work (projections, processor, reactors).
pub async fn units(app: &App) -> anyhow::Result<Vec<UnitStatus>> {
    let mut out = vec![];
    for u in WORKER_UNITS {
        let unit = unit_lease(u, 0);
        let holder = app.ctx.log.lease(&unit).await?.map(|l| l.holder);
        out.push(UnitStatus { unit, holder });
    }
    Ok(out)
}

/// `GET /v1/admin/projections`.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ProjectionsReport {
    /// Every unit of work and the instance running it.
    pub units: Vec<UnitStatus>,
    /// Each read model, then the webhook processor.
    pub projections: Vec<ProjectionStatus>,
    /// A rebuild of `all` started from this instance, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rebuild_all: Option<RebuildStatus>,
}

async fn lag_seconds(app: &App, stream: StreamKind, checkpoint: u64, head: u64) -> f64 {
    if checkpoint >= head {
        return 0.0;
    }
    match app
        .ctx
        .log
        .read(stream, ReadFrom::Seq(checkpoint + 1), None, 1)
        .await
    {
        Ok(events) => events
            .first()
            .map(|e| Timestamp::now().since(e.envelope.recorded_at).as_secs_f64())
            .unwrap_or(0.0),
        Err(_) => 0.0,
    }
}

/// Every projection's checkpoint, lag and rebuild, with the workers lease holder.
pub async fn status(app: &App) -> anyhow::Result<ProjectionsReport> {
    let domain = app.ctx.log.last_seq(StreamKind::Domain).await?;
    let raw = app.ctx.log.last_seq(StreamKind::Raw).await?;
    let rebuilds = rebuilds_of(app).clone();
    let mut projections = vec![];
    let mut names: Vec<(String, StreamKind)> = views::all(&app.projection_keys())
        .iter()
        .map(|p| (p.name().to_string(), p.stream()))
        .collect();
    names.push((
        wabridge_handlers::webhooks::processor::NAME.to_string(),
        StreamKind::Raw,
    ));
    let units = units(app).await?;
    for (name, stream) in names {
        let head = if stream == StreamKind::Raw {
            raw
        } else {
            domain
        };
        let lease = lease_for(&name);
        let lease_holder = units
            .iter()
            .find(|u| u.unit == lease)
            .and_then(|u| u.holder.clone());
        let checkpoint = app.ctx.store.checkpoint(&name).await?;
        projections.push(ProjectionStatus {
            lag_events: head.saturating_sub(checkpoint),
            lag_seconds: lag_seconds(app, stream, checkpoint, head).await,
            rebuild: rebuilds.get(&name).cloned(),
            lease_holder,
            stream: if stream == StreamKind::Raw {
                "raw"
            } else {
                "domain"
            },
            name,
            checkpoint,
            head,
        });
    }
    Ok(ProjectionsReport {
        units,
        projections,
        rebuild_all: rebuilds.get("all").cloned(),
    })
}
