//! Per-workspace send rate limits: GCRA (the generic cell rate algorithm) over a
//! state shared by every instance on the event log.
//!
//! - [`gcra`] is the pure algorithm: one timestamp per key, the theoretical arrival
//!   time (TAT), no counters, no refill job.
//! - [`headers`] renders the IETF `RateLimit-Policy` / `RateLimit` fields
//!   (draft-ietf-httpapi-ratelimit-headers-10 syntax) and `Retry-After`.
//! - [`SharedLimiter`] keeps each key's TAT in the log's compare-and-set key-value
//!   store ([`EventLog::kv_cas`]), so two wabridge instances enforce one budget
//!   together and a restart continues where the budget stood. (`governor` cannot do
//!   this: its state store is synchronous and its TATs are offsets from a
//!   per-process start instant.)
//!
//! Times are nanoseconds since the Unix epoch (`i128`), passed in by the caller
//! ([`unix_nanos_now`] for the wall clock), so tests drive the clock. Clock skew
//! between instances shifts their decisions by the skew.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use wabridge_events::{EventLog, LogError};

/// The policy name in the `RateLimit-Policy` and `RateLimit` fields.
pub const POLICY_NAME: &str = "default";

/// `RateLimit-Policy`, lowercase: field names are case-insensitive, and the `http`
/// crate's `HeaderName::from_static` accepts only lowercase.
pub const RATELIMIT_POLICY: &str = "ratelimit-policy";
/// `RateLimit` (lowercase, see [`RATELIMIT_POLICY`]).
pub const RATELIMIT: &str = "ratelimit";
/// `Retry-After` (lowercase, see [`RATELIMIT_POLICY`]).
pub const RETRY_AFTER: &str = "retry-after";

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// The longest emission interval used (about 31.7 years): keeps the arithmetic far
/// from overflow for absurdly small rates.
const MAX_EMISSION_INTERVAL: i128 = 1_000_000_000_000_000_000;

/// A rate-limit policy: a sustained rate and a burst.
///
/// As GCRA: the emission interval is `T = 1 s / requests_per_second` and the burst
/// tolerance `τ = T × (burst − 1)` (round2-facts §6, as in governor's `Gcra`), so
/// `burst` requests may arrive at once on a rested key, and after that one per `T`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    /// The sustained rate, in (0, 100 000].
    pub requests_per_second: f64,
    /// How many requests a rested key may send at once, 1 to 100 000.
    pub burst: u32,
}

/// The default policy for a new workspace (see [`Policy::DEFAULT`]).
pub const DEFAULT: Policy = Policy::DEFAULT;

impl Policy {
    /// The default for a new workspace: 20 requests per second, bursts of 40.
    ///
    /// 20/s is Meta's lowest documented per-number throughput (numbers in
    /// coexistence mode) and a quarter of the standard 80 messages per second per
    /// number, so a workspace on defaults never makes Meta answer 130429 for its
    /// own number, and leaves headroom for status-driven retries. A burst of 40 (two
    /// seconds' worth) lets a client post a small batch at once without pacing.
    pub const DEFAULT: Policy = Policy {
        requests_per_second: 20.0,
        burst: 40,
    };

    /// The largest sustained rate accepted.
    pub const MAX_REQUESTS_PER_SECOND: f64 = 100_000.0;
    /// The largest burst accepted.
    pub const MAX_BURST: u32 = 100_000;

    /// Checks the bounds: `requests_per_second` in (0, 100 000] and finite, `burst`
    /// in 1..=100 000. The error is a message for the API caller.
    pub fn validate(&self) -> Result<(), String> {
        let rps = self.requests_per_second;
        if !(rps.is_finite() && rps > 0.0 && rps <= Self::MAX_REQUESTS_PER_SECOND) {
            return Err(format!(
                "requests_per_second must be a number greater than 0 and at most {}, not {rps}",
                Self::MAX_REQUESTS_PER_SECOND
            ));
        }
        if !(1..=Self::MAX_BURST).contains(&self.burst) {
            return Err(format!(
                "burst must be between 1 and {}, not {}",
                Self::MAX_BURST,
                self.burst
            ));
        }
        Ok(())
    }

    /// The emission interval `T` in nanoseconds: `1 s / rps`, rounded **up** to a
    /// whole nanosecond (so the enforced rate never exceeds the policy's), at least
    /// 1 ns.
    pub fn emission_interval_nanos(&self) -> i128 {
        let t = (1e9 / self.requests_per_second).ceil();
        if t.is_nan() || t >= MAX_EMISSION_INTERVAL as f64 {
            MAX_EMISSION_INTERVAL
        } else {
            (t as i128).max(1)
        }
    }

    /// The burst tolerance `τ = T × (burst − 1)` in nanoseconds.
    pub fn tolerance_nanos(&self) -> i128 {
        self.emission_interval_nanos() * (i128::from(self.burst.max(1)) - 1)
    }

    /// The `w` of `RateLimit-Policy`: the time a drained key takes to regain its
    /// whole burst, `burst × T`, rounded up to whole seconds (at least 1).
    pub fn window_seconds(&self) -> u64 {
        let full = self.emission_interval_nanos() * i128::from(self.burst.max(1));
        ceil_div(full, NANOS_PER_SEC).clamp(1, i128::from(u64::MAX)) as u64
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::DEFAULT
    }
}

/// What GCRA decided for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Admitted.
    Allow {
        /// The key's new TAT (ns since the Unix epoch), to store.
        new_tat: i128,
        /// How many more single requests would be admitted right now.
        remaining: u32,
        /// Time until the key is rested again (its whole burst available):
        /// `new_tat − now`.
        reset: Duration,
    },
    /// Refused; nothing is to be stored.
    Deny {
        /// The exact time until one more request (of this cost) would be admitted:
        /// `TAT − τ − now` for a single request.
        retry_after: Duration,
        /// Time until the key is rested again: `TAT − now`.
        reset: Duration,
    },
}

impl Decision {
    /// Whether the request was admitted.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// GCRA for a request of `cost` units (1 for one message) arriving at `now_nanos`,
/// given the key's stored TAT (`None` for a key never seen, i.e. rested).
///
/// With `T` and `τ` as in [`Policy`] and `TAT' = max(TAT, now)`:
/// - admitted iff `TAT' + cost·T − now ≤ τ + T` (for `cost = 1` exactly the
///   reference's `now ≥ TAT − τ`); the new TAT is `TAT' + cost·T`;
/// - `remaining = ⌊(τ + T − (new_tat − now)) / T⌋`;
/// - refused otherwise, with `retry_after = TAT' + cost·T − (τ + T) − now` (for
///   `cost = 1`, `TAT − τ − now`: the moment the reference says to retry).
///
/// A `cost` above `burst` can never be admitted: it is refused with `retry_after`
/// the time until the key is rested. A `cost` of 0 is a probe: admitted (with the
/// TAT unchanged) unless the key is over its budget, e.g. after a lower burst was
/// set.
pub fn gcra(policy: &Policy, tat_nanos: Option<i128>, now_nanos: i128, cost: u32) -> Decision {
    let t = policy.emission_interval_nanos();
    let burst = i128::from(policy.burst.max(1));
    // τ + T: how far ahead of now the TAT may run.
    let capacity = t * burst;
    let tat = tat_nanos.unwrap_or(now_nanos).max(now_nanos);
    let reset = nanos_to_duration(tat - now_nanos);
    if i128::from(cost) > burst {
        return Decision::Deny {
            retry_after: reset,
            reset,
        };
    }
    let new_tat = tat + t * i128::from(cost);
    let ahead = new_tat - now_nanos;
    if ahead <= capacity {
        Decision::Allow {
            new_tat,
            remaining: ((capacity - ahead) / t).clamp(0, i128::from(u32::MAX)) as u32,
            reset: nanos_to_duration(ahead),
        }
    } else {
        Decision::Deny {
            retry_after: nanos_to_duration(ahead - capacity),
            reset,
        }
    }
}

/// The response fields for a decision, names lowercase (see [`RATELIMIT_POLICY`]):
///
/// - `RateLimit-Policy: "default";q=<burst>;w=<window>`, a Structured-Fields List
///   of one String item. `q` is the burst and `w` is [`Policy::window_seconds`],
///   `⌈burst / rps⌉` seconds: a client that sends at most `q` requests in any `w`
///   seconds is always admitted (the GCRA bucket drains `burst` in `burst/rps`
///   seconds), and `q/w ≤ rps`. When `rps > burst` the window is 1 s and `q/w`
///   understates the sustained rate (the fields cannot express a sub-second
///   window); the advertisement stays safe.
/// - `RateLimit: "default";r=<remaining>;t=<seconds>`. When admitted, `r` is the
///   number of further requests admitted right now and `t` the seconds (rounded
///   up) until the key is rested, its whole `q` available again. When refused,
///   `r=0` and `t` equals `Retry-After`, as the draft asks ("the reset keyword
///   value SHOULD reference the same point in time as the Retry-After").
/// - `Retry-After: <seconds>` when refused: `retry_after` rounded up to whole
///   seconds, at least 1 (never earlier than a request could pass).
///
/// Example (the default policy, the first request on a rested key, then a refusal):
/// `RateLimit-Policy: "default";q=40;w=2`, `RateLimit: "default";r=39;t=1`; and
/// `RateLimit: "default";r=0;t=1`, `Retry-After: 1`.
pub fn headers(policy: &Policy, d: &Decision) -> Vec<(&'static str, String)> {
    let mut out = vec![(
        RATELIMIT_POLICY,
        format!(
            "\"{POLICY_NAME}\";q={};w={}",
            policy.burst,
            policy.window_seconds()
        ),
    )];
    match d {
        Decision::Allow {
            remaining, reset, ..
        } => out.push((
            RATELIMIT,
            format!("\"{POLICY_NAME}\";r={remaining};t={}", ceil_seconds(*reset)),
        )),
        Decision::Deny { retry_after, .. } => {
            let secs = ceil_seconds(*retry_after).max(1);
            out.push((RATELIMIT, format!("\"{POLICY_NAME}\";r=0;t={secs}")));
            out.push((RETRY_AFTER, secs.to_string()));
        }
    }
    out
}

/// The wall clock as nanoseconds since the Unix epoch (what [`SharedLimiter::admit`]
/// expects from production callers).
pub fn unix_nanos_now() -> i128 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// A rate limiter whose state lives in the event log's key-value store (bucket
/// [`SharedLimiter::BUCKET`]), shared by every instance on that log and kept across
/// restarts.
///
/// Each key's value is its TAT as decimal text (ns since the Unix epoch). An
/// admission is a compare-and-set on the revision this instance last saw: one
/// round trip while it is the only writer; when another instance wrote meanwhile
/// the CAS fails, the limiter re-reads and decides again. A refusal writes nothing
/// and, when decided from the cached state, costs no round trip at all: stored
/// TATs only grow, so a refusal from a stale cache is still a refusal (its
/// `retry_after` may then be short; the next attempt re-reads and corrects it).
///
/// Within one instance the admissions of one key take turns (an async lock per
/// key, held for at most one round trip per try), so concurrent requests of a
/// burst do not make this instance lose CAS rounds to itself; only other
/// instances compete.
pub struct SharedLimiter {
    log: Arc<dyn EventLog>,
    bucket: &'static str,
    /// Per key: the last (revision, TAT) this instance read or wrote, behind the
    /// lock its admissions take turns on.
    cache: Mutex<HashMap<String, Slot>>,
}

type Slot = Arc<tokio::sync::Mutex<Option<(u64, i128)>>>;

/// Keys cached before idle ones are dropped (they are read again on next use).
const CACHE_MAX: usize = 100_000;

impl SharedLimiter {
    /// The key-value bucket holding the TATs.
    pub const BUCKET: &'static str = "ratelimit";

    /// How many compare-and-set rounds one admission may lose to other instances
    /// before it fails.
    pub const MAX_TRIES: usize = 16;

    /// A limiter over the log's `ratelimit` bucket.
    pub fn new(log: Arc<dyn EventLog>) -> Self {
        SharedLimiter {
            log,
            bucket: Self::BUCKET,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Decides one request for `key` at `now_nanos` (ns since the Unix epoch, see
    /// [`unix_nanos_now`]) and, when admitted, records the new TAT durably before
    /// returning.
    ///
    /// Fails closed: a log error, or [`Self::MAX_TRIES`] compare-and-set rounds
    /// lost to other writers, is an `Err` (answer 503), never an admission.
    pub async fn admit(
        &self,
        key: &str,
        policy: &Policy,
        now_nanos: i128,
    ) -> Result<Decision, LogError> {
        self.admit_n(key, policy, now_nanos, 1).await
    }

    /// [`Self::admit`] for a request of `cost` units (see [`gcra`]).
    pub async fn admit_n(
        &self,
        key: &str,
        policy: &Policy,
        now_nanos: i128,
        cost: u32,
    ) -> Result<Decision, LogError> {
        let slot = self.slot(key);
        let mut cached = slot.lock().await;
        // (revision, TAT): revision 0 = the key is absent; None = read it.
        let mut known: Option<(u64, Option<i128>)> = cached.map(|(rev, tat)| (rev, Some(tat)));
        for _ in 0..Self::MAX_TRIES {
            let (revision, tat) = match known {
                Some(k) => k,
                None => {
                    let (rev, tat) = self.read(key).await?;
                    *cached = tat.map(|t| (rev, t));
                    (rev, tat)
                }
            };
            let decision = gcra(policy, tat, now_nanos, cost);
            let Decision::Allow { new_tat, .. } = decision else {
                return Ok(decision);
            };
            if tat == Some(new_tat) {
                // A zero-cost probe: nothing to record.
                return Ok(decision);
            }
            let value = Bytes::from(new_tat.to_string());
            match self.log.kv_cas(self.bucket, key, value, revision).await {
                Ok(Some(new_revision)) => {
                    *cached = Some((new_revision, new_tat));
                    return Ok(decision);
                }
                // Another instance won: decide again on what it wrote.
                Ok(None) => known = None,
                Err(e) => {
                    // The write may have landed: forget what we knew.
                    *cached = None;
                    return Err(e);
                }
            }
        }
        Err(LogError(anyhow::anyhow!(
            "rate limit state of {key:?} is contended: lost {} compare-and-set rounds",
            Self::MAX_TRIES
        )))
    }

    /// The key's slot, created on first use.
    fn slot(&self, key: &str) -> Slot {
        let mut cache = self.cache.lock().expect("rate limit cache");
        if let Some(slot) = cache.get(key) {
            return slot.clone();
        }
        if cache.len() >= CACHE_MAX {
            // Keep the slots in use (held or awaited), drop the idle ones.
            cache.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        cache.entry(key.to_string()).or_default().clone()
    }

    /// Reads the stored (revision, TAT) of a key: (0, None) when absent.
    async fn read(&self, key: &str) -> Result<(u64, Option<i128>), LogError> {
        match self.log.kv_get(self.bucket, key).await? {
            None => Ok((0, None)),
            Some(entry) => {
                let tat = decode_tat(&entry.value).ok_or_else(|| {
                    LogError(anyhow::anyhow!(
                        "rate limit state of {key:?} is not a timestamp: {:?}",
                        String::from_utf8_lossy(&entry.value)
                    ))
                })?;
                Ok((entry.revision, Some(tat)))
            }
        }
    }
}

fn decode_tat(value: &[u8]) -> Option<i128> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

fn ceil_div(a: i128, b: i128) -> i128 {
    // b > 0
    if a <= 0 {
        -((-a) / b)
    } else {
        (a + b - 1) / b
    }
}

fn nanos_to_duration(nanos: i128) -> Duration {
    Duration::from_nanos(nanos.clamp(0, i128::from(u64::MAX)) as u64)
}

/// Whole seconds, rounded up.
fn ceil_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i128 = NANOS_PER_SEC;
    const MS: i128 = 1_000_000;

    fn policy(rps: f64, burst: u32) -> Policy {
        let p = Policy {
            requests_per_second: rps,
            burst,
        };
        p.validate().unwrap();
        p
    }

    /// Applies one request to a TAT, like the shared limiter does.
    fn step(p: &Policy, tat: &mut Option<i128>, now: i128) -> Decision {
        let d = gcra(p, *tat, now, 1);
        if let Decision::Allow { new_tat, .. } = d {
            *tat = Some(new_tat);
        }
        d
    }

    #[test]
    fn ratelimit_burst_then_denied_with_exact_retry_after() {
        let p = Policy::DEFAULT;
        let t0 = 1_767_225_600 * SEC;
        let mut tat = None;
        for i in 0..p.burst {
            match step(&p, &mut tat, t0) {
                Decision::Allow {
                    remaining, reset, ..
                } => {
                    assert_eq!(remaining, p.burst - 1 - i);
                    assert_eq!(reset, Duration::from_millis(50 * (u64::from(i) + 1)));
                }
                d => panic!("request {i} of the burst refused: {d:?}"),
            }
        }
        assert_eq!(
            step(&p, &mut tat, t0),
            Decision::Deny {
                retry_after: Duration::from_millis(50),
                reset: Duration::from_secs(2),
            }
        );
        // 1 ns early: still refused, with 1 ns to go; exactly on time: admitted.
        assert_eq!(
            step(&p, &mut tat, t0 + 50 * MS - 1),
            Decision::Deny {
                retry_after: Duration::from_nanos(1),
                reset: Duration::from_nanos(2_000_000_000 - 50_000_000 + 1),
            }
        );
        assert!(matches!(
            step(&p, &mut tat, t0 + 50 * MS),
            Decision::Allow { remaining: 0, .. }
        ));
        // The reference's retry moment: TAT − τ.
        let tau = p.tolerance_nanos();
        assert_eq!(tau, 39 * 50 * MS);
        match step(&p, &mut tat, t0 + 50 * MS) {
            Decision::Deny { retry_after, .. } => {
                assert_eq!(
                    retry_after.as_nanos() as i128,
                    tat.unwrap() - tau - (t0 + 50 * MS)
                )
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn ratelimit_steady_rate_is_admitted() {
        // Burst 1 (τ = 0): exactly one per T, forever; a hair faster is refused.
        let p = policy(3.0, 1);
        let t = p.emission_interval_nanos();
        assert_eq!(t, 333_333_334);
        let mut tat = None;
        for i in 0..10_000 {
            assert!(step(&p, &mut tat, i * t).is_allowed(), "request {i}");
        }
        assert!(!step(&p, &mut tat, 10_000 * t - 1).is_allowed());
        assert!(step(&p, &mut tat, 10_000 * t).is_allowed());

        // A larger burst at its steady rate never runs out.
        let p = Policy::DEFAULT;
        let mut tat = None;
        for i in 0..10_000 {
            match step(&p, &mut tat, i * 50 * MS) {
                Decision::Allow { remaining, .. } => assert_eq!(remaining, p.burst - 1),
                d => panic!("request {i}: {d:?}"),
            }
        }
    }

    #[test]
    fn ratelimit_capacity_returns_after_waiting() {
        let p = policy(10.0, 5);
        let mut tat = None;
        for _ in 0..5 {
            assert!(step(&p, &mut tat, 0).is_allowed());
        }
        assert!(!step(&p, &mut tat, 0).is_allowed());
        // 250 ms later two intervals have passed: two more, then refused.
        assert!(step(&p, &mut tat, 250 * MS).is_allowed());
        assert!(step(&p, &mut tat, 250 * MS).is_allowed());
        assert_eq!(
            step(&p, &mut tat, 250 * MS),
            Decision::Deny {
                retry_after: Duration::from_millis(50),
                reset: Duration::from_millis(700 - 250),
            }
        );
        // Rested after burst × T since the last admit: the whole burst again.
        let rested = tat.unwrap();
        match gcra(&p, tat, rested, 1) {
            Decision::Allow { remaining, .. } => assert_eq!(remaining, 4),
            d => panic!("{d:?}"),
        }
        let mut tat2 = tat;
        for _ in 0..5 {
            assert!(step(&p, &mut tat2, rested + SEC).is_allowed());
        }
        assert!(!step(&p, &mut tat2, rested + SEC).is_allowed());
        // A TAT long in the past counts as rested, not as credit.
        let mut old = Some(-100 * SEC);
        for _ in 0..5 {
            assert!(step(&p, &mut old, 0).is_allowed());
        }
        assert!(!step(&p, &mut old, 0).is_allowed());
    }

    #[test]
    fn ratelimit_costs() {
        let p = policy(10.0, 5);
        match gcra(&p, None, 0, 5) {
            Decision::Allow {
                new_tat,
                remaining,
                reset,
            } => {
                assert_eq!((new_tat, remaining), (500 * MS, 0));
                assert_eq!(reset, Duration::from_millis(500));
            }
            d => panic!("{d:?}"),
        }
        // 4 units after 2 were spent at t=0: 100 ms short.
        assert_eq!(
            gcra(&p, Some(200 * MS), 0, 4),
            Decision::Deny {
                retry_after: Duration::from_millis(100),
                reset: Duration::from_millis(200),
            }
        );
        // More than the burst: never; told to come back when rested.
        assert_eq!(
            gcra(&p, Some(200 * MS), 0, 6),
            Decision::Deny {
                retry_after: Duration::from_millis(200),
                reset: Duration::from_millis(200),
            }
        );
        // Cost 0 probes without moving the TAT.
        match gcra(&p, Some(200 * MS), 0, 0) {
            Decision::Allow {
                new_tat, remaining, ..
            } => assert_eq!((new_tat, remaining), (200 * MS, 3)),
            d => panic!("{d:?}"),
        }
    }

    /// xorshift64*: a seeded generator, so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn ratelimit_never_admits_more_than_burst_plus_rate_times_window() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..60 {
            let rps = [0.5, 1.0, 3.0, 7.0, 20.0, 250.0, 1000.0][round % 7];
            let burst = 1 + rng.below(50) as u32;
            let p = policy(rps, burst);
            // Arrivals: bursts of near-simultaneous requests and quiet gaps.
            let mut now: i128 = 1_700_000_000 * SEC;
            let mut tat = None;
            let mut admitted: Vec<i128> = Vec::new();
            for _ in 0..3000 {
                let gap = match rng.below(4) {
                    0 => 0,
                    1 => rng.below(1000) as i128,
                    2 => rng.below(p.emission_interval_nanos() as u64) as i128,
                    _ => {
                        rng.below(3 * p.emission_interval_nanos() as u64 * u64::from(burst)) as i128
                    }
                };
                now += gap;
                if step(&p, &mut tat, now).is_allowed() {
                    admitted.push(now);
                }
            }
            assert!(admitted.len() > 100, "round {round}: too few admitted");
            // Every window [a_i, a_j] between two admitted requests (the tightest
            // windows there are).
            for i in 0..admitted.len() {
                for j in i..admitted.len().min(i + 4 * burst as usize + 64) {
                    let w = (admitted[j] - admitted[i]) as f64 / 1e9;
                    let n = (j - i + 1) as f64;
                    assert!(
                        n <= f64::from(burst) + rps * w + 1e-9,
                        "round {round} (rps {rps}, burst {burst}): {n} admitted in {w} s"
                    );
                }
            }
        }
    }

    #[test]
    fn ratelimit_header_strings_are_exact() {
        let p = Policy::DEFAULT;
        let first = gcra(&p, None, 0, 1);
        assert_eq!(
            headers(&p, &first),
            vec![
                ("ratelimit-policy", "\"default\";q=40;w=2".to_string()),
                ("ratelimit", "\"default\";r=39;t=1".to_string()),
            ]
        );
        let spent = gcra(&p, Some(2 * SEC), 0, 1);
        assert_eq!(
            headers(&p, &spent),
            vec![
                ("ratelimit-policy", "\"default\";q=40;w=2".to_string()),
                ("ratelimit", "\"default\";r=0;t=1".to_string()),
                ("retry-after", "1".to_string()),
            ]
        );
        // A slow policy: T = 2 s, window 3 × 2 s; the refusal is 2 s away.
        let slow = policy(0.5, 3);
        let d = gcra(&slow, Some(6 * SEC), 0, 1);
        assert_eq!(
            d,
            Decision::Deny {
                retry_after: Duration::from_secs(2),
                reset: Duration::from_secs(6)
            }
        );
        assert_eq!(
            headers(&slow, &d),
            vec![
                ("ratelimit-policy", "\"default\";q=3;w=6".to_string()),
                ("ratelimit", "\"default\";r=0;t=2".to_string()),
                ("retry-after", "2".to_string()),
            ]
        );
        // Rounded up, never below 1 s: 1 ns to go is "1"; 2.000000001 s is "3".
        let d = Decision::Deny {
            retry_after: Duration::from_nanos(1),
            reset: Duration::from_nanos(1),
        };
        assert_eq!(headers(&slow, &d)[2], ("retry-after", "1".to_string()));
        let d = Decision::Deny {
            retry_after: Duration::new(2, 1),
            reset: Duration::new(4, 0),
        };
        assert_eq!(headers(&slow, &d)[1].1, "\"default\";r=0;t=3");
        assert_eq!(headers(&slow, &d)[2].1, "3");
        // A fast policy: rps above burst gives a 1 s window.
        let fast = policy(100.0, 10);
        let d = gcra(&fast, None, 0, 1);
        assert_eq!(
            headers(&fast, &d),
            vec![
                ("ratelimit-policy", "\"default\";q=10;w=1".to_string()),
                ("ratelimit", "\"default\";r=9;t=1".to_string()),
            ]
        );
        // Fractional window rounds up: 10 / 3 per s = 3.33 s.
        assert_eq!(policy(3.0, 10).window_seconds(), 4);
    }

    #[test]
    fn ratelimit_policy_bounds() {
        Policy::DEFAULT.validate().unwrap();
        assert_eq!(Policy::default(), DEFAULT);
        for (rps, burst) in [(100_000.0, 100_000), (0.001, 1), (1.0, 1)] {
            policy(rps, burst);
        }
        for (rps, burst, msg) in [
            (0.0, 1, "requests_per_second"),
            (-1.0, 1, "requests_per_second"),
            (f64::NAN, 1, "requests_per_second"),
            (f64::INFINITY, 1, "requests_per_second"),
            (100_000.5, 1, "requests_per_second"),
            (1.0, 0, "burst"),
            (1.0, 100_001, "burst"),
        ] {
            let err = Policy {
                requests_per_second: rps,
                burst,
            }
            .validate()
            .unwrap_err();
            assert!(err.starts_with(msg), "{rps}/{burst}: {err}");
        }
        // Tiny rates stay finite.
        let tiny = Policy {
            requests_per_second: 1e-300,
            burst: 100_000,
        };
        assert_eq!(tiny.emission_interval_nanos(), MAX_EMISSION_INTERVAL);
        assert!(gcra(&tiny, None, 0, 100_000).is_allowed());
        assert!(!gcra(&tiny, Some(MAX_EMISSION_INTERVAL), 0, 100_000).is_allowed());
        assert_eq!(decode_tat(b"-12"), Some(-12));
        assert_eq!(decode_tat(b"x"), None);
    }
}
