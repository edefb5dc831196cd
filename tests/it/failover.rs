//! Two `wabridge serve` processes on one JetStream and one PostgreSQL, both with the
//! workers role: the one running every unit of work is killed with SIGKILL in the
//! middle of a webhook load; the other takes every unit over, nothing acknowledged
//! is lost or applied twice, and a replay of every read model equals the live state.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wabridge::dev::webhook::{build, Kind, WebhookSpec};

use crate::support::app::{fresh_postgres, APP_SECRET, MASTER_V1};
use crate::support::NatsServer;
use crate::vault::{bootstrap, wabridge, Served};

const NUMBER: &str = "700800900100300";
const WABA: &str = "300100200300300";

async fn post_webhook(client: &reqwest::Client, base: &str, from: &str) -> bool {
    let body = build(&WebhookSpec {
        kind: Kind::Text,
        phone_number_id: NUMBER.into(),
        waba_id: WABA.into(),
        from: from.into(),
        text: Some("hello".into()),
        ..WebhookSpec::default()
    });
    let sig = wabridge_handlers::webhooks::sign(APP_SECRET, &body);
    match client
        .post(format!("{base}/webhooks/meta"))
        .header("x-hub-signature-256", sig)
        .header("content-type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(5))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16() == 200,
        Err(_) => false,
    }
}

async fn admin(client: &reqwest::Client, served: &Served, key: &str) -> Value {
    client
        .get(served.url("/v1/admin/projections"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// An operator key, made on the host.
pub(crate) fn bootstrap_operator(dir: &std::path::Path, env: &[(&str, &str)]) -> String {
    let out = wabridge(dir, env)
        .args(["bootstrap", "--operator"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_string()
}

/// `wabridge replay --projection all --dry-run` on the host: every read model
/// rebuilt from the log equals the live one.
pub(crate) fn replay_equals_live(dir: &std::path::Path, env: &[(&str, &str)]) {
    let out = wabridge(dir, env)
        .args(["replay", "--projection", "all", "--dry-run"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.lines().count() >= 13, "{stdout}");
    assert!(stdout.lines().all(|l| l.ends_with("equal")), "{stdout}");
}

/// Waits (60 s at most) until every projection has applied the whole log.
pub(crate) async fn caught_up(client: &reqwest::Client, served: &Served, operator: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let report = admin(client, served, operator).await;
        let lagging: Vec<&Value> = report["projections"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["lag_events"].as_u64() != Some(0))
            .collect();
        if lagging.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "still lagging: {lagging:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The workspace `acme`'s `message.received` events in the feed: how many, and how
/// many distinct wamids.
pub(crate) async fn count_messages(
    client: &reqwest::Client,
    served: &Served,
    key: &str,
) -> (usize, usize) {
    let mut wamids = std::collections::HashSet::new();
    let mut total = 0;
    let mut after = String::new();
    let mut limited = 0;
    loop {
        let r = client
            .get(served.url(&format!(
                "/v1/workspaces/acme/events?types=message.received&limit=500&after={after}"
            )))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        // A long run pages past the key's rate limit: wait as told (a bounded
        // number of times: a limit that never lifts is a failure).
        if r.status() == 429 {
            limited += 1;
            assert!(limited <= 600, "the feed stayed rate-limited");
            let wait = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(1);
            tokio::time::sleep(Duration::from_secs(wait)).await;
            continue;
        }
        let r: Value = r.json().await.unwrap();
        let items = r["items"]
            .as_array()
            .unwrap_or_else(|| panic!("the feed answered {r}"));
        if items.is_empty() {
            return (total, wamids.len());
        }
        for it in items {
            total += 1;
            wamids.insert(it["data"]["wamid"].as_str().unwrap().to_string());
        }
        after = r["next_cursor"].as_str().unwrap().to_string();
    }
}

fn holders(report: &Value) -> Vec<Option<String>> {
    report["units"]
        .as_array()
        .expect("units")
        .iter()
        .map(|u| u["holder"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_instance_sharing_the_units_mid_load_fails_over_and_loses_nothing() {
    let nats = NatsServer::shared().await.url();
    let db = fresh_postgres().await;
    let ns = crate::support::unique_ns().as_str().to_string();
    let keys = format!("v1:{MASTER_V1}");
    let env = [
        ("NATS_URL", nats.as_str()),
        ("DATABASE_URL", db.as_str()),
        ("WABRIDGE_NAMESPACE", ns.as_str()),
        ("META_APP_SECRET", APP_SECRET),
        ("META_VERIFY_TOKEN", "verify-me"),
        ("TOKEN_MASTER_KEYS", keys.as_str()),
        ("AUDIT_SIGNING_KEY", "audit-signing-key"),
        ("WABRIDGE_LEASE_TTL", "3s"),
    ];
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let owner = bootstrap(dir_a.path(), &env, "acme");
    let operator = bootstrap_operator(dir_a.path(), &env);
    let a = Served::start(dir_a.path(), &env);
    let b = Served::start(dir_b.path(), &env);
    let client = reqwest::Client::new();
    let r = client
        .put(a.url(&format!("/v1/workspaces/acme/phone-numbers/{NUMBER}")))
        .bearer_auth(&owner)
        .json(&json!({"waba_id": WABA, "display_phone_number": "15551230300"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // The two share the units: each runs some (a holder id is `host/pid/nonce`).
    let a_pid = format!("/{}/", a.pid());
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let h = holders(&admin(&client, &b, &operator).await);
        let on_a: Vec<&String> = h.iter().flatten().filter(|h| h.contains(&a_pid)).collect();
        if h.iter().all(|h| h.is_some()) && !on_a.is_empty() && on_a.len() < h.len() {
            break on_a[0].clone();
        }
        assert!(Instant::now() < deadline, "the units never spread: {h:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The load: distinct webhooks, alternately to each instance; one Meta could not
    // deliver (no 200) is retried on the other, as Meta retries.
    const N: usize = 300;
    let (a_url, b_url) = (a.url(""), b.url(""));
    let mut acknowledged = 0;
    let mut a = Some(a);
    let mut killed_at = None;
    for i in 0..N {
        let from = format!("4477003{i:05}");
        let first_try = if i % 2 == 0 && a.is_some() {
            &a_url
        } else {
            &b_url
        };
        if !post_webhook(&client, first_try, &from).await {
            assert!(
                post_webhook(&client, &b_url, &from).await,
                "webhook {i} refused by both"
            );
        }
        acknowledged += 1;
        if i == N / 3 {
            a.take().unwrap().kill();
            killed_at = Some(Instant::now());
        }
    }
    // The survivor runs every unit (those it ran, and those of the killed one).
    let deadline = Instant::now() + Duration::from_secs(30);
    let took_over = loop {
        let h = holders(&admin(&client, &b, &operator).await);
        if h.iter()
            .all(|h| h.is_some() && h.as_deref() != Some(first.as_str()))
        {
            break killed_at.unwrap().elapsed();
        }
        assert!(Instant::now() < deadline, "no fail-over: {h:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("fail-over: every unit running on the survivor {took_over:?} after the SIGKILL");
    // It catches up with everything acknowledged.
    caught_up(&client, &b, &operator).await;
    // Every acknowledged webhook is a message, once (the read-model database).
    let pg = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db)
        .await
        .unwrap();
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE workspace = 'acme'")
        .fetch_one(&pg)
        .await
        .unwrap();
    let count = count as usize;
    assert_eq!(count, acknowledged, "messages lost or applied twice");
    // A replay of every read model equals the live state.
    replay_equals_live(dir_b.path(), &env);
    b.stop();
}

/// One `wabridge serve` on the embedded log and SQLite (the single-machine shape)
/// is killed with SIGKILL while its projections apply a webhook load, then started
/// again: it resumes from its checkpoints, every acknowledged webhook is one
/// message, and a replay of every read model equals the live state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_instance_killed_mid_projection_resumes_equal_to_a_replay() {
    let keys = format!("v1:{MASTER_V1}");
    let env = [
        ("META_APP_SECRET", APP_SECRET),
        ("META_VERIFY_TOKEN", "verify-me"),
        ("TOKEN_MASTER_KEYS", keys.as_str()),
        ("AUDIT_SIGNING_KEY", "audit-signing-key"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let owner = bootstrap(dir.path(), &env, "acme");
    let served = Served::start(dir.path(), &env);
    let client = reqwest::Client::new();
    let r = client
        .put(served.url(&format!("/v1/workspaces/acme/phone-numbers/{NUMBER}")))
        .bearer_auth(&owner)
        .json(&json!({"waba_id": WABA, "display_phone_number": "15551230300"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let operator = bootstrap_operator(dir.path(), &env);
    // A burst from 16 senders, then SIGKILL at once: the processor and the
    // projections are still behind the log, applying batches.
    const N: usize = 600;
    let base = served.url("");
    let mut tasks = vec![];
    for t in 0..16 {
        let (client, base) = (client.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let mut refused = vec![];
            for i in (t..N / 2).step_by(16) {
                if !post_webhook(&client, &base, &format!("4477004{i:05}")).await {
                    refused.push(i);
                }
            }
            refused
        }));
    }
    let mut refused = vec![];
    for t in tasks {
        refused.extend(t.await.unwrap());
    }
    let lag: u64 = admin(&client, &served, &operator).await["projections"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["lag_events"].as_u64())
        .max()
        .unwrap_or(0);
    served.kill();
    eprintln!("killed with the projections up to {lag} events behind the log");
    let served = Served::start(dir.path(), &env);
    let base = served.url("");
    // Meta retries what was not acknowledged; the load goes on.
    let retried = refused.len();
    for i in refused.into_iter().chain(N / 2..N) {
        assert!(
            post_webhook(&client, &base, &format!("4477004{i:05}")).await,
            "webhook {i} refused after the restart"
        );
    }
    caught_up(&client, &served, &operator).await;
    // Every acknowledged webhook is one message (the feed, paged).
    let (total, distinct) = count_messages(&client, &served, &owner).await;
    assert_eq!(
        (total, distinct),
        (N, N),
        "messages lost or appended twice ({retried} retried)"
    );
    replay_equals_live(dir.path(), &env);
    served.stop();
}
