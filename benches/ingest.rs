//! Webhook ingest: requests per second and p50/p99/p99.9 with 32 connections sending
//! distinct pre-signed bodies to `POST /webhooks/meta` (`WABRIDGE_ROLES=api`),
//! against JetStream (`sync_interval` 1s and always) and the embedded log, beside a
//! reference handler (HMAC check + one async-nats append). Then, with workers on, at
//! a fixed 1,000 webhooks/s: time from the 200 to the message in its projection.
//! `cargo bench --bench ingest`.

mod common;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::jetstream;
use axum::{body::Bytes, extract::State, http::HeaderMap, routing::post, Router};
use common::{bodies, gathered, header, row, serve, stats, wabridge_app, Nats, SECRET};
use futures_util::future::join_all;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::Row;
use wabridge_handlers::{
    access::Role,
    commands::{self, Caller},
};

const CONNECTIONS: usize = 32;

async fn load(addr: SocketAddr, bodies: Vec<(Bytes, String, String)>) -> common::Stats {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONNECTIONS)
        .build()
        .unwrap();
    let url = format!("http://{addr}/webhooks/meta");
    let bodies = Arc::new(bodies);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let tasks = (0..CONNECTIONS).map(|_| {
        let (client, url, bodies, next) =
            (client.clone(), url.clone(), bodies.clone(), next.clone());
        tokio::spawn(async move {
            let mut lat = vec![];
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((body, sig, _)) = bodies.get(i) else {
                    break;
                };
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .header("x-hub-signature-256", sig)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                lat.push(t.elapsed());
            }
            lat
        })
    });
    gathered(tasks, start).await
}

/// The reference: a minimal axum handler that checks the HMAC and appends once.
async fn reference(url: &str) -> SocketAddr {
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client);
    js.create_stream(jetstream::stream::Config {
        name: "REF".into(),
        subjects: vec!["ref.>".into()],
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    })
    .await
    .unwrap();
    async fn handle(
        State(js): State<jetstream::Context>,
        headers: HeaderMap,
        body: Bytes,
    ) -> axum::http::StatusCode {
        let sig = headers
            .get("x-hub-signature-256")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.strip_prefix("sha256="))
            .and_then(|h| hex::decode(h).ok());
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(&body);
        if sig.is_none_or(|s| mac.verify_slice(&s).is_err()) {
            return axum::http::StatusCode::UNAUTHORIZED;
        }
        let acked = match js.publish("ref.meta", body).await {
            Ok(f) => f.await.is_ok(),
            Err(_) => false,
        };
        if acked {
            axum::http::StatusCode::OK
        } else {
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new()
        .route("/webhooks/meta", post(handle))
        .with_state(js);
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// At a fixed rate with workers on: time from each 200 to its message in the
/// `messages` projection.
async fn end_to_end(nats: Option<&Nats>, rate: u64, seconds: u64, tag: &str) -> common::Stats {
    let (app, _dir) = wabridge_app(nats, true).await;
    let addr = serve(app.clone()).await;
    let caller = Caller::cli("bench");
    let ws = wabridge_events::Slug::parse("bench").unwrap();
    commands::workspaces::create(&app.ctx, &caller, &ws, "bench")
        .await
        .unwrap();
    commands::keys::create(&app.ctx, &caller, Some(&ws), "k", Some(Role::Owner), None)
        .await
        .unwrap();
    commands::numbers::claim(
        &app.ctx,
        &caller,
        &ws,
        "700800900100200",
        "300100200300400",
        "15551230000",
    )
    .await
    .unwrap();
    let store = app.ctx.store.clone();
    let n = (rate * seconds) as usize;
    let bodies = bodies(n, tag);
    let acked: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watcher = {
        let (seen, store) = (seen.clone(), store.clone());
        tokio::spawn(async move {
            let mut last = 0i64;
            loop {
                let rows = sqlx::query(
                    "SELECT wamid, log_seq FROM messages WHERE log_seq > $1 ORDER BY log_seq",
                )
                .bind(last)
                .fetch_all(&store.pool)
                .await
                .unwrap();
                let now = Instant::now();
                for r in rows {
                    last = last.max(r.get::<i64, _>(1));
                    seen.lock().unwrap().insert(r.get(0), now);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let processed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let proc_watcher = {
        let (processed, store) = (processed.clone(), store.clone());
        tokio::spawn(async move {
            let mut last = 0i64;
            loop {
                let rows =
                    sqlx::query("SELECT dedup_key, raw_seq FROM webhook_items WHERE raw_seq > $1")
                        .bind(last)
                        .fetch_all(&store.reads)
                        .await
                        .unwrap();
                let now = Instant::now();
                for r in rows {
                    last = last.max(r.get::<i64, _>(1));
                    let key: String = r.get(0);
                    // `<ws>|msg:<number>:<wamid>:<timestamp>`
                    if let Some(w) = key.split("msg:").nth(1).and_then(|r| r.split(':').nth(1)) {
                        processed
                            .lock()
                            .unwrap()
                            .entry(w.to_string())
                            .or_insert(now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/webhooks/meta");
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut sends = vec![];
    for (body, sig, id) in bodies {
        tick.tick().await;
        let (client, url, acked) = (client.clone(), url.clone(), acked.clone());
        sends.push(tokio::spawn(async move {
            let r = client
                .post(&url)
                .header("x-hub-signature-256", sig)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            acked.lock().unwrap().insert(id, Instant::now());
        }));
    }
    join_all(sends).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().unwrap().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    watcher.abort();
    proc_watcher.abort();
    {
        let acked = acked.lock().unwrap();
        let processed = processed.lock().unwrap();
        let lat: Vec<Duration> = acked
            .iter()
            .filter_map(|(id, t)| processed.get(id).map(|s| s.saturating_duration_since(*t)))
            .collect();
        row(
            &format!("{tag}: 200 → webhook processor committed"),
            &stats(lat, Duration::from_secs(seconds)),
        );
    }
    let acked = acked.lock().unwrap();
    let seen = seen.lock().unwrap();
    let lat: Vec<Duration> = acked
        .iter()
        .filter_map(|(id, t)| seen.get(id).map(|s| s.saturating_duration_since(*t)))
        .collect();
    assert_eq!(lat.len(), n, "every webhook reached its projection");
    stats(lat, Duration::from_secs(seconds))
}

async fn end_to_end_table() {
    header("From the 200 to the message in its projection, workers on, 1,000 webhooks/s for 10 s (the 'ops/s' column is the offered rate)");
    for sync in ["always", "1s"] {
        let nats = Nats::start(sync);
        row(
            &format!("JetStream sync_interval={sync}: 200 → message in projection"),
            &end_to_end(
                Some(&nats),
                1000,
                10,
                &format!("JetStream sync_interval={sync}"),
            )
            .await,
        );
    }
    row(
        "embedded log: 200 → message in projection",
        &end_to_end(None, 1000, 10, "embedded log").await,
    );
}

fn main() {
    let n: usize = std::env::var("BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        if std::env::var("ONLY_WABRIDGE_1S").is_ok() {
            let nats = Nats::start("1s");
            let (app, _d) = wabridge_app(Some(&nats), false).await;
            row("wabridge on JetStream, sync_interval=1s", &load(serve(app).await, bodies(n, "w")).await);
            return;
        }
        if std::env::var("ONLY_E2E").is_ok() {
            return end_to_end_table().await;
        }
        header(&format!("Webhook ingest, {CONNECTIONS} connections, {n} distinct signed bodies per case (WABRIDGE_ROLES=api)"));
        for sync in ["1s", "always"] {
            let nats = Nats::start(sync);
            let addr = reference(&nats.url).await;
            row(&format!("reference handler (HMAC + one append), sync_interval={sync}"), &load(addr, bodies(n, "r")).await);
            let nats2 = Nats::start(sync);
            let (app, _d) = wabridge_app(Some(&nats2), false).await;
            row(&format!("wabridge on JetStream, sync_interval={sync}"), &load(serve(app).await, bodies(n, "w")).await);
        }
        let (app, _d) = wabridge_app(None, false).await;
        row("wabridge on the embedded log", &load(serve(app).await, bodies(n, "e")).await);

        end_to_end_table().await;
    });
}
