//! Appends per second and p50/p99 latency for both log backends, one at a time and
//! with many in flight, plus raw async-nats publishes to the same server, so our
//! layer's overhead shows as a ratio. `cargo bench --bench log_append`.

mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use common::{gathered, header, row, stats, Nats};
use wabridge_events::{
    backends::{
        embedded::{EmbeddedConfig, EmbeddedLog},
        jetstream::{JetStreamConfig, JetStreamLog},
    },
    Actor, Envelope, EventLog, NewEvent,
};

const PAYLOAD: usize = 1024;

fn event(log: &dyn EventLog, i: usize) -> NewEvent {
    NewEvent {
        subject: log
            .namespace()
            .domain_subject(None, "bench", &format!("a{}", i % 1000)),
        envelope: Envelope::new("bench.event", 1, None, Actor::system("bench")),
        payload: Bytes::from(vec![b'x'; PAYLOAD]),
        msg_id: Some(format!("m{i}")),
        expected_last_subject_seq: None,
    }
}

async fn sequential(log: Arc<dyn EventLog>, n: usize) -> common::Stats {
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        log.append(event(&*log, i)).await.unwrap();
        lat.push(t.elapsed());
    }
    stats(lat, start.elapsed())
}

async fn concurrent(
    log: Arc<dyn EventLog>,
    n: usize,
    in_flight: usize,
    offset: usize,
) -> common::Stats {
    let start = Instant::now();
    let per = n / in_flight;
    let tasks = (0..in_flight).map(|w| {
        let log = log.clone();
        tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for j in 0..per {
                let t = Instant::now();
                log.append(event(&*log, offset + w * per + j))
                    .await
                    .unwrap();
                lat.push(t.elapsed());
            }
            lat
        })
    });
    gathered(tasks, start).await
}

/// Raw async-nats publishes; with `same_headers`, carrying what wabridge sends
/// (the envelope headers and a `Nats-Msg-Id`), to separate the server's cost of
/// those from our layer's.
async fn raw_nats(url: &str, n: usize, in_flight: usize, same_headers: bool) -> common::Stats {
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client);
    let prefix = format!("rawbench{}", same_headers as u8);
    js.create_stream(stream::Config {
        name: prefix.to_uppercase(),
        subjects: vec![format!("{prefix}.>")],
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    })
    .await
    .unwrap();
    let start = Instant::now();
    let per = n / in_flight;
    let tasks = (0..in_flight).map(|w| {
        let (js, prefix) = (js.clone(), prefix.clone());
        tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for j in 0..per {
                let t = Instant::now();
                let subject = format!("{prefix}.a{}", (w * per + j) % 1000);
                let payload = Bytes::from(vec![b'x'; PAYLOAD]);
                let ack = if same_headers {
                    let env = Envelope::new("bench.event", 1, None, Actor::system("bench"));
                    let mut h = async_nats::HeaderMap::new();
                    use wabridge_events::backends::headers;
                    h.insert(headers::ENVELOPE, headers::encode_compact(&env).as_str());
                    h.insert("Nats-Msg-Id", format!("m{}", w * per + j).as_str());
                    js.publish_with_headers(subject, h, payload).await
                } else {
                    js.publish(subject, payload).await
                };
                ack.unwrap().await.unwrap();
                lat.push(t.elapsed());
            }
            lat
        })
    });
    gathered(tasks, start).await
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let seq_n: usize = std::env::var("BENCH_SEQ").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
        let conc_n: usize = std::env::var("BENCH_CONC").ok().and_then(|v| v.parse().ok()).unwrap_or(20000);
        header(&format!("Event log appends ({PAYLOAD}-byte payloads; sequential n={seq_n}, concurrent n={conc_n} with 64 in flight)"));
        let dir = tempfile::tempdir().unwrap();
        let embedded: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(EmbeddedConfig::new(dir.path().join("events.db"))).await.unwrap());
        row("embedded, one at a time", &sequential(embedded.clone(), seq_n).await);
        row("embedded, 64 in flight", &concurrent(embedded.clone(), conc_n, 64, seq_n).await);
        for sync in ["always", "1s"] {
            let nats = Nats::start(sync);
            let js: Arc<dyn EventLog> = Arc::new(JetStreamLog::connect(JetStreamConfig::new(&nats.url)).await.unwrap());
            row(&format!("JetStream sync_interval={sync}, wabridge, one at a time"), &sequential(js.clone(), seq_n).await);
            row(&format!("JetStream sync_interval={sync}, raw async-nats, one at a time"), &raw_nats(&nats.url, seq_n, 1, false).await);
            row(&format!("JetStream sync_interval={sync}, raw async-nats + same headers and msg id, one at a time"), &raw_nats(&nats.url, seq_n, 1, true).await);
            row(&format!("JetStream sync_interval={sync}, wabridge, 64 in flight"), &concurrent(js.clone(), conc_n, 64, seq_n).await);
            let raw = Nats::start(sync);
            row(&format!("JetStream sync_interval={sync}, raw async-nats, 64 in flight"), &raw_nats(&raw.url, conc_n, 64, false).await);
            row(&format!("JetStream sync_interval={sync}, raw async-nats + same headers and msg id, 64 in flight"), &raw_nats(&raw.url, conc_n, 64, true).await);
        }
    });
}
