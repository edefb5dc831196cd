//! Unauthenticated failures (bad keys, bad webhook signatures) are counted in
//! `/metrics` and summarised as one `security.auth_failures` event per source, kind
//! and minute, so nobody can flood the log.

use std::time::Duration;

use wabridge_events::{types::AuthFailuresSummarised, Timestamp};
use wabridge_handlers::commands::Caller;

use crate::app::App;

/// Appends a summary for every finished minute (all minutes when `all`).
pub async fn flush(app: &App, all: bool) {
    for ((source, kind, minute), count) in app.auth_failures.take(all) {
        let data = AuthFailuresSummarised {
            source: source.clone(),
            kind: kind.to_string(),
            minute: Timestamp::from_unix_micros(minute * 60_000_000).unwrap_or_else(Timestamp::now),
            count,
        };
        let mut ev = app.ctx.event(
            None,
            &Caller {
                ip: Some(source.clone()),
                ..Caller::system("security")
            },
            &data,
        );
        ev.msg_id = Some(format!("authfail:{source}:{kind}:{minute}"));
        if let Err(e) = app.ctx.log.append(ev).await {
            tracing::warn!(error = %e, "recording an auth-failure summary failed");
        }
    }
}

/// Flushes every 15 seconds, for ever.
pub async fn run(app: App) {
    loop {
        tokio::time::sleep(Duration::from_secs(15)).await;
        flush(&app, false).await;
    }
}
