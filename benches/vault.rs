//! Token retrieval (look-up + decrypt) p50/p99 in-process. `cargo bench --bench vault`.

mod common;

use std::time::{Duration, Instant};

use common::{header, row, stats};
use secrecy::SecretString;
use wabridge::{
    app::App,
    config::{Config, ConfigArgs},
};
use wabridge_handlers::commands::{self, Caller};

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::load(&ConfigArgs { data_dir: Some(dir.path().to_path_buf()), ..Default::default() }).unwrap();
        cfg.token_keys = Some(wabridge_handlers::vault::KeyRing::parse_keys(&format!("v1:{}", "ab".repeat(32))).unwrap());
        let app = App::build(cfg).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        tokio::spawn(wabridge::server::run(app.clone(), listener, std::future::pending()));
        let caller = Caller::cli("bench");
        let ws = wabridge_events::Slug::parse("bench").unwrap();
        commands::workspaces::create(&app.ctx, &caller, &ws, "bench").await.unwrap();
        let numbers: Vec<String> = (0..100).map(|i| format!("{}", 700800900100000u64 + i)).collect();
        for n in &numbers {
            let token = SecretString::from(format!("EAAG{}", "x".repeat(200)));
            commands::tokens::store(&app.ctx, app.cfg.token_keys.as_ref(), &caller, &ws, n, &token, None).await.unwrap();
        }
        let rounds = 20_000;
        let mut lat: Vec<Duration> = Vec::with_capacity(rounds);
        let start = Instant::now();
        for i in 0..rounds {
            let t = Instant::now();
            let tok = commands::tokens::retrieve(&app.ctx, app.cfg.token_keys.as_ref(), &ws, &numbers[i % numbers.len()]).await.unwrap();
            lat.push(t.elapsed());
            drop(tok);
        }
        header("Token retrieval (look-up + AES-256-GCM-SIV decrypt), 100 stored tokens, 20,000 retrievals");
        row("retrieve", &stats(lat, start.elapsed()));
    });
}
