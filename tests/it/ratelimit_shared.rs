//! The shared GCRA limiter (`handlers/src/ratelimit.rs`) over a real event log: two
//! instances on one JetStream enforce one budget together, a restarted instance
//! continues from the stored TAT, and the same on the embedded log. Also: one
//! round trip per admission while an instance is the only writer, none per refusal.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use wabridge_events::{
    backends::{
        embedded::{EmbeddedConfig, EmbeddedLog},
        jetstream::{JetStreamConfig, JetStreamLog},
    },
    log::KvEntry,
    EventLog, LogError, Namespace,
};
use wabridge_handlers::ratelimit::{unix_nanos_now, Decision, Policy, SharedLimiter};

use crate::support::{unique_ns, NatsServer};

/// 50 per second, bursts of 20: over 2 s at most 20 + 100 admitted.
const POLICY: Policy = Policy {
    requests_per_second: 50.0,
    burst: 20,
};
const KEY: &str = "ws:acme";
const HAMMER_FOR: Duration = Duration::from_secs(2);
/// Concurrent callers per limiter.
const TASKS: usize = 6;

fn jetstream_config(url: &str, ns: Namespace) -> JetStreamConfig {
    let mut cfg = JetStreamConfig::new(url);
    cfg.namespace = ns;
    cfg
}

async fn open_embedded(path: &std::path::Path, ns: Namespace) -> EmbeddedLog {
    let mut cfg = EmbeddedConfig::new(path);
    cfg.namespace = ns;
    EmbeddedLog::open(cfg)
        .await
        .expect("opening the embedded log")
}

struct Outcome {
    admitted: usize,
    denied: usize,
    errors: usize,
    elapsed: Duration,
}

/// `TASKS` callers per limiter ask for `KEY` about once a millisecond each, on the
/// wall clock, for `HAMMER_FOR`.
async fn hammer(limiters: &[Arc<SharedLimiter>]) -> Outcome {
    let admitted = Arc::new(AtomicUsize::new(0));
    let denied = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let started = Instant::now();
    let deadline = started + HAMMER_FOR;
    let mut tasks = Vec::new();
    for limiter in limiters {
        for _ in 0..TASKS {
            let (limiter, admitted, denied, errors, first_error) = (
                limiter.clone(),
                admitted.clone(),
                denied.clone(),
                errors.clone(),
                first_error.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    match limiter.admit(KEY, &POLICY, unix_nanos_now()).await {
                        Ok(Decision::Allow { .. }) => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Decision::Deny { .. }) => {
                            denied.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first_error.lock().unwrap().get_or_insert(e.to_string());
                        }
                    }
                    // Refusals from the cache complete without awaiting anything:
                    // pause so the callers do not starve the runtime.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("hammer task");
    }
    let out = Outcome {
        admitted: admitted.load(Ordering::Relaxed),
        denied: denied.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    };
    if let Some(e) = first_error.lock().unwrap().as_ref() {
        eprintln!("{} admissions failed (closed), first: {e}", out.errors);
    }
    out
}

/// admitted ≤ burst + rps × elapsed (+1 for rounding), and ≥ 80 % of that.
fn check_bound(what: &str, o: &Outcome) {
    let bound = f64::from(POLICY.burst) + POLICY.requests_per_second * o.elapsed.as_secs_f64();
    eprintln!(
        "{what}: {} admitted, {} denied, {} errors in {:?} (bound {bound:.1})",
        o.admitted, o.denied, o.errors, o.elapsed
    );
    assert!(
        o.admitted as f64 <= bound + 1.0,
        "{what}: {} admitted, more than {bound:.1}",
        o.admitted
    );
    assert!(
        o.admitted as f64 >= 0.8 * bound,
        "{what}: only {} admitted of {bound:.1} ({} errors)",
        o.admitted,
        o.errors
    );
    assert!(o.denied > o.admitted, "{what}: the key was not hammered");
}

/// At one instant `at`, spends what is left of the budget through `limiter`; returns
/// the refusal's `retry_after`.
async fn spend_rest(limiter: &SharedLimiter, at: i128) -> Duration {
    for _ in 0..=POLICY.burst {
        match limiter.admit(KEY, &POLICY, at).await.unwrap() {
            Decision::Allow { .. } => {}
            Decision::Deny { retry_after, .. } => return retry_after,
        }
    }
    panic!("more than burst admitted at one instant");
}

/// A fresh limiter (another process, or this one restarted) decides from the
/// stored TAT: refused at `at` with the same `retry_after`, admitted exactly then.
async fn fresh_limiter_continues(limiter: &SharedLimiter, at: i128, retry_after: Duration) {
    match limiter.admit(KEY, &POLICY, at).await.unwrap() {
        Decision::Deny {
            retry_after: r,
            reset,
        } => {
            assert_eq!(r, retry_after, "the fresh limiter sees another TAT");
            assert!(reset >= Duration::from_millis(20 * 19), "reset {reset:?}");
        }
        d => panic!("a fresh limiter admitted on a spent budget: {d:?}"),
    }
    let later = at + retry_after.as_nanos() as i128;
    assert!(
        !limiter
            .admit(KEY, &POLICY, later - 1)
            .await
            .unwrap()
            .is_allowed(),
        "admitted 1 ns early"
    );
    assert!(limiter
        .admit(KEY, &POLICY, later)
        .await
        .unwrap()
        .is_allowed());
    assert!(!limiter
        .admit(KEY, &POLICY, later)
        .await
        .unwrap()
        .is_allowed());
}

/// Two instances (two connections, one namespace) hammer one key: together they
/// stay within one budget and use most of it; a third, fresh instance continues
/// from the stored TAT.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_jetstream_instances_share_one_budget() {
    let server = NatsServer::shared().await;
    let ns = unique_ns();
    let connect = || {
        let cfg = jetstream_config(&server.url(), ns.clone());
        async move {
            let log: Arc<dyn EventLog> =
                Arc::new(JetStreamLog::connect(cfg).await.expect("connecting"));
            let counted = Arc::new(Counting::new(log));
            (Arc::new(SharedLimiter::new(counted.clone())), counted)
        }
    };
    let (a, a_calls) = connect().await;
    let (b, b_calls) = connect().await;
    let outcome = hammer(&[a.clone(), b.clone()]).await;
    check_bound("two JetStream instances", &outcome);
    let (a_gets, a_cas) = a_calls.calls();
    let (b_gets, b_cas) = b_calls.calls();
    eprintln!("instance a: {a_gets} reads, {a_cas} CAS; instance b: {b_gets} reads, {b_cas} CAS");
    // Both instances admitted, and they did race: some CAS rounds were lost.
    assert!(a_gets > 1 && b_gets > 1, "no instance ever re-read");
    assert!(
        a_cas + b_cas > outcome.admitted + outcome.errors,
        "no CAS round was lost"
    );

    let at = unix_nanos_now();
    let retry_after = spend_rest(&b, at).await;
    assert!(retry_after <= Duration::from_millis(20), "{retry_after:?}");
    // A refusal by the other instance at the same instant agrees.
    match a.admit(KEY, &POLICY, at).await.unwrap() {
        Decision::Deny { retry_after: r, .. } => assert_eq!(r, retry_after),
        d => panic!("instance a admitted on a spent budget: {d:?}"),
    }
    drop((a, b));
    let (fresh, _) = connect().await;
    fresh_limiter_continues(&fresh, at, retry_after).await;
}

/// The same with one instance on the embedded log, reopened for the fresh limiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_instance_keeps_its_budget_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let ns = unique_ns();
    let log: Arc<dyn EventLog> = Arc::new(open_embedded(&path, ns.clone()).await);
    let limiter = Arc::new(SharedLimiter::new(log));
    let outcome = hammer(std::slice::from_ref(&limiter)).await;
    check_bound("one embedded instance", &outcome);
    assert_eq!(outcome.errors, 0, "a single writer never loses a CAS");

    let at = unix_nanos_now();
    let retry_after = spend_rest(&limiter, at).await;
    drop(limiter);
    let log: Arc<dyn EventLog> = Arc::new(open_embedded(&path, ns).await);
    let fresh = SharedLimiter::new(log);
    fresh_limiter_continues(&fresh, at, retry_after).await;
}

/// A sole writer pays one round trip per admission (the CAS on its cached
/// revision) and none per refusal; the first use of a key reads it once. When
/// another instance wrote meanwhile, the CAS fails, the limiter re-reads, and
/// decides on the other's TAT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sole_writer_pays_one_round_trip_per_admission() {
    let dir = tempfile::tempdir().unwrap();
    let inner: Arc<dyn EventLog> =
        Arc::new(open_embedded(&dir.path().join("events.db"), unique_ns()).await);
    let counted = Arc::new(Counting::new(inner.clone()));
    let limiter = SharedLimiter::new(counted.clone());
    let t0: i128 = 1_800_000_000_000_000_000;
    let t = POLICY.emission_interval_nanos();

    assert!(limiter.admit(KEY, &POLICY, t0).await.unwrap().is_allowed());
    assert_eq!(counted.calls(), (1, 1), "first use: one read, one CAS");
    for i in 1..POLICY.burst {
        assert!(limiter.admit(KEY, &POLICY, t0).await.unwrap().is_allowed());
        assert_eq!(counted.calls(), (1, 1 + i as usize));
    }
    for _ in 0..50 {
        assert!(!limiter.admit(KEY, &POLICY, t0).await.unwrap().is_allowed());
    }
    assert_eq!(counted.calls(), (1, 20), "refusals cost no round trip");
    // Steady rate: one CAS each.
    for i in 1..=10 {
        assert!(limiter
            .admit(KEY, &POLICY, t0 + i * t)
            .await
            .unwrap()
            .is_allowed());
    }
    assert_eq!(counted.calls(), (1, 30));

    // Another instance (on the same log) takes the next slot.
    let other = SharedLimiter::new(inner);
    assert!(other
        .admit(KEY, &POLICY, t0 + 11 * t)
        .await
        .unwrap()
        .is_allowed());
    // Ours, at the same instant, believes there is room: its CAS fails, it re-reads
    // and refuses on the other's TAT (the refusal itself writes nothing).
    match limiter.admit(KEY, &POLICY, t0 + 11 * t).await.unwrap() {
        Decision::Deny { retry_after, .. } => {
            assert_eq!(retry_after, Duration::from_nanos(t as u64))
        }
        d => panic!("admitted over the other instance's write: {d:?}"),
    }
    assert_eq!(counted.calls(), (2, 31));
    assert!(limiter
        .admit(KEY, &POLICY, t0 + 12 * t)
        .await
        .unwrap()
        .is_allowed());
    assert_eq!(counted.calls(), (2, 32), "the re-read refreshed the cache");
}

/// An event log that counts key-value calls (reads, CAS) and delegates everything.
struct Counting {
    inner: Arc<dyn EventLog>,
    gets: AtomicUsize,
    cas: AtomicUsize,
}

impl Counting {
    fn new(inner: Arc<dyn EventLog>) -> Self {
        Counting {
            inner,
            gets: AtomicUsize::new(0),
            cas: AtomicUsize::new(0),
        }
    }

    fn calls(&self) -> (usize, usize) {
        (
            self.gets.load(Ordering::SeqCst),
            self.cas.load(Ordering::SeqCst),
        )
    }
}

#[async_trait::async_trait]
impl wabridge_events::WrappedLog for Counting {
    fn inner(&self) -> &dyn EventLog {
        &*self.inner
    }

    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>, LogError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.kv_get(bucket, key).await
    }

    async fn kv_cas(
        &self,
        bucket: &str,
        key: &str,
        value: Bytes,
        expected_revision: u64,
    ) -> Result<Option<u64>, LogError> {
        self.cas.fetch_add(1, Ordering::SeqCst);
        self.inner
            .kv_cas(bucket, key, value, expected_revision)
            .await
    }
}
