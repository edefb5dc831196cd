//! Faults under load, in the deployed shape (API and workers in one process): the
//! JetStream server SIGKILLed and restarted, a three-node cluster losing its stream
//! leader, the embedded log's disk filling up, PostgreSQL restarting. Every webhook
//! answered 200 must be in the log afterwards and processed exactly once; requests
//! that cannot be kept are refused (503, never a 200), and Meta's retry of them then
//! succeeds.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use wabridge::dev::webhook::{build, signature, Kind, WebhookSpec};
use wabridge_events::StreamKind;

use crate::support::{
    app::{spawn_app_with, DbKind, LogKind, TestApp, TestOptions, APP_SECRET},
    postgres::PrivatePostgres,
    NatsCluster, NatsServer,
};

const WABA: &str = "300100200300666";
const NUMBER: &str = "700800900100666";

/// Webhook `i`: the same bytes every time it is sent (Meta retries exactly what it
/// sent; the builder stamps the current time, so bodies are made once and kept).
fn body(i: usize) -> (String, Vec<u8>) {
    static BODIES: std::sync::OnceLock<Mutex<HashMap<usize, Vec<u8>>>> = std::sync::OnceLock::new();
    let wamid = format!("wamid.FAULT{i:06}");
    let mut bodies = BODIES.get_or_init(Default::default).lock().unwrap();
    let body = bodies.entry(i).or_insert_with(|| {
        build(&WebhookSpec {
            kind: Kind::Text,
            phone_number_id: NUMBER.into(),
            waba_id: WABA.into(),
            from: "15550002222".into(),
            text: Some(format!("load {i}")),
            wamid: Some(wamid.clone()),
            ..WebhookSpec::default()
        })
    });
    (wamid, body.clone())
}

/// What Meta got for each webhook: every status it was answered, in order.
type Answers = Arc<Mutex<BTreeMap<usize, Vec<u16>>>>;

/// How long each refusal took to come.
type Waits = Arc<Mutex<Vec<Duration>>>;

async fn post(client: &reqwest::Client, app: &TestApp, i: usize) -> u16 {
    let (_, b) = body(i);
    let sig = signature(APP_SECRET, &b);
    match client
        .post(app.url("/webhooks/meta"))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", sig)
        .body(b)
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        // No answer at all (the connection failed): Meta retries, like a 5xx.
        Err(_) => 0,
    }
}

fn acked(answers: &Answers) -> usize {
    answers
        .lock()
        .unwrap()
        .values()
        .filter(|a| a.contains(&200))
        .count()
}

async fn wait_until(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Webhooks sent by a few concurrent senders, each answer kept.
struct Load {
    app: Arc<TestApp>,
    client: reqwest::Client,
    answers: Answers,
    waits: Waits,
    stop: Arc<std::sync::atomic::AtomicBool>,
    senders: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `senders` tasks posting distinct webhooks, 2 ms apart each.
    fn start(app: Arc<TestApp>, senders: usize) -> Load {
        let answers: Answers = Arc::default();
        let waits: Waits = Arc::default();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut tasks = vec![];
        for _ in 0..senders {
            let (app, answers, waits, next, stop, client) = (
                app.clone(),
                answers.clone(),
                waits.clone(),
                next.clone(),
                stop.clone(),
                client.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let sent = Instant::now();
                    let status = post(&client, &app, i).await;
                    if status != 200 {
                        waits.lock().unwrap().push(sent.elapsed());
                    }
                    answers.lock().unwrap().entry(i).or_default().push(status);
                    // Meta backs off after a failed delivery; a sender that did not
                    // would pile up thousands of refused webhooks in a long outage.
                    let pause = if status == 200 { 2 } else { 50 };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }));
        }
        Load {
            app,
            client,
            answers,
            waits,
            stop,
            senders: tasks,
        }
    }

    fn acked(&self) -> usize {
        acked(&self.answers)
    }

    /// Webhooks refused at least once so far.
    fn refused(&self) -> usize {
        self.answers
            .lock()
            .unwrap()
            .values()
            .filter(|a| a.iter().any(|s| *s != 200))
            .count()
    }

    async fn wait_acked(&self, what: &str, secs: u64, n: usize) {
        wait_until(what, secs, || self.acked() >= n).await;
    }

    async fn wait_refused(&self, what: &str, secs: u64, n: usize) {
        wait_until(what, secs, || self.refused() >= n).await;
    }

    /// Stops the senders, checks every answer was a 200 or a refusal Meta retries
    /// (503 or none), retries the refused ones as Meta would (each must now be
    /// taken), then checks every webhook became exactly one `message.received`.
    /// Returns the app, the number of webhooks and of refusals.
    async fn finish(self, must_meet_refusals: bool) -> (TestApp, usize, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for s in self.senders {
            s.await.unwrap();
        }
        let app = self.app;
        let mut refused = vec![];
        for (i, statuses) in self.answers.lock().unwrap().iter() {
            for s in statuses {
                assert!(
                    [200, 503, 0].contains(s),
                    "webhook {i} was answered {s}: {statuses:?}"
                );
            }
            if !statuses.contains(&200) {
                refused.push(*i);
            }
        }
        assert!(
            !must_meet_refusals || !refused.is_empty(),
            "no request met the fault: the test proves nothing"
        );
        // Meta retries a refused webhook with back-off for hours; here each gets up
        // to 30 s of retries (the fault is over, so the first retry is taken unless
        // the log is still settling, as a cluster after an election may be).
        for i in &refused {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let status = post(&self.client, &app, *i).await;
                assert!(
                    [200, 503, 0].contains(&status),
                    "the retry of webhook {i} was answered {status}"
                );
                self.answers
                    .lock()
                    .unwrap()
                    .get_mut(i)
                    .unwrap()
                    .push(status);
                if status == 200 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "webhook {i} was still refused 30 s after the fault: {:?}",
                    self.answers.lock().unwrap().get(i)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let total = self.answers.lock().unwrap().len();
        every_webhook_processed_once(&app, total, &self.answers).await;
        let mut w = self.waits.lock().unwrap().clone();
        w.sort();
        if !w.is_empty() {
            eprintln!(
                "{total} webhooks, {} refused during the fault (refusals in {:?} median, {:?} at most) and taken on retry, each processed once",
                refused.len(),
                w[w.len() / 2],
                w[w.len() - 1]
            );
        }
        let app = Arc::try_unwrap(app).ok().expect("the only owner");
        (app, total, refused.len())
    }
}

/// Webhooks `0..total` are each exactly one `message.received` in the log.
async fn every_webhook_processed_once(app: &TestApp, total: usize, answers: &Answers) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let received = loop {
        let received = app.events_of(Some("acme"), "message.received").await;
        if received.len() >= total || Instant::now() > deadline {
            break received;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let mut per_wamid: HashMap<String, usize> = HashMap::new();
    for e in &received {
        let data: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        *per_wamid
            .entry(data["wamid"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let missing: Vec<usize> = (0..total)
        .filter(|i| !per_wamid.contains_key(&body(*i).0))
        .collect();
    if !missing.is_empty() {
        // Where the first missing one got lost: is its body in the raw stream?
        let raw = app
            .read_all(StreamKind::Raw, None)
            .await
            .unwrap_or_default();
        let wamid = body(missing[0]).0;
        let in_raw: Vec<u64> = raw
            .iter()
            .filter(|e| String::from_utf8_lossy(&e.payload).contains(&wamid))
            .map(|e| e.seq)
            .collect();
        panic!(
            "{} of {total} acknowledged webhooks never became a message (first: {:?}, answered {:?}); {wamid} is in the raw stream at {in_raw:?} (raw head {}), the processor is at {}",
            missing.len(),
            &missing[..missing.len().min(5)],
            answers.lock().unwrap().get(&missing[0]),
            raw.last().map(|e| e.seq).unwrap_or(0),
            app.app.ctx.progress.get(wabridge_handlers::webhooks::processor::NAME),
        );
    }
    let twice: Vec<String> = received
        .iter()
        .filter_map(|e| {
            let data: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
            let w = data["wamid"].as_str().unwrap().to_string();
            (per_wamid[&w] > 1).then(|| {
                format!(
                    "{w} at #{} from raw #{} (event id {})",
                    e.seq, data["source"]["raw_seq"], e.envelope.id
                )
            })
        })
        .collect();
    assert!(twice.is_empty(), "processed more than once: {twice:#?}");
    assert_eq!(received.len(), total);
    let raw_head = app.head(StreamKind::Raw).await;
    assert!(
        raw_head as usize >= total,
        "{raw_head} raw events for {total} webhooks"
    );
}

/// Every read model, rebuilt from the log beside the live one, equals it, and no
/// event was dead-lettered.
async fn replay_equals_live(app: &TestApp) {
    app.settle().await;
    let projections = wabridge::replay::select(&app.app, "all").expect("every projection");
    let report = wabridge_projections::rebuild::rebuild(
        app.app.ctx.log.clone(),
        &app.app.ctx.store,
        projections,
        true,
        |_| {},
    )
    .await
    .expect("a dry-run replay");
    for p in &report.projections {
        assert_eq!(
            p.checksum, p.live_checksum,
            "{}: the replay differs from the live state",
            p.name
        );
    }
    let head = app.head(StreamKind::Domain).await;
    let letters = app
        .domain_events(None)
        .await
        .into_iter()
        .filter(|e| e.envelope.event_type == "dead_letter.recorded")
        .count();
    assert_eq!(letters, 0, "{letters} dead letters among {head} events");
}

async fn acme(app: &TestApp) {
    app.workspace("acme").await;
    app.claim("acme", NUMBER, WABA).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_sigkilled_under_webhook_load_loses_no_acknowledged_webhook() {
    let nats = NatsServer::start().await;
    let mut opts = TestOptions::new(LogKind::JetStream, DbKind::Sqlite);
    opts.nats_url = Some(nats.url());
    let app = spawn_app_with(opts).await;
    acme(&app).await;
    let load = Load::start(Arc::new(app), 8);
    load.wait_acked("200 acknowledged webhooks", 60, 200).await;
    nats.kill();
    let at_kill = load.acked();
    // During the outage: refusals (Meta will retry), never a 200 for what cannot be kept.
    load.wait_refused("refusals during the outage", 60, 16)
        .await;
    nats.restart().await;
    load.wait_acked("200 more acknowledged after the restart", 90, at_kill + 200)
        .await;
    let (app, _, _) = load.finish(true).await;
    app.stop().await;
}

/// The streams' leader in a cluster: `server_name` of the node that leads it.
async fn stream_leader(client: &async_nats::Client, stream: &str) -> Option<String> {
    let js = async_nats::jetstream::new(client.clone());
    let mut s = js.get_stream(stream).await.ok()?;
    let info = s.info().await.ok()?;
    info.cluster.as_ref()?.leader.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_losing_its_stream_leader_loses_no_acknowledged_webhook() {
    let cluster = NatsCluster::start().await;
    let mut opts = TestOptions::new(LogKind::JetStream, DbKind::Sqlite);
    opts.nats_url = Some(cluster.urls());
    opts.configure = Some(|cfg| {
        cfg.nats.as_mut().expect("JetStream settings").replicas = 3;
    });
    let app = spawn_app_with(opts).await;
    acme(&app).await;
    let ns = app.app.ctx.log.namespace().clone();
    let raw_stream = ns.stream_name(StreamKind::Raw);
    let domain_stream = ns.stream_name(StreamKind::Domain);
    let observer = cluster.observer().await;
    let js = async_nats::jetstream::new(observer.clone());
    let replicas = js
        .get_stream(&raw_stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .num_replicas;
    assert_eq!(replicas, 3, "the raw stream is not replicated");

    let load = Load::start(Arc::new(app), 8);
    load.wait_acked("200 acknowledged webhooks", 60, 300).await;
    let leader = stream_leader(&observer, &raw_stream)
        .await
        .expect("the raw stream has a leader");
    let domain_leader = stream_leader(&observer, &domain_stream).await;
    let at_kill = load.acked();
    let killed = Instant::now();
    cluster.node(&leader).kill();
    // Ingest resumes on a new leader without the dead node coming back.
    load.wait_acked(
        "the next acknowledged webhook after the kill",
        60,
        at_kill + 1,
    )
    .await;
    let first_after = killed.elapsed();
    load.wait_acked("300 more acknowledged after the kill", 90, at_kill + 300)
        .await;
    let resumed = killed.elapsed();
    // The observer may have been connected to the dead node: it reconnects to
    // another, so the question is asked until it is answered.
    let asked = Instant::now();
    let new_leader = loop {
        match stream_leader(&observer, &raw_stream).await {
            Some(l) if l != leader => break l,
            other => assert!(
                asked.elapsed() < Duration::from_secs(30),
                "no new leader of the raw stream 30 s after 300 webhooks were taken (last answer {other:?}); node logs:\n{}",
                cluster.logs()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "raw stream leader {leader} (domain stream leader {domain_leader:?}) SIGKILLed after {at_kill} acknowledged webhooks; \
         new leader {new_leader}; the next 200 came {first_after:?} after the kill, 300 more within {resumed:?}"
    );
    // Requests in flight during the election are refused or wait for it; which
    // ones do depends on timing, so here refusals are allowed, not required.
    let (app, total, _) = load.finish(false).await;
    replay_equals_live(&app).await;
    eprintln!("{total} webhooks in all, each processed once; replay equals live");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_webhook_load_delays_projections_and_loses_nothing() {
    let pg = PrivatePostgres::start();
    let mut opts = TestOptions::new(LogKind::JetStream, DbKind::Postgres);
    opts.database_url = Some(pg.url());
    let app = spawn_app_with(opts).await;
    acme(&app).await;
    let load = Load::start(Arc::new(app), 8);
    load.wait_acked("200 acknowledged webhooks", 60, 200).await;
    pg.crash();
    let at_crash = load.acked();
    // The 200 needs the log only: ingest goes on while the read models are gone.
    load.wait_acked(
        "webhooks acknowledged while PostgreSQL is down",
        60,
        at_crash + 200,
    )
    .await;
    let processed_while_down = app_processed(&load.app);
    pg.start_server();
    let restarted = Instant::now();
    load.wait_acked("200 more after PostgreSQL is back", 90, at_crash + 400)
        .await;
    let (app, total, refused) = load.finish(false).await;
    assert_eq!(refused, 0, "a webhook was refused although the log was up");
    app.settle().await;
    eprintln!(
        "PostgreSQL crashed after {at_crash} webhooks and restarted; {total} webhooks in all, \
         the webhook processor was at raw #{processed_while_down} while it was down; caught up {:?} after the restart",
        restarted.elapsed()
    );
    replay_equals_live(&app).await;
    app.stop().await;
}

/// The webhook processor's checkpoint as this instance last saw it (no database
/// read: the database may be down).
fn app_processed(app: &TestApp) -> u64 {
    app.app
        .ctx
        .progress
        .get(wabridge_handlers::webhooks::processor::NAME)
}

/// A small tmpfs mounted on a temp dir, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` when this process may not mount (not root): the caller skips.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::Builder::new()
            .prefix("wabridge-it-tmpfs-")
            .tempdir()
            .unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        ok.then_some(Tmpfs { dir })
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fills the file system: writes `filler` until the disk is full, down to the
    /// last 4 KiB block.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path().join("filler")).unwrap();
        for chunk in [1 << 20, 4096] {
            let buf = vec![0xa5u8; chunk];
            while f.write_all(&buf).is_ok() {}
        }
        let _ = f.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.path().join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_embedded_log_refuses_and_recovers() {
    let Some(disk) = Tmpfs::mount("64m") else {
        eprintln!(
            "SKIPPED: mounting a tmpfs needs root; run the suite as root to test a full disk"
        );
        return;
    };
    let mut opts = TestOptions::new(LogKind::Embedded, DbKind::Sqlite);
    opts.data_dir = Some(disk.path().join("data"));
    let app = spawn_app_with(opts).await;
    acme(&app).await;
    let load = Load::start(Arc::new(app), 8);
    load.wait_acked("200 acknowledged webhooks", 60, 200).await;
    disk.fill();
    let at_full = load.acked();
    load.wait_refused("refusals on the full disk", 60, 16).await;
    let acked_while_full = load.acked() - at_full;
    disk.free();
    let freed = Instant::now();
    load.wait_acked(
        "200 more acknowledged once space returns",
        90,
        at_full + 200,
    )
    .await;
    let recovered = freed.elapsed();
    let (app, total, refused) = load.finish(true).await;
    eprintln!(
        "disk filled after {at_full} webhooks ({acked_while_full} more taken into space SQLite had left); \
         {refused} refused while full; 200 more taken {recovered:?} after space returned; {total} in all"
    );
    replay_equals_live(&app).await;
    app.stop().await;
    drop(disk);
}
