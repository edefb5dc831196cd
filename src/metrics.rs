//! Process metrics in Prometheus text format (no exporter dependency).

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

/// A fixed-bucket latency histogram.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

const LATENCY_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            bounds: LATENCY_BOUNDS,
            counts: LATENCY_BOUNDS.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if secs <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let n = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {n}");
    }
}

/// Every metric the process keeps.
#[derive(Default)]
pub struct Metrics {
    /// Webhooks appended (new).
    pub webhooks_ingested: AtomicU64,
    /// Webhooks that were duplicates inside the window.
    pub webhooks_duplicate: AtomicU64,
    /// Webhooks refused for their signature.
    pub signature_failures: AtomicU64,
    /// Requests refused for a missing, malformed, expired or revoked key.
    pub auth_failures: AtomicU64,
    /// Requests denied for a missing permission.
    pub access_denied: AtomicU64,
    /// Rate-limit rejections (sending, later issue).
    pub rate_limited: AtomicU64,
    /// Time from request to durable append of a webhook.
    pub ingest_latency: Histogram,
    /// Responses by route and status.
    pub http: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Connections closed at accept because `WABRIDGE_MAX_CONNECTIONS` were open.
    pub connections_refused: AtomicU64,
}

impl Metrics {
    /// Counts a connection refused at accept.
    pub fn count_refused_connection(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one response.
    pub fn count_http(&self, route: &'static str, status: u16) {
        *self
            .http
            .lock()
            .expect("metrics lock")
            .entry((route, status))
            .or_default() += 1;
    }

    /// Renders the counters, plus gauges computed by the caller (`name`, labels, value).
    pub fn render(&self, gauges: &[(&str, String, f64)]) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        };
        counter(
            &mut out,
            "wabridge_webhooks_ingested_total",
            "Meta webhooks appended to the log.",
            &self.webhooks_ingested,
        );
        counter(
            &mut out,
            "wabridge_webhooks_duplicate_total",
            "Meta webhooks already in the log (duplicate window).",
            &self.webhooks_duplicate,
        );
        counter(
            &mut out,
            "wabridge_webhook_signature_failures_total",
            "Meta webhooks refused for a missing, malformed or wrong signature.",
            &self.signature_failures,
        );
        counter(
            &mut out,
            "wabridge_auth_failures_total",
            "Requests refused for a missing, malformed, expired or revoked key.",
            &self.auth_failures,
        );
        counter(
            &mut out,
            "wabridge_access_denied_total",
            "Requests denied for a missing permission.",
            &self.access_denied,
        );
        counter(
            &mut out,
            "wabridge_rate_limit_rejections_total",
            "Sends refused by a workspace rate limit.",
            &self.rate_limited,
        );
        self.ingest_latency.render(
            &mut out,
            "wabridge_webhook_ingest_seconds",
            "Time from request to durable append of a webhook.",
        );
        let _ = writeln!(out, "# HELP wabridge_http_responses_total Responses by matched route and status.\n# TYPE wabridge_http_responses_total counter");
        for ((route, status), n) in self.http.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "wabridge_http_responses_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let mut last = "";
        for (name, labels, v) in gauges {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} gauge");
                last = name;
            }
            let _ = writeln!(out, "{name}{labels} {v}");
        }
        out
    }
}
