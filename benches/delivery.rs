//! Outbound webhooks in the deployed shape: `wabridge serve` (API and workers in one
//! process, JetStream with `sync_interval: 1s`) loaded from this process over
//! loopback at a fixed offered rate (open loop: each webhook is sent at its
//! scheduled time, whatever the earlier ones are doing), with the receiving
//! endpoints in this process too. Reports the time from each webhook's 200 to its
//! delivery arriving at the endpoint, and deliveries per second fanned out to many
//! endpoints.
//!
//! `cargo bench --bench delivery` — `DELIVERY_RATE` (webhooks/s, default 1000),
//! `DELIVERY_SECONDS` (default 10), `DELIVERY_ENDPOINTS` (fan-out, default 100),
//! `DELIVERY_FANOUT_RATE` (webhooks/s for the fan-out, default 100); with
//! `BENCH_DATABASE_URL` (a PostgreSQL URL) the read models are in a fresh
//! PostgreSQL database instead of SQLite.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{body::Bytes, extract::Path, extract::State, routing::post, Router};
use common::{
    served::{env_num, offer, pct, start_server, Server},
    Nats,
};

type Arrivals = Arc<Mutex<Vec<(usize, String, Instant)>>>;

/// Receivers: `POST /hook/{i}` records (endpoint, wamid, when).
async fn receivers() -> (String, Arrivals) {
    async fn hook(
        State(got): State<Arrivals>,
        Path(i): Path<usize>,
        body: Bytes,
    ) -> axum::http::StatusCode {
        let at = Instant::now();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let wamid = v["data"]["wamid"].as_str().unwrap_or("").to_string();
        got.lock().unwrap().push((i, wamid, at));
        axum::http::StatusCode::NO_CONTENT
    }
    let got: Arrivals = Arc::default();
    let app = Router::new()
        .route("/hook/{i}", post(hook))
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, got)
}

/// Sends `n` distinct webhooks at `rate`/s on a fixed schedule; returns each
/// wamid's 200 time and the ingest latencies (from the scheduled time).
async fn add_endpoints(server: &Server, hooks: &str, count: usize) {
    let client = reqwest::Client::new();
    for i in 0..count {
        let r = client
            .post(format!("{}/v1/workspaces/bench/endpoints", server.base))
            .bearer_auth(&server.key)
            .json(&serde_json::json!({"url": format!("{hooks}/hook/{i}"), "types": ["message.received"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
}

/// Waits until `expected` deliveries arrived (60 s at most).
async fn arrived(got: &Arrivals, expected: usize) -> Vec<(usize, String, Instant)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = got.lock().unwrap().len();
        if n >= expected || Instant::now() > deadline {
            return got.lock().unwrap().clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A feed reader long-polling `message.received` with `wait=30s`: records when each
/// wamid arrives.
async fn long_poll(base: String, key: String, got: Arrivals) {
    let client = reqwest::Client::new();
    let mut after = String::new();
    loop {
        let res = client
            .get(format!(
                "{base}/v1/workspaces/bench/events?types=message.received&limit=500&wait=30s&after={after}"
            ))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let r: serde_json::Value = res.json().await.unwrap_or_default();
        assert_eq!(status, 200, "the feed answered {status}: {r}");
        let at = Instant::now();
        if std::env::var_os("DELIVERY_DEBUG").is_some() {
            eprintln!(
                "feed page: {} items, next {}",
                r["items"].as_array().map(|a| a.len()).unwrap_or(0),
                r["next_cursor"]
            );
        }
        for it in r["items"].as_array().unwrap() {
            let wamid = it["data"]["wamid"].as_str().unwrap_or("").to_string();
            got.lock().unwrap().push((0, wamid, at));
        }
        after = r["next_cursor"].as_str().unwrap().to_string();
    }
}

fn report(
    name: &str,
    acked: &HashMap<String, Instant>,
    got: &[(usize, String, Instant)],
    expected: usize,
) {
    let lat: Vec<Duration> = got
        .iter()
        .filter_map(|(_, w, at)| acked.get(w).map(|a| at.saturating_duration_since(*a)))
        .collect();
    let first = acked.values().min().copied().unwrap();
    let last = got.iter().map(|g| g.2).max().unwrap();
    println!(
        "| {name} | {} of {expected} | {:.0} | {:.1} | {:.1} | {:.1} |",
        got.len(),
        got.len() as f64 / last.duration_since(first).as_secs_f64(),
        pct(lat.clone(), 0.50),
        pct(lat.clone(), 0.99),
        pct(lat, 1.0),
    );
}

#[tokio::main]
async fn main() {
    let rate = env_num("DELIVERY_RATE", 1000);
    let seconds = env_num("DELIVERY_SECONDS", 10);
    let endpoints = env_num("DELIVERY_ENDPOINTS", 100) as usize;
    let fanout_rate = env_num("DELIVERY_FANOUT_RATE", 100);
    println!("\n| case | delivered | deliveries/s | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|");
    {
        let nats = Nats::start("1s");
        let server = start_server(&nats).await;
        let (hooks, got) = receivers().await;
        add_endpoints(&server, &hooks, 1).await;
        let polled: Arrivals = Arc::default();
        let poller = tokio::spawn(long_poll(
            server.base.clone(),
            server.key.clone(),
            polled.clone(),
        ));
        let offered = offer(&server, rate, seconds, "one").await;
        if let Some(failures) = offered.failures() {
            eprintln!("  {rate}/s: {failures} (the rest are measured)");
        }
        let (acked, ingest) = (offered.acked, offered.ingest);
        let got = arrived(&got, acked.len()).await;
        report(
            &format!("1 endpoint, {rate} webhooks/s for {seconds} s"),
            &acked,
            &got,
            acked.len(),
        );
        let polled = arrived(&polled, acked.len()).await;
        poller.abort();
        report(
            &format!("the feed long-polled, {rate} webhooks/s for {seconds} s"),
            &acked,
            &polled,
            acked.len(),
        );
        eprintln!(
            "  ingest (scheduled → 200): p50 {:.1} ms, p99 {:.1} ms",
            pct(ingest.clone(), 0.5),
            pct(ingest, 0.99)
        );
    }
    if endpoints > 0 {
        let nats = Nats::start("1s");
        let server = start_server(&nats).await;
        let (hooks, got) = receivers().await;
        add_endpoints(&server, &hooks, endpoints).await;
        let offered = offer(&server, fanout_rate, seconds, "fan").await;
        if let Some(failures) = offered.failures() {
            eprintln!("  {fanout_rate}/s: {failures} (the rest are measured)");
        }
        let acked = offered.acked;
        let expected = acked.len() * endpoints;
        let got = arrived(&got, expected).await;
        report(
            &format!("{endpoints} endpoints, {fanout_rate} webhooks/s for {seconds} s"),
            &acked,
            &got,
            expected,
        );
    }
}
