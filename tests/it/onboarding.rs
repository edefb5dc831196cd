//! Embedded Signup onboarding against the Graph API simulator: the happy path on both
//! logs and databases (each call once, with the documented parameters), each step
//! failing once, an expired code, the registration limit, a number another
//! workspace holds, partner events, configuration and input errors, and a SIGKILL
//! of the served binary mid-saga (resumed, no step repeated, no secret printed even
//! with `RUST_LOG=debug`).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use wabridge::dev::graph_sim::{Call, Script, SimConfig};
use wabridge_events::StreamKind;

use std::sync::Arc;

use wabridge_projections::views::onboarding::Onboarding;

use crate::sending::{start_sim, Sim};
use crate::support::app::{
    assert_problem, spawn_app_with, DbKind, LogKind, TestApp, TestOptions, APP_SECRET, MASTER_V1,
};

async fn rebuild_matches(app: &TestApp, db: DbKind) {
    crate::support::app::rebuild_matches(app, db, Arc::new(Onboarding)).await;
}

const WABA: &str = "300100200300777";
const NUMBER: &str = "700800900100777";
const DISPLAY: &str = "15551230777";
const APP_ID: &str = "123123123123123";
const PIN: &str = "739146";

fn with_app_id(cfg: &mut wabridge::config::Config) {
    cfg.meta_app_id = Some(APP_ID.into());
}

fn sim_config() -> SimConfig {
    let mut cfg = SimConfig::default();
    cfg.numbers
        .insert(NUMBER.into(), (WABA.into(), DISPLAY.into()));
    cfg
}

async fn setup(log: LogKind, db: DbKind) -> (TestApp, Sim, String) {
    let sim = start_sim(sim_config()).await;
    let mut opts = TestOptions::new(log, db);
    opts.graph_url = Some(sim.url.clone());
    opts.configure = Some(with_app_id);
    let app = spawn_app_with(opts).await;
    let key = app.workspace("acme").await;
    (app, sim, key)
}

/// A fresh, distinctive signup code.
fn new_code() -> String {
    format!("AQDesb{}", uuid::Uuid::new_v4().simple())
}

fn start_body(code: &str) -> Value {
    json!({"code": code, "waba_id": WABA, "phone_number_id": NUMBER, "pin": PIN})
}

async fn start(app: &TestApp, key: &str, code: &str) -> String {
    let r = app
        .post("/v1/workspaces/acme/onboarding", key, start_body(code))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.json["state"], "running", "{}", r.text);
    r.json["id"].as_str().expect("an id").to_string()
}

/// Polls the report until `done` says so (20 s at most).
async fn wait_report(app: &TestApp, key: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = app
            .get(&format!("/v1/workspaces/acme/onboarding/{id}"), key)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        if done(&r.json) {
            return r.json;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "onboarding did not get there: {}",
            r.json
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn finished(r: &Value) -> bool {
    r["state"] != "running"
}

fn step<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {report}"))
}

/// The Graph calls of each step: (exchange, subscribe, register, number details).
fn graph_calls(sim: &Sim) -> (Vec<Call>, Vec<Call>, Vec<Call>, Vec<Call>) {
    let number_path = format!("/{NUMBER}");
    let lookups = sim
        .sim
        .calls()
        .into_iter()
        .filter(|c| c.method == "GET" && c.path.ends_with(&number_path))
        .collect();
    (
        sim.sim.calls_to("/oauth/access_token"),
        sim.sim.calls_to("/subscribed_apps"),
        sim.sim.calls_to("/register"),
        lookups,
    )
}

fn counts(sim: &Sim) -> [usize; 4] {
    let (a, b, c, d) = graph_calls(sim);
    [a.len(), b.len(), c.len(), d.len()]
}

/// A query parameter of a call, percent-decoded.
fn query_param(call: &Call, name: &str) -> Option<String> {
    call.query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).expect("percent escape"));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).expect("utf-8")
}

/// A signed `account_update` partner event for the WABA.
async fn partner_event(app: &TestApp, event: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "555666777888999", "time": now,
        "changes": [{"field": "account_update", "value": {"event": event,
            "waba_info": {"waba_id": WABA, "owner_business_id": "555666777888999", "partner_app_id": APP_ID}}}]}]});
    let r = app.signed_webhook(body.to_string().as_bytes()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

/// Every domain event's envelope and data, as text.
async fn log_text(app: &TestApp) -> String {
    let events = app
        .app
        .ctx
        .log
        .read(
            StreamKind::Domain,
            wabridge_events::ReadFrom::Seq(1),
            None,
            100_000,
        )
        .await
        .unwrap();
    let mut text = String::new();
    for e in events {
        text.push_str(&serde_json::to_string(&e.envelope).unwrap());
        text.push_str(&String::from_utf8_lossy(&e.payload));
        text.push('\n');
    }
    text
}

async fn happy_path(log: LogKind, db: DbKind) {
    let (app, sim, key) = setup(log, db).await;
    // Meta sends PARTNER_APP_INSTALLED when the business finishes the flow, before
    // the front end calls us; nobody owns the WABA yet.
    partner_event(&app, "PARTNER_APP_INSTALLED").await;
    let code = new_code();
    let id = start(&app, &key, &code).await;
    let report = wait_report(&app, &key, &id, finished).await;
    assert_eq!(report["state"], "done", "{report}");
    assert_eq!(report["webhooks_subscribed"], true);
    for name in [
        "exchange_code",
        "subscribe_webhooks",
        "register_number",
        "route_number",
    ] {
        let s = step(&report, name);
        assert_eq!(s["state"], "succeeded", "{report}");
        assert_eq!(s["attempts"], 1, "{report}");
        assert!(s["at"].is_string(), "{report}");
        assert!(s.get("error").is_none(), "{report}");
    }
    // Each Graph call once, with the documented parameters.
    let (exchange, subscribe, register, lookup) = graph_calls(&sim);
    assert_eq!(counts(&sim), [1, 1, 1, 1], "{:?}", sim.sim.calls());
    let x = &exchange[0];
    assert_eq!(x.method, "GET");
    assert!(x.path.ends_with("/oauth/access_token"), "{}", x.path);
    assert_eq!(query_param(x, "client_id").as_deref(), Some(APP_ID));
    assert_eq!(query_param(x, "client_secret").as_deref(), Some(APP_SECRET));
    assert_eq!(query_param(x, "code").as_deref(), Some(code.as_str()));
    let bearer = subscribe[0].authorization.clone().expect("a bearer token");
    assert!(
        bearer.starts_with("Bearer EAAG"),
        "the exchanged token is used"
    );
    assert_eq!(subscribe[0].method, "POST");
    assert!(subscribe[0]
        .path
        .ends_with(&format!("/{WABA}/subscribed_apps")));
    assert_eq!(register[0].authorization.as_deref(), Some(bearer.as_str()));
    assert!(register[0].path.ends_with(&format!("/{NUMBER}/register")));
    assert_eq!(
        register[0].body,
        json!({"messaging_product": "whatsapp", "pin": PIN})
    );
    assert_eq!(
        query_param(&lookup[0], "fields").as_deref(),
        Some("display_phone_number,verified_name")
    );
    // The calls run in step order.
    assert!(exchange[0].at <= subscribe[0].at && subscribe[0].at <= register[0].at);
    // The token is in the vault, the number routed to the workspace.
    let token = bearer.trim_start_matches("Bearer ").to_string();
    assert_eq!(report["token"]["status"], "valid", "{report}");
    let r = app
        .get(
            &format!("/v1/workspaces/acme/phone-numbers/{NUMBER}/token"),
            &key,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(
        r.json["expires_at"].is_string(),
        "Meta's expires_in is kept: {}",
        r.json
    );
    let r = app.get("/v1/workspaces/acme/phone-numbers", &key).await;
    let held = &r.json["items"][0];
    assert_eq!(held["phone_number_id"], NUMBER, "{}", r.text);
    assert_eq!(held["waba_id"], WABA);
    assert_eq!(held["display_phone_number"], "+1 555-123-0777");
    // The partner event that came first is linked.
    let partner: Vec<&Value> = report["partner_events"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(partner.len(), 1, "{report}");
    assert_eq!(partner[0]["event"], "PARTNER_APP_INSTALLED");
    // Starting again with the same code starts nothing new.
    let r = app
        .post("/v1/workspaces/acme/onboarding", &key, start_body(&code))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.json["id"], id.as_str());
    assert_eq!(r.json["state"], "done");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(counts(&sim), [1, 1, 1, 1], "a repeat called Meta again");
    // The list has it.
    let r = app.get("/v1/workspaces/acme/onboarding", &key).await;
    assert_eq!(r.json["items"][0]["id"], id.as_str(), "{}", r.text);
    // Every step and its outcome is audited.
    let r = app.get("/v1/workspaces/acme/audit?limit=500", &key).await;
    let actions: Vec<String> = r.json["items"]
        .as_array()
        .expect("audit items")
        .iter()
        .map(|e| e["action"].as_str().unwrap_or_default().to_string())
        .collect();
    for action in [
        "onboarding.started",
        "onboarding.step_started",
        "onboarding.step_succeeded",
        "onboarding.completed",
        "token.stored",
        "phone_number.claimed",
    ] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} not audited: {actions:?}"
        );
    }
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "onboarding.step_succeeded")
            .count(),
        4
    );
    // No secret in the log.
    let text = log_text(&app).await;
    assert!(text.contains(&id), "control: the log text holds the saga");
    assert!(!text.contains(&code), "the code is in the log");
    assert!(!text.contains(&token), "the token is in the log");
    assert!(
        !text.contains(&format!("\"{PIN}\"")),
        "the pin is in the log"
    );
    assert!(!text.contains(APP_SECRET), "the app secret is in the log");
    // The business uninstalls the app: the token is invalid, and the report says so.
    partner_event(&app, "PARTNER_APP_UNINSTALLED").await;
    let report = wait_report(&app, &key, &id, |r| r["token"]["status"] == "invalid").await;
    let last = report["partner_events"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["event"], "PARTNER_APP_UNINSTALLED", "{report}");
    assert!(
        last["effect"].as_str().unwrap().contains("invalid"),
        "{report}"
    );
    rebuild_matches(&app, db).await;
}

#[tokio::test]
async fn onboarding_runs_each_step_once_embedded_sqlite() {
    happy_path(LogKind::Embedded, DbKind::Sqlite).await;
}

#[tokio::test]
async fn onboarding_runs_each_step_once_jetstream_postgres() {
    happy_path(LogKind::JetStream, DbKind::Postgres).await;
}

#[tokio::test]
async fn each_step_failing_once_is_retried_and_succeeds() {
    let (app, sim, key) = setup(LogKind::Embedded, DbKind::Sqlite).await;
    let code = new_code();
    sim.sim.script_exchange(&code, Script::fail(2, 1));
    sim.sim.script_subscribe(WABA, Script::fail(1, 1));
    sim.sim.script_register(
        NUMBER,
        Script::Fail {
            code: 2,
            http_status: 503,
            times: 1,
        },
    );
    sim.sim.script_number(NUMBER, Script::fail(2, 1));
    let id = start(&app, &key, &code).await;
    let report = wait_report(&app, &key, &id, finished).await;
    assert_eq!(report["state"], "done", "{report}");
    assert_eq!(counts(&sim), [2, 2, 2, 2], "{:?}", sim.sim.calls());
    for name in [
        "exchange_code",
        "subscribe_webhooks",
        "register_number",
        "route_number",
    ] {
        assert_eq!(step(&report, name)["attempts"], 2, "{report}");
    }
    // The failures are in the log, with Meta's codes.
    let failed = app.events_of(Some("acme"), "onboarding.step_failed").await;
    assert_eq!(failed.len(), 4);
    for e in &failed {
        let data: Value = serde_json::from_slice(&e.payload).unwrap();
        assert_eq!(data["transient"], true, "{data}");
        assert!(data["retry_at"].is_string(), "{data}");
        assert!(data["error"]["code"].is_i64(), "{data}");
    }
}

#[tokio::test]
async fn an_expired_code_stops_before_any_later_call() {
    let (app, sim, key) = setup(LogKind::Embedded, DbKind::Sqlite).await;
    let code = new_code();
    sim.sim.expire_code(&code);
    let id = start(&app, &key, &code).await;
    let report = wait_report(&app, &key, &id, finished).await;
    assert_eq!(report["state"], "failed", "{report}");
    assert_eq!(report["failure"]["reason"], "code_expired", "{report}");
    assert_eq!(report["failure"]["step"], "exchange_code");
    let s = step(&report, "exchange_code");
    assert_eq!(s["state"], "failed");
    assert_eq!(s["error"]["code"], 100, "{report}");
    assert_eq!(s["error"]["subcode"], 36007, "{report}");
    assert_eq!(step(&report, "subscribe_webhooks")["state"], "pending");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(counts(&sim), [1, 0, 0, 0], "{:?}", sim.sim.calls());
    assert!(report.get("token").is_none(), "{report}");
}

#[tokio::test]
async fn the_registration_limit_is_never_retried() {
    let (app, sim, key) = setup(LogKind::Embedded, DbKind::Sqlite).await;
    sim.sim.script_register(NUMBER, Script::fail(133016, 5));
    let id = start(&app, &key, &new_code()).await;
    let report = wait_report(&app, &key, &id, finished).await;
    assert_eq!(report["state"], "failed", "{report}");
    assert_eq!(
        report["failure"]["reason"], "registration_limit",
        "{report}"
    );
    assert_eq!(step(&report, "register_number")["error"]["code"], 133016);
    assert_eq!(step(&report, "register_number")["attempts"], 1);
    assert_eq!(step(&report, "subscribe_webhooks")["state"], "succeeded");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(counts(&sim)[2], 1, "more than one register call");
    assert_eq!(counts(&sim)[3], 0, "routed after a failed registration");
}

#[tokio::test]
async fn a_wrong_pin_stops_with_its_reason() {
    let (app, sim, key) = setup(LogKind::Embedded, DbKind::Sqlite).await;
    sim.sim.script_register(NUMBER, Script::fail(131031, 1));
    let id = start(&app, &key, &new_code()).await;
    let report = wait_report(&app, &key, &id, finished).await;
    assert_eq!(report["failure"]["reason"], "wrong_pin", "{report}");
    assert_eq!(counts(&sim)[2], 1);
}

#[tokio::test]
async fn a_number_another_workspace_holds_is_refused_before_any_call() {
    let (app, sim, key) = setup(LogKind::Embedded, DbKind::Sqlite).await;
    app.workspace("other").await;
    app.claim("other", NUMBER, WABA).await;
    let r = app
        .post(
            "/v1/workspaces/acme/onboarding",
            &key,
            start_body(&new_code()),
        )
        .await;
    assert_problem(&r, 409, "conflict", "a number another workspace holds");
    assert!(
        r.json["detail"].as_str().unwrap().contains(NUMBER),
        "{}",
        r.text
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sim.sim.calls().is_empty(), "{:?}", sim.sim.calls());
    assert!(app
        .events_of(Some("acme"), "onboarding.started")
        .await
        .is_empty());
}

#[tokio::test]
async fn missing_configuration_and_bad_input_change_nothing() {
    // No META_APP_ID.
    let sim = start_sim(sim_config()).await;
    let mut opts = TestOptions::new(LogKind::Embedded, DbKind::Sqlite);
    opts.graph_url = Some(sim.url.clone());
    let app = spawn_app_with(opts).await;
    let key = app.workspace("acme").await;
    let r = app
        .post(
            "/v1/workspaces/acme/onboarding",
            &key,
            start_body(&new_code()),
        )
        .await;
    assert_problem(&r, 503, "not_configured", "without META_APP_ID");
    assert!(
        r.json["detail"].as_str().unwrap().contains("META_APP_ID"),
        "{}",
        r.text
    );
    // An app id, but no app secret.
    let mut opts = TestOptions::new(LogKind::Embedded, DbKind::Sqlite);
    opts.graph_url = Some(sim.url.clone());
    opts.configure = Some(with_app_id);
    opts.meta_secrets = false;
    let app2 = spawn_app_with(opts).await;
    let key2 = app2.workspace("acme").await;
    let r = app2
        .post(
            "/v1/workspaces/acme/onboarding",
            &key2,
            start_body(&new_code()),
        )
        .await;
    assert_problem(&r, 503, "not_configured", "without META_APP_SECRET");
    assert!(
        r.json["detail"]
            .as_str()
            .unwrap()
            .contains("META_APP_SECRET"),
        "{}",
        r.text
    );
    // Bad input, configured.
    let (app, sim, key) = setup(LogKind::Embedded, DbKind::Sqlite).await;
    for (body, what) in [
        (
            json!({"code": "c1", "waba_id": WABA, "phone_number_id": NUMBER, "pin": "12345"}),
            "a 5-digit pin",
        ),
        (
            json!({"code": "c1", "waba_id": WABA, "phone_number_id": NUMBER, "pin": "12345a"}),
            "a pin with a letter",
        ),
        (
            json!({"code": "c 1", "waba_id": WABA, "phone_number_id": NUMBER, "pin": PIN}),
            "a code with a space",
        ),
        (
            json!({"code": "c1", "waba_id": "x", "phone_number_id": NUMBER, "pin": PIN}),
            "a waba id that is not digits",
        ),
        (
            json!({"code": "c1", "waba_id": WABA, "pin": PIN}),
            "no number",
        ),
        (
            json!({"code": "c1", "waba_id": WABA, "phone_number_id": NUMBER, "pin": PIN, "x": 1}),
            "an unknown field",
        ),
    ] {
        let r = app.post("/v1/workspaces/acme/onboarding", &key, body).await;
        assert_problem(&r, 400, "validation_failed", what);
        assert!(
            !r.text.contains(PIN),
            "the answer echoes the pin: {}",
            r.text
        );
    }
    // A viewer may read, not start.
    let viewer = app
        .key("acme", wabridge_handlers::access::Role::Viewer)
        .await;
    let r = app
        .post(
            "/v1/workspaces/acme/onboarding",
            &viewer,
            start_body(&new_code()),
        )
        .await;
    assert_problem(&r, 403, "forbidden", "a viewer starting onboarding");
    let r = app.get("/v1/workspaces/acme/onboarding", &viewer).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .get("/v1/workspaces/acme/onboarding/onb_nope", &viewer)
        .await;
    assert_problem(&r, 404, "not_found", "an unknown onboarding");
    assert!(app
        .events_of(Some("acme"), "onboarding.started")
        .await
        .is_empty());
    assert!(sim.sim.calls().is_empty());
}

/// The served binary, killed with SIGKILL while step 2's call is in flight, then
/// started again: the saga resumes at step 2 (its outcome was unknown, and
/// subscribing twice is harmless), the exchange is never repeated, and neither run
/// printed the code, the PIN, the token or the app secret with `RUST_LOG=debug`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_between_steps_resumes_without_repeating_a_step() {
    use crate::vault::{bootstrap, Served};
    let sim = start_sim(sim_config()).await;
    sim.sim.script_subscribe(WABA, Script::Hang { times: 1 });
    let data = tempfile::tempdir().unwrap();
    let keys = format!("v1:{MASTER_V1}");
    let env = [
        ("TOKEN_MASTER_KEYS", keys.as_str()),
        ("META_APP_ID", APP_ID),
        ("META_APP_SECRET", APP_SECRET),
        ("META_GRAPH_URL", sim.url.as_str()),
        ("RUST_LOG", "debug"),
    ];
    let owner = bootstrap(data.path(), &env, "acme");
    let served = Served::start(data.path(), &env);
    let client = reqwest::Client::new();
    let code = new_code();
    let r = client
        .post(served.url("/v1/workspaces/acme/onboarding"))
        .bearer_auth(&owner)
        .json(&start_body(&code))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while sim.sim.hanging() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "step 2 never called"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = served.kill();
    let served = Served::start(data.path(), &env);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let report = loop {
        let r = client
            .get(served.url(&format!("/v1/workspaces/acme/onboarding/{id}")))
            .bearer_auth(&owner)
            .send()
            .await
            .unwrap();
        let report: Value = r.json().await.unwrap();
        if finished(&report) {
            break report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not resumed: {report}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(report["state"], "done", "{report}");
    assert_eq!(step(&report, "exchange_code")["attempts"], 1, "{report}");
    assert_eq!(
        step(&report, "subscribe_webhooks")["attempts"],
        2,
        "{report}"
    );
    assert_eq!(counts(&sim), [1, 2, 1, 1], "{:?}", sim.sim.calls());
    let token = sim.sim.calls_to("/register")[0]
        .authorization
        .clone()
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_string();
    let second = served.stop();
    let output = format!("{first}\n{second}");
    assert!(
        output.contains("DEBUG"),
        "control: RUST_LOG=debug took effect"
    );
    assert!(
        output.contains("wabridge listening on"),
        "control: output captured"
    );
    for (secret, what) in [
        (code.as_str(), "the code"),
        (token.as_str(), "the token"),
        (APP_SECRET, "the app secret"),
        (PIN, "the pin"),
    ] {
        assert!(!output.contains(secret), "the server printed {what}");
    }
}
