//! Faults under load, in the deployed shape (API and workers in one process): the
//! JetStream server SIGKILLed in the middle of a webhook load and restarted. Every
//! webhook answered 200 must be in the log afterwards and processed exactly once;
//! requests during the outage are refused (503, never a 200), and Meta's retry of
//! them then succeeds.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use wabridge::dev::webhook::{build, signature, Kind, WebhookSpec};
use wabridge_events::StreamKind;

use crate::support::{
    app::{spawn_app_with, DbKind, LogKind, TestApp, TestOptions, APP_SECRET},
    NatsServer,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_sigkilled_under_webhook_load_loses_no_acknowledged_webhook() {
    let nats = NatsServer::start().await;
    let mut opts = TestOptions::new(LogKind::JetStream, DbKind::Sqlite);
    opts.nats_url = Some(nats.url());
    let app = spawn_app_with(opts).await;
    app.workspace("acme").await;
    app.claim("acme", NUMBER, WABA).await;

    let answers: Answers = Arc::default();
    let waits: Waits = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let app = Arc::new(app);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut senders = vec![];
    for _ in 0..8 {
        let (app, answers, waits, next, stop, client) = (
            app.clone(),
            answers.clone(),
            waits.clone(),
            next.clone(),
            stop.clone(),
            client.clone(),
        );
        senders.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let sent = Instant::now();
                let status = post(&client, &app, i).await;
                if status != 200 {
                    waits.lock().unwrap().push(sent.elapsed());
                }
                answers.lock().unwrap().entry(i).or_default().push(status);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    wait_until("200 acknowledged webhooks", 60, || acked(&answers) >= 200).await;
    nats.kill();
    let at_kill = acked(&answers);
    // During the outage: refusals (Meta will retry), never a 200 for what cannot be kept.
    wait_until("refusals during the outage", 60, || {
        answers
            .lock()
            .unwrap()
            .values()
            .filter(|a| a.iter().any(|s| *s != 200))
            .count()
            >= 16
    })
    .await;
    nats.restart().await;
    wait_until("200 more acknowledged after the restart", 90, || {
        acked(&answers) >= at_kill + 200
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }

    // Every answer is a 200 or a refusal Meta retries (503, or no answer).
    let mut refused = vec![];
    for (i, statuses) in answers.lock().unwrap().iter() {
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
        !refused.is_empty(),
        "no request met the outage: the test proves nothing"
    );
    // Meta retries the refused ones: now they are taken.
    for i in &refused {
        let status = post(&client, &app, *i).await;
        assert_eq!(
            status, 200,
            "the retry of webhook {i} was answered {status}"
        );
        answers.lock().unwrap().get_mut(i).unwrap().push(status);
    }

    // Every webhook is in the log and processed exactly once.
    let total = answers.lock().unwrap().len();
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
    assert!(
        missing.is_empty(),
        "{} of {total} acknowledged webhooks never became a message (first: {:?})",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
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
    let raw_head = app.app.ctx.log.last_seq(StreamKind::Raw).await.unwrap();
    assert!(
        raw_head as usize >= total,
        "{raw_head} raw events for {total} webhooks"
    );
    let mut w = waits.lock().unwrap().clone();
    w.sort();
    let (median, slowest) = (w[w.len() / 2], w[w.len() - 1]);
    eprintln!(
        "{total} webhooks, {} refused during the outage (refusals in {median:?} median, {slowest:?} at most: those in flight at the kill wait for their ack's timeout) and taken on retry, each processed once",
        refused.len()
    );
    Arc::try_unwrap(app)
        .ok()
        .expect("the only owner")
        .stop()
        .await;
}
