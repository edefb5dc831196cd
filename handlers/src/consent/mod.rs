//! Consent: what an inbound message says about a contact's consent (the keyword
//! matcher), and the commands and reactor that turn it into opt-out state.

pub mod detect;
pub mod matcher;

use wabridge_events::{
    types::{ConsentKeywordsSet, EventData},
    Slug,
};
use wabridge_projections::views::consent;

use crate::commands::{CommandError, Ctx};

/// The subject of a workspace's consent configuration (keywords and settings).
pub fn config_subject(ctx: &Ctx, ws: &Slug) -> String {
    ConsentKeywordsSet::subject(ctx.log.namespace(), Some(ws), "keywords")
}

/// A workspace's consent configuration as of the log's last change of it.
pub async fn current(ctx: &Ctx, ws: &Slug) -> Result<detect::Consent, CommandError> {
    ctx.fresh("consent", &config_subject(ctx, ws)).await?;
    let c = consent::config(&ctx.store, ws.as_str()).await?;
    Ok(detect::Consent::new(&c.keywords, c.suspected_automatic))
}
