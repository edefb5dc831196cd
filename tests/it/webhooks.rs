//! Meta's webhook endpoint from the outside (CONTRACT.md, "From Meta"): the
//! verification handshake, signatures, byte-exact storage in the raw stream, routing
//! and splitting into domain events, deduplication, unrouted numbers, dead letters,
//! the body limit, and durability of a 200 across a SIGKILL of the real binary.
//!
//! Each check is a generic async fn over the log backend; the `embedded` and
//! `jetstream` modules at the bottom run every check on both (SQLite read models),
//! and the routing check also runs end to end on PostgreSQL.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use wabridge_events::{ReadFrom, StoredEvent, StreamKind};
use wabridge_handlers::webhooks::sign;

use crate::support::{
    app::{
        fixture, fixture_signatures, spawn_app, spawn_app_with, DbKind, LogKind, Resp, TestApp,
        TestOptions, APP_SECRET, MASTER_V1,
    },
    unique_ns, NatsServer,
};

// ------------------------------------------------------------------ fixture facts

/// The number of most fixtures (`metadata.phone_number_id`).
const NUMBER_A: &str = "700800900100200";
/// Its WABA (`entry[].id`).
const WABA_A: &str = "300100200300400";
/// The second number of `batch_two_numbers.json`.
const NUMBER_B: &str = "700800900100299";
/// Its WABA.
const WABA_B: &str = "300100200300401";
/// A number of no fixture, under WABA A (for WABA-level items).
const NUMBER_C: &str = "700800900100201";

/// The message of `inbound_text.json`.
const WAMID_TEXT: &str = "wamid.HBgNNTUxMTk4ODg4Nzc3NxUCABIYFjNFQjBDMDAwMDAwMDAwMDAwMDAxAA==";
/// The messages of `batch_two_numbers.json`, in body order.
const WAMID_BATCH_A: &str = "wamid.HBgNNTUxMTk4ODg4Nzc3NxUCABIYFjNFQjBDMDAwMDAwMDAwMDAwMDA3AA==";
const WAMID_BATCH_B1: &str = "wamid.HBgKNjU5MTIzNDU2NxUCABIYFjNFQjBDMDAwMDAwMDAwMDAwMDA4AA==";
const WAMID_BATCH_B2: &str = "wamid.HBgKNjU5MTIzNDU2NxUCABIYFjNFQjBDMDAwMDAwMDAwMDAwMDA5AA==";
/// The statuses of `statuses_delivered_and_failed.json`.
const WAMID_DELIVERED: &str = "wamid.HBgMNDQ3NzAwOTAwMTIzFQIAERgSMDAwMDAwMDAwMDAwMDAwMDEwAA==";
const WAMID_FAILED: &str = "wamid.HBgMNDQ3NzAwOTAwMTI0FQIAERgSMDAwMDAwMDAwMDAwMDAwMDExAA==";
/// The message of `escaped_unicode.json`.
const WAMID_UNICODE: &str = "wamid.HBgLNDY3MDEyMzQ1NjcVAgASGBYzRUIwQzAwMDAwMDAwMDAwMDAwMTAA";

/// The default body limit (`WABRIDGE_MAX_BODY`).
const MAX_BODY: usize = 4 * 1024 * 1024;

// ------------------------------------------------------------------ helpers

/// The recorded signature of a fixture, exactly as in `SIGNATURES.tsv`.
fn recorded_signature(name: &str) -> String {
    fixture_signatures()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{name} is not in SIGNATURES.tsv"))
        .1
}

/// POSTs a fixture with its recorded signature and expects 200.
async fn post_fixture(app: &TestApp, name: &str) {
    let r = app
        .webhook(&fixture(name), Some(&recorded_signature(name)))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
}

/// Every event of the raw stream (a fresh namespace: at most a few).
async fn raw_events(app: &TestApp) -> Vec<StoredEvent> {
    app.app
        .ctx
        .log
        .read(StreamKind::Raw, ReadFrom::Seq(1), None, 100)
        .await
        .expect("reading the raw stream")
}

/// The raw stream's head.
async fn raw_head(app: &TestApp) -> u64 {
    app.app
        .ctx
        .log
        .last_seq(StreamKind::Raw)
        .await
        .expect("raw head")
}

/// A counter from `GET /metrics`.
async fn metric(app: &TestApp, name: &str) -> u64 {
    let r = app.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let prefix = format!("{name} ");
    let line = r
        .text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("{name} is not in /metrics:\n{}", r.text));
    line[prefix.len()..]
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

/// An event's data.
fn data(ev: &StoredEvent) -> Value {
    serde_json::from_slice(&ev.payload).expect("event data is JSON")
}

/// The `wamid` of each event, in log order.
fn wamids(events: &[StoredEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| data(e)["wamid"].as_str().expect("wamid").to_string())
        .collect()
}

/// Asserts a problem+json error with this status and code.
fn assert_problem(r: &Resp, status: StatusCode, code: &str) {
    crate::support::app::assert_problem(r, status.as_u16(), code, "webhook");
}

/// A webhook body no other test sends (so it cannot be a duplicate).
fn unique_body() -> Vec<u8> {
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[],"nonce":"{}"}}"#,
        uuid::Uuid::new_v4()
    )
    .into_bytes()
}

/// The fixture directory.
fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/meta")
}

// ------------------------------------------------------------------ 1. handshake

async fn handshake(log: LogKind) {
    let app = spawn_app(log, DbKind::Sqlite).await;
    let get = |q: &'static str| app.call(Method::GET, q, None, None);

    let ok =
        get("/webhooks/meta?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=123").await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    assert_eq!(ok.text, "123");

    let other =
        get("/webhooks/meta?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=a1b2c3d4")
            .await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.text);
    assert_eq!(other.text, "a1b2c3d4");

    let wrong =
        get("/webhooks/meta?hub.mode=subscribe&hub.verify_token=verify-you&hub.challenge=123")
            .await;
    assert_problem(&wrong, StatusCode::FORBIDDEN, "forbidden");
    assert!(!wrong.text.contains("123"), "{}", wrong.text);

    // A prefix or an extension of the token is not the token.
    for q in [
        "/webhooks/meta?hub.mode=subscribe&hub.verify_token=verify-m&hub.challenge=123",
        "/webhooks/meta?hub.mode=subscribe&hub.verify_token=verify-mee&hub.challenge=123",
        "/webhooks/meta?hub.mode=subscribe&hub.verify_token=&hub.challenge=123",
        "/webhooks/meta?hub.mode=unsubscribe&hub.verify_token=verify-me&hub.challenge=123",
    ] {
        let r = get(q).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{q}: {}", r.text);
    }

    // Missing parameters: refused (403, or 400 for a malformed query), never 200.
    for q in [
        "/webhooks/meta",
        "/webhooks/meta?hub.mode=subscribe&hub.challenge=123",
        "/webhooks/meta?hub.verify_token=verify-me&hub.challenge=123",
        "/webhooks/meta?hub.mode=subscribe&hub.verify_token=verify-me",
    ] {
        let r = get(q).await;
        assert!(
            r.status == StatusCode::FORBIDDEN || r.status == StatusCode::BAD_REQUEST,
            "{q}: {} {}",
            r.status,
            r.text
        );
    }
    app.stop().await;
}

// ------------------------------------------------------------------ 2. signatures

/// Every fixture with its recorded signature is accepted and stored byte-exact.
async fn fixtures_are_stored_byte_exact(log: LogKind) {
    let app = spawn_app(log, DbKind::Sqlite).await;
    let table = fixture_signatures();

    // The table covers every fixture file, so every one is exercised.
    let mut files: Vec<String> = std::fs::read_dir(fixture_dir())
        .expect("fixture dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".json"))
        .collect();
    files.sort();
    let mut listed: Vec<String> = table.iter().map(|(n, _)| n.clone()).collect();
    listed.sort();
    assert_eq!(listed, files, "SIGNATURES.tsv vs the fixture files");

    for (name, sig) in &table {
        let r = app.webhook(&fixture(name), Some(sig)).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
    }

    let raw = raw_events(&app).await;
    assert_eq!(raw.len(), table.len(), "one raw event per body");
    let subject = app.app.ctx.log.namespace().raw_webhook_subject();
    for ((name, _), ev) in table.iter().zip(&raw) {
        assert_eq!(
            ev.payload.as_ref(),
            fixture(name).as_slice(),
            "{name} is not stored byte-exact"
        );
        assert_eq!(ev.envelope.event_type, "webhook.received", "{name}");
        assert_eq!(ev.subject, subject, "{name}");
    }
    assert_eq!(
        metric(&app, "wabridge_webhooks_ingested_total").await,
        table.len() as u64
    );
    assert_eq!(metric(&app, "wabridge_webhooks_duplicate_total").await, 0);
    assert_eq!(
        metric(&app, "wabridge_webhook_signature_failures_total").await,
        0
    );
    app.stop().await;
}

/// Missing, malformed and wrong signatures: 401 `invalid_signature`, nothing appended,
/// each counted.
async fn bad_signatures_are_refused(log: LogKind) {
    let app = spawn_app(log, DbKind::Sqlite).await;
    let body = unique_body();
    let good = sign(APP_SECRET, &body);
    let hex = good
        .strip_prefix("sha256=")
        .expect("sha256= prefix")
        .to_string();
    assert_eq!(hex.len(), 64);
    assert_ne!(
        hex,
        hex.to_uppercase(),
        "the digest has letters to upper-case"
    );

    let before = raw_head(&app).await;
    let mut altered = body.clone();
    altered.push(b' ');
    let cases: Vec<(&str, Vec<u8>, Option<String>)> = vec![
        ("missing", body.clone(), None),
        (
            "upper-case hex",
            body.clone(),
            Some(format!("sha256={}", hex.to_uppercase())),
        ),
        (
            "truncated hex",
            body.clone(),
            Some(format!("sha256={}", &hex[..62])),
        ),
        ("sha1= prefix", body.clone(), Some(format!("sha1={hex}"))),
        (
            "wrong secret",
            body.clone(),
            Some(sign("not_the_app_secret", &body)),
        ),
        ("altered body", altered, Some(good.clone())),
        (
            "a signature of the body re-serialised",
            body.clone(),
            Some(sign(
                APP_SECRET,
                &serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(&body).unwrap())
                    .unwrap(),
            )),
        ),
        (
            "one byte changed",
            {
                let mut b = body.clone();
                let i = b.len() / 2;
                b[i] ^= 0x01;
                b
            },
            Some(good.clone()),
        ),
    ];
    for (what, b, sig) in &cases {
        let r = app.webhook(b, sig.as_deref()).await;
        assert_problem(&r, StatusCode::UNAUTHORIZED, "invalid_signature");
        assert_eq!(
            raw_head(&app).await,
            before,
            "{what}: something was appended"
        );
    }
    assert!(raw_events(&app).await.is_empty());
    assert_eq!(
        metric(&app, "wabridge_webhook_signature_failures_total").await,
        cases.len() as u64
    );
    assert_eq!(metric(&app, "wabridge_webhooks_ingested_total").await, 0);

    // The same body correctly signed is accepted: the refusals were the signatures'.
    let r = app.webhook(&body, Some(&good)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(raw_head(&app).await, before + 1);
    let raw = raw_events(&app).await;
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0].payload.as_ref(), body.as_slice());
    assert_eq!(
        metric(&app, "wabridge_webhook_signature_failures_total").await,
        cases.len() as u64
    );
    app.stop().await;
}

// ------------------------------------------------------------------ 3. escaped unicode

async fn escaped_unicode(log: LogKind) {
    let app = spawn_app(log, DbKind::Sqlite).await;
    app.workspace("nordic").await;
    app.claim("nordic", NUMBER_A, WABA_A).await;

    let body = fixture("escaped_unicode.json");
    // The fixture carries the escapes themselves, not the characters.
    let body_text = std::str::from_utf8(&body).expect("ASCII fixture");
    assert!(
        body_text.contains(r"Hej \ud83d\udc4b \/ tack"),
        "{body_text}"
    );
    assert!(body.is_ascii());

    post_fixture(&app, "escaped_unicode.json").await;
    app.settle().await;

    let raw = raw_events(&app).await;
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0].payload.as_ref(), body.as_slice(), "not byte-exact");

    let received = app.events_of(Some("nordic"), "message.received").await;
    assert_eq!(wamids(&received), [WAMID_UNICODE]);
    let d = data(&received[0]);
    assert_eq!(d["text"], "Hej \u{1F44B} / tack");
    assert_eq!(d["contact"]["profile_name"], "Zo\u{eb} \u{c5}str\u{f6}m");
    assert_eq!(d["contact"]["wa_id"], "46701234567");
    // The domain event holds the characters (UTF-8), not surrogate escapes.
    let stored = &received[0].payload;
    let contains = |needle: &[u8]| stored.windows(needle.len()).any(|w| w == needle);
    assert!(
        contains("\u{1F44B}".as_bytes()),
        "no 👋 in the stored event"
    );
    assert!(
        !contains(br"\ud83d"),
        "a surrogate escape left in the event"
    );
    app.stop().await;
}

// ------------------------------------------------------------------ 4. routing

async fn routing_and_splitting(log: LogKind, db: DbKind) {
    let app = spawn_app(log, db).await;
    for ws in ["alpha", "beta", "gamma"] {
        app.workspace(ws).await;
    }
    app.claim("alpha", NUMBER_A, WABA_A).await;
    app.claim("beta", NUMBER_B, WABA_B).await;
    // An operator placed another number of WABA A in gamma: WABA-level items still go
    // to the WABA's owner (alpha, the first to claim one of its numbers) alone.
    app.claim("gamma", NUMBER_C, WABA_A).await;

    for name in [
        "batch_two_numbers.json",
        "statuses_delivered_and_failed.json",
        "user_preferences_stop.json",
        "template_status_paused.json",
    ] {
        post_fixture(&app, name).await;
    }
    app.settle().await;
    let raw = raw_events(&app).await;
    assert_eq!(raw.len(), 4);

    // Messages: one event per message, each in its number's workspace.
    let alpha = app.events_of(Some("alpha"), "message.received").await;
    assert_eq!(wamids(&alpha), [WAMID_BATCH_A]);
    let a = data(&alpha[0]);
    assert_eq!(a["text"], "obrigado!");
    assert_eq!(a["contact"]["profile_name"], "Ana Souza");
    assert_eq!(a["source"]["phone_number_id"], NUMBER_A);
    assert_eq!(a["source"]["raw_seq"], raw[0].seq);
    assert_eq!(
        alpha[0].envelope.workspace.as_ref().map(|s| s.as_str()),
        Some("alpha")
    );
    let beta = app.events_of(Some("beta"), "message.received").await;
    assert_eq!(wamids(&beta), [WAMID_BATCH_B1, WAMID_BATCH_B2]);
    assert_eq!(data(&beta[0])["text"], "UNSUBSCRIBE");
    assert_eq!(data(&beta[1])["message_type"], "unsupported");
    assert_eq!(data(&beta[1])["errors"][0]["code"], 131051);
    for ev in &beta {
        assert_eq!(
            ev.envelope.workspace.as_ref().map(|s| s.as_str()),
            Some("beta")
        );
        assert_eq!(data(ev)["source"]["waba_id"], WABA_B);
    }
    assert!(app
        .events_of(Some("gamma"), "message.received")
        .await
        .is_empty());
    assert_eq!(app.events_of(None, "message.received").await.len(), 3);

    // Statuses: both in alpha; the failed one carries 131050.
    let statuses = app.events_of(Some("alpha"), "message.status_updated").await;
    assert_eq!(wamids(&statuses), [WAMID_DELIVERED, WAMID_FAILED]);
    let delivered = data(&statuses[0]);
    assert_eq!(delivered["status"], "delivered");
    assert_eq!(delivered["recipient_id"], "447700900123");
    assert!(
        delivered.get("errors").is_none_or(|e| e == &json!([])),
        "{delivered}"
    );
    let failed = data(&statuses[1]);
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["recipient_id"], "447700900124");
    assert_eq!(failed["errors"].as_array().map(Vec::len), Some(1));
    assert_eq!(failed["errors"][0]["code"], 131050);
    assert_eq!(app.events_of(None, "message.status_updated").await.len(), 2);

    // The marketing preference.
    let prefs = app
        .events_of(Some("alpha"), "contact.marketing_preference")
        .await;
    assert_eq!(prefs.len(), 1);
    let p = data(&prefs[0]);
    assert_eq!(p["contact"]["wa_id"], "447700900126");
    assert_eq!(p["category"], "marketing_messages");
    assert_eq!(p["value"], "stop");
    assert_eq!(
        app.events_of(None, "contact.marketing_preference")
            .await
            .len(),
        1
    );

    // The template status: once, in the WABA's owner.
    for ws in ["alpha"] {
        let t = app.events_of(Some(ws), "template.status_updated").await;
        assert_eq!(t.len(), 1, "{ws}");
        let d = data(&t[0]);
        assert_eq!(d["template_id"], "9988776655443322", "{ws}");
        assert_eq!(d["event"], "PAUSED", "{ws}");
        assert_eq!(d["template_name"], "spring_sale_v2", "{ws}");
    }
    for ws in ["beta", "gamma"] {
        assert!(
            app.events_of(Some(ws), "template.status_updated")
                .await
                .is_empty(),
            "{ws} got another workspace's WABA-level item"
        );
    }
    assert_eq!(
        app.events_of(None, "template.status_updated").await.len(),
        1
    );
    assert!(app.events_of(None, "webhook.unrouted").await.is_empty());

    // The message read model followed.
    let store = &app.app.ctx.store;
    use wabridge_projections::views::messages;
    let m = messages::get(store, "alpha", WAMID_BATCH_A)
        .await
        .expect("read")
        .expect("inbound message row");
    assert_eq!(
        (m.direction.as_str(), m.status.as_str()),
        ("inbound", "received")
    );
    let f = messages::get(store, "alpha", WAMID_FAILED)
        .await
        .expect("read")
        .expect("outbound message row");
    assert_eq!(f.status, "failed");
    assert_eq!(messages::count(store, "beta").await.expect("count"), 2);
    assert_eq!(messages::count(store, "gamma").await.expect("count"), 0);
    app.stop().await;
}

async fn routing_and_splitting_sqlite(log: LogKind) {
    routing_and_splitting(log, DbKind::Sqlite).await
}

// ------------------------------------------------------------------ 5. dedup

/// The same body twice inside the window: stored once, processed once.
async fn redelivery_inside_the_window(log: LogKind) {
    let app = spawn_app(log, DbKind::Sqlite).await;
    app.workspace("ws").await;
    app.claim("ws", NUMBER_A, WABA_A).await;

    post_fixture(&app, "inbound_text.json").await;
    post_fixture(&app, "inbound_text.json").await;
    app.settle().await;

    let raw = raw_events(&app).await;
    assert_eq!(raw.len(), 1, "a duplicate inside the window was stored");
    assert_eq!(
        raw[0].payload.as_ref(),
        fixture("inbound_text.json").as_slice()
    );
    assert_eq!(metric(&app, "wabridge_webhooks_ingested_total").await, 1);
    assert_eq!(metric(&app, "wabridge_webhooks_duplicate_total").await, 1);
    let received = app.events_of(Some("ws"), "message.received").await;
    assert_eq!(wamids(&received), [WAMID_TEXT]);
    app.stop().await;
}

/// The same bodies again after the window: stored twice, processed once.
async fn redelivery_after_the_window(log: LogKind) {
    let app = spawn_app_with(TestOptions {
        dedup_window: Some(Duration::from_secs(1)),
        ..TestOptions::new(log, DbKind::Sqlite)
    })
    .await;
    app.workspace("ws").await;
    app.claim("ws", NUMBER_A, WABA_A).await;

    let names = ["inbound_text.json", "statuses_delivered_and_failed.json"];
    for name in names {
        post_fixture(&app, name).await;
    }
    app.settle().await;
    assert_eq!(app.events_of(Some("ws"), "message.received").await.len(), 1);
    assert_eq!(
        app.events_of(Some("ws"), "message.status_updated")
            .await
            .len(),
        2
    );

    tokio::time::sleep(Duration::from_millis(2500)).await;
    for name in names {
        post_fixture(&app, name).await;
    }
    app.settle().await;

    let raw = raw_events(&app).await;
    let payloads: Vec<&[u8]> = raw.iter().map(|e| e.payload.as_ref()).collect();
    let (a, b) = (fixture(names[0]), fixture(names[1]));
    assert_eq!(
        payloads,
        [a.as_slice(), b.as_slice(), a.as_slice(), b.as_slice()],
        "after the window each body is stored again"
    );
    assert_eq!(metric(&app, "wabridge_webhooks_ingested_total").await, 4);
    assert_eq!(metric(&app, "wabridge_webhooks_duplicate_total").await, 0);

    let received = app.events_of(Some("ws"), "message.received").await;
    assert_eq!(wamids(&received), [WAMID_TEXT], "processed twice");
    let statuses = app.events_of(Some("ws"), "message.status_updated").await;
    assert_eq!(
        wamids(&statuses),
        [WAMID_DELIVERED, WAMID_FAILED],
        "processed twice"
    );
    assert_eq!(app.events_of(None, "message.received").await.len(), 1);
    assert_eq!(app.events_of(None, "message.status_updated").await.len(), 2);
    app.stop().await;
}

// ------------------------------------------------------------------ 6. unrouted

async fn unknown_number_attached_later(log: LogKind) {
    let app = spawn_app_with(TestOptions {
        dedup_window: Some(Duration::from_secs(1)),
        ..TestOptions::new(log, DbKind::Sqlite)
    })
    .await;
    app.workspace("ws").await;
    post_fixture(&app, "inbound_text.json").await;
    app.settle().await;

    let list = app.get("/v1/admin/unrouted", &app.operator).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let items = list.json["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{}", list.text);
    assert_eq!(items[0]["phone_number_id"], NUMBER_A);
    assert_eq!(items[0]["waba_id"], WABA_A);
    assert_eq!(items[0]["pending"], 1);
    assert_eq!(list.json["next_cursor"], Value::Null);
    assert!(app.events_of(None, "message.received").await.is_empty());
    assert_eq!(app.events_of(None, "webhook.unrouted").await.len(), 1);

    let assigned = app
        .post(
            &format!("/v1/admin/unrouted/{NUMBER_A}/assign"),
            &app.operator,
            json!({"workspace": "ws"}),
        )
        .await;
    assert_eq!(assigned.status, StatusCode::OK, "{}", assigned.text);
    assert_eq!(assigned.json, json!({"items": 1}));
    app.settle().await;

    let received = app.events_of(Some("ws"), "message.received").await;
    assert_eq!(wamids(&received), [WAMID_TEXT]);
    assert_eq!(data(&received[0])["text"], "Is my order shipped?");
    let list = app.get("/v1/admin/unrouted", &app.operator).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert_eq!(list.json["items"], json!([]), "{}", list.text);

    // Meta redelivers the body later (after the duplicate window): once while the
    // number is still unclaimed, once after the workspace claimed it. Neither yields a
    // second message nor a new unrouted item.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    post_fixture(&app, "inbound_text.json").await;
    app.settle().await;
    app.claim("ws", NUMBER_A, WABA_A).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    post_fixture(&app, "inbound_text.json").await;
    app.settle().await;

    assert_eq!(raw_events(&app).await.len(), 3, "each redelivery is stored");
    assert_eq!(
        app.events_of(Some("ws"), "message.received").await.len(),
        1,
        "a redelivery was processed again"
    );
    assert_eq!(app.events_of(None, "message.received").await.len(), 1);
    assert_eq!(app.events_of(None, "webhook.unrouted").await.len(), 1);
    let list = app.get("/v1/admin/unrouted", &app.operator).await;
    assert_eq!(list.json["items"], json!([]), "{}", list.text);
    app.stop().await;
}

/// A number released by one workspace and claimed by another: its next webhook goes
/// to the new holder, and one for an unclaimed number becomes routed once it is
/// claimed. (The processor remembers routes between chunks only while the routing
/// table's last change stays where it was.)
async fn a_moved_number_routes_to_its_new_workspace(log: LogKind) {
    use crate::support::app::text_webhook_to;
    let app = spawn_app(log, DbKind::Sqlite).await;
    let owner_a = app.workspace("ws-a").await;
    app.workspace("ws-b").await;
    app.claim("ws-a", NUMBER_A, WABA_A).await;
    let post = |wamid: &str, number: &str, waba: &str| {
        let body = text_webhook_to(number, waba, "447700957000", "hello", wamid);
        let app = &app;
        async move {
            let r = app.signed_webhook(&body).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            app.settle().await;
        }
    };
    post("wamid.moved1", NUMBER_A, WABA_A).await;
    post("wamid.moved2", NUMBER_B, WABA_B).await;
    assert_eq!(
        wamids(&app.events_of(Some("ws-a"), "message.received").await),
        ["wamid.moved1"]
    );
    assert_eq!(app.events_of(None, "webhook.unrouted").await.len(), 1);

    let r = app
        .delete(
            &format!("/v1/workspaces/ws-a/phone-numbers/{NUMBER_A}"),
            &owner_a,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    app.claim("ws-b", NUMBER_A, WABA_A).await;
    app.claim("ws-b", NUMBER_B, WABA_B).await;
    post("wamid.moved3", NUMBER_A, WABA_A).await;
    post("wamid.moved4", NUMBER_B, WABA_B).await;
    assert_eq!(
        wamids(&app.events_of(Some("ws-a"), "message.received").await),
        ["wamid.moved1"]
    );
    assert_eq!(
        wamids(&app.events_of(Some("ws-b"), "message.received").await),
        ["wamid.moved3", "wamid.moved4"]
    );
    assert_eq!(app.events_of(None, "webhook.unrouted").await.len(), 1);
    app.stop().await;
}

// ------------------------------------------------------------------ 7. dead letters

async fn unparsable_body_becomes_a_dead_letter(log: LogKind) {
    let app = spawn_app(log, DbKind::Sqlite).await;
    let body: &[u8] = b"not json \xff";
    let r = app.signed_webhook(body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.settle().await;

    let raw = raw_events(&app).await;
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0].payload.as_ref(), body);
    let seq = raw[0].seq;

    let list = app.get("/v1/admin/dead-letters", &app.operator).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let items = list.json["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{}", list.text);
    let dl = &items[0];
    assert_eq!(dl["status"], "open");
    assert_eq!(dl["consumer"], "webhook_processor");
    assert_eq!(dl["stream"], "raw");
    assert_eq!(dl["seq"], seq);
    assert_eq!(dl["event_type"], "webhook.received");
    let id = dl["id"].as_str().expect("id").to_string();
    let open = app
        .get("/v1/admin/dead-letters?status=open", &app.operator)
        .await;
    assert_eq!(open.json["items"].as_array().map(Vec::len), Some(1));

    let discard = app
        .post(
            &format!("/v1/admin/dead-letters/{id}/discard"),
            &app.operator,
            json!({"reason": "junk"}),
        )
        .await;
    assert_eq!(discard.status, StatusCode::NO_CONTENT, "{}", discard.text);

    let discarded = app
        .get("/v1/admin/dead-letters?status=discarded", &app.operator)
        .await;
    assert_eq!(discarded.status, StatusCode::OK, "{}", discarded.text);
    let items = discarded.json["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{}", discarded.text);
    assert_eq!(items[0]["id"], id.as_str());
    assert_eq!(items[0]["status"], "discarded");
    let open = app
        .get("/v1/admin/dead-letters?status=open", &app.operator)
        .await;
    assert_eq!(open.json["items"], json!([]), "{}", open.text);

    // The body itself stays in the log.
    let raw = raw_events(&app).await;
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0].payload.as_ref(), body);
    assert!(app.events_of(None, "message.received").await.is_empty());
    app.stop().await;
}

// ------------------------------------------------------------------ 8. body limit

async fn over_the_body_limit(log: LogKind) {
    let app = spawn_app(log, DbKind::Sqlite).await;
    let body = vec![b' '; MAX_BODY + 1];
    let r = app.signed_webhook(&body).await;
    assert_problem(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert_eq!(raw_head(&app).await, 0, "an oversized body was appended");
    app.stop().await;
}

/// A body of exactly the limit is accepted and stored byte-exact.
async fn at_the_body_limit(log: LogKind) {
    let app = spawn_app(log, DbKind::Sqlite).await;
    let mut body = br#"{"object":"whatsapp_business_account","entry":[]}"#.to_vec();
    body.resize(MAX_BODY, b' ');
    let r = app.signed_webhook(&body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let raw = raw_events(&app).await;
    assert_eq!(raw.len(), 1);
    assert!(raw[0].payload.as_ref() == body.as_slice(), "not byte-exact");
    app.stop().await;
}

// ------------------------------------------------------------------ 9. SIGKILL

/// The real binary with a fixed data dir (and namespace on JetStream).
struct Binary {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

/// A running `wabridge serve`, killed (SIGKILL) when dropped.
struct Server {
    child: tokio::process::Child,
    url: String,
    stderr: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind :0")
        .local_addr()
        .expect("addr")
        .port()
}

impl Binary {
    async fn new(log: LogKind) -> Binary {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut env = vec![
            ("WABRIDGE_DATA_DIR", dir.path().display().to_string()),
            ("META_APP_SECRET", APP_SECRET.to_string()),
            ("META_VERIFY_TOKEN", "x".to_string()),
            ("TOKEN_MASTER_KEYS", format!("v1:{MASTER_V1}")),
            ("AUDIT_SIGNING_KEY", "x".to_string()),
            ("WABRIDGE_NAMESPACE", unique_ns().as_str().to_string()),
            ("RUST_LOG", "info,sqlx=warn,async_nats=warn".to_string()),
        ];
        if log == LogKind::JetStream {
            env.push(("NATS_URL", NatsServer::shared().await.url()));
        }
        Binary {
            dir,
            env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }
    }

    fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_wabridge"));
        cmd.env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs a host command; returns its stdout (panics when it fails).
    async fn run(&self, args: &[&str]) -> String {
        let out = self
            .command()
            .args(args)
            .output()
            .await
            .expect("running wabridge");
        assert!(
            out.status.success(),
            "wabridge {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8 stdout")
    }

    /// Starts `serve` with these roles and waits for `/healthz`.
    async fn serve(&self, roles: &str, run: usize) -> Server {
        let port = free_port();
        let stderr = self.dir.path().join(format!("serve-{run}.log"));
        let log = std::fs::File::create(&stderr).expect("log file");
        let child = self
            .command()
            .arg("serve")
            .env("WABRIDGE_LISTEN", format!("127.0.0.1:{port}"))
            .env("WABRIDGE_ROLES", roles)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning wabridge serve");
        let mut server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
            stderr,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("wabridge serve exited ({status}):\n{}", server.log());
            }
            if let Ok(r) = client
                .get(format!("{}/healthz", server.url))
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                if r.status() == StatusCode::OK {
                    return server;
                }
            }
            assert!(
                Instant::now() < deadline,
                "wabridge serve not healthy after 60 s:\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `wabridge events export` with these arguments, one JSON value per line.
    async fn export(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["events", "export"];
        all.extend_from_slice(args);
        self.run(&all)
            .await
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    /// The `message.received` events of workspace `ws`. Filtered here by the
    /// envelope, not with `--workspace` (which matches nothing; see
    /// [`events_export_by_workspace`]).
    async fn received(&self) -> Vec<Value> {
        self.export(&["--type", "message.received"])
            .await
            .into_iter()
            .filter(|e| e["envelope"]["workspace"] == "ws")
            .collect()
    }
}

impl Server {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGKILL, and reap.
    async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL");
    }
}

async fn sigkill_after_the_200(log: LogKind) {
    let bin = Binary::new(log).await;
    let client = reqwest::Client::new();

    // Set-up: a workspace (on the host) and its number (over HTTP, with workers so
    // the claim is projected).
    let out = bin.run(&["bootstrap", "--workspace", "ws"]).await;
    let owner = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .expect("an owner key")
        .trim()
        .to_string();
    let setup = bin.serve("api,workers", 1).await;
    let r = client
        .put(format!(
            "{}/v1/workspaces/ws/phone-numbers/{NUMBER_A}",
            setup.url
        ))
        .bearer_auth(&owner)
        .json(&json!({"waba_id": WABA_A, "display_phone_number": "15551230000"}))
        .send()
        .await
        .expect("claim");
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "{}",
        r.text().await.unwrap_or_default()
    );
    setup.kill().await;

    // The API alone: the body is acknowledged, then the process dies unprocessed.
    let api = bin.serve("api", 2).await;
    let body = fixture("inbound_text.json");
    let r = client
        .post(format!("{}/webhooks/meta", api.url))
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            recorded_signature("inbound_text.json"),
        )
        .body(body.clone())
        .send()
        .await
        .expect("webhook");
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "{}",
        r.text().await.unwrap_or_default()
    );
    api.kill().await;

    let raw = bin
        .export(&["--stream", "raw", "--type", "webhook.received"])
        .await;
    assert_eq!(raw.len(), 1, "the acknowledged body is not in the log");
    assert_eq!(
        raw[0]["body"].as_str().map(str::as_bytes),
        Some(body.as_slice()),
        "the exported body is not byte-exact"
    );
    assert!(
        bin.received().await.is_empty(),
        "processed before the kill: the test proves nothing"
    );

    // Workers come up and process it, exactly once.
    let full = bin.serve("api,workers", 3).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let received = loop {
        let received = bin.received().await;
        if !received.is_empty() {
            break received;
        }
        assert!(
            Instant::now() < deadline,
            "message.received never appeared:\n{}",
            full.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0]["data"]["wamid"], WAMID_TEXT);
    assert_eq!(received[0]["envelope"]["workspace"], "ws");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = bin.received().await;
    assert_eq!(again.len(), 1, "{again:?}");
    let raw = bin
        .export(&["--stream", "raw", "--type", "webhook.received"])
        .await;
    assert_eq!(raw.len(), 1);
    full.kill().await;
}

/// `wabridge events export --workspace ws` prints that workspace's events.
async fn events_export_by_workspace(log: LogKind) {
    let bin = Binary::new(log).await;
    bin.run(&["bootstrap", "--workspace", "ws"]).await;
    let all = bin.export(&["--type", "workspace.created"]).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["envelope"]["workspace"], "ws");
    let of_ws = bin
        .export(&["--type", "workspace.created", "--workspace", "ws"])
        .await;
    assert_eq!(
        of_ws, all,
        "--workspace ws drops the workspace's own events"
    );
}

// ------------------------------------------------------------------ runners

/// One `#[tokio::test]` per check, on the given log backend.
macro_rules! webhook_tests {
    ($log:expr; $($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            super::$check($log).await;
        }
    )*};
}

mod embedded {
    use super::*;

    webhook_tests!(LogKind::Embedded;
        handshake, fixtures_are_stored_byte_exact, bad_signatures_are_refused,
        escaped_unicode, routing_and_splitting_sqlite, redelivery_inside_the_window,
        redelivery_after_the_window, unknown_number_attached_later,
        a_moved_number_routes_to_its_new_workspace, unparsable_body_becomes_a_dead_letter, over_the_body_limit, at_the_body_limit,
        sigkill_after_the_200);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_export_by_workspace() {
        super::events_export_by_workspace(LogKind::Embedded).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn routing_and_splitting_postgres() {
        super::routing_and_splitting(LogKind::Embedded, DbKind::Postgres).await;
    }
}

mod jetstream {
    use super::*;

    webhook_tests!(LogKind::JetStream;
        handshake, fixtures_are_stored_byte_exact, bad_signatures_are_refused,
        escaped_unicode, routing_and_splitting_sqlite, redelivery_inside_the_window,
        redelivery_after_the_window, unknown_number_attached_later,
        a_moved_number_routes_to_its_new_workspace, unparsable_body_becomes_a_dead_letter, over_the_body_limit, at_the_body_limit,
        sigkill_after_the_200);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn routing_and_splitting_postgres() {
        super::routing_and_splitting(LogKind::JetStream, DbKind::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_export_by_workspace() {
        super::events_export_by_workspace(LogKind::JetStream).await;
    }
}
