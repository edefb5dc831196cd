//! What a delivery attempt's answer means and when the next attempt is made:
//! 2xx delivered; 410 disables the endpoint; anything else (timeouts, no
//! connection, 3xx — redirects are not followed —, 4xx, 5xx) is tried again, with
//! exponential backoff from about `base` (1 s), doubling, with jitter, capped at an
//! hour, honouring `Retry-After` (up to the cap), until the delivery has failed for
//! `give_up_after` (3 days): then it fails and the endpoint is disabled.

use std::time::Duration;

/// The retry policy.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// The first pause (1 s).
    pub base: Duration,
    /// The longest pause (1 h).
    pub cap: Duration,
    /// How long a delivery may keep failing before the endpoint is disabled (3 days).
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(3 * 24 * 3600),
        }
    }
}

/// What the endpoint's answer (or its absence) says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered.
    Delivered,
    /// 410 Gone: disable the endpoint.
    Gone,
    /// Try again (no earlier than `Retry-After`, when given).
    Retry {
        /// What `Retry-After` asked for.
        retry_after: Option<Duration>,
    },
}

/// The verdict on an HTTP status (with its `Retry-After`, parsed).
pub fn verdict(status: u16, retry_after: Option<Duration>) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        410 => Verdict::Gone,
        _ => Verdict::Retry { retry_after },
    }
}

/// `Retry-After` as seconds or an HTTP date, relative to now (`None` when absent or
/// unreadable).
pub fn parse_retry_after(value: &str, now: time::OffsetDateTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822).ok()?;
    let d = at - now;
    Some(if d.is_negative() {
        Duration::ZERO
    } else {
        d.unsigned_abs()
    })
}

impl RetryPolicy {
    /// The pause after attempt `attempt` failed (`r` a jitter draw in [0, 1)):
    /// `base × 2^(attempt-1)` scaled by 0.75–1.25, capped; at least `retry_after`
    /// (itself capped).
    pub fn pause(&self, attempt: u32, r: f64, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.cap);
        let jittered = exp.mul_f64(0.75 + 0.5 * r.clamp(0.0, 1.0)).min(self.cap);
        match retry_after {
            Some(ra) => jittered.max(ra.min(self.cap)),
            None => jittered,
        }
    }

    /// Whether a delivery failing since `failing_for` is given up.
    pub fn exhausted(&self, failing_for: Duration) -> bool {
        failing_for >= self.give_up_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(verdict(200, None), Verdict::Delivered);
        assert_eq!(verdict(204, None), Verdict::Delivered);
        assert_eq!(verdict(410, None), Verdict::Gone);
        for s in [301, 400, 404, 429, 500, 502, 503, 504] {
            assert!(matches!(verdict(s, None), Verdict::Retry { .. }), "{s}");
        }
    }

    #[test]
    fn backoff_starts_near_a_second_doubles_and_caps_at_an_hour() {
        let p = RetryPolicy::default();
        assert_eq!(p.pause(1, 0.5, None), Duration::from_secs(1));
        assert_eq!(p.pause(2, 0.5, None), Duration::from_secs(2));
        assert_eq!(p.pause(5, 0.5, None), Duration::from_secs(16));
        assert!(p.pause(1, 0.0, None) >= Duration::from_millis(750));
        assert!(p.pause(1, 0.999, None) <= Duration::from_millis(1250));
        assert_eq!(p.pause(40, 0.999, None), Duration::from_secs(3600));
        assert_eq!(
            p.pause(1, 0.5, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(
            p.pause(1, 0.5, Some(Duration::from_secs(99_999))),
            Duration::from_secs(3600)
        );
        // From 1 s doubling to the cap then hourly: 3 days is about 84 attempts.
        let mut total = Duration::ZERO;
        let mut n = 0;
        while !p.exhausted(total) {
            n += 1;
            total += p.pause(n, 0.5, None);
        }
        assert!((80..=90).contains(&n), "{n}");
    }

    #[test]
    fn retry_after_as_seconds_or_a_date() {
        let now = time::macros::datetime!(2026-12-01 10:00:00 UTC);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Tue, 01 Dec 2026 10:01:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Tue, 01 Dec 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
