//! Sending, in the shape a user runs: `wabridge serve` (API and workers in one
//! process, JetStream with `sync_interval` 1s) as a child process, loaded from this
//! process over loopback, with the project's Graph API simulator (in this process)
//! answering at once.
//!
//! 1. Accepted sends per second through `POST /v1/workspaces/{ws}/messages`, 64
//!    connections, closed loop.
//! 2. Open loop at a fixed offered rate: the 202's latency, and the time from each
//!    202 to its `message.sent` in the log (followed from this process).
//! 3. What the shared rate limiter costs: one admission (a compare-and-set on the
//!    JetStream KV bucket) timed on its own, against the 202's p50.
//!
//! `cargo bench --bench send`.

mod common;

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{header, row, stats, Nats};
use futures_util::StreamExt;
use serde_json::{json, Value};
use wabridge::dev::graph_sim::{GraphSim, SimConfig};
use wabridge_events::{backends::jetstream::JetStreamConfig, EventLog, StreamKind};

const SECRET: &str = "test_app_secret";
const MASTER: &str = "v1:1111111111111111111111111111111111111111111111111111111111111111";
const NUMBER: &str = "700800900100200";
const WABA: &str = "300100200300400";
const CONNECTIONS: usize = 64;

struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_server(nats: &Nats, graph_url: &str, namespace: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", port());
    let env: Vec<(String, String)> = vec![
        ("WABRIDGE_DATA_DIR".into(), dir.path().display().to_string()),
        ("WABRIDGE_LISTEN".into(), listen.clone()),
        ("NATS_URL".into(), nats.url.clone()),
        ("WABRIDGE_NAMESPACE".into(), namespace.into()),
        ("META_GRAPH_URL".into(), graph_url.into()),
        ("META_APP_SECRET".into(), SECRET.into()),
        ("META_VERIFY_TOKEN".into(), "bench-verify".into()),
        ("TOKEN_MASTER_KEYS".into(), MASTER.into()),
        ("AUDIT_SIGNING_KEY".into(), "bench-audit-key".into()),
        ("WABRIDGE_NUMBER_MPS".into(), "1000".into()),
        ("RUST_LOG".into(), "warn".into()),
    ];
    let child = Command::new(env!("CARGO_BIN_EXE_wabridge"))
        .arg("serve")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://{listen}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::get(format!("{url}/healthz")).await.is_err() {
        assert!(Instant::now() < deadline, "wabridge serve did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Server {
        child,
        url,
        _dir: dir,
        env,
    }
}

/// `wabridge bootstrap --workspace bench` against the running server's log: the key.
fn bootstrap(server: &Server) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_wabridge"))
        .args(["bootstrap", "--workspace", "bench"])
        .envs(server.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find(|l| l.trim().starts_with("wbk_"))
        .expect("a key")
        .trim()
        .to_string()
}

async fn setup(server: &Server, key: &str) {
    let c = reqwest::Client::new();
    let put = |path: String, body: Value| {
        let c = c.clone();
        let key = key.to_string();
        async move {
            let r = c
                .put(path)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        }
    };
    let base = format!("{}/v1/workspaces/bench", server.url);
    put(
        format!("{base}/phone-numbers/{NUMBER}"),
        json!({"waba_id": WABA, "display_phone_number": "15551230000"}),
    )
    .await;
    put(
        format!("{base}/phone-numbers/{NUMBER}/token"),
        json!({"access_token": "EAAG-bench"}),
    )
    .await;
    put(
        format!("{base}/rate-limit"),
        json!({"requests_per_second": 100000.0, "burst": 100000}),
    )
    .await;
}

/// A utility template to a distinct recipient (no window or marketing rule applies;
/// the consent check still runs for every send).
fn body(i: usize) -> Value {
    json!({"to": format!("+4477{:08}", i), "type": "template",
           "template": {"name": "order_update", "language": "en_US", "category": "utility"}})
}

async fn throughput(url: &str, key: &str, n: usize) -> common::Stats {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONNECTIONS)
        .build()
        .unwrap();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (client, url, key, next) = (
                client.clone(),
                format!("{url}/v1/workspaces/bench/messages"),
                key.to_string(),
                next.clone(),
            );
            tokio::spawn(async move {
                let mut lat = vec![];
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let t = Instant::now();
                    let r = client
                        .post(&url)
                        .bearer_auth(&key)
                        .json(&body(i))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap());
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    common::gathered(tasks, start).await
}

/// Open loop at `rate`/s for `seconds`: the 202 latencies, and 202 → `message.sent`.
async fn open_loop(
    url: &str,
    key: &str,
    log: Arc<dyn EventLog>,
    rate: u64,
    seconds: u64,
    offset: usize,
) -> (common::Stats, common::Stats) {
    let accepted: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let head = log.last_seq(StreamKind::Domain).await.unwrap();
    let watcher = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut events = log
                .follow_ephemeral(StreamKind::Domain, head + 1)
                .await
                .unwrap();
            while let Some(Ok(ev)) = events.next().await {
                if ev.envelope.event_type == "message.sent" {
                    let v: Value = serde_json::from_slice(&ev.payload).unwrap();
                    sent.lock()
                        .unwrap()
                        .insert(v["id"].as_str().unwrap().to_string(), Instant::now());
                }
            }
        })
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let every = Duration::from_secs_f64(1.0 / rate as f64);
    let n = (rate * seconds) as usize;
    let start = Instant::now();
    let mut tasks = vec![];
    for i in 0..n {
        let at = start + every * i as u32;
        tokio::time::sleep_until(at.into()).await;
        let (client, url, key, accepted) = (
            client.clone(),
            format!("{url}/v1/workspaces/bench/messages"),
            key.to_string(),
            accepted.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(&url)
                .bearer_auth(&key)
                .json(&body(offset + i))
                .send()
                .await
                .unwrap();
            let done = Instant::now();
            assert_eq!(r.status().as_u16(), 202);
            let id = r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
            accepted.lock().unwrap().insert(id, done);
            done.saturating_duration_since(at)
        }));
    }
    let lat: Vec<Duration> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let wall = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent.lock().unwrap().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watcher.abort();
    let accepted = accepted.lock().unwrap();
    let sent = sent.lock().unwrap();
    let to_sent: Vec<Duration> = accepted
        .iter()
        .filter_map(|(id, t)| sent.get(id).map(|s| s.saturating_duration_since(*t)))
        .collect();
    assert_eq!(to_sent.len(), n, "every accepted send reached message.sent");
    (stats(lat, wall), stats(to_sent, wall))
}

/// One admission of the shared limiter on this JetStream, timed alone.
async fn limiter_cost(log: Arc<dyn EventLog>, n: usize) -> common::Stats {
    let limiter = wabridge_handlers::ratelimit::SharedLimiter::new(log);
    let policy = wabridge_handlers::ratelimit::Policy {
        requests_per_second: 1_000_000.0,
        burst: 100_000,
    };
    let start = Instant::now();
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        limiter
            .admit(
                "bench-limiter",
                &policy,
                wabridge_handlers::ratelimit::unix_nanos_now(),
            )
            .await
            .unwrap();
        lat.push(t.elapsed());
    }
    stats(lat, start.elapsed())
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let nats = Nats::start("1s");
        let sim = GraphSim::new(SimConfig {
            per_number_mps: 0,
            pair_burst: 0,
            ..SimConfig::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(sim.clone().serve(listener, std::future::pending()));
        let namespace = "benchsend";
        let server = start_server(&nats, &sim_url, namespace).await;
        let key = bootstrap(&server);
        setup(&server, &key).await;
        let mut js = JetStreamConfig::new(&nats.url);
        js.namespace = wabridge_events::Namespace::new(namespace).unwrap();
        let log: Arc<dyn EventLog> = Arc::new(
            wabridge_events::backends::jetstream::JetStreamLog::connect(js)
                .await
                .unwrap(),
        );

        let n: usize = std::env::var("BENCH_SENDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        header(&format!(
            "Accepted sends through the API: `wabridge serve` (JetStream sync_interval 1s) in its own process, {CONNECTIONS} connections, {n} sends"
        ));
        row("POST /v1/workspaces/{ws}/messages → 202", &throughput(&server.url, &key, n).await);

        // Let the sender drain the backlog first.
        let deadline = Instant::now() + Duration::from_secs(300);
        while sim.calls_to("/messages").len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let rate = 500;
        header(&format!(
            "Open loop, {rate} sends/s offered for 10 s (the 'ops/s' column is the offered rate), the simulator answering at once"
        ));
        let (accept, to_sent) = open_loop(&server.url, &key, log.clone(), rate, 10, n).await;
        row("request → 202", &accept);
        row("202 → message.sent in the log", &to_sent);

        header("The shared rate limiter alone: one admission (compare-and-set on the JetStream KV bucket), 5,000 in a row");
        row("SharedLimiter::admit", &limiter_cost(log, 5_000).await);
    });
}
