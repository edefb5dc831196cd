//! Webhook ingest in the deployed shape: `wabridge serve` (API and workers in one
//! process, JetStream with `sync_interval: 1s`, read models in SQLite) loaded from
//! this process over loopback at fixed offered rates (open loop: distinct signed
//! bodies on a fixed schedule, each latency counted from its scheduled time, so a
//! stall is not hidden by coordinated omission). For each rate: a warm-up at that
//! rate, then the measured run; the read models' lag is sampled from `/metrics`
//! every 250 ms during the run and until it drains.
//!
//! `cargo bench --bench served` — `SERVED_RATES` (webhooks/s, comma-separated,
//! default `1500,2500,5000,12000`), `SERVED_SECONDS` (default 20), `SERVED_WARMUP`
//! (seconds, default 3), `SERVED_SYNC` (`1s` or `always`), `BENCH_DATABASE_URL`
//! (read models in PostgreSQL), `SERVED_WRAP` (run the server under a profiler;
//! see `benches/common/served.rs`), `SERVED_BIN` (another build of the server),
//! `SERVED_WORKSPACES` (spread the load over that many workspaces, each with a
//! number of its own; default 1).

mod common;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{
    served::{cpu_seconds, env_num, offer, pct, start_server, Server},
    Nats,
};

/// The largest lag of the webhook processor (raw webhooks not yet split) and of
/// any projection (domain events not yet applied), from `/metrics` at `base`.
async fn lags(client: &reqwest::Client, base: &str) -> Option<(u64, u64)> {
    let text = client
        .get(format!("{base}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    parse_lags(&text)
}

type Samples = Arc<Mutex<Vec<(Duration, u64, u64)>>>;

/// Samples the lags every 250 ms until aborted.
fn sample(server: &Server, started: Instant) -> (Samples, tokio::task::JoinHandle<()>) {
    let samples: Samples = Arc::default();
    let base = server.base.clone();
    let got = samples.clone();
    let task = tokio::spawn(async move {
        let client = reqwest::Client::new();
        loop {
            if let Some((p, q)) = lags(&client, &base).await {
                got.lock().unwrap().push((started.elapsed(), p, q));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    (samples, task)
}

fn parse_lags(text: &str) -> Option<(u64, u64)> {
    let (mut processor, mut projections) = (0, 0);
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("wabridge_projection_lag_events{projection=\"") else {
            continue;
        };
        let (name, value) = rest.split_once("\"} ")?;
        let value = value.trim().parse::<f64>().ok()? as u64;
        if name == "webhook_processor" {
            processor = processor.max(value);
        } else {
            projections = projections.max(value);
        }
    }
    Some((processor, projections))
}

#[tokio::main]
async fn main() {
    let rates: Vec<u64> = std::env::var("SERVED_RATES")
        .unwrap_or_else(|_| "1500,2500,5000,12000".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let seconds = env_num("SERVED_SECONDS", 20);
    let warmup = env_num("SERVED_WARMUP", 3);
    let sync = std::env::var("SERVED_SYNC").unwrap_or_else(|_| "1s".into());
    println!(
        "\n`wabridge serve` (API and workers), JetStream sync_interval={sync}, open loop, {seconds} s after a {warmup} s warm-up\n"
    );
    println!("| offered /s | achieved /s | p50 ms | p99 ms | p99.9 ms | max ms | processor lag max | projection lag max | lag at the end | drained after | CPU µs per webhook: wabridge / nats-server / load |\n|---|---|---|---|---|---|---|---|---|---|---|");
    for rate in rates {
        // A fresh server and log per rate: each row starts from the same state.
        let nats = Nats::start(&sync);
        let server = start_server(&nats).await;
        if warmup > 0 {
            let warm = offer(&server, rate, warmup, &format!("warm{rate}")).await;
            if let Some(failures) = warm.failures() {
                eprintln!("  {rate}/s warm-up: {failures}");
            }
        }
        let client = reqwest::Client::new();
        let (server_pid, nats_pid) = (server.pid().to_string(), nats.pid().to_string());
        let cpu = || {
            (
                cpu_seconds(&server_pid),
                cpu_seconds(&nats_pid),
                cpu_seconds("self"),
            )
        };
        let cpu_before = cpu();
        let started = Instant::now();
        let (samples, sampler) = sample(&server, started);
        let offered = offer(&server, rate, seconds, &format!("run{rate}")).await;
        let failures = offered.failures();
        let (acked, ingest) = (offered.acked, offered.ingest);
        let load_took = started.elapsed();
        let at_end = lags(&client, &server.base).await.unwrap_or((0, 0));
        // Drain: until the processor and every projection have caught up.
        let drain_start = Instant::now();
        let drained = loop {
            match lags(&client, &server.base).await {
                Some((0, 0)) => break Some(drain_start.elapsed()),
                _ if drain_start.elapsed() > Duration::from_secs(300) => break None,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        sampler.abort();
        // CPU per webhook over the run and the drain: everything those webhooks cost.
        let n = acked.len() as f64;
        let per = |after: f64, before: f64| (after - before) / n * 1e6;
        let cpu_after = cpu();
        let cpu_per = (
            per(cpu_after.0, cpu_before.0),
            per(cpu_after.1, cpu_before.1),
            per(cpu_after.2, cpu_before.2),
        );
        let samples = samples.lock().unwrap().clone();
        let max_proc = samples.iter().map(|s| s.1).max().unwrap_or(0);
        let max_proj = samples.iter().map(|s| s.2).max().unwrap_or(0);
        println!(
            "| {rate} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {max_proc} | {max_proj} | {} + {} | {} | {:.0} / {:.0} / {:.0} |",
            acked.len() as f64 / load_took.as_secs_f64(),
            pct(ingest.clone(), 0.5),
            pct(ingest.clone(), 0.99),
            pct(ingest.clone(), 0.999),
            pct(ingest, 1.0),
            at_end.0,
            at_end.1,
            drained
                .map(|d| format!("{:.1} s", d.as_secs_f64()))
                .unwrap_or_else(|| "not in 300 s".into()),
            cpu_per.0,
            cpu_per.1,
            cpu_per.2,
        );
        // Latencies are of the `200`s only: what was not answered is counted here.
        if let Some(failures) = failures {
            println!("\n{rate}/s: {failures}\n");
        }
        if std::env::var_os("SERVED_TRACE").is_some() {
            for (t, p, q) in &samples {
                eprintln!(
                    "  {:>6.2} s  processor {p:>7}  projections {q:>7}",
                    t.as_secs_f64()
                );
            }
        }
        drop(server);
    }
}
