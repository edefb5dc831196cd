//! Operational events: dead letters and security summaries.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// `dead_letter.recorded` v1: a consumer could not process an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeadLetterRecorded {
    /// Id of the dead letter (`<consumer>:<stream>:<seq>`).
    pub id: String,
    /// The consumer that failed (a projection or reactor name).
    pub consumer: String,
    /// `domain` or `raw`.
    pub stream: String,
    /// Sequence of the failed event.
    pub seq: u64,
    /// Its type.
    pub event_type: String,
    /// Why it failed.
    pub reason: String,
    /// How many attempts were made.
    pub attempts: u32,
}

/// `dead_letter.redriven` v1: the operator asked the consumer to try again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeadLetterRedriven {
    /// The dead letter id.
    pub id: String,
}

/// `dead_letter.resolved` v1: a redrive succeeded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeadLetterResolved {
    /// The dead letter id.
    pub id: String,
}

/// `dead_letter.discarded` v1: the operator gave up on it (kept in the log).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeadLetterDiscarded {
    /// The dead letter id.
    pub id: String,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `access.denied` v1: a request with a valid key lacked the permission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AccessDenied {
    /// The route's method and path template.
    pub route: String,
    /// The permission that was missing.
    pub permission: String,
    /// The client address (see `WABRIDGE_TRUSTED_PROXIES`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

/// `security.auth_failures` v1: unauthenticated failures from one source in one
/// minute, summarised so they cannot flood the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuthFailuresSummarised {
    /// The source address.
    pub source: String,
    /// `api_key` or `webhook_signature`.
    pub kind: String,
    /// The minute.
    pub minute: Timestamp,
    /// How many failures.
    pub count: u64,
}

/// `audit.retention_cut` v1: audit entries up to `through_seq` leave the view; the
/// hash at the boundary keeps the chain verifiable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditRetentionCut {
    /// The last audit seq removed.
    pub through_seq: u64,
    /// The hash of that entry (the next entry's `prev_hash`).
    pub boundary_hash: String,
    /// Entries older than this left the view.
    pub cutoff: Timestamp,
    /// HMAC-SHA256 over `workspace|through_seq|boundary_hash` with `AUDIT_SIGNING_KEY`, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}
