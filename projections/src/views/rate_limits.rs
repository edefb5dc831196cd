//! The rate-limit ledger: each workspace's policy, and per workspace and minute the
//! sends admitted (every `message.send_requested`, by its log time) and refused
//! (the `rate_limit.rejected` counts instances append), with the limit in force.

use serde::Serialize;
use sqlx::{AnyConnection, Row};
use wabridge_events::{DomainEvent, StoredEvent};

use super::EventMeta;
use crate::{Projection, Store};

/// The `rate_limits` projection.
pub struct RateLimits;

/// A workspace's policy as set (none: the default applies).
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyRow {
    /// Sustained sends per second.
    pub requests_per_second: f64,
    /// Sends allowed at once.
    pub burst: i64,
    /// When it was set.
    pub updated_at: String,
}

/// One minute of the ledger.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Usage {
    /// The minute (`2026-12-01T10:15:00Z`).
    pub minute: String,
    /// Sends admitted.
    pub admitted: i64,
    /// Sends refused with 429.
    pub rejected: i64,
    /// The sustained rate in force at the minute's last change (0: the default).
    pub requests_per_second: f64,
    /// The burst in force (0: the default).
    pub burst: i64,
}

/// The minute a time falls in, as the ledger keys it.
pub fn minute_of(at: &str) -> String {
    let s = at;
    // `2026-12-01T10:15:42.123456Z` → `2026-12-01T10:15:00Z`
    format!("{}:00Z", &s[..16])
}

async fn add(
    conn: &mut AnyConnection,
    ws: &str,
    minute: &str,
    admitted: i64,
    rejected: i64,
) -> anyhow::Result<()> {
    let policy = policy_in(&mut *conn, ws).await?;
    let (rps, burst) = policy
        .map(|p| (p.requests_per_second, p.burst))
        .unwrap_or((0.0, 0));
    sqlx::query("INSERT INTO rate_limit_usage (workspace, minute, admitted, rejected, requests_per_second, burst) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (workspace, minute) DO UPDATE SET admitted = rate_limit_usage.admitted + excluded.admitted, rejected = rate_limit_usage.rejected + excluded.rejected, requests_per_second = excluded.requests_per_second, burst = excluded.burst")
        .bind(ws)
        .bind(minute)
        .bind(admitted)
        .bind(rejected)
        .bind(rps)
        .bind(burst)
        .execute(conn)
        .await?;
    Ok(())
}

async fn policy_in(conn: &mut AnyConnection, ws: &str) -> anyhow::Result<Option<PolicyRow>> {
    let r = sqlx::query("SELECT requests_per_second, burst, updated_at FROM rate_limit_policies WHERE workspace = $1")
        .bind(ws)
        .fetch_optional(conn)
        .await?;
    Ok(r.map(|r| PolicyRow {
        requests_per_second: r.get(0),
        burst: r.get(1),
        updated_at: r.get(2),
    }))
}

#[async_trait::async_trait]
impl Projection for RateLimits {
    fn name(&self) -> &'static str {
        "rate_limits"
    }
    fn tables(&self) -> &'static [&'static str] {
        &["rate_limit_policies", "rate_limit_usage"]
    }
    fn dump_sql(&self) -> &'static str {
        "SELECT 'p|' || workspace || '|' || CAST(requests_per_second AS TEXT) || '|' || CAST(burst AS TEXT) || '|' || updated_at FROM rate_limit_policies \
         UNION ALL SELECT 'u|' || workspace || '|' || minute || '|' || CAST(admitted AS TEXT) || '|' || CAST(rejected AS TEXT) || '|' || CAST(requests_per_second AS TEXT) || '|' || CAST(burst AS TEXT) FROM rate_limit_usage ORDER BY 1"
    }
    async fn apply(&self, conn: &mut AnyConnection, event: &StoredEvent) -> anyhow::Result<()> {
        let relevant = |t: &str| {
            matches!(
                t,
                "message.send_requested" | "rate_limit.set" | "rate_limit.rejected"
            )
        };
        if super::skip(event, relevant) {
            return Ok(());
        }
        let meta = EventMeta::of(event);
        match super::decode(event)? {
            DomainEvent::MessageSendRequested(_) => {
                add(conn, &meta.workspace, &minute_of(&meta.recorded_at), 1, 0).await?;
            }
            DomainEvent::RateLimitRejected(r) => {
                add(conn, &meta.workspace, &r.minute, 0, r.count as i64).await?;
            }
            DomainEvent::RateLimitSet(p) => {
                sqlx::query("INSERT INTO rate_limit_policies (workspace, requests_per_second, burst, updated_at) VALUES ($1, $2, $3, $4) ON CONFLICT (workspace) DO UPDATE SET requests_per_second = excluded.requests_per_second, burst = excluded.burst, updated_at = excluded.updated_at")
                    .bind(&meta.workspace)
                    .bind(p.requests_per_second)
                    .bind(p.burst as i64)
                    .bind(meta.recorded_at.to_string())
                    .execute(conn)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// A workspace's policy, if one was set.
pub async fn policy(store: &Store, ws: &str) -> anyhow::Result<Option<PolicyRow>> {
    let mut conn = store.reads.acquire().await?;
    policy_in(&mut conn, ws).await
}

/// The most recent minutes of usage, newest first.
pub async fn usage(store: &Store, ws: &str, minutes: i64) -> anyhow::Result<Vec<Usage>> {
    let rows = sqlx::query("SELECT minute, admitted, rejected, requests_per_second, burst FROM rate_limit_usage WHERE workspace = $1 ORDER BY minute DESC LIMIT $2")
        .bind(ws)
        .bind(minutes)
        .fetch_all(&store.reads)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| Usage {
            minute: r.get(0),
            admitted: r.get(1),
            rejected: r.get(2),
            requests_per_second: r.get(3),
            burst: r.get(4),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wabridge_events::Timestamp;

    #[test]
    fn minutes() {
        let t = Timestamp::parse("2026-12-01T10:15:42.123456Z").unwrap();
        assert_eq!(minute_of(&t.to_string()), "2026-12-01T10:15:00Z");
    }
}
