//! One conformance suite for the [`EventLog`] contract (`events/src/log.rs`), run
//! against both backends: the embedded SQLite log and JetStream.
//!
//! Each check is a generic async function over `&dyn EventLog` on a fresh log (a new
//! file, or a new namespace on the shared NATS server); the `embedded` and
//! `jetstream` modules run every check against their backend. Backend-specific tests
//! (another process appending to the same SQLite file, durability under SIGKILL)
//! sit in those modules too.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::{future::join_all, StreamExt};
use wabridge_events::{
    backends::{
        embedded::{EmbeddedConfig, EmbeddedLog},
        jetstream::{JetStreamConfig, JetStreamLog},
    },
    types::{new_event, PhoneNumberClaimed},
    Actor, AppendError, Appended, DomainEvent, Envelope, EventLog, EventStream, Namespace,
    NewEvent, ReadFrom, Slug, StoredEvent, StreamKind, Timestamp,
};

use crate::support::{unique_ns, NatsCluster, NatsServer};

// ------------------------------------------------------------------ fixtures

/// A fresh log under test, plus whatever must live as long as it.
struct Fixture {
    log: Arc<dyn EventLog>,
    _dir: Option<tempfile::TempDir>,
}

/// Opens the embedded log `<dir>/events.db` with this namespace and poll interval.
async fn open_embedded(dir: &std::path::Path, ns: Namespace, poll: Duration) -> EmbeddedLog {
    let mut cfg = EmbeddedConfig::new(dir.join("events.db"));
    cfg.namespace = ns;
    cfg.poll_interval = poll;
    EmbeddedLog::open(cfg)
        .await
        .expect("opening the embedded log")
}

/// An embedded log. Its cross-process poll is slow (5 s) on purpose: a follower that
/// sees an append within a second was woken, not polled.
async fn embedded_fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = open_embedded(dir.path(), unique_ns(), Duration::from_secs(5)).await;
    Fixture {
        log: Arc::new(log),
        _dir: Some(dir),
    }
}

fn jetstream_config(url: &str, ns: Namespace) -> JetStreamConfig {
    let mut cfg = JetStreamConfig::new(url);
    cfg.namespace = ns;
    cfg
}

/// A JetStream log on the shared server, in a namespace of its own.
async fn jetstream_fixture() -> Fixture {
    let server = NatsServer::shared().await;
    let log = JetStreamLog::connect(jetstream_config(&server.url(), unique_ns()))
        .await
        .expect("connecting to JetStream");
    Fixture {
        log: Arc::new(log),
        _dir: None,
    }
}

/// Declares one `#[tokio::test]` per check, against the given fixture.
macro_rules! conformance_tests {
    ($fixture:path; $($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let fx = $fixture().await;
            super::$check(&*fx.log).await;
        }
    )*};
}

mod embedded {
    use super::*;

    conformance_tests!(super::embedded_fixture;
        ordering, dedup, dedup_before_concurrency, concurrency, covering, follow_and_resume, replay,
        oversized_payload, max_payload_accepted, foreign_subject, many_in_flight,
        kv_cas_semantics, kv_concurrent_increments, odd_bytes_in_one_page);

    /// The envelope is stored in its one-header form; a file written before that,
    /// with the headers as a JSON object, reads back the same beside newer events.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_with_the_older_json_headers_still_read() {
        use wabridge_events::backends::headers;
        let dir = tempfile::tempdir().unwrap();
        let ns = unique_ns();
        let ws = Slug::parse("acme").unwrap();
        let s = ns.domain_subject(Some(&ws), "hdrs", "a");
        let mut envelope = Envelope::new(
            "conformance.test",
            2,
            Some(ws),
            Actor::system("older writer"),
        );
        envelope.causation_id = Some(uuid::Uuid::now_v7());
        envelope.source_ip = Some("203.0.113.9".into());
        drop(open_embedded(dir.path(), ns.clone(), Duration::from_millis(100)).await);
        // The row as the older version wrote it.
        let pool = sqlx::SqlitePool::connect(&format!(
            "sqlite://{}",
            dir.path().join("events.db").display()
        ))
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO events_domain (seq, subject, headers, payload, recorded_us) VALUES (1, ?, ?, ?, ?)",
        )
        .bind(&s)
        .bind(headers::to_json(&envelope))
        .bind(&b"{\"older\":1}"[..])
        .bind(envelope.recorded_at.unix_micros())
        .execute(&pool)
        .await
        .unwrap();
        let stored: String = sqlx::query_scalar("SELECT headers FROM events_domain WHERE seq = 1")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(stored.starts_with('{'), "{stored}");
        let log = open_embedded(dir.path(), ns.clone(), Duration::from_millis(100)).await;
        let mut newer = ev(&s, "{\"newer\":1}");
        newer.envelope = envelope.clone();
        newer.envelope.id = uuid::Uuid::now_v7();
        assert_eq!(append_ok(&log, newer.clone()).await, 2);
        let page = log
            .read(StreamKind::Domain, ReadFrom::Seq(1), None, 10)
            .await
            .unwrap();
        assert_eq!(seqs(&page), vec![1, 2]);
        assert_eq!(page[0].envelope, envelope);
        let mut read = page[1].envelope.clone();
        read.recorded_at = newer.envelope.recorded_at;
        assert_eq!(read, newer.envelope);
        let stored: String = sqlx::query_scalar("SELECT headers FROM events_domain WHERE seq = 2")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(headers::decode_compact(&stored).unwrap(), page[1].envelope);
    }

    /// Another process (a CLI command) appends to the same file: the first log's
    /// follower sees it through the fallback poll, and both share one sequence.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follow_sees_appends_of_another_process() {
        let dir = tempfile::tempdir().unwrap();
        let ns = unique_ns();
        let a = open_embedded(dir.path(), ns.clone(), Duration::from_millis(100)).await;
        let b = open_embedded(dir.path(), ns.clone(), Duration::from_millis(100)).await;
        let s = ns.domain_subject(None, "conf", "xproc");
        let mut follower = a.follow(StreamKind::Domain, "c1", 1).await.unwrap();
        expect_quiet(&mut follower, Duration::from_millis(200)).await;

        let t0 = Instant::now();
        assert_eq!(append_ok(&b, ev(&s, "from-b-1")).await, 1);
        let got = next_event(&mut follower).await;
        assert_eq!((got.seq, &got.payload[..]), (1, &b"from-b-1"[..]));
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t0.elapsed()
        );

        assert_eq!(append_ok(&a, ev(&s, "from-a-2")).await, 2);
        assert_eq!(append_ok(&b, ev(&s, "from-b-3")).await, 3);
        for (seq, payload) in [(2, "from-a-2"), (3, "from-b-3")] {
            let got = next_event(&mut follower).await;
            assert_eq!((got.seq, &got.payload[..]), (seq, payload.as_bytes()));
        }
        assert_eq!(a.last_seq(StreamKind::Domain).await.unwrap(), 3);
        assert_eq!(b.last_seq(StreamKind::Domain).await.unwrap(), 3);
        expect_quiet(&mut follower, Duration::from_millis(300)).await;
    }

    /// `wabridge debug append-loop` is SIGKILLed mid-run: every append it reported
    /// as acknowledged is in the file, byte-exact.
    ///
    /// Contract of the hidden subcommand: with `WABRIDGE_DATA_DIR=<dir>` and no
    /// `NATS_URL` it opens the embedded log `<dir>/events.db` and appends `--count`
    /// events with payload `payload-<i>` to `wb._.debug.loop` (Domain stream),
    /// printing `acked <seq> <i>` (flushed) after each acknowledgement.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn durable_under_sigkill() {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

        let dir = tempfile::tempdir().unwrap();
        let stderr_path = dir.path().join("stderr.log");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wabridge"))
            .args(["debug", "append-loop", "--count", "10000000"])
            // Only the data dir: no NATS_URL, no DATABASE_URL or WABRIDGE_* from the
            // environment running the tests.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("WABRIDGE_DATA_DIR", dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("spawning wabridge");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();

        let mut acked: Vec<(u64, u64)> = Vec::new();
        let mut line = String::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked.len() < 300 {
            line.clear();
            let n = tokio::time::timeout_at(deadline.into(), stdout.read_line(&mut line))
                .await
                .unwrap_or_else(|_| panic!("fewer than 300 acks in 120 s; stderr:\n{}", stderr()))
                .unwrap();
            assert!(
                n > 0,
                "wabridge exited after {} acks; stderr:\n{}",
                acked.len(),
                stderr()
            );
            acked.push(parse_ack(&line));
        }
        child.start_kill().expect("SIGKILL");
        let status = child.wait().await.unwrap();
        assert!(
            !status.success(),
            "wabridge should have been killed: {status}"
        );
        // Lines already in the pipe were printed after their ack: they count too.
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).await.unwrap();
        for l in rest.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            acked.push(parse_ack(l));
        }
        for w in acked.windows(2) {
            assert!(
                w[0].0 < w[1].0 && w[0].1 < w[1].1,
                "acks out of order: {w:?}"
            );
        }

        let log = EmbeddedLog::open(EmbeddedConfig::new(dir.path().join("events.db")))
            .await
            .expect("reopening the log after SIGKILL");
        let stored: BTreeMap<u64, StoredEvent> = read_all(&log, StreamKind::Domain)
            .await
            .into_iter()
            .map(|e| (e.seq, e))
            .collect();
        for (seq, i) in &acked {
            let e = stored.get(seq).unwrap_or_else(|| {
                panic!(
                    "acked event {seq} (i={i}) lost; {} acked, {} stored",
                    acked.len(),
                    stored.len()
                )
            });
            assert_eq!(e.subject, "wb._.debug.loop", "seq {seq}");
            let data: serde_json::Value = serde_json::from_slice(&e.payload).expect("JSON payload");
            assert_eq!(data, serde_json::json!({ "i": i }), "seq {seq}");
        }
    }

    /// Key-value entries survive closing and reopening the log file, revisions
    /// included.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kv_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let ns = unique_ns();
        let log = open_embedded(dir.path(), ns.clone(), Duration::from_secs(5)).await;
        let rev = kv_write_for_restart(&log).await;
        drop(log);
        let log = open_embedded(dir.path(), ns, Duration::from_secs(5)).await;
        kv_check_after_restart(&log, rev).await;
    }

    fn parse_ack(line: &str) -> (u64, u64) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts[..] {
            ["acked", seq, i] => (seq.parse().expect("seq"), i.parse().expect("i")),
            _ => panic!("unexpected output line {line:?}"),
        }
    }
}

mod jetstream {
    use std::sync::Mutex;

    use super::*;

    conformance_tests!(super::jetstream_fixture;
        ordering, dedup, dedup_before_concurrency, concurrency, covering, follow_and_resume, replay,
        oversized_payload, max_payload_accepted, foreign_subject, many_in_flight,
        kv_cas_semantics, kv_concurrent_increments, odd_bytes_in_one_page);

    /// `NATS_URL` may list several servers, comma-separated (as in
    /// docker-compose.yml); the log connects and works.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connects_with_a_server_list() {
        let url = NatsServer::shared().await.url();
        let ns = unique_ns();
        let log = JetStreamLog::connect(jetstream_config(&format!("{url},{url}"), ns.clone()))
            .await
            .expect("connecting with a comma-separated server list");
        let s = ns.domain_subject(None, "list", "a");
        assert_eq!(append_ok(&log, ev(&s, "listed")).await, 1);
    }

    /// The envelope travels as one header (`Wb-Envelope`); an event written before
    /// that, with one header per field, reads back the same through every path
    /// (a page, a follower, an ephemeral follower), so a log kept from earlier
    /// versions needs no migration.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_with_the_older_separate_headers_still_read() {
        use wabridge_events::backends::headers;
        let url = NatsServer::shared().await.url();
        let ns = unique_ns();
        let log = JetStreamLog::connect(jetstream_config(&url, ns.clone()))
            .await
            .unwrap();
        let s = ns.domain_subject(Some(&Slug::parse("acme").unwrap()), "hdrs", "a");
        let mut envelope = Envelope::new(
            "conformance.test",
            2,
            Some(Slug::parse("acme").unwrap()),
            Actor::system("older writer"),
        );
        envelope.causation_id = Some(uuid::Uuid::now_v7());
        envelope.source_ip = Some("203.0.113.9".into());
        envelope.signature = Some("sha256=ab12".into());
        let client = async_nats::connect(&url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut older = async_nats::HeaderMap::new();
        for (name, value) in headers::encode(&envelope) {
            older.insert(name, value.as_str());
        }
        js.publish_with_headers(s.clone(), older, Bytes::from_static(b"{\"older\":1}"))
            .await
            .unwrap()
            .await
            .unwrap();
        // And one written now, beside it.
        let mut newer = ev(&s, "{\"newer\":1}");
        newer.envelope = envelope.clone();
        newer.envelope.id = uuid::Uuid::now_v7();
        append_ok(&log, newer.clone()).await;

        let page = log
            .read(StreamKind::Domain, ReadFrom::Seq(1), None, 10)
            .await
            .unwrap();
        assert_eq!(seqs(&page), vec![1, 2]);
        let mut follower = log.follow(StreamKind::Domain, "hdrs", 1).await.unwrap();
        let mut ephemeral = log.follow_ephemeral(StreamKind::Domain, 1).await.unwrap();
        let followed = [
            next_event(&mut follower).await,
            next_event(&mut follower).await,
        ];
        let tailed = [
            next_event(&mut ephemeral).await,
            next_event(&mut ephemeral).await,
        ];
        for events in [&page[..], &followed[..], &tailed[..]] {
            assert_eq!(events[0].envelope, envelope, "the older event's envelope");
            assert_eq!(events[0].payload, Bytes::from_static(b"{\"older\":1}"));
            // The log stamps `recorded_at` at the append.
            let mut read = events[1].envelope.clone();
            read.recorded_at = newer.envelope.recorded_at;
            assert_eq!(read, newer.envelope, "the newer event's envelope");
        }

        // What is written now: the envelope in one header, beside the dedup id.
        let raw = js
            .get_stream(ns.stream_name(StreamKind::Domain))
            .await
            .unwrap()
            .get_raw_message(2)
            .await
            .unwrap();
        let names: Vec<String> = raw
            .headers
            .iter()
            .map(|(n, _)| n.to_string())
            .filter(|n| n.starts_with("Wb-"))
            .collect();
        assert_eq!(names, vec![headers::ENVELOPE.to_string()]);
    }

    /// Reads and resubscriptions do not leave consumers behind: more reads than the
    /// server's default limit of consumers per stream (1,000 on nats-server 2.15)
    /// within the consumers' inactivity threshold all succeed, and afterwards the
    /// stream holds no consumer of theirs; a follower that subscribes again and
    /// again leaves one. Found by the soak: the message feed, which reads a
    /// page per request, answered 503 "maximum consumers limit reached" after
    /// about 2,400 pages in a minute.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_and_resubscriptions_leave_no_consumers() {
        let url = NatsServer::shared().await.url();
        let ns = unique_ns();
        let log = Arc::new(
            JetStreamLog::connect(jetstream_config(&url, ns.clone()))
                .await
                .unwrap(),
        );
        let s = ns.domain_subject(None, "reads", "a");
        for i in 0..3 {
            append_ok(&*log, ev(&s, format!("r{i}"))).await;
        }
        let reads: Vec<_> = (0..4)
            .map(|_| {
                let log = log.clone();
                tokio::spawn(async move {
                    for _ in 0..300 {
                        let page = log
                            .read(StreamKind::Domain, ReadFrom::Seq(2), None, 10)
                            .await
                            .expect("a read");
                        assert_eq!(seqs(&page), vec![2, 3]);
                    }
                })
            })
            .collect();
        for r in join_all(reads).await {
            r.unwrap();
        }
        for _ in 0..20 {
            let mut follower = log.follow(StreamKind::Domain, "again", 3).await.unwrap();
            assert_eq!(next_event(&mut follower).await.seq, 3);
        }

        let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
        let mut stream = js
            .get_stream(ns.stream_name(StreamKind::Domain))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = stream.info().await.unwrap().state.consumer_count;
            if left <= 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{left} consumers left on the stream after the reads and 20 subscriptions of one follower"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// In a three-node cluster, the node leading a durable follower's consumer is
    /// SIGKILLed: the follower notices within seconds (a missed idle heartbeat
    /// ends its subscription with an error), subscribes again as the driver does,
    /// and gets the next event. With the client's default heartbeat (15 s, pulls
    /// of 30 s) it stalled for about half a minute; projections then lagged that
    /// long after a leader change.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_durable_follower_resumes_soon_after_its_consumer_leader_dies() {
        let cluster = NatsCluster::start().await;
        let ns = unique_ns();
        let mut cfg = jetstream_config(&cluster.urls(), ns.clone());
        cfg.replicas = 3;
        let log = JetStreamLog::connect(cfg).await.unwrap();
        let s = ns.domain_subject(None, "leader", "a");
        append_ok(&log, ev(&s, "before")).await;
        let mut follower = log.follow(StreamKind::Domain, "c1", 1).await.unwrap();
        assert_eq!(next_event(&mut follower).await.seq, 1);

        let js = async_nats::jetstream::new(cluster.observer().await);
        let stream = js
            .get_stream(ns.stream_name(StreamKind::Domain))
            .await
            .unwrap();
        // The follower's consumer is named after it.
        let names: Vec<String> = stream
            .consumer_names()
            .map(|n| n.unwrap())
            .collect::<Vec<_>>()
            .await;
        let name = names
            .iter()
            .find(|n| n.starts_with("c1-"))
            .unwrap_or_else(|| panic!("no consumer of c1 among {names:?}"));
        let mut consumer: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(name).await.unwrap();
        let leader = consumer
            .info()
            .await
            .unwrap()
            .cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .expect("the consumer has a leader");
        let killed = Instant::now();
        cluster.node(&leader).kill();

        // The next append may wait for a new stream leader.
        let after = loop {
            match log.append(ev(&s, "after")).await {
                Ok(a) => break a.seq,
                Err(_) if killed.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => panic!("no append within 30 s of the kill: {e}"),
            }
        };
        let appended = killed.elapsed();
        let bound = appended + Duration::from_secs(20);
        let mut next = 2;
        let got = loop {
            let left = bound.saturating_sub(killed.elapsed());
            match tokio::time::timeout(left, follower.next()).await {
                Ok(Some(Ok(e))) if e.seq >= after => break e,
                Ok(Some(Ok(e))) => next = e.seq + 1,
                // As the driver does: after an error, subscribe again.
                Ok(ended) => {
                    let why = ended.map(|r| r.err().map(|e| e.to_string()));
                    eprintln!("{:?} after the kill: {why:?}", killed.elapsed());
                    loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    match log.follow(StreamKind::Domain, "c1", next).await {
                        Ok(f) => break follower = f,
                        Err(e) if killed.elapsed() < bound => {
                            eprintln!("{:?} after the kill: {e}", killed.elapsed())
                        }
                        Err(e) => panic!("no subscription within 20 s of the append: {e}"),
                    }
                    }
                }
                Err(_) => panic!(
                    "the follower did not deliver the event appended {appended:?} after its consumer's leader {leader} died within 20 s of the append"
                ),
            }
        };
        assert_eq!(&got.payload[..], b"after");
        eprintln!(
            "consumer leader {leader} killed; the next append landed {appended:?} after the kill, the follower had it {:?} after the kill",
            killed.elapsed()
        );
    }

    /// Key-value entries survive a restart (SIGKILL) of the server, revisions
    /// included.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kv_survives_server_restart() {
        let server = NatsServer::start().await;
        let cfg = jetstream_config(&server.url(), unique_ns());
        let log = JetStreamLog::connect(cfg.clone()).await.unwrap();
        let rev = kv_write_for_restart(&log).await;
        drop(log);
        server.restart().await;
        let log = JetStreamLog::connect(cfg)
            .await
            .expect("reconnecting after restart");
        kv_check_after_restart(&log, rev).await;
    }

    /// The duplicate window survives a SIGKILL of the server: a message id
    /// appended just before the kill is a duplicate after the restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dedup_survives_sigkill() {
        let server = NatsServer::start().await;
        let ns = unique_ns();
        let cfg = jetstream_config(&server.url(), ns.clone());
        let log = JetStreamLog::connect(cfg.clone()).await.unwrap();
        let subject = ns.domain_subject(None, "dedup", "a");
        let mut ids = vec![];
        for i in 0..50 {
            let mut e = ev(&subject, format!("m{i}"));
            e.msg_id = Some(format!("id-{i}"));
            ids.push(append_ok(&log, e).await);
        }
        drop(log);
        server.kill();
        server.restart().await;
        let log = JetStreamLog::connect(cfg).await.unwrap();
        let mut lost = vec![];
        for i in 0..50 {
            let mut e = ev(&subject, format!("m{i}"));
            e.msg_id = Some(format!("id-{i}"));
            let a = log.append(e).await.unwrap();
            if !a.duplicate {
                lost.push(i);
            }
        }
        assert!(
            lost.is_empty(),
            "message ids forgotten after the restart: {lost:?}"
        );
    }

    /// A private server is SIGKILLed while appends are in flight, then restarted:
    /// every append that got its ack is there, byte-exact.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn durable_under_sigkill() {
        let server = NatsServer::start().await;
        let ns = unique_ns();
        let cfg = jetstream_config(&server.url(), ns.clone());
        let log = Arc::new(JetStreamLog::connect(cfg.clone()).await.unwrap());
        let acked: Arc<Mutex<Vec<(u64, String, Bytes)>>> = Arc::default();
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));

        let mut workers = Vec::new();
        for _ in 0..16 {
            let (log, acked, next, ns) = (log.clone(), acked.clone(), next.clone(), ns.clone());
            workers.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let subject = ns.domain_subject(None, "durable", &format!("a{}", i % 7));
                    let mut payload = format!("durable-{i}-").into_bytes();
                    payload.extend_from_slice(&[0xff, 0x00, (i % 251) as u8]);
                    let payload = Bytes::from(payload);
                    if let Ok(a) = log.append(ev(&subject, payload.clone())).await {
                        acked.lock().unwrap().push((a.seq, subject, payload));
                    }
                }
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.lock().unwrap().len() < 200 {
            assert!(Instant::now() < deadline, "200 acks took over 60 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        server.kill();
        for w in &workers {
            w.abort();
        }
        for w in workers {
            let _ = w.await;
        }
        drop(log);
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        assert!(acked.len() >= 200);

        server.restart().await;
        let log = JetStreamLog::connect(cfg)
            .await
            .expect("reconnecting after restart");
        let stored: BTreeMap<u64, StoredEvent> = read_all(&log, StreamKind::Domain)
            .await
            .into_iter()
            .map(|e| (e.seq, e))
            .collect();
        let last = log.last_seq(StreamKind::Domain).await.unwrap();
        assert_eq!(stored.len() as u64, last, "stored sequences have gaps");
        for (seq, subject, payload) in &acked {
            let e = stored.get(seq).unwrap_or_else(|| {
                panic!(
                    "acked event {seq} lost; {} acked, {} stored",
                    acked.len(),
                    stored.len()
                )
            });
            assert_eq!((&e.subject, &e.payload), (subject, payload), "seq {seq}");
        }
    }
}

// ------------------------------------------------------------------ helpers

/// A domain-style event (type `conformance.test` v1, no workspace) on `subject`.
fn ev(subject: &str, payload: impl Into<Bytes>) -> NewEvent {
    NewEvent {
        subject: subject.to_string(),
        envelope: Envelope::new("conformance.test", 1, None, Actor::system("conformance")),
        payload: payload.into(),
        msg_id: None,
        expected_last_subject_seq: None,
    }
}

fn with_id(mut e: NewEvent, id: &str) -> NewEvent {
    e.msg_id = Some(id.to_string());
    e
}

fn expecting(mut e: NewEvent, last: u64) -> NewEvent {
    e.expected_last_subject_seq = Some(last);
    e
}

/// Appends, expecting a new (not duplicate) event; returns its sequence.
async fn append_ok(log: &dyn EventLog, e: NewEvent) -> u64 {
    let subject = e.subject.clone();
    match log.append(e).await {
        Ok(Appended {
            seq,
            duplicate: false,
        }) => seq,
        other => panic!("append to {subject}: {other:?}"),
    }
}

/// Expects a `WrongLastSequence` refusal with exactly these values.
async fn append_conflict(log: &dyn EventLog, e: NewEvent, actual: u64) {
    let (subject, expected) = (e.subject.clone(), e.expected_last_subject_seq.unwrap());
    match log.append(e).await {
        Err(AppendError::WrongLastSequence {
            subject: s,
            expected: x,
            actual: a,
        }) => {
            assert_eq!((s, x, a), (subject, expected, actual));
        }
        other => panic!("expected WrongLastSequence on {subject}: {other:?}"),
    }
}

async fn read(
    log: &dyn EventLog,
    stream: StreamKind,
    from: ReadFrom,
    filter: Option<&str>,
    limit: usize,
) -> Vec<StoredEvent> {
    log.read(stream, from, filter, limit).await.expect("read")
}

async fn read_all(log: &dyn EventLog, stream: StreamKind) -> Vec<StoredEvent> {
    read(log, stream, ReadFrom::Seq(1), None, 1_000_000).await
}

fn seqs(events: &[StoredEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

fn payloads(events: &[StoredEvent]) -> Vec<&[u8]> {
    events.iter().map(|e| &e.payload[..]).collect()
}

/// The next event of a follower, within 10 s.
async fn next_event(follower: &mut EventStream) -> StoredEvent {
    match tokio::time::timeout(Duration::from_secs(10), follower.next()).await {
        Ok(Some(Ok(e))) => e,
        Ok(Some(Err(e))) => panic!("follower error: {e}"),
        Ok(None) => panic!("follower ended"),
        Err(_) => panic!("no event within 10 s"),
    }
}

/// Asserts the follower yields nothing for `d`.
async fn expect_quiet(follower: &mut EventStream, d: Duration) {
    if let Ok(item) = tokio::time::timeout(d, follower.next()).await {
        panic!(
            "unexpected follower item: {:?}",
            item.map(|r| r.map(|e| e.seq))
        );
    }
}

// ------------------------------------------------------------------ the checks

/// Appends to several subjects of both streams get gap-free sequences from 1 per
/// stream, and read back in order, envelope and payload byte-exact.
async fn ordering(log: &dyn EventLog) {
    let ns = log.namespace().clone();
    assert_eq!(log.last_seq(StreamKind::Domain).await.unwrap(), 0);
    assert_eq!(log.last_seq(StreamKind::Raw).await.unwrap(), 0);
    assert!(read_all(log, StreamKind::Domain).await.is_empty());

    let acme = Slug::parse("acme").unwrap();
    let sa = ns.domain_subject(Some(&acme), "conv", "a");
    let sb = ns.domain_subject(None, "conv", "b-1");
    let raw = ns.raw_webhook_subject();

    // The first event: a workspace, a cause, a past occurred_at.
    let cause = Envelope::new("cause.happened", 3, None, Actor::cli("wabridge admin"));
    let mut first = ev(&sa, &br#"{"n":1,"s":"h\u00e9"}"#[..]);
    first.envelope = Envelope::new("conv.opened", 2, Some(acme.clone()), Actor::meta())
        .caused_by(&cause)
        .occurred(Timestamp::parse("2026-01-02T03:04:05.123456Z").unwrap());
    // A typed event, built like the handlers build them.
    let claimed = PhoneNumberClaimed {
        phone_number_id: "1234".into(),
        waba_id: "5678".into(),
        display_phone_number: "+1 555 0100".into(),
    };
    let typed = new_event(
        &ns,
        Some(acme.clone()),
        Actor::system("conformance"),
        &claimed,
    );
    let mut webhook = ev(
        &raw,
        &br#"{"object":"whatsapp_business_account","entry":[]}"#[..],
    );
    webhook.envelope = Envelope::new(
        wabridge_events::types::WEBHOOK_RECEIVED,
        1,
        None,
        Actor::meta(),
    );
    let not_utf8: &[u8] = &[0xff, 0xfe, 0x00, 0x80, b'\r', b'\n', 0xc3, 0x28, b'{', 0x00];

    // (stream, event), in append order: the streams interleave.
    let plan: Vec<(StreamKind, NewEvent)> = vec![
        (StreamKind::Domain, first),
        (StreamKind::Raw, webhook),
        (StreamKind::Domain, ev(&sb, &br#"{"n":2}"#[..])),
        (StreamKind::Raw, ev(&raw, not_utf8)),
        (StreamKind::Domain, typed),
        (StreamKind::Domain, ev(&sb, &br#"{"n":4}"#[..])),
        (StreamKind::Raw, ev(&raw, Bytes::new())),
        (StreamKind::Domain, ev(&sa, &br#"{"n":5}"#[..])),
    ];
    let mut next: BTreeMap<StreamKind, u64> = BTreeMap::new();
    let mut sent: BTreeMap<StreamKind, Vec<(NewEvent, Timestamp, Timestamp)>> = BTreeMap::new();
    for (stream, e) in plan {
        let expected = next.entry(stream).or_insert(0);
        *expected += 1;
        let before = Timestamp::now();
        assert_eq!(
            append_ok(log, e.clone()).await,
            *expected,
            "{stream:?} {}",
            e.subject
        );
        let after = Timestamp::now();
        sent.entry(stream).or_default().push((e, before, after));
    }

    for (stream, sent) in &sent {
        let stored = read_all(log, *stream).await;
        assert_eq!(
            seqs(&stored),
            (1..=sent.len() as u64).collect::<Vec<_>>(),
            "{stream:?}"
        );
        let mut previous = None;
        for (got, (e, before, after)) in stored.iter().zip(sent) {
            assert_eq!(got.stream, *stream);
            assert_eq!(got.subject, e.subject, "{stream:?} {}", got.seq);
            assert_eq!(got.payload, e.payload, "{stream:?} {}", got.seq);
            let recorded = got.envelope.recorded_at;
            assert!(
                *before <= recorded && recorded <= *after,
                "recorded_at {recorded} not in [{before}, {after}]"
            );
            assert!(
                previous <= Some(recorded),
                "recorded_at goes back at {}",
                got.seq
            );
            previous = Some(recorded);
            let mut expected_envelope = e.envelope.clone();
            expected_envelope.recorded_at = recorded;
            assert_eq!(got.envelope, expected_envelope, "{stream:?} {}", got.seq);
        }
        assert_eq!(log.last_seq(*stream).await.unwrap(), sent.len() as u64);
    }

    let domain = read_all(log, StreamKind::Domain).await;
    assert_eq!(
        DomainEvent::decode(&domain[2].envelope, &domain[2].payload).unwrap(),
        DomainEvent::PhoneNumberClaimed(claimed)
    );
    assert_eq!(domain[0].envelope.workspace, Some(acme));
    assert_eq!(domain[0].envelope.causation_id, Some(cause.id));
    assert_eq!(domain[0].envelope.correlation_id, cause.correlation_id);
    let raw_events = read_all(log, StreamKind::Raw).await;
    assert_eq!(
        payloads(&raw_events),
        vec![&sent[&StreamKind::Raw][0].0.payload[..], not_utf8, &b""[..]]
    );

    // Positions and limits.
    let d = StreamKind::Domain;
    assert_eq!(
        seqs(&read(log, d, ReadFrom::Seq(0), None, 2).await),
        vec![1, 2]
    );
    assert_eq!(
        seqs(&read(log, d, ReadFrom::Seq(3), None, 100).await),
        vec![3, 4, 5]
    );
    assert_eq!(
        seqs(&read(log, d, ReadFrom::Seq(5), None, 100).await),
        vec![5]
    );
    assert!(read(log, d, ReadFrom::Seq(6), None, 100).await.is_empty());
    assert!(read(log, d, ReadFrom::Seq(1), None, 0).await.is_empty());
}

/// The same `msg_id` is stored once and answered with the original sequence; the
/// window is stream-wide (any subject) but per stream.
async fn dedup(log: &dyn EventLog) {
    let ns = log.namespace().clone();
    let x = ns.domain_subject(None, "dedup", "x");
    let y = ns.domain_subject(None, "dedup", "y");
    let raw = ns.raw_webhook_subject();
    let dup = |seq| Appended {
        seq,
        duplicate: true,
    };
    let new = |seq| Appended {
        seq,
        duplicate: false,
    };

    assert_eq!(
        log.append(with_id(ev(&x, "p1"), "m1")).await.unwrap(),
        new(1)
    );
    assert_eq!(
        log.append(with_id(ev(&x, "p1-again"), "m1")).await.unwrap(),
        dup(1)
    );
    // The window is per stream, not per subject.
    assert_eq!(
        log.append(with_id(ev(&y, "p1-elsewhere"), "m1"))
            .await
            .unwrap(),
        dup(1)
    );
    assert_eq!(
        log.append(with_id(ev(&x, "p2"), "m2")).await.unwrap(),
        new(2)
    );
    // Without a msg id nothing is deduplicated.
    assert_eq!(log.append(ev(&x, "p3")).await.unwrap(), new(3));
    assert_eq!(log.append(ev(&x, "p3")).await.unwrap(), new(4));
    // Another stream has its own window.
    assert_eq!(
        log.append(with_id(ev(&raw, "r1"), "m1")).await.unwrap(),
        new(1)
    );
    assert_eq!(
        log.append(with_id(ev(&raw, "r1"), "m1")).await.unwrap(),
        dup(1)
    );

    let domain = read_all(log, StreamKind::Domain).await;
    assert_eq!(seqs(&domain), vec![1, 2, 3, 4]);
    assert_eq!(payloads(&domain), vec![&b"p1"[..], b"p2", b"p3", b"p3"]);
    assert_eq!(log.last_seq(StreamKind::Domain).await.unwrap(), 4);
    assert_eq!(
        payloads(&read_all(log, StreamKind::Raw).await),
        vec![&b"r1"[..]]
    );
    assert_eq!(
        log.last_subject_seq(&y).await.unwrap(),
        0,
        "a duplicate stored nothing on y"
    );
}

/// The dedup check comes before the concurrency check: a retried conditional
/// append (its ack was lost) whose expectation is now stale is answered with the
/// original sequence as a duplicate, not refused; a new msg id is still refused.
async fn dedup_before_concurrency(log: &dyn EventLog) {
    let ns = log.namespace().clone();
    let x = ns.domain_subject(None, "dedup", "x");
    let y = ns.domain_subject(None, "dedup", "y");
    let dup = |seq| Appended {
        seq,
        duplicate: true,
    };

    assert_eq!(
        append_ok(log, expecting(with_id(ev(&x, "p1"), "m1"), 0)).await,
        1
    );
    assert_eq!(
        append_ok(log, expecting(with_id(ev(&x, "p2"), "m2"), 1)).await,
        2
    );
    // The retry of the first append: x's last is now 2, the retry still expects 0.
    assert_eq!(
        log.append(expecting(with_id(ev(&x, "p1-retry"), "m1"), 0))
            .await
            .unwrap(),
        dup(1)
    );
    assert_eq!(
        log.append(expecting(with_id(ev(&x, "p2-retry"), "m2"), 1))
            .await
            .unwrap(),
        dup(2)
    );
    // Also when the original went to another subject (the window is stream-wide).
    assert_eq!(
        log.append(expecting(with_id(ev(&y, "p1-on-y"), "m1"), 7))
            .await
            .unwrap(),
        dup(1)
    );
    // A new msg id with a stale expectation is refused and stores nothing.
    append_conflict(log, expecting(with_id(ev(&x, "p3"), "m3"), 0), 2).await;
    assert_eq!(
        payloads(&read_all(log, StreamKind::Domain).await),
        vec![&b"p1"[..], b"p2"]
    );
    // And m3 was not remembered: with the right expectation it is stored.
    assert_eq!(
        log.append(expecting(with_id(ev(&x, "p3"), "m3"), 2))
            .await
            .unwrap(),
        Appended {
            seq: 3,
            duplicate: false
        }
    );
}

/// A subject outside the log's namespace is refused; nothing is stored.
async fn foreign_subject(log: &dyn EventLog) {
    let ns = log.namespace().clone();
    let foreign = format!("{}x._.key.k1", ns.as_str());
    for subject in [foreign.as_str(), "wbz.acme.key.k1", "other"] {
        match log.append(ev(subject, "nope")).await {
            Err(AppendError::BadSubject(s)) => assert_eq!(s, subject),
            other => panic!("expected BadSubject for {subject}: {other:?}"),
        }
    }
    assert_eq!(log.last_seq(StreamKind::Domain).await.unwrap(), 0);
    assert_eq!(log.last_seq(StreamKind::Raw).await.unwrap(), 0);
}

/// `expected_last_subject_seq` is checked per subject, refuses with the exact
/// values, stores nothing when refused, and lets exactly one racer win.
async fn concurrency(log: &dyn EventLog) {
    let ns = log.namespace().clone();
    let x = ns.domain_subject(None, "occ", "x");
    let y = ns.domain_subject(None, "occ", "y");
    let z = ns.domain_subject(None, "occ", "z");
    let raw = ns.raw_webhook_subject();

    assert_eq!(log.last_subject_seq(&x).await.unwrap(), 0);
    assert_eq!(append_ok(log, expecting(ev(&x, "x1"), 0)).await, 1);
    append_conflict(log, expecting(ev(&x, "x-stale"), 0), 1).await;
    assert_eq!(append_ok(log, ev(&y, "y2")).await, 2);
    append_conflict(log, expecting(ev(&y, "y-stale"), 0), 2).await;
    // y's append does not move x's expectation.
    assert_eq!(append_ok(log, expecting(ev(&x, "x3"), 1)).await, 3);
    append_conflict(log, expecting(ev(&x, "x-stale"), 1), 3).await;
    // The stream's sequence is not the subject's.
    append_conflict(log, expecting(ev(&x, "x-stream-seq"), 2), 3).await;
    append_conflict(log, expecting(ev(&x, "x-future"), 4), 3).await;
    assert_eq!(append_ok(log, expecting(ev(&z, "z4"), 0)).await, 4);
    assert_eq!(append_ok(log, expecting(ev(&y, "y5"), 2)).await, 5);

    assert_eq!(log.last_subject_seq(&x).await.unwrap(), 3);
    assert_eq!(log.last_subject_seq(&y).await.unwrap(), 5);
    assert_eq!(log.last_subject_seq(&z).await.unwrap(), 4);
    assert_eq!(
        log.last_subject_seq(&ns.domain_subject(None, "occ", "w"))
            .await
            .unwrap(),
        0
    );

    // Eight racers expect y at 5: exactly one wins.
    let racers = (0..8).map(|i| log.append(expecting(ev(&y, format!("race-{i}")), 5)));
    let results = join_all(racers).await;
    let winners: Vec<u64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|a| a.seq))
        .collect();
    assert_eq!(winners, vec![6], "{results:?}");
    for r in &results {
        match r {
            Ok(a) => assert!(!a.duplicate),
            Err(AppendError::WrongLastSequence {
                expected: 5,
                actual: 6,
                ..
            }) => {}
            Err(e) => panic!("unexpected racer error: {e}"),
        }
    }

    let stored = read_all(log, StreamKind::Domain).await;
    assert_eq!(seqs(&stored), vec![1, 2, 3, 4, 5, 6]);
    let subjects: Vec<&str> = stored.iter().map(|e| e.subject.as_str()).collect();
    assert_eq!(subjects, vec![x.as_str(), &y, &x, &z, &y, &y]);
    assert_eq!(
        &payloads(&stored)[..5],
        &[&b"x1"[..], b"y2", b"x3", b"z4", b"y5"]
    );
    assert_eq!(log.last_seq(StreamKind::Domain).await.unwrap(), 6);

    // The raw stream has its own subjects and sequence.
    assert_eq!(append_ok(log, expecting(ev(&raw, "r1"), 0)).await, 1);
    append_conflict(log, expecting(ev(&raw, "r-stale"), 0), 1).await;
    assert_eq!(log.last_subject_seq(&raw).await.unwrap(), 1);
}

/// `last_seq_covering` gives, in one look-up, a sequence at or after the last event
/// of every subject asked about and never beyond the stream's head; exactly the
/// last one for a single subject; 0 where nothing was appended; and it refuses
/// subjects of two streams (their sequences do not compare).
async fn covering(log: &dyn EventLog) {
    let ns = log.namespace().clone();
    let settings =
        |ws: &str| ns.domain_subject(Some(&Slug::parse(ws).unwrap()), "consent", "keywords");
    let (a, b, c) = (settings("acme"), settings("shop"), settings("zed"));
    let message = ns.domain_subject(Some(&Slug::parse("acme").unwrap()), "message", "m1");
    let covering = |subjects: &[&String]| {
        let subjects: Vec<String> = subjects.iter().map(|s| s.to_string()).collect();
        async move { log.last_seq_covering(&subjects).await.unwrap() }
    };
    assert_eq!(covering(&[]).await, 0);
    assert_eq!(covering(&[&a, &b, &c]).await, 0);
    for s in [&a, &message, &b, &message, &a, &message] {
        append_ok(log, ev(s, "x")).await;
    }
    let head = log.last_seq(StreamKind::Domain).await.unwrap();
    assert_eq!(head, 6);
    assert_eq!(covering(&[&a]).await, 5);
    assert_eq!(covering(&[&b]).await, 3);
    assert_eq!(covering(&[&c]).await, 0);
    assert_eq!(covering(&[&message]).await, 6);
    for set in [
        vec![&a, &b],
        vec![&b, &c],
        vec![&c, &b, &a],
        vec![&b, &message],
        vec![&b, &b],
    ] {
        let mut exact = 0;
        for s in &set {
            exact = exact.max(log.last_subject_seq(s).await.unwrap());
        }
        let got = covering(&set).await;
        assert!(exact <= got && got <= head, "{set:?}: {got}, exact {exact}");
    }
    let raw = ns.raw_webhook_subject();
    let mixed = vec![a.clone(), raw];
    assert!(log.last_seq_covering(&mixed).await.is_err());
}

/// A follower yields existing then new events in order, wakes promptly, and a new
/// follower resumes from the position it is given.
async fn follow_and_resume(log: &dyn EventLog) {
    let ns = log.namespace().clone();
    let s = ns.domain_subject(None, "follow", "a");
    let t = ns.domain_subject(Some(&Slug::parse("ws").unwrap()), "follow", "b");
    for (i, subject) in [(1, &s), (2, &t), (3, &s)] {
        assert_eq!(append_ok(log, ev(subject, format!("f{i}"))).await, i);
    }

    let mut f = log.follow(StreamKind::Domain, "c1", 1).await.unwrap();
    for i in 1..=3 {
        let e = next_event(&mut f).await;
        assert_eq!((e.seq, e.payload), (i, Bytes::from(format!("f{i}"))));
        assert_eq!(e.stream, StreamKind::Domain);
    }
    expect_quiet(&mut f, Duration::from_millis(300)).await;

    // Idle follower: a new append wakes it (well before any slow poll).
    let t0 = Instant::now();
    assert_eq!(append_ok(log, ev(&t, "f4")).await, 4);
    let e = next_event(&mut f).await;
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "woke after {:?}",
        t0.elapsed()
    );
    assert_eq!((e.seq, &e.subject, &e.payload[..]), (4, &t, &b"f4"[..]));
    assert_eq!(append_ok(log, ev(&s, "f5")).await, 5);
    assert_eq!(next_event(&mut f).await.seq, 5);
    expect_quiet(&mut f, Duration::from_millis(200)).await;

    // Another consumer reads the whole stream independently.
    let mut other = log.follow(StreamKind::Domain, "c2", 1).await.unwrap();
    for i in 1..=5 {
        assert_eq!(next_event(&mut other).await.seq, i);
    }
    drop(other);

    // Stop; an event arrives meanwhile; resume from the checkpoint (seq 4).
    drop(f);
    assert_eq!(append_ok(log, ev(&s, "f6")).await, 6);
    let mut f = log.follow(StreamKind::Domain, "c1", 4).await.unwrap();
    for i in 4..=6 {
        let e = next_event(&mut f).await;
        assert_eq!((e.seq, e.payload), (i, Bytes::from(format!("f{i}"))));
    }
    expect_quiet(&mut f, Duration::from_millis(200)).await;
    drop(f);

    // Resuming past the end waits for the next event.
    let mut f = log.follow(StreamKind::Domain, "c1", 7).await.unwrap();
    expect_quiet(&mut f, Duration::from_millis(300)).await;
    assert_eq!(append_ok(log, ev(&t, "f7")).await, 7);
    let e = next_event(&mut f).await;
    assert_eq!((e.seq, &e.payload[..]), (7, &b"f7"[..]));

    // The raw stream is followed separately, from its own sequence 1.
    let raw = ns.raw_webhook_subject();
    assert_eq!(append_ok(log, ev(&raw, &[0xffu8, 0x00][..])).await, 1);
    let mut r = log.follow(StreamKind::Raw, "c1", 1).await.unwrap();
    let e = next_event(&mut r).await;
    assert_eq!(
        (e.stream, e.seq, &e.subject, &e.payload[..]),
        (StreamKind::Raw, 1, &raw, &[0xffu8, 0x00][..])
    );
    expect_quiet(&mut r, Duration::from_millis(200)).await;
    expect_quiet(&mut f, Duration::from_millis(10)).await;
}

/// Reads from a sequence, from a time, with subject filters (`*`, `>`) and limits.
async fn replay(log: &dyn EventLog) {
    let ns = log.namespace().clone();
    let n = ns.as_str();
    let (ws1, ws2) = (Slug::parse("ws1").unwrap(), Slug::parse("ws2").unwrap());
    let k1 = ns.domain_subject(Some(&ws1), "key", "k1");
    let t1 = ns.domain_subject(Some(&ws1), "token", "t1");
    let k2 = ns.domain_subject(Some(&ws2), "key", "k2");
    let g = ns.domain_subject(None, "key", "g");
    let d = StreamKind::Domain;

    let start = Timestamp::now();
    for (i, s) in [(1, &k1), (2, &t1), (3, &k2)] {
        assert_eq!(append_ok(log, ev(s, format!("e{i}"))).await, i);
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mid = Timestamp::now();
    tokio::time::sleep(Duration::from_millis(30)).await;
    for (i, s) in [(4, &g), (5, &k1), (6, &t1)] {
        assert_eq!(append_ok(log, ev(s, format!("e{i}"))).await, i);
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let late = Timestamp::now();
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(append_ok(log, ev(&k2, "e7")).await, 7);

    // From a sequence.
    let from4 = read(log, d, ReadFrom::Seq(4), None, 100).await;
    assert_eq!(seqs(&from4), vec![4, 5, 6, 7]);
    assert_eq!(payloads(&from4), vec![&b"e4"[..], b"e5", b"e6", b"e7"]);
    assert_eq!(
        seqs(&read(log, d, ReadFrom::Seq(4), None, 2).await),
        vec![4, 5]
    );

    // From a time.
    assert_eq!(
        seqs(&read(log, d, ReadFrom::Time(mid), None, 100).await),
        vec![4, 5, 6, 7]
    );
    assert_eq!(
        seqs(&read(log, d, ReadFrom::Time(mid), None, 1).await),
        vec![4]
    );
    assert_eq!(
        seqs(&read(log, d, ReadFrom::Time(late), None, 100).await),
        vec![7]
    );
    assert_eq!(
        seqs(
            &read(
                log,
                d,
                ReadFrom::Time(start.minus(Duration::from_secs(1))),
                None,
                100
            )
            .await
        ),
        (1..=7).collect::<Vec<_>>()
    );
    assert!(read(
        log,
        d,
        ReadFrom::Time(Timestamp::now().plus(Duration::from_secs(60))),
        None,
        100
    )
    .await
    .is_empty());
    // At an event's own recorded_at: that event is included.
    let recorded_5 = from4[1].envelope.recorded_at;
    assert_eq!(
        seqs(&read(log, d, ReadFrom::Time(recorded_5), None, 100).await),
        vec![5, 6, 7]
    );

    // Subject filters.
    let keys = format!("{n}.*.key.*");
    let ws1_all = format!("{n}.ws1.>");
    let filtered = |from, filter: &str, limit| {
        let filter = filter.to_string();
        async move { seqs(&read(log, d, from, Some(&filter), limit).await) }
    };
    assert_eq!(
        filtered(ReadFrom::Seq(1), &keys, 100).await,
        vec![1, 3, 4, 5, 7]
    );
    assert_eq!(
        filtered(ReadFrom::Seq(1), &ws1_all, 100).await,
        vec![1, 2, 5, 6]
    );
    assert_eq!(filtered(ReadFrom::Seq(1), &k1, 100).await, vec![1, 5]);
    assert_eq!(
        filtered(ReadFrom::Seq(1), &format!("{n}.*.*.k2"), 100).await,
        vec![3, 7]
    );
    assert_eq!(
        filtered(ReadFrom::Seq(1), &format!("{n}.>"), 100).await,
        (1..=7).collect::<Vec<_>>()
    );
    assert_eq!(filtered(ReadFrom::Seq(4), &keys, 2).await, vec![4, 5]);
    assert_eq!(filtered(ReadFrom::Seq(2), &ws1_all, 2).await, vec![2, 5]);
    assert_eq!(
        filtered(ReadFrom::Time(mid), &keys, 100).await,
        vec![4, 5, 7]
    );
    assert_eq!(
        filtered(ReadFrom::Time(mid), &ws1_all, 100).await,
        vec![5, 6]
    );
    assert!(filtered(ReadFrom::Seq(1), &format!("{n}.nobody.>"), 100)
        .await
        .is_empty());
    let k1_events = read(log, d, ReadFrom::Seq(1), Some(&k1), 100).await;
    assert!(k1_events.iter().all(|e| e.subject == k1));
    assert_eq!(payloads(&k1_events), vec![&b"e1"[..], b"e5"]);

    // The raw stream is untouched.
    assert!(read_all(log, StreamKind::Raw).await.is_empty());
}

/// A payload above `max_payload()` is refused with the exact sizes; nothing is stored.
async fn oversized_payload(log: &dyn EventLog) {
    let ns = log.namespace().clone();
    let max = log.max_payload();
    assert!(max >= 1024 * 1024, "max_payload {max}");
    let too_big = Bytes::from(vec![b'x'; max + 1]);
    let s = ns.domain_subject(None, "big", "a");
    for subject in [s.clone(), ns.raw_webhook_subject()] {
        match log.append(ev(&subject, too_big.clone())).await {
            Err(AppendError::PayloadTooLarge { size, limit }) => {
                assert_eq!((size, limit), (max + 1, max))
            }
            other => panic!("expected PayloadTooLarge on {subject}: {other:?}"),
        }
    }
    assert_eq!(log.last_seq(StreamKind::Domain).await.unwrap(), 0);
    assert_eq!(log.last_seq(StreamKind::Raw).await.unwrap(), 0);
    assert_eq!(log.last_subject_seq(&s).await.unwrap(), 0);
    // Nothing was consumed: the next append is still sequence 1.
    assert_eq!(append_ok(log, ev(&s, "small")).await, 1);
}

/// A payload of exactly `max_payload()` bytes ("the largest payload the log
/// accepts") is accepted and read back intact.
async fn max_payload_accepted(log: &dyn EventLog) {
    let ns = log.namespace().clone();
    let max = log.max_payload();
    let payload: Bytes = (0..max)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let raw = ns.raw_webhook_subject();
    assert_eq!(append_ok(log, ev(&raw, payload.clone())).await, 1);
    let stored = read_all(log, StreamKind::Raw).await;
    assert_eq!(seqs(&stored), vec![1]);
    assert!(
        stored[0].payload == payload,
        "payload of {} bytes differs",
        stored[0].payload.len()
    );
}

/// Events whose payloads hold NUL, invalid UTF-8, the separators of the embedded
/// log's page format (`;`, `,`, digits) or nothing at all, and whose headers hold
/// those separators too, come back byte for byte and in order, many to a page and from
/// the middle of one.
async fn odd_bytes_in_one_page(log: &dyn EventLog) {
    let ns = log.namespace().clone();
    let raw = ns.raw_webhook_subject();
    let payloads: Vec<Vec<u8>> = vec![
        vec![],
        vec![0, 0, 0],
        vec![0xff, 0xfe, b';', b',', b'1', b'2', b';'],
        b"12,3,4,5;".to_vec(),
        "d\u{e9}j\u{e0} vu; \u{1F600}".as_bytes().to_vec(),
        (0..=255u8).collect(),
    ];
    for (i, p) in payloads.iter().enumerate() {
        let mut e = ev(&raw, p.clone());
        e.envelope.source_ip = Some(format!("10.0.0.{i};,9;"));
        assert_eq!(append_ok(log, e).await, i as u64 + 1);
    }
    let stored = read_all(log, StreamKind::Raw).await;
    assert_eq!(
        seqs(&stored),
        (1..=payloads.len() as u64).collect::<Vec<_>>()
    );
    for (i, (e, p)) in stored.iter().zip(&payloads).enumerate() {
        assert_eq!(&e.payload[..], &p[..], "payload of #{}", e.seq);
        assert_eq!(e.subject, raw);
        assert_eq!(
            e.envelope.source_ip.as_deref(),
            Some(format!("10.0.0.{i};,9;").as_str())
        );
    }
    let from3 = read(log, StreamKind::Raw, ReadFrom::Seq(3), None, 2).await;
    assert_eq!(seqs(&from3), vec![3, 4]);
    assert_eq!(&from3[1].payload[..], b"12,3,4,5;");
}

/// 500 concurrent appends all succeed with distinct sequences 1..=500, each stored
/// under the sequence its ack named.
async fn many_in_flight(log: &dyn EventLog) {
    let ns = log.namespace().clone();
    let appends = (0..500).map(|i| {
        let subject = ns.domain_subject(None, "flight", &format!("a{}", i % 10));
        let payload = format!("inflight-{i}");
        async move {
            let seq = append_ok(log, ev(&subject, payload.clone())).await;
            (seq, subject, payload)
        }
    });
    let mut acked = join_all(appends).await;
    acked.sort();
    assert_eq!(
        acked.iter().map(|a| a.0).collect::<Vec<_>>(),
        (1..=500).collect::<Vec<_>>()
    );

    let stored = read_all(log, StreamKind::Domain).await;
    assert_eq!(stored.len(), 500);
    for (e, (seq, subject, payload)) in stored.iter().zip(&acked) {
        assert_eq!(
            (e.seq, &e.subject, &e.payload[..]),
            (*seq, subject, payload.as_bytes())
        );
    }
    assert_eq!(log.last_seq(StreamKind::Domain).await.unwrap(), 500);
}

/// The key-value store's compare-and-set: create-if-absent, update on the right
/// revision only, get returns the last value; buckets and keys are independent;
/// keys may hold any characters without colliding; bad bucket names are refused.
async fn kv_cas_semantics(log: &dyn EventLog) {
    let b = "conf_kv";
    assert_eq!(log.kv_get(b, "k").await.unwrap(), None);

    let r1 = log
        .kv_cas(b, "k", Bytes::from_static(b"v1"), 0)
        .await
        .unwrap()
        .expect("create of an absent key");
    assert!(r1 > 0);
    // A second create loses: the key exists.
    assert_eq!(
        log.kv_cas(b, "k", Bytes::from_static(b"v1-again"), 0)
            .await
            .unwrap(),
        None
    );
    let got = log.kv_get(b, "k").await.unwrap().unwrap();
    assert_eq!((&got.value[..], got.revision), (&b"v1"[..], r1));

    // Update on the right revision: written, revision bumped.
    let r2 = log
        .kv_cas(b, "k", Bytes::from_static(b"v2"), r1)
        .await
        .unwrap()
        .expect("update on the current revision");
    assert!(r2 > r1, "{r2} after {r1}");
    // A stale revision (and a future one) loses and changes nothing.
    for stale in [r1, r2 + 1000] {
        assert_eq!(
            log.kv_cas(b, "k", Bytes::from_static(b"stale"), stale)
                .await
                .unwrap(),
            None,
            "revision {stale}"
        );
    }
    let got = log.kv_get(b, "k").await.unwrap().unwrap();
    assert_eq!((&got.value[..], got.revision), (&b"v2"[..], r2));
    // An update of an absent key loses.
    assert_eq!(
        log.kv_cas(b, "absent", Bytes::from_static(b"x"), r2)
            .await
            .unwrap(),
        None
    );
    assert_eq!(log.kv_get(b, "absent").await.unwrap(), None);
    let r3 = log
        .kv_cas(b, "k", Bytes::new(), r2)
        .await
        .unwrap()
        .expect("update to an empty value");
    assert!(r3 > r2);
    let got = log.kv_get(b, "k").await.unwrap().unwrap();
    assert_eq!((got.value.len(), got.revision), (0, r3));

    // Same key in another bucket: independent.
    assert_eq!(log.kv_get("conf_kv2", "k").await.unwrap(), None);
    assert!(log
        .kv_cas("conf_kv2", "k", Bytes::from_static(b"other"), 0)
        .await
        .unwrap()
        .is_some());
    assert_eq!(log.kv_get(b, "k").await.unwrap().unwrap().revision, r3);

    // Keys with characters a NATS subject may not hold, and their escapes.
    let odd = [
        "ws:acme/+1 555.0100",
        "ws=3Aacme",
        "ws:acme",
        "ws_acme",
        "é*>",
    ];
    for (i, key) in odd.iter().enumerate() {
        let v = Bytes::from(format!("odd-{i}"));
        assert!(
            log.kv_cas(b, key, v, 0).await.unwrap().is_some(),
            "create {key:?}"
        );
    }
    for (i, key) in odd.iter().enumerate() {
        let got = log.kv_get(b, key).await.unwrap().unwrap();
        assert_eq!(got.value, Bytes::from(format!("odd-{i}")), "{key:?}");
    }

    // Bucket names are [a-z0-9_]+; keys are not empty.
    for bad in ["", "Upper", "has-dash", "dot.ted", "x".repeat(33).as_str()] {
        assert!(log.kv_get(bad, "k").await.is_err(), "bucket {bad:?}");
        assert!(
            log.kv_cas(bad, "k", Bytes::new(), 0).await.is_err(),
            "bucket {bad:?}"
        );
    }
    assert!(log.kv_get(b, "").await.is_err());
}

/// 20 concurrent writers each add 1 to a counter 10 times by read-modify-CAS,
/// retrying when they lose: the counter ends at exactly 200, and every successful
/// write saw a distinct revision.
async fn kv_concurrent_increments(log: &dyn EventLog) {
    let b = "conf_counter";
    let writers = (0..20).map(|w| async move {
        let mut revisions = Vec::new();
        let mut lost = 0u32;
        for _ in 0..10 {
            loop {
                let (n, rev) = match log.kv_get(b, "n").await.unwrap() {
                    None => (0u64, 0),
                    Some(e) => (
                        std::str::from_utf8(&e.value).unwrap().parse().unwrap(),
                        e.revision,
                    ),
                };
                let next = Bytes::from((n + 1).to_string());
                match log.kv_cas(b, "n", next, rev).await.unwrap() {
                    Some(new_rev) => {
                        assert!(new_rev > rev, "writer {w}: {new_rev} after {rev}");
                        revisions.push(new_rev);
                        break;
                    }
                    None => lost += 1,
                }
            }
        }
        (revisions, lost)
    });
    let results = join_all(writers).await;
    let mut revisions: Vec<u64> = results.iter().flat_map(|r| r.0.clone()).collect();
    let lost: u32 = results.iter().map(|r| r.1).sum();
    let got = log.kv_get(b, "n").await.unwrap().unwrap();
    assert_eq!(&got.value[..], b"200", "lost {lost} rounds");
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(revisions.len(), 200, "two writers got the same revision");
    assert_eq!(*revisions.last().unwrap(), got.revision);
}

/// Writes two keys for the restart checks; returns the revision of the updated one.
async fn kv_write_for_restart(log: &dyn EventLog) -> u64 {
    let r1 = log
        .kv_cas("conf_restart", "tat", Bytes::from_static(b"one"), 0)
        .await
        .unwrap()
        .unwrap();
    let r2 = log
        .kv_cas("conf_restart", "tat", Bytes::from_static(b"two"), r1)
        .await
        .unwrap()
        .unwrap();
    log.kv_cas("conf_restart2", "x", Bytes::from_static(b"y"), 0)
        .await
        .unwrap()
        .unwrap();
    r2
}

/// After a restart: the last values and revisions are there, and CAS goes on from
/// them (the old revision is stale, the current one works).
async fn kv_check_after_restart(log: &dyn EventLog, rev: u64) {
    let got = log.kv_get("conf_restart", "tat").await.unwrap().unwrap();
    assert_eq!((&got.value[..], got.revision), (&b"two"[..], rev));
    assert_eq!(
        &log.kv_get("conf_restart2", "x")
            .await
            .unwrap()
            .unwrap()
            .value[..],
        b"y"
    );
    assert_eq!(
        log.kv_cas("conf_restart", "tat", Bytes::from_static(b"x"), 0)
            .await
            .unwrap(),
        None
    );
    let r3 = log
        .kv_cas("conf_restart", "tat", Bytes::from_static(b"three"), rev)
        .await
        .unwrap()
        .expect("CAS on the revision read back");
    assert!(r3 > rev);
}
