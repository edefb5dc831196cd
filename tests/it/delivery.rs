//! Delivery to the business's apps: the event feed (cursor, long-poll, types,
//! permissions), outbound webhooks against a real receiver (signatures verified by
//! the Python reference library, order, retries with backoff and `Retry-After`,
//! timeouts, 410, isolation of a dead endpoint, a restart mid-retry, rotation,
//! redelivery and recovery, private-address refusal), and the media proxy.

use std::{sync::Arc, time::Duration};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use wabridge::dev::webhook::{build, Kind, WebhookSpec};
use wabridge_handlers::access::Role;
use wabridge_projections::views::endpoints::Endpoints;

use crate::support::{
    app::{assert_problem, spawn_app_with, DbKind, LogKind, TestApp, TestOptions},
    receiver::{verify_with_reference_library, Receiver, Reply},
};

const WABA: &str = "300100200300555";
const NUMBER: &str = "700800900100555";

fn fast_delivery(cfg: &mut wabridge::config::Config) {
    cfg.delivery.allow_private = true;
    cfg.delivery.timeout = Duration::from_millis(800);
    cfg.delivery.policy.base = Duration::from_millis(200);
}

async fn setup(log: LogKind, db: DbKind) -> (TestApp, String) {
    let mut opts = TestOptions::new(log, db);
    opts.configure = Some(fast_delivery);
    let app = spawn_app_with(opts).await;
    let key = app.workspace("acme").await;
    app.claim("acme", NUMBER, WABA).await;
    (app, key)
}

/// A customer writes to the business: one `message.received`.
async fn inbound(app: &TestApp, text: &str) {
    inbound_to(app, NUMBER, WABA, text).await;
}

async fn inbound_to(app: &TestApp, number: &str, waba: &str, text: &str) {
    let body = build(&WebhookSpec {
        kind: Kind::Text,
        phone_number_id: number.into(),
        waba_id: waba.into(),
        from: "15550001111".into(),
        text: Some(text.into()),
        ..WebhookSpec::default()
    });
    let r = app.signed_webhook(&body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

async fn create_endpoint(
    app: &TestApp,
    key: &str,
    ws: &str,
    url: &str,
    types: Value,
) -> (String, String) {
    let r = app
        .post(
            &format!("/v1/workspaces/{ws}/endpoints"),
            key,
            json!({"url": url, "types": types, "description": "our app"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let secret = r.json["secret"].as_str().expect("the secret").to_string();
    assert!(secret.starts_with("whsec_"), "{}", r.text);
    assert_eq!(r.json["status"], "enabled");
    (r.json["id"].as_str().unwrap().to_string(), secret)
}

async fn feed(app: &TestApp, key: &str, query: &str) -> Value {
    let r = app
        .get(&format!("/v1/workspaces/acme/events{query}"), key)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json
}

async fn deliveries(app: &TestApp, key: &str, id: &str, query: &str) -> Vec<Value> {
    let r = app
        .get(
            &format!("/v1/workspaces/acme/endpoints/{id}/deliveries{query}"),
            key,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json["items"].as_array().unwrap().clone()
}

fn texts(got: &[crate::support::receiver::Received]) -> Vec<String> {
    got.iter()
        .filter(|r| r.answered == 200 && r.json()["type"] == "message.received")
        .map(|r| r.json()["data"]["text"].as_str().unwrap_or("").to_string())
        .collect()
}

// ------------------------------------------------------------------ the feed

async fn feed_pages_and_long_polls(log: LogKind, db: DbKind) {
    let (app, _key) = setup(log, db).await;
    let viewer = app.key("acme", Role::Viewer).await;
    inbound(&app, "one").await;
    inbound(&app, "two").await;
    app.settle().await;

    // From the start: the two messages, in order, in the public shape.
    let page = feed(&app, &viewer, "?types=message.received").await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{page}");
    assert_eq!(items[0]["type"], "message.received");
    assert_eq!(items[0]["data"]["text"], "one");
    assert_eq!(items[1]["data"]["text"], "two");
    for it in items {
        let keys: Vec<&String> = it.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["data", "id", "occurred_at", "type"], "{it}");
    }
    // Nothing internal, nothing sealed: no key or token events.
    let all = feed(&app, &viewer, "").await;
    for it in all["items"].as_array().unwrap() {
        let t = it["type"].as_str().unwrap();
        assert!(wabridge_handlers::feed::is_public(t), "{t} in the feed");
    }
    // Paging: limit 1, then on from the cursor.
    let first = feed(&app, &viewer, "?types=message.received&limit=1").await;
    assert_eq!(first["items"][0]["data"]["text"], "one");
    let cursor = first["next_cursor"].as_str().unwrap().to_string();
    let second = feed(
        &app,
        &viewer,
        &format!("?types=message.received&after={cursor}"),
    )
    .await;
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert_eq!(second["items"][0]["data"]["text"], "two");
    // At the end: no items, still a cursor to poll on from.
    let end_cursor = second["next_cursor"].as_str().unwrap().to_string();
    let end = feed(&app, &viewer, &format!("?after={end_cursor}")).await;
    assert_eq!(end["items"].as_array().unwrap().len(), 0, "{end}");
    assert!(end["next_cursor"].is_string());

    // Long-poll: a waiting request answers with the event that arrives during it.
    let waiting = {
        let url = app.url(&format!(
            "/v1/workspaces/acme/events?types=message.received&wait=25s&after={}",
            end["next_cursor"].as_str().unwrap()
        ));
        let viewer = viewer.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(viewer)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the long-poll answered before any event"
    );
    inbound(&app, "three").await;
    let woke = waiting.await.unwrap();
    assert_eq!(woke["items"][0]["data"]["text"], "three", "{woke}");
    // The same cursor is valid after a restart.
    let app = app.restart().await;
    let again = feed(
        &app,
        &viewer,
        &format!("?types=message.received&after={cursor}"),
    )
    .await;
    let again: Vec<&str> = again["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["data"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(again, ["two", "three"]);

    // Bad input: a cursor we did not give, an unknown type, a wait too long.
    for (q, what) in [
        ("?after=42", "after"),
        ("?types=api_key.created", "types"),
        ("?wait=5m", "wait"),
        ("?limit=0", "limit"),
    ] {
        let r = app
            .get(&format!("/v1/workspaces/acme/events{q}"), &viewer)
            .await;
        assert_problem(&r, 400, "validation_failed", what);
    }
    // Another workspace's feed does not hold ours.
    let other = app.workspace("globex").await;
    let theirs = app.get("/v1/workspaces/globex/events", &other).await;
    assert_eq!(
        theirs.json["items"].as_array().unwrap().len(),
        0,
        "{}",
        theirs.text
    );
    let r = app.get("/v1/workspaces/acme/events", &other).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    app.stop().await;
}

#[tokio::test]
async fn feed_pages_and_long_polls_embedded() {
    feed_pages_and_long_polls(LogKind::Embedded, DbKind::Sqlite).await;
}

#[tokio::test]
async fn feed_pages_and_long_polls_jetstream() {
    feed_pages_and_long_polls(LogKind::JetStream, DbKind::Postgres).await;
}

// ------------------------------------------------------------ outbound webhooks

async fn deliveries_are_signed_ordered_and_verified(log: LogKind, db: DbKind) {
    let (app, key) = setup(log, db).await;
    let rx = Receiver::start().await;
    let (id, secret) =
        create_endpoint(&app, &key, "acme", &rx.url, json!(["message.received"])).await;
    let sent: Vec<String> = (0..12).map(|i| format!("message {i}")).collect();
    for t in &sent {
        inbound(&app, t).await;
    }
    let got = rx
        .wait_for("12 deliveries", |g| texts(g).len() >= sent.len())
        .await;
    // In log order, each once, with the feed's shape and the event's id as webhook-id.
    assert_eq!(texts(&got), sent);
    let feed_items = feed(&app, &key, "?types=message.received").await;
    let feed_ids: Vec<&str> = feed_items["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    let got_ids: Vec<&str> = got.iter().map(|r| r.id()).collect();
    assert_eq!(got_ids, feed_ids);
    for r in &got {
        assert_eq!(
            r.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        assert_eq!(r.json()["id"], r.id());
    }
    // An independent implementation accepts every signature; a wrong secret fails.
    verify_with_reference_library(&secret, &got);
    let wrong = std::panic::catch_unwind(|| {
        verify_with_reference_library("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &got[..1])
    });
    assert!(wrong.is_err(), "a wrong secret must not verify");
    // Delivery state is projected: every delivery succeeded with one attempt (the
    // worker records attempts after the endpoint answered: the receiver may have
    // them before the log does).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let list = loop {
        app.settle().await;
        let list = deliveries(&app, &key, &id, "?status=succeeded").await;
        if list.len() >= sent.len() || tokio::time::Instant::now() >= deadline {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(list.len(), sent.len());
    assert!(list
        .iter()
        .all(|d| d["attempts"].as_array().unwrap().len() == 1));
    assert_eq!(list[0]["attempts"][0]["response_status"], 200);
    assert!(deliveries(&app, &key, &id, "?status=failed")
        .await
        .is_empty());
    // The endpoint never shows its secret again, and the log never holds it.
    let r = app
        .get(&format!("/v1/workspaces/acme/endpoints/{id}"), &key)
        .await;
    assert!(!r.text.contains(&secret), "{}", r.text);
    for ev in app.events_of(Some("acme"), "endpoint.created").await {
        assert!(!String::from_utf8_lossy(&ev.payload).contains(&secret["whsec_".len()..]));
    }
    // Rebuilt from the log, the deliveries read model is the same, folded in
    // batches or one event at a time.
    crate::support::app::rebuild_matches(&app, db, Arc::new(Endpoints)).await;
    crate::support::app::batch_fold_equals_one_at_a_time(&app, db, Arc::new(Endpoints)).await;
    app.stop().await;
}

#[tokio::test]
async fn deliveries_are_signed_ordered_and_verified_embedded() {
    deliveries_are_signed_ordered_and_verified(LogKind::Embedded, DbKind::Sqlite).await;
}

#[tokio::test]
async fn deliveries_are_signed_ordered_and_verified_jetstream() {
    deliveries_are_signed_ordered_and_verified(LogKind::JetStream, DbKind::Postgres).await;
}

#[tokio::test]
async fn failures_are_retried_with_backoff_honouring_retry_after() {
    let (app, key) = setup(LogKind::Embedded, DbKind::Sqlite).await;
    let rx = Receiver::start().await;
    rx.script(&[
        Reply::Status(500, None),
        Reply::Status(503, None),
        Reply::Status(429, Some("2")),
        Reply::Hang(Duration::from_secs(3)), // over the 800 ms timeout
        Reply::Status(200, None),
    ]);
    let (id, _) = create_endpoint(&app, &key, "acme", &rx.url, json!([])).await;
    inbound(&app, "retry me").await;
    inbound(&app, "after it").await;
    let got = rx
        .wait_for("the retried delivery and the next", |g| texts(g).len() >= 2)
        .await;
    // The same event five times (the same webhook-id), then the next one: in order.
    let first_id = got[0].id().to_string();
    assert!(got[..5].iter().all(|r| r.id() == first_id));
    assert_eq!(texts(&got), ["retry me", "after it"]);
    // Backoff: from about 200 ms, doubling (±25 % jitter), and Retry-After's 2 s.
    let gap = |i: usize| got[i + 1].at.duration_since(got[i].at);
    assert!(gap(0) >= Duration::from_millis(150), "{:?}", gap(0));
    assert!(gap(1) >= Duration::from_millis(300), "{:?}", gap(1));
    assert!(
        gap(2) >= Duration::from_secs(2),
        "Retry-After not honoured: {:?}",
        gap(2)
    );
    // The worker records attempts in batches, after it sent them: the receiver may
    // have the success before the log does.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let retried = loop {
        app.settle().await;
        let list = deliveries(&app, &key, &id, "").await;
        let retried = list
            .into_iter()
            .find(|d| d["event_id"] == first_id.as_str())
            .unwrap();
        if retried["status"] == "succeeded" || std::time::Instant::now() > deadline {
            break retried;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(retried["status"], "succeeded", "{retried}");
    let attempts = retried["attempts"].as_array().unwrap();
    let statuses: Vec<Value> = attempts
        .iter()
        .map(|a| a["response_status"].clone())
        .collect();
    assert_eq!(
        statuses,
        [json!(500), json!(503), json!(429), Value::Null, json!(200)]
    );
    assert!(
        attempts[3]["error"].as_str().unwrap().contains("no answer"),
        "{retried}"
    );
    let outcomes: Vec<&str> = attempts
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["retrying", "retrying", "retrying", "retrying", "succeeded"]
    );
    app.stop().await;
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_failing_for_the_whole_period_too() {
    fn short_period(cfg: &mut wabridge::config::Config) {
        fast_delivery(cfg);
        cfg.delivery.policy.give_up_after = Duration::from_secs(2);
    }
    let mut opts = TestOptions::new(LogKind::Embedded, DbKind::Sqlite);
    opts.configure = Some(short_period);
    let app = spawn_app_with(opts).await;
    let key = app.workspace("acme").await;
    app.claim("acme", NUMBER, WABA).await;
    let gone = Receiver::start().await;
    gone.answer_always(Reply::Status(410, None));
    let failing = Receiver::start().await;
    failing.answer_always(Reply::Status(500, None));
    let (gone_id, _) = create_endpoint(&app, &key, "acme", &gone.url, json!([])).await;
    let (failing_id, _) = create_endpoint(&app, &key, "acme", &failing.url, json!([])).await;
    inbound(&app, "hello").await;
    inbound(&app, "again").await;
    let wait_disabled = |id: String| {
        let app = &app;
        let key = key.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let r = app
                    .get(&format!("/v1/workspaces/acme/endpoints/{id}"), &key)
                    .await;
                if r.json["status"] == "disabled" {
                    return r.json;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "not disabled: {}",
                    r.text
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let g = wait_disabled(gone_id.clone()).await;
    assert_eq!(g["disabled"]["reason"], "gone", "{g}");
    let f = wait_disabled(failing_id.clone()).await;
    assert_eq!(f["disabled"]["reason"], "failing", "{f}");
    // One request to the gone endpoint; nothing after it is disabled.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gone.received().len(), 1);
    let n = failing.received().len();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        failing.received().len(),
        n,
        "a disabled endpoint got more requests"
    );
    // Each disable is an audited event, and in the feed.
    let audit = app
        .get(
            "/v1/workspaces/acme/audit?action=endpoint.disabled",
            &app.key("acme", Role::Owner).await,
        )
        .await;
    assert_eq!(
        audit.json["items"].as_array().map(|a| a.len()),
        Some(2),
        "{}",
        audit.text
    );
    let fd = feed(&app, &key, "?types=endpoint.disabled").await;
    assert_eq!(fd["items"].as_array().unwrap().len(), 2, "{fd}");
    // Operators see it in /metrics.
    let metrics = reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"wabridge_endpoints{status="disabled"} 2"#),
        "{metrics}"
    );
    // The failed delivery is listed as failed.
    let failed = deliveries(&app, &key, &failing_id, "?status=failed").await;
    assert_eq!(failed.len(), 1);
    // Enabled again, the endpoint goes on with the events after the failed one.
    failing.answer_always(Reply::Status(200, None));
    let r = app
        .call(
            Method::PATCH,
            &format!("/v1/workspaces/acme/endpoints/{failing_id}"),
            Some(&key),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "enabled");
    let got = failing
        .wait_for("the next event", |g| !texts(g).is_empty())
        .await;
    assert_eq!(texts(&got), ["again"]);
    app.stop().await;
}

#[tokio::test]
async fn a_dead_endpoint_of_one_workspace_never_delays_another() {
    let (app, key) = setup(LogKind::Embedded, DbKind::Sqlite).await;
    let other = app.workspace("globex").await;
    app.claim("globex", "700800900100556", "300100200300556")
        .await;
    let dead = Receiver::start().await;
    dead.answer_always(Reply::Hang(Duration::from_secs(30)));
    let alive = Receiver::start().await;
    create_endpoint(&app, &key, "acme", &dead.url, json!([])).await;
    create_endpoint(&app, &other, "globex", &alive.url, json!([])).await;
    for i in 0..5 {
        inbound(&app, &format!("acme {i}")).await;
        inbound_to(
            &app,
            "700800900100556",
            "300100200300556",
            &format!("globex {i}"),
        )
        .await;
    }
    let got = alive
        .wait_for("globex's five", |g| texts(g).len() >= 5)
        .await;
    assert_eq!(
        texts(&got),
        (0..5).map(|i| format!("globex {i}")).collect::<Vec<_>>()
    );
    assert!(texts(&dead.received()).is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_restart_mid_retry_neither_duplicates_nor_loses() {
    let (app, key) = setup(LogKind::JetStream, DbKind::Sqlite).await;
    let rx = Receiver::start().await;
    rx.answer_always(Reply::Status(500, None));
    create_endpoint(&app, &key, "acme", &rx.url, json!(["message.received"])).await;
    inbound(&app, "first").await;
    inbound(&app, "second").await;
    rx.wait_for("two failed attempts", |g| g.len() >= 2).await;
    let app = app.restart().await;
    rx.answer_always(Reply::Status(200, None));
    inbound(&app, "third").await;
    rx.wait_for("all three", |g| texts(g).len() >= 3).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = rx.received();
    assert_eq!(
        texts(&got),
        ["first", "second", "third"],
        "each delivered once, in order"
    );
    let _ = got;
    app.stop().await;
}

#[tokio::test]
async fn rotation_signs_with_both_secrets_and_redelivery_and_recovery_send_again() {
    let (app, key) = setup(LogKind::Embedded, DbKind::Sqlite).await;
    let rx = Receiver::start().await;
    let (id, old) = create_endpoint(&app, &key, "acme", &rx.url, json!(["message.received"])).await;
    inbound(&app, "before").await;
    rx.wait_for("the first", |g| texts(g).len() == 1).await;
    let r = app
        .post(
            &format!("/v1/workspaces/acme/endpoints/{id}/rotate-secret"),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let new = r.json["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    inbound(&app, "after").await;
    let got = rx.wait_for("the second", |g| texts(g).len() == 2).await;
    let last = &got[1];
    assert_eq!(
        last.headers["webhook-signature"].split(' ').count(),
        2,
        "{:?}",
        last.headers
    );
    verify_with_reference_library(&new, &got[1..]);
    verify_with_reference_library(&old, &got[1..]);
    // Only the old one signed the first.
    assert!(std::panic::catch_unwind(|| verify_with_reference_library(&new, &got[..1])).is_err());

    // Redeliver one: the same webhook-id again.
    app.settle().await;
    let list = deliveries(&app, &key, &id, "").await;
    let first = list.iter().find(|d| d["event_id"] == got[0].id()).unwrap();
    let r = app
        .post(
            &format!(
                "/v1/workspaces/acme/endpoints/{id}/deliveries/{}/redeliver",
                first["id"].as_str().unwrap()
            ),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let got = rx.wait_for("the redelivery", |g| g.len() == 3).await;
    assert_eq!(got[2].id(), got[0].id());
    // Recover since before the first: both again, in order.
    let since = "2020-01-01T00:00:00Z";
    let r = app
        .post(
            &format!("/v1/workspaces/acme/endpoints/{id}/recover"),
            &key,
            json!({"since": since}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let got = rx.wait_for("the recovery", |g| g.len() == 5).await;
    assert_eq!(texts(&got[3..]), ["before", "after"]);
    // The sender records an attempt once the endpoint has answered: the receiver
    // can have the request before the log has its record.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let first = loop {
        app.settle().await;
        let one = deliveries(&app, &key, &id, "").await;
        let first = one
            .into_iter()
            .find(|d| d["event_id"] == got[0].id())
            .unwrap();
        if first["attempts"].as_array().unwrap().len() >= 3
            || tokio::time::Instant::now() >= deadline
        {
            break first;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(first["attempts"].as_array().unwrap().len(), 3, "{first}");
    assert_eq!(first["attempts"][1]["manual"], true);
    crate::support::app::rebuild_matches(&app, DbKind::Sqlite, Arc::new(Endpoints)).await;
    crate::support::app::batch_fold_equals_one_at_a_time(&app, DbKind::Sqlite, Arc::new(Endpoints))
        .await;
    // Bad input changes nothing.
    let r = app
        .post(
            &format!("/v1/workspaces/acme/endpoints/{id}/recover"),
            &key,
            json!({"since": "yesterday"}),
        )
        .await;
    assert_problem(&r, 400, "validation_failed", "since");
    let r = app
        .post(
            &format!("/v1/workspaces/acme/endpoints/{id}/deliveries/dlv_nope/redeliver"),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    // Deleted: nothing more arrives.
    let r = app
        .delete(&format!("/v1/workspaces/acme/endpoints/{id}"), &key)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    inbound(&app, "after delete").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(rx.received().len(), 5);
    let r = app
        .get(&format!("/v1/workspaces/acme/endpoints/{id}"), &key)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn endpoints_to_private_addresses_are_refused_unless_allowed() {
    let app = crate::support::app::spawn_app(LogKind::Embedded, DbKind::Sqlite).await;
    let key = app.workspace("acme").await;
    for (url, what) in [
        (
            "http://127.0.0.1:8080/hook",
            "WABRIDGE_ALLOW_PRIVATE_ENDPOINTS",
        ),
        ("http://localhost/hook", "WABRIDGE_ALLOW_PRIVATE_ENDPOINTS"),
        (
            "http://169.254.169.254/latest/meta-data",
            "WABRIDGE_ALLOW_PRIVATE_ENDPOINTS",
        ),
        ("http://[::1]/hook", "WABRIDGE_ALLOW_PRIVATE_ENDPOINTS"),
        ("http://10.0.0.7/hook", "WABRIDGE_ALLOW_PRIVATE_ENDPOINTS"),
        ("ftp://example.com/hook", "http or https"),
        ("https://user:pw@example.com/hook", "credentials"),
        ("not a url", "url"),
    ] {
        let r = app
            .post("/v1/workspaces/acme/endpoints", &key, json!({"url": url}))
            .await;
        assert_problem(&r, 400, "validation_failed", what);
    }
    let r = app
        .post(
            "/v1/workspaces/acme/endpoints",
            &key,
            json!({"url": "https://8.8.8.8/hook", "types": ["api_key.created"]}),
        )
        .await;
    assert_problem(&r, 400, "validation_failed", "types");
    assert!(app
        .events_of(Some("acme"), "endpoint.created")
        .await
        .is_empty());
    // An agent may read endpoints but not add them.
    let agent = app.key("acme", Role::Agent).await;
    let r = app
        .post(
            "/v1/workspaces/acme/endpoints",
            &agent,
            json!({"url": "https://8.8.8.8/hook"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = app.get("/v1/workspaces/acme/endpoints", &agent).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.stop().await;
}

#[tokio::test]
async fn keys_rotate_rewraps_endpoint_secrets_so_the_old_key_can_go() {
    use crate::support::app::{MASTER_V1, MASTER_V2};
    let (app, key) = setup(LogKind::Embedded, DbKind::Sqlite).await;
    let rx = Receiver::start().await;
    let (_, secret) =
        create_endpoint(&app, &key, "acme", &rx.url, json!(["message.received"])).await;
    let app = app
        .restart_with(|o| o.master_keys = Some(format!("v1:{MASTER_V1},v2:{MASTER_V2}")))
        .await;
    let report = wabridge_handlers::commands::endpoints::rewrap_all(
        &app.app.ctx,
        app.app.cfg.token_keys.as_ref(),
        &wabridge_handlers::commands::Caller::cli("keys rotate"),
    )
    .await
    .unwrap();
    assert_eq!(
        (report.rewrapped, report.failed.len()),
        (1, 0),
        "{report:?}"
    );
    let ev = app
        .events_of(Some("acme"), "endpoint.secret_rewrapped")
        .await;
    assert_eq!(ev.len(), 1);
    assert!(!String::from_utf8_lossy(&ev[0].payload).contains(&secret["whsec_".len()..]));
    // Only the new key now: the endpoint still signs with the same secret.
    let app = app
        .restart_with(|o| o.master_keys = Some(format!("v2:{MASTER_V2}")))
        .await;
    inbound(&app, "after rotation").await;
    let got = rx.wait_for("a delivery", |g| texts(g).len() == 1).await;
    verify_with_reference_library(&secret, &got);
    let again = wabridge_handlers::commands::endpoints::rewrap_all(
        &app.app.ctx,
        app.app.cfg.token_keys.as_ref(),
        &wabridge_handlers::commands::Caller::cli("keys rotate"),
    )
    .await
    .unwrap();
    assert_eq!(again.rewrapped, 0, "nothing left to rewrap");
    app.stop().await;
}

// ------------------------------------------------------------------ media

#[tokio::test]
async fn media_is_streamed_from_meta_with_the_numbers_token() {
    use wabridge::dev::graph_sim::SimConfig;
    let sim = crate::sending::start_sim(SimConfig::default()).await;
    let mut opts = TestOptions::new(LogKind::Embedded, DbKind::Sqlite);
    opts.graph_url = Some(sim.url.clone());
    let app = spawn_app_with(opts).await;
    let key = app.workspace("acme").await;
    app.claim("acme", NUMBER, WABA).await;
    let r = app
        .put(
            &format!("/v1/workspaces/acme/phone-numbers/{NUMBER}/token"),
            &key,
            json!({"access_token": "EAAG-media-token"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let bytes: Vec<u8> = (0..4 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    sim.sim
        .add_media("918273645", "image/jpeg", bytes.clone().into());
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": WABA, "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15551230555", "phone_number_id": NUMBER},
        "contacts": [{"profile": {"name": "Ana"}, "wa_id": "15550001111"}],
        "messages": [{"from": "15550001111", "id": "wamid.HBgMEDIA1", "timestamp": "1790000000", "type": "image",
            "image": {"mime_type": "image/jpeg", "sha256": "c2hhMjU2", "id": "918273645"}}]}}]}]});
    let r = app.signed_webhook(body.to_string().as_bytes()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let viewer = app.key("acme", Role::Viewer).await;
    let res = reqwest::Client::new()
        .get(app.url("/v1/workspaces/acme/media/918273645"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "image/jpeg");
    // Streamed in chunks as it comes.
    let mut stream = res.bytes_stream();
    let mut got = Vec::new();
    let mut chunks = 0;
    use futures_util::StreamExt;
    while let Some(c) = stream.next().await {
        got.extend_from_slice(&c.unwrap());
        chunks += 1;
    }
    assert!(
        got == bytes,
        "the bytes differ ({} of {})",
        got.len(),
        bytes.len()
    );
    assert!(chunks > 1, "one chunk: not streamed");
    // Meta was asked with the number's token, for this number: the URL look-up and
    // the download both carry the token.
    let calls = sim.sim.calls_to("918273645");
    assert_eq!(calls.len(), 2, "{calls:?}");
    for c in &calls {
        assert_eq!(
            c.authorization.as_deref(),
            Some("Bearer EAAG-media-token"),
            "{c:?}"
        );
    }
    assert!(
        calls[0]
            .query
            .contains(&format!("phone_number_id={NUMBER}")),
        "{:?}",
        calls[0]
    );
    assert!(calls[1].path.contains("media-download"), "{:?}", calls[1]);

    // A large object goes through without being held: this process's peak memory
    // grows by far less than the object (which the simulator already holds).
    const BIG: usize = 96 * 1024 * 1024;
    let big: Vec<u8> = (0..BIG).map(|i| (i % 253) as u8).collect();
    let want = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&big))
    };
    sim.sim.add_media("918273646", "video/mp4", big.into());
    let body = body
        .to_string()
        .replace("918273645", "918273646")
        .replace("wamid.HBgMEDIA1", "wamid.HBgMEDIA2");
    let r = app.signed_webhook(body.as_bytes()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.settle().await;
    let peak_before = reset_peak_rss();
    let res = reqwest::Client::new()
        .get(app.url("/v1/workspaces/acme/media/918273646"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-length"], BIG.to_string().as_str());
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut len = 0;
    let mut stream = res.bytes_stream();
    while let Some(c) = stream.next().await {
        let c = c.unwrap();
        len += c.len();
        sha2::Digest::update(&mut hasher, &c);
    }
    let peak_after = peak_rss();
    assert_eq!(len, BIG);
    assert_eq!(hex::encode(sha2::Digest::finalize(hasher)), want);
    let grown = peak_after.saturating_sub(peak_before);
    assert!(
        grown < 40 * 1024 * 1024,
        "peak memory grew by {} MiB streaming a {} MiB object",
        grown >> 20,
        BIG >> 20
    );
    // Another workspace, an unknown id, a malformed id: 404, and Meta is not asked.
    let other = app.workspace("globex").await;
    let before = sim.sim.calls().len();
    for (k, id) in [
        (&other, "918273645"),
        (&viewer, "111222333"),
        (&viewer, "..%2Fetc"),
    ] {
        let ws = if k == &other { "globex" } else { "acme" };
        let r = app.get(&format!("/v1/workspaces/{ws}/media/{id}"), k).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{id}: {}", r.text);
    }
    assert_eq!(
        sim.sim.calls().len(),
        before,
        "Meta was called for media we never received"
    );
    app.stop().await;
}

/// This process's peak resident memory (VmHWM), in bytes.
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<usize>()
        .unwrap()
        * 1024
}

/// Resets the peak to the current resident memory (Linux `clear_refs` 5); returns it.
fn reset_peak_rss() -> usize {
    std::fs::write("/proc/self/clear_refs", "5").expect("clear_refs");
    peak_rss()
}
