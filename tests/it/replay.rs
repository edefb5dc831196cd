//! Replay: rebuilding read models beside the live ones and swapping them in, on both
//! databases — equal to live after a mixed workload, a wrong read model repaired,
//! a replay while webhooks keep arriving ending equal to a quiet one, readers never
//! seeing a half-built view during the swap, the HTTP rebuild with its progress in
//! the operator's view, and the CLI's checksums equal to `projections checksum`.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::Value;
use wabridge::dev::webhook::{build, Kind, WebhookSpec};
use wabridge_projections::{rebuild, views};

use crate::support::app::{spawn_app, spawn_app_with, DbKind, LogKind, TestApp, TestOptions};

const NUMBER: &str = "700800900100200";
const WABA: &str = "300100200300400";

/// Rebuilds every projection without swapping: each equals the live state.
async fn dry_run_all(app: &TestApp) -> rebuild::RebuildReport {
    app.settle().await;
    let report = rebuild::rebuild(
        app.app.ctx.log.clone(),
        &app.app.ctx.store,
        views::all(&app.app.projection_keys()),
        true,
        |_| {},
    )
    .await
    .expect("a dry run");
    assert!(!report.swapped);
    assert_eq!(
        report.projections.len(),
        views::all(&Default::default()).len()
    );
    report
}

/// Rebuilds every projection and swaps it in.
async fn swap_all(app: &TestApp) -> rebuild::RebuildReport {
    let report = rebuild::rebuild(
        app.app.ctx.log.clone(),
        &app.app.ctx.store,
        views::all(&app.app.projection_keys()),
        false,
        |_| {},
    )
    .await
    .expect("a rebuild");
    assert!(report.swapped);
    report
}

/// A swap's report names each projection's own checksum: each equals what the
/// live tables, read on their own, hold at that position (after a swap the report's
/// two columns are the same value by construction, so only this checks them).
async fn assert_report_is_live(app: &TestApp, report: &rebuild::RebuildReport) {
    let projections = views::all(&app.app.projection_keys());
    for p in &report.projections {
        let projection = projections
            .iter()
            .find(|q| q.name() == p.name)
            .expect("a reported projection exists");
        let (at, live) = rebuild::live_checksum(&app.app.ctx.store, &**projection)
            .await
            .unwrap();
        assert_eq!(at, p.position, "{} moved on after the swap", p.name);
        assert_eq!(
            live, p.checksum,
            "{}: the report is not the live state",
            p.name
        );
    }
}

fn assert_equal(report: &rebuild::RebuildReport) {
    for p in &report.projections {
        assert_eq!(p.checksum, p.live_checksum, "{} differs from live", p.name);
    }
}

async fn inbound(app: &TestApp, from: &str, text: &str) -> StatusCode {
    let body = build(&WebhookSpec {
        kind: Kind::Text,
        phone_number_id: NUMBER.into(),
        waba_id: WABA.into(),
        from: from.into(),
        text: Some(text.into()),
        ..WebhookSpec::default()
    });
    app.signed_webhook(&body).await.status
}

async fn replay_equals_live(log: LogKind, db: DbKind) {
    let app = spawn_app(log, db).await;
    crate::http::activity(&app).await;
    let key = app.workspace("gamma").await;
    // A STOP: consent state.
    assert_eq!(inbound(&app, "447700900500", "STOP").await, StatusCode::OK);
    assert_eq!(inbound(&app, "447700900501", "hello").await, StatusCode::OK);
    let report = dry_run_all(&app).await;
    assert_equal(&report);
    assert!(report.events > 10, "{report:?}");

    // "A projection is wrong": the read model was changed behind the log's back.
    app.settle().await;
    let store = &app.app.ctx.store;
    sqlx::query("UPDATE consent_contacts SET opted_out = 0")
        .execute(&store.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM api_keys WHERE workspace = 'gamma'")
        .execute(&store.pool)
        .await
        .unwrap();
    let report = dry_run_all(&app).await;
    let differs: Vec<&str> = report
        .projections
        .iter()
        .filter(|p| p.checksum != p.live_checksum)
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(differs, ["api_keys", "consent"], "{report:?}");
    // The swap repairs it, and the API answers from the rebuilt state.
    let swapped = swap_all(&app).await;
    assert_equal(&swapped);
    assert_report_is_live(&app, &swapped).await;
    assert_equal(&dry_run_all(&app).await);
    let r = app.get("/v1/workspaces/gamma", &key).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the rebuilt key works: {}",
        r.text
    );
    let opted: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM consent_contacts WHERE opted_out = 1")
            .fetch_one(&store.reads)
            .await
            .unwrap();
    assert_eq!(opted, 1, "the STOP is back");
    // The live projections go on after the swap: a new event is applied once.
    assert_eq!(inbound(&app, "447700900502", "after").await, StatusCode::OK);
    assert_equal(&dry_run_all(&app).await);
}

#[tokio::test]
async fn replay_equals_live_and_repairs_a_wrong_read_model_sqlite() {
    replay_equals_live(LogKind::Embedded, DbKind::Sqlite).await;
}

#[tokio::test]
async fn replay_equals_live_and_repairs_a_wrong_read_model_postgres() {
    replay_equals_live(LogKind::JetStream, DbKind::Postgres).await;
}

/// Webhooks keep arriving during a replay with a swap; after the load stops, the
/// live state equals a quiet rebuild (nothing applied twice, nothing missed).
async fn replay_under_load(log: LogKind, db: DbKind) {
    let app = Arc::new(spawn_app(log, db).await);
    app.workspace("acme").await;
    app.claim("acme", NUMBER, WABA).await;
    for i in 0..200 {
        assert_eq!(
            inbound(&app, &format!("4477009{i:05}"), "before").await,
            StatusCode::OK
        );
    }
    app.settle().await;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let load = {
        let (app, stop, sent) = (app.clone(), stop.clone(), sent.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let from = format!("4478009{:05}", i % 100_000);
                let text = if i.is_multiple_of(7) {
                    "STOP"
                } else {
                    "during"
                };
                assert_eq!(inbound(&app, &from, text).await, StatusCode::OK);
                sent.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let indexes = index_names(&app).await;
    assert!(indexes.iter().any(|i| i == "messages_wamid"), "{indexes:?}");
    swap_all(&app).await;
    // The swap rebuilds SQLite's secondary indexes: every one is back.
    assert_eq!(index_names(&app).await, indexes);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(
        sent.load(Ordering::Relaxed) > 5,
        "the load ran during the replay"
    );
    assert_equal(&dry_run_all(&app).await);
    let messages = views::messages::count(&app.app.ctx.store, "acme")
        .await
        .unwrap();
    assert_eq!(messages as u64, 200 + sent.load(Ordering::Relaxed));
}

/// The live read-model database's index names, sorted.
async fn index_names(app: &crate::support::app::TestApp) -> Vec<String> {
    let sql = match app.app.ctx.store.backend {
        wabridge_projections::Backend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name"
        }
        wabridge_projections::Backend::Postgres => {
            "SELECT CAST(indexname AS TEXT) FROM pg_indexes WHERE schemaname = current_schema() ORDER BY 1"
        }
    };
    sqlx::query_scalar(sql)
        .fetch_all(&app.app.ctx.store.reads)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_replay_while_webhooks_keep_arriving_ends_equal_to_a_quiet_one_sqlite() {
    replay_under_load(LogKind::Embedded, DbKind::Sqlite).await;
}

#[tokio::test]
async fn a_replay_while_webhooks_keep_arriving_ends_equal_to_a_quiet_one_postgres() {
    replay_under_load(LogKind::JetStream, DbKind::Postgres).await;
}

/// Readers during the swap see the whole old view or the whole new one.
async fn swap_under_queries(db: DbKind) {
    let app = Arc::new(spawn_app(LogKind::Embedded, db).await);
    app.workspace("acme").await;
    app.claim("acme", NUMBER, WABA).await;
    const N: i64 = 300;
    for i in 0..N {
        assert_eq!(
            inbound(&app, &format!("4479009{i:05}"), "hi").await,
            StatusCode::OK
        );
    }
    app.settle().await;
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (app, stop, reads) = (app.clone(), stop.clone(), reads.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages")
                    .fetch_one(&app.app.ctx.store.reads)
                    .await
                    .unwrap();
                assert_eq!(n, N, "a reader saw a half-built messages view");
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    for _ in 0..3 {
        swap_all(&app).await;
    }
    stop.store(true, Ordering::Relaxed);
    reader.await.unwrap();
    assert!(reads.load(Ordering::Relaxed) > 10, "the reader ran");
}

#[tokio::test]
async fn the_swap_never_shows_a_half_built_view_sqlite() {
    swap_under_queries(DbKind::Sqlite).await;
}

#[tokio::test]
async fn the_swap_never_shows_a_half_built_view_postgres() {
    swap_under_queries(DbKind::Postgres).await;
}

/// PostgreSQL's swap moves whole tables, which waits for the queries reading them:
/// while a long one holds `messages`, the swap lets go of its lock wait after a
/// moment (so that the table's other readers are not queued behind it until the
/// long query ends), tries again, and moves in once the query is over.
#[tokio::test]
async fn a_swap_waits_out_a_long_query_without_holding_up_readers_postgres() {
    let app = Arc::new(spawn_app(LogKind::Embedded, DbKind::Postgres).await);
    app.workspace("acme").await;
    app.claim("acme", NUMBER, WABA).await;
    const N: i64 = 50;
    for i in 0..N {
        assert_eq!(
            inbound(&app, &format!("4479019{i:05}"), "hi").await,
            StatusCode::OK
        );
    }
    app.settle().await;
    // A long query (an export, say) holding the live table.
    let mut long = app.app.ctx.store.reads.begin().await.unwrap();
    sqlx::query("LOCK TABLE messages IN ACCESS SHARE MODE")
        .execute(&mut *long)
        .await
        .unwrap();
    let swap = {
        let app = app.clone();
        tokio::spawn(async move { swap_all(&app).await })
    };
    // Past several of the swap's lock waits.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!swap.is_finished(), "the swap waits for the long query");
    // Another reader of the table is answered meanwhile (without the swap's short
    // lock wait it would queue behind the swap until the long query ends: here,
    // never).
    for _ in 0..3 {
        let n: i64 = tokio::time::timeout(
            Duration::from_secs(20),
            sqlx::query_scalar("SELECT COUNT(*) FROM messages").fetch_one(&app.app.ctx.store.reads),
        )
        .await
        .expect("a reader is not held up behind the waiting swap")
        .unwrap();
        assert_eq!(n, N);
    }
    assert!(!swap.is_finished(), "the swap still waits");
    long.commit().await.unwrap();
    let report = tokio::time::timeout(Duration::from_secs(60), swap)
        .await
        .expect("the swap moves in once the long query is over")
        .unwrap();
    assert_equal(&report);
    assert_equal(&dry_run_all(&app).await);
    assert_eq!(
        views::messages::count(&app.app.ctx.store, "acme")
            .await
            .unwrap() as i64,
        N
    );
}

/// A rebuild that died left its shadow; another rebuild is running. The next rebuild
/// removes the first (nobody claims it) and leaves the second (claimed).
async fn leftovers_are_removed(db: DbKind) {
    use wabridge_projections::shadow_claim::Claim;
    let app = spawn_app(LogKind::Embedded, db).await;
    app.workspace("acme").await;
    app.claim("acme", NUMBER, WABA).await;
    assert_eq!(inbound(&app, "447900900001", "hi").await, StatusCode::OK);
    app.settle().await;
    let store = &app.app.ctx.store;
    // The SQLite store's file is in the data directory.
    let data_dir = app.opts.data_dir.clone().unwrap();
    let (dead, running) = ("replay_0123456789ab", "replay_ba9876543210");
    let listed = || async {
        match store.backend {
            wabridge_projections::Backend::Sqlite => {
                let mut names: Vec<String> = std::fs::read_dir(&data_dir)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().into_string().unwrap())
                    .filter(|n| n.starts_with("replay_"))
                    .collect();
                names.sort();
                names
            }
            wabridge_projections::Backend::Postgres => sqlx::query_scalar(
                "SELECT CAST(nspname AS TEXT) FROM pg_namespace WHERE nspname LIKE 'replay%' ORDER BY 1",
            )
            .fetch_all(&store.pool)
            .await
            .unwrap(),
        }
    };
    let held = match store.backend {
        wabridge_projections::Backend::Sqlite => {
            let dir = data_dir.clone();
            // The dead one's lock file, unlocked, and its lane files.
            std::fs::write(dir.join(format!("{dead}.lock")), b"").unwrap();
            std::fs::write(dir.join(format!("{dead}_0.db")), b"left").unwrap();
            std::fs::write(dir.join(format!("{dead}_1.db")), b"left").unwrap();
            let held = Claim::take(store, running, Some(&dir)).await.unwrap();
            std::fs::write(dir.join(format!("{running}_0.db")), b"in use").unwrap();
            held
        }
        wabridge_projections::Backend::Postgres => {
            for schema in [dead.to_string(), format!("{dead}_old")] {
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&store.pool)
                    .await
                    .unwrap();
                sqlx::query(&format!("CREATE TABLE {schema}.messages (x BIGINT)"))
                    .execute(&store.pool)
                    .await
                    .unwrap();
            }
            let held = Claim::take(store, running, None).await.unwrap();
            sqlx::query(&format!("CREATE SCHEMA {running}"))
                .execute(&store.pool)
                .await
                .unwrap();
            held
        }
    };
    let before = listed().await;
    assert!(before.iter().any(|n| n.starts_with(dead)), "{before:?}");
    assert_equal(&swap_all(&app).await);
    let after = listed().await;
    assert!(
        after.iter().all(|n| n.starts_with(running)) && !after.is_empty(),
        "only the claimed shadow is left: {after:?}"
    );
    held.release().await;
}

/// A server removes, as it starts, the shadows a dead rebuild left (no rebuild
/// needed).
#[tokio::test]
async fn a_starting_server_removes_a_dead_rebuilds_shadow() {
    let dead = "replay_00aa11bb22cc";
    // SQLite: the files beside the database, in the data directory.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(format!("{dead}.lock")), b"").unwrap();
    std::fs::write(dir.path().join(format!("{dead}_0.db")), b"left").unwrap();
    // PostgreSQL: its schemas, in the database the server will use.
    let url = crate::support::app::fresh_postgres().await;
    let pool = sqlx::postgres::PgPool::connect(&url).await.unwrap();
    for schema in [dead.to_string(), format!("{dead}_old")] {
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    let schemas = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT CAST(nspname AS TEXT) FROM pg_namespace WHERE nspname LIKE 'replay%'",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let sqlite = spawn_app_with(TestOptions {
        data_dir: Some(dir.path().to_path_buf()),
        ..TestOptions::new(LogKind::Embedded, DbKind::Sqlite)
    })
    .await;
    let postgres = spawn_app_with(TestOptions {
        database_url: Some(url.clone()),
        ..TestOptions::new(LogKind::Embedded, DbKind::Postgres)
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let files: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("replay_"))
            .collect();
        let left = schemas().await;
        if files.is_empty() && left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "left after the start: {files:?} {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((sqlite, postgres));
}

#[tokio::test]
async fn a_dead_rebuilds_shadow_is_removed_and_a_running_ones_kept_sqlite() {
    leftovers_are_removed(DbKind::Sqlite).await;
}

#[tokio::test]
async fn a_dead_rebuilds_shadow_is_removed_and_a_running_ones_kept_postgres() {
    leftovers_are_removed(DbKind::Postgres).await;
}

/// A read model's rebuild that fails is in the operators' audit chain with its
/// error (one that succeeds records only its start). The job here fails at once (it
/// names no read model: the API cannot ask for that, but it fails in the same place
/// as any rebuild's error, after its start is recorded).
#[tokio::test]
async fn a_failed_rebuild_is_audited_with_its_error() {
    let app = spawn_app(LogKind::Embedded, DbKind::Sqlite).await;
    app.settle().await;
    let caller = wabridge_handlers::commands::Caller::cli("replay-test");
    wabridge::replay::start(
        &app.app,
        &caller,
        "consent",
        wabridge::replay::Job::Rebuild {
            projections: vec![],
            dry_run: false,
        },
    )
    .await
    .map_err(|_| "not started")
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let target = loop {
        let r = app
            .get(
                "/v1/admin/audit?action=projection.rebuild_finished&limit=1",
                &app.operator,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        if let Some(item) = r.json["items"].as_array().and_then(|i| i.first()) {
            assert_eq!(item["outcome"], "failed", "{item}");
            break item["target"].as_str().unwrap().to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no end recorded: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        target.starts_with("projection:consent failed: ")
            && target.contains("no projection to rebuild"),
        "{target}"
    );
    let r = app.get("/v1/admin/projections", &app.operator).await;
    let consent = r.json["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "consent")
        .unwrap()
        .clone();
    assert_eq!(consent["rebuild"]["state"], "failed", "{consent}");
}

#[tokio::test]
async fn the_operator_rebuilds_over_http_and_follows_it() {
    let app = spawn_app(LogKind::Embedded, DbKind::Sqlite).await;
    crate::http::activity(&app).await;
    let op = app.operator.clone();
    let r = app.get("/v1/admin/projections", &op).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    for u in r.json["units"].as_array().unwrap() {
        assert!(u["holder"].is_string(), "{}", r.text);
    }
    let names: Vec<&str> = r.json["projections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for n in ["consent", "audit", "onboarding", "webhook_processor"] {
        assert!(names.contains(&n), "{n} missing: {names:?}");
    }
    for p in r.json["projections"].as_array().unwrap() {
        assert!(
            p["lag_events"].is_u64() && p["lag_seconds"].is_number(),
            "{p}"
        );
        assert!(p["checkpoint"].as_u64() <= p["head"].as_u64(), "{p}");
    }
    // A workspace key may not; an unknown name is 404.
    let owner = app.workspace("ops").await;
    let r = app
        .post("/v1/admin/projections/consent/rebuild", &owner, Value::Null)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = app
        .post("/v1/admin/projections/nope/rebuild", &op, Value::Null)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = app
        .post("/v1/admin/projections/all/rebuild", &op, Value::Null)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let done = loop {
        let r = app.get("/v1/admin/projections", &op).await;
        let state = &r.json["rebuild_all"]["state"];
        if state != "running" {
            break r.json["rebuild_all"].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", r.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["report"]["swapped"], true);
    for p in done["report"]["projections"].as_array().unwrap() {
        assert_eq!(p["checksum"], p["live_checksum"], "{p}");
    }

    // A dry run compares and swaps nothing; it shows under the read model's name.
    let r = app
        .post(
            "/v1/admin/projections/consent/rebuild",
            &op,
            serde_json::json!({"dry_run": true}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let dry = loop {
        let r = app.get("/v1/admin/projections", &op).await;
        let consent = r.json["projections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "consent")
            .unwrap()["rebuild"]
            .clone();
        if consent["state"] != "running" {
            break consent;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", r.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dry["state"], "done", "{dry}");
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(dry["report"]["swapped"], false, "{dry}");
    let only = dry["report"]["projections"].as_array().unwrap();
    assert_eq!(only.len(), 1, "{dry}");
    assert_eq!(only[0]["checksum"], only[0]["live_checksum"], "{dry}");

    // Both are in the operators' audit chain, with the key that asked; a refused
    // request is not.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let targets: Vec<(String, String)> = loop {
        let r = app
            .get("/v1/admin/audit?action=projection.rebuild_requested", &op)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let items = r.json["items"].as_array().unwrap();
        if items.len() >= 2 {
            break items
                .iter()
                .map(|e| {
                    (
                        e["target"].as_str().unwrap().to_string(),
                        e["actor"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", r.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let just: Vec<&str> = targets.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(just, ["projection:consent (dry run)", "projection:all"]);
    assert!(
        targets
            .iter()
            .all(|(_, actor)| actor.starts_with("operator:")),
        "{targets:?}"
    );
}

/// The binary: `replay --dry-run` prints each projection's checksum, equal to what
/// `projections checksum` prints for the live state; `replay` swaps; an unknown
/// projection is an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_command_prints_the_checksums_of_projections_checksum() {
    use crate::vault::{bootstrap, wabridge};
    let data = tempfile::tempdir().unwrap();
    let keys = format!("v1:{}", crate::support::app::MASTER_V1);
    let env = [("TOKEN_MASTER_KEYS", keys.as_str())];
    bootstrap(data.path(), &env, "acme");
    bootstrap(data.path(), &env, "beta");
    let run = |args: &[&str]| {
        let out = wabridge(data.path(), &env).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // Each replay records its start in the log first (the audit chain shows it),
    // so the live state to compare with is the one after it.
    let (ok, dry, err) = run(&["replay", "--projection", "all", "--dry-run"]);
    assert!(ok, "{err}");
    assert!(err.contains("events/s"), "progress is shown: {err}");
    assert!(err.contains("dry run"), "{err}");
    let (ok, live, err) = run(&["projections", "checksum"]);
    assert!(ok, "{err}");
    let (ok, swapped, err) = run(&["replay", "--projection", "all"]);
    assert!(ok, "{err}");
    assert!(err.contains("swapped in"), "{err}");
    let (ok, live_after, err) = run(&["projections", "checksum"]);
    assert!(ok, "{err}");
    // `name checkpoint checksum` vs `name position checksum [verdict]`.
    let first3 = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .collect()
    };
    assert_eq!(
        first3(&live),
        first3(&dry),
        "live:\n{live}\ndry run:\n{dry}"
    );
    assert_eq!(first3(&live_after), first3(&swapped));
    assert_ne!(
        first3(&live),
        first3(&swapped),
        "the second replay's start is logged"
    );
    assert!(dry.lines().all(|l| l.ends_with("equal")), "{dry}");
    assert!(live.lines().any(|l| l.starts_with("api_keys ")), "{live}");
    let (ok, _, err) = run(&["replay", "--projection", "nope"]);
    assert!(!ok);
    assert!(err.contains("no projection"), "{err}");
}

fn short_raw_retention(cfg: &mut wabridge::config::Config) {
    cfg.raw_retention = Duration::from_secs(2);
    if let Some(js) = cfg.nats.as_mut() {
        js.raw_max_age = Some(Duration::from_secs(2));
    }
}

/// Raw webhooks expire after `WABRIDGE_RAW_RETENTION`; every read model (consent,
/// tokens, workspaces, keys, numbers, messages, the audit chain) still rebuilds
/// identically from the domain stream alone, and new webhooks are processed.
async fn rebuild_after_raw_expiry(log: LogKind, db: DbKind) {
    let mut opts = crate::support::app::TestOptions::new(log, db);
    opts.configure = Some(short_raw_retention);
    let app = crate::support::app::spawn_app_with(opts).await;
    crate::http::activity(&app).await;
    assert_eq!(inbound(&app, "447700900600", "STOP").await, StatusCode::OK);
    app.settle().await;
    let before = app
        .app
        .ctx
        .log
        .read(
            wabridge_events::StreamKind::Raw,
            wabridge_events::ReadFrom::Seq(1),
            None,
            100,
        )
        .await
        .unwrap()
        .len();
    assert!(before >= 5, "control: raw webhooks were stored ({before})");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = app
            .app
            .ctx
            .log
            .read(
                wabridge_events::StreamKind::Raw,
                wabridge_events::ReadFrom::Seq(1),
                None,
                100,
            )
            .await
            .unwrap()
            .len();
        // The embedded log keeps the newest one (its sequence is never reused).
        if left <= 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} raw webhooks never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_equal(&dry_run_all(&app).await);
    let owner = app.workspace("after").await;
    let r = app
        .get("/v1/workspaces/acme/audit/verify", &app.operator)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["ok"], true, "{}", r.text);
    // Webhooks after the expiry are processed as before.
    assert_eq!(inbound(&app, "447700900601", "hi").await, StatusCode::OK);
    app.settle().await;
    assert_equal(&dry_run_all(&app).await);
    drop(owner);
}

#[tokio::test]
async fn a_rebuild_after_the_raw_webhooks_expired_is_identical_embedded() {
    rebuild_after_raw_expiry(LogKind::Embedded, DbKind::Sqlite).await;
}

#[tokio::test]
async fn a_rebuild_after_the_raw_webhooks_expired_is_identical_jetstream() {
    rebuild_after_raw_expiry(LogKind::JetStream, DbKind::Postgres).await;
}

/// A projection's batch fold leaves exactly the rows of applying its events one at
/// a time, for every projection (messages, send_context, sends, endpoints, consent,
/// api_keys and audit fold batches in memory).
async fn batch_folds_equal_one_at_a_time(db: DbKind) {
    let app = spawn_app(LogKind::Embedded, db).await;
    crate::http::activity(&app).await;
    for (i, text) in ["hello", "STOP", "START", "hi again"].iter().enumerate() {
        assert_eq!(
            inbound(&app, &format!("44770090070{i}"), text).await,
            StatusCode::OK
        );
    }
    // One outbound message's statuses in order, and one out of order: rows that
    // are created, then updated (and not moved back).
    for (wamid, statuses) in [
        ("wamid.batchA", ["sent", "delivered", "read"]),
        ("wamid.batchB", ["read", "sent", "delivered"]),
    ] {
        for status in statuses {
            let body = build(&WebhookSpec {
                kind: Kind::Status,
                phone_number_id: NUMBER.into(),
                waba_id: WABA.into(),
                from: "447700900799".into(),
                wamid: Some(wamid.into()),
                status: Some(status.into()),
                ..WebhookSpec::default()
            });
            assert_eq!(app.signed_webhook(&body).await.status, StatusCode::OK);
        }
    }
    for f in [
        "inbound_text.json",
        "statuses_delivered_and_failed.json",
        "inbound_stop.json",
    ] {
        assert_eq!(
            app.signed_webhook(&crate::support::app::fixture(f))
                .await
                .status,
            StatusCode::OK
        );
    }
    app.settle().await;
    for p in views::all(&app.app.projection_keys()) {
        crate::support::app::batch_fold_equals_one_at_a_time(&app, db, p).await;
    }
}

#[tokio::test]
async fn batch_folds_equal_one_event_at_a_time_sqlite() {
    batch_folds_equal_one_at_a_time(DbKind::Sqlite).await;
}

#[tokio::test]
async fn batch_folds_equal_one_event_at_a_time_postgres() {
    batch_folds_equal_one_at_a_time(DbKind::Postgres).await;
}

/// Meta sending a message again after the log's duplicate window appends a second
/// `message.received` with the same wamid (and a later log time): it changes
/// nothing, one event at a time (`DO NOTHING`) or in batches, whether the two fall
/// in one batch or in two (then the second batch's insert meets the row, and the
/// conflict clause — at once in a small batch, as the fallback of a large batch's
/// plain insert — leaves it alone).
async fn a_message_seen_again_later(db: DbKind) {
    let app = spawn_app(LogKind::Embedded, db).await;
    crate::http::activity(&app).await;
    assert_eq!(inbound(&app, "447700900701", "hello").await, StatusCode::OK);
    assert_eq!(
        app.signed_webhook(&crate::support::app::fixture(
            "statuses_delivered_and_failed.json"
        ))
        .await
        .status,
        StatusCode::OK
    );
    app.settle().await;
    let events = app.domain_events(None).await;
    let original = events
        .iter()
        .position(|e| e.envelope.event_type == "message.received")
        .expect("a message.received");
    // Enough other received messages that two batches each reach the plain insert
    // (`batch::PLAIN_INSERT_MIN_ROWS`), the second holding the copy.
    let many = 2 * wabridge_projections::batch::PLAIN_INSERT_MIN_ROWS + 10;
    let mut events = events;
    let first_extra = events.len();
    for i in 0..many {
        let mut e = events[original].clone();
        let mut data: Value = serde_json::from_slice(&e.payload).unwrap();
        data["wamid"] = format!("wamid.many{i}").into();
        e.payload = serde_json::to_vec(&data).unwrap().into();
        e.seq = events.last().unwrap().seq + 1;
        e.decoded = Default::default();
        events.push(e);
    }
    let mut again = events[original].clone();
    again.seq = events.last().unwrap().seq + 1;
    again.envelope.recorded_at = wabridge_events::Timestamp::parse("2031-01-01T00:00:00Z").unwrap();
    again.decoded = Default::default();
    let with_copy: Vec<_> = events.iter().cloned().chain([again]).collect();
    let p = views::all(&app.app.projection_keys())
        .into_iter()
        .find(|p| p.name() == "messages")
        .unwrap();
    use crate::support::app::fold_checksum;
    let expected = fold_checksum(db, &*p, &events, None).await;
    assert_eq!(
        fold_checksum(db, &*p, &with_copy, None).await,
        expected,
        "one at a time"
    );
    // The original last in the first batch, the copy in a later one (small batches,
    // then two large ones); then both in one.
    let large = first_extra + many / 2 + 1;
    assert!(with_copy.len() - large >= wabridge_projections::batch::PLAIN_INSERT_MIN_ROWS);
    for batch in [original + 1, large, with_copy.len()] {
        assert_eq!(
            fold_checksum(db, &*p, &with_copy, Some(batch)).await,
            expected,
            "batches of {batch}"
        );
    }
}

#[tokio::test]
async fn a_message_seen_again_later_keeps_its_first_row_sqlite() {
    a_message_seen_again_later(DbKind::Sqlite).await;
}

#[tokio::test]
async fn a_message_seen_again_later_keeps_its_first_row_postgres() {
    a_message_seen_again_later(DbKind::Postgres).await;
}

/// The consent fold over a batch handles what one event at a time does with
/// aliases: contacts named by a wa_id, a user id or both, a link that merges two
/// contacts (mid-batch), a user-id change, a suspicion and repeated changes.
async fn consent_batch_fold_with_aliases(db: DbKind) {
    use wabridge_events::{
        types::{
            new_event, ConsentScope, ConsentSource, ConsentSourceKind, ContactMarketingPreference,
            ContactOptedIn, ContactOptedOut, ContactOptoutSuspected, ContactRef,
            ContactUserIdChanged, EventData, MetaSource,
        },
        Actor, Slug, Timestamp,
    };
    let app = spawn_app(LogKind::Embedded, db).await;
    app.workspace("gamma").await;
    let log = app.app.ctx.log.clone();
    let ws = Slug::parse("gamma").unwrap();
    let contact = |wa: Option<&str>, user: Option<&str>| ContactRef {
        wa_id: wa.map(Into::into),
        user_id: user.map(Into::into),
        ..ContactRef::default()
    };
    let source = ConsentSource {
        kind: ConsentSourceKind::Keyword,
        keyword: Some("STOP".into()),
        language: Some("en".into()),
        message_id: None,
        webhook_seq: None,
    };
    let meta = MetaSource {
        waba_id: WABA.into(),
        phone_number_id: Some(NUMBER.into()),
        display_phone_number: None,
        field: "messages".into(),
        raw_seq: 1,
    };
    fn ev<T: EventData>(
        log: &dyn wabridge_events::EventLog,
        ws: &Slug,
        data: &T,
    ) -> wabridge_events::NewEvent {
        new_event(
            log.namespace(),
            Some(ws.clone()),
            Actor::system("test"),
            data,
        )
    }
    let out = |c: ContactRef, scope| ContactOptedOut {
        contact: c,
        scope,
        source: source.clone(),
        reason: Some("asked".into()),
        at: Timestamp::now(),
    };
    let inn = |c: ContactRef, scope| ContactOptedIn {
        contact: c,
        scope,
        source: source.clone(),
        reason: None,
        at: Timestamp::now(),
    };
    let pref = |c: ContactRef| ContactMarketingPreference {
        source: meta.clone(),
        contact: c,
        category: "marketing_messages".into(),
        value: "stop".into(),
        detail: None,
        timestamp: Timestamp::now(),
    };
    let l = &*log;
    let events = vec![
        ev(l, &ws, &out(contact(Some("441"), None), ConsentScope::All)),
        ev(
            l,
            &ws,
            &out(contact(None, Some("US.1")), ConsentScope::Marketing),
        ),
        // Links 441 and US.1: two contacts become one, their state the union.
        ev(l, &ws, &pref(contact(Some("441"), Some("US.1")))),
        ev(
            l,
            &ws,
            &out(contact(Some("441"), None), ConsentScope::Marketing),
        ),
        ev(
            l,
            &ws,
            &inn(contact(Some("442"), Some("US.2")), ConsentScope::All),
        ),
        ev(l, &ws, &out(contact(None, Some("US.2")), ConsentScope::All)),
        ev(
            l,
            &ws,
            &ContactUserIdChanged {
                source: meta.clone(),
                previous_user_id: Some("US.2".into()),
                current_user_id: "US.3".into(),
                previous_parent_user_id: None,
                current_parent_user_id: None,
                wa_id: Some("442".into()),
                detail: None,
                timestamp: Timestamp::now(),
            },
        ),
        ev(
            l,
            &ws,
            &out(contact(None, Some("US.3")), ConsentScope::Marketing),
        ),
        ev(l, &ws, &inn(contact(Some("441"), None), ConsentScope::All)),
        ev(
            l,
            &ws,
            &ContactOptoutSuspected {
                id: "wamid.S1".into(),
                contact: contact(Some("443"), None),
                message_id: "wamid.S1".into(),
                text: "please no more".into(),
                matched: "no more".into(),
                at: Timestamp::now(),
            },
        ),
        ev(l, &ws, &out(contact(Some("443"), None), ConsentScope::All)),
        ev(l, &ws, &pref(contact(Some("443"), Some("US.4")))),
        ev(l, &ws, &out(contact(Some("444"), None), ConsentScope::All)),
        ev(l, &ws, &out(contact(Some("444"), None), ConsentScope::All)),
        ev(
            l,
            &ws,
            &inn(contact(Some("444"), None), ConsentScope::Marketing),
        ),
        // Two contacts made separately, then merged by a change naming both.
        ev(
            l,
            &ws,
            &out(contact(Some("445"), None), ConsentScope::Marketing),
        ),
        ev(l, &ws, &out(contact(None, Some("US.5")), ConsentScope::All)),
        ev(
            l,
            &ws,
            &inn(contact(Some("445"), Some("US.5")), ConsentScope::Marketing),
        ),
        ev(
            l,
            &ws,
            &out(contact(None, Some("US.5")), ConsentScope::Marketing),
        ),
    ];
    for e in events {
        log.append(e).await.unwrap();
    }
    app.settle().await;
    let merged =
        wabridge_projections::views::consent::state(&app.app.ctx.store, "gamma", &["US.5"])
            .await
            .unwrap();
    assert!(merged.opted_out && merged.marketing_opted_out, "{merged:?}");
    crate::support::app::batch_fold_equals_one_at_a_time(
        &app,
        db,
        Arc::new(wabridge_projections::views::consent::Consent),
    )
    .await;
}

#[tokio::test]
async fn the_consent_batch_fold_keeps_aliases_and_merges_sqlite() {
    consent_batch_fold_with_aliases(DbKind::Sqlite).await;
}

#[tokio::test]
async fn the_consent_batch_fold_keeps_aliases_and_merges_postgres() {
    consent_batch_fold_with_aliases(DbKind::Postgres).await;
}
