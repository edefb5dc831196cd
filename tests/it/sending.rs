//! Sending against the project's Graph API simulator: end to end on both logs,
//! idempotency under races, the consent gate and the service window, rate limits
//! (also across two instances), fairness between workspaces, retries and permanent
//! errors by code, a crash between the call and its outcome, and bad input.

use std::{collections::HashMap, time::Duration};

use reqwest::StatusCode;
use serde_json::{json, Value};
use wabridge::dev::{
    graph_sim::{GraphSim, Script, SimConfig},
    webhook::{build, Kind, WebhookSpec},
};
use wabridge_events::StreamKind;

use crate::support::app::{
    assert_problem, fixture, spawn_app_with, DbKind, LogKind, TestApp, TestOptions, APP_SECRET,
};

const WABA: &str = "300100200300400";
const NUMBER: &str = "700800900100200";
const TOKEN: &str = "EAAG-test-token-for-the-simulator";

/// A running simulator.
pub struct Sim {
    /// The simulator (scripts, calls).
    pub sim: GraphSim,
    /// Its base URL.
    pub url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Starts a simulator whose numbers are ours.
pub async fn start_sim(mut cfg: SimConfig) -> Sim {
    cfg.app_secret = Some(APP_SECRET.into());
    cfg.numbers
        .insert(NUMBER.into(), (WABA.into(), "15551230000".into()));
    cfg.numbers.insert(
        "700800900100299".into(),
        ("300100200300499".into(), "15551230099".into()),
    );
    let sim = GraphSim::new(cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(sim.clone().serve(listener, async move {
        let _ = rx.await;
    }));
    Sim {
        sim,
        url,
        _stop: tx,
    }
}

/// A wabridge against a simulator, with workspace `acme` holding `NUMBER` and its
/// token, and a generous rate limit (tests of the limit set their own).
pub async fn setup_with(
    log: LogKind,
    db: DbKind,
    cfg: SimConfig,
    configure: Option<fn(&mut wabridge::config::Config)>,
) -> (TestApp, Sim, String) {
    let sim = start_sim(cfg).await;
    let mut opts = TestOptions::new(log, db);
    opts.graph_url = Some(sim.url.clone());
    opts.configure = configure;
    let app = spawn_app_with(opts).await;
    sim.sim.set_webhook_url(&app.url("/webhooks/meta"));
    let key = app.workspace("acme").await;
    app.claim("acme", NUMBER, WABA).await;
    let r = app
        .put(
            &format!("/v1/workspaces/acme/phone-numbers/{NUMBER}/token"),
            &key,
            json!({"access_token": TOKEN}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = app
        .put(
            "/v1/workspaces/acme/rate-limit",
            &key,
            json!({"requests_per_second": 1000.0, "burst": 1000}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    (app, sim, key)
}

async fn setup(log: LogKind, db: DbKind) -> (TestApp, Sim, String) {
    setup_with(log, db, SimConfig::default(), None).await
}

/// The contact writes to the business (opens the 24-hour window).
async fn inbound(app: &TestApp, from: &str, text: &str) {
    let body = build(&WebhookSpec {
        kind: Kind::Text,
        phone_number_id: NUMBER.into(),
        waba_id: WABA.into(),
        from: from.into(),
        text: Some(text.into()),
        ..WebhookSpec::default()
    });
    let r = app.signed_webhook(&body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

async fn send(
    app: &TestApp,
    key: &str,
    idem: Option<&str>,
    body: Value,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let mut req = reqwest::Client::new()
        .post(app.url("/v1/workspaces/acme/messages"))
        .bearer_auth(key)
        .json(&body);
    if let Some(k) = idem {
        req = req.header("Idempotency-Key", k);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let json = res.json::<Value>().await.unwrap_or(Value::Null);
    (status, json, headers)
}

fn text_to(to: &str, body: &str) -> Value {
    json!({"to": format!("+{to}"), "type": "text", "text": {"body": body}})
}

/// Polls a message until `done` holds (or panics after 30 s).
async fn wait_message(app: &TestApp, key: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = app
            .get(&format!("/v1/workspaces/acme/messages/{id}"), key)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        if done(&r.json) {
            return r.json;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "message never got there: {}",
            r.json
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn calls_to(sim: &Sim, to: &str) -> Vec<Value> {
    sim.sim
        .calls_to("/messages")
        .into_iter()
        .filter(|c| c.body["to"] == format!("+{to}") || c.body["recipient"] == to)
        .map(|c| c.body)
        .collect()
}

async fn end_to_end(log: LogKind, db: DbKind) {
    let (app, sim, key) = setup(log, db).await;
    inbound(&app, "447700900123", "hello").await;
    let (status, body, headers) = send(
        &app,
        &key,
        Some("order-42"),
        text_to("447700900123", "Your order shipped"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "accepted");
    let id = body["id"].as_str().unwrap().to_string();
    assert!(headers.contains_key("ratelimit"), "{headers:?}");
    assert!(headers.contains_key("ratelimit-policy"), "{headers:?}");
    let m = wait_message(&app, &key, &id, |m| m["status"] == "read").await;
    assert!(m["wamid"].as_str().unwrap().starts_with("wamid."), "{m}");
    assert_eq!(m["to"], "447700900123");
    let steps: Vec<&str> = m["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["accepted", "sending", "sent", "delivered", "read"],
        "{m}"
    );
    // Exactly Meta's documented body, with the token from the vault.
    let calls = sim.sim.calls_to("/messages");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].path, format!("/v25.0/{NUMBER}/messages"));
    assert_eq!(
        calls[0].authorization.as_deref(),
        Some(&*format!("Bearer {TOKEN}"))
    );
    assert_eq!(
        calls[0].body,
        json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": "+447700900123",
               "type": "text", "text": {"body": "Your order shipped"}, "biz_opaque_callback_data": id})
    );
    // Listed, and filterable.
    let r = app
        .get(
            "/v1/workspaces/acme/messages?status=read&to=447700900123",
            &key,
        )
        .await;
    assert_eq!(r.json["items"].as_array().unwrap().len(), 1, "{}", r.json);
    let r = app
        .get("/v1/workspaces/acme/messages?status=failed", &key)
        .await;
    assert!(r.json["items"].as_array().unwrap().is_empty(), "{}", r.json);
    // The token never shows in the log.
    let all = app
        .app
        .ctx
        .log
        .read(
            StreamKind::Domain,
            wabridge_events::ReadFrom::Seq(1),
            None,
            100_000,
        )
        .await
        .unwrap();
    assert!(all
        .iter()
        .all(|e| !String::from_utf8_lossy(&e.payload).contains(TOKEN)));
}

#[tokio::test]
async fn a_send_end_to_end_embedded() {
    end_to_end(LogKind::Embedded, DbKind::Sqlite).await;
}

#[tokio::test]
async fn a_send_end_to_end_jetstream() {
    end_to_end(LogKind::JetStream, DbKind::Postgres).await;
}

#[tokio::test]
async fn one_key_fifty_racing_requests_one_answer_one_call() {
    let (app, sim, key) = setup(LogKind::JetStream, DbKind::Sqlite).await;
    inbound(&app, "447700900124", "hi").await;
    let body = text_to("447700900124", "once only");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (url, key, body) = (
                app.url("/v1/workspaces/acme/messages"),
                key.clone(),
                body.clone(),
            );
            tokio::spawn(async move {
                let res = reqwest::Client::new()
                    .post(url)
                    .bearer_auth(key)
                    .header("Idempotency-Key", "race-1")
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                (res.status(), res.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        ids.insert(body["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = ids.into_iter().next().unwrap();
    wait_message(&app, &key, &id, |m| m["status"] == "read").await;
    assert_eq!(calls_to(&sim, "447700900124").len(), 1);
    assert_eq!(
        app.events_of(Some("acme"), "message.send_requested")
            .await
            .len(),
        1
    );
    // The same key with another body is a conflict, and appends nothing.
    let (status, body, _) = send(
        &app,
        &key,
        Some("race-1"),
        text_to("447700900124", "another"),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "idempotency_conflict");
    // The same body with its keys in another order is the same request.
    let reordered = json!({"text": {"body": "once only"}, "type": "text", "to": "+447700900124"});
    let (status, body, _) = send(&app, &key, Some("race-1"), reordered).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["id"], id);
}

async fn stop_then_send(log: LogKind, db: DbKind) {
    let (app, sim, key) = setup(log, db).await;
    let mut through = 0;
    for i in 0..200 {
        let who = format!("4477009{:05}", 30_000 + i);
        inbound(&app, &who, "STOP").await;
        let (status, body, _) = send(&app, &key, None, text_to(&who, "a deal for you")).await;
        match status {
            StatusCode::UNPROCESSABLE_ENTITY => {
                assert_eq!(body["code"], "contact_opted_out", "{body}")
            }
            other => {
                through += 1;
                eprintln!("send {i} to an opted-out contact answered {other}: {body}");
            }
        }
    }
    assert_eq!(through, 0, "sends to opted-out contacts got through");
    assert_eq!(
        app.events_of(Some("acme"), "message.send_blocked")
            .await
            .len(),
        200
    );
    assert!(sim.sim.calls_to("/messages").is_empty());
    // START restores; a request refused before does not hold its Idempotency-Key.
    let who = "447700930000";
    inbound(&app, who, "STOP").await;
    let (status, _, _) = send(&app, &key, Some("welcome-1"), text_to(who, "welcome back")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    inbound(&app, who, "START").await;
    let (status, body, _) = send(&app, &key, Some("welcome-1"), text_to(who, "welcome back")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

#[tokio::test]
async fn stop_then_an_immediate_send_is_blocked_every_time_embedded() {
    stop_then_send(LogKind::Embedded, DbKind::Sqlite).await;
}

#[tokio::test]
async fn stop_then_an_immediate_send_is_blocked_every_time_jetstream() {
    stop_then_send(LogKind::JetStream, DbKind::Postgres).await;
}

fn template(to: &str, name: &str, category: Option<&str>) -> Value {
    let mut t = json!({"name": name, "language": "en_US"});
    if let Some(c) = category {
        t["category"] = json!(c);
    }
    json!({"to": to, "type": "template", "template": t})
}

#[tokio::test]
async fn a_marketing_opt_out_blocks_marketing_templates_only() {
    let (app, sim, key) = setup(LogKind::Embedded, DbKind::Sqlite).await;
    let r = app
        .signed_webhook(&fixture("inbound_button_stop_promotions.json"))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let who = "5521977776666";
    let (status, body, _) = send(
        &app,
        &key,
        None,
        template(who, "spring_sale", Some("marketing")),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["code"], "contact_opted_out");
    // No category given and none known: treated as marketing.
    let (status, _, _) = send(&app, &key, None, template(who, "spring_sale", None)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, body, _) = send(
        &app,
        &key,
        None,
        template(who, "order_update", Some("utility")),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // Meta's template webhook says the template is UTILITY: it goes.
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": WABA, "time": 1767226600, "changes": [{"field": "message_template_status_update",
        "value": {"event": "APPROVED", "message_template_id": 1689556908129832_u64, "message_template_name": "order_confirmation", "message_template_language": "en-US", "reason": "NONE", "message_template_category": "UTILITY"}}]}]});
    let r = app.signed_webhook(body.to_string().as_bytes()).await;
    assert_eq!(r.status, StatusCode::OK);
    let (status, body, _) = send(&app, &key, None, template(who, "order_confirmation", None)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // A plain text (once the contact writes again) is not marketing.
    inbound(&app, who, "obrigado").await;
    let (status, body, _) = send(&app, &key, None, text_to(who, "your receipt")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    wait_message(&app, &key, &id, |m| m["status"] == "read").await;
    assert_eq!(calls_to(&sim, who).len(), 3);
}

#[tokio::test]
async fn free_form_messages_need_the_service_window_templates_do_not() {
    let (app, _sim, key) = setup(LogKind::Embedded, DbKind::Sqlite).await;
    let (status, body, _) = send(&app, &key, None, text_to("447700900555", "hi")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["code"], "outside_service_window");
    assert!(
        body["detail"].as_str().unwrap().contains("never written"),
        "{body}"
    );
    // A message from 25 hours ago does not open it; the time is named.
    let old = chrono_like_ago(25 * 3600);
    let mut v: Value = serde_json::from_slice(&build(&WebhookSpec {
        kind: Kind::Text,
        phone_number_id: NUMBER.into(),
        waba_id: WABA.into(),
        from: "447700900556".into(),
        ..WebhookSpec::default()
    }))
    .unwrap();
    v["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"] = json!(old.to_string());
    let r = app.signed_webhook(v.to_string().as_bytes()).await;
    assert_eq!(r.status, StatusCode::OK);
    let (status, body, _) = send(&app, &key, None, text_to("447700900556", "hi")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("more than 24 hours ago"),
        "{body}"
    );
    let (status, body, _) = send(
        &app,
        &key,
        None,
        template("447700900556", "order_update", Some("utility")),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // A new message opens it again.
    inbound(&app, "447700900556", "are you there?").await;
    let (status, body, _) = send(&app, &key, None, text_to("447700900556", "yes")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

fn chrono_like_ago(secs: u64) -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - secs
}

#[tokio::test]
async fn over_the_limit_is_429_with_the_rate_limit_headers_and_the_ledger_counts_it() {
    let (app, _sim, key) = setup(LogKind::Embedded, DbKind::Sqlite).await;
    inbound(&app, "447700900600", "hi").await;
    let r = app
        .put(
            "/v1/workspaces/acme/rate-limit",
            &key,
            json!({"requests_per_second": 0.5, "burst": 3}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["burst"], 3);
    let mut statuses = vec![];
    let mut last = None;
    for i in 0..5 {
        let (status, body, headers) =
            send(&app, &key, None, text_to("447700900600", &format!("m{i}"))).await;
        statuses.push(status.as_u16());
        last = Some((body, headers));
    }
    assert_eq!(statuses, [202, 202, 202, 429, 429]);
    let (body, headers) = last.unwrap();
    assert_eq!(body["code"], "rate_limited");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{headers:?}");
    assert!(
        headers["ratelimit"].to_str().unwrap().contains("r=0"),
        "{headers:?}"
    );
    assert!(
        headers["ratelimit-policy"]
            .to_str()
            .unwrap()
            .contains("q=3"),
        "{headers:?}"
    );
    // The ledger: 3 admitted, 2 refused this minute (refusals are recorded within a second).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = app.get("/v1/workspaces/acme/rate-limit", &key).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let u = &r.json["usage"][0];
        if u["admitted"] == 3 && u["rejected"] == 2 {
            assert_eq!(r.json["requests_per_second"], 0.5);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", r.json);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("wabridge_rate_limit_rejections_total 2"),
        "{metrics}"
    );
    let audit = app.get("/v1/workspaces/acme/audit", &key).await;
    assert!(audit.text.contains("rate_limit"), "{}", audit.text);
}

#[tokio::test]
async fn two_instances_on_one_jetstream_share_the_limit() {
    let (app, _sim, key) = setup(LogKind::JetStream, DbKind::Postgres).await;
    inbound(&app, "447700900700", "hi").await;
    let (rps, burst) = (20.0, 10u32);
    let r = app
        .put(
            "/v1/workspaces/acme/rate-limit",
            &key,
            json!({"requests_per_second": rps, "burst": burst}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // A second instance on the same log and database, API only.
    let mut opts = app.opts.clone();
    opts.workers = false;
    opts.data_dir = None;
    opts.operator_key = Some(app.operator.clone());
    let second = spawn_app_with(opts).await;
    let started = tokio::time::Instant::now();
    let run_for = Duration::from_secs(2);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let url = if i % 2 == 0 {
                app.url("/v1/workspaces/acme/messages")
            } else {
                second.url("/v1/workspaces/acme/messages")
            };
            let key = key.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut admitted = 0u32;
                while started.elapsed() < run_for {
                    let res = client
                        .post(&url)
                        .bearer_auth(&key)
                        .json(&text_to("447700900700", "x"))
                        .send()
                        .await
                        .unwrap();
                    match res.status().as_u16() {
                        202 => admitted += 1,
                        429 => {}
                        other => panic!("unexpected {other}: {}", res.text().await.unwrap()),
                    }
                }
                admitted
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let bound = burst as f64 + rps * elapsed + 1.0;
    assert!(
        (admitted as f64) <= bound,
        "admitted {admitted} > bound {bound:.1}"
    );
    assert!(
        (admitted as f64) >= 0.6 * bound,
        "admitted {admitted}, far below the bound {bound:.1}"
    );
    second.stop().await;
}

#[tokio::test]
async fn a_quiet_workspace_is_not_held_up_by_a_noisy_one() {
    // Numbers paced at 5 messages/s: the noisy backlog takes about 10 s.
    let (app, _sim, key) = setup_with(
        LogKind::Embedded,
        DbKind::Sqlite,
        SimConfig::default(),
        Some(|c| c.number_mps = 5),
    )
    .await;
    // A second workspace with its own number and token.
    let quiet = app.workspace("quiet").await;
    app.claim("quiet", "700800900100299", "300100200300499")
        .await;
    let r = app
        .put(
            "/v1/workspaces/quiet/phone-numbers/700800900100299/token",
            &quiet,
            json!({"access_token": TOKEN}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let body = build(&WebhookSpec {
        kind: Kind::Text,
        phone_number_id: "700800900100299".into(),
        waba_id: "300100200300499".into(),
        from: "447700900801".into(),
        ..WebhookSpec::default()
    });
    assert_eq!(app.signed_webhook(&body).await.status, StatusCode::OK);
    // The noisy workspace queues 50 messages on its number.
    let mut noisy_ids = vec![];
    for i in 0..50 {
        let who = format!("4477009{:05}", 40_000 + i);
        inbound(&app, &who, "hi").await;
        let (status, body, _) = send(&app, &key, None, text_to(&who, "sale")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        noisy_ids.push(body["id"].as_str().unwrap().to_string());
    }
    let r = app
        .post(
            "/v1/workspaces/quiet/messages",
            &quiet,
            text_to("447700900801", "your code"),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let quiet_id = r.json["id"].as_str().unwrap().to_string();
    // The quiet message is sent before the noisy backlog is through.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let q = app
            .get(&format!("/v1/workspaces/quiet/messages/{quiet_id}"), &quiet)
            .await;
        if q.json["wamid"].is_string() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", q.json);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = app
        .get(
            &format!("/v1/workspaces/acme/messages/{}", noisy_ids.last().unwrap()),
            &key,
        )
        .await;
    assert!(
        last.json["wamid"].is_null(),
        "the noisy backlog finished first: {}",
        last.json
    );
}

#[tokio::test]
async fn retryable_and_permanent_codes() {
    let (app, sim, key) = setup(LogKind::Embedded, DbKind::Sqlite).await;
    let retryable = [130429, 131056, 131057, 1, 2, 131000];
    let permanent: &[(i64, &str)] = &[
        (131026, "invalid_recipient"),
        (131047, "outside_service_window"),
        (131051, "unsupported_message_type"),
        (100, "invalid_parameter"),
        (132000, "template_error"),
        (132016, "template_error"),
        (368, "policy_violation"),
    ];
    let mut ids = HashMap::new();
    for (i, code) in retryable.iter().enumerate() {
        let who = format!("4477009{:05}", 50_000 + i);
        inbound(&app, &who, "hi").await;
        sim.sim.script_recipient(&who, Script::fail(*code, 1));
        let (status, body, _) = send(&app, &key, None, text_to(&who, "x")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        ids.insert(body["id"].as_str().unwrap().to_string(), (*code, None, who));
    }
    for (i, (code, reason)) in permanent.iter().enumerate() {
        let who = format!("4477009{:05}", 51_000 + i);
        inbound(&app, &who, "hi").await;
        sim.sim.script_recipient(&who, Script::fail(*code, 1));
        let (status, body, _) = send(&app, &key, None, text_to(&who, "x")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        ids.insert(
            body["id"].as_str().unwrap().to_string(),
            (*code, Some(*reason), who),
        );
    }
    for (id, (code, reason, who)) in &ids {
        match reason {
            None => {
                let m = wait_message(&app, &key, id, |m| m["status"] == "read").await;
                let retried = m["history"].as_array().unwrap().iter().any(|h| {
                    h["detail"].as_str().unwrap().starts_with("retrying")
                        && h["error_code"] == *code
                });
                assert!(retried, "{code}: {m}");
                assert_eq!(
                    calls_to(&sim, who).len(),
                    2,
                    "{code}: one failure, one success"
                );
            }
            Some(reason) => {
                let m = wait_message(&app, &key, id, |m| m["status"] == "failed").await;
                assert_eq!(m["error"]["code"], *code, "{m}");
                assert_eq!(m["error"]["reason"], *reason, "{m}");
                assert!(m["error"]["title"].is_string(), "{m}");
                assert_eq!(calls_to(&sim, who).len(), 1, "{code}: never retried");
            }
        }
    }
}

#[tokio::test]
async fn error_190_invalidates_the_token_and_131050_opts_out_of_marketing() {
    let (app, sim, key) = setup(LogKind::Embedded, DbKind::Sqlite).await;
    inbound(&app, "447700900901", "hi").await;
    sim.sim
        .script_recipient("447700900901", Script::fail(131050, 1));
    let (_, body, _) = send(
        &app,
        &key,
        None,
        template("447700900901", "promo", Some("marketing")),
    )
    .await;
    let id = body["id"].as_str().unwrap().to_string();
    let m = wait_message(&app, &key, &id, |m| m["status"] == "failed").await;
    assert_eq!(m["error"]["reason"], "marketing_opted_out", "{m}");
    let c = app
        .get("/v1/workspaces/acme/contacts/447700900901/consent", &key)
        .await;
    assert_eq!(c.json["marketing_opted_out"], true, "{}", c.json);
    assert_eq!(c.json["source"]["kind"], "delivery_error", "{}", c.json);
    // The next marketing template is refused before it costs a call.
    let (status, _, _) = send(
        &app,
        &key,
        None,
        template("447700900901", "promo", Some("marketing")),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    sim.sim
        .script_recipient("447700900902", Script::fail(190, 1));
    inbound(&app, "447700900902", "hi").await;
    let (_, body, _) = send(&app, &key, None, text_to("447700900902", "x")).await;
    let id = body["id"].as_str().unwrap().to_string();
    let m = wait_message(&app, &key, &id, |m| m["status"] == "failed").await;
    assert_eq!(m["error"]["reason"], "token_invalid", "{m}");
    let t = app
        .get(
            &format!("/v1/workspaces/acme/phone-numbers/{NUMBER}/token"),
            &key,
        )
        .await;
    assert_eq!(t.json["status"], "invalid", "{}", t.json);
    // With no usable token nothing is posted.
    let before = sim.sim.calls_to("/messages").len();
    inbound(&app, "447700900903", "hi").await;
    let (_, body, _) = send(&app, &key, None, text_to("447700900903", "x")).await;
    let id = body["id"].as_str().unwrap().to_string();
    let m = wait_message(&app, &key, &id, |m| m["status"] == "failed").await;
    assert_eq!(m["error"]["reason"], "no_token", "{m}");
    assert_eq!(sim.sim.calls_to("/messages").len(), before);
}

#[tokio::test]
async fn meta_unreachable_keeps_the_send_sending_with_retries() {
    let mut opts = TestOptions::new(LogKind::Embedded, DbKind::Sqlite);
    opts.graph_url = Some("http://127.0.0.1:9".into());
    let app = spawn_app_with(opts).await;
    let key = app.workspace("acme").await;
    app.claim("acme", NUMBER, WABA).await;
    app.put(
        &format!("/v1/workspaces/acme/phone-numbers/{NUMBER}/token"),
        &key,
        json!({"access_token": TOKEN}),
    )
    .await;
    inbound(&app, "447700900950", "hi").await;
    let (status, body, _) = send(&app, &key, None, text_to("447700900950", "x")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let m = wait_message(&app, &key, &id, |m| m["retry_at"].is_string()).await;
    assert_eq!(m["status"], "sending", "{m}");
    assert_eq!(m["error"]["reason"], "no_response", "{m}");
}

#[tokio::test]
async fn a_crash_between_the_call_and_its_outcome_is_never_re_posted() {
    let (app, sim, key) = setup(LogKind::Embedded, DbKind::Sqlite).await;
    inbound(&app, "447700900960", "hi").await;
    sim.sim
        .script_recipient("447700900960", Script::Hang { times: 1 });
    let (_, body, _) = send(&app, &key, None, text_to("447700900960", "x")).await;
    let id = body["id"].as_str().unwrap().to_string();
    // The call is in flight (recorded as attempted), then the process goes.
    wait_message(&app, &key, &id, |m| m["status"] == "sending").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sim.sim.hanging() == 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let app = app.restart().await;
    let m = wait_message(&app, &key, &id, |m| m["status"] == "unknown").await;
    assert_eq!(m["error"]["reason"], "outcome_unknown", "{m}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        calls_to(&sim, "447700900960").len(),
        1,
        "re-posted after the restart"
    );
    // Meta's status webhook naming the message resolves it.
    let status = json!({"object": "whatsapp_business_account", "entry": [{"id": WABA, "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "15551230000", "phone_number_id": NUMBER},
        "statuses": [{"id": "wamid.HBgMNDQ3NzAwOTAwOTYwFQIAERgSQUJDREVGMDEyMzQ1Njc4OQA=", "status": "delivered", "timestamp": chrono_like_ago(0).to_string(),
            "recipient_id": "447700900960", "biz_opaque_callback_data": id}]}}]}]});
    assert_eq!(
        app.signed_webhook(status.to_string().as_bytes())
            .await
            .status,
        StatusCode::OK
    );
    let m = wait_message(&app, &key, &id, |m| m["status"] == "delivered").await;
    assert!(m["wamid"].is_string(), "{m}");
}

#[tokio::test]
async fn out_of_order_statuses_never_move_a_message_back() {
    let (app, _sim, key) = setup(LogKind::Embedded, DbKind::Sqlite).await;
    inbound(&app, "447700900970", "hi").await;
    let (_, body, _) = send(&app, &key, None, text_to("447700900970", "x")).await;
    let id = body["id"].as_str().unwrap().to_string();
    let m = wait_message(&app, &key, &id, |m| m["status"] == "read").await;
    let wamid = m["wamid"].as_str().unwrap().to_string();
    for s in ["delivered", "sent"] {
        let status = json!({"object": "whatsapp_business_account", "entry": [{"id": WABA, "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp", "metadata": {"display_phone_number": "15551230000", "phone_number_id": NUMBER},
            "statuses": [{"id": wamid, "status": s, "timestamp": "1767225600", "recipient_id": "447700900970"}]}}]}]});
        assert_eq!(
            app.signed_webhook(status.to_string().as_bytes())
                .await
                .status,
            StatusCode::OK
        );
    }
    app.settle().await;
    let m = app
        .get(&format!("/v1/workspaces/acme/messages/{id}"), &key)
        .await;
    assert_eq!(m.json["status"], "read", "{}", m.json);
}

#[tokio::test]
async fn bad_send_requests_are_400_and_append_nothing() {
    let (app, _sim, key) = setup(LogKind::Embedded, DbKind::Sqlite).await;
    inbound(&app, "447700900980", "hi").await;
    app.settle().await;
    let head = app.app.ctx.log.last_seq(StreamKind::Domain).await.unwrap();
    let long = "x".repeat(4097);
    let cases = [
        json!({"to": "447700900980", "type": "text"}),
        json!({"to": "447700900980", "type": "text", "text": {"body": long}}),
        json!({"to": "hello", "type": "text", "text": {"body": "x"}}),
        json!({"to": "447700900980", "recipient": "US.1", "type": "text", "text": {"body": "x"}}),
        json!({"type": "text", "text": {"body": "x"}}),
        json!({"to": "447700900980", "type": "fax", "text": {"body": "x"}}),
        json!({"to": "447700900980", "type": "template", "template": {"name": "x"}}),
        json!({"to": "447700900980", "type": "image", "image": {"link": "https://e.x/a.png", "id": "1"}}),
        json!({"to": "447700900980", "type": "image", "image": {"caption": "x".repeat(1025), "id": "1"}}),
        json!({"to": "447700900980", "type": "interactive", "interactive": {"type": "button", "body": {"text": "pick"}, "action": {"buttons": [
            {"type": "reply", "reply": {"id": "1", "title": "a"}}, {"type": "reply", "reply": {"id": "2", "title": "b"}},
            {"type": "reply", "reply": {"id": "3", "title": "c"}}, {"type": "reply", "reply": {"id": "4", "title": "d"}}]}}}),
        json!({"recipient": "US.13491208655302741918", "type": "template", "template": {"name": "otp", "language": "en_US", "category": "authentication"}}),
        json!({"to": "447700900980", "type": "text", "text": {"body": "x"}, "extra": 1}),
    ];
    for body in &cases {
        let (status, answer, _) = send(&app, &key, None, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {answer}");
        assert_eq!(answer["code"], "validation_failed", "{answer}");
    }
    let (status, answer, _) = send(
        &app,
        &key,
        Some(&"k".repeat(256)),
        text_to("447700900980", "x"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let r = app
        .put(
            "/v1/workspaces/acme/rate-limit",
            &key,
            json!({"requests_per_second": 0, "burst": 1}),
        )
        .await;
    assert_problem(&r, 400, "validation_failed", "zero rate");
    let r = app
        .get("/v1/workspaces/acme/messages?status=lost", &key)
        .await;
    assert_problem(&r, 400, "validation_failed", "bad status");
    app.settle().await;
    assert_eq!(
        app.app.ctx.log.last_seq(StreamKind::Domain).await.unwrap(),
        head,
        "bad input appended something"
    );
    let r = app.get("/v1/workspaces/acme/messages/msg_nope", &key).await;
    assert_problem(&r, 404, "not_found", "unknown message");
}

/// The README's quick start, with the project's own commands: `wabridge dev
/// graph-sim` as Meta, `wabridge dev webhook` as a customer writing in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_loop_with_the_dev_commands() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sim_url = format!("http://127.0.0.1:{port}");
    let mut opts = TestOptions::new(LogKind::Embedded, DbKind::Sqlite);
    opts.graph_url = Some(sim_url.clone());
    let app = spawn_app_with(opts).await;
    let mut sim = std::process::Command::new(env!("CARGO_BIN_EXE_wabridge"))
        .args([
            "dev",
            "graph-sim",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--webhook-url",
            &app.url("/webhooks/meta"),
        ])
        .env("META_APP_SECRET", APP_SECRET)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let key = app.workspace("acme").await;
    let (number, waba) = (
        wabridge::dev::webhook::DEFAULT_PHONE_NUMBER_ID,
        wabridge::dev::webhook::DEFAULT_WABA_ID,
    );
    app.claim("acme", number, waba).await;
    app.put(
        &format!("/v1/workspaces/acme/phone-numbers/{number}/token"),
        &key,
        json!({"access_token": TOKEN}),
    )
    .await;
    let dev_webhook = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wabridge"))
            .args(["dev", "webhook"])
            .args(args)
            .args(["--to", &app.url("/webhooks/meta")])
            .env("META_APP_SECRET", APP_SECRET)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    dev_webhook(&[
        "text",
        "--from",
        "447700900990",
        "--text",
        "Hi, is my order ready?",
    ]);
    // Wait for the simulator to listen.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{sim_url}/v25.0/1")).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "graph-sim did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = app
        .post(
            "/v1/workspaces/acme/messages",
            &key,
            text_to("447700900990", "Yes, it ships today"),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let id = r.json["id"].as_str().unwrap().to_string();
    wait_message(&app, &key, &id, |m| m["status"] == "read").await;
    // The customer says STOP: the next send is refused.
    dev_webhook(&["stop", "--from", "447700900990"]);
    let r = app
        .post(
            "/v1/workspaces/acme/messages",
            &key,
            text_to("447700900990", "One more thing"),
        )
        .await;
    assert_problem(&r, 422, "contact_opted_out", "after STOP");
    let _ = sim.kill();
    let _ = sim.wait();
}
