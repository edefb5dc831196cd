//! Creating workspaces.

use wabridge_events::{
    types::{EventData, WorkspaceCreated},
    Slug,
};
use wabridge_projections::views::workspaces;

use super::{Caller, CommandError, Ctx};

/// Creates a workspace; `Conflict` when the slug is taken.
pub async fn create(
    ctx: &Ctx,
    caller: &Caller,
    slug: &Slug,
    name: &str,
) -> Result<workspaces::Workspace, CommandError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(CommandError::Validation(
            "name must be 1 to 200 characters".into(),
        ));
    }
    let mut ev = ctx.event(
        Some(slug),
        caller,
        &WorkspaceCreated {
            slug: slug.clone(),
            name: name.to_string(),
        },
    );
    ev.expected_last_subject_seq = Some(0);
    match ctx.append_and_wait(ev, &["workspaces", "audit"]).await {
        Err(CommandError::Conflict(_)) => {
            return Err(CommandError::Conflict(format!(
                "workspace {slug} already exists"
            )))
        }
        other => other?,
    };
    workspaces::get(&ctx.store, slug.as_str())
        .await?
        .ok_or_else(|| {
            CommandError::Internal(anyhow::anyhow!(
                "workspace {slug} not visible after creation"
            ))
        })
}

/// Fails with `NotFound` unless the workspace exists.
pub async fn require(ctx: &Ctx, slug: &Slug) -> Result<(), CommandError> {
    let subject = WorkspaceCreated::subject(ctx.log.namespace(), Some(slug), slug.as_str());
    ctx.fresh("workspaces", &subject).await?;
    match workspaces::get(&ctx.store, slug.as_str()).await? {
        Some(_) => Ok(()),
        None => Err(CommandError::NotFound(format!(
            "workspace {slug} does not exist"
        ))),
    }
}
