//! The workspace's event feed: its public domain events in log order, from an
//! opaque cursor, with long-poll.

use std::time::Duration;

use axum::{extract::State, Json as AxumJson};
use serde::{Deserialize, Serialize};
use wabridge_handlers::feed::{self, FeedItem};

use crate::{
    app::App,
    http::{auth::Authed, error::AppError, extract::Query},
};

/// `GET …/events` parameters.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedParams {
    /// A `next_cursor` from an earlier answer; absent: from the start of the log.
    pub after: Option<String>,
    /// Only these types (comma-separated), e.g. `message.received,message.status_updated`.
    pub types: Option<String>,
    /// Page size, default 100, at most 500.
    pub limit: Option<i64>,
    /// Long-poll: when there is nothing after the cursor yet, wait up to this long
    /// (`30s`, `500ms`, or seconds; at most 30 s) and answer as soon as an event
    /// arrives. Default 0 (answer at once).
    pub wait: Option<String>,
}

/// A page of the feed.
#[derive(Serialize, schemars::JsonSchema)]
pub struct FeedPage {
    /// Events in log order.
    pub items: Vec<FeedItem>,
    /// Where to read on from: always given, also when `items` is empty (poll on
    /// from it).
    pub next_cursor: String,
}

/// The longest long-poll.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

fn parse_wait(w: Option<&str>) -> Result<Duration, AppError> {
    let Some(w) = w else {
        return Ok(Duration::ZERO);
    };
    let w = w.trim();
    let d = if w == "0" {
        Duration::ZERO
    } else {
        crate::config::parse_duration(w)
            .ok_or_else(|| AppError::validation("wait must be a duration like 30s or 500ms"))?
    };
    if d > MAX_WAIT {
        return Err(AppError::validation("wait must be at most 30s"));
    }
    Ok(d)
}

/// The workspace's events after a cursor (long-poll with `wait`).
pub async fn list(
    State(app): State<App>,
    auth: Authed,
    Query(p): Query<FeedParams>,
) -> Result<AxumJson<FeedPage>, AppError> {
    let limit = match p.limit {
        None => 100,
        Some(n) if (1..=500).contains(&n) => n as usize,
        Some(_) => return Err(AppError::validation("limit must be between 1 and 500")),
    };
    let wait = parse_wait(p.wait.as_deref())?;
    let after = match p.after.as_deref() {
        None | Some("") => 0,
        Some(c) => feed::decode_cursor(c)
            .ok_or_else(|| AppError::validation("after is not a cursor this API gave"))?,
    };
    let types: Vec<String> = p
        .types
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect();
    if let Some(bad) = types.iter().find(|t| !feed::is_public(t)) {
        return Err(AppError::validation(format!(
            "types: {bad:?} is not in the feed (it has {})",
            feed::PUBLIC_TYPES.join(", ")
        )));
    }
    let accept = |t: &str| types.is_empty() || types.iter().any(|x| x == t);
    let page = app
        .hub
        .wait_page(auth.ws(), after, limit, &accept, wait)
        .await
        .map_err(|e| {
            AppError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "log_unavailable",
                format!("the event log cannot be read: {e}"),
            )
        })?;
    let items = page
        .events
        .iter()
        .map(|e| FeedItem::of(e))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(AxumJson(FeedPage {
        items,
        next_cursor: feed::encode_cursor(page.through.max(after)),
    }))
}
