//! Processing stored webhooks again (`replay --projection webhook_processor
//! --since T`): what a processor left out is appended once, what it derived is left
//! alone, and what today's state cannot attribute safely is left out and counted.

use reqwest::StatusCode;
use serde_json::{json, Value};
use wabridge_events::{ReadFrom, StreamKind, Timestamp};
use wabridge_handlers::webhooks::reprocess::{reprocess, Reprocessed};

use crate::consent::post_ok;
use crate::support::app::{spawn_app_with, text_webhook_to, DbKind, LogKind, TestApp, TestOptions};

const WABA: &str = "300100200300400";
const NUMBER: &str = "700800900100200";
/// A number of the same WABA nobody holds when its webhook arrives.
const LATER: &str = "700800900100299";
/// A number nobody ever holds.
const NOBODYS: &str = "700800900100277";

fn text(number: &str, from: &str, text: &str, wamid: &str) -> Vec<u8> {
    text_webhook_to(number, WABA, from, text, wamid)
}

/// How many `message.received` events the log holds for each wamid.
async fn received(app: &TestApp, wamids: &[&str]) -> Vec<usize> {
    let events = app.events_of(Some("acme"), "message.received").await;
    wamids
        .iter()
        .map(|w| {
            events
                .iter()
                .filter(|e| {
                    let d: Value = serde_json::from_slice(&e.payload).unwrap();
                    d["wamid"] == *w
                })
                .count()
        })
        .collect()
}

async fn opted_out(app: &TestApp, contact: &str) -> bool {
    let r = app
        .get(
            &format!("/v1/workspaces/acme/contacts/{contact}/consent"),
            &app.operator,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json["opted_out"].as_bool().unwrap()
}

/// How the reprocessing is asked for: the library call the CLI makes, or the
/// operator's HTTP route (`POST /v1/admin/projections/webhook_processor/rebuild`,
/// then `GET /v1/admin/projections` until it is done).
#[derive(Clone, Copy)]
enum Via {
    Call,
    Http,
}

async fn run(app: &TestApp, via: Via, from: ReadFrom, dry_run: bool) -> Reprocessed {
    if let Via::Call = via {
        return reprocess(&app.app.ctx, from, dry_run, |_, _| {})
            .await
            .unwrap();
    }
    let mut body = json!({ "dry_run": dry_run });
    match from {
        ReadFrom::Time(t) => body["since"] = json!(t.to_string()),
        ReadFrom::Seq(seq) => body["from_seq"] = json!(seq),
    }
    let r = app
        .post(
            "/v1/admin/projections/webhook_processor/rebuild",
            &app.operator,
            body,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        let r = app.get("/v1/admin/projections", &app.operator).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let processor = r.json["projections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "webhook_processor")
            .cloned()
            .unwrap();
        if processor["rebuild"]["state"] != "running" {
            break processor["rebuild"].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{processor}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["dry_run"], dry_run, "{status}");
    // Its end is in the operators' audit chain, with the counts.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = app
            .get(
                "/v1/admin/audit?action=projection.rebuild_finished&limit=1",
                &app.operator,
            )
            .await;
        let target = r.json["items"][0]["target"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let want = format!(
            "projection:webhook_processor{} reprocessed: raw ",
            if dry_run { " (dry run)" } else { "" }
        );
        if target.starts_with(&want)
            && target.contains(&format!(
                "{} bodies",
                status["reprocessed"]["bodies"].as_u64().unwrap()
            ))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{want} / {}",
            r.text
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        status["progress"]["position"], status["reprocessed"]["through"],
        "{status}"
    );
    serde_json::from_value(status["reprocessed"].clone()).unwrap()
}

fn counts(pairs: &[(&str, u64)]) -> std::collections::BTreeMap<String, u64> {
    pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

async fn left_out_webhooks_are_derived_once(log: LogKind, via: Via) {
    let app = spawn_app_with(TestOptions::new(log, DbKind::Sqlite)).await;
    app.workspace("acme").await;
    app.claim("acme", NUMBER, WABA).await;
    post_ok(
        &app,
        &text(NUMBER, "447700900001", "before", "wamid.before"),
    )
    .await;
    app.settle().await;

    // A bad deploy: these webhooks are stored (answered 200) and the processor's
    // checkpoint moves past them with nothing derived.
    let mut app = app.restart_with(|o| o.workers = false).await;
    let since = Timestamp::now();
    let first_raw = app.app.ctx.log.last_seq(StreamKind::Raw).await.unwrap() + 1;
    post_ok(&app, &text(NUMBER, "447700900002", "hello", "wamid.a")).await;
    post_ok(&app, &text(NUMBER, "447700900003", "STOP", "wamid.b")).await;
    post_ok(&app, &text(NUMBER, "447700900004", "STOP", "wamid.c")).await;
    post_ok(&app, &text(LATER, "447700900005", "hi", "wamid.d")).await;
    post_ok(&app, &text(NOBODYS, "447700900007", "hi", "wamid.e")).await;
    let raw_head = app.app.ctx.log.last_seq(StreamKind::Raw).await.unwrap();
    sqlx::query("UPDATE projection_checkpoints SET seq = $1 WHERE name = 'webhook_processor'")
        .bind(raw_head as i64)
        .execute(&app.app.ctx.store.pool)
        .await
        .unwrap();
    app = app.restart_with(|o| o.workers = true).await;
    app.settle().await;
    let all = ["wamid.a", "wamid.b", "wamid.c", "wamid.d", "wamid.e"];
    assert_eq!(received(&app, &all).await, [0, 0, 0, 0, 0]);

    // Since then: the number LATER is claimed, contact ...004 opts in by hand (its
    // STOP, processed now, must not override that), and a webhook is processed live.
    app.claim("acme", LATER, WABA).await;
    let r = app
        .post(
            "/v1/workspaces/acme/contacts/447700900004/opt-in",
            &app.operator,
            json!({"reason": "asked us on the phone"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    post_ok(&app, &text(NUMBER, "447700900006", "after", "wamid.after")).await;
    app.settle().await;

    let want = Reprocessed {
        from: first_raw,
        through: app.app.ctx.log.last_seq(StreamKind::Raw).await.unwrap(),
        bodies: 6,
        appended: counts(&[("contact.opted_out", 1), ("message.received", 3)]),
        // the live one after the restart
        already_derived: 1,
        skipped: counts(&[
            ("consent_changed_since", 1),
            ("number_claimed_since", 1),
            ("unrouted", 1),
        ]),
        dry_run: true,
    };
    let domain_head = app.app.ctx.log.last_seq(StreamKind::Domain).await.unwrap();
    let dry = run(&app, via, ReadFrom::Time(since), true).await;
    assert_eq!(dry, want);
    let since_dry: Vec<String> = app
        .app
        .ctx
        .log
        .read(
            StreamKind::Domain,
            ReadFrom::Seq(domain_head + 1),
            None,
            100,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.envelope.event_type)
        .collect();
    // The route records its start and end (the library call the CLI wraps does not).
    let own: &[&str] = match via {
        Via::Call => &[],
        Via::Http => &[
            "projection.rebuild_requested",
            "projection.rebuild_finished",
        ],
    };
    assert_eq!(
        since_dry, own,
        "a dry run appended more than its own record"
    );

    let done = run(&app, via, ReadFrom::Time(since), false).await;
    assert_eq!(
        done,
        Reprocessed {
            dry_run: false,
            ..want.clone()
        }
    );
    app.settle().await;
    assert_eq!(received(&app, &all).await, [1, 1, 1, 0, 0]);
    assert_eq!(
        received(&app, &["wamid.before", "wamid.after"]).await,
        [1, 1]
    );
    assert!(opted_out(&app, "447700900003").await, "the left-out STOP");
    assert!(
        !opted_out(&app, "447700900004").await,
        "an old STOP overrode the contact's later opt-in"
    );

    // Again, from the raw sequence: everything is derived by now.
    let again = run(&app, via, ReadFrom::Seq(first_raw), false).await;
    assert_eq!(
        again,
        Reprocessed {
            appended: counts(&[]),
            already_derived: 5,
            dry_run: false,
            ..want
        }
    );
    app.settle().await;
    assert_eq!(received(&app, &all).await, [1, 1, 1, 0, 0]);

    // The read models equal a rebuild from the log.
    let report = wabridge_projections::rebuild::rebuild(
        app.app.ctx.log.clone(),
        &app.app.ctx.store,
        wabridge::replay::select(&app.app, "all").unwrap(),
        true,
        |_| {},
    )
    .await
    .unwrap();
    assert!(report.all_equal(), "{report:#?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn left_out_webhooks_are_derived_once_embedded() {
    left_out_webhooks_are_derived_once(LogKind::Embedded, Via::Call).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn left_out_webhooks_are_derived_once_jetstream() {
    left_out_webhooks_are_derived_once(LogKind::JetStream, Via::Call).await;
}

/// The same through the operator's HTTP route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn left_out_webhooks_are_derived_once_over_http() {
    left_out_webhooks_are_derived_once(LogKind::Embedded, Via::Http).await;
}

/// What the route refuses, before anything runs: a position missing, both given,
/// a time that is not one, a position for a read model, an unknown field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reprocessing_route_refuses_what_it_cannot_do() {
    let app = spawn_app_with(TestOptions::new(LogKind::Embedded, DbKind::Sqlite)).await;
    app.settle().await;
    let domain_head = app.app.ctx.log.last_seq(StreamKind::Domain).await.unwrap();
    for (name, body, says) in [
        ("webhook_processor", Value::Null, "give since"),
        ("webhook_processor", json!({"dry_run": true}), "give since"),
        (
            "webhook_processor",
            json!({"since": "2026-12-01T00:00:00Z", "from_seq": 1}),
            "not both",
        ),
        (
            "webhook_processor",
            json!({"since": "yesterday"}),
            "RFC 3339",
        ),
        ("webhook_processor", json!({"from_seq": -1}), "expected u64"),
        (
            "consent",
            json!({"since": "2026-12-01T00:00:00Z"}),
            "go with webhook_processor",
        ),
        ("all", json!({"from_seq": 1}), "go with webhook_processor"),
        ("all", json!({"dryrun": true}), "unknown field"),
        ("all", json!([1]), "not valid"),
    ] {
        let r = app
            .post(
                &format!("/v1/admin/projections/{name}/rebuild"),
                &app.operator,
                body.clone(),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{name} {body}: {}",
            r.text
        );
        assert_eq!(r.json["code"], "validation_failed", "{}", r.text);
        assert!(r.text.contains(says), "{name} {body}: {}", r.text);
    }
    let r = app.get("/v1/admin/projections", &app.operator).await;
    assert!(r.json["rebuild_all"].is_null(), "{}", r.text);
    for p in r.json["projections"].as_array().unwrap() {
        assert!(p["rebuild"].is_null(), "{p}");
    }
    let appended = app
        .app
        .ctx
        .log
        .read(StreamKind::Domain, ReadFrom::Seq(domain_head + 1), None, 10)
        .await
        .unwrap();
    let types: Vec<_> = appended
        .iter()
        .map(|e| e.envelope.event_type.clone())
        .filter(|t| t != "api_key.used")
        .collect();
    assert!(
        types.is_empty(),
        "nothing but the key's use is logged: {types:?}"
    );
    app.stop().await;
}

/// A rebuild or reprocessing whose start cannot be recorded in the log (the audit
/// trail) is refused with `503 log_unavailable` and does not run. (Found this way:
/// with the log down, a keyed request answered `500 internal` — the check of the
/// key's revocation, and any command's append, turned the log's failure into an
/// internal error instead of failing closed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_start_cannot_be_recorded_does_not_run() {
    let nats = crate::support::nats::NatsServer::start().await;
    let mut opts = TestOptions::new(LogKind::JetStream, DbKind::Sqlite);
    opts.nats_url = Some(nats.url());
    let app = spawn_app_with(opts).await;
    app.settle().await;
    nats.kill();
    for (name, body) in [
        ("all", Value::Null),
        ("webhook_processor", json!({"from_seq": 1})),
    ] {
        let r = app
            .post(
                &format!("/v1/admin/projections/{name}/rebuild"),
                &app.operator,
                body,
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{name}: {}",
            r.text
        );
        assert_eq!(r.json["code"], "log_unavailable", "{name}: {}", r.text);
    }
    nats.restart().await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let r = loop {
        let r = app.get("/v1/admin/projections", &app.operator).await;
        if r.status == StatusCode::OK {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", r.text);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(r.json["rebuild_all"].is_null(), "{}", r.text);
    for p in r.json["projections"].as_array().unwrap() {
        assert!(p["rebuild"].is_null(), "{p}");
    }
    assert!(
        app.events_of(None, "projection.rebuild_requested")
            .await
            .is_empty(),
        "nothing was recorded"
    );
    app.stop().await;
}
