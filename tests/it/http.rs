//! HTTP conventions, the OpenAPI document, schemas, configuration and start-up,
//! projection rebuilds and dead letters of projections.

use std::{process::Stdio, time::Duration};

use reqwest::{Method, StatusCode};
use serde_json::json;
use wabridge_events::{Actor, Envelope, NewEvent, StreamKind};
use wabridge_projections::{projection::checksum, views, Driver, Store};

use crate::support::app::{
    fixture, fresh_postgres, spawn_app, spawn_app_with, DbKind, LogKind, TestOptions,
};

#[tokio::test]
async fn errors_are_problem_documents() {
    let app = spawn_app(LogKind::Embedded, DbKind::Sqlite).await;
    assert_eq!(
        app.call(Method::GET, "/healthz", None, None).await.text,
        "ok"
    );
    let r = app.call(Method::GET, "/nope", None, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.content_type, "application/problem+json");
    assert_eq!(r.json["code"], "not_found");
    // a body that is not JSON, with the wrong content type, and with a wrong shape
    let client = reqwest::Client::new();
    for (ctype, body) in [
        ("text/plain", "{}"),
        ("application/json", "{not json"),
        ("application/json", "{\"slug\": 5, \"name\": \"x\"}"),
        (
            "application/json",
            "{\"slug\":\"a\",\"name\":\"b\",\"extra\":1}",
        ),
    ] {
        let res = client
            .post(app.url("/v1/workspaces"))
            .bearer_auth(&app.operator)
            .header("content-type", ctype)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{ctype} {body}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let j: serde_json::Value = res.json().await.unwrap();
        assert_eq!(j["code"], "validation_failed");
        assert_eq!(j["status"], 400);
        assert!(j["title"].is_string() && j["type"].is_string() && j["detail"].is_string());
    }
    let list = app.get("/v1/workspaces", &app.operator).await;
    assert_eq!(list.json["items"], json!([]), "bad input changed nothing");
    // a route whose secret is not set answers 503 naming the variable
    let bare = spawn_app_with(TestOptions {
        meta_secrets: false,
        ..TestOptions::new(LogKind::Embedded, DbKind::Sqlite)
    })
    .await;
    let r = bare.webhook(b"{}", Some("sha256=00")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json["code"], "not_configured");
    assert!(r.json["detail"]
        .as_str()
        .unwrap()
        .contains("META_APP_SECRET"));
    let r = bare
        .call(
            Method::GET,
            "/webhooks/meta?hub.mode=subscribe&hub.verify_token=x&hub.challenge=1",
            None,
            None,
        )
        .await;
    assert!(r.json["detail"]
        .as_str()
        .unwrap()
        .contains("META_VERIFY_TOKEN"));
}

#[tokio::test]
async fn openapi_documents_every_route_and_schemas_do_not_drift() {
    let app = spawn_app(LogKind::Embedded, DbKind::Sqlite).await;
    let doc = app
        .call(Method::GET, "/openapi.json", None, None)
        .await
        .json;
    assert_eq!(doc["openapi"], "3.1.0");
    for route in wabridge::http::routes::routes() {
        let op = &doc["paths"][route.path][route.method.as_str().to_ascii_lowercase()];
        assert!(
            op.is_object(),
            "{} {} missing from /openapi.json",
            route.method,
            route.path
        );
        // and the router really serves it (anything but the fallback's 404 "no such route")
        let r = app
            .call(
                route.method.clone(),
                &route.path.replace(['{', '}'], ""),
                None,
                None,
            )
            .await;
        assert_ne!(
            r.json["detail"], "no such route",
            "{} {} not routed",
            route.method, route.path
        );
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let drift = wabridge::schemas::check(&dir);
    assert!(
        drift.is_empty(),
        "schemas/ drifted from the code: {drift:?}; run `cargo run -- schemas write`"
    );
    let readme = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    assert!(wabridge::schemas::readme_current(&readme), "README.md's role × permission table drifted from the code; run `cargo run -- schemas write`");
    let served = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    assert_eq!(
        served,
        std::fs::read_to_string(dir.join("openapi.json")).unwrap()
    );
}

/// The validator `./scripts/test` installs (`OPENAPI_SPEC_VALIDATOR`, else the tools
/// venv): a check of the document by an implementation that is not ours.
fn openapi_validator() -> std::path::PathBuf {
    std::env::var_os("OPENAPI_SPEC_VALIDATOR")
        .map(Into::into)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(".tools/venv/bin/openapi-spec-validator")
        })
}

#[tokio::test]
async fn the_openapi_document_passes_an_independent_validator() {
    let app = spawn_app(LogKind::Embedded, DbKind::Sqlite).await;
    let served = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(served.status, StatusCode::OK);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, &served.text).unwrap();
    let validator = openapi_validator();
    let out = std::process::Command::new(&validator)
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{} ({e}); run ./scripts/test, which installs it",
                validator.display()
            )
        });
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every status a route can answer is documented, with its codes.
    let doc = served.json;
    let op = |path: &str, method: &str| doc["paths"][path][method].clone();
    let post_webhook = op("/webhooks/meta", "post");
    for status in ["200", "400", "401", "413", "503"] {
        assert!(
            post_webhook["responses"][status].is_object(),
            "POST /webhooks/meta {status}"
        );
    }
    let desc = post_webhook["responses"]["503"]["description"]
        .as_str()
        .unwrap();
    assert!(
        desc.contains("log_unavailable") && desc.contains("not_configured"),
        "{desc}"
    );
    let create_key = op("/v1/workspaces/{ws}/api-keys", "post");
    assert!(create_key["responses"]["201"]["content"]["application/json"].is_object());
    assert!(create_key["responses"]["409"].is_object());
    assert_eq!(create_key["x-permission"], "keys.manage");
    let revoke = op("/v1/workspaces/{ws}/api-keys/{id}", "delete");
    assert!(revoke["responses"]["204"].is_object(), "{revoke}");
    assert!(revoke["responses"]["503"]["description"]
        .as_str()
        .unwrap()
        .contains("workers_unavailable"));
    // Roles are an enum, times date-times, in request bodies.
    let schemas = &doc["components"]["schemas"];
    let role = &schemas["Role"];
    let roles: Vec<&str> = role["enum"]
        .as_array()
        .or_else(|| role["oneOf"].as_array())
        .map(|v| {
            v.iter()
                .filter_map(|r| r.as_str().or(r["const"].as_str()))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(roles, ["viewer", "agent", "admin", "owner"], "{role}");
    let expires = &schemas["CreateKey"]["properties"]["expires_at"];
    assert!(
        expires
            .to_string()
            .contains("#/components/schemas/Timestamp"),
        "{expires}"
    );
    assert_eq!(schemas["Timestamp"]["format"], "date-time");
    app.stop().await;
}

#[tokio::test]
async fn metrics_and_readiness() {
    let app = spawn_app(LogKind::Embedded, DbKind::Sqlite).await;
    app.webhook(b"{}", Some("sha256=bad")).await;
    app.call(Method::GET, "/v1/permissions", None, None).await;
    app.call(
        Method::GET,
        "/v1/workspaces/acme/tokens",
        Some(&app.operator),
        None,
    )
    .await;
    let m = app.call(Method::GET, "/metrics", None, None).await.text;
    for name in [
        "wabridge_rate_limit_rejections_total 0",
        "wabridge_webhooks_ingested_total",
        "wabridge_webhook_signature_failures_total 1",
        "wabridge_projection_lag_events{projection=\"audit\"}",
        "wabridge_dead_letters_open",
        "# HELP wabridge_projection_lag_events ",
        "wabridge_log_append_seconds_bucket{le=",
        "wabridge_webhook_ingest_seconds_bucket",
        "wabridge_sender_retries_total",
        // this instance took every unit of work at start
        "wabridge_lease_changes_total{unit=\"projections.0\",change=\"acquired\"} 1",
        "wabridge_lease_changes_total{unit=\"webhook_processor.0\",change=\"acquired\"} 1",
        // counted by route template, not by raw path
        "wabridge_http_responses_total{route=\"/v1/permissions\",status=\"200\"} 1",
        "wabridge_http_responses_total{route=\"/webhooks/meta\",status=\"401\"} 1",
        "wabridge_http_responses_total{route=\"/v1/workspaces/{ws}/tokens\",status=\"404\"} 1",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics:\n{m}");
    }
    app.settle().await;
    let r = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["ready"], true);
}

pub(crate) async fn activity(app: &crate::support::app::TestApp) {
    let owner = app.workspace("acme").await;
    app.workspace("beta").await;
    app.claim("acme", "700800900100200", "300100200300400")
        .await;
    let r = app
        .put(
            "/v1/workspaces/acme/phone-numbers/700800900100200/token",
            &owner,
            json!({"access_token": "EAAG-rebuild", "expires_at": "2030-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    for f in [
        "inbound_text.json",
        "statuses_delivered_and_failed.json",
        "batch_two_numbers.json",
        "template_status_paused.json",
    ] {
        assert_eq!(app.signed_webhook(&fixture(f)).await.status, StatusCode::OK);
    }
    app.settle().await;
}

async fn rebuild_matches(db: DbKind) {
    let app = spawn_app(LogKind::Embedded, db).await;
    activity(&app).await;
    assert!(
        views::messages::count(&app.app.ctx.store, "acme")
            .await
            .unwrap()
            >= 2
    );
    for target in [DbKind::Sqlite, DbKind::Postgres] {
        let dir = tempfile::tempdir().unwrap();
        let url = match target {
            DbKind::Sqlite => format!("sqlite://{}", dir.path().join("rebuild.db").display()),
            DbKind::Postgres => fresh_postgres().await,
        };
        let store = Store::connect(&url).await.unwrap();
        let driver = Driver {
            log: app.app.ctx.log.clone(),
            store: store.clone(),
            progress: Default::default(),
        };
        let keys = app.app.projection_keys();
        driver.catch_up(&views::follower(&keys)).await.unwrap();
        for p in views::all(&keys) {
            let live = checksum(&app.app.ctx.store, &*p).await.unwrap();
            let rebuilt = checksum(&store, &*p).await.unwrap();
            assert_eq!(
                live,
                rebuilt,
                "{} rebuilt into {target:?} differs from live {db:?}",
                p.name()
            );
        }
    }
}

#[tokio::test]
async fn rebuild_from_the_log_is_identical_sqlite() {
    rebuild_matches(DbKind::Sqlite).await;
}

#[tokio::test]
async fn rebuild_from_the_log_is_identical_postgres() {
    rebuild_matches(DbKind::Postgres).await;
}

#[tokio::test]
async fn an_event_no_projection_understands_becomes_dead_letters_not_a_skip() {
    let app = spawn_app(LogKind::Embedded, DbKind::Sqlite).await;
    let ns = app.app.ctx.log.namespace().clone();
    let ev = NewEvent {
        subject: ns.domain_subject(None, "future", "x"),
        envelope: Envelope::new("future.thing", 1, None, Actor::system("test")),
        payload: b"{}".to_vec().into(),
        msg_id: None,
        expected_last_subject_seq: None,
    };
    let seq = app.app.ctx.log.append(ev).await.unwrap().seq;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        app.settle().await;
        let list = app.get("/v1/admin/dead-letters", &app.operator).await;
        let items = list.json["items"].as_array().unwrap().clone();
        let for_event: Vec<_> = items
            .iter()
            .filter(|d| d["seq"] == seq && d["event_type"] == "future.thing")
            .collect();
        if for_event.len() == views::names().len() {
            assert!(for_event.iter().all(|d| d["status"] == "open"));
            let id = for_event[0]["id"].as_str().unwrap().to_string();
            // It does not decode: a dead letter at once, not after retries.
            let first = for_event[0]["attempts"].as_i64().unwrap();
            assert_eq!(first, 1, "{}", for_event[0]);
            // redrive: still fails (unknown type), so it is recorded again and stays open
            let r = app
                .post(
                    &format!("/v1/admin/dead-letters/{id}/redrive"),
                    &app.operator,
                    json!({}),
                )
                .await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
            let again = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                app.settle().await;
                let d = app
                    .get(&format!("/v1/admin/dead-letters/{id}"), &app.operator)
                    .await
                    .json;
                if d["status"] == "open" && d["attempts"].as_i64().unwrap() > first {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < again,
                    "redrive not processed: {d}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letters not recorded: {items:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // the checkpoint moved past it: later events are still applied
    app.workspace("after").await;
}

#[tokio::test]
async fn read_your_writes_waits_for_the_projection() {
    let app = spawn_app(LogKind::JetStream, DbKind::Sqlite).await;
    app.workspace("ryw").await;
    let ctx = &app.app.ctx;
    let head = ctx.log.last_seq(StreamKind::Domain).await.unwrap();
    assert!(ctx
        .store
        .wait_for(&ctx.progress, "workspaces", head, Duration::from_secs(5))
        .await
        .unwrap());
    assert!(
        !ctx.store
            .wait_for(
                &ctx.progress,
                "workspaces",
                head + 1000,
                Duration::from_millis(200)
            )
            .await
            .unwrap(),
        "a sequence not yet applied must time out"
    );
}

fn binary() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_wabridge"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn run_until_exit(mut cmd: std::process::Command, within: Duration) -> (bool, String) {
    let started = std::time::Instant::now();
    let mut child = cmd.spawn().unwrap();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (
                status.success(),
                String::from_utf8_lossy(&out.stdout).to_string()
                    + &String::from_utf8_lossy(&out.stderr),
            );
        }
        if started.elapsed() > within {
            child.kill().unwrap();
            panic!("did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn malformed_or_missing_configuration_refuses_start_up_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("WABRIDGE_MAX_BODY", "lots")], "WABRIDGE_MAX_BODY"),
        (vec![("WABRIDGE_LISTEN", "nowhere")], "WABRIDGE_LISTEN"),
        (vec![("WABRIDGE_ROLES", "everything")], "WABRIDGE_ROLES"),
        (
            vec![("WABRIDGE_DEDUP_WINDOW", "soon")],
            "WABRIDGE_DEDUP_WINDOW",
        ),
        // Out of range: once started, then killed the embedded log's writer.
        (
            vec![("WABRIDGE_DEDUP_WINDOW", "999999999d")],
            "WABRIDGE_DEDUP_WINDOW",
        ),
        (vec![("WABRIDGE_MAX_BODY", "99999MiB")], "WABRIDGE_MAX_BODY"),
        (
            vec![("WABRIDGE_AUDIT_RETENTION_DAYS", "99999999999")],
            "WABRIDGE_AUDIT_RETENTION_DAYS",
        ),
        (
            vec![("WABRIDGE_HEADER_TIMEOUT", "0s")],
            "WABRIDGE_HEADER_TIMEOUT",
        ),
        (
            vec![("WABRIDGE_MAX_CONNECTIONS", "-5")],
            "WABRIDGE_MAX_CONNECTIONS",
        ),
        (vec![("DATABASE_URL", "mysql://x")], "DATABASE_URL"),
        (vec![("TOKEN_MASTER_KEY", "abcd")], "TOKEN_MASTER_KEY"),
        (vec![("NATS_URL", "nats://127.0.0.1:1")], "META_APP_SECRET"),
    ];
    for (env, var) in cases {
        let mut cmd = binary();
        cmd.arg("serve").env("WABRIDGE_DATA_DIR", dir.path());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let (ok, out) = run_until_exit(cmd, Duration::from_secs(10));
        assert!(!ok, "{env:?} started");
        assert!(
            out.contains(var),
            "{env:?}: message does not name {var}: {out}"
        );
        assert!(!out.contains("panicked"), "{out}");
    }
}

#[test]
fn unreachable_log_or_database_fails_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = [
        ("META_APP_SECRET", "s"),
        ("META_VERIFY_TOKEN", "v"),
        (
            "TOKEN_MASTER_KEYS",
            "v1:1111111111111111111111111111111111111111111111111111111111111111",
        ),
        ("AUDIT_SIGNING_KEY", "a"),
    ];
    let mut cmd = binary();
    cmd.arg("serve")
        .env("WABRIDGE_DATA_DIR", dir.path())
        .env("NATS_URL", "nats://127.0.0.1:1")
        .envs(secrets);
    let (ok, out) = run_until_exit(cmd, Duration::from_secs(20));
    assert!(!ok && out.contains("NATS_URL"), "{out}");
    let mut cmd = binary();
    cmd.arg("serve")
        .env("WABRIDGE_DATA_DIR", dir.path())
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/x");
    let (ok, out) = run_until_exit(cmd, Duration::from_secs(20));
    assert!(!ok && out.contains("DATABASE_URL"), "{out}");
}

#[tokio::test]
async fn serve_starts_with_no_variables_and_generates_a_development_key() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = binary()
        .arg("serve")
        .current_dir(dir.path())
        .env("WABRIDGE_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let mut ok = false;
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(&url).await {
            ok = r.text().await.unwrap() == "ok";
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(ok, "no /healthz: {err}");
    assert!(dir.path().join("data/dev-master-key").exists());
    assert!(dir.path().join("data/events.db").exists());
    assert!(err.contains("DEVELOPMENT MASTER KEY"), "{err}");
    assert!(
        !err.contains(
            std::fs::read_to_string(dir.path().join("data/dev-master-key"))
                .unwrap()
                .trim()
        ),
        "the key was printed"
    );
}

/// Two appliers that read the same checkpoint and hold batches of different lengths
/// (a host command catching up beside the follower): on PostgreSQL the second waits
/// for the first's row lock, and must then find the checkpoint moved, not commit its
/// batch on top (which would apply the first batch's events twice).
#[tokio::test]
async fn two_appliers_from_one_checkpoint_never_both_commit_postgres() {
    use wabridge_projections::checkpoint;
    let store = Store::connect(&fresh_postgres().await).await.unwrap();
    let mut setup = store.pool.begin().await.unwrap();
    assert!(checkpoint::advance_from(&mut setup, "p", 0, 5)
        .await
        .unwrap());
    setup.commit().await.unwrap();
    let mut first = store.pool.begin().await.unwrap();
    assert!(checkpoint::advance_from(&mut first, "p", 5, 10)
        .await
        .unwrap());
    let second = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut tx = store.pool.begin().await.unwrap();
            let moved = checkpoint::advance_from(&mut tx, "p", 5, 15).await.unwrap();
            if moved {
                tx.commit().await.unwrap();
            }
            moved
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.commit().await.unwrap();
    assert!(
        !second.await.unwrap(),
        "the second applier committed on top of the first"
    );
    assert_eq!(store.checkpoint("p").await.unwrap(), 10);
}
