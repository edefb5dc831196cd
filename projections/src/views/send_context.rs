//! What the send gate needs to know besides consent and the rate limit: when each
//! contact last wrote (Meta's timestamp, the latest of all received whatever their
//! order: the 24-hour customer service window), and each template's category as
//! Meta's template webhooks tell it.

use sqlx::AnyConnection;
use wabridge_events::{DomainEvent, StoredEvent, Timestamp};

use super::EventMeta;
use crate::{Projection, Store};

/// The `send_context` projection.
pub struct SendContext;

/// A template language as a key: `en-US`, `en_US` and `EN_us` are one language.
pub fn language_key(language: &str) -> String {
    language.trim().replace('-', "_").to_ascii_lowercase()
}

/// A category as Meta writes it (`MARKETING`) in ours (`marketing`); unknown ones
/// are kept lower-cased.
pub fn category_key(category: &str) -> String {
    category.trim().to_ascii_lowercase()
}

/// The category a template webhook sets, if it names one: `message_template_category`
/// on a status update; on a category update the stricter of `new_category` and
/// `correct_category` (a pending re-categorisation to marketing counts as marketing
/// now: blocking a marketing opt-out early is the safe side).
pub fn category_of(raw: &serde_json::Value) -> Option<String> {
    if let Some(c) = raw
        .get("message_template_category")
        .and_then(|v| v.as_str())
    {
        return Some(category_key(c));
    }
    let new = raw
        .get("new_category")
        .and_then(|v| v.as_str())
        .map(category_key);
    let correct = raw
        .get("correct_category")
        .and_then(|v| v.as_str())
        .map(category_key);
    match (new, correct) {
        (Some(n), Some(c)) if n == "marketing" || c == "marketing" => Some("marketing".into()),
        (Some(n), _) => Some(n),
        (None, c) => c,
    }
}

/// A template webhook's (name, language, category), when it names all three.
fn template_of(event: &DomainEvent) -> Option<(String, String, String)> {
    let raw = match event {
        DomainEvent::TemplateStatusUpdated(t) => &t.raw,
        DomainEvent::AccountUpdated(a) if a.source.field == "template_category_update" => &a.raw,
        _ => return None,
    };
    let name = raw.get("message_template_name")?.as_str()?.to_owned();
    let language = language_key(raw.get("message_template_language")?.as_str()?);
    Some((name, language, category_of(raw)?))
}

#[async_trait::async_trait]
impl Projection for SendContext {
    fn name(&self) -> &'static str {
        "send_context"
    }
    fn tables(&self) -> &'static [&'static str] {
        &["last_inbound", "template_categories"]
    }
    fn replay_weight(&self) -> u32 {
        // Every inbound message upserts its contact's window (at 1,000,000 mixed
        // events SQLite 3.9 s, PostgreSQL 10 s).
        12
    }
    fn dump_sql(&self) -> &'static str {
        "SELECT 'i|' || workspace || '|' || ident || '|' || at FROM last_inbound \
         UNION ALL SELECT 't|' || workspace || '|' || name || '|' || language || '|' || category FROM template_categories ORDER BY 1"
    }
    async fn apply(&self, conn: &mut AnyConnection, event: &StoredEvent) -> anyhow::Result<()> {
        let relevant = |t: &str| {
            matches!(
                t,
                "message.received" | "template.status_updated" | "account.updated"
            )
        };
        if super::skip(event, relevant) {
            return Ok(());
        }
        let decoded = super::decode(event)?;
        let meta = EventMeta::of(event);
        if let DomainEvent::MessageReceived(m) = &decoded {
            let at = m.timestamp.to_string();
            for ident in [m.contact.wa_id.as_ref(), m.contact.user_id.as_ref()]
                .into_iter()
                .flatten()
            {
                // The latest by Meta's time, whatever order they arrive in (an
                // older one leaves the row alone: no new row version to write).
                sqlx::query("INSERT INTO last_inbound (workspace, ident, at) VALUES ($1, $2, $3) ON CONFLICT (workspace, ident) DO UPDATE SET at = excluded.at WHERE excluded.at > last_inbound.at")
                    .bind(&meta.workspace)
                    .bind(ident)
                    .bind(&at)
                    .execute(&mut *conn)
                    .await?;
            }
        } else if let Some((name, language, category)) = template_of(decoded) {
            sqlx::query("INSERT INTO template_categories (workspace, name, language, category) VALUES ($1, $2, $3, $4) ON CONFLICT (workspace, name, language) DO UPDATE SET category = excluded.category")
                .bind(&meta.workspace)
                .bind(&name)
                .bind(&language)
                .bind(&category)
                .execute(conn)
                .await?;
        }
        Ok(())
    }

    /// The batch folded in memory: the latest inbound time per contact identifier
    /// and the last category per template, each table written once (an upsert that
    /// keeps the later time, as one event at a time does).
    async fn apply_batch(
        &self,
        conn: &mut AnyConnection,
        events: &[StoredEvent],
    ) -> anyhow::Result<()> {
        use std::collections::BTreeMap;
        let relevant = |t: &str| {
            matches!(
                t,
                "message.received" | "template.status_updated" | "account.updated"
            )
        };
        let mut inbound: BTreeMap<(String, String), String> = BTreeMap::new();
        let mut templates: BTreeMap<(String, String, String), String> = BTreeMap::new();
        for event in events {
            if super::skip(event, relevant) {
                continue;
            }
            let decoded = super::decode(event)?;
            let ws = super::ws_of(event);
            if let DomainEvent::MessageReceived(m) = &decoded {
                let at = m.timestamp.to_string();
                for ident in [m.contact.wa_id.as_ref(), m.contact.user_id.as_ref()]
                    .into_iter()
                    .flatten()
                {
                    let e = inbound.entry((ws.clone(), ident.clone())).or_default();
                    if at > *e {
                        *e = at.clone();
                    }
                }
            } else if let Some((name, language, category)) = template_of(decoded) {
                templates.insert((ws, name, language), category);
            }
        }
        use crate::batch::{insert_rows, Col::Text};
        let inbound: Vec<_> = inbound.iter().map(|((w, i), at)| (w, i, at)).collect();
        insert_rows(
            &mut *conn,
            "INSERT INTO last_inbound (workspace, ident, at)",
            &[Text, Text, Text],
            "ON CONFLICT (workspace, ident) DO UPDATE SET at = excluded.at WHERE excluded.at > last_inbound.at",
            &inbound,
        )
        .await?;
        let templates: Vec<_> = templates
            .iter()
            .map(|((w, n, l), c)| (w, n, l, c))
            .collect();
        insert_rows(
            &mut *conn,
            "INSERT INTO template_categories (workspace, name, language, category)",
            &[Text, Text, Text, Text],
            "ON CONFLICT (workspace, name, language) DO UPDATE SET category = excluded.category",
            &templates,
        )
        .await?;
        Ok(())
    }
}

/// The newest inbound message time of a contact (any of its identifiers).
pub async fn last_inbound(
    store: &Store,
    ws: &str,
    idents: &[&str],
) -> anyhow::Result<Option<Timestamp>> {
    let mut best: Option<Timestamp> = None;
    for ident in idents {
        let at: Option<String> =
            sqlx::query_scalar("SELECT at FROM last_inbound WHERE workspace = $1 AND ident = $2")
                .bind(ws)
                .bind(*ident)
                .fetch_optional(&store.reads)
                .await?;
        if let Some(at) = at {
            let at = Timestamp::parse(&at)?;
            best = Some(best.map_or(at, |b| b.max(at)));
        }
    }
    Ok(best)
}

/// A template's category as Meta's webhooks told it.
pub async fn template_category(
    store: &Store,
    ws: &str,
    name: &str,
    language: &str,
) -> anyhow::Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT category FROM template_categories WHERE workspace = $1 AND name = $2 AND language = $3",
    )
    .bind(ws)
    .bind(name)
    .bind(language_key(language))
    .fetch_optional(&store.reads)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn categories_from_template_webhooks() {
        assert_eq!(
            category_of(&json!({"event": "APPROVED", "message_template_category": "UTILITY"})),
            Some("utility".into())
        );
        assert_eq!(
            category_of(&json!({"new_category": "UTILITY", "correct_category": "MARKETING"})),
            Some("marketing".into())
        );
        assert_eq!(
            category_of(&json!({"new_category": "MARKETING"})),
            Some("marketing".into())
        );
        assert_eq!(category_of(&json!({"event": "FLAGGED"})), None);
        assert_eq!(language_key("en-US"), language_key("en_US"));
    }
}
