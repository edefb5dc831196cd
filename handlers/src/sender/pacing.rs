//! Pacing toward Meta, in the one process that runs the sender (the workers lease
//! makes it one): each phone number to its throughput, each (number, recipient) pair
//! to Meta's pair limit. Each is a GCRA bucket kept in memory; a send waits for its
//! turn without holding up any other number's or recipient's sends.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// One GCRA bucket: `interval` between sends on average, `burst` at once.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tat: Instant,
}

/// Buckets by key, all with one rate.
pub struct Pacer {
    interval: Duration,
    tolerance: Duration,
    buckets: Mutex<Buckets>,
}

struct Buckets {
    map: HashMap<String, Bucket>,
    swept: Instant,
}

/// Above this many buckets, those back to full are dropped (at most once a second).
const SWEEP_ABOVE: usize = 10_000;

impl Pacer {
    /// `per_second` sends a second on average, `burst` at once.
    pub fn new(per_second: f64, burst: u32) -> Pacer {
        let interval = Duration::from_secs_f64(1.0 / per_second);
        Pacer {
            interval,
            tolerance: interval * burst.saturating_sub(1),
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    /// Reserves the next slot of `key` and returns how long to wait for it (zero when
    /// it is free now). The slot is taken: the caller must send after the wait.
    pub fn reserve(&self, key: &str) -> Duration {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("pacer lock");
        if buckets.map.len() > SWEEP_ABOVE
            && now.duration_since(buckets.swept) > Duration::from_secs(1)
        {
            // A bucket whose TAT has passed is as good as a new one.
            buckets.map.retain(|_, b| b.tat > now);
            buckets.swept = now;
        }
        let bucket = buckets
            .map
            .entry(key.to_owned())
            .or_insert(Bucket { tat: now });
        let tat = bucket.tat.max(now);
        // GCRA: admitted at `tat - tolerance`; the slot after it is `tat + interval`.
        let allowed_at = tat.checked_sub(self.tolerance).unwrap_or(now).max(now);
        bucket.tat = tat + self.interval;
        allowed_at.saturating_duration_since(now)
    }

    /// Pushes a key's next slot back by `by` (Meta said slow down for it).
    pub fn penalise(&self, key: &str, by: Duration) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("pacer lock");
        let b = buckets
            .map
            .entry(key.to_owned())
            .or_insert(Bucket { tat: now });
        b.tat = b.tat.max(now) + by;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let p = Pacer::new(10.0, 3);
        let waits: Vec<Duration> = (0..5).map(|_| p.reserve("n")).collect();
        assert_eq!(&waits[..3], &[Duration::ZERO; 3]);
        assert!(
            waits[3] > Duration::from_millis(90) && waits[3] <= Duration::from_millis(100),
            "{waits:?}"
        );
        assert!(
            waits[4] > Duration::from_millis(190) && waits[4] <= Duration::from_millis(200),
            "{waits:?}"
        );
        // Another key is not held up.
        assert_eq!(p.reserve("other"), Duration::ZERO);
    }

    #[test]
    fn a_penalty_delays_only_its_key() {
        let p = Pacer::new(1000.0, 1);
        p.penalise("n", Duration::from_secs(2));
        assert!(p.reserve("n") > Duration::from_millis(1900));
        assert_eq!(p.reserve("m"), Duration::ZERO);
    }
}
