//! Replay speed: every read model rebuilt from a log of mixed domain events
//! (inbound messages, status updates, opt-outs and opt-ins, keys and workspaces),
//! into an empty live store on SQLite and on PostgreSQL — the "read-model database
//! was lost" recovery, measured end to end (replay into the shadow, then the swap).
//! `cargo bench --bench replay` (REPLAY_EVENTS, default 1,000,000; PostgreSQL at
//! BENCH_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/postgres;
//! REPLAY_LOG_DIR keeps the log between runs; REPLAY_ONLY=name rebuilds one read
//! model; REPLAY_SQLITE_ONLY / REPLAY_PG_ONLY one database).

mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use wabridge::dev::webhook::{build, Kind, WebhookSpec};
use wabridge_events::{
    backends::embedded::{EmbeddedConfig, EmbeddedLog},
    types::{
        new_event, ApiKeyCreated, ConsentScope, ConsentSource, ConsentSourceKind, ContactOptedIn,
        ContactOptedOut, ContactRef, WorkspaceCreated,
    },
    Actor, EventLog, NewEvent, Slug, StreamKind, Timestamp,
};
use wabridge_handlers::webhooks::split::split_webhook;
use wabridge_projections::{rebuild, views, Store};

const NUMBER: &str = "700800900100200";
const WABA: &str = "300100200300400";
const WORKSPACES: usize = 20;

fn ws(i: usize) -> Slug {
    Slug::parse(&format!("ws-{}", i % WORKSPACES)).unwrap()
}

/// The domain events of one signed-webhook-like item: an inbound message (or a
/// status) as the webhook processor would append it.
fn split_events(log: &dyn EventLog, i: usize) -> Vec<NewEvent> {
    let kind = if i % 5 == 4 { Kind::Status } else { Kind::Text };
    let body = build(&WebhookSpec {
        kind,
        phone_number_id: NUMBER.into(),
        waba_id: WABA.into(),
        from: format!("4477{:08}", i % 200_000),
        text: Some("hello, is my order ready?".into()),
        ..WebhookSpec::default()
    });
    let split = split_webhook(&body, i as u64 + 1).expect("a valid webhook");
    split
        .items
        .into_iter()
        .map(|item| {
            let mut ev = item.event.to_new_event(
                log.namespace(),
                Some(ws(i)),
                Actor::system("webhook_processor"),
            );
            ev.envelope = ev.envelope.occurred(item.occurred_at);
            ev
        })
        .collect()
}

/// Event `i` of the mix.
fn events(log: &dyn EventLog, i: usize) -> Vec<NewEvent> {
    let actor = Actor::system("bench");
    let contact = ContactRef {
        wa_id: Some(format!("4477{:08}", i % 200_000)),
        ..ContactRef::default()
    };
    let source = ConsentSource {
        kind: ConsentSourceKind::Keyword,
        keyword: Some("STOP".into()),
        language: Some("en".into()),
        message_id: None,
        webhook_seq: None,
    };
    match i % 100 {
        0 => vec![new_event(
            log.namespace(),
            Some(ws(i)),
            actor,
            &ContactOptedOut {
                contact,
                scope: ConsentScope::All,
                source,
                reason: None,
                at: Timestamp::now(),
            },
        )],
        1 => vec![new_event(
            log.namespace(),
            Some(ws(i)),
            actor,
            &ContactOptedIn {
                contact,
                scope: ConsentScope::All,
                source,
                reason: None,
                at: Timestamp::now(),
            },
        )],
        2 => vec![new_event(
            log.namespace(),
            Some(ws(i)),
            actor,
            &ApiKeyCreated {
                key_id: format!("{i:016x}"),
                workspace: Some(ws(i)),
                name: "bench".into(),
                role: "agent".into(),
                secret_hash: format!("{:064x}", i),
                expires_at: None,
            },
        )],
        _ => split_events(log, i),
    }
}

async fn fill(log: Arc<dyn EventLog>, n: usize) {
    for w in 0..WORKSPACES {
        let slug = ws(w);
        log.append(new_event(
            log.namespace(),
            Some(slug.clone()),
            Actor::system("bench"),
            &WorkspaceCreated {
                slug,
                name: "bench".into(),
            },
        ))
        .await
        .unwrap();
    }
    let started = Instant::now();
    let mut appended = 0;
    let mut i = 0;
    while appended < n {
        let mut batch = vec![];
        while batch.len() < 512 && appended + batch.len() < n {
            batch.extend(events(&*log, i));
            i += 1;
        }
        appended += batch.len();
        let results =
            futures_util::future::join_all(batch.into_iter().map(|e| log.append(e))).await;
        for r in results {
            r.unwrap();
        }
    }
    eprintln!(
        "  the log: {appended} mixed domain events appended in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// This process's resident memory now and at its peak since the last reset, MiB.
fn rss_mib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|k| k.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn replay(log: Arc<dyn EventLog>, url: &str, what: &str) {
    let store = Store::connect(url).await.unwrap();
    // The peak is measured from here ("5" resets it, Linux 4.0 on).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (rss_before, _) = rss_mib();
    let started = Instant::now();
    let mut projections = views::all(&Default::default());
    if let Ok(only) = std::env::var("REPLAY_ONLY") {
        projections.retain(|p| p.name() == only);
    }
    // The last progress report comes as the replay reaches the head, just before
    // the swap: the time after it is the swap's (copy, checksums, commit).
    let mut last_progress = started;
    let report = rebuild::rebuild(log, &store, projections, false, |_| {
        last_progress = Instant::now();
    })
    .await
    .unwrap();
    let secs = started.elapsed().as_secs_f64();
    let replayed = last_progress.duration_since(started).as_secs_f64();
    let (rss_after, rss_peak) = rss_mib();
    if std::env::var("REPLAY_RSS_DETAIL").is_ok() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        for l in status.lines().filter(|l| l.starts_with("Rss")) {
            eprintln!("  {l}");
        }
    }
    println!(
        "| {what} | {} | {:.1} s | {:.1} s | {:.1} s | {:.0} | {:.0} | {rss_before} / {rss_peak} / {rss_after} |",
        report.events,
        secs,
        secs - replayed,
        report.locked_seconds,
        report.events as f64 / secs,
        report.events as f64 / replayed,
    );
}

#[tokio::main]
async fn main() {
    // `RUST_LOG=wabridge_projections=debug` shows the rebuild's steps and their times.
    if std::env::var("RUST_LOG").is_ok() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let n: usize = std::env::var("REPLAY_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    // REPLAY_LOG_DIR keeps the filled log between runs (filled when empty), so a
    // change to the replay is measured again without filling a million events.
    let tmp = tempfile::tempdir().unwrap();
    let dir = match std::env::var("REPLAY_LOG_DIR") {
        Ok(d) => {
            std::fs::create_dir_all(&d).unwrap();
            std::path::PathBuf::from(d)
        }
        Err(_) => tmp.path().to_path_buf(),
    };
    let mut cfg = EmbeddedConfig::new(dir.join("events.db"));
    cfg.duplicate_window = Duration::from_secs(1);
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(cfg).await.unwrap());
    println!("\n### Replay: every read model rebuilt from {n} mixed events, then swapped in\n");
    if log.last_seq(StreamKind::Domain).await.unwrap() == 0 {
        fill(log.clone(), n).await;
    }
    println!("| read models | events | wall | of which the swap | live applier paused | events/s (whole rebuild, swap included) | events/s (replay phase) | RSS MiB before / peak / after |");
    println!("|---|---|---|---|---|---|---|---|");
    // A fresh read-model database each run ("the read-model database was lost").
    for f in ["readmodels.db", "readmodels.db-wal", "readmodels.db-shm"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let sqlite = format!("sqlite://{}", dir.join("readmodels.db").display());
    if std::env::var("REPLAY_PG_ONLY").is_err() {
        replay(log.clone(), &sqlite, "SQLite").await;
    }
    if std::env::var("REPLAY_SQLITE_ONLY").is_ok() {
        return;
    }
    let base = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let pg = common::fresh_postgres(&base).await;
    replay(log, &pg, "PostgreSQL").await;
}
