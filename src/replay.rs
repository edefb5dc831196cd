//! Replays for operators: which read models a name means, the projections' status
//! (checkpoint, lag, lease holder, a rebuild's progress), and rebuilds run in the
//! background for `POST /v1/admin/projections/{name}/rebuild`.

use std::{collections::BTreeMap, sync::Arc};

use serde::Serialize;
use wabridge_events::{ReadFrom, StreamKind, Timestamp};
use wabridge_handlers::commands::{lease_for, unit_lease, WORKER_UNITS};
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

/// A rebuild started from the API, as it goes.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct RebuildStatus {
    /// `running`, `done` or `failed`.
    pub state: &'static str,
    /// When it started.
    pub started_at: String,
    /// When it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Its progress.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<RebuildProgress>,
    /// Checksums per projection once done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<RebuildReport>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Rebuilds run by this process, by the name they were asked for.
pub type Rebuilds = std::sync::Mutex<BTreeMap<String, RebuildStatus>>;

/// Starts a rebuild in the background; `false` when one of that name is running.
pub fn start(app: &App, name: &str, projections: Vec<Arc<dyn Projection>>) -> bool {
    {
        let mut running = app.rebuilds.lock().expect("rebuilds lock");
        if running.get(name).is_some_and(|r| r.state == "running") {
            return false;
        }
        running.insert(
            name.to_string(),
            RebuildStatus {
                state: "running",
                started_at: Timestamp::now().to_string(),
                finished_at: None,
                progress: None,
                report: None,
                error: None,
            },
        );
    }
    let (app, name) = (app.clone(), name.to_string());
    tokio::spawn(async move {
        let progress_app = app.clone();
        let progress_name = name.clone();
        let result = rebuild::rebuild(
            app.ctx.log.clone(),
            &app.ctx.store,
            projections,
            false,
            move |p| {
                if let Some(s) = progress_app
                    .rebuilds
                    .lock()
                    .expect("rebuilds lock")
                    .get_mut(&progress_name)
                {
                    s.progress = Some(p.clone());
                }
            },
        )
        .await;
        let mut all = app.rebuilds.lock().expect("rebuilds lock");
        if let Some(s) = all.get_mut(&name) {
            s.finished_at = Some(Timestamp::now().to_string());
            match result {
                Ok(report) => {
                    tracing::info!(projection = %name, events = report.events, "rebuild swapped in");
                    s.state = "done";
                    s.report = Some(report);
                }
                Err(e) => {
                    tracing::error!(projection = %name, error = %format!("{e:#}"), "rebuild failed");
                    s.state = "failed";
                    s.error = Some(format!("{e:#}"));
                }
            }
        }
    });
    true
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
    let rebuilds = app.rebuilds.lock().expect("rebuilds lock").clone();
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
