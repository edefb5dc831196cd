//! Access control: the permission table (generated from the route table), the key
//! lifecycle, revocation across instances, phone-number claims, bad input, the
//! permission matrix and audited denials.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use wabridge::http::routes::{routes, Access};
use wabridge_events::{types::ApiKeyRevoked, Slug, Timestamp};
use wabridge_handlers::{
    access::{Permission, Role},
    commands::Caller,
};

use crate::support::app::{
    assert_problem, spawn_app, spawn_app_with, DbKind, LogKind, Resp, TestApp, TestOptions,
};

// ------------------------------------------------------------------ helpers

/// The id part of a key text (`wbk_<id>_…`).
fn key_id(key: &str) -> String {
    key[4..20].to_string()
}

/// Creates a key as `by` and returns `(id, key)`.
async fn create_key(
    app: &TestApp,
    ws: &str,
    by: &str,
    role: &str,
    expires_at: Option<String>,
) -> (String, String) {
    let mut body = json!({"name": format!("{role} key"), "role": role});
    if let Some(e) = expires_at {
        body["expires_at"] = json!(e);
    }
    let r = app
        .post(&format!("/v1/workspaces/{ws}/api-keys"), by, body)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.json["id"].as_str().expect("id").to_string();
    let key = r.json["key"].as_str().expect("key").to_string();
    assert_eq!(key_id(&key), id);
    (id, key)
}

/// The key list of a workspace (first page, as `by`).
async fn list_keys(app: &TestApp, ws: &str, by: &str) -> Vec<Value> {
    let r = app
        .get(&format!("/v1/workspaces/{ws}/api-keys?limit=500"), by)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json["items"].as_array().expect("items").clone()
}

/// `/v1/workspaces` as the operator (slugs).
async fn workspace_slugs(app: &TestApp) -> Vec<String> {
    let r = app.get("/v1/workspaces?limit=500", &app.operator).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|w| w["slug"].as_str().expect("slug").to_string())
        .collect()
}

// ------------------------------------------------------------------ 1. permission table

/// Checks an answer against the expected problem, or against "allowed".
fn check(r: &Resp, expected: Option<(u16, &str)>) -> Result<(), String> {
    match expected {
        Some((status, code)) => {
            if r.status.as_u16() != status {
                return Err(format!(
                    "expected {status} {code}, got {}: {}",
                    r.status, r.text
                ));
            }
            if !r.content_type.starts_with("application/problem+json") {
                return Err(format!("content type {:?}: {}", r.content_type, r.text));
            }
            if r.json["code"] != json!(code) || r.json["status"] != json!(status) {
                return Err(format!("expected code {code}: {}", r.text));
            }
        }
        None => {
            if r.status == StatusCode::UNAUTHORIZED || r.status == StatusCode::FORBIDDEN {
                return Err(format!("allowed caller got {}: {}", r.status, r.text));
            }
            if r.status == StatusCode::NOT_FOUND && r.text.contains("workspace ws-a does not exist")
            {
                return Err(format!("404 for its own workspace: {}", r.text));
            }
            if r.status.is_server_error() {
                return Err(format!("server error {}: {}", r.status, r.text));
            }
        }
    }
    Ok(())
}

/// A concrete path for a route template.
fn fill(path: &str) -> String {
    path.replace("{ws}", "ws-a")
        .replace("{phone_number_id}", "700800900100200")
        .replace("{id}", "0000000000000000")
}

/// A plausible body for a route that takes one.
fn body_for(method: &Method, path: &str) -> Option<Value> {
    if *method == Method::GET || *method == Method::DELETE {
        return None;
    }
    Some(match path {
        "/v1/workspaces" => json!({"slug": "perm-table-new", "name": "new"}),
        "/v1/workspaces/{ws}/api-keys" => json!({"name": "perm", "role": "viewer"}),
        "/v1/workspaces/{ws}/phone-numbers/{phone_number_id}" => {
            json!({"waba_id": "100200300", "display_phone_number": "15551230000"})
        }
        "/v1/workspaces/{ws}/phone-numbers/{phone_number_id}/token" => json!({"access_token": "x"}),
        "/v1/admin/unrouted/{phone_number_id}/assign" => json!({"workspace": "ws-a"}),
        "/v1/admin/dead-letters/{id}/discard" => json!({"reason": "test"}),
        _ => json!({}),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    NoKey,
    Malformed,
    Revoked,
    Role(Role),
    OtherOwner,
    OtherViewer,
    Operator,
}

#[tokio::test]
async fn permission_table_from_the_route_table() {
    let table = routes();

    // Every workspace route carries a permission, every admin route is operator-only,
    // and nothing else is open but the known public and Meta routes.
    let open: Vec<(String, &str)> = table
        .iter()
        .filter(|r| matches!(r.access, Access::Public | Access::Meta))
        .map(|r| (r.method.to_string(), r.path))
        .collect();
    let mut open_sorted = open.clone();
    open_sorted.sort();
    let mut expected_open: Vec<(String, &str)> = vec![
        ("GET".into(), "/healthz"),
        ("GET".into(), "/readyz"),
        ("GET".into(), "/metrics"),
        ("GET".into(), "/v1/permissions"),
        ("GET".into(), "/webhooks/meta"),
        ("POST".into(), "/webhooks/meta"),
    ];
    expected_open.sort();
    // (`/openapi.json`, public too, is mounted by the router beside the table.)
    assert_eq!(open_sorted, expected_open, "routes without a key check");
    for r in &table {
        if r.path.starts_with("/v1/workspaces/{ws}") {
            assert!(
                matches!(r.access, Access::Workspace(_)),
                "{} {} must need a workspace permission, has {:?}",
                r.method,
                r.path,
                r.access
            );
        }
        if r.path.starts_with("/v1/admin") || r.path == "/v1/workspaces" {
            assert_eq!(
                r.access,
                Access::Operator,
                "{} {} must be operator-only",
                r.method,
                r.path
            );
        }
        if r.path.starts_with("/webhooks/") {
            assert_eq!(r.access, Access::Meta, "{} {}", r.method, r.path);
        }
    }
    let checked: Vec<&wabridge::http::routes::RouteDef> = table
        .iter()
        .filter(|r| matches!(r.access, Access::Workspace(_) | Access::Operator))
        .collect();
    assert!(
        checked.len() >= 20,
        "only {} protected routes",
        checked.len()
    );

    let app = spawn_app(LogKind::Embedded, DbKind::Sqlite).await;
    let owner = app.workspace("ws-a").await;
    let other_owner = app.workspace("ws-b").await;
    let other_viewer = app.key("ws-b", Role::Viewer).await;
    let viewer = app.key("ws-a", Role::Viewer).await;
    let agent = app.key("ws-a", Role::Agent).await;
    let admin = app.key("ws-a", Role::Admin).await;
    let (revoked_id, revoked) = create_key(&app, "ws-a", &app.operator, "owner", None).await;
    let r = app
        .delete(
            &format!("/v1/workspaces/ws-a/api-keys/{revoked_id}"),
            &app.operator,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    // A well-formed-looking but broken key, and plain garbage.
    let mut bad_checksum = viewer.clone();
    bad_checksum.replace_range(
        bad_checksum.len() - 1..,
        if viewer.ends_with('0') { "1" } else { "0" },
    );

    let callers: Vec<(Who, Option<String>)> = vec![
        (Who::NoKey, None),
        (Who::Malformed, Some("not-a-key".into())),
        (Who::Malformed, Some(bad_checksum)),
        (Who::Revoked, Some(revoked)),
        (Who::Role(Role::Viewer), Some(viewer)),
        (Who::Role(Role::Agent), Some(agent)),
        (Who::Role(Role::Admin), Some(admin)),
        (Who::Role(Role::Owner), Some(owner)),
        (Who::OtherOwner, Some(other_owner)),
        (Who::OtherViewer, Some(other_viewer)),
        (Who::Operator, Some(app.operator.clone())),
    ];

    let mut failures = Vec::new();
    let mut calls = 0usize;
    for route in &checked {
        let path = fill(route.path);
        for (who, key) in &callers {
            let r = app
                .call(
                    route.method.clone(),
                    &path,
                    key.as_deref(),
                    body_for(&route.method, route.path),
                )
                .await;
            let what = format!("{} {} as {:?}", route.method, route.path, who);
            let expected: Option<(u16, &str)> = match (who, route.access) {
                (Who::NoKey | Who::Malformed | Who::Revoked, _) => Some((401, "unauthorized")),
                (Who::OtherOwner | Who::OtherViewer, Access::Workspace(_)) => {
                    Some((404, "not_found"))
                }
                (Who::OtherOwner | Who::OtherViewer | Who::Role(_), Access::Operator) => {
                    Some((403, "forbidden"))
                }
                (Who::Role(role), Access::Workspace(p)) if !role.allows(p) => {
                    Some((403, "forbidden"))
                }
                (Who::Role(_) | Who::Operator, _) => None,
                (Who::OtherOwner | Who::OtherViewer, _) => unreachable!(),
            };
            calls += 1;
            if let Err(e) = check(&r, expected) {
                failures.push(format!("{what}: {e}"));
            }
        }
    }
    assert_eq!(calls, checked.len() * callers.len());
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The viewer's, agent's and admin's refusals were answered without side effects:
    // the revoked key is still revoked and no key was revoked by the table run.
    let keys = list_keys(&app, "ws-a", &app.operator).await;
    let revoked_rows: Vec<&Value> = keys.iter().filter(|k| !k["revoked_at"].is_null()).collect();
    assert_eq!(revoked_rows.len(), 1, "{keys:?}");
    assert_eq!(revoked_rows[0]["id"], json!(revoked_id));
    app.stop().await;
}

// ------------------------------------------------------------------ 2. key lifecycle

#[tokio::test]
async fn key_lifecycle() {
    let app = spawn_app(LogKind::Embedded, DbKind::Sqlite).await;
    let owner = app.workspace("ws-a").await;
    let owner_id = key_id(&owner);

    // Created keys are shown once, and never listed with their secret.
    let r = app
        .post(
            "/v1/workspaces/ws-a/api-keys",
            &owner,
            json!({"name": "agent one", "role": "agent"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["role"], json!("agent"));
    let agent = r.json["key"].as_str().expect("key").to_string();
    let agent_id = r.json["id"].as_str().expect("id").to_string();
    assert!(agent.starts_with("wbk_"), "{agent}");
    assert_eq!(key_id(&agent), agent_id);

    let r = app.get("/v1/workspaces/ws-a/api-keys", &owner).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(
        !r.text.contains(&agent),
        "the key text is listed: {}",
        r.text
    );
    assert!(
        !r.text.contains(&agent[21..]),
        "the key secret is listed: {}",
        r.text
    );
    assert!(
        !r.text
            .contains(&wabridge_handlers::access::keys::hash_key(&agent)),
        "the key hash is listed: {}",
        r.text
    );
    let items = r.json["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{}", r.text);
    for k in items {
        for field in ["key", "secret", "secret_hash", "hash"] {
            assert!(k.get(field).is_none(), "listed key has {field}: {k}");
        }
    }
    let row = items
        .iter()
        .find(|k| k["id"] == json!(agent_id))
        .expect("agent listed");
    assert_eq!(row["role"], json!("agent"));
    assert_eq!(row["name"], json!("agent one"));
    assert!(row["last_used_at"].is_null(), "{row}");
    assert!(row["revoked_at"].is_null(), "{row}");

    // A use shows up as last_used_at (to the minute, asynchronously).
    let r = app.get("/v1/workspaces/ws-a", &agent).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let deadline = Instant::now() + Duration::from_secs(5);
    let last_used = loop {
        let keys = list_keys(&app, "ws-a", &owner).await;
        let row = keys
            .iter()
            .find(|k| k["id"] == json!(agent_id))
            .expect("agent listed")
            .clone();
        if let Some(s) = row["last_used_at"].as_str() {
            break s.to_string();
        }
        assert!(Instant::now() < deadline, "last_used_at never set: {row}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        last_used.ends_with(":00.000000Z"),
        "not to the minute: {last_used}"
    );
    let used = Timestamp::parse(&last_used).expect("RFC 3339");
    let age = Timestamp::now().unix_micros() - used.unix_micros();
    assert!(
        (0..=61_000_000).contains(&age),
        "last_used_at {last_used} is not this minute"
    );

    // Role limits and validation.
    let (_, admin) = create_key(&app, "ws-a", &owner, "admin", None).await;
    let r = app
        .post(
            "/v1/workspaces/ws-a/api-keys",
            &admin,
            json!({"name": "x", "role": "owner"}),
        )
        .await;
    assert_problem(&r, 403, "forbidden", "admin creating an owner key");
    let r = app
        .post(
            "/v1/workspaces/ws-a/api-keys",
            &admin,
            json!({"name": "x", "role": "agent"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["role"], json!("agent"));
    let r = app
        .post(
            "/v1/workspaces/ws-a/api-keys",
            &owner,
            json!({"name": "x", "role": "root"}),
        )
        .await;
    assert_problem(&r, 400, "validation_failed", "unknown role");
    let past = Timestamp::now().minus(Duration::from_secs(60)).to_string();
    let r = app
        .post(
            "/v1/workspaces/ws-a/api-keys",
            &owner,
            json!({"name": "x", "role": "agent", "expires_at": past}),
        )
        .await;
    assert_problem(&r, 400, "validation_failed", "expires_at in the past");
    let r = app
        .post(
            "/v1/workspaces/ws-a/api-keys",
            &owner,
            json!({"name": "x", "role": "agent", "expires_at": "tomorrow"}),
        )
        .await;
    assert_problem(&r, 400, "validation_failed", "expires_at not a time");
    let keys_before = list_keys(&app, "ws-a", &owner).await.len();

    // An expiring key works until it expires (here an owner key, which also stops
    // counting as a valid owner key).
    let expires = Timestamp::now().plus(Duration::from_secs(2));
    let (expiring_id, expiring) =
        create_key(&app, "ws-a", &owner, "owner", Some(expires.to_string())).await;
    assert_eq!(list_keys(&app, "ws-a", &owner).await.len(), keys_before + 1);
    let r = app.get("/v1/workspaces/ws-a", &expiring).await;
    assert_eq!(r.status, StatusCode::OK, "before expiry: {}", r.text);
    let wait = expires.unix_micros() - Timestamp::now().unix_micros() + 300_000;
    tokio::time::sleep(Duration::from_micros(wait.max(0) as u64)).await;
    let r = app.get("/v1/workspaces/ws-a", &expiring).await;
    assert_problem(&r, 401, "unauthorized", "expired key");

    // Revocation is effective on the next request.
    let r = app
        .delete(&format!("/v1/workspaces/ws-a/api-keys/{agent_id}"), &owner)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = app.get("/v1/workspaces/ws-a", &agent).await;
    assert_problem(&r, 401, "unauthorized", "revoked key");
    let keys = list_keys(&app, "ws-a", &owner).await;
    let row = keys
        .iter()
        .find(|k| k["id"] == json!(agent_id))
        .expect("revoked key still listed");
    assert!(row["revoked_at"].is_string(), "{row}");

    // The last valid owner key cannot be revoked (the expired owner key does not count)...
    let r = app
        .delete(
            &format!("/v1/workspaces/ws-a/api-keys/{owner_id}"),
            &app.operator,
        )
        .await;
    assert_problem(&r, 409, "conflict", "revoking the last valid owner key");
    let r = app.get("/v1/workspaces/ws-a", &owner).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the owner key still works: {}",
        r.text
    );
    // ...but can once another owner key exists.
    let (_, owner2) = create_key(&app, "ws-a", &owner, "owner", None).await;
    let r = app
        .delete(&format!("/v1/workspaces/ws-a/api-keys/{owner_id}"), &owner2)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = app.get("/v1/workspaces/ws-a", &owner).await;
    assert_problem(&r, 401, "unauthorized", "revoked owner key");
    let r = app.get("/v1/workspaces/ws-a", &owner2).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // And now owner2 is the last one.
    let r = app
        .delete(
            &format!("/v1/workspaces/ws-a/api-keys/{}", key_id(&owner2)),
            &owner2,
        )
        .await;
    assert_problem(&r, 409, "conflict", "revoking the new last owner key");
    let _ = expiring_id;
    app.stop().await;
}

// ------------------------------------------------------------------ 3. revocation across instances

async fn revocation_seen_by_second_instance(opts: TestOptions) {
    let shared_dir = opts.log == LogKind::Embedded;
    let app1 = spawn_app_with(TestOptions {
        workers: true,
        ..opts.clone()
    })
    .await;
    let app2 = spawn_app_with(TestOptions {
        namespace: app1.opts.namespace.clone(),
        database_url: app1.opts.database_url.clone(),
        data_dir: if shared_dir {
            app1.opts.data_dir.clone()
        } else {
            None
        },
        workers: false,
        ..opts
    })
    .await;
    let owner = app1.workspace("ws-a").await;

    // Revoked through the API of instance 1.
    let (id, key) = create_key(&app1, "ws-a", &owner, "agent", None).await;
    let r = app2.get("/v1/workspaces/ws-a", &key).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "instance 2 before revocation: {}",
        r.text
    );
    let r = app1
        .delete(&format!("/v1/workspaces/ws-a/api-keys/{id}"), &owner)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = app2.get("/v1/workspaces/ws-a", &key).await;
    assert_problem(&r, 401, "unauthorized", "instance 2 right after revocation");

    // Revoked by an event that was only appended (no projection wait by the writer):
    // instance 2 must still refuse the key on its very next request.
    let (id, key) = create_key(&app1, "ws-a", &owner, "agent", None).await;
    let r = app2.get("/v1/workspaces/ws-a", &key).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "instance 2 before revocation: {}",
        r.text
    );
    let ctx = &app1.app.ctx;
    let slug = Slug::parse("ws-a").expect("slug");
    ctx.log
        .append(ctx.event(
            Some(&slug),
            &Caller::cli("test"),
            &ApiKeyRevoked { key_id: id.clone() },
        ))
        .await
        .expect("append revocation");
    let r = app2.get("/v1/workspaces/ws-a", &key).await;
    assert_problem(
        &r,
        401,
        "unauthorized",
        "instance 2 right after an appended revocation",
    );
    // The owner still works on both.
    assert_eq!(
        app2.get("/v1/workspaces/ws-a", &owner).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app1.get("/v1/workspaces/ws-a", &owner).await.status,
        StatusCode::OK
    );
    app2.stop().await;
    app1.stop().await;
}

#[tokio::test]
async fn revocation_seen_by_second_instance_jetstream_postgres() {
    revocation_seen_by_second_instance(TestOptions::new(LogKind::JetStream, DbKind::Postgres))
        .await;
}

#[tokio::test]
async fn revocation_seen_by_second_instance_embedded_sqlite() {
    revocation_seen_by_second_instance(TestOptions::new(LogKind::Embedded, DbKind::Sqlite)).await;
}

// ------------------------------------------------------------------ 4. phone numbers

async fn numbers_of(app: &TestApp, ws: &str, key: &str) -> Vec<Value> {
    let r = app
        .get(&format!("/v1/workspaces/{ws}/phone-numbers"), key)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.json["next_cursor"].is_null(), "{}", r.text);
    r.json["items"].as_array().expect("items").clone()
}

#[tokio::test]
async fn phone_number_claims() {
    let app = spawn_app(LogKind::Embedded, DbKind::Sqlite).await;
    let a = app.workspace("ws-a").await;
    let b = app.workspace("ws-b").await;
    let pid = "700800900100200";
    let path_a = format!("/v1/workspaces/ws-a/phone-numbers/{pid}");
    let path_b = format!("/v1/workspaces/ws-b/phone-numbers/{pid}");
    let body = json!({"waba_id": "100200300", "display_phone_number": "+1 555 123 0000"});

    let r = app.put(&path_a, &a, body.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["phone_number_id"], json!(pid));
    assert_eq!(r.json["workspace"], json!("ws-a"));
    assert_eq!(r.json["waba_id"], json!("100200300"));
    assert_eq!(r.json["display_phone_number"], json!("+1 555 123 0000"));
    let listed = numbers_of(&app, "ws-a", &a).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["phone_number_id"], json!(pid));
    assert!(numbers_of(&app, "ws-b", &b).await.is_empty());

    // Held by ws-a: ws-b cannot claim or release it.
    let r = app.put(&path_b, &b, body.clone()).await;
    assert_problem(
        &r,
        409,
        "conflict",
        "claiming a number held by another workspace",
    );
    let r = app.delete(&path_b, &b).await;
    assert_problem(
        &r,
        404,
        "not_found",
        "releasing a number another workspace holds",
    );
    assert!(numbers_of(&app, "ws-b", &b).await.is_empty());
    assert_eq!(numbers_of(&app, "ws-a", &a).await.len(), 1);

    // Released, the other workspace can claim it.
    let r = app.delete(&path_a, &a).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert!(numbers_of(&app, "ws-a", &a).await.is_empty());
    let r = app.put(&path_b, &b, body.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["workspace"], json!("ws-b"));
    let listed = numbers_of(&app, "ws-b", &b).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["phone_number_id"], json!(pid));
    let r = app.put(&path_a, &a, body.clone()).await;
    assert_problem(&r, 409, "conflict", "claiming it back");

    // Invalid ids.
    let r = app
        .put("/v1/workspaces/ws-a/phone-numbers/abc", &a, body.clone())
        .await;
    assert_problem(&r, 400, "validation_failed", "phone_number_id abc");
    let r = app
        .put(
            "/v1/workspaces/ws-a/phone-numbers/700800900100201",
            &a,
            json!({"waba_id": "abc", "display_phone_number": "1"}),
        )
        .await;
    assert_problem(&r, 400, "validation_failed", "waba_id abc");
    assert!(numbers_of(&app, "ws-a", &a).await.is_empty());
    assert_eq!(app.events_of(None, "phone_number.claimed").await.len(), 2);
    assert_eq!(app.events_of(None, "phone_number.released").await.len(), 1);
    app.stop().await;
}

// ------------------------------------------------------------------ 5. bad input

#[tokio::test]
async fn bad_input_changes_nothing() {
    let app = spawn_app(LogKind::Embedded, DbKind::Sqlite).await;
    app.workspace("dup").await;
    let before = workspace_slugs(&app).await;
    assert_eq!(before, vec!["dup".to_string()]);
    let created_before = app.events_of(None, "workspace.created").await.len();
    assert_eq!(created_before, 1);

    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "bad slug",
            json!({"slug": "Bad_Slug", "name": "x"}),
            400,
            "validation_failed",
        ),
        (
            "empty slug",
            json!({"slug": "", "name": "x"}),
            400,
            "validation_failed",
        ),
        (
            "too long slug",
            json!({"slug": "a".repeat(41), "name": "x"}),
            400,
            "validation_failed",
        ),
        (
            "duplicate slug",
            json!({"slug": "dup", "name": "again"}),
            409,
            "conflict",
        ),
        (
            "unknown field",
            json!({"slug": "fresh", "name": "x", "colour": "red"}),
            400,
            "validation_failed",
        ),
        (
            "missing field",
            json!({"slug": "fresh"}),
            400,
            "validation_failed",
        ),
        (
            "wrong type",
            json!({"slug": 7, "name": "x"}),
            400,
            "validation_failed",
        ),
    ];
    for (what, body, status, code) in cases {
        let r = app.post("/v1/workspaces", &app.operator, body).await;
        assert_problem(&r, status, code, what);
        assert_eq!(workspace_slugs(&app).await, before, "after {what}");
    }

    // Bodies that are not JSON: 400 validation_failed, never 415/422.
    let client = reqwest::Client::new();
    let raw: Vec<(&str, Option<&str>, &str)> = vec![
        ("plain text", Some("text/plain"), "slug=fresh"),
        ("no content type", None, r#"{"slug": "fresh", "name": "x"}"#),
        (
            "broken JSON",
            Some("application/json"),
            r#"{"slug": "fresh", "#,
        ),
        ("empty body", Some("application/json"), ""),
    ];
    for (what, ct, body) in raw {
        let mut req = client
            .post(app.url("/v1/workspaces"))
            .bearer_auth(&app.operator)
            .body(body.to_string());
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let r = Resp::from(req.send().await.expect("request")).await;
        assert_problem(&r, 400, "validation_failed", what);
        assert_eq!(workspace_slugs(&app).await, before, "after {what}");
    }
    assert_eq!(
        app.events_of(None, "workspace.created").await.len(),
        created_before
    );

    // And a good request still works.
    let r = app
        .post(
            "/v1/workspaces",
            &app.operator,
            json!({"slug": "fresh", "name": "Fresh"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["slug"], json!("fresh"));
    assert_eq!(
        workspace_slugs(&app).await,
        vec!["dup".to_string(), "fresh".to_string()]
    );
    app.stop().await;
}

// ------------------------------------------------------------------ 6. permission matrix

#[tokio::test]
async fn permissions_matrix_is_served() {
    let app = spawn_app(LogKind::Embedded, DbKind::Sqlite).await;
    let r = app.call(Method::GET, "/v1/permissions", None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let rows = r.json.as_array().expect("an array");
    assert!(rows.len() >= 30, "{} rows", rows.len());
    assert_eq!(rows.len(), Permission::ALL.len());
    for p in Permission::ALL {
        let row = rows
            .iter()
            .find(|row| row["permission"] == json!(p.as_str()))
            .unwrap_or_else(|| panic!("{} missing", p.as_str()));
        let roles: Vec<&str> = row["roles"]
            .as_array()
            .unwrap_or_else(|| panic!("{row}: roles"))
            .iter()
            .map(|r| r.as_str().expect("role name"))
            .collect();
        let expected: Vec<&str> = Role::ALL
            .iter()
            .filter(|r| r.allows(*p))
            .map(|r| r.as_str())
            .collect();
        assert!(!roles.is_empty(), "{row}");
        assert_eq!(roles, expected, "{row}");
        assert!(roles.contains(&"owner"), "{row}");
        assert!(
            row["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{row}"
        );
    }
    app.stop().await;
}

// ------------------------------------------------------------------ 7. denials are audited

#[tokio::test]
async fn denied_requests_are_audited() {
    let app = spawn_app(LogKind::Embedded, DbKind::Sqlite).await;
    let owner = app.workspace("ws-a").await;
    let viewer = app.key("ws-a", Role::Viewer).await;
    let r = app
        .post(
            "/v1/workspaces/ws-a/api-keys",
            &viewer,
            json!({"name": "x", "role": "viewer"}),
        )
        .await;
    assert_problem(&r, 403, "forbidden", "viewer creating a key");
    // Unauthenticated failures are not per-workspace entries.
    let r = app
        .call(
            Method::POST,
            "/v1/workspaces/ws-a/api-keys",
            Some("nope"),
            Some(json!({"name": "x", "role": "viewer"})),
        )
        .await;
    assert_problem(&r, 401, "unauthorized", "bad key");
    app.settle().await;

    let r = app
        .get("/v1/workspaces/ws-a/audit?action=access.denied", &owner)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let items = r.json["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{}", r.text);
    let e = &items[0];
    assert_eq!(e["action"], json!("access.denied"));
    assert_eq!(e["outcome"], json!("denied"));
    assert_eq!(e["actor"], json!(format!("api_key:{}", key_id(&viewer))));
    let target = e["target"].as_str().expect("target");
    assert!(target.contains("keys.manage"), "{target}");
    assert!(target.contains("/v1/workspaces/{ws}/api-keys"), "{target}");
    assert_eq!(e["ip"], json!("127.0.0.1"));
    // Nothing was created.
    assert_eq!(list_keys(&app, "ws-a", &owner).await.len(), 2);
    app.stop().await;
}
