//! The token vault: storing, reading metadata, listing, revoking, permissions, no
//! plaintext at rest or in logs, binding to workspace and number, master key
//! rotation (resumable, never overwriting a newer token), a ring missing an old key,
//! and the binary's master key configuration.
//!
//! The flows run on every combination of log (embedded, JetStream) and read-model
//! database (SQLite, PostgreSQL); see [`matrix!`].

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::Connection;
use wabridge_events::{ReadFrom, Slug, StreamKind, Timestamp};
use wabridge_handlers::{
    access::Role,
    commands::{self, tokens::RotationReport, Caller, CommandError},
    vault::{self, KeyRing, SealError},
};

use crate::support::{
    app::{
        assert_problem, spawn_app, spawn_app_with, DbKind, LogKind, Resp, TestApp, TestOptions,
        MASTER_V1, MASTER_V2,
    },
    NatsServer,
};

// ------------------------------------------------------------------ helpers

const DAY: Duration = Duration::from_secs(86_400);

/// A token nobody else uses, easy to search for.
fn distinctive_token() -> String {
    format!("EAAG-secret-token-{}", uuid::Uuid::new_v4().simple())
}

/// First 8 bytes of SHA-256, hex (computed independently of the server).
fn fp(token: &str) -> String {
    hex::encode(&Sha256::digest(token.as_bytes())[..8])
}

/// Creates workspace `slug` (returning an owner key) holding `ids`: a token can only
/// be stored for a number the workspace holds.
async fn holding(app: &TestApp, slug: &str, ids: &[&str]) -> String {
    let owner = app.workspace(slug).await;
    let waba = if slug == "acme" { "5001" } else { "5002" };
    for id in ids {
        app.claim(slug, id, waba).await;
    }
    owner
}

/// The numbers the acme workspace of these tests holds.
const ACME: &[&str] = &["1001", "1002", "1003", "1004", "1005"];

fn token_path(ws: &str, id: &str) -> String {
    format!("/v1/workspaces/{ws}/phone-numbers/{id}/token")
}

fn slug(s: &str) -> Slug {
    Slug::parse(s).expect("slug")
}

fn ring(spec: &str) -> KeyRing {
    KeyRing::parse_keys(spec).expect("test ring")
}

fn v1_ring() -> KeyRing {
    ring(&format!("v1:{MASTER_V1}"))
}

fn v12_ring() -> KeyRing {
    ring(&format!("v1:{MASTER_V1},v2:{MASTER_V2}"))
}

/// Asserts a token metadata document: exactly the five fields, with these values.
fn assert_metadata(
    r: &Resp,
    key_version: &str,
    status: &str,
    fingerprint: &str,
    expires_at: Option<&str>,
    what: &str,
) {
    assert_eq!(r.status.as_u16(), 200, "{what}: status; body {}", r.text);
    let obj = r
        .json
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {}", r.text));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "expires_at",
            "fingerprint",
            "key_version",
            "status",
            "stored_at"
        ],
        "{what}: fields; body {}",
        r.text
    );
    assert_eq!(
        r.json["key_version"],
        json!(key_version),
        "{what}: key_version; body {}",
        r.text
    );
    assert_eq!(
        r.json["status"],
        json!(status),
        "{what}: status; body {}",
        r.text
    );
    assert_eq!(
        r.json["fingerprint"],
        json!(fingerprint),
        "{what}: fingerprint; body {}",
        r.text
    );
    match expires_at {
        Some(e) => assert_eq!(
            r.json["expires_at"],
            json!(e),
            "{what}: expires_at; body {}",
            r.text
        ),
        None => assert!(
            r.json["expires_at"].is_null(),
            "{what}: expires_at; body {}",
            r.text
        ),
    }
    let stored_at = r.json["stored_at"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: stored_at; body {}", r.text));
    Timestamp::parse(stored_at)
        .unwrap_or_else(|e| panic!("{what}: stored_at {stored_at:?} is not RFC 3339: {e}"));
}

/// Decrypts a number's token through the command layer.
async fn retrieve(
    app: &TestApp,
    keys: &KeyRing,
    ws: &str,
    id: &str,
) -> Result<SecretString, CommandError> {
    commands::tokens::retrieve(&app.app.ctx, Some(keys), &slug(ws), id).await
}

async fn rotate(app: &TestApp, keys: &KeyRing) -> RotationReport {
    commands::tokens::rotate(&app.app.ctx, Some(keys), &Caller::cli("t"), |_, _| {})
        .await
        .expect("rotation runs")
}

/// Every regular file under `dir` (recursively); vanished files are skipped.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// The files under `dir` whose bytes contain `needle` (an ASCII string).
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| match std::fs::read(p) {
            // Lossy decoding keeps every ASCII byte, so an ASCII needle is found iff
            // its bytes are in the file.
            Ok(bytes) => String::from_utf8_lossy(&bytes).contains(needle),
            Err(_) => false,
        })
        .collect()
}

/// Every text of every row of every table of a PostgreSQL database (`row::text`).
async fn postgres_dump(url: &str) -> String {
    let mut conn = sqlx::postgres::PgConnection::connect(url)
        .await
        .expect("connect to the test database");
    let tables: Vec<String> = sqlx::query_scalar("SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")
        .fetch_all(&mut conn)
        .await
        .expect("list tables");
    assert!(
        tables.iter().any(|t| t == "tokens"),
        "no tokens table among {tables:?}"
    );
    let mut out = String::new();
    for t in &tables {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT CAST(t AS TEXT) FROM \"{t}\" AS t"))
                .fetch_all(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("dump {t}: {e}"));
        for r in rows {
            out.push_str(t);
            out.push('|');
            out.push_str(&r);
            out.push('\n');
        }
    }
    out
}

/// Every event of both streams of the app's log as text: subject, envelope and payload.
async fn log_dump(app: &TestApp) -> String {
    let mut out = String::new();
    for stream in [StreamKind::Raw, StreamKind::Domain] {
        let events = app
            .app
            .ctx
            .log
            .read(stream, ReadFrom::Seq(1), None, 1_000_000)
            .await
            .expect("read the log");
        for e in events {
            out.push_str(&e.subject);
            out.push('|');
            out.push_str(&serde_json::to_string(&e.envelope).expect("envelope json"));
            out.push('|');
            out.push_str(&String::from_utf8_lossy(&e.payload));
            out.push('\n');
        }
    }
    out
}

/// Waits (polling) until a child exits, up to `timeout`; kills it otherwise.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs every flow on every log × database combination.
macro_rules! matrix {
    ($($name:ident => $f:path),* $(,)?) => {
        $(
            mod $name {
                use crate::support::app::{DbKind, LogKind};

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn embedded_sqlite() {
                    $f(LogKind::Embedded, DbKind::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn embedded_postgres() {
                    $f(LogKind::Embedded, DbKind::Postgres).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn jetstream_sqlite() {
                    $f(LogKind::JetStream, DbKind::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn jetstream_postgres() {
                    $f(LogKind::JetStream, DbKind::Postgres).await
                }
            }
        )*
    };
}

matrix! {
    lifecycle => super::lifecycle,
    bad_requests_store_nothing => super::bad_requests_store_nothing,
    permissions => super::permissions,
    no_plaintext_at_rest => super::no_plaintext_at_rest,
    sealed_token_is_bound_to_workspace_and_number => super::binding,
    rotation => super::rotation,
    rotation_never_overwrites_a_newer_token => super::rotation_concurrent,
    ring_without_old_key => super::ring_without_old_key,
    no_master_key_is_not_configured => super::no_master_key,
}

// ------------------------------------------------------------------ 1. lifecycle

async fn lifecycle(log: LogKind, db: DbKind) {
    let app = spawn_app(log, db).await;
    let owner = holding(&app, "acme", ACME).await;
    let keys = v1_ring();
    let p1 = token_path("acme", "1001");

    // Nothing stored yet.
    let r = app.get(&p1, &owner).await;
    assert_problem(&r, 404, "not_found", "GET before any PUT");
    let r = app.delete(&p1, &owner).await;
    assert_problem(&r, 404, "not_found", "DELETE before any PUT");
    let r = app.get("/v1/workspaces/acme/tokens", &owner).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    assert_eq!(r.json["items"], json!([]), "{}", r.text);

    // Store a token expiring in 3 days.
    let t1 = distinctive_token();
    let exp3 = Timestamp::now().plus(3 * DAY).to_string();
    let before = Timestamp::now();
    let r = app
        .put(&p1, &owner, json!({"access_token": t1, "expires_at": exp3}))
        .await;
    let after = Timestamp::now();
    assert_eq!(r.status.as_u16(), 204, "PUT: {}", r.text);
    assert_eq!(r.text, "", "204 has no body");

    let r = app.get(&p1, &owner).await;
    assert_metadata(&r, "v1", "valid", &fp(&t1), Some(&exp3), "GET after PUT");
    assert!(
        !r.text.contains(&t1),
        "the metadata contains the token: {}",
        r.text
    );
    let stored_at = Timestamp::parse(r.json["stored_at"].as_str().unwrap()).unwrap();
    assert!(
        before <= stored_at && stored_at <= after,
        "stored_at {stored_at} not within [{before}, {after}]"
    );
    let stored_at_1 = r.json["stored_at"].clone();

    // The command layer decrypts it.
    assert_eq!(
        retrieve(&app, &keys, "acme", "1001")
            .await
            .expect("retrieve")
            .expose_secret(),
        t1
    );

    // Two more: one expiring in 30 days, one with no expiry; an expiry with an
    // offset is normalised to UTC.
    let t2 = distinctive_token();
    let exp30 = Timestamp::now().plus(30 * DAY);
    let r = app
        .put(
            &token_path("acme", "1002"),
            &owner,
            json!({"access_token": t2, "expires_at": exp30.to_string()}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    let t3 = distinctive_token();
    let r = app
        .put(
            &token_path("acme", "1003"),
            &owner,
            json!({"access_token": t3}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    let r = app.get(&token_path("acme", "1003"), &owner).await;
    assert_metadata(&r, "v1", "valid", &fp(&t3), None, "GET without expiry");
    let t4 = distinctive_token();
    let exp_offset = "2030-01-02T03:04:05+02:00";
    let r = app
        .put(
            &token_path("acme", "1004"),
            &owner,
            json!({"access_token": t4, "expires_at": exp_offset}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    let r = app.get(&token_path("acme", "1004"), &owner).await;
    assert_metadata(
        &r,
        "v1",
        "valid",
        &fp(&t4),
        Some("2030-01-02T01:04:05.000000Z"),
        "GET with an offset expiry",
    );

    // Expiring within 7 days: only 1001.
    let r = app
        .get("/v1/workspaces/acme/tokens?expiring_within=7d", &owner)
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    let items = r.json["items"]
        .as_array()
        .unwrap_or_else(|| panic!("items: {}", r.text));
    assert_eq!(items.len(), 1, "{}", r.text);
    assert_eq!(items[0]["phone_number_id"], json!("1001"), "{}", r.text);
    assert_eq!(items[0]["fingerprint"], json!(fp(&t1)), "{}", r.text);
    assert_eq!(items[0]["key_version"], json!("v1"), "{}", r.text);
    assert_eq!(items[0]["status"], json!("valid"), "{}", r.text);
    assert_eq!(items[0]["expires_at"], json!(exp3), "{}", r.text);
    assert!(!r.text.contains(&t1), "the list contains the token");
    // Within 12 hours: none. Within 31 days: 1001 and 1002.
    let r = app
        .get("/v1/workspaces/acme/tokens?expiring_within=12h", &owner)
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    assert_eq!(r.json["items"], json!([]), "{}", r.text);
    let r = app
        .get("/v1/workspaces/acme/tokens?expiring_within=31d", &owner)
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    let ids: Vec<&str> = r.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["phone_number_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["1001", "1002"], "{}", r.text);
    // No filter: all four, ordered.
    let r = app.get("/v1/workspaces/acme/tokens", &owner).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    let ids: Vec<&str> = r.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["phone_number_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["1001", "1002", "1003", "1004"], "{}", r.text);
    for t in [&t1, &t2, &t3, &t4] {
        assert!(!r.text.contains(t.as_str()), "the list contains a token");
    }

    // Bad durations.
    // 999999999d once overflowed the time arithmetic and dropped the connection.
    for bad in [
        "abc",
        "0d",
        "-1d",
        "7x",
        "d",
        "",
        "999999999d",
        "3651d",
        "99999999999999999999s",
    ] {
        let r = app
            .get(
                &format!("/v1/workspaces/acme/tokens?expiring_within={bad}"),
                &owner,
            )
            .await;
        assert_problem(
            &r,
            400,
            "validation_failed",
            &format!("expiring_within={bad}"),
        );
    }
    let r = app
        .get("/v1/workspaces/acme/tokens?expiring=7d", &owner)
        .await;
    assert_problem(&r, 400, "validation_failed", "unknown list parameter");

    // Replacing the token: new fingerprint, new stored_at.
    let t1b = distinctive_token();
    let r = app
        .put(
            &p1,
            &owner,
            json!({"access_token": t1b, "expires_at": exp3}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    let r = app.get(&p1, &owner).await;
    assert_metadata(
        &r,
        "v1",
        "valid",
        &fp(&t1b),
        Some(&exp3),
        "GET after replacing",
    );
    assert_ne!(
        r.json["stored_at"], stored_at_1,
        "stored_at did not move on replace"
    );
    assert_eq!(
        retrieve(&app, &keys, "acme", "1001")
            .await
            .expect("retrieve")
            .expose_secret(),
        t1b
    );

    // Revoke.
    let r = app.delete(&p1, &owner).await;
    assert_eq!(r.status.as_u16(), 204, "DELETE: {}", r.text);
    let r = app.get(&p1, &owner).await;
    assert_metadata(
        &r,
        "v1",
        "revoked",
        &fp(&t1b),
        Some(&exp3),
        "GET after DELETE",
    );
    // Revoking again is a no-op.
    let r = app.delete(&p1, &owner).await;
    assert_eq!(r.status.as_u16(), 204, "second DELETE: {}", r.text);
    // A revoked token is not "expiring", and cannot be retrieved.
    let r = app
        .get("/v1/workspaces/acme/tokens?expiring_within=7d", &owner)
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    assert_eq!(r.json["items"], json!([]), "{}", r.text);
    match retrieve(&app, &keys, "acme", "1001").await {
        Err(CommandError::Conflict(m)) => assert!(m.contains("revoked"), "{m}"),
        Err(e) => panic!("retrieve of a revoked token: {e}"),
        Ok(_) => panic!("a revoked token was retrieved"),
    }
    // The others are untouched.
    let r = app.get(&token_path("acme", "1002"), &owner).await;
    assert_metadata(
        &r,
        "v1",
        "valid",
        &fp(&t2),
        Some(&exp30.to_string()),
        "other number after DELETE",
    );

    // Storing again makes it valid.
    let t1c = distinctive_token();
    let r = app.put(&p1, &owner, json!({"access_token": t1c})).await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    let r = app.get(&p1, &owner).await;
    assert_metadata(
        &r,
        "v1",
        "valid",
        &fp(&t1c),
        None,
        "GET after storing again",
    );

    // The events.
    app.settle().await;
    assert_eq!(app.events_of(Some("acme"), "token.stored").await.len(), 6);
    assert_eq!(
        app.events_of(Some("acme"), "token.revoked").await.len(),
        1,
        "a second revoke appends nothing"
    );

    // Another workspace sees none of it.
    let other = app.workspace("other").await;
    let r = app.get(&token_path("other", "1002"), &other).await;
    assert_problem(&r, 404, "not_found", "another workspace's token");
    let r = app.get("/v1/workspaces/other/tokens", &other).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    assert_eq!(r.json["items"], json!([]), "{}", r.text);
    app.stop().await;
}

// ------------------------------------------------------------------ bad requests

async fn bad_requests_store_nothing(log: LogKind, db: DbKind) {
    let app = spawn_app(log, db).await;
    let owner = holding(&app, "acme", ACME).await;
    let p = token_path("acme", "1001");
    let t = distinctive_token();
    let exp = Timestamp::now().plus(DAY).to_string();
    let long = "a".repeat(4097);
    let cases: Vec<(&str, Value)> = vec![
        ("empty object", json!({})),
        ("missing access_token", json!({"expires_at": exp})),
        ("unknown field", json!({"access_token": t, "scope": "all"})),
        ("misspelled field", json!({"acess_token": t})),
        ("access_token not a string", json!({"access_token": 12345})),
        ("access_token null", json!({"access_token": null})),
        ("empty access_token", json!({"access_token": ""})),
        (
            "access_token with whitespace",
            json!({"access_token": format!("{t} x")}),
        ),
        ("access_token too long", json!({"access_token": long})),
        (
            "bad expires_at",
            json!({"access_token": t, "expires_at": "next week"}),
        ),
        (
            "expires_at not a string",
            json!({"access_token": t, "expires_at": 1700000000}),
        ),
        ("not an object", json!([t])),
    ];
    for (what, body) in cases {
        let r = app.put(&p, &owner, body).await;
        assert_problem(&r, 400, "validation_failed", what);
        assert!(
            !r.text.contains(&t),
            "{what}: the answer echoes the token: {}",
            r.text
        );
    }
    // Not JSON at all, and no content type.
    let res = reqwest::Client::new()
        .put(app.url(&p))
        .bearer_auth(&owner)
        .header("content-type", "application/json")
        .body(format!("{{\"access_token\": \"{t}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    assert!(!res.text().await.unwrap().contains(&t));
    let res = reqwest::Client::new()
        .put(app.url(&p))
        .bearer_auth(&owner)
        .body(json!({"access_token": t}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status().as_u16(),
        400,
        "a body without a JSON content type"
    );
    // A bad number id.
    let r = app
        .put(
            &token_path("acme", "not%20a%20number"),
            &owner,
            json!({"access_token": t}),
        )
        .await;
    assert_problem(&r, 400, "validation_failed", "bad phone_number_id");
    // An unknown workspace (operator key).
    let r = app
        .put(
            &token_path("nope", "1001"),
            &app.operator,
            json!({"access_token": t}),
        )
        .await;
    assert_problem(&r, 404, "not_found", "unknown workspace");
    // No key.
    let r = app
        .call(
            reqwest::Method::PUT,
            &p,
            None,
            Some(json!({"access_token": t})),
        )
        .await;
    assert_problem(&r, 401, "unauthorized", "no key");

    // Nothing was stored.
    let r = app.get(&p, &owner).await;
    assert_problem(&r, 404, "not_found", "GET after bad requests");
    app.settle().await;
    assert!(
        app.events_of(None, "token.stored").await.is_empty(),
        "a bad request stored a token"
    );
    assert!(
        commands::tokens::retrieve(&app.app.ctx, Some(&v1_ring()), &slug("acme"), "1001")
            .await
            .is_err()
    );
    app.stop().await;
}

// ------------------------------------------------------------------ 2. permissions

async fn permissions(log: LogKind, db: DbKind) {
    let app = spawn_app(log, db).await;
    let owner = holding(&app, "acme", ACME).await;
    let admin = app.key("acme", Role::Admin).await;
    let agent = app.key("acme", Role::Agent).await;
    let viewer = app.key("acme", Role::Viewer).await;
    let p = token_path("acme", "1001");
    let t = distinctive_token();

    for (who, key) in [("viewer", &viewer), ("agent", &agent)] {
        let r = app.put(&p, key, json!({"access_token": t})).await;
        assert_problem(&r, 403, "forbidden", &format!("{who} PUT"));
        let r = app.get(&p, key).await;
        assert_problem(&r, 403, "forbidden", &format!("{who} GET (nothing stored)"));
        let r = app.delete(&p, key).await;
        assert_problem(
            &r,
            403,
            "forbidden",
            &format!("{who} DELETE (nothing stored)"),
        );
        let r = app
            .get("/v1/workspaces/acme/tokens?expiring_within=7d", key)
            .await;
        assert_problem(&r, 403, "forbidden", &format!("{who} list"));
    }
    let r = app.get(&p, &owner).await;
    assert_problem(&r, 404, "not_found", "nothing stored by the refused PUTs");

    // Admin may.
    let r = app.put(&p, &admin, json!({"access_token": t})).await;
    assert_eq!(r.status.as_u16(), 204, "admin PUT: {}", r.text);
    let r = app.get(&p, &admin).await;
    assert_metadata(&r, "v1", "valid", &fp(&t), None, "admin GET");
    let r = app.get("/v1/workspaces/acme/tokens", &admin).await;
    assert_eq!(r.status.as_u16(), 200, "admin list: {}", r.text);

    // Viewer and agent still cannot, now that a token exists.
    for (who, key) in [("viewer", &viewer), ("agent", &agent)] {
        let r = app.get(&p, key).await;
        assert_problem(&r, 403, "forbidden", &format!("{who} GET"));
        assert!(
            !r.text.contains(&fp(&t)),
            "{who}: the refusal shows the fingerprint"
        );
        let r = app.delete(&p, key).await;
        assert_problem(&r, 403, "forbidden", &format!("{who} DELETE"));
        let r = app
            .put(&p, key, json!({"access_token": distinctive_token()}))
            .await;
        assert_problem(&r, 403, "forbidden", &format!("{who} PUT over"));
    }
    let r = app.get(&p, &owner).await;
    assert_metadata(&r, "v1", "valid", &fp(&t), None, "after refused DELETE/PUT");

    // Another workspace's owner: the workspace does not exist for it.
    let other = app.workspace("other").await;
    let r = app.get(&p, &other).await;
    assert_problem(&r, 404, "not_found", "another workspace's owner GET");
    let r = app.delete(&p, &other).await;
    assert_problem(&r, 404, "not_found", "another workspace's owner DELETE");
    let r = app
        .put(&p, &other, json!({"access_token": distinctive_token()}))
        .await;
    assert_problem(&r, 404, "not_found", "another workspace's owner PUT");

    // Admin revokes; owner sees it.
    let r = app.delete(&p, &admin).await;
    assert_eq!(r.status.as_u16(), 204, "admin DELETE: {}", r.text);
    let r = app.get(&p, &owner).await;
    assert_metadata(&r, "v1", "revoked", &fp(&t), None, "after admin DELETE");

    app.settle().await;
    assert_eq!(app.events_of(Some("acme"), "token.stored").await.len(), 1);
    assert_eq!(app.events_of(Some("acme"), "token.revoked").await.len(), 1);
    app.stop().await;
}

// ------------------------------------------------------------------ 3. no plaintext

async fn no_plaintext_at_rest(log: LogKind, db: DbKind) {
    let app = spawn_app(log, db).await;
    let owner = holding(&app, "acme", ACME).await;
    let t_revoked = distinctive_token();
    let t_kept = distinctive_token();
    let exp = Timestamp::now().plus(3 * DAY).to_string();

    // Stored, refused (malformed) with the token inside, rotated, revoked.
    let r = app
        .put(
            &token_path("acme", "1001"),
            &owner,
            json!({"access_token": t_revoked, "expires_at": exp}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    let r = app
        .put(
            &token_path("acme", "1002"),
            &owner,
            json!({"access_token": t_kept}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    let r = app
        .put(
            &token_path("acme", "1003"),
            &owner,
            json!({"access_token": t_kept, "oops": true}),
        )
        .await;
    assert_problem(&r, 400, "validation_failed", "malformed with the token");
    let r = app
        .put(
            &token_path("acme", "1003"),
            &owner,
            json!({"access_token": format!("{t_kept} {t_revoked}")}),
        )
        .await;
    assert_problem(&r, 400, "validation_failed", "token with whitespace");

    let report = rotate(&app, &v12_ring()).await;
    assert_eq!(
        report,
        RotationReport {
            rewrapped: 2,
            skipped_concurrent: 0,
            failed: vec![],
            remaining: 0
        }
    );
    let r = app.get(&token_path("acme", "1001"), &owner).await;
    assert_metadata(
        &r,
        "v2",
        "valid",
        &fp(&t_revoked),
        Some(&exp),
        "after rotation",
    );
    let r = app.delete(&token_path("acme", "1001"), &owner).await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    // Stored again after the rotation (under v1, the app's own ring).
    let r = app
        .put(
            &token_path("acme", "1004"),
            &owner,
            json!({"access_token": t_revoked}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    assert_eq!(
        retrieve(&app, &v12_ring(), "acme", "1002")
            .await
            .unwrap()
            .expose_secret(),
        t_kept
    );
    app.settle().await;

    // The API answers.
    let mut answers = String::new();
    for path in [
        "/v1/workspaces/acme/tokens",
        "/v1/workspaces/acme/audit",
        "/v1/workspaces/acme/audit?limit=500",
    ] {
        let r = app.get(path, &owner).await;
        assert_eq!(r.status.as_u16(), 200, "{path}: {}", r.text);
        answers.push_str(&r.text);
    }
    for id in ["1001", "1002", "1004"] {
        answers.push_str(&app.get(&token_path("acme", id), &owner).await.text);
    }
    assert!(
        answers.contains(&fp(&t_kept)),
        "the answers should show the fingerprint"
    );

    // Positive controls: the sealed forms are where the search looks.
    let store = &app.app.ctx.store;
    let sealed_kept = wabridge_projections::views::tokens::get(store, "acme", "1002")
        .await
        .unwrap()
        .expect("row 1002")
        .sealed;
    let sealed_revoked = wabridge_projections::views::tokens::get(store, "acme", "1001")
        .await
        .unwrap()
        .expect("row 1001")
        .sealed;
    assert_eq!(sealed_kept.key_version, "v2");

    let log_text = log_dump(&app).await;
    assert!(
        log_text.contains(&sealed_kept.ciphertext),
        "control: the log holds the sealed token"
    );
    let data_dir = app.opts.data_dir.clone().expect("data dir");
    let mut places: Vec<(String, String)> = vec![
        ("the log (read back)".into(), log_text),
        ("API answers".into(), answers),
    ];

    // Files: the data dir (embedded log, SQLite read models), the JetStream store.
    let mut dirs = vec![data_dir.clone()];
    if log == LogKind::JetStream {
        dirs.push(NatsServer::shared().await.store_dir());
    }
    match (log, db) {
        (LogKind::Embedded, _) => {
            assert!(
                !files_containing(&data_dir, &sealed_kept.ciphertext).is_empty(),
                "control: the embedded log files hold the sealed token"
            );
        }
        (LogKind::JetStream, _) => {
            let js = NatsServer::shared().await.store_dir();
            assert!(
                !files_containing(&js, &sealed_kept.ciphertext).is_empty(),
                "control: the JetStream store holds the sealed token"
            );
        }
    }
    if db == DbKind::Sqlite {
        let hits = files_containing(&data_dir, &sealed_revoked.ciphertext);
        assert!(
            hits.iter().any(|p| p
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("readmodels.db")),
            "control: readmodels.db* holds the sealed token: {hits:?}"
        );
    }
    if db == DbKind::Postgres {
        let dump = postgres_dump(app.opts.database_url.as_deref().expect("database url")).await;
        assert!(
            dump.contains(&sealed_kept.ciphertext),
            "control: the tokens table holds the sealed token"
        );
        assert!(
            dump.contains(&fp(&t_kept)),
            "control: the tokens table holds the fingerprint"
        );
        places.push(("PostgreSQL".into(), dump));
    }

    for secret in [&t_revoked, &t_kept] {
        let hex_secret = hex::encode(secret.as_bytes());
        for (what, text) in &places {
            assert!(
                !text.contains(secret.as_str()),
                "{what} contains the token in plain text"
            );
            assert!(
                !text.contains(&hex_secret),
                "{what} contains the token hex-encoded"
            );
        }
        for dir in &dirs {
            let hits = files_containing(dir, secret);
            assert!(hits.is_empty(), "the token is in plain text in {hits:?}");
            let hits = files_containing(dir, &hex_secret);
            assert!(hits.is_empty(), "the token is hex-encoded in {hits:?}");
        }
    }
    app.stop().await;
}

// ------------------------------------------------------------------ 4. binding

async fn binding(log: LogKind, db: DbKind) {
    let app = spawn_app(log, db).await;
    let owner = holding(&app, "acme", ACME).await;
    let other = holding(&app, "other", &["2001"]).await;
    let keys = app.app.cfg.token_keys.clone().expect("ring");
    let (ta, tb, tc) = (
        distinctive_token(),
        distinctive_token(),
        distinctive_token(),
    );
    for (ws, key, id, t) in [
        ("acme", &owner, "1001", &ta),
        ("acme", &owner, "1002", &tb),
        ("other", &other, "2001", &tc),
    ] {
        let r = app
            .put(&token_path(ws, id), key, json!({"access_token": t}))
            .await;
        assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    }
    let store = &app.app.ctx.store;
    let row = wabridge_projections::views::tokens::get(store, "acme", "1001")
        .await
        .unwrap()
        .expect("row");
    assert_eq!(row.key_version, "v1");
    assert_eq!(row.fingerprint, fp(&ta));
    let sealed = row.sealed.clone();

    // Opens where it belongs.
    assert_eq!(
        vault::open(&keys, "acme", "1001", &sealed)
            .expect("open")
            .expose_secret(),
        ta
    );
    // Nowhere else.
    for (ws, id) in [
        ("acme", "1002"),
        ("other", "1001"),
        ("other", "1002"),
        ("1001", "acme"),
        ("acme", "10010"),
        ("acm", "e1001"),
    ] {
        match vault::open(&keys, ws, id, &sealed) {
            Err(SealError::Decrypt) => {}
            Err(e) => panic!("{ws}/{id}: expected a decryption failure, got {e}"),
            Ok(_) => panic!("{ws}/{id}: the token of acme/1001 opened"),
        }
    }

    // A sealed token copied onto another number's row (acme/1002, and other/2001)
    // is refused by retrieval, never answered as that number's token.
    let copy_to = |ws: &'static str, id: &'static str| {
        let sealed = sealed.clone();
        let store = store.clone();
        async move {
            let n = sqlx::query("UPDATE tokens SET nonce = $1, ciphertext = $2 WHERE workspace = $3 AND phone_number_id = $4")
                .bind(&sealed.nonce)
                .bind(&sealed.ciphertext)
                .bind(ws)
                .bind(id)
                .execute(&store.pool)
                .await
                .expect("update")
                .rows_affected();
            assert_eq!(n, 1, "{ws}/{id}: row to overwrite");
        }
    };
    copy_to("acme", "1002").await;
    copy_to("other", "2001").await;
    // Retrieval reads the in-memory ciphertext cache: reload it from the tampered rows.
    app.app.ctx.tokens.load(store).await.expect("cache reload");
    for (ws, id) in [("acme", "1002"), ("other", "2001")] {
        match retrieve(&app, &keys, ws, id).await {
            Err(CommandError::Internal(e)) => {
                let msg = format!("{e:#}");
                assert!(msg.contains("could not be decrypted"), "{ws}/{id}: {msg}");
                assert!(!msg.contains(&ta), "{ws}/{id}: the error shows the token");
            }
            Err(e) => panic!("{ws}/{id}: unexpected error {e}"),
            Ok(t) => panic!(
                "{ws}/{id}: a misbound token was retrieved (same as acme/1001: {})",
                t.expose_secret() == ta
            ),
        }
    }
    // The original still opens, and the server still answers about the damaged rows.
    assert_eq!(
        retrieve(&app, &keys, "acme", "1001")
            .await
            .unwrap()
            .expose_secret(),
        ta
    );
    let r = app.get(&token_path("acme", "1002"), &owner).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    app.stop().await;
}

// ------------------------------------------------------------------ 5. rotation

/// Options for a second instance on the first one's data (log, namespace, database).
fn same_data(first: &TestOptions, master_keys: &str) -> TestOptions {
    TestOptions {
        master_keys: Some(master_keys.to_string()),
        ..first.clone()
    }
}

async fn rotation(log: LogKind, db: DbKind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = TestOptions {
        data_dir: Some(dir.path().to_path_buf()),
        master_keys: Some(format!("v1:{MASTER_V1}")),
        ..TestOptions::new(log, db)
    };
    let app1 = spawn_app_with(opts).await;
    let owner = holding(&app1, "acme", ACME).await;
    let ids = ["1001", "1002", "1003"];
    let tokens: Vec<String> = ids.iter().map(|_| distinctive_token()).collect();
    let mut before = Vec::new();
    for (id, t) in ids.iter().zip(&tokens) {
        let r = app1
            .put(&token_path("acme", id), &owner, json!({"access_token": t}))
            .await;
        assert_eq!(r.status.as_u16(), 204, "{}", r.text);
        let r = app1.get(&token_path("acme", id), &owner).await;
        assert_metadata(&r, "v1", "valid", &fp(t), None, "before rotation");
        before.push(r.json);
    }
    // Rotation with the v1-only ring has nothing to do.
    assert_eq!(rotate(&app1, &v1_ring()).await, RotationReport::default());
    app1.settle().await;
    let first = app1.opts.clone();
    app1.stop().await;

    // A second instance with v2 added.
    let app2 = spawn_app_with(same_data(&first, &format!("v1:{MASTER_V1},v2:{MASTER_V2}"))).await;
    let ring2 = app2.app.cfg.token_keys.clone().expect("ring");
    assert_eq!(ring2.current_version(), "v2");
    // The tokens still open under v1 before the rotation.
    for (id, t) in ids.iter().zip(&tokens) {
        assert_eq!(
            retrieve(&app2, &ring2, "acme", id)
                .await
                .expect("retrieve before rotation")
                .expose_secret(),
            t
        );
    }
    let mut progress = Vec::new();
    let report = commands::tokens::rotate(
        &app2.app.ctx,
        Some(&ring2),
        &Caller::cli("t"),
        |done, total| progress.push((done, total)),
    )
    .await
    .expect("rotation");
    assert_eq!(
        report,
        RotationReport {
            rewrapped: 3,
            skipped_concurrent: 0,
            failed: vec![],
            remaining: 0
        }
    );
    assert_eq!(progress, [(1, 3), (2, 3), (3, 3)]);

    for ((id, t), old) in ids.iter().zip(&tokens).zip(&before) {
        let r = app2.get(&token_path("acme", id), &owner).await;
        assert_metadata(&r, "v2", "valid", &fp(t), None, "after rotation");
        assert_eq!(
            r.json["stored_at"], old["stored_at"],
            "rotation changed stored_at"
        );
        assert_eq!(
            retrieve(&app2, &ring2, "acme", id)
                .await
                .expect("retrieve after rotation")
                .expose_secret(),
            t
        );
        // Now under v2: a v1-only ring no longer opens it; a v2-only ring does.
        assert!(
            retrieve(&app2, &v1_ring(), "acme", id).await.is_err(),
            "a v1-only ring opened a v2 token"
        );
        assert_eq!(
            retrieve(&app2, &ring(&format!("v2:{MASTER_V2}")), "acme", id)
                .await
                .unwrap()
                .expose_secret(),
            t
        );
    }
    app2.settle().await;
    assert_eq!(
        app2.events_of(Some("acme"), "token.rewrapped").await.len(),
        3
    );

    // Again: nothing to do (resumable, idempotent).
    let mut progress = Vec::new();
    let report = commands::tokens::rotate(
        &app2.app.ctx,
        Some(&ring2),
        &Caller::cli("t"),
        |done, total| progress.push((done, total)),
    )
    .await
    .expect("rotation");
    assert_eq!(report, RotationReport::default());
    assert!(progress.is_empty(), "{progress:?}");
    app2.settle().await;
    assert_eq!(
        app2.events_of(Some("acme"), "token.rewrapped").await.len(),
        3,
        "a second rotation appended rewraps"
    );
    // The rotation is not an audited change of the token (it holds no new secret),
    // but the metadata of a fresh store under v2 says v2.
    let t_new = distinctive_token();
    let r = app2
        .put(
            &token_path("acme", "1004"),
            &owner,
            json!({"access_token": t_new}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    let r = app2.get(&token_path("acme", "1004"), &owner).await;
    assert_metadata(&r, "v2", "valid", &fp(&t_new), None, "stored under v2");
    app2.stop().await;
    drop(dir);
}

async fn rotation_concurrent(log: LogKind, db: DbKind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = TestOptions {
        data_dir: Some(dir.path().to_path_buf()),
        master_keys: Some(format!("v1:{MASTER_V1}")),
        ..TestOptions::new(log, db)
    };
    let app1 = spawn_app_with(opts).await;
    let owner = holding(&app1, "acme", ACME).await;
    let ids = ["1001", "1002", "1003", "1004", "1005"];
    let old: Vec<String> = ids.iter().map(|_| distinctive_token()).collect();
    for (id, t) in ids.iter().zip(&old) {
        let r = app1
            .put(&token_path("acme", id), &owner, json!({"access_token": t}))
            .await;
        assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    }
    app1.settle().await;
    let first = app1.opts.clone();
    app1.stop().await;

    let app2 = spawn_app_with(same_data(&first, &format!("v1:{MASTER_V1},v2:{MASTER_V2}"))).await;
    let ring2 = app2.app.cfg.token_keys.clone().expect("ring");

    // (a) The rows to rotate are read, then a new token is stored for 1001 (under
    // v2), then the rotation runs: the new token stays.
    let todo = wabridge_projections::views::tokens::not_on_version(&app2.app.ctx.store, "v2")
        .await
        .unwrap();
    let todo_ids: Vec<&str> = todo
        .iter()
        .filter(|r| r.workspace == "acme")
        .map(|r| r.phone_number_id.as_str())
        .collect();
    assert_eq!(todo_ids, ids);
    let new_1001 = distinctive_token();
    let r = app2
        .put(
            &token_path("acme", "1001"),
            &owner,
            json!({"access_token": new_1001}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);

    // (b) While the rotation runs (after its first rewrap), new tokens are stored for
    // every number still on v1: whichever the rotation had read but not yet
    // rewrapped must be skipped, not overwritten.
    let mut fresh: Vec<(String, String)> = Vec::new();
    let mut calls = Vec::new();
    let report = commands::tokens::rotate(
        &app2.app.ctx,
        Some(&ring2),
        &Caller::cli("t"),
        |done, total| {
            calls.push((done, total));
            if done == 1 {
                tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(async {
                        for id in &ids[1..] {
                            let t = distinctive_token();
                            let r = app2
                                .put(&token_path("acme", id), &owner, json!({"access_token": t}))
                                .await;
                            assert_eq!(r.status.as_u16(), 204, "concurrent PUT: {}", r.text);
                            fresh.push((id.to_string(), t));
                        }
                    })
                });
            }
        },
    )
    .await
    .expect("rotation");
    // 1001 was not to do any more (already v2); of 1002..1005 the first was rewrapped
    // (then replaced), the other three changed meanwhile.
    assert_eq!(calls, [(1, 4), (2, 4), (3, 4), (4, 4)]);
    assert_eq!(
        report,
        RotationReport {
            rewrapped: 1,
            skipped_concurrent: 3,
            failed: vec![],
            remaining: 0
        }
    );

    let r = app2.get(&token_path("acme", "1001"), &owner).await;
    assert_metadata(
        &r,
        "v2",
        "valid",
        &fp(&new_1001),
        None,
        "1001 stored during the rotation",
    );
    assert_eq!(
        retrieve(&app2, &ring2, "acme", "1001")
            .await
            .unwrap()
            .expose_secret(),
        new_1001
    );
    for (id, t) in &fresh {
        let r = app2.get(&token_path("acme", id), &owner).await;
        assert_metadata(
            &r,
            "v2",
            "valid",
            &fp(t),
            None,
            &format!("{id} stored during the rotation"),
        );
        assert_eq!(
            retrieve(&app2, &ring2, "acme", id)
                .await
                .unwrap()
                .expose_secret(),
            t.as_str(),
            "{id}: the rotation overwrote a newer token"
        );
    }
    // Nothing left; a second run has nothing to do.
    assert_eq!(rotate(&app2, &ring2).await, RotationReport::default());
    app2.settle().await;
    assert_eq!(
        app2.events_of(Some("acme"), "token.rewrapped").await.len(),
        1
    );
    app2.stop().await;
    drop(dir);
}

// ------------------------------------------------------------------ 6. a ring without v1

async fn ring_without_old_key(log: LogKind, db: DbKind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = TestOptions {
        data_dir: Some(dir.path().to_path_buf()),
        master_keys: Some(format!("v1:{MASTER_V1}")),
        ..TestOptions::new(log, db)
    };
    let app1 = spawn_app_with(opts).await;
    let owner = holding(&app1, "acme", ACME).await;
    let t = distinctive_token();
    let r = app1
        .put(
            &token_path("acme", "1001"),
            &owner,
            json!({"access_token": t}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    app1.settle().await;
    let first = app1.opts.clone();
    app1.stop().await;

    let app2 = spawn_app_with(same_data(&first, &format!("v2:{MASTER_V2}"))).await;
    let ring2 = app2.app.cfg.token_keys.clone().expect("ring");
    assert_eq!(ring2.versions(), ["v2"]);
    match retrieve(&app2, &ring2, "acme", "1001").await {
        Err(CommandError::Internal(e)) => {
            let msg = format!("{e:#}");
            assert!(msg.contains("unknown master key version v1"), "{msg}");
            assert!(!msg.contains(&t), "the error shows the token");
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a v2-only ring opened a v1 token"),
    }
    // Rotation reports it as failed (without the token), and does not panic.
    let report = rotate(&app2, &ring2).await;
    assert_eq!(report.rewrapped, 0, "{report:?}");
    assert_eq!(report.skipped_concurrent, 0, "{report:?}");
    assert_eq!(report.remaining, 1, "{report:?}");
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert!(report.failed[0].starts_with("acme/1001: "), "{report:?}");
    assert!(!report.failed[0].contains(&t));

    // The server keeps answering.
    let r = app2.get(&token_path("acme", "1001"), &owner).await;
    assert_metadata(
        &r,
        "v1",
        "valid",
        &fp(&t),
        None,
        "metadata of an unopenable token",
    );
    let t2 = distinctive_token();
    let r = app2
        .put(
            &token_path("acme", "1002"),
            &owner,
            json!({"access_token": t2}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    let r = app2.get(&token_path("acme", "1002"), &owner).await;
    assert_metadata(&r, "v2", "valid", &fp(&t2), None, "stored under v2");
    assert_eq!(
        retrieve(&app2, &ring2, "acme", "1002")
            .await
            .unwrap()
            .expose_secret(),
        t2
    );
    let r = app2.get("/v1/workspaces/acme/tokens", &owner).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    assert_eq!(
        r.json["items"].as_array().map(Vec::len),
        Some(2),
        "{}",
        r.text
    );
    let r = app2.delete(&token_path("acme", "1001"), &owner).await;
    assert_eq!(
        r.status.as_u16(),
        204,
        "revoking an unopenable token: {}",
        r.text
    );
    let r = app2.get("/healthz", &owner).await;
    assert!(r.status.as_u16() < 500, "{}", r.text);
    app2.stop().await;
    drop(dir);
}

// ------------------------------------------------------------------ 7. no key (harness)

async fn no_master_key(log: LogKind, db: DbKind) {
    let app = spawn_app_with(TestOptions {
        master_keys: None,
        ..TestOptions::new(log, db)
    })
    .await;
    let owner = holding(&app, "acme", ACME).await;
    let t = distinctive_token();
    let r = app
        .put(
            &token_path("acme", "1001"),
            &owner,
            json!({"access_token": t}),
        )
        .await;
    assert_problem(&r, 503, "not_configured", "PUT without a master key");
    assert!(
        r.json["detail"]
            .as_str()
            .unwrap_or("")
            .contains("TOKEN_MASTER_KEYS"),
        "{}",
        r.text
    );
    assert!(!r.text.contains(&t));
    let r = app.get(&token_path("acme", "1001"), &owner).await;
    assert_problem(&r, 404, "not_found", "nothing stored");
    let r = app.get("/v1/workspaces/acme/tokens", &owner).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    match commands::tokens::retrieve(&app.app.ctx, None, &slug("acme"), "1001").await {
        Err(CommandError::NotConfigured(v)) => assert_eq!(v, "TOKEN_MASTER_KEYS"),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("retrieved without keys"),
    }
    match commands::tokens::rotate(&app.app.ctx, None, &Caller::cli("t"), |_, _| {}).await {
        Err(CommandError::NotConfigured(v)) => assert_eq!(v, "TOKEN_MASTER_KEYS"),
        other => panic!("rotate without keys: {other:?}"),
    }
    app.settle().await;
    assert!(app.events_of(None, "token.stored").await.is_empty());
    app.stop().await;
}

// ------------------------------------------------------------------ the binary

const BIN: &str = env!("CARGO_BIN_EXE_wabridge");

/// A `wabridge` command with a clean environment (nothing inherited).
pub(crate) fn wabridge(data_dir: &Path, env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("WABRIDGE_DATA_DIR", data_dir)
        .env("WABRIDGE_LISTEN", "127.0.0.1:0");
    if let Ok(path) = std::env::var("PATH") {
        c.env("PATH", path);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(Stdio::null());
    c
}

/// Runs `wabridge bootstrap --workspace ws` and returns the owner key (last line).
pub(crate) fn bootstrap(data_dir: &Path, env: &[(&str, &str)], ws: &str) -> String {
    let out = wabridge(data_dir, env)
        .args(["bootstrap", "--workspace", ws])
        .output()
        .expect("run bootstrap");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "bootstrap failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = stdout
        .lines()
        .last()
        .expect("a key line")
        .trim()
        .to_string();
    assert!(key.starts_with("wbk_"), "last line is not a key: {stdout}");
    key
}

/// A running `wabridge serve`, its output captured to files.
/// Stores a token on a served binary (204) and reads its metadata back (200).
async fn put_then_get_token(
    client: &reqwest::Client,
    served: &Served,
    owner: &str,
    path: &str,
    body: Value,
) -> Value {
    // A token can only be stored for a number the workspace holds.
    let number = path.strip_suffix("/token").expect("a token path");
    let res = client
        .put(served.url(number))
        .bearer_auth(owner)
        .json(&json!({"waba_id": "5001", "display_phone_number": "15551230000"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200, "claim {number}");
    let res = client
        .put(served.url(path))
        .bearer_auth(owner)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    let res = client
        .get(served.url(path))
        .bearer_auth(owner)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    res.json().await.unwrap()
}

pub(crate) struct Served {
    child: Child,
    addr: String,
    out_dir: tempfile::TempDir,
}

impl Served {
    pub(crate) fn start(data_dir: &Path, env: &[(&str, &str)]) -> Served {
        let out_dir = tempfile::tempdir().expect("tempdir");
        let stdout = std::fs::File::create(out_dir.path().join("stdout")).unwrap();
        let stderr = std::fs::File::create(out_dir.path().join("stderr")).unwrap();
        let mut child = wabridge(data_dir, env)
            .arg("serve")
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn serve");
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let err = std::fs::read_to_string(out_dir.path().join("stderr")).unwrap_or_default();
            if let Some(rest) = err.split("wabridge listening on http://").nth(1) {
                // Only once the address is whole (followed by the rest of its line):
                // the server may be writing the line as it is read, and a cut
                // `127.0.0.` is a valid host to a URL parser (127.0.0.0, port 80).
                if let Some((addr, _)) = rest.split_once(char::is_whitespace) {
                    break addr.to_string();
                }
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("serve exited ({status}): {err}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("serve did not start: {err}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Served {
            child,
            addr,
            out_dir,
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// stdout + stderr so far.
    pub(crate) fn output(&self) -> String {
        let mut out = String::new();
        for f in ["stdout", "stderr"] {
            out.push_str(&std::fs::read_to_string(self.out_dir.path().join(f)).unwrap_or_default());
            out.push('\n');
        }
        out
    }

    /// SIGKILL, wait; returns stdout + stderr.
    pub(crate) fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.output()
    }

    /// SIGTERM, wait; returns stdout + stderr.
    pub(crate) fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = wait_exit(&mut self.child, Duration::from_secs(15));
        assert!(status.is_some(), "serve did not stop on SIGTERM");
        let mut out = String::new();
        for f in ["stdout", "stderr"] {
            std::fs::File::open(self.out_dir.path().join(f))
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            out.push('\n');
        }
        out
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_never_prints_the_token() {
    let data = tempfile::tempdir().unwrap();
    let keys = format!("v1:{MASTER_V1}");
    let env = [("TOKEN_MASTER_KEYS", keys.as_str()), ("RUST_LOG", "debug")];
    let owner = bootstrap(data.path(), &env, "acme");
    let served = Served::start(data.path(), &env);
    let client = reqwest::Client::new();
    let t = distinctive_token();
    let path = token_path("acme", "1001");

    let body = put_then_get_token(
        &client,
        &served,
        &owner,
        &path,
        json!({"access_token": t, "expires_at": "2030-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(body["fingerprint"], json!(fp(&t)));
    assert_eq!(body["key_version"], json!("v1"));
    // Malformed requests carrying the token.
    for bad in [
        json!({"access_token": t, "extra": 1}),
        json!({"access_token": format!("{t} {t}")}),
        json!({"access_token": t, "expires_at": "soon"}),
    ] {
        let res = client
            .put(served.url(&path))
            .bearer_auth(&owner)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 400, "{bad}");
    }
    let res = client
        .put(served.url(&path))
        .bearer_auth(&owner)
        .header("content-type", "application/json")
        .body(format!("{{\"access_token\":\"{t}\","))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    // With the token as the bearer key (a client mix-up).
    let res = client
        .get(served.url(&path))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let res = client
        .delete(served.url(&path))
        .bearer_auth(&owner)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);

    let output = served.stop();
    assert!(
        output.contains("wabridge listening on"),
        "control: the output was captured: {output}"
    );
    assert!(
        output.contains("DEBUG"),
        "control: RUST_LOG=debug took effect"
    );
    assert!(
        !output.contains(&t),
        "the server's output contains the token"
    );
    assert!(
        !output.contains(MASTER_V1),
        "the server's output contains the master key"
    );
    let hits = files_containing(data.path(), &t);
    assert!(hits.is_empty(), "the token is in plain text in {hits:?}");
}

#[tokio::test]
async fn binary_refuses_bad_master_key_config() {
    let k1 = hex::encode(Sha256::digest(uuid::Uuid::new_v4().as_bytes()));
    let k2 = hex::encode(Sha256::digest(uuid::Uuid::new_v4().as_bytes()));
    let short = k1[..63].to_string();
    let keys_k1 = format!("v1:{k1}");
    let keys_short = format!("v1:{short}");
    // (what, the environment, what the error names)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (
            "both set",
            vec![
                ("TOKEN_MASTER_KEYS", keys_k1.as_str()),
                ("TOKEN_MASTER_KEY", k2.as_str()),
            ],
            &["TOKEN_MASTER_KEYS", "TOKEN_MASTER_KEY"],
        ),
        (
            "63 hex in TOKEN_MASTER_KEYS",
            vec![("TOKEN_MASTER_KEYS", keys_short.as_str())],
            &["TOKEN_MASTER_KEYS"],
        ),
        (
            "63 hex in TOKEN_MASTER_KEY",
            vec![("TOKEN_MASTER_KEY", short.as_str())],
            &["TOKEN_MASTER_KEY"],
        ),
    ];
    for (what, env, names) in cases {
        let data = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let out = wabridge(data.path(), &env)
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut child = out;
        let status = wait_exit(&mut child, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{what}: serve did not exit"));
        let mut text = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert!(
            !status.success(),
            "{what}: serve exited successfully: {text}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: took too long"
        );
        for name in names {
            assert!(
                text.contains(name),
                "{what}: the message does not name {name}: {text}"
            );
        }
        if what == "63 hex in TOKEN_MASTER_KEY" {
            assert!(
                !text.contains("TOKEN_MASTER_KEYS"),
                "{what}: names the wrong variable: {text}"
            );
        }
        for secret in [&k1, &k2, &short] {
            assert!(
                !text.contains(secret.as_str()),
                "{what}: the message contains a key: {text}"
            );
            assert!(
                !text.contains(&secret[..16]),
                "{what}: the message contains part of a key: {text}"
            );
        }
        assert!(!text.contains("listening"), "{what}: it started: {text}");
        assert!(
            !data.path().join("dev-master-key").exists(),
            "{what}: a development key was generated"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_dev_master_key_on_embedded_default() {
    let data = tempfile::tempdir().unwrap();
    let env: [(&str, &str); 0] = [];
    let owner = bootstrap(data.path(), &env, "acme");
    let served = Served::start(data.path(), &env);
    let client = reqwest::Client::new();
    let t = distinctive_token();
    let path = token_path("acme", "1001");
    let body =
        put_then_get_token(&client, &served, &owner, &path, json!({"access_token": t})).await;
    assert_eq!(body["fingerprint"], json!(fp(&t)));
    assert_eq!(body["key_version"], json!("v1"));
    assert_eq!(body["status"], json!("valid"));
    let output = served.stop();
    assert!(
        output.contains("DEVELOPMENT MASTER KEY"),
        "no development key warning: {output}"
    );
    let key_file = data.path().join("dev-master-key");
    assert!(key_file.exists(), "no dev-master-key file");
    let dev_key = std::fs::read_to_string(&key_file).unwrap();
    let dev_key = dev_key.trim().trim_start_matches("v1:");
    assert_eq!(dev_key.len(), 64, "dev key shape");
    assert!(
        !output.contains(dev_key),
        "the output contains the development key"
    );
    assert!(!output.contains(&t), "the output contains the token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "dev-master-key mode");
    }
    // A second start reuses the same key: the stored token still opens (its
    // fingerprint is unchanged and a rotation-free restart keeps v1).
    let served = Served::start(data.path(), &env);
    let res = client
        .get(served.url(&path))
        .bearer_auth(&owner)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let output = served.stop();
    assert_eq!(
        std::fs::read_to_string(&key_file)
            .unwrap()
            .trim()
            .trim_start_matches("v1:"),
        dev_key,
        "the development key changed"
    );
    assert!(!output.contains(dev_key));

    // The stored form opens with the development key (and only binds to acme/1001).
    let dev_ring = ring(std::fs::read_to_string(&key_file).unwrap().trim());
    let db = data.path().join("readmodels.db");
    let mut conn = sqlx::sqlite::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("open readmodels.db");
    let (key_version, nonce, ciphertext): (String, String, String) =
        sqlx::query_as("SELECT key_version, nonce, ciphertext FROM tokens WHERE workspace = 'acme' AND phone_number_id = '1001'").fetch_one(&mut conn).await.expect("token row");
    let sealed = wabridge_events::types::SealedToken {
        key_version,
        nonce,
        ciphertext,
    };
    assert_eq!(
        vault::open(&dev_ring, "acme", "1001", &sealed)
            .expect("open with the dev key")
            .expose_secret(),
        t
    );
    assert!(
        vault::open(&v1_ring(), "acme", "1001", &sealed).is_err(),
        "the dev key is the test key"
    );
}
