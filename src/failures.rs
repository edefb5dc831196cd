//! Unauthenticated failures (bad keys, bad webhook signatures), counted per source,
//! kind and minute until `security` summarises them into the log.

use std::{collections::HashMap, net::IpAddr, sync::Mutex};

use wabridge_events::Timestamp;

/// Failures counted per (source, kind, minute) until flushed.
#[derive(Default)]
pub struct FailureCounts(Mutex<HashMap<(String, &'static str, i64), u64>>);

/// The current minute since the Unix epoch.
pub fn minute_now() -> i64 {
    Timestamp::now().unix_micros() / 60_000_000
}

impl FailureCounts {
    /// Counts one failure from `ip` of `kind` (`api_key`, `webhook_signature`).
    pub fn record(&self, ip: Option<IpAddr>, kind: &'static str) {
        let source = ip
            .map(|i| i.to_string())
            .unwrap_or_else(|| "unknown".into());
        *self
            .0
            .lock()
            .expect("failure lock")
            .entry((source, kind, minute_now()))
            .or_default() += 1;
    }

    /// Removes and returns the counts of finished minutes (all of them when `all`).
    pub fn take(&self, all: bool) -> Vec<((String, &'static str, i64), u64)> {
        let now = minute_now();
        let mut map = self.0.lock().expect("failure lock");
        let keys: Vec<_> = map
            .keys()
            .filter(|(_, _, m)| all || *m < now)
            .cloned()
            .collect();
        keys.into_iter()
            .map(|k| {
                let n = map.remove(&k).unwrap_or(0);
                (k, n)
            })
            .collect()
    }
}
