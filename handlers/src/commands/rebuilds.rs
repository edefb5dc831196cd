//! Rebuilds of read models and the processing of stored webhooks again, recorded in
//! the log, so the audit chain shows who rebuilt or reprocessed what: each when it
//! starts, and a reprocessing also when it ends, with its counts. A read model's
//! rebuild records no end: that event would move the live state on just after the
//! rebuild compared or swapped it, so `projections checksum` would no longer show
//! the rebuild's position and checksums (the outcome is the command's answer).

use wabridge_events::{
    types::{ProjectionRebuildFinished, ProjectionRebuildRequested},
    ReadFrom,
};

use super::{Caller, CommandError, Ctx};
use crate::webhooks::reprocess::Reprocessed;

/// The longest `detail` recorded (the whole report is in the command's answer).
const MAX_DETAIL: usize = 2000;

/// `seq:N` or `time:T`.
pub fn render_from(from: &ReadFrom) -> String {
    match from {
        ReadFrom::Seq(seq) => format!("seq:{seq}"),
        ReadFrom::Time(t) => format!("time:{t}"),
    }
}

/// Records that `caller` started a rebuild of `name` (or, with `from`, the
/// processing of stored webhooks again). Fails when the log cannot take it: then
/// nothing should run.
pub async fn requested(
    ctx: &Ctx,
    caller: &Caller,
    name: &str,
    dry_run: bool,
    from: Option<&ReadFrom>,
) -> Result<(), CommandError> {
    let ev = ctx.event(
        None,
        caller,
        &ProjectionRebuildRequested {
            name: name.to_string(),
            dry_run,
            from: from.map(render_from),
        },
    );
    ctx.log.append(ev).await?;
    Ok(())
}

/// How a job ended, as recorded.
pub struct Outcome {
    /// `reprocessed` or `failed`.
    pub outcome: &'static str,
    /// One line.
    pub detail: String,
}

impl Outcome {
    /// A processing of stored webhooks again: its counts.
    pub fn reprocessed(report: &Reprocessed) -> Self {
        Outcome {
            outcome: "reprocessed",
            detail: report.summary(),
        }
    }

    /// A job that failed.
    pub fn failed(error: &anyhow::Error) -> Self {
        Outcome {
            outcome: "failed",
            detail: format!("{error:#}"),
        }
    }
}

/// Records how the processing of stored webhooks again `requested` for `name` ended.
pub async fn finished(
    ctx: &Ctx,
    caller: &Caller,
    name: &str,
    dry_run: bool,
    outcome: Outcome,
) -> Result<(), CommandError> {
    let mut detail = outcome.detail;
    if detail.len() > MAX_DETAIL {
        let mut cut = MAX_DETAIL;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
        detail.push('…');
    }
    let ev = ctx.event(
        None,
        caller,
        &ProjectionRebuildFinished {
            name: name.to_string(),
            dry_run,
            outcome: outcome.outcome.to_string(),
            detail,
        },
    );
    ctx.log.append(ev).await?;
    Ok(())
}
