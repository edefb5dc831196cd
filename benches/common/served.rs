//! The deployed shape for benchmarks: `wabridge serve` (API and workers in one
//! process) as a child process, loaded from the bench process over loopback at a
//! fixed offered rate (open loop: each webhook is sent at its scheduled time,
//! whatever the earlier ones are doing, and its latency counts from that time).
//!
//! `SERVED_WRAP` runs the server under a wrapper command, e.g.
//! `SERVED_WRAP="valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out"` to
//! count instructions per stage; the server is stopped with SIGTERM (so such a tool
//! writes its output) and killed only when it does not stop. `SERVED_BIN` runs
//! another build of the server than this bench's own.

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{bodies_to, Nats};

/// The token master key the bench server uses.
pub const MASTER: &str = "v1:3333333333333333333333333333333333333333333333333333333333333333";
/// The phone number claimed by the `bench` workspace.
pub const NUMBER: &str = "700800900100200";
/// Its WABA.
pub const WABA: &str = "300100200300400";

/// A number from the environment, else `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `wabridge serve` as a child process, stopped on drop.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// An owner key of the `bench` workspace.
    pub key: String,
    /// The claimed numbers the load is spread over, one per workspace
    /// (`SERVED_WORKSPACES`, default 1: [`NUMBER`] of `bench` alone).
    pub numbers: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// The server's process id (the wrapper's under `SERVED_WRAP`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: &str) -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the state.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    (num(11) + num(12)) / ticks
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wabridge(dir: &std::path::Path, nats: &str, port: u16, wrap: bool) -> Command {
    // `SERVED_BIN`: another build of the server (a copy of an earlier one, to
    // compare the two in alternated runs on a machine whose speed drifts).
    let bin = std::env::var("SERVED_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_wabridge").into());
    let wrapper: Vec<String> = std::env::var("SERVED_WRAP")
        .ok()
        .filter(|_| wrap)
        .map(|w| w.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let mut c = match wrapper.split_first() {
        Some((tool, args)) => {
            let mut c = Command::new(tool);
            c.args(args).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NATS_URL", nats)
        .env("WABRIDGE_DATA_DIR", dir)
        .env("WABRIDGE_LISTEN", format!("127.0.0.1:{port}"))
        .env("META_APP_SECRET", super::SECRET)
        .env("META_VERIFY_TOKEN", "bench")
        .env("TOKEN_MASTER_KEYS", MASTER)
        .env("AUDIT_SIGNING_KEY", "bench-audit-key")
        .env("WABRIDGE_ALLOW_PRIVATE_ENDPOINTS", "true")
        .env("WABRIDGE_MAX_CONNECTIONS", "4096")
        .env("WABRIDGE_MAX_CONNECTIONS_PER_ADDRESS", "4096")
        .env("RUST_LOG", "warn");
    c
}

/// Bootstraps a `bench` workspace, starts `wabridge serve` on JetStream (read
/// models in SQLite, or in a fresh PostgreSQL database with `BENCH_DATABASE_URL`),
/// waits until it is ready and claims [`NUMBER`].
pub async fn start_server(nats: &Nats) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let database = match std::env::var("BENCH_DATABASE_URL") {
        Ok(base) => Some(super::fresh_postgres(&base).await),
        Err(_) => None,
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let with_db = |mut c: Command| {
        if let Some(url) = &database {
            c.env("DATABASE_URL", url);
        }
        c
    };
    let out = with_db(wabridge(dir.path(), &nats.url, port, false))
        .args(["bootstrap", "--workspace", "bench"])
        .output()
        .expect("wabridge bootstrap");
    let owner_key = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .trim()
            .to_string()
    };
    let key = owner_key(out);
    // More client businesses: workspace `wsK` holds number `7008009000000K` (its own
    // WABA), and the load goes round them.
    let mut claims = vec![(
        "bench".to_string(),
        key.clone(),
        NUMBER.to_string(),
        WABA.to_string(),
    )];
    for k in 1..env_num("SERVED_WORKSPACES", 1) {
        let ws = format!("ws{k}");
        let out = with_db(wabridge(dir.path(), &nats.url, port, false))
            .args(["bootstrap", "--workspace", &ws])
            .output()
            .expect("wabridge bootstrap");
        claims.push((
            ws,
            owner_key(out),
            format!("70080090{k:07}"),
            format!("30010020{k:07}"),
        ));
    }
    let child = with_db(wabridge(dir.path(), &nats.url, port, true))
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("wabridge serve");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..1200 {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, (ws, key, number, waba)) in claims.iter().enumerate() {
        let r = client
            .put(format!("{base}/v1/workspaces/{ws}/phone-numbers/{number}"))
            .bearer_auth(key)
            .json(&serde_json::json!({"waba_id": waba, "display_phone_number": format!("1555123{i:04}")}))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "claim: {}",
            r.text().await.unwrap()
        );
    }
    Server {
        child,
        base,
        key,
        numbers: claims.into_iter().map(|(_, _, n, _)| n).collect(),
        _dir: dir,
    }
}

/// What an open-loop offer got back.
pub struct Offered {
    /// When each acknowledged webhook got its `200`, by wamid.
    pub acked: HashMap<String, Instant>,
    /// Each acknowledged one's latency from its scheduled time to its `200`.
    pub ingest: Vec<Duration>,
    /// Those not answered `200`, by what happened: an overloaded server refusing
    /// connections beyond its cap is a result to report, not a bench failure.
    pub failed: std::collections::BTreeMap<String, usize>,
}

impl Offered {
    /// One line counting the failures by kind, or `None` when every one was a `200`.
    pub fn failures(&self) -> Option<String> {
        if self.failed.is_empty() {
            return None;
        }
        let total: usize = self.failed.values().sum();
        let kinds: Vec<String> = self
            .failed
            .iter()
            .map(|(why, n)| format!("{n} {why}"))
            .collect();
        Some(format!(
            "{total} of {} requests not answered 200: {}",
            total + self.acked.len(),
            kinds.join(", ")
        ))
    }
}

/// Offers `rate` distinct signed webhooks a second for `seconds` (open loop).
pub async fn offer(server: &Server, rate: u64, seconds: u64, tag: &str) -> Offered {
    let n = (rate * seconds) as usize;
    let bodies = Arc::new(bodies_to(n, tag, &server.numbers));
    // A bound on each request: an overloaded run once waited for ever on one whose
    // connection the server had dropped at its cap (the bench hung, the server idle).
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let url = format!("{}/webhooks/meta", server.base);
    let start = Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let at = start + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(at.into()).await;
        let (client, url, bodies) = (client.clone(), url.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            let (body, sig, wamid) = &bodies[i];
            let answer = client
                .post(&url)
                .header("x-hub-signature-256", sig)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            match answer {
                Ok(r) if r.status() == 200 => {
                    let done = Instant::now();
                    Ok((wamid.clone(), done, done.duration_since(at)))
                }
                Ok(r) => Err(format!("answered {}", r.status().as_u16())),
                Err(e) if e.is_timeout() => Err("timed out".to_string()),
                Err(e) if e.is_connect() => Err("not connected (refused or reset)".to_string()),
                Err(_) => Err("closed before the answer".to_string()),
            }
        }));
    }
    let mut offered = Offered {
        acked: HashMap::with_capacity(n),
        ingest: Vec::with_capacity(n),
        failed: Default::default(),
    };
    for t in tasks {
        match t.await.unwrap() {
            Ok((wamid, done, lat)) => {
                offered.acked.insert(wamid, done);
                offered.ingest.push(lat);
            }
            Err(why) => *offered.failed.entry(why).or_default() += 1,
        }
    }
    offered
}

/// The `q` quantile of `v`, in milliseconds.
pub fn pct(mut v: Vec<Duration>, q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort();
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e3
}
