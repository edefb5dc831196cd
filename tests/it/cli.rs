//! Host commands against a data dir (no server running): bootstrap, local key
//! recovery, audit verify/export, events export; and the per-minute summary of
//! unauthenticated failures.

use std::process::Command;

use reqwest::{Method, StatusCode};

use crate::support::app::{spawn_app, spawn_app_with, DbKind, LogKind, TestOptions};

fn wabridge(data: &std::path::Path, args: &[&str]) -> (bool, String) {
    wabridge_with(data, &[], args)
}

/// `wabridge ARGS` on a data dir with extra environment; (success, stdout + stderr).
fn wabridge_with(data: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wabridge"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("WABRIDGE_DATA_DIR", data)
        .envs(env.iter().copied())
        .output()
        .expect("run wabridge");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exported_webhook_is_byte_exact_and_proves_itself_again() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(TestOptions {
        data_dir: Some(dir.path().to_path_buf()),
        namespace: Some("wb".into()),
        ..TestOptions::new(LogKind::Embedded, DbKind::Sqlite)
    })
    .await;
    // Escaped unicode: re-serialising it would change the bytes (and the signature).
    let body = crate::support::app::fixture("escaped_unicode.json");
    let r = app.signed_webhook(&body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.settle().await;
    let (ok, out) = wabridge(dir.path(), &["events", "export", "--stream", "raw"]);
    assert!(ok, "{out}");
    let line: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(line["body"].as_str().unwrap().as_bytes(), body.as_slice());
    let seq = line["seq"].as_u64().unwrap().to_string();
    assert!(line["envelope"]["signature"]
        .as_str()
        .unwrap()
        .starts_with("sha256="));
    // Evidence: the stored bytes against the stored signature.
    let secret = [("META_APP_SECRET", crate::support::app::APP_SECRET)];
    let (ok, out) = wabridge_with(
        dir.path(),
        &secret,
        &["events", "verify-webhook", "--seq", &seq],
    );
    assert!(ok, "{out}");
    assert!(out.contains("\"verified\":true"), "{out}");
    let wrong = [("META_APP_SECRET", "another-secret")];
    let (ok, out) = wabridge_with(
        dir.path(),
        &wrong,
        &["events", "verify-webhook", "--seq", &seq],
    );
    assert!(!ok && out.contains("\"verified\":false"), "{out}");
    // Both streams, each in order; domain data verbatim.
    let (ok, out) = wabridge(dir.path(), &["events", "export", "--stream", "all"]);
    assert!(ok, "{out}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(lines.iter().any(|l| l["stream"] == "raw"));
    assert!(lines
        .iter()
        .any(|l| l["stream"] == "domain" && l["data"].is_object()));
    app.stop().await;
}

#[test]
fn each_subcommand_help_shows_its_own_options() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = wabridge(dir.path(), &["events", "export", "--help"]);
    assert!(ok, "{out}");
    assert!(out.contains("--stream") && out.contains("--since"), "{out}");
    for serve_flag in ["--listen", "--nats-url", "--max-body", "--database-url"] {
        assert!(
            !out.contains(serve_flag),
            "events export --help lists {serve_flag}:\n{out}"
        );
    }
    let (ok, out) = wabridge(dir.path(), &["serve", "--help"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("--listen") && out.contains("--nats-url"),
        "{out}"
    );
    let (ok, out) = wabridge(dir.path(), &["keys", "create", "--help"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("owner") && out.contains("viewer"),
        "roles are listed: {out}"
    );
    let (ok, out) = wabridge(dir.path(), &["dead-letters", "list", "--status", "stale"]);
    assert!(
        !ok && out.contains("open"),
        "an unknown status is refused, naming the valid ones: {out}"
    );
}

fn last_line(s: &str) -> String {
    s.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The key id of a key text.
fn key_id(key: &str) -> &str {
    &key[4..20]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_keys_expire_and_any_key_is_revoked_from_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = wabridge(
        dir.path(),
        &["bootstrap", "--operator", "--expires-in", "90d"],
    );
    assert!(ok, "{out}");
    let operator = last_line(&out);
    assert!(operator.starts_with("wbo_"), "{out}");
    for bad in ["999999999d", "soon", "0s"] {
        let (ok, out) = wabridge(
            dir.path(),
            &["bootstrap", "--operator", "--expires-in", bad],
        );
        assert!(!ok, "--expires-in {bad} accepted: {out}");
    }
    let (ok, out) = wabridge(dir.path(), &["bootstrap", "--workspace", "acme"]);
    assert!(ok, "{out}");
    let owner = last_line(&out);
    let app = spawn_app_with(TestOptions {
        data_dir: Some(dir.path().to_path_buf()),
        namespace: Some("wb".into()),
        ..TestOptions::new(LogKind::Embedded, DbKind::Sqlite)
    })
    .await;
    // The operator key expires in 90 days.
    let r = app.get("/v1/admin/api-keys", &operator).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let mine = r.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == key_id(&operator))
        .cloned()
        .expect("listed");
    let expires = wabridge_events::Timestamp::parse(mine["expires_at"].as_str().unwrap()).unwrap();
    let in_90d =
        wabridge_events::Timestamp::now().plus(std::time::Duration::from_secs(90 * 86_400));
    assert!(
        (in_90d.unix_micros() - expires.unix_micros()).abs() < 120_000_000,
        "{mine}"
    );
    // The host revokes any key by id: the operator key, then a workspace key.
    let (ok, out) = wabridge(dir.path(), &["keys", "revoke", "--id", key_id(&operator)]);
    assert!(ok, "{out}");
    let r = app.get("/v1/admin/api-keys", &operator).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    let (ok, out) = wabridge(
        dir.path(),
        &["keys", "create", "--workspace", "acme", "--role", "agent"],
    );
    assert!(ok, "{out}");
    let agent = last_line(&out);
    let (ok, out) = wabridge(dir.path(), &["keys", "revoke", "--id", key_id(&agent)]);
    assert!(ok, "{out}");
    let r = app.get("/v1/workspaces/acme", &agent).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    // The last owner key stays, even from the host; unknown ids are refused.
    let (ok, out) = wabridge(dir.path(), &["keys", "revoke", "--id", key_id(&owner)]);
    assert!(!ok && out.contains("last valid owner"), "{out}");
    let (ok, out) = wabridge(dir.path(), &["keys", "revoke", "--id", "0000000000000000"]);
    assert!(!ok, "{out}");
    app.stop().await;
}

// Multi-threaded: the host commands run as blocking child processes while the
// server's tasks (e.g. an in-flight append holding the log's write lock) go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_commands_recover_keys_and_export_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = wabridge(dir.path(), &["bootstrap", "--workspace", "acme"]);
    assert!(ok, "{out}");
    let owner = last_line(&out);
    assert!(owner.starts_with("wbk_"), "{out}");
    // every owner key lost: the host creates a new one
    let (ok, out) = wabridge(
        dir.path(),
        &["keys", "create", "--workspace", "acme", "--role", "owner"],
    );
    assert!(ok, "{out}");
    let recovered = last_line(&out);
    assert!(recovered.starts_with("wbk_") && recovered != owner, "{out}");
    // bad input: unknown role, bad slug, missing workspace — refused, nothing created
    for args in [
        &["keys", "create", "--workspace", "acme", "--role", "root"][..],
        &["keys", "create", "--workspace", "Acme!", "--role", "owner"],
        &["keys", "create", "--workspace", "nope", "--role", "owner"],
    ] {
        let (ok, out) = wabridge(dir.path(), args);
        assert!(!ok, "{args:?} succeeded: {out}");
    }
    // the recovered key works against a server on the same data
    let app = spawn_app_with(TestOptions {
        data_dir: Some(dir.path().to_path_buf()),
        // the host commands use the default namespace
        namespace: Some("wb".into()),
        ..TestOptions::new(LogKind::Embedded, DbKind::Sqlite)
    })
    .await;
    let r = app.get("/v1/workspaces/acme/api-keys", &recovered).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["items"].as_array().unwrap().len(), 2);
    app.stop().await;
    // audit verify and export from the host
    let (ok, out) = wabridge(dir.path(), &["audit", "verify", "--workspace", "acme"]);
    assert!(ok && out.contains("\"ok\":true"), "{out}");
    let (ok, out) = wabridge(
        dir.path(),
        &[
            "audit",
            "export",
            "--workspace",
            "acme",
            "--since",
            "2000-01-01T00:00:00Z",
        ],
    );
    assert!(ok, "{out}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let actions: Vec<&str> = lines
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["workspace.created", "api_key.created", "api_key.created"],
        "{out}"
    );
    assert!(
        lines.windows(2).all(|w| w[1]["prev_hash"] == w[0]["hash"]),
        "export is in chain order"
    );
    // events export filters by workspace and type
    let (ok, out) = wabridge(
        dir.path(),
        &[
            "events",
            "export",
            "--workspace",
            "acme",
            "--type",
            "api_key.created",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with('{')).count(),
        2,
        "{out}"
    );
    assert!(
        !out.contains(&recovered) && !out.contains(&owner),
        "a key text reached the log"
    );
}

#[tokio::test]
async fn unauthenticated_failures_are_summarised_per_source_and_minute() {
    let app = spawn_app(LogKind::Embedded, DbKind::Sqlite).await;
    for _ in 0..5 {
        let r = app
            .call(Method::GET, "/v1/workspaces", Some("wbk_nope"), None)
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    for _ in 0..3 {
        assert_eq!(
            app.webhook(b"{}", Some("sha256=00")).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    wabridge::security::flush(&app.app, true).await;
    let summaries = app.events_of(None, "security.auth_failures").await;
    let mut counts: Vec<(String, u64)> = summaries
        .iter()
        .map(|e| {
            let d: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
            (
                d["kind"].as_str().unwrap().to_string(),
                d["count"].as_u64().unwrap(),
            )
        })
        .collect();
    counts.sort();
    // one event per kind for this source and minute (a minute boundary may split one)
    let total = |k: &str| {
        counts
            .iter()
            .filter(|(kind, _)| kind == k)
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    assert_eq!(total("api_key"), 5, "{counts:?}");
    assert_eq!(total("webhook_signature"), 3, "{counts:?}");
    assert!(
        summaries.len() <= 4,
        "not one event per failure: {}",
        summaries.len()
    );
    let m = app.call(Method::GET, "/metrics", None, None).await.text;
    assert!(m.contains("wabridge_auth_failures_total 5"), "{m}");
}

fn wabridge_env(data: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wabridge"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("WABRIDGE_DATA_DIR", data)
        .envs(env.iter().copied())
        .output()
        .expect("run wabridge");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_from_the_host_and_invalidate() {
    use crate::support::app::{MASTER_V1, MASTER_V2};
    use wabridge_handlers::commands::{tokens, CommandError};
    let dir = tempfile::tempdir().unwrap();
    let opts = TestOptions {
        data_dir: Some(dir.path().to_path_buf()),
        namespace: Some("wb".into()),
        ..TestOptions::new(LogKind::Embedded, DbKind::Sqlite)
    };
    let app = spawn_app_with(opts.clone()).await;
    let owner = app.workspace("acme").await;
    for id in ["1001", "1002"] {
        app.claim("acme", id, "5001").await;
        let r = app
            .put(
                &format!("/v1/workspaces/acme/phone-numbers/{id}/token"),
                &owner,
                serde_json::json!({"access_token": format!("EAAG-{id}")}),
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    }
    // invalidate (what the sender does on OAuth error 190)
    let ws = wabridge_events::Slug::parse("acme").unwrap();
    tokens::invalidate(
        &app.app.ctx,
        &wabridge_handlers::commands::Caller::cli("test"),
        &ws,
        "1002",
        "190: Error validating access token",
    )
    .await
    .unwrap();
    let r = app
        .get("/v1/workspaces/acme/phone-numbers/1002/token", &owner)
        .await;
    assert_eq!(r.json["status"], "invalid", "{}", r.text);
    assert!(matches!(
        tokens::retrieve(&app.app.ctx, app.app.cfg.token_keys.as_ref(), &ws, "1002").await,
        Err(CommandError::Conflict(_))
    ));
    app.settle().await;
    let audit = app
        .get("/v1/workspaces/acme/audit?action=token.invalidated", &owner)
        .await;
    assert_eq!(
        audit.json["items"].as_array().unwrap().len(),
        1,
        "{}",
        audit.text
    );
    app.stop().await;

    let both = format!("v1:{MASTER_V1},v2:{MASTER_V2}");
    let (ok, out) = wabridge_env(
        dir.path(),
        &["keys", "rotate"],
        &[("TOKEN_MASTER_KEYS", &both)],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("rewrapped 2;") && out.contains("still on old keys 0"),
        "{out}"
    );
    assert!(!out.contains("EAAG-"), "a token was printed");
    let (ok, out) = wabridge_env(
        dir.path(),
        &["keys", "rotate"],
        &[("TOKEN_MASTER_KEYS", &both)],
    );
    assert!(
        ok && out.contains("rewrapped 0;"),
        "rotation is resumable and idempotent: {out}"
    );

    let app = spawn_app_with(TestOptions {
        master_keys: Some(format!("v2:{MASTER_V2}")),
        ..opts
    })
    .await;
    let r = app
        .get("/v1/workspaces/acme/phone-numbers/1001/token", &owner)
        .await;
    assert_eq!(r.json["key_version"], "v2", "{}", r.text);
    let t = tokens::retrieve(&app.app.ctx, app.app.cfg.token_keys.as_ref(), &ws, "1001")
        .await
        .unwrap();
    use secrecy::ExposeSecret;
    assert_eq!(
        t.expose_secret(),
        "EAAG-1001",
        "the old key is no longer needed"
    );
}

#[test]
fn a_log_opened_with_another_namespace_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = wabridge(dir.path(), &["bootstrap", "--workspace", "acme"]);
    assert!(ok, "{out}");
    let out = Command::new(env!("CARGO_BIN_EXE_wabridge"))
        .args(["audit", "verify"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("WABRIDGE_DATA_DIR", dir.path())
        .env("WABRIDGE_NAMESPACE", "other")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("WABRIDGE_NAMESPACE") && text.contains("\"wb\""),
        "{text}"
    );
}

/// `replay --since/--from-seq` go with `webhook_processor` only, and it needs one;
/// the host command processes the stored webhooks and prints its one-line report.
#[test]
fn replay_positions_go_with_the_webhook_processor() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = wabridge(dir.path(), &["bootstrap", "--workspace", "acme"]);
    assert!(ok, "{out}");
    // The same checks as the API's, in the command line's words.
    let time = "2026-01-01T00:00:00Z";
    let refused: [(&[&str], &str); 4] = [
        (&["consent", "--since", time], "a read model is a fold"),
        (
            &["webhook_processor"],
            "give --since (an RFC 3339 time) or --from-seq",
        ),
        (
            &["webhook_processor", "--since", time, "--from-seq", "1"],
            "give --since or --from-seq, not both",
        ),
        (&["webhook_processor", "--since", "yesterday"], "RFC 3339"),
    ];
    for (args, says) in refused {
        let args: Vec<&str> = ["replay", "--projection"]
            .iter()
            .chain(args)
            .copied()
            .collect();
        let (ok, out) = wabridge(dir.path(), &args);
        assert!(!ok && out.contains(says), "{args:?}: {out}");
    }
    let (ok, out) = wabridge(
        dir.path(),
        &[
            "replay",
            "--projection",
            "webhook_processor",
            "--from-seq",
            "1",
            "--dry-run",
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "webhook_processor raw 0..0: 0 bodies; appended 0; already derived 0; skipped none"
        ),
        "{out}"
    );
    // The run (not the refusals) is in the log, start and end, with its actor.
    let (ok, out) = wabridge(
        dir.path(),
        &["events", "export", "--type", "projection.rebuild_requested"],
    );
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].contains("webhook_processor")
            && lines[0].contains("seq:1")
            && lines[0].contains(r#""actor":{"kind":"cli","id":"replay"}"#),
        "{out}"
    );
    let (ok, out) = wabridge(
        dir.path(),
        &["events", "export", "--type", "projection.rebuild_finished"],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("reprocessed") && out.contains("raw 0..0: 0 bodies"),
        "{out}"
    );
}

/// Peak resident memory of a running process so far (`VmHWM`, KiB).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Runs `events export` to the end, counting lines; returns (lines, peak RSS KiB).
fn export_peak(data: &std::path::Path) -> (u64, u64) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_wabridge"))
        .args(["events", "export", "--type", "debug.appended"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("WABRIDGE_DATA_DIR", data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut lines = 0u64;
    let mut peak = 0u64;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        line.unwrap();
        lines += 1;
        if lines.is_multiple_of(2_000) {
            peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
        }
    }
    assert!(child.wait().unwrap().success());
    (lines, peak)
}

/// `events export` streams in constant memory: exporting 200,000 events of 1 KiB
/// (200 MB of output) peaks at about the memory of exporting 20,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_export_streams_200k_events_in_bounded_memory() {
    use std::sync::Arc;
    use wabridge_events::{
        backends::embedded::{EmbeddedConfig, EmbeddedLog},
        types::{new_event, DebugAppended},
        Actor, EventLog,
    };
    async fn fill(dir: &std::path::Path, n: u64) {
        let log: Arc<dyn EventLog> = Arc::new(
            EmbeddedLog::open(EmbeddedConfig::new(dir.join("events.db")))
                .await
                .unwrap(),
        );
        let pad = "x".repeat(1000);
        let mut i = 0;
        while i < n {
            let batch: Vec<_> = (i..(i + 1000).min(n))
                .map(|j| {
                    let mut ev = new_event(
                        log.namespace(),
                        None,
                        Actor::cli("test"),
                        &DebugAppended { i: j },
                    );
                    // Unknown fields are kept as written (and ignored by decoding).
                    ev.payload = format!("{{\"i\":{j},\"pad\":\"{pad}\"}}")
                        .into_bytes()
                        .into();
                    ev
                })
                .collect();
            for r in futures_util::future::join_all(batch.into_iter().map(|e| log.append(e))).await
            {
                r.unwrap();
            }
            i += 1000;
        }
    }
    let small = tempfile::tempdir().unwrap();
    let large = tempfile::tempdir().unwrap();
    fill(small.path(), 20_000).await;
    fill(large.path(), 200_000).await;
    let (small_lines, small_peak) = export_peak(small.path());
    let (large_lines, large_peak) = export_peak(large.path());
    assert_eq!(small_lines, 20_000);
    assert_eq!(large_lines, 200_000);
    assert!(small_peak > 0, "control: the peak was measured");
    assert!(
        large_peak < small_peak + 32 * 1024,
        "200k events peaked at {large_peak} KiB, 20k at {small_peak} KiB: the export buffers"
    );
}

/// A replay that fails is recorded with its error (here: a read-model database in
/// memory cannot have a shadow beside it).
#[test]
fn a_failed_replay_is_recorded_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = wabridge(dir.path(), &["bootstrap", "--workspace", "acme"]);
    assert!(ok, "{out}");
    let (ok, out) = wabridge_with(
        dir.path(),
        &[("DATABASE_URL", "sqlite::memory:")],
        &["replay", "--projection", "consent"],
    );
    assert!(
        !ok && out.contains("a rebuild needs a SQLite database file"),
        "{out}"
    );
    let (ok, out) = wabridge(
        dir.path(),
        &["events", "export", "--type", "projection.rebuild_finished"],
    );
    assert!(ok, "{out}");
    let ended: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(ended.len(), 1, "{out}");
    let data = &ended[0]["data"];
    assert_eq!(data["name"], "consent", "{out}");
    assert_eq!(data["outcome"], "failed", "{out}");
    assert!(
        data["detail"]
            .as_str()
            .unwrap()
            .contains("a rebuild needs a SQLite database file"),
        "{out}"
    );
    assert_eq!(ended[0]["envelope"]["actor"]["id"], "replay", "{out}");
}
