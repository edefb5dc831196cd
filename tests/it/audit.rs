//! The audit log: one hash chain per workspace, queries, verification, tampering,
//! the retention cut-over, rebuilds from the log and export. Every check runs on
//! SQLite and on PostgreSQL.

use std::time::Duration;

use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{json, Value};
use wabridge_events::{StreamKind, Timestamp};
use wabridge_handlers::{
    access::Role,
    commands::audit::{retention_pass, sign_cut},
};
use wabridge_projections::{
    projection::{checksum, AsReactor},
    views::audit::{self, entry_hash, Audit, AuditEntry, GENESIS},
    Driver, Follower, Progress, Store,
};

use crate::support::app::{assert_problem, fresh_postgres, spawn_app, DbKind, LogKind, TestApp};

// ------------------------------------------------------------------ helpers

fn key_id(key: &str) -> String {
    key[4..20].to_string()
}

/// A workspace with a known history of admin actions.
struct Populated {
    app: TestApp,
    owner: String,
    admin: String,
    operator_actor: String,
    owner_actor: String,
    /// The actions of ws-a's chain in order (seq 1..).
    actions: Vec<&'static str>,
}

async fn populated(db: DbKind) -> Populated {
    let app = spawn_app(LogKind::Embedded, db).await;
    let owner = app.workspace("ws-a").await; // workspace.created, api_key.created
    let admin = app.key("ws-a", Role::Admin).await; // api_key.created
    let r = app
        .post(
            "/v1/workspaces/ws-a/api-keys",
            &owner,
            json!({"name": "agent", "role": "agent"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let agent_id = r.json["id"].as_str().expect("id").to_string();
    let r = app
        .put(
            "/v1/workspaces/ws-a/phone-numbers/700800900100200",
            &owner,
            json!({"waba_id": "100200300", "display_phone_number": "15551230000"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .put(
            "/v1/workspaces/ws-a/phone-numbers/700800900100200/token",
            &owner,
            json!({"access_token": "EAAG-test-token"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = app
        .delete(&format!("/v1/workspaces/ws-a/api-keys/{agent_id}"), &owner)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = app
        .delete("/v1/workspaces/ws-a/phone-numbers/700800900100200", &owner)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    app.settle().await;
    let operator_actor = format!("operator:{}", key_id(&app.operator));
    let owner_actor = format!("api_key:{}", key_id(&owner));
    Populated {
        app,
        owner,
        admin,
        operator_actor,
        owner_actor,
        actions: vec![
            "workspace.created",
            "api_key.created",
            "api_key.created",
            "api_key.created",
            "phone_number.claimed",
            "token.stored",
            "api_key.revoked",
            "phone_number.released",
        ],
    }
}

/// One page of `…/audit` with a query string.
async fn audit_page(app: &TestApp, key: &str, query: &str) -> (Vec<Value>, Option<String>) {
    let r = app
        .get(&format!("/v1/workspaces/ws-a/audit{query}"), key)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{query}: {}", r.text);
    let items = r.json["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{query}: {}", r.text))
        .clone();
    let next = match &r.json["next_cursor"] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => panic!("next_cursor {other}"),
    };
    (items, next)
}

/// Every entry, newest first (one page of 500).
async fn all_entries(app: &TestApp, key: &str) -> Vec<Value> {
    let (items, next) = audit_page(app, key, "?limit=500").await;
    assert!(next.is_none());
    items
}

/// `GET …/audit/verify`, with the `reason` (present exactly when not ok) checked and
/// removed, so callers compare the contract's fields.
async fn verify(app: &TestApp, key: &str) -> Value {
    let r = app.get("/v1/workspaces/ws-a/audit/verify", key).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let mut v = r.json;
    let reason = v.as_object_mut().expect("object").remove("reason");
    assert_eq!(
        reason.is_some(),
        v["ok"] == json!(false),
        "a reason exactly when not ok: {v} {reason:?}"
    );
    v
}

/// The audit key the test app runs with, as the chain's HMAC key.
fn chain_key(app: &TestApp) -> Option<&[u8]> {
    use secrecy::ExposeSecret;
    app.app
        .cfg
        .audit_signing_key
        .as_ref()
        .map(|k| k.expose_secret().as_bytes())
}

fn seqs(items: &[Value]) -> Vec<i64> {
    items
        .iter()
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect()
}

fn to_entry(v: &Value) -> AuditEntry {
    let s = |k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("{k} in {v}"))
            .to_string()
    };
    AuditEntry {
        seq: v["seq"].as_i64().expect("seq"),
        at: s("at"),
        actor: s("actor"),
        action: s("action"),
        target: s("target"),
        outcome: s("outcome"),
        ip: v.get("ip").and_then(|i| i.as_str()).map(str::to_string),
        prev_hash: s("prev_hash"),
        hash: s("hash"),
    }
}

async fn exec(app: &TestApp, sql: &str, binds: &[Bind<'_>]) -> u64 {
    let mut q = sqlx::query(sql);
    for b in binds {
        q = match b {
            Bind::Text(t) => q.bind(t.to_string()),
            Bind::Int(i) => q.bind(*i),
        };
    }
    q.execute(&app.app.ctx.store.pool)
        .await
        .expect("tamper")
        .rows_affected()
}

enum Bind<'a> {
    Text(&'a str),
    Int(i64),
}

// ------------------------------------------------------------------ 1. chain and queries

async fn chain_and_queries(db: DbKind) {
    let p = populated(db).await;
    let app = &p.app;
    let entries = all_entries(app, &p.owner).await;
    let n = p.actions.len() as i64;
    assert_eq!(
        seqs(&entries),
        (1..=n).rev().collect::<Vec<_>>(),
        "newest first, contiguous"
    );
    let oldest_first: Vec<&Value> = entries.iter().rev().collect();
    let actions: Vec<&str> = oldest_first
        .iter()
        .map(|e| e["action"].as_str().expect("action"))
        .collect();
    assert_eq!(actions, p.actions);

    // Every field, and the chain links and hashes.
    let mut prev = GENESIS.to_string();
    for (i, e) in oldest_first.iter().enumerate() {
        for field in [
            "seq",
            "at",
            "actor",
            "action",
            "target",
            "outcome",
            "prev_hash",
            "hash",
        ] {
            assert!(
                e.get(field).is_some_and(|v| !v.is_null()),
                "{field} missing in {e}"
            );
        }
        assert_eq!(e["outcome"], json!("ok"), "{e}");
        assert_eq!(e["ip"], json!("127.0.0.1"), "{e}");
        let at = e["at"].as_str().expect("at");
        assert_eq!(
            Timestamp::parse(at).expect("RFC 3339").to_string(),
            at,
            "at is RFC 3339 UTC with microseconds"
        );
        assert_eq!(e["prev_hash"], json!(prev), "link of seq {}", i + 1);
        let entry = to_entry(e);
        assert_eq!(
            entry_hash(chain_key(app), "ws-a", &entry),
            entry.hash,
            "hash of seq {}",
            i + 1
        );
        assert_eq!(entry.hash.len(), 64);
        prev = entry.hash.clone();
    }
    let expected_actors: Vec<&str> = vec![
        &p.operator_actor,
        &p.operator_actor,
        &p.operator_actor,
        &p.owner_actor,
        &p.owner_actor,
        &p.owner_actor,
        &p.owner_actor,
        &p.owner_actor,
    ];
    let actors: Vec<&str> = oldest_first
        .iter()
        .map(|e| e["actor"].as_str().expect("actor"))
        .collect();
    assert_eq!(actors, expected_actors);
    assert_eq!(oldest_first[0]["target"], json!("workspace:ws-a"));
    assert_eq!(
        oldest_first[4]["target"],
        json!("phone_number:700800900100200")
    );

    // Pagination with limit=2 walks every entry once, newest first.
    let mut walked = Vec::new();
    let mut query = "?limit=2".to_string();
    let mut pages = 0;
    loop {
        let (items, next) = audit_page(app, &p.owner, &query).await;
        assert!(items.len() <= 2);
        pages += 1;
        walked.extend(items.clone());
        match next {
            Some(c) => {
                assert_eq!(items.len(), 2);
                assert_eq!(c, items[1]["seq"].as_i64().expect("seq").to_string());
                query = format!("?limit=2&cursor={c}");
            }
            None => break,
        }
        assert!(pages < 20, "pagination does not end");
    }
    assert_eq!(walked, entries);
    assert!(pages >= 4, "{pages} pages");
    let (first, next) = audit_page(app, &p.owner, "?limit=2").await;
    assert_eq!(seqs(&first), vec![n, n - 1]);
    assert_eq!(next.as_deref(), Some((n - 1).to_string().as_str()));

    // Filters.
    let (by_owner, _) = audit_page(app, &p.owner, &format!("?actor={}", p.owner_actor)).await;
    assert_eq!(seqs(&by_owner), vec![8, 7, 6, 5, 4]);
    let (by_operator, _) = audit_page(app, &p.owner, &format!("?actor={}", p.operator_actor)).await;
    assert_eq!(seqs(&by_operator), vec![3, 2, 1]);
    let (nobody, _) = audit_page(app, &p.owner, "?actor=api_key:ffffffffffffffff").await;
    assert!(nobody.is_empty());
    let (created, _) = audit_page(app, &p.owner, "?action=api_key.created").await;
    assert_eq!(seqs(&created), vec![4, 3, 2]);
    let (both, _) = audit_page(
        app,
        &p.owner,
        &format!("?action=api_key.created&actor={}", p.operator_actor),
    )
    .await;
    assert_eq!(seqs(&both), vec![3, 2]);

    // since / until, at the time of seq 4.
    let t4 = oldest_first[3]["at"].as_str().expect("at").to_string();
    let expect_since: Vec<i64> = entries
        .iter()
        .filter(|e| e["at"].as_str().expect("at") >= t4.as_str())
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect();
    let expect_until: Vec<i64> = entries
        .iter()
        .filter(|e| e["at"].as_str().expect("at") < t4.as_str())
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect();
    assert!(expect_since.contains(&4) && !expect_until.contains(&4));
    let (since, _) = audit_page(app, &p.owner, &format!("?since={t4}")).await;
    assert_eq!(seqs(&since), expect_since);
    let (until, _) = audit_page(app, &p.owner, &format!("?until={t4}")).await;
    assert_eq!(seqs(&until), expect_until);
    assert_eq!(expect_since.len() + expect_until.len(), entries.len());
    let t6 = oldest_first[5]["at"].as_str().expect("at").to_string();
    let (window, _) = audit_page(app, &p.owner, &format!("?since={t4}&until={t6}&limit=500")).await;
    let expect_window: Vec<i64> = entries
        .iter()
        .filter(|e| {
            let at = e["at"].as_str().expect("at");
            at >= t4.as_str() && at < t6.as_str()
        })
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(seqs(&window), expect_window);
    // Another offset means the same instant.
    let future = Timestamp::now().plus(Duration::from_secs(3600)).to_string();
    let (none, _) = audit_page(app, &p.owner, &format!("?since={future}")).await;
    assert!(none.is_empty());

    // Bad parameters.
    for q in [
        "?limit=0",
        "?limit=501",
        "?limit=-1",
        "?limit=ten",
        "?since=yesterday",
        "?until=2024-13-01",
        "?cursor=abc",
        "?colour=red",
    ] {
        let r = app
            .get(&format!("/v1/workspaces/ws-a/audit{q}"), &p.owner)
            .await;
        assert_problem(&r, 400, "validation_failed", q);
    }
    let r = app
        .get("/v1/workspaces/ws-a/audit?limit=500", &p.owner)
        .await;
    assert_eq!(r.status, StatusCode::OK);

    // Verification over the whole chain, as owner and as admin.
    let v = verify(app, &p.owner).await;
    assert_eq!(v, json!({"ok": true, "entries_checked": n}));
    let v = verify(app, &p.admin).await;
    assert_eq!(v, json!({"ok": true, "entries_checked": n}));

    // Admins read the audit log too; agents and viewers do not.
    assert_eq!(all_entries(app, &p.admin).await.len() as i64, n);
    let viewer = app.key("ws-a", Role::Viewer).await;
    let r = app.get("/v1/workspaces/ws-a/audit", &viewer).await;
    assert_problem(&r, 403, "forbidden", "viewer reading the audit log");
    p.app.stop().await;
}

#[tokio::test]
async fn audit_chain_and_queries_sqlite() {
    chain_and_queries(DbKind::Sqlite).await;
}

#[tokio::test]
async fn audit_chain_and_queries_postgres() {
    chain_and_queries(DbKind::Postgres).await;
}

// ------------------------------------------------------------------ 2. tampering

async fn tampering_is_detected(db: DbKind) {
    let p = populated(db).await;
    let app = &p.app;
    let n = p.actions.len() as i64;
    assert_eq!(
        verify(app, &p.owner).await,
        json!({"ok": true, "entries_checked": n})
    );
    let entries = all_entries(app, &p.owner).await;
    let e4 = to_entry(
        entries
            .iter()
            .find(|e| e["seq"] == json!(4))
            .expect("seq 4"),
    );

    // (a) An edited field.
    let changed = exec(
        app,
        "UPDATE audit_entries SET target = $1 WHERE workspace = $2 AND seq = $3",
        &[
            Bind::Text("api_key:0000000000000000 role:owner"),
            Bind::Text("ws-a"),
            Bind::Int(4),
        ],
    )
    .await;
    assert_eq!(changed, 1);
    assert_eq!(
        verify(app, &p.owner).await,
        json!({"ok": false, "entries_checked": 4, "first_bad_seq": 4})
    );

    // The same edit with the entry's hash recomputed without the key (all a
    // database writer can do) still does not match.
    let mut forged = e4.clone();
    forged.target = "api_key:0000000000000000 role:owner".into();
    forged.hash = entry_hash(None, "ws-a", &forged);
    exec(
        app,
        "UPDATE audit_entries SET hash = $1 WHERE workspace = $2 AND seq = $3",
        &[Bind::Text(&forged.hash), Bind::Text("ws-a"), Bind::Int(4)],
    )
    .await;
    assert_eq!(
        verify(app, &p.owner).await,
        json!({"ok": false, "entries_checked": 4, "first_bad_seq": 4})
    );
    // Even with the key (an insider who has it), the edit differs from the log.
    forged.hash = entry_hash(chain_key(app), "ws-a", &forged);
    exec(
        app,
        "UPDATE audit_entries SET hash = $1 WHERE workspace = $2 AND seq = $3",
        &[Bind::Text(&forged.hash), Bind::Text("ws-a"), Bind::Int(4)],
    )
    .await;
    let v = verify(app, &p.owner).await;
    assert_eq!(v["ok"], json!(false), "{v}");
    assert_eq!(v["first_bad_seq"], json!(4), "{v}");

    // Restored, the chain verifies again.
    exec(
        app,
        "UPDATE audit_entries SET target = $1, hash = $2 WHERE workspace = $3 AND seq = $4",
        &[
            Bind::Text(&e4.target),
            Bind::Text(&e4.hash),
            Bind::Text("ws-a"),
            Bind::Int(4),
        ],
    )
    .await;
    assert_eq!(
        verify(app, &p.owner).await,
        json!({"ok": true, "entries_checked": n})
    );

    // (c) The newest entry deleted.
    let deleted = exec(
        app,
        "DELETE FROM audit_entries WHERE workspace = $1 AND seq = $2",
        &[Bind::Text("ws-a"), Bind::Int(n)],
    )
    .await;
    assert_eq!(deleted, 1);
    let v = verify(app, &p.owner).await;
    assert_eq!(v["ok"], json!(false), "{v}");
    assert_eq!(v["first_bad_seq"], json!(n), "{v}");
    p.app.stop().await;

    // (b) A middle entry deleted, on a fresh app.
    let p = populated(db).await;
    let app = &p.app;
    assert_eq!(
        verify(app, &p.owner).await,
        json!({"ok": true, "entries_checked": n})
    );
    let deleted = exec(
        app,
        "DELETE FROM audit_entries WHERE workspace = $1 AND seq = $2",
        &[Bind::Text("ws-a"), Bind::Int(4)],
    )
    .await;
    assert_eq!(deleted, 1);
    let v = verify(app, &p.owner).await;
    assert_eq!(v["ok"], json!(false), "{v}");
    assert_eq!(v["first_bad_seq"], json!(4), "{v}");
    assert_eq!(
        seqs(&all_entries(app, &p.owner).await),
        vec![8, 7, 6, 5, 3, 2, 1]
    );
    p.app.stop().await;

    // (d) The newest entry deleted and the head rewritten to the one before: the
    // stored chain is consistent in itself, but the log has one entry more.
    let p = populated(db).await;
    let app = &p.app;
    let entries = all_entries(app, &p.owner).await;
    let previous = to_entry(&entries[1]);
    assert_eq!(previous.seq, n - 1);
    exec(
        app,
        "DELETE FROM audit_entries WHERE workspace = $1 AND seq = $2",
        &[Bind::Text("ws-a"), Bind::Int(n)],
    )
    .await;
    exec(
        app,
        "UPDATE audit_heads SET seq = $1, hash = $2 WHERE workspace = $3",
        &[
            Bind::Int(n - 1),
            Bind::Text(&previous.hash),
            Bind::Text("ws-a"),
        ],
    )
    .await;
    let stored_only = audit::verify(
        &app.app.ctx.store,
        app.app.cfg.audit_signing_key.as_ref(),
        "ws-a",
    )
    .await
    .expect("verify");
    assert!(
        stored_only.ok,
        "the truncated chain is consistent in itself"
    );
    let v = verify(app, &p.owner).await;
    assert_eq!(v["ok"], json!(false), "{v}");
    assert_eq!(v["first_bad_seq"], json!(n), "{v}");
    // Also after a restart: reported, never silently repaired.
    let again = p.app.restart().await;
    let r = again
        .get("/v1/workspaces/ws-a/audit/verify", &p.owner)
        .await;
    assert_eq!(r.json["ok"], json!(false), "{}", r.text);
    assert_eq!(r.json["first_bad_seq"], json!(n), "{}", r.text);
    again.stop().await;
}

#[tokio::test]
async fn audit_tampering_is_detected_sqlite() {
    tampering_is_detected(DbKind::Sqlite).await;
}

#[tokio::test]
async fn audit_tampering_is_detected_postgres() {
    tampering_is_detected(DbKind::Postgres).await;
}

// ------------------------------------------------------------------ 3. retention cut-over

/// A fresh, empty read-model store of the same kind.
async fn fresh_store(db: DbKind, dir: &std::path::Path) -> Store {
    let url = match db {
        DbKind::Sqlite => format!("sqlite://{}", dir.join("rebuild.db").display()),
        DbKind::Postgres => fresh_postgres().await,
    };
    Store::connect(&url).await.expect("fresh store")
}

/// Rebuilds the audit projection from the log into a fresh store and compares its
/// checksum with the live one (at the same log position).
async fn rebuild_matches(app: &TestApp, db: DbKind) -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = fresh_store(db, dir.path()).await;
    let driver = Driver {
        log: app.app.ctx.log.clone(),
        store: store.clone(),
        progress: Progress::default(),
    };
    let audit = Audit::new(app.app.cfg.audit_signing_key.as_ref());
    let follower = Follower {
        consumer: "rebuild",
        stream: StreamKind::Domain,
        reactors: vec![std::sync::Arc::new(AsReactor(std::sync::Arc::new(
            audit.clone(),
        )))],
    };
    let ctx = &app.app.ctx;
    for _ in 0..5 {
        let head = driver.catch_up(&follower).await.expect("rebuild");
        assert!(
            ctx.store
                .wait_for(&ctx.progress, "audit", head, Duration::from_secs(20))
                .await
                .expect("wait"),
            "live audit did not catch up"
        );
        let live = checksum(&ctx.store, &audit).await.expect("live checksum");
        let rebuilt = checksum(&store, &audit).await.expect("rebuilt checksum");
        // Only compare when nothing was appended meanwhile.
        if ctx.log.last_seq(StreamKind::Domain).await.expect("head") == head {
            assert_eq!(
                rebuilt, live,
                "a rebuild from the log differs from the live audit projection"
            );
            return (store, dir);
        }
    }
    panic!("the log kept moving during the rebuild comparison");
}

async fn retention_cut_over(db: DbKind) {
    let p = populated(db).await;
    let app = &p.app;
    let ctx = &app.app.ctx;
    let key: Option<&SecretString> = app.app.cfg.audit_signing_key.as_ref();
    assert!(key.is_some(), "tests run with an audit signing key");
    let n = p.actions.len() as i64;
    let before = all_entries(app, &p.owner).await;
    let boundary = to_entry(&before[0]);
    assert_eq!(boundary.seq, n);

    let chains = audit::chains(&ctx.store).await.expect("chains");
    assert!(chains.contains(&"ws-a".to_string()), "{chains:?}");
    let cutoff = Timestamp::now().plus(Duration::from_secs(1));
    let cut = retention_pass(ctx, key, cutoff)
        .await
        .expect("retention pass");
    assert_eq!(
        cut,
        chains.len() as u64,
        "every chain has entries before the cutoff"
    );

    // Only the cut entry is left, linked to the boundary.
    let after = all_entries(app, &p.owner).await;
    assert_eq!(after.len(), 1, "{after:?}");
    let c = &after[0];
    assert_eq!(c["seq"], json!(n + 1));
    assert_eq!(c["action"], json!("audit.retention_cut"));
    assert_eq!(c["actor"], json!("system:audit-retention"));
    assert_eq!(c["target"], json!(format!("audit:through:{n}")));
    assert_eq!(c["outcome"], json!("ok"));
    assert_eq!(c["prev_hash"], json!(boundary.hash));
    assert_eq!(
        entry_hash(chain_key(app), "ws-a", &to_entry(c)),
        c["hash"].as_str().expect("hash")
    );
    assert_eq!(
        verify(app, &p.owner).await,
        json!({"ok": true, "entries_checked": 1})
    );
    let head = audit::get_head(&ctx.store, "ws-a")
        .await
        .expect("head")
        .expect("a head");
    assert_eq!(head.cut_through, n);
    assert_eq!(head.cut_hash, boundary.hash);
    assert_eq!(
        head.cut_signature.as_deref(),
        Some(sign_cut(key.expect("key"), "ws-a", n as u64, &boundary.hash).as_str())
    );

    // A further admin action keeps the chain verifiable.
    let r = app
        .post(
            "/v1/workspaces/ws-a/api-keys",
            &p.owner,
            json!({"name": "later", "role": "viewer"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    app.settle().await;
    let after = all_entries(app, &p.owner).await;
    assert_eq!(seqs(&after), vec![n + 2, n + 1]);
    assert_eq!(after[0]["action"], json!("api_key.created"));
    assert_eq!(after[0]["prev_hash"], after[1]["hash"]);
    assert_eq!(
        verify(app, &p.owner).await,
        json!({"ok": true, "entries_checked": 2})
    );

    // Export holds what is retained.
    let r = app.get("/v1/workspaces/ws-a/audit/export", &p.owner).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.text.lines().count(), 2, "{}", r.text);

    // The batch fold (a cut in the middle of a batch) leaves the rows of one event
    // at a time.
    let audit_projection = wabridge_projections::views::all(&app.app.projection_keys())
        .into_iter()
        .find(|p| p.name() == "audit")
        .expect("the audit projection");
    crate::support::app::batch_fold_equals_one_at_a_time(app, db, audit_projection).await;
    // A rebuild from the log gives the same audit state, cut included.
    let (rebuilt, _rebuilt_dir) = rebuild_matches(app, db).await;
    let v = audit::verify(&rebuilt, app.app.cfg.audit_signing_key.as_ref(), "ws-a")
        .await
        .expect("verify rebuilt");
    assert!(v.ok, "{v:?}");
    assert_eq!(v.entries_checked, 2);
    let rh = audit::get_head(&rebuilt, "ws-a")
        .await
        .expect("head")
        .expect("a head");
    assert_eq!(
        (
            rh.seq,
            rh.cut_through,
            rh.cut_hash.as_str(),
            rh.cut_signature.as_deref()
        ),
        (
            n + 2,
            n,
            boundary.hash.as_str(),
            head.cut_signature.as_deref()
        )
    );

    // A forged cut signature is detected (the app has an audit key).
    exec(
        app,
        "UPDATE audit_heads SET cut_signature = $1 WHERE workspace = $2",
        &[Bind::Text(&"0".repeat(64)), Bind::Text("ws-a")],
    )
    .await;
    let v = verify(app, &p.owner).await;
    assert_eq!(v["ok"], json!(false), "{v}");
    assert_eq!(v["first_bad_seq"], json!(n), "{v}");
    // A moved boundary hash is detected too.
    exec(
        app,
        "UPDATE audit_heads SET cut_signature = $1, cut_hash = $2 WHERE workspace = $3",
        &[
            Bind::Text(head.cut_signature.as_deref().expect("sig")),
            Bind::Text(GENESIS),
            Bind::Text("ws-a"),
        ],
    )
    .await;
    let v = verify(app, &p.owner).await;
    assert_eq!(v["ok"], json!(false), "{v}");
    // Restored, it verifies.
    exec(
        app,
        "UPDATE audit_heads SET cut_hash = $1 WHERE workspace = $2",
        &[Bind::Text(&boundary.hash), Bind::Text("ws-a")],
    )
    .await;
    assert_eq!(
        verify(app, &p.owner).await,
        json!({"ok": true, "entries_checked": 2})
    );
    p.app.stop().await;
}

#[tokio::test]
async fn audit_retention_cut_over_sqlite() {
    retention_cut_over(DbKind::Sqlite).await;
}

#[tokio::test]
async fn audit_retention_cut_over_postgres() {
    retention_cut_over(DbKind::Postgres).await;
}

// ------------------------------------------------------------------ 4. export

async fn export(db: DbKind) {
    let p = populated(db).await;
    let app = &p.app;
    let entries = all_entries(app, &p.owner).await;
    let r = app.get("/v1/workspaces/ws-a/audit/export", &p.owner).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(
        r.content_type.starts_with("application/x-ndjson"),
        "{}",
        r.content_type
    );
    assert!(r.text.ends_with('\n'));
    let lines: Vec<Value> = r
        .text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(lines.len(), entries.len());
    assert_eq!(seqs(&lines), (1..=entries.len() as i64).collect::<Vec<_>>());
    let oldest_first: Vec<Value> = entries.iter().rev().cloned().collect();
    assert_eq!(lines, oldest_first);

    // since
    let t5 = lines[4]["at"].as_str().expect("at").to_string();
    let r = app
        .get(
            &format!("/v1/workspaces/ws-a/audit/export?since={t5}"),
            &p.owner,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let expected: Vec<&Value> = lines
        .iter()
        .filter(|l| l["at"].as_str().expect("at") >= t5.as_str())
        .collect();
    let got: Vec<Value> = r
        .text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(got.iter().collect::<Vec<_>>(), expected);
    let r = app
        .get("/v1/workspaces/ws-a/audit/export?since=yesterday", &p.owner)
        .await;
    assert_problem(&r, 400, "validation_failed", "export since=yesterday");

    // Owners only.
    let r = app.get("/v1/workspaces/ws-a/audit/export", &p.admin).await;
    assert_problem(&r, 403, "forbidden", "admin exporting");
    p.app.stop().await;
}

#[tokio::test]
async fn audit_export_sqlite() {
    export(DbKind::Sqlite).await;
}

#[tokio::test]
async fn audit_export_postgres() {
    export(DbKind::Postgres).await;
}
