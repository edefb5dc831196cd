//! Process metrics for `/metrics`, through `prometheus-client`: every family has
//! HELP and TYPE, label values are escaped, latencies are real histograms.
//!
//! Counters are exposed with the `_total` suffix; gauges that describe the read
//! models (projection lag, open dead letters) are set when `/metrics` is scraped.

use std::sync::Arc;

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};
use wabridge_events::{AppendError, Appended, EventLog, NewEvent, StreamKind};

/// A connection closed at accept, by the cap it met.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `overall` (`WABRIDGE_MAX_CONNECTIONS`) or `per_address`
    /// (`WABRIDGE_MAX_CONNECTIONS_PER_ADDRESS`).
    pub cap: &'static str,
}

/// A response, by matched route and status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route template (`/v1/workspaces/{ws}/…`), never the raw path.
    pub route: &'static str,
    /// The status code.
    pub status: u16,
}

/// A projection or reactor, by name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    /// Its name (its checkpoint).
    pub projection: String,
}

/// A stream of the log.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    /// `domain` or `raw`.
    pub stream: &'static str,
}

/// A unit of work's lease changing hands on this instance.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaseLabels {
    /// The unit (`projections.0`, `webhook_processor.0`, ...).
    pub unit: String,
    /// `acquired`, `lost` or `handed_over` (to the member that owns the unit).
    pub change: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~13 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Every metric the process keeps.
pub struct Metrics {
    registry: Registry,
    /// Webhooks appended (new).
    pub webhooks_ingested: Counter,
    /// Webhooks that were duplicates inside the window.
    pub webhooks_duplicate: Counter,
    /// Webhooks refused for their signature.
    pub signature_failures: Counter,
    /// Requests refused for a missing, malformed, expired or revoked key.
    pub auth_failures: Counter,
    /// Requests denied for a missing permission (or another workspace's resource).
    pub access_denied: Counter,
    /// Connections closed at accept, by the cap they met.
    pub connections_refused: Family<RefusedLabels, Counter>,
    /// Sends refused by a workspace's rate limit (429).
    pub rate_limited: Counter,
    /// Time from request to durable append of a webhook.
    pub ingest_latency: Histogram,
    /// Time of one append to the log, by stream.
    pub append_latency: Family<StreamLabels, Histogram, fn() -> Histogram>,
    /// Responses by route and status.
    pub http: Family<HttpLabels, Counter>,
    /// Events a projection or reactor is behind the log's head.
    pub projection_lag: Family<ConsumerLabels, Gauge>,
    /// Dead letters waiting for the operator.
    pub dead_letters_open: Gauge,
    /// Units of work whose lease this instance took, lost or handed over.
    pub lease_changes: Family<LeaseLabels, Counter>,
    /// Sends the sender scheduled to retry (a retryable Meta answer or no answer).
    pub sender_retries: Counter,
    /// Outbound webhook endpoints by status (`enabled`, `paused`, `disabled`).
    pub endpoints: Family<StatusLabels, Gauge>,
    /// Endpoints whose oldest undelivered event is being retried.
    pub endpoints_failing: Gauge,
    /// How long the longest-failing endpoint has been failing, in seconds.
    pub endpoint_failing_seconds: Gauge,
}

/// Labels of a count by status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// The status.
    pub status: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            webhooks_ingested: Counter::default(),
            webhooks_duplicate: Counter::default(),
            signature_failures: Counter::default(),
            auth_failures: Counter::default(),
            access_denied: Counter::default(),
            connections_refused: Family::default(),
            rate_limited: Counter::default(),
            ingest_latency: latency_histogram(),
            append_latency: Family::new_with_constructor(latency_histogram),
            http: Family::default(),
            projection_lag: Family::default(),
            dead_letters_open: Gauge::default(),
            lease_changes: Family::default(),
            sender_retries: Counter::default(),
            endpoints: Family::default(),
            endpoints_failing: Gauge::default(),
            endpoint_failing_seconds: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "wabridge_webhooks_ingested",
            "Meta webhooks appended to the log",
            m.webhooks_ingested.clone(),
        );
        registry.register(
            "wabridge_webhooks_duplicate",
            "Meta webhooks already in the log (duplicate window)",
            m.webhooks_duplicate.clone(),
        );
        registry.register(
            "wabridge_webhook_signature_failures",
            "Meta webhooks refused for a missing, malformed or wrong signature",
            m.signature_failures.clone(),
        );
        registry.register(
            "wabridge_auth_failures",
            "Requests refused for a missing, malformed, expired or revoked key",
            m.auth_failures.clone(),
        );
        registry.register(
            "wabridge_access_denied",
            "Requests with a valid key denied (missing permission, another workspace)",
            m.access_denied.clone(),
        );
        registry.register(
            "wabridge_connections_refused",
            "Connections closed at accept: cap=overall when WABRIDGE_MAX_CONNECTIONS were open, cap=per_address when WABRIDGE_MAX_CONNECTIONS_PER_ADDRESS were open from the peer's address",
            m.connections_refused.clone(),
        );
        registry.register(
            "wabridge_rate_limit_rejections",
            "Sends refused with 429 by a workspace's rate limit",
            m.rate_limited.clone(),
        );
        registry.register(
            "wabridge_webhook_ingest_seconds",
            "Time from a webhook request to its durable append",
            m.ingest_latency.clone(),
        );
        registry.register(
            "wabridge_log_append_seconds",
            "Time of one append to the event log, by stream",
            m.append_latency.clone(),
        );
        registry.register(
            "wabridge_http_responses",
            "Responses by matched route and status",
            m.http.clone(),
        );
        registry.register(
            "wabridge_projection_lag_events",
            "Events a projection or reactor is behind the log's head",
            m.projection_lag.clone(),
        );
        registry.register(
            "wabridge_dead_letters_open",
            "Dead letters waiting for the operator",
            m.dead_letters_open.clone(),
        );
        registry.register(
            "wabridge_endpoints",
            "Outbound webhook endpoints by status (enabled, paused, disabled)",
            m.endpoints.clone(),
        );
        registry.register(
            "wabridge_endpoints_failing",
            "Outbound webhook endpoints whose oldest undelivered event is being retried",
            m.endpoints_failing.clone(),
        );
        registry.register(
            "wabridge_endpoint_failing_seconds",
            "How long the longest-failing outbound webhook endpoint has been failing",
            m.endpoint_failing_seconds.clone(),
        );
        registry.register(
            "wabridge_lease_changes",
            "Units of work (projections, processor, reactors) whose lease this instance took, lost or handed over",
            m.lease_changes.clone(),
        );
        registry.register(
            "wabridge_sender_retries",
            "Sends the sender scheduled to retry after a retryable answer or no answer",
            m.sender_retries.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts a connection refused at accept.
    pub fn count_refused_connection(&self, why: crate::connections::Refused) {
        self.connections_refused
            .get_or_create(&RefusedLabels { cap: why.label() })
            .inc();
    }

    /// Counts a send refused by a rate limit.
    pub fn count_rate_limited(&self) {
        self.rate_limited.inc();
    }

    /// Counts one response.
    pub fn count_http(&self, route: &'static str, status: u16) {
        self.http.get_or_create(&HttpLabels { route, status }).inc();
    }

    /// The text exposition (OpenMetrics).
    pub fn render(&self) -> String {
        let retries = wabridge_handlers::sender::RETRIES.load(std::sync::atomic::Ordering::Relaxed);
        self.sender_retries
            .inc_by(retries.saturating_sub(self.sender_retries.get()));
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a string");
        out
    }
}

/// The event log with its appends timed into [`Metrics::append_latency`].
pub struct TimedLog {
    inner: Arc<dyn EventLog>,
    metrics: Arc<Metrics>,
}

impl TimedLog {
    /// Wraps a log.
    pub fn new(inner: Arc<dyn EventLog>, metrics: Arc<Metrics>) -> Self {
        TimedLog { inner, metrics }
    }
}

#[async_trait::async_trait]
impl wabridge_events::WrappedLog for TimedLog {
    fn inner(&self) -> &dyn EventLog {
        &*self.inner
    }

    async fn append(&self, event: NewEvent) -> Result<Appended, AppendError> {
        let stream = match self.inner.namespace().stream_of(&event.subject) {
            Some(StreamKind::Raw) => "raw",
            _ => "domain",
        };
        let started = std::time::Instant::now();
        let result = self.inner.append(event).await;
        self.metrics
            .append_latency
            .get_or_create(&StreamLabels { stream })
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_help_and_type_and_labels_are_escaped() {
        let m = Metrics::default();
        m.webhooks_ingested.inc();
        m.count_http("/v1/x\"y\\z\n", 200);
        m.ingest_latency.observe(0.002);
        m.append_latency
            .get_or_create(&StreamLabels { stream: "raw" })
            .observe(0.001);
        m.projection_lag
            .get_or_create(&ConsumerLabels {
                projection: "audit".into(),
            })
            .set(3);
        let text = m.render();
        for family in [
            "wabridge_webhooks_ingested",
            "wabridge_http_responses",
            "wabridge_webhook_ingest_seconds",
            "wabridge_projection_lag_events",
            "wabridge_dead_letters_open",
            "wabridge_log_append_seconds",
        ] {
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{family}: {text}"
            );
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family}: {text}"
            );
        }
        assert!(
            text.contains("wabridge_webhooks_ingested_total 1"),
            "{text}"
        );
        assert!(
            text.contains(r#"route="/v1/x\"y\\z\n""#),
            "label not escaped: {text}"
        );
        assert!(
            text.contains("wabridge_webhook_ingest_seconds_bucket{le="),
            "{text}"
        );
        assert!(
            text.contains(r#"wabridge_projection_lag_events{projection="audit"} 3"#),
            "{text}"
        );
    }
}
