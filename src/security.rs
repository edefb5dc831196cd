//! Unauthenticated failures (bad keys, bad webhook signatures) are counted in
//! `/metrics` and summarised as one `security.auth_failures` event per source, kind
//! and minute, so nobody can flood the log.

use std::{collections::HashMap, net::IpAddr, sync::Mutex, time::Duration};

use wabridge_events::{types::AuthFailuresSummarised, Timestamp};
use wabridge_handlers::commands::Caller;

use crate::app::App;

/// Failures counted per (source, kind, minute) until flushed.
#[derive(Default)]
pub struct FailureCounts(Mutex<HashMap<(String, &'static str, i64), u64>>);

fn minute_now() -> i64 {
    Timestamp::now().unix_micros() / 60_000_000
}

/// Counts one failure.
pub fn record_failure(app: &App, ip: Option<IpAddr>, kind: &'static str) {
    let source = ip
        .map(|i| i.to_string())
        .unwrap_or_else(|| "unknown".into());
    *app.auth_failures
        .0
        .lock()
        .expect("failure lock")
        .entry((source, kind, minute_now()))
        .or_default() += 1;
}

/// Appends a summary for every finished minute (all minutes when `all`).
pub async fn flush(app: &App, all: bool) {
    let now = minute_now();
    let done: Vec<_> = {
        let mut map = app.auth_failures.0.lock().expect("failure lock");
        let keys: Vec<_> = map
            .keys()
            .filter(|(_, _, m)| all || *m < now)
            .cloned()
            .collect();
        keys.into_iter()
            .map(|k| (k.clone(), map.remove(&k).unwrap_or(0)))
            .collect()
    };
    for ((source, kind, minute), count) in done {
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
