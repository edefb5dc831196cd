//! Consent: inbound messages classified per second by the keyword matcher alone (one
//! core), then the cost of the send-time consent check. The check reads its own
//! writes: it waits until the webhook processor has handled every raw webhook so
//! far and the consent projection has applied the domain head, then reads the
//! contact's state. It is measured open-loop (a fixed offered rate, latency from the
//! scheduled start) while inbound webhooks arrive at a fixed rate over loopback, next
//! to the bare read of the read model. `cargo bench --bench consent`.

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use axum::body::Bytes;
use common::{header, row, serve, stats, wabridge_app, Nats, SECRET};
use wabridge::{
    app::App,
    dev::webhook::{build, Kind, WebhookSpec},
};
use wabridge_events::Slug;
use wabridge_handlers::{
    commands::{self, consent as consent_cmd, Caller},
    consent::matcher::bench_classify,
    webhooks::sign,
};
use wabridge_projections::views::consent;

const NUMBER: &str = "700800900100200";
const WABA: &str = "300100200300400";
/// Inbound webhooks per second while the checks run.
const INBOUND_RATE: u64 = 200;
/// Consent checks per second.
const CHECK_RATE: u64 = 200;
const SECONDS: u64 = 10;

fn contact(i: u64) -> String {
    format!("4477009{:05}", i % 100_000)
}

/// Inbound webhooks at a fixed rate (one in ten a STOP) until `stop`.
fn inbound(addr: SocketAddr, stop: Instant) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let url = format!("http://{addr}/webhooks/meta");
        let every = Duration::from_micros(1_000_000 / INBOUND_RATE);
        let mut tick = tokio::time::interval(every);
        let mut sent = 0u64;
        let mut tasks = vec![];
        while Instant::now() < stop {
            tick.tick().await;
            let text = if sent.is_multiple_of(10) {
                "STOP"
            } else {
                "hello"
            };
            let body = Bytes::from(build(&WebhookSpec {
                kind: Kind::Text,
                phone_number_id: NUMBER.into(),
                waba_id: WABA.into(),
                from: contact(50_000 + sent),
                text: Some(text.into()),
                ..WebhookSpec::default()
            }));
            let sig = sign(SECRET, &body);
            let (client, url) = (client.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let r = client
                    .post(url)
                    .header("x-hub-signature-256", sig)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
            }));
            sent += 1;
        }
        futures_util::future::join_all(tasks).await;
        sent
    })
}

/// Consent checks at a fixed rate; latency from each check's scheduled start.
async fn checks(app: &App, fresh: bool) -> common::Stats {
    let ws = Slug::parse("bench").unwrap();
    let every = Duration::from_micros(1_000_000 / CHECK_RATE);
    let n = CHECK_RATE * SECONDS;
    let start = Instant::now();
    let mut tasks = vec![];
    for i in 0..n {
        let at = start + every * i as u32;
        tokio::time::sleep_until(at.into()).await;
        let (ctx, ws) = (app.ctx.clone(), ws.clone());
        tasks.push(tokio::spawn(async move {
            let who = contact(i * 7);
            if fresh {
                consent_cmd::fresh_consent(&ctx, &ws).await.unwrap();
            }
            let state = consent::state(&ctx.store, ws.as_str(), &[&who])
                .await
                .unwrap();
            std::hint::black_box(state);
            at.elapsed()
        }));
    }
    let lat = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    stats(lat, start.elapsed())
}

async fn check_table(name: &str, nats: Option<&Nats>) {
    let (app, _dir) = wabridge_app(nats, true).await;
    let addr = serve(app.clone()).await;
    let caller = Caller::cli("bench");
    let ws = Slug::parse("bench").unwrap();
    commands::workspaces::create(&app.ctx, &caller, &ws, "bench")
        .await
        .unwrap();
    commands::numbers::claim(&app.ctx, &caller, &ws, NUMBER, WABA, "15551230000")
        .await
        .unwrap();
    // Some history: 1,000 contacts, one in ten opted out.
    for i in 0..1_000u64 {
        if i % 10 == 0 {
            consent_cmd::change(
                &app.ctx,
                &caller,
                &ws,
                &contact(i * 7),
                consent_cmd::Manual::OptOut,
                wabridge_events::types::ConsentScope::All,
                None,
            )
            .await
            .unwrap();
        }
    }
    for fresh in [false, true] {
        let stop = Instant::now() + Duration::from_secs(SECONDS);
        let load = inbound(addr, stop);
        let s = checks(&app, fresh).await;
        let sent = load.await.unwrap();
        let case = if fresh {
            format!("{name}: as of the log's head (the send gate)")
        } else {
            format!("{name}: the read model alone")
        };
        row(&format!("{case}, {sent} webhooks meanwhile"), &s);
    }
}

fn main() {
    println!("\nConsent keyword matcher, one core (a realistic mix of texts)\n");
    let _ = bench_classify(200_000);
    let mut best: f64 = 0.0;
    for _ in 0..5 {
        best = best.max(bench_classify(2_000_000));
    }
    println!("| matcher | {best:.0} classifications/s |\n|---|---|");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        header(&format!(
            "Send-time consent check, {CHECK_RATE}/s offered for {SECONDS}s while {INBOUND_RATE} webhooks/s arrive over loopback (api and workers in one process)"
        ));
        check_table("embedded log, SQLite", None).await;
        let nats = Nats::start("1s");
        check_table("JetStream (sync_interval 1s), SQLite", Some(&nats)).await;
    });
}
