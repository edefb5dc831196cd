//! Consent: what an inbound message says about a contact's consent (the keyword
//! matcher), and the commands and reactor that turn it into opt-out state.

pub mod detect;
pub mod matcher;

use wabridge_events::{
    types::{ConsentKeywordsSet, ContactRef, EventData},
    Slug,
};
use wabridge_projections::views::consent;

use crate::commands::{CommandError, Ctx};
use crate::sending::request::Recipient;

/// The subject of a workspace's consent configuration (keywords and settings).
pub fn config_subject(ctx: &Ctx, ws: &Slug) -> String {
    ConsentKeywordsSet::subject(ctx.log.namespace(), Some(ws), "keywords")
}

/// A workspace's consent configuration as of the log's last change of it.
pub async fn current(ctx: &Ctx, ws: &Slug) -> Result<detect::Consent, CommandError> {
    ctx.fresh("consent", &config_subject(ctx, ws)).await?;
    read(ctx, ws).await
}

/// A workspace's consent configuration as the read model holds it.
async fn read(ctx: &Ctx, ws: &Slug) -> Result<detect::Consent, CommandError> {
    let c = consent::config(&ctx.store, ws.as_str()).await?;
    Ok(detect::Consent::new(&c.keywords, c.suspected_automatic))
}

/// How many workspaces' consent settings are read at once by [`read_for`].
const READS_AT_ONCE: usize = 32;

/// Makes the consent configurations of `workspaces` as fresh as the log with one
/// look-up for all of them: the log's sequence covering every one's configuration
/// subject ([`EventLog::last_seq_covering`](wabridge_events::EventLog::last_seq_covering)),
/// then the consent projection at least there. Returns that sequence: while it
/// stays the same, none of these configurations changed. A chunk of webhooks for
/// many client businesses reaches many workspaces; asked one by one, each cost a
/// request to the log.
pub async fn fresh_for(
    ctx: &Ctx,
    workspaces: &std::collections::BTreeSet<Slug>,
) -> Result<u64, CommandError> {
    let subjects: Vec<String> = workspaces
        .iter()
        .map(|ws| config_subject(ctx, ws))
        .collect();
    let seq = ctx.log.last_seq_covering(&subjects).await?;
    if seq > 0 {
        ctx.wait("consent", seq).await?;
    }
    Ok(seq)
}

/// The consent configurations of `workspaces` as the read model holds them (made
/// fresh first with [`fresh_for`]), several read at once.
pub async fn read_for(
    ctx: &Ctx,
    workspaces: impl Iterator<Item = Slug>,
) -> Result<std::collections::HashMap<Slug, detect::Consent>, CommandError> {
    use futures_util::{StreamExt, TryStreamExt};
    let read_one = |ws: Slug| async move {
        let c = read(ctx, &ws).await?;
        Ok::<_, CommandError>((ws, c))
    };
    futures_util::stream::iter(workspaces.map(read_one))
        .buffer_unordered(READS_AT_ONCE)
        .try_collect()
        .await
}

/// A contact named in a path or a request: a phone number's digits (E.164, `+`
/// optional) or a business-scoped user id (`US.1349…`, or a parent id `US.ENT.…`),
/// by the same rules as a send's recipient.
pub fn contact_ref(id: &str) -> Result<ContactRef, CommandError> {
    Recipient::parse(id)
        .map(|r| r.contact())
        .map_err(|why| {
            CommandError::Validation(format!(
                "contact {:?} is neither a phone number nor a business-scoped user id (such as US.13491208655302741918): {why}",
                id.chars().take(64).collect::<String>()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_ids() {
        assert_eq!(
            contact_ref("447700900123").unwrap().wa_id.as_deref(),
            Some("447700900123")
        );
        assert_eq!(
            contact_ref("+447700900123").unwrap().wa_id.as_deref(),
            Some("447700900123")
        );
        assert_eq!(
            contact_ref("US.13491208655302741918")
                .unwrap()
                .user_id
                .as_deref(),
            Some("US.13491208655302741918")
        );
        assert!(contact_ref("US.ENT.11815799212886844830").is_ok());
        for bad in [
            "",
            "12345",
            "1234567890123456",
            "hello",
            "us.123",
            "US.",
            "US.12-3",
            "USA.1",
            "+",
            "44 7700 900123",
            "US.ENT.",
        ] {
            assert!(contact_ref(bad).is_err(), "{bad}");
        }
    }
}
