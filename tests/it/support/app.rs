//! `spawn_app()`: the real server on a random port, with a fresh data dir, a fresh
//! namespace (JetStream) and a fresh database (PostgreSQL) per test.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde_json::Value;
use sqlx::Connection;
use wabridge::{
    app::App,
    config::{Config, ConfigArgs},
};
use wabridge_events::{Slug, StreamKind};
use wabridge_handlers::{
    access::Role,
    commands::{self, Caller},
    vault::KeyRing,
};

/// Which log backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogKind {
    /// The embedded SQLite log.
    Embedded,
    /// JetStream on the shared test nats-server.
    JetStream,
}

/// Which read-model database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbKind {
    /// SQLite under the data dir.
    Sqlite,
    /// A fresh database on `TEST_DATABASE_URL`.
    Postgres,
}

/// The app secret of the fixtures.
pub const APP_SECRET: &str = "test_app_secret";
/// The verify token tests use.
pub const VERIFY_TOKEN: &str = "verify-me";
/// A master key for tests (v1).
pub const MASTER_V1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
/// A second master key (v2).
pub const MASTER_V2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

/// Options for [`spawn_app_with`].
#[derive(Clone, Debug)]
pub struct TestOptions {
    /// Log backend.
    pub log: LogKind,
    /// Database.
    pub db: DbKind,
    /// Run workers (projections, processor).
    pub workers: bool,
    /// Reuse this data dir (a second instance on the same data).
    pub data_dir: Option<PathBuf>,
    /// Reuse this database URL.
    pub database_url: Option<String>,
    /// Reuse this namespace.
    pub namespace: Option<String>,
    /// `TOKEN_MASTER_KEYS`.
    pub master_keys: Option<String>,
    /// Configure the Meta secrets.
    pub meta_secrets: bool,
    /// Audit signing key.
    pub audit_key: Option<String>,
    /// Duplicate window.
    pub dedup_window: Option<Duration>,
    /// Adjusts the configuration after it is loaded (timeouts, limits).
    pub configure: Option<fn(&mut Config)>,
    /// `META_GRAPH_URL` (default: a closed local port, so nothing reaches Meta).
    pub graph_url: Option<String>,
    /// Use this operator key instead of creating one (an instance that cannot make
    /// a new key visible: no workers anywhere).
    pub operator_key: Option<String>,
    /// JetStream on this server instead of the shared one (a test that kills it).
    pub nats_url: Option<String>,
}

impl TestOptions {
    /// Defaults: everything configured, workers on.
    pub fn new(log: LogKind, db: DbKind) -> Self {
        TestOptions {
            log,
            db,
            workers: true,
            data_dir: None,
            database_url: None,
            namespace: None,
            master_keys: Some(format!("v1:{MASTER_V1}")),
            meta_secrets: true,
            audit_key: Some("audit-signing-key".into()),
            dedup_window: None,
            configure: None,
            graph_url: None,
            operator_key: None,
            nats_url: None,
        }
    }
}

/// A running server.
pub struct TestApp {
    /// Its address.
    pub addr: SocketAddr,
    /// The application state (log, store, config).
    pub app: App,
    /// The options it was started with (resolved).
    pub opts: TestOptions,
    /// An operator key.
    pub operator: String,
    client: reqwest::Client,
    _dir: Option<tempfile::TempDir>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

/// A fresh PostgreSQL database on `TEST_DATABASE_URL`; returns its URL.
pub async fn fresh_postgres() -> String {
    let admin = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("wbt_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::postgres::PgConnection::connect(&admin)
        .await
        .expect("TEST_DATABASE_URL reachable (run ./scripts/test)");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create database");
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .unwrap_or(admin.clone());
    format!("{base}/{name}")
}

/// Starts the server with everything configured.
pub async fn spawn_app(log: LogKind, db: DbKind) -> TestApp {
    spawn_app_with(TestOptions::new(log, db)).await
}

/// The workers lease period in tests: short, so a test that waits one out is quick.
pub const TEST_LEASE_TTL: Duration = Duration::from_secs(4);

/// Starts the server with options.
pub async fn spawn_app_with(opts: TestOptions) -> TestApp {
    try_spawn_app_with(opts).await.expect("the server starts")
}

/// Starts the server with options; the error when it refuses to start.
pub async fn try_spawn_app_with(mut opts: TestOptions) -> anyhow::Result<TestApp> {
    let (dir, data_dir) = match &opts.data_dir {
        Some(d) => (None, d.clone()),
        None => {
            let t = tempfile::tempdir().expect("tempdir");
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    opts.data_dir = Some(data_dir.clone());
    if opts.database_url.is_none() && opts.db == DbKind::Postgres {
        opts.database_url = Some(fresh_postgres().await);
    }
    if opts.namespace.is_none() {
        opts.namespace = Some(super::unique_ns().as_str().to_string());
    }
    let mut args = ConfigArgs {
        data_dir: Some(data_dir),
        listen: Some("127.0.0.1:0".into()),
        database_url: opts.database_url.clone(),
        namespace: opts.namespace.clone(),
        roles: Some(if opts.workers { "api,workers" } else { "api" }.into()),
        ..Default::default()
    };
    if opts.log == LogKind::JetStream {
        args.nats_url = Some(match &opts.nats_url {
            Some(url) => url.clone(),
            None => super::NatsServer::shared().await.url(),
        });
    }
    let mut cfg = config_without_env_secrets(&args);
    cfg.meta_app_secrets = if opts.meta_secrets {
        vec![APP_SECRET.to_string().into()]
    } else {
        vec![]
    };
    cfg.meta_verify_token = opts.meta_secrets.then(|| VERIFY_TOKEN.to_string().into());
    cfg.token_keys = opts
        .master_keys
        .as_deref()
        .map(|k| KeyRing::parse_keys(k).expect("test keys"));
    cfg.audit_signing_key = opts.audit_key.clone().map(Into::into);
    if let Some(w) = opts.dedup_window {
        cfg.dedup_window = w;
        if let Some(js) = cfg.nats.as_mut() {
            js.duplicate_window = w;
        }
    }
    cfg.lease_ttl = TEST_LEASE_TTL;
    cfg.meta_graph_url = opts
        .graph_url
        .clone()
        .unwrap_or_else(|| "http://127.0.0.1:9".into());
    if let Some(f) = opts.configure {
        f(&mut cfg);
    }
    let app = App::build(cfg).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
    let server_app = app.clone();
    let handle = tokio::spawn(async move {
        let result = wabridge::server::run_notify(
            server_app,
            listener,
            async move {
                let _ = rx.await;
            },
            started_tx,
        )
        .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "server stopped");
        }
    });
    started_rx
        .await
        .map_err(|_| anyhow::anyhow!("the server task ended before starting"))??;
    let caller = Caller::cli("test");
    let operator = match &opts.operator_key {
        Some(k) => k.clone(),
        None => commands::keys::create(&app.ctx, &caller, None, "test operator", None, None)
            .await?
            .key
            .expose_secret()
            .to_string(),
    };
    Ok(TestApp {
        addr,
        app,
        opts,
        operator,
        client: reqwest::Client::new(),
        _dir: dir,
        shutdown: Some(tx),
        handle: Some(handle),
    })
}

/// Loads a config from arguments only. The test process sets no secret variables,
/// so `Config::load` would refuse `NATS_URL`; load without it, then add JetStream.
fn config_without_env_secrets(args: &ConfigArgs) -> Config {
    let mut cfg = Config::load_with(
        &ConfigArgs {
            nats_url: None,
            ..args.clone()
        },
        &wabridge::config::MapSecrets::default(),
    )
    .expect("config");
    if let Some(url) = &args.nats_url {
        let mut js = wabridge_events::backends::jetstream::JetStreamConfig::new(url);
        js.namespace = cfg.namespace.clone();
        js.duplicate_window = cfg.dedup_window;
        cfg.nats = Some(js);
    }
    cfg
}

/// A response: status and JSON body (Null when not JSON).
#[derive(Debug)]
pub struct Resp {
    /// Status.
    pub status: StatusCode,
    /// Body as JSON.
    pub json: Value,
    /// Raw body.
    pub text: String,
    /// Content type.
    pub content_type: String,
}

impl Resp {
    /// Reads a response: status, content type, body as text and as JSON.
    pub async fn from(res: reqwest::Response) -> Resp {
        let status = res.status();
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = res.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            json,
            text,
            content_type,
        }
    }
}

/// Asserts a problem document (RFC 9457): status, content type, stable code, and
/// the document's own `status`. `what` names the case in failure messages.
pub fn assert_problem(r: &Resp, status: u16, code: &str, what: &str) {
    assert_eq!(r.status.as_u16(), status, "{what}: status; body {}", r.text);
    assert!(
        r.content_type.starts_with("application/problem+json"),
        "{what}: content type {:?}; body {}",
        r.content_type,
        r.text
    );
    assert_eq!(r.json["code"], code, "{what}: code; body {}", r.text);
    assert_eq!(
        r.json["status"], status,
        "{what}: problem status; body {}",
        r.text
    );
}

impl TestApp {
    /// `http://addr`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Any request with an optional bearer key and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut req = self.client.request(method, self.url(path));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        Resp::from(req.send().await.expect("request")).await
    }

    /// GET.
    pub async fn get(&self, path: &str, key: &str) -> Resp {
        self.call(Method::GET, path, Some(key), None).await
    }

    /// POST JSON.
    pub async fn post(&self, path: &str, key: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(key), Some(body)).await
    }

    /// PUT JSON.
    pub async fn put(&self, path: &str, key: &str, body: Value) -> Resp {
        self.call(Method::PUT, path, Some(key), Some(body)).await
    }

    /// DELETE.
    pub async fn delete(&self, path: &str, key: &str) -> Resp {
        self.call(Method::DELETE, path, Some(key), None).await
    }

    /// POSTs a webhook body with a signature header (or none).
    pub async fn webhook(&self, body: &[u8], signature: Option<&str>) -> Resp {
        let mut req = self
            .client
            .post(self.url("/webhooks/meta"))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(s) = signature {
            req = req.header("x-hub-signature-256", s);
        }
        Resp::from(req.send().await.expect("request")).await
    }

    /// POSTs a correctly signed webhook body.
    pub async fn signed_webhook(&self, body: &[u8]) -> Resp {
        let sig = wabridge_handlers::webhooks::sign(APP_SECRET, body);
        self.webhook(body, Some(&sig)).await
    }

    /// Creates a workspace (operator) and returns an owner key.
    pub async fn workspace(&self, slug: &str) -> String {
        let r = self
            .post(
                "/v1/workspaces",
                &self.operator,
                serde_json::json!({"slug": slug, "name": slug}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        self.key(slug, Role::Owner).await
    }

    /// Creates a key of a role in a workspace (as the operator).
    pub async fn key(&self, slug: &str, role: Role) -> String {
        let r = self
            .post(
                &format!("/v1/workspaces/{slug}/api-keys"),
                &self.operator,
                serde_json::json!({"name": "t", "role": role.as_str()}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.json["key"].as_str().expect("key").to_string()
    }

    /// Claims a number for a workspace.
    pub async fn claim(&self, slug: &str, phone_number_id: &str, waba_id: &str) {
        let r = self
            .put(
                &format!("/v1/workspaces/{slug}/phone-numbers/{phone_number_id}"),
                &self.operator,
                serde_json::json!({"waba_id": waba_id, "display_phone_number": "15551230000"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }

    /// Waits until the webhook processor and every projection caught up with the log.
    pub async fn settle(&self) {
        let ctx = &self.app.ctx;
        // A read that fails (a pooled connection the database just terminated, as
        // in the restart tests) is tried again: settling waits, it does not judge.
        let caught_up = |name: &'static str, seq: u64| async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match ctx.store.wait_for(&ctx.progress, name, seq, left).await {
                    Ok(done) => return done,
                    Err(_) if !left.is_zero() => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Err(e) => panic!("waiting for {name}: {e:#}"),
                }
            }
        };
        for _ in 0..3 {
            let raw = self.head(StreamKind::Raw).await;
            assert!(
                caught_up(wabridge_handlers::webhooks::processor::NAME, raw).await,
                "webhook processor did not catch up"
            );
            let head = self.head(StreamKind::Domain).await;
            for name in wabridge_projections::views::names() {
                assert!(caught_up(name, head).await, "{name} did not catch up");
            }
        }
    }

    /// Domain events of a type in a workspace (from the log).
    pub async fn events_of(
        &self,
        ws: Option<&str>,
        event_type: &str,
    ) -> Vec<wabridge_events::StoredEvent> {
        let ns = self.app.ctx.log.namespace();
        let filter = match ws {
            Some(ws) => format!("{}.{}.>", ns.as_str(), Slug::parse(ws).expect("slug")),
            None => format!("{}.>", ns.as_str()),
        };
        self.domain_events(Some(&filter))
            .await
            .into_iter()
            .filter(|e| e.envelope.event_type == event_type)
            .collect()
    }

    /// Every domain event (matching a subject filter), in log order.
    pub async fn domain_events(&self, filter: Option<&str>) -> Vec<wabridge_events::StoredEvent> {
        self.read_all(StreamKind::Domain, filter)
            .await
            .expect("read")
    }

    /// The first 100,000 events of a stream (matching a subject filter), in order.
    /// A read that fails is tried again for up to 30 s, then its error returned:
    /// checking waits, it does not judge (seen: a three-node cluster whose killed node
    /// led its streams and its meta group answered a consumer's creation "timed out"
    /// seconds after ingest had resumed on a new leader).
    pub async fn read_all(
        &self,
        stream: StreamKind,
        filter: Option<&str>,
    ) -> Result<Vec<wabridge_events::StoredEvent>, wabridge_events::LogError> {
        let log = &self.app.ctx.log;
        patiently(|| log.read(stream, wabridge_events::ReadFrom::Seq(1), filter, 100_000)).await
    }

    /// The last sequence of a stream, asked again while the log fails (as
    /// [`TestApp::read_all`] does).
    pub async fn head(&self, stream: StreamKind) -> u64 {
        patiently(|| self.app.ctx.log.last_seq(stream))
            .await
            .unwrap_or_else(|e| panic!("the {} head: {e:#}", stream.as_str()))
    }

    /// Stops the server (graceful) and starts it again on the same data, with the
    /// same options and operator key.
    pub async fn restart(self) -> TestApp {
        self.restart_with(|_| {}).await
    }

    /// As [`TestApp::restart`], with the options changed first (other master keys,
    /// say).
    pub async fn restart_with(mut self, change: impl FnOnce(&mut TestOptions)) -> TestApp {
        let dir = self._dir.take();
        let mut opts = TestOptions {
            operator_key: Some(self.operator.clone()),
            ..self.opts.clone()
        };
        change(&mut opts);
        self.stop().await;
        let mut again = spawn_app_with(opts).await;
        again._dir = dir;
        again
    }

    /// Stops the server (graceful).
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

/// A signed-webhook body: one text message `text` from `from` to `number` of
/// `waba`, with this wamid.
pub fn text_webhook_to(number: &str, waba: &str, from: &str, text: &str, wamid: &str) -> Vec<u8> {
    use wabridge::dev::webhook::{build, Kind, WebhookSpec};
    build(&WebhookSpec {
        kind: Kind::Text,
        phone_number_id: number.into(),
        waba_id: waba.into(),
        from: from.into(),
        text: Some(text.into()),
        wamid: Some(wamid.into()),
        ..WebhookSpec::default()
    })
}

/// A fixture body from `shared/fixtures/meta`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/meta")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every fixture name with its recorded signature.
pub fn fixture_signatures() -> Vec<(String, String)> {
    let text = String::from_utf8(fixture("SIGNATURES.tsv")).expect("utf8");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (a, b) = l.split_once('\t').expect("tab");
            (a.to_string(), b.trim().to_string())
        })
        .collect()
}

/// Rebuilds one projection from the log into a fresh store of `db`'s kind: its
/// checksum equals the live one's.
pub async fn rebuild_matches(
    app: &TestApp,
    db: DbKind,
    projection: std::sync::Arc<dyn wabridge_projections::Projection>,
) {
    use wabridge_projections::{driver::Follower, projection::checksum, projection::AsReactor};
    let dir = tempfile::tempdir().expect("tempdir");
    let url = match db {
        DbKind::Sqlite => format!("sqlite://{}", dir.path().join("rebuild.db").display()),
        DbKind::Postgres => fresh_postgres().await,
    };
    let store = wabridge_projections::Store::connect(&url)
        .await
        .expect("fresh store");
    let driver = wabridge_projections::Driver {
        log: app.app.ctx.log.clone(),
        store: store.clone(),
        progress: Default::default(),
    };
    let follower = Follower {
        consumer: "rebuild",
        stream: StreamKind::Domain,
        reactors: vec![std::sync::Arc::new(AsReactor(projection.clone()))],
    };
    app.settle().await;
    driver.catch_up(&follower).await.expect("rebuild");
    let live = checksum(&app.app.ctx.store, &*projection).await.unwrap();
    let rebuilt = checksum(&store, &*projection).await.unwrap();
    assert_eq!(
        rebuilt,
        live,
        "a rebuild differs from the live {} state",
        projection.name()
    );
}

/// The checksum of `p` after folding `events` into a fresh store, one event at a
/// time (`batch: None`) or in batches of that many events, all in one transaction.
pub async fn fold_checksum(
    db: DbKind,
    p: &dyn wabridge_projections::Projection,
    events: &[wabridge_events::StoredEvent],
    batch: Option<usize>,
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let url = match db {
        DbKind::Sqlite => format!("sqlite://{}", dir.path().join("x.db").display()),
        DbKind::Postgres => fresh_postgres().await,
    };
    let store = wabridge_projections::Store::connect(&url).await.unwrap();
    let mut tx = store.pool.begin().await.unwrap();
    match batch {
        None => {
            for e in events {
                p.apply(&mut tx, e).await.unwrap();
            }
        }
        Some(n) => {
            for chunk in events.chunks(n) {
                p.apply_batch(&mut tx, chunk).await.unwrap();
            }
        }
    }
    tx.commit().await.unwrap();
    wabridge_projections::projection::checksum(&store, p)
        .await
        .unwrap()
}

/// A projection's batch fold (chunks of 7 events) leaves exactly the rows of
/// applying the log's events one at a time, and both equal the live read model.
pub async fn batch_fold_equals_one_at_a_time(
    app: &TestApp,
    db: DbKind,
    p: std::sync::Arc<dyn wabridge_projections::Projection>,
) {
    use wabridge_projections::projection::checksum;
    app.settle().await;
    let events = app.domain_events(None).await;
    assert!(
        events.len() > 10,
        "too few events to compare: {}",
        events.len()
    );
    let folded = fold_checksum(db, &*p, &events, None).await;
    assert_eq!(
        folded,
        fold_checksum(db, &*p, &events, Some(7)).await,
        "{}: batch differs from one at a time",
        p.name()
    );
    let live = checksum(&app.app.ctx.store, &*p).await.unwrap();
    assert_eq!(folded, live, "{}: differs from live", p.name());
    // The checksum's definition, which operators can reproduce from the dump: the
    // SHA-256 of the dump's lines, each followed by "\n".
    let mut conn = app.app.ctx.store.reads.acquire().await.unwrap();
    let sql = wabridge_projections::projection::dump_sql_on(&conn, &*p);
    let lines: Vec<String> = sqlx::query_scalar(&sql)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    for line in &lines {
        sha2::Digest::update(&mut h, line.as_bytes());
        sha2::Digest::update(&mut h, b"\n");
    }
    let by_line = hex::encode(sha2::Digest::finalize(h));
    assert_eq!(
        live,
        by_line,
        "{}: the checksum is not the dump's",
        p.name()
    );
}

/// `op` until it succeeds or 30 s have passed (then its last error), 200 ms apart.
async fn patiently<T, F, Fut>(mut op: F) -> Result<T, wabridge_events::LogError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, wabridge_events::LogError>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match op().await {
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            done => return done,
        }
    }
}
