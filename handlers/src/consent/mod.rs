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
    let c = consent::config(&ctx.store, ws.as_str()).await?;
    Ok(detect::Consent::new(&c.keywords, c.suspected_automatic))
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
